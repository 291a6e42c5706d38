"""Where items go on the canvas: training samplers and the test grids.

A location is the item's centre ``(x, y)`` in canvas pixels, as the authors' code defines it: an item
of size ``s`` centred at ``c`` covers pixels ``[c - s // 2, c - s // 2 + s)`` on that axis. Every
function here returns integer centres that keep the item whole on the canvas; nothing is ever cropped.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# (key, labels [batch]) -> centres int32 [batch, 2] as (x, y). Labels are an argument so that
# class-dependent samplers (areas, quadrants) share the signature.
Sampler = Callable[[jax.Array, jax.Array], jax.Array]

SAMPLERS = ("leftmost_centred", "fully_translated", "fixed")


def centre_range(canvas_size: int, item_size: int) -> tuple[int, int]:
  """Smallest and largest centre (inclusive) that keep an item whole on one axis.

  Args:
    canvas_size: canvas side in pixels.
    item_size: item side in pixels (at most ``canvas_size``).

  Returns:
    ``(lo, hi)``; 224 / 50 gives ``(25, 199)``.
  """
  if item_size > canvas_size:
    raise ValueError(f"item_size {item_size} > canvas_size {canvas_size}")
  lo = item_size // 2
  return lo, canvas_size - item_size + lo


def is_whole(centre: Sequence[int], canvas_size: int, item_size: int) -> bool:
  """Whether an item centred at ``centre = (x, y)`` lies whole on the canvas."""
  lo, hi = centre_range(canvas_size, item_size)
  return all(lo <= int(c) <= hi for c in centre)


def leftmost_centred_centre(canvas_size: int, item_size: int) -> tuple[int, int]:
  """The 1-location of exp1: touching the left edge, vertically centred: (25, 112) on 224 / 50."""
  lo, _ = centre_range(canvas_size, item_size)
  return lo, canvas_size // 2


def fixed(centre: Sequence[int]) -> Sampler:
  """Every item at one centre ``(x, y)``."""
  centre = jnp.asarray(centre, jnp.int32)

  def sample(key, labels):
    del key
    return jnp.broadcast_to(centre, (labels.shape[0], 2))

  return sample


def fully_translated(canvas_size: int, item_size: int) -> Sampler:
  """Centres uniform over every position that keeps the item whole (both ends included).

  The authors' code draws from the half-open range ``[lo, hi)`` and so never uses the last column
  and row; we include them, as the protocol ("anywhere on the canvas, never cropped") says.
  """
  lo, hi = centre_range(canvas_size, item_size)

  def sample(key, labels):
    return jax.random.randint(key, (labels.shape[0], 2), lo, hi + 1, dtype=jnp.int32)

  return sample


def make_sampler(name: str, canvas_size: int, item_size: int,
                 centre: Sequence[int] | None = None) -> Sampler:
  """The sampler called ``name`` (one of ``SAMPLERS``); ``centre`` is used by ``"fixed"``."""
  if name == "leftmost_centred":
    return fixed(leftmost_centred_centre(canvas_size, item_size))
  if name == "fully_translated":
    return fully_translated(canvas_size, item_size)
  if name == "fixed":
    if centre is None or not is_whole(centre, canvas_size, item_size):
      raise ValueError(f"fixed centre {centre} does not keep the item whole")
    return fixed(centre)
  raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")


def paper_axis(canvas_size: int, item_size: int, step: int = 10) -> np.ndarray:
  """Test-grid centres along one axis, built as the authors' code builds them.

  Steps of ``step`` outward from the canvas centre, plus the two extremes of the authors' half-open
  range ``[lo, hi)``: on 224 / 50 that is 25, 32, 42, ..., 102, 112, 122, ..., 192, 198 (19 values).

  Args:
    canvas_size: canvas side in pixels.
    item_size: item side in pixels.
    step: spacing in pixels of the inner values.

  Returns:
    int32 [n], sorted and unique.
  """
  lo, hi = centre_range(canvas_size, item_size)
  last = max(lo, hi - 1)  # the authors' range is half-open
  mid = canvas_size // 2
  below = range(mid - step, lo, -step)
  above = range(mid + step, last, step)
  values = {lo, last, *below, *above}
  if lo <= mid <= last:
    values.add(mid)
  return np.array(sorted(values), np.int32)


def dense_axis(canvas_size: int, item_size: int, stride: int = 1) -> np.ndarray:
  """Every ``stride``-th centre that keeps the item whole, both ends included: int32 [n]."""
  lo, hi = centre_range(canvas_size, item_size)
  values = np.arange(lo, hi + 1, stride, dtype=np.int32)
  if values[-1] != hi:
    values = np.append(values, np.int32(hi))
  return values


def grid_centres(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
  """All ``(x, y)`` pairs, row-major (y outer): int32 [len(ys) * len(xs), 2].

  Reshaping a per-centre result to ``[len(ys), len(xs)]`` gives an image-like map (rows = y).
  """
  gx, gy = np.meshgrid(xs, ys)
  return np.stack([gx.ravel(), gy.ravel()], axis=-1).astype(np.int32)
