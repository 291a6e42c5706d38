"""ResNet (He et al.) as torchvision defines it (v1.5: the stride sits on the 3x3 conv), with
injected conv, norm and pooling, and the two variants the invariance papers use:

* full convolution (Kayhan & van Gemert): ``conv`` with ``padding="full"`` pads every conv by k-1;
  the identity branch is zero-padded to the larger main branch (before the shortcut conv when it
  downsamples), and the stem pool is a 2x2 max pool, as in their code;
* anti-aliased (Zhang): ``blur_size > 0`` moves every stride onto a BlurPool in front of the conv
  that had it (main path and shortcut), and the stem pool becomes MaxBlurPool.

Parameters are named as torchvision's state_dict (``conv1``, ``bn1``, ``layer1_0/conv1``, ...,
``layer2_0/downsample_conv``, ``fc``). Intermediates: ``stem``, ``layer{i}_{j}`` (each block's
output), ``layer{i}`` (each stage's), ``pre_logits`` (after global pooling), ``logits``.
"""

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from transinv_jax.models import layers

BatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)  # torch's 0.1 momentum


def _pad_to(x: jax.Array, height: int, width: int) -> jax.Array:
  """Zero-pads ``x`` evenly on both sides to ``[batch, height, width, channels]``."""
  dh, dw = height - x.shape[1], width - x.shape[2]
  if dh == 0 and dw == 0:
    return x
  return jnp.pad(x, ((0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0)))


def _shortcut_padding(size: int, target: int, stride: int) -> int:
  """Padding p per side so that a stride-``stride`` 1x1 conv (or BlurPool) of ``size + 2p`` gives
  ``target``; it reproduces Kayhan & van Gemert's constants (3 for basic blocks, 1 for
  bottlenecks)."""
  return max(0, -(-((target - 1) * stride + 1 - size) // 2))


class Block(nn.Module):
  """A residual block: basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1 with expansion 4).

  Attributes:
    features: output channels of the 3x3 conv (the block outputs ``features * expansion``).
    strides: 1 or 2.
    bottleneck: bottleneck block if True, else basic.
    conv: conv module class (``layers.Conv`` with a padding mode).
    norm: normalisation module class.
    blur_size: 0 for strided convs; otherwise anti-aliased downsampling with this filter size.
    dtype: compute dtype.
  """
  features: int
  strides: int
  bottleneck: bool
  conv: layers.ModuleDef
  norm: layers.ModuleDef
  blur_size: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(self.norm, use_running_average=not train, dtype=self.dtype)
    expansion = 4 if self.bottleneck else 1
    blur = functools.partial(layers.blur_pool, size=self.blur_size, stride=self.strides)
    antialias = self.blur_size > 0 and self.strides > 1
    stride = 1 if antialias else self.strides

    y = x
    if self.bottleneck:
      y = nn.relu(norm(name="bn1")(conv(self.features, kernel_size=1, name="conv1")(y)))
      y = nn.relu(norm(name="bn2")(conv(self.features, strides=stride, name="conv2")(y)))
      if antialias:
        y = blur(y)
      y = norm(name="bn3")(conv(self.features * 4, kernel_size=1, name="conv3")(y))
    else:
      y = nn.relu(norm(name="bn1")(conv(self.features, strides=stride, name="conv1")(y)))
      if antialias:
        y = blur(y)
      y = norm(name="bn2")(conv(self.features, name="conv2")(y))

    residual = x
    if self.strides > 1 or x.shape[-1] != self.features * expansion:
      p = _shortcut_padding(x.shape[1], y.shape[1], self.strides)
      residual = jnp.pad(residual, ((0, 0), (p, p), (p, p), (0, 0))) if p else residual
      if antialias:
        residual = blur(residual)
      residual = conv(self.features * expansion, kernel_size=1, strides=stride,
                      padding="valid", name="downsample_conv")(residual)
      residual = norm(name="downsample_bn")(residual)
    # Full convolution grows the main branch; the identity is zero-padded to match.
    residual = _pad_to(residual, y.shape[1], y.shape[2])
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """ResNet over ``[batch, height, width, channels]``.

  Attributes:
    stage_sizes: blocks per stage ((2, 2, 2, 2) for ResNet18).
    bottleneck: bottleneck blocks (ResNet50) or basic blocks (ResNet18/34).
    num_classes: size of the last layer.
    width: multiplier on every channel count.
    conv: conv module class; its ``padding`` mode applies to every conv (1x1 shortcuts excepted).
    norm: normalisation module class, called as ``norm(use_running_average=not train, ...)``:
      Flax's BatchNorm (running statistics at test time) or ``layers.BatchStatisticsNorm``.
    stem_pool: the pool after the stem conv; None picks torchvision's 3x3/2 max pool (2x2/2 for
      full convolution, as Kayhan & van Gemert; MaxBlurPool when anti-aliased).
    blur_size: 0, or Zhang's anti-aliasing with this filter size.
    head: ``"gap"`` (torchvision) or ``"gmp"`` global pooling before ``fc``.
    dtype: compute dtype.
  """
  stage_sizes: Sequence[int]
  bottleneck: bool
  num_classes: int
  width: float = 1.0
  conv: layers.ModuleDef = layers.Conv
  norm: layers.ModuleDef = BatchNorm
  stem_pool: layers.PoolFn | None = None
  blur_size: int = 0
  head: str = "gap"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict]:
    scaled = lambda n: max(1, int(round(n * self.width)))
    out = {}
    x = x.astype(self.dtype)
    x = self.conv(scaled(64), kernel_size=7, strides=2, use_bias=False, name="conv1",
                  dtype=self.dtype)(x)
    x = nn.relu(self.norm(use_running_average=not train, name="bn1", dtype=self.dtype)(x))
    x = self._stem_pool()(x)
    out["stem"] = x
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        x = Block(scaled(64 * 2**i), strides=2 if i > 0 and j == 0 else 1,
                  bottleneck=self.bottleneck, conv=self.conv, norm=self.norm,
                  blur_size=self.blur_size, dtype=self.dtype,
                  name=f"layer{i + 1}_{j}")(x, train=train)
        out[f"layer{i + 1}_{j}"] = x
      out[f"layer{i + 1}"] = x
    if self.head not in ("gap", "gmp"):
      raise ValueError(f"unknown head {self.head!r}; use gap or gmp")
    x = (layers.global_avg_pool if self.head == "gap" else layers.global_max_pool)(x)
    out["pre_logits"] = x
    logits = nn.Dense(self.num_classes, name="fc", dtype=self.dtype)(x).astype(jnp.float32)
    out["logits"] = logits
    return logits, out

  def _stem_pool(self) -> layers.PoolFn:
    if self.stem_pool is not None:
      return self.stem_pool
    if self.blur_size > 0:
      return functools.partial(layers.max_blur_pool, size=self.blur_size)
    padding = getattr(self.conv, "keywords", {}).get("padding", "zeros")
    if padding == "full":
      return functools.partial(layers.max_pool, window=2, stride=2)
    return functools.partial(layers.max_pool, window=3, stride=2, padding=1)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), bottleneck=False)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), bottleneck=False)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), bottleneck=True)
RESNETS = {"resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50}
