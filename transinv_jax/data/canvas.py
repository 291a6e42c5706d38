"""Canvas composition on the accelerator: items in, model-ready canvases out.

Items live on the device as uint8 ``[num_items, size, size, channels]``; every canvas is composed on
the device inside the jitted step, so there is no host input pipeline to wait for.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("size",))
def _resize(images: jax.Array, size: int) -> jax.Array:
  n, _, _, c = images.shape
  out = jax.image.resize(images.astype(jnp.float32), (n, size, size, c), "linear", antialias=True)
  return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def resize_items(images: np.ndarray | jax.Array, size: int, chunk: int = 4096) -> jax.Array:
  """Resizes items once, on the device, to ``size`` x ``size`` (bilinear, antialiased).

  The aspect ratio is not kept, as in the authors' code.

  Args:
    images: uint8 [num_items, height, width, channels].
    size: output side in pixels.
    chunk: items per call, to bound the float32 working memory.

  Returns:
    uint8 [num_items, size, size, channels] on the default device.
  """
  images = jnp.asarray(images)
  if images.shape[1:3] == (size, size):
    return images
  parts = [_resize(images[i:i + chunk], size) for i in range(0, images.shape[0], chunk)]
  return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def place_item(item: jax.Array, centre: jax.Array, canvas_size: int,
               wrap: bool = False) -> jax.Array:
  """Pastes one item whole on a black canvas, centred at integer ``centre = (x, y)``.

  Placement is two one-hot matrix products (rows, then columns): exact for uint8 values in float32
  or bfloat16 (each output pixel sums exactly one non-zero term), and it runs on the matrix units of
  a GPU or TPU instead of as a scatter. The centre must keep the item whole (see ``locations``); one
  off that range would drop the item's outside rows, so callers validate locations up front, unless
  ``wrap`` places it circularly.

  Args:
    item: [size, size, channels], any real or uint8 dtype.
    centre: int [2], the item centre as (x, y).
    canvas_size: canvas side in pixels.
    wrap: rows and columns past an edge come back at the other, so the canvas of an item at
      ``c + o`` is the canvas at ``c`` rolled circularly by ``o`` (any integer centre is allowed).

  Returns:
    [canvas_size, canvas_size, channels], the dtype of ``item``.
  """
  size = item.shape[0]
  compute = jnp.float32 if item.dtype == jnp.uint8 else item.dtype
  x0, y0 = centre.astype(jnp.int32) - size // 2
  pixels = jnp.arange(canvas_size, dtype=jnp.int32)[:, None]
  offsets = jnp.arange(size, dtype=jnp.int32)[None, :]
  ys, xs = y0 + offsets, x0 + offsets
  if wrap:
    ys, xs = ys % canvas_size, xs % canvas_size
  rows = (pixels == ys).astype(compute)  # [canvas, size]
  cols = (pixels == xs).astype(compute)  # [canvas, size]
  out = jnp.einsum("yi,ijc,xj->yxc", rows, item.astype(compute), cols,
                   precision=jax.lax.Precision.HIGHEST)
  return out.astype(item.dtype)


@functools.partial(jax.jit, static_argnums=(2, 3))
def place_items(items: jax.Array, centres: jax.Array, canvas_size: int,
                wrap: bool = False) -> jax.Array:
  """``place_item`` for a batch: [batch, size, size, channels], int [batch, 2] -> [batch, canvas,
  canvas, channels]. Called alone it compiles once per shape; inside the jitted train step and
  the evaluation kernel it is inlined."""
  return jax.vmap(place_item, in_axes=(0, 0, None, None))(items, centres, canvas_size, wrap)


def to_channels(images: jax.Array, channels: int) -> jax.Array:
  """Grayscale -> ``channels`` identical channels, or RGB -> luminance when ``channels == 1``."""
  have = images.shape[-1]
  if have == channels:
    return images
  if have == 1:
    return jnp.broadcast_to(images, images.shape[:-1] + (channels,))
  if have == 3 and channels == 1:
    weights = jnp.array([0.299, 0.587, 0.114], jnp.float32)
    return (images.astype(jnp.float32) @ weights)[..., None].astype(images.dtype)
  raise ValueError(f"cannot turn {have} channels into {channels}")


def canvas_stats(items: jax.Array, canvas_size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of canvas pixels in [0, 1], exactly, for any whole-item placement.

  The authors estimate these from their training generator. Since every canvas holds one whole item
  on black, the canvas moments are the items' moments times the covered fraction of the canvas,
  whatever the locations, so we compute them exactly instead of sampling.

  Args:
    items: uint8 [num_items, size, size, item_channels], already resized.
    canvas_size: canvas side in pixels.
    channels: channels the model sees.

  Returns:
    ``(mean, std)``, float32 [channels] each.
  """
  x = to_channels(items.astype(jnp.float32) / 255.0, channels)
  covered = (items.shape[1] * items.shape[2]) / canvas_size**2
  mean = covered * jnp.mean(x, axis=(0, 1, 2))
  second = covered * jnp.mean(jnp.square(x), axis=(0, 1, 2))
  std = jnp.sqrt(jnp.maximum(second - jnp.square(mean), 1e-12))
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def to_model_input(canvases: jax.Array, mean: jax.Array, std: jax.Array, channels: int,
                   dtype=jnp.float32) -> jax.Array:
  """uint8 canvases -> normalised ``dtype`` model input ``[batch, H, W, channels]``."""
  x = to_channels(canvases.astype(jnp.float32) / 255.0, channels)
  return ((x - mean) / std).astype(dtype)


