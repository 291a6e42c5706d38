"""Canvas composition on the device: exact pixels, never cropped, exact normalisation stats."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transinv_jax.data import canvas, locations


def reference_place(item: np.ndarray, centre, canvas_size: int) -> np.ndarray:
  out = np.zeros((canvas_size, canvas_size, item.shape[-1]), item.dtype)
  s = item.shape[0]
  x0, y0 = centre[0] - s // 2, centre[1] - s // 2
  out[y0:y0 + s, x0:x0 + s] = item
  return out


@pytest.mark.parametrize("canvas_size,size,channels", [(224, 50, 1), (32, 7, 3), (16, 16, 1)])
def test_place_items_exact_pixels_everywhere(canvas_size, size, channels):
  rng = np.random.default_rng(0)
  lo, hi = locations.centre_range(canvas_size, size)
  # The four corners, the centre, and random positions.
  centres = np.array([[lo, lo], [hi, lo], [lo, hi], [hi, hi], [(lo + hi) // 2] * 2] +
                     rng.integers(lo, hi + 1, (11, 2)).tolist(), np.int32)
  items = rng.integers(1, 256, (len(centres), size, size, channels), dtype=np.uint8)
  placed = np.asarray(canvas.place_items(items, centres, canvas_size))
  assert placed.dtype == np.uint8
  for item, centre, got in zip(items, centres, placed):
    np.testing.assert_array_equal(got, reference_place(item, centre, canvas_size))
    # Never cropped: every item pixel is on the canvas.
    assert got.astype(np.int64).sum() == item.astype(np.int64).sum()


def test_place_items_keeps_float_dtypes():
  items = jnp.full((2, 3, 3, 1), 255.0, jnp.bfloat16)
  out = canvas.place_items(items, jnp.array([[1, 1], [4, 4]]), 6)
  assert out.dtype == jnp.bfloat16
  assert float(out.astype(jnp.float32).sum()) == 2 * 9 * 255


def test_wrapped_placement_is_the_rolled_canvas():
  rng = np.random.default_rng(2)
  items = rng.integers(1, 256, (4, 5, 5, 2), dtype=np.uint8)
  base = np.array([8, 8], np.int32)
  # Offsets that carry the item across every edge, and past the canvas altogether.
  offsets = np.array([[-7, 5], [6, -9], [7, 7], [-20, 17]], np.int32)
  rolled = canvas.place_items(items, np.tile(base, (4, 1)), 16)
  wrapped = canvas.place_items(items, base + offsets, 16, True)
  for r, w, (dx, dy) in zip(np.asarray(rolled), np.asarray(wrapped), offsets):
    np.testing.assert_array_equal(w, np.roll(r, (dy, dx), axis=(0, 1)))


def test_renderer_is_a_value():
  a = canvas.Renderer(32, np.float32(0.1), np.array([0.3], np.float32), 3, jnp.float32)
  b = canvas.Renderer(32, (0.1,), 0.3, 3)
  assert a == b and hash(a) == hash(b)  # equal settings: one compiled program
  assert a != canvas.Renderer(32, 0.1, 0.3, 3, wrap=True)
  items = np.full((2, 4, 4, 1), 128, np.uint8)
  centres = np.array([[3, 3], [10, 20]], np.int32)
  expected = canvas.render(items, centres, canvas_size=32, mean=np.float32(0.1),
                           std=np.float32(0.3), channels=3)
  np.testing.assert_array_equal(a(items, centres), expected)


def test_resize_items():
  images = np.full((3, 28, 28, 1), 200, np.uint8)
  out = canvas.resize_items(images, 50)
  assert out.shape == (3, 50, 50, 1) and out.dtype == jnp.uint8
  assert np.all(np.asarray(out) == 200)  # a constant image stays constant
  assert canvas.resize_items(np.asarray(out), 50).shape == (3, 50, 50, 1)


def test_to_channels():
  gray = jnp.arange(6, dtype=jnp.float32).reshape(1, 2, 3, 1)
  rgb = canvas.to_channels(gray, 3)
  assert rgb.shape == (1, 2, 3, 3)
  np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
  np.testing.assert_allclose(canvas.to_channels(rgb, 1), gray, rtol=1e-6)


def test_canvas_stats_match_sampled_canvases():
  rng = np.random.default_rng(1)
  items = jnp.asarray(rng.integers(0, 256, (64, 5, 5, 1), dtype=np.uint8))
  mean, std = canvas.canvas_stats(items, 12, channels=3)
  sample = locations.make_sampler("fully_translated", 12, 5)
  canvases = canvas.place_items(items, sample(jax.random.key(0), jnp.zeros(64)), 12)
  x = canvas.to_channels(canvases.astype(jnp.float32) / 255, 3)
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-5)
  normalised = canvas.to_model_input(canvases, mean, std, 3)
  np.testing.assert_allclose(normalised.mean(), 0, atol=1e-5)
  np.testing.assert_allclose(normalised.std(), 1, atol=1e-4)
