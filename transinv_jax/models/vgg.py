"""VGG (Simonyan & Zisserman) as torchvision defines it, with injected conv, norm and pool.

Returns ``(logits, intermediates)``: every layer's output after its ReLU, named as below, so analysis
code (cosine similarity per layer, exp5) never reaches inside the model.

  conv{stage}_{i}, pool{stage}, then either fc6, fc7 (the classifier head, after torchvision's
  adaptive 7x7 average pool) or gap / gmp (global pooling head, Blything et al.), then pre_logits
  and logits.

Parameters are named the same way (``conv1_1``, ``bn1_1`` with BatchNorm, ``fc6``, ``fc7``,
``logits``), which is what the torchvision weight import maps onto.
"""

import functools
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from transinv_jax.models import layers

STAGES = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
HEADS = ("classifier", "gap", "gmp")


def _bins(size: int, out: int) -> np.ndarray:
  """[out, size] averaging matrix of PyTorch's adaptive average pooling along one axis."""
  matrix = np.zeros((out, size), np.float32)
  for i in range(out):
    start, end = (i * size) // out, -(-((i + 1) * size) // out)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool(x: jax.Array, out: tuple[int, int]) -> jax.Array:
  """``torch.nn.AdaptiveAvgPool2d(out)`` over ``[batch, height, width, channels]``.

  torchvision's VGG pools its last feature map to 7x7 before the classifier, so the classifier (and
  pretrained weights) fit any input size; at 224 it is the identity.
  """
  if x.shape[1:3] == tuple(out):
    return x
  rows, cols = _bins(x.shape[1], out[0]), _bins(x.shape[2], out[1])
  return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols).astype(x.dtype)


class VGG(nn.Module):
  """VGG over ``[batch, height, width, channels]`` inputs of any size.

  Attributes:
    stages: output channels of each conv, grouped by the pool that ends its stage.
    num_classes: size of the last layer.
    width: multiplier on every conv and hidden width (1.0 = the paper's; smaller for tests).
    hidden: width of fc6 and fc7 before ``width`` is applied.
    dropout_rate: dropout after fc6 and fc7 in training (torchvision: 0.5).
    head: ``"classifier"`` (flatten, fc6, fc7, logits: torchvision's), ``"gap"`` or ``"gmp"``
      (global average / max pooling, then logits).
    conv: conv module class, called as ``conv(features=..., name=..., dtype=...)`` and, for a
      layer named in ``padding_overrides``, with ``padding=...`` too.
    padding_overrides: per-layer padding modes, e.g. ``{"conv1_1": "full"}``.
    norm: normalisation module class applied after each conv, or None; called as
      ``norm(use_running_average=not train, name=..., dtype=...)``: Flax's BatchNorm (running
      statistics at test time) or ``layers.BatchStatisticsNorm`` (the batch's, always).
    pool: downsampling function applied at the end of every stage.
    dtype: compute dtype (parameters stay float32).
  """
  stages: Sequence[Sequence[int]]
  num_classes: int
  width: float = 1.0
  hidden: int = 4096
  dropout_rate: float = 0.5
  head: str = "classifier"
  conv: layers.ModuleDef = layers.Conv3x3
  padding_overrides: Mapping[str, str] | None = None
  norm: layers.ModuleDef | None = None
  pool: layers.PoolFn = layers.max_pool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
    scaled = lambda n: max(1, int(round(n * self.width)))
    overrides = dict(self.padding_overrides or {})
    out = {}
    x = x.astype(self.dtype)
    for s, stage in enumerate(self.stages, 1):
      for i, features in enumerate(stage, 1):
        name = f"conv{s}_{i}"
        extra = {"padding": overrides[name]} if name in overrides else {}
        x = self.conv(features=scaled(features), name=name, dtype=self.dtype, **extra)(x)
        if self.norm is not None:
          x = self.norm(use_running_average=not train, name=f"bn{s}_{i}", dtype=self.dtype)(x)
        x = nn.relu(x)
        out[name] = x
      x = self.pool(x)
      out[f"pool{s}"] = x
    if x.shape[1] == 0 or x.shape[2] == 0:
      raise ValueError(f"input {out['conv1_1'].shape[1:3]} is too small for {len(self.stages)} "
                       f"2x2 poolings: use at least {2 ** len(self.stages)} px")
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              kernel_init=nn.initializers.normal(0.01))
    if self.head == "classifier":
      x = adaptive_avg_pool(x, (7, 7)).reshape((x.shape[0], -1))
      for name in ("fc6", "fc7"):
        x = nn.relu(dense(scaled(self.hidden), name=name)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        out[name] = x
    elif self.head in ("gap", "gmp"):
      pool = layers.global_avg_pool if self.head == "gap" else layers.global_max_pool
      x = pool(x)
      out[self.head] = x
    else:
      raise ValueError(f"unknown head {self.head!r}; use one of {HEADS}")
    out["pre_logits"] = x
    logits = dense(self.num_classes, name="logits")(x).astype(jnp.float32)
    out["logits"] = logits
    return logits, out


VGG11 = functools.partial(VGG, stages=STAGES["vgg11"])
VGG13 = functools.partial(VGG, stages=STAGES["vgg13"])
VGG16 = functools.partial(VGG, stages=STAGES["vgg16"])
VGG19 = functools.partial(VGG, stages=STAGES["vgg19"])