def render(items: jax.Array, centres: jax.Array, *, canvas_size: int, mean: jax.Array,
           std: jax.Array, channels: int, dtype=jnp.float32, wrap: bool = False) -> jax.Array:
  """Items and their centres -> normalised model input ``[batch, canvas, canvas, channels]``.

  ``Renderer`` binds the keyword-only arguments as a value: the ``render`` callable that training
  and every evaluation share.
  """
  return to_model_input(place_items(items, centres, canvas_size, wrap), mean, std, channels,
                        dtype)


@dataclasses.dataclass(frozen=True)
class Renderer:
  """``render`` with its settings bound: ``(items uint8 [batch, size, size, c], centres int32
  [batch, 2]) -> model input [batch, canvas, canvas, channels]``.

  A value: renderers with equal settings are equal and hash alike, so a jitted program that takes
  one as a static argument compiles once per setting, not once per renderer object.

  Attributes:
    canvas_size: canvas side in pixels.
    mean: per-channel canvas mean in [0, 1] (one value applies to every channel).
    std: per-channel canvas std, as ``mean``.
    channels: channels the model sees.
    dtype: the model input's dtype.
    wrap: place items circularly (``place_item``).
  """
  canvas_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  channels: int
  dtype: str = "float32"
  wrap: bool = False

  def __post_init__(self):
    # Plain Python values, whatever was passed (numpy arrays, numpy scalars, jnp dtypes), so that
    # equality and hashing go by value.
    as_floats = lambda v: tuple(float(x) for x in np.ravel(np.asarray(v, np.float32)))
    object.__setattr__(self, "canvas_size", int(self.canvas_size))
    object.__setattr__(self, "mean", as_floats(self.mean))
    object.__setattr__(self, "std", as_floats(self.std))
    object.__setattr__(self, "channels", int(self.channels))
    object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)

  def __call__(self, items: jax.Array, centres: jax.Array) -> jax.Array:
    return render(items, centres, canvas_size=self.canvas_size,
                  mean=jnp.asarray(self.mean, jnp.float32),
                  std=jnp.asarray(self.std, jnp.float32), channels=self.channels,
                  dtype=jnp.dtype(self.dtype), wrap=self.wrap)
