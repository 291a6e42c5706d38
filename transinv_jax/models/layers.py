"""Building blocks that models take as injected callables: convolutions, normalisation, pooling.

Blocks never pick their own conv, norm or pool: a model receives ``conv`` and ``norm`` (Flax module
classes, usually ``functools.partial`` of ``Conv`` / a BatchNorm) and ``pool`` (a function of
``x``), so padding modes, BatchNorm statistics and anti-aliased downsampling plug in without
touching the model definitions.

Everything here works on ``[batch, height, width, channels]`` arrays and follows PyTorch's semantics
(``nn.Conv2d`` padding modes, ``BatchNorm2d(track_running_stats=False)``, ``MaxPool2d``,
``AvgPool2d``) and the peers' reference code: Zhang's BlurPool and Chaman & Dokmanic's adaptive
polyphase sampling (APS).
"""

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ModuleDef = Any
PoolFn = Callable[[jax.Array], jax.Array]

PADDING_MODES = ("zeros", "valid", "full", "circular", "reflect", "replicate")
# PyTorch padding mode -> jnp.pad mode.
_PAD_MODES = {"zeros": "constant", "circular": "wrap", "reflect": "reflect", "replicate": "edge"}
_APS_NORMS = ("l2", "l1", "linf")
_NHWC = ("NHWC", "HWIO", "NHWC")

# torchvision's VGG/ResNet initialisation: Kaiming normal, fan_out, ReLU gain; zero bias.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def pad(x: jax.Array, pad_h: tuple[int, int], pad_w: tuple[int, int], mode: str) -> jax.Array:
  """Pads the spatial axes of ``[batch, height, width, channels]`` as ``torch.nn.functional.pad``.

  Args:
    x: input, ``[batch, height, width, channels]``.
    pad_h: rows added (top, bottom).
    pad_w: columns added (left, right).
    mode: ``zeros``, ``circular``, ``reflect`` (edge not repeated) or ``replicate``.

  Returns:
    ``[batch, height + sum(pad_h), width + sum(pad_w), channels]``.
  """
  if mode not in _PAD_MODES:
    raise ValueError(f"unknown pad mode {mode!r}; expected one of {tuple(_PAD_MODES)}")
  return jnp.pad(x, ((0, 0), tuple(pad_h), tuple(pad_w), (0, 0)), mode=_PAD_MODES[mode])


def conv_padding(kernel_size: int, mode: str) -> tuple[int, int]:
  """Per-side padding of a ``kernel_size`` convolution with padding ``mode``.

  Args:
    kernel_size: spatial size of the (square) kernel.
    mode: one of ``PADDING_MODES``. ``valid`` pads nothing; ``full`` pads ``k - 1`` on each side
      (Kayhan & van Gemert's full convolution: every output sees the border); the rest pad
      ``k // 2``, as PyTorch's ``padding=k // 2`` (size kept for odd ``k``).

  Returns:
    ``(before, after)``, the same for both spatial axes.
  """
  if mode not in PADDING_MODES:
    raise ValueError(f"unknown padding {mode!r}; expected one of {PADDING_MODES}")
  if mode == "valid":
    return 0, 0
  if mode == "full":
    return kernel_size - 1, kernel_size - 1
  return kernel_size // 2, kernel_size // 2


