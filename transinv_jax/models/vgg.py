"""VGG (Simonyan & Zisserman), as torchvision defines it, with injected conv and pool.

Returns ``(logits, intermediates)``: every layer's output after its ReLU, named as below, so analysis
code (cosine similarity per layer, exp5) never reaches inside the model.

  conv{stage}_{i}, pool{stage}, fc6, fc7, pre_logits (= fc7), logits
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from transinv_jax.models import layers

STAGES = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(nn.Module):
  """VGG over ``[batch, height, width, channels]`` inputs of any size.

  Attributes:
    stages: output channels of each conv, grouped by the pool that ends its stage.
    num_classes: size of the last layer.
    width: multiplier on every conv and hidden width (1.0 = the paper's; smaller for tests).
    hidden: width of fc6 and fc7 before ``width`` is applied.
    dropout_rate: dropout after fc6 and fc7 in training (torchvision: 0.5).
    conv: conv module class, called as ``conv(features=..., name=..., dtype=...)``.
    pool: downsampling function applied at the end of every stage.
    dtype: compute dtype (parameters stay float32).
  """
  stages: Sequence[Sequence[int]]
  num_classes: int
  width: float = 1.0
  hidden: int = 4096
  dropout_rate: float = 0.5
  conv: layers.ModuleDef = layers.Conv3x3
  pool: layers.PoolFn = layers.max_pool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
    scaled = lambda n: max(1, int(round(n * self.width)))
    out = {}
    x = x.astype(self.dtype)
    for s, stage in enumerate(self.stages, 1):
      for i, features in enumerate(stage, 1):
        name = f"conv{s}_{i}"
        x = nn.relu(self.conv(features=scaled(features), name=name, dtype=self.dtype)(x))
        out[name] = x
      x = self.pool(x)
      out[f"pool{s}"] = x
    if x.shape[1] == 0 or x.shape[2] == 0:
      raise ValueError(f"input {out['conv1_1'].shape[1:3]} is too small for {len(self.stages)} "
                       f"2x2 poolings: use at least {2 ** len(self.stages)} px")
    x = x.reshape((x.shape[0], -1))
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              kernel_init=nn.initializers.normal(0.01))
    for name in ("fc6", "fc7"):
      x = nn.relu(dense(scaled(self.hidden), name=name)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      out[name] = x
    out["pre_logits"] = x
    logits = dense(self.num_classes, name="logits")(x).astype(jnp.float32)
    out["logits"] = logits
    return logits, out


VGG11 = functools.partial(VGG, stages=STAGES["vgg11"])
VGG13 = functools.partial(VGG, stages=STAGES["vgg13"])
VGG16 = functools.partial(VGG, stages=STAGES["vgg16"])
VGG19 = functools.partial(VGG, stages=STAGES["vgg19"])
