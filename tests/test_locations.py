"""Where items go: the test grid, the samplers' exact support, the 1-location."""

import jax
import numpy as np
import pytest

from transinv_jax.data import locations


def test_paper_grid_is_the_authors_19_values():
  expected = [25, 32, 42, 52, 62, 72, 82, 92, 102, 112, 122, 132, 142, 152, 162, 172, 182, 192,
              198]
  np.testing.assert_array_equal(locations.paper_axis(224, 50), expected)


@pytest.mark.parametrize("canvas,item", [(224, 50), (64, 16), (32, 12), (100, 33), (50, 50)])
def test_paper_grid_generalises_and_keeps_items_whole(canvas, item):
  axis = locations.paper_axis(canvas, item)
  lo, hi = locations.centre_range(canvas, item)
  assert axis[0] == lo and axis[-1] == max(lo, hi - 1)
  assert np.all(np.diff(axis) > 0) and np.all(np.diff(axis) <= 10)
  if len(axis) > 2:
    assert canvas // 2 in axis
  for c in axis:
    assert locations.is_whole((c, c), canvas, item)


def test_dense_axis_is_every_whole_position():
  np.testing.assert_array_equal(locations.dense_axis(224, 50), np.arange(25, 200))
  np.testing.assert_array_equal(locations.dense_axis(20, 6, stride=4), [3, 7, 11, 15, 17])


def test_centre_range_and_leftmost_centred():
  assert locations.centre_range(224, 50) == (25, 199)
  assert locations.leftmost_centred_centre(224, 50) == (25, 112)
  assert locations.centre_range(51, 51) == (25, 25)
  with pytest.raises(ValueError):
    locations.centre_range(10, 11)


def test_grid_centres_row_major():
  centres = locations.grid_centres(np.array([1, 2, 3]), np.array([7, 8]))
  np.testing.assert_array_equal(centres, [[1, 7], [2, 7], [3, 7], [1, 8], [2, 8], [3, 8]])


def test_fully_translated_support_is_exact():
  canvas, item = 20, 7
  lo, hi = locations.centre_range(canvas, item)
  sample = locations.make_sampler("fully_translated", canvas, item)
  centres = np.asarray(sample(jax.random.key(0), np.zeros(20000, np.int32)))
  assert centres.shape == (20000, 2) and centres.dtype == np.int32
  for axis in range(2):
    # Every whole position occurs, nothing else does (both ends included).
    np.testing.assert_array_equal(np.unique(centres[:, axis]), np.arange(lo, hi + 1))


def test_fixed_samplers():
  labels = np.zeros(5, np.int32)
  left = locations.make_sampler("leftmost_centred", 224, 50)(jax.random.key(0), labels)
  np.testing.assert_array_equal(left, np.tile([25, 112], (5, 1)))
  fixed = locations.make_sampler("fixed", 224, 50, (199, 25))(jax.random.key(0), labels)
  np.testing.assert_array_equal(fixed, np.tile([199, 25], (5, 1)))
  with pytest.raises(ValueError, match="whole"):
    locations.make_sampler("fixed", 224, 50, (200, 112))
  with pytest.raises(ValueError, match="unknown sampler"):
    locations.make_sampler("everywhere", 224, 50)