class Conv(nn.Module):
  """2-D convolution with a padding mode, as ``torch.nn.Conv2d``.

  Params are ``kernel`` ``[kh, kw, in, out]`` and ``bias`` ``[out]``: the same names and layout as
  ``flax.linen.Conv``, so checkpoints and weight import do not care which is used.

  Attributes:
    features: output channels.
    kernel_size: spatial size of the square kernel.
    strides: stride on both spatial axes.
    padding: one of ``PADDING_MODES`` (see ``conv_padding``).
    use_bias: whether to add a bias.
    dtype: compute dtype (parameters stay float32).
    kernel_init: kernel initialiser.
    bias_init: bias initialiser.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: str = "zeros"
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable = kaiming_normal_fan_out
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Convolves ``[batch, height, width, in]`` into ``[batch, height', width', features]``."""
    k, stride = self.kernel_size, self.strides
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    bias = (self.param("bias", self.bias_init, (self.features,), jnp.float32)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    conv = functools.partial(lax.conv_general_dilated, rhs=kernel,
                             window_strides=(stride, stride), dimension_numbers=_NHWC)
    # Every mode is run as a conv with PyTorch's "same" zero padding k // 2, plus an explicit pad
    # before or a crop after: XLA:CPU computes the kernel gradient of any other conv geometry
    # 10-15x slower (a VGG16 step with full padding: 17 vs 248 img/s), and the result is the same.
    same = conv_padding(k, "zeros")
    before, crop = conv_padding(k, self.padding), 0
    if self.padding == "full":
      x = pad(x, (k - 1 - same[0],) * 2, (k - 1 - same[0],) * 2, "zeros")
    elif self.padding in ("circular", "reflect", "replicate"):
      x, crop = pad(x, before, before, self.padding), same[0]
    elif self.padding == "valid":
      crop = same[0]
    if crop and stride > 1:  # a crop would misalign strided outputs: unpadded conv instead
      y = conv(x, padding=((0, 0), (0, 0)))
    else:
      y = conv(x, padding=(same, same))
      if crop:
        y = y[:, crop:y.shape[1] - crop, crop:y.shape[2] - crop]
    return y if bias is None else y + bias


Conv3x3 = functools.partial(Conv, kernel_size=3)


class BatchStatisticsNorm(nn.Module):
  """BatchNorm that always normalises by the statistics of its input batch.

  ``torch.nn.BatchNorm2d(track_running_stats=False)``, which the authors' framework uses: the
  same in training and in evaluation (``model.eval()`` changes nothing), and no running averages
  are kept, so a model built with it has no ``batch_stats`` collection, and its output for an item
  depends on the other items of the batch. The variance is the biased one, as torch normalises;
  statistics are computed in float32 whatever ``dtype``.

  What "the batch" is, is the caller's choice: in training, the training batch; in evaluation,
  ``kernel.Inference`` runs the network on the test items at one placement at a time (see
  ``kernel.evaluation_kernel``).

  Params ``scale`` and ``bias`` ``[channels]``, named as ``flax.linen.BatchNorm``'s.

  Attributes:
    use_running_average: accepted so that models call every norm alike
      (``norm(use_running_average=not train)``), and ignored: there is no running average.
    epsilon: added to the variance (torch's 1e-5).
    dtype: output dtype.
  """
  use_running_average: bool | None = None
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalises ``[batch, ..., channels]`` over every axis but the last."""
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    axes = tuple(range(x.ndim - 1))
    x = x.astype(jnp.float32)
    mean = x.mean(axes)
    # Two passes, not E[x^2] - E[x]^2: no cancellation for features with a large mean.
    var = jnp.square(x - mean).mean(axes)
    y = (x - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype)


def max_pool(x: jax.Array, window: int = 2, stride: int = 2, padding: int = 0) -> jax.Array:
  """Max pooling over ``[batch, height, width, channels]`` as ``torch.nn.MaxPool2d``.

  Pads with -inf and drops incomplete windows (floor mode). A non-overlapping unpadded pool is
  written as a reshape and a max: XLA's ``select_and_scatter`` backward of ``reduce_window`` is a
  known slow path on GPU.

  Args:
    x: input, ``[batch, height, width, channels]``.
    window: pooling window size.
    stride: pooling stride.
    padding: -inf rows/columns added on each side.

  Returns:
    ``[batch, (height + 2 * padding - window) // stride + 1, (width ...) ..., channels]``.
  """
  if window != stride or padding:
    return nn.max_pool(x, (window, window), strides=(stride, stride),
                       padding=((padding, padding), (padding, padding)))
  b, h, w, c = x.shape
  h, w = h // window * window, w // window * window
  x = x[:, :h, :w, :].reshape(b, h // window, window, w // window, window, c)
  return x.max(axis=(2, 4))


def avg_pool(x: jax.Array, window: int = 2, stride: int = 2, padding: int = 0,
             count_include_pad: bool = True) -> jax.Array:
  """Average pooling over ``[batch, height, width, channels]`` as ``torch.nn.AvgPool2d``.

  Args:
    x: input, ``[batch, height, width, channels]``.
    window: pooling window size.
    stride: pooling stride.
    padding: zero rows/columns added on each side.
    count_include_pad: divide by ``window ** 2`` (True) or by the unpadded elements in the window.

  Returns:
    ``[batch, (height + 2 * padding - window) // stride + 1, (width ...) ..., channels]``.
  """
  return nn.avg_pool(x, (window, window), strides=(stride, stride),
                     padding=((padding, padding), (padding, padding)),
                     count_include_pad=count_include_pad)


def _binomial_taps(size: int) -> np.ndarray:
  """Binomial row ``size - 1`` normalised to sum 1: float32 [size]; exact (the sum is 2**(size-1))."""
  if not 1 <= size <= 7:
    raise ValueError(f"blur filter size must be in 1..7, got {size}")
  row = np.array([math.comb(size - 1, i) for i in range(size)], np.float64)
  return (row / row.sum()).astype(np.float32)


def binomial_filter(size: int) -> np.ndarray:
  """Zhang's low-pass filter: outer product of binomial row ``size - 1``, normalised to sum 1.

  Args:
    size: taps per axis, 1 to 7.

  Returns:
    float32 ``[size, size]``.
  """
  taps = _binomial_taps(size)
  return np.outer(taps, taps)


def _blur_axis(x: jax.Array, taps: np.ndarray, stride: int, axis: int) -> jax.Array:
  """Unpadded 1-D filtering of ``x`` along ``axis`` at ``stride``, as a sum of strided slices.

  Elementwise forward and backward: a depthwise conv's backward runs ~7x slower than its forward
  on XLA:CPU, and the binomial filter is separable anyway.
  """
  n = (x.shape[axis] - len(taps)) // stride + 1
  out = 0
  for t, w in enumerate(taps):
    out = out + w * lax.slice_in_dim(x, t, t + stride * (n - 1) + 1, stride, axis)
  return out.astype(x.dtype)


def _blur(x: jax.Array, size: int, stride: int) -> jax.Array:
  """Unpadded binomial blur of every channel: ``binomial_filter(size)``, applied separably."""
  taps = _binomial_taps(size)
  return _blur_axis(_blur_axis(x, taps, stride, 1), taps, stride, 2)


def blur_pool(x: jax.Array, size: int = 3, stride: int = 2, pad_mode: str = "reflect") -> jax.Array:
  """Zhang's BlurPool: binomial low-pass filter, then subsampling.

  Args:
    x: input, ``[batch, height, width, channels]``.
    size: blur filter size, 1 to 7; 1 is plain subsampling (no padding), as Zhang's code.
    stride: subsampling factor.
    pad_mode: ``reflect``, ``replicate``, ``zeros`` or ``circular``; ``(size - 1) // 2`` before and
      the rest after, on both spatial axes.

  Returns:
    ``[batch, ceil(height / stride), ceil(width / stride), channels]``.
  """
  _binomial_taps(size)  # validates size
  if size == 1:
    return x[:, ::stride, ::stride, :]
  edges = ((size - 1) // 2, size // 2)
  return _blur(pad(x, edges, edges, pad_mode), size, stride)


def _max_2x2_stride_1(x: jax.Array) -> jax.Array:
  """``torch.nn.MaxPool2d(2, 1)``: ``[b, h, w, c]`` -> ``[b, h - 1, w - 1, c]``.

  A max of four shifted views: elementwise, so its backward avoids ``select_and_scatter``.
  """
  return jnp.maximum(jnp.maximum(x[:, :-1, :-1], x[:, :-1, 1:]),
                     jnp.maximum(x[:, 1:, :-1], x[:, 1:, 1:]))


def max_blur_pool(x: jax.Array, size: int = 3, pad_mode: str = "reflect") -> jax.Array:
  """Zhang's MaxBlurPool: 2x2 max at stride 1 (no padding), then ``blur_pool`` at stride 2.

  Args:
    x: input, ``[batch, height, width, channels]``.
    size: blur filter size, 1 to 7.
    pad_mode: padding of the blur (see ``blur_pool``).

  Returns:
    ``[batch, ceil((height - 1) / 2), ceil((width - 1) / 2), channels]``.
  """
  return blur_pool(_max_2x2_stride_1(x), size, 2, pad_mode)


def aps_downsample(x: jax.Array, stride: int = 2, norm: str = "l2",
                   blur_size: int = 1) -> jax.Array:
  """Adaptive polyphase sampling (Chaman & Dokmanic 2021), stride 2.

  Odd sizes are first padded circularly by one row at the bottom / column at the right. Of the
  four polyphase components ``x[:, i::2, j::2]``, each sample keeps the one with the largest norm
  over (height, width, channels); ties go to the lowest ``2 * i + j``. With ``blur_size > 1`` the
  component is taken from the input blurred at stride 1 with circular padding, but chosen on the
  unblurred input.

  Args:
    x: input, ``[batch, height, width, channels]``.
    stride: must be 2.
    norm: ``l2``, ``l1`` or ``linf``.
    blur_size: binomial blur filter size, 1 (no blur) to 7.

  Returns:
    ``[batch, ceil(height / 2), ceil(width / 2), channels]``.
  """
  if stride != 2:
    raise ValueError(f"APS is implemented for stride 2 only, got {stride}")
  if norm not in _APS_NORMS:
    raise ValueError(f"unknown APS norm {norm!r}; expected one of {_APS_NORMS}")
  source = blur_pool(x, blur_size, 1, "circular") if blur_size > 1 else x
  even = (0, x.shape[1] % 2), (0, x.shape[2] % 2)
  x, source = pad(x, *even, "circular"), pad(source, *even, "circular")
  b, h, w, c = x.shape
  # [b, h/2, 2, w/2, 2, c]: axes 2 and 4 are the row and column phases.
  a = jnp.abs(x.astype(jnp.float32)).reshape(b, h // 2, 2, w // 2, 2, c)
  if norm == "l2":
    norms = jnp.sum(a * a, axis=(1, 3, 5))  # squared: same argmax, no sqrt rounding
  elif norm == "l1":
    norms = jnp.sum(a, axis=(1, 3, 5))
  else:
    norms = jnp.max(a, axis=(1, 3, 5))
  phase = jnp.argmax(norms.reshape(b, 4), axis=1)  # first maximum on ties
  components = [source[:, i::2, j::2, :] for i in (0, 1) for j in (0, 1)]
  # An elementwise select (no gather), so it fuses and differentiates cheaply.
  which = jnp.broadcast_to(phase[:, None, None, None], components[0].shape)
  return lax.select_n(which, *components)


def aps_max_pool(x: jax.Array, norm: str = "l2", blur_size: int = 1) -> jax.Array:
  """APS replacement of a 2x2 / stride 2 max pool.

  A 2x2 max at stride 1 over the input padded circularly (one row at the bottom, one column at
  the right, so the size is kept and circular shifts commute with it), then ``aps_downsample``.

  Args:
    x: input, ``[batch, height, width, channels]``.
    norm: ``l2``, ``l1`` or ``linf`` (see ``aps_downsample``).
    blur_size: binomial blur filter size, 1 (no blur) to 7.

  Returns:
    ``[batch, ceil(height / 2), ceil(width / 2), channels]``.
  """
  return aps_downsample(_max_2x2_stride_1(pad(x, (0, 1), (0, 1), "circular")), 2, norm, blur_size)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over the spatial axes: ``[batch, height, width, channels]`` -> ``[batch, channels]``."""
  return x.mean(axis=(1, 2))


def global_max_pool(x: jax.Array) -> jax.Array:
  """Max over the spatial axes: ``[batch, height, width, channels]`` -> ``[batch, channels]``."""
  return x.max(axis=(1, 2))
