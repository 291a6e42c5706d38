"""The small networks of the papers: Biscione & Bowers' fully connected network (appendix A.4) and
Kayhan & van Gemert's rook network (one conv layer)."""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from transinv_jax.models import layers


class FCN(nn.Module):
  """Fully connected network: flatten, then hidden ReLU layers, then logits.

  Attributes:
    num_classes: size of the last layer.
    hidden: hidden widths (Biscione & Bowers A.4: 2500-2000-1500-1000-500).
    width: multiplier on the hidden widths.
    dtype: compute dtype.
    kernel_init: every layer's weights; the authors' FC network draws them from N(0, 0.01)
      (biases are zero, Flax's default), not the fan-in scaled LeCun init.

  Intermediates: ``fc1`` ... ``fc{n}``, ``pre_logits`` (= the last hidden), ``logits``.
  """
  num_classes: int
  hidden: Sequence[int] = (2500, 2000, 1500, 1000, 500)
  width: float = 1.0
  dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.normal(stddev=0.01)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
    del train
    out = {}
    x = x.astype(self.dtype).reshape((x.shape[0], -1))
    for i, n in enumerate(self.hidden, 1):
      x = nn.relu(nn.Dense(max(1, int(round(n * self.width))), name=f"fc{i}",
                           dtype=self.dtype, kernel_init=self.kernel_init)(x))
      out[f"fc{i}"] = x
    out["pre_logits"] = x
    logits = nn.Dense(self.num_classes, name="logits", dtype=self.dtype,
                      kernel_init=self.kernel_init)(x).astype(jnp.float32)
    out["logits"] = logits
    return logits, out


class RookNet(nn.Module):
  """Kayhan & van Gemert's location probe: one 5x5 conv, ReLU, global max pooling, a linear layer.

  With zero "same" padding the border lets the conv tell where a patch is; with full convolution
  it cannot, which is the paper's point.

  Attributes:
    num_classes: size of the last layer (2 in the rook experiment).
    features: conv filters.
    conv: conv module class (``layers.Conv`` with a padding mode).
    width: multiplier on ``features``.
    dtype: compute dtype.

  Intermediates: ``conv1`` (after ReLU), ``pre_logits`` (after global max pooling), ``logits``.
  """
  num_classes: int
  features: int = 16
  conv: layers.ModuleDef = functools.partial(layers.Conv, kernel_size=5)
  width: float = 1.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
    del train
    x = nn.relu(self.conv(max(1, int(round(self.features * self.width))), name="conv1",
                          dtype=self.dtype)(x.astype(self.dtype)))
    out = {"conv1": x}
    x = layers.global_max_pool(x)
    out["pre_logits"] = x
    logits = nn.Dense(self.num_classes, name="logits", dtype=self.dtype)(x).astype(jnp.float32)
    out["logits"] = logits
    return logits, out
