"""Where items go: the test grid, the samplers' exact support, the 1-location."""

import fractions
import functools
import math
import re

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


# ---------------------------------------------------------------------------------------------
# Class-dependent regions (exp3 areas, exp4 quadrants).
# ---------------------------------------------------------------------------------------------

LAYOUTS = {  # name -> (spec, num_classes)
    "areas": (locations.area_layout(), 18),
    **{f"quadrants_{c}": (locations.quadrant_layout(c), 26)
       for c in ("1", "2", "3.1", "3.2", "3.3", "3.4")},
    "whole": ("*:whole", 3),
    "unions": ("0:area0+area8;1:all_but_area4;2,3:area4_3x3+bottom;*:left", 5),
}


@functools.lru_cache(maxsize=None)
def _reference(canvas, item, boxes, fit):
  """Allowed centres by brute force from the box definitions, not from allowed_centres.

  "centre": centre k (0-based among the n whole-item centres) is in [f0, f1) iff
  lo + floor(f0 n) <= lo + k < lo + floor(f1 n), i.e. iff f0 n < k + 1 <= f1 n (exact fractions).
  "whole": every item pixel is in some box's pixels [floor(f c + 1/2), ...) (round half up).

  Returns:
    frozenset of (x, y).
  """
  frac = lambda f: fractions.Fraction(f).limit_denominator(1000)  # 1/3, not 0.333...
  boxes = [tuple(frac(f) for f in box) for box in boxes]
  n = canvas - item + 1  # whole-item centres per axis
  pixels = np.zeros((canvas, canvas), bool)
  for fx0, fx1, fy0, fy1 in boxes:
    edge = lambda f: math.floor(f * canvas + fractions.Fraction(1, 2))
    pixels[edge(fy0):edge(fy1), edge(fx0):edge(fx1)] = True
  allowed = set()
  for y in range(canvas):
    for x in range(canvas):
      left, top = x - item // 2, y - item // 2
      if left < 0 or top < 0 or left + item > canvas or top + item > canvas:
        continue  # cropped
      if fit == "centre":
        kx, ky = left + 1, top + 1  # k + 1: centre k sits at left == k
        ok = any(fx0 * n < kx <= fx1 * n and fy0 * n < ky <= fy1 * n
                 for fx0, fx1, fy0, fy1 in boxes)
      else:
        ok = pixels[top:top + item, left:left + item].all()
      if ok:
        allowed.add((x, y))
  return frozenset(allowed)


@pytest.mark.parametrize("fit", ["centre", "whole"])
@pytest.mark.parametrize("canvas,item", [(24, 6), (20, 5)])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_region_sampler_support_is_exact_and_uniform(layout, canvas, item, fit):
  spec, num_classes = LAYOUTS[layout]
  per_class = 20000
  class_boxes = locations.parse_layout(spec, num_classes)
  sample = locations.make_sampler("regions", canvas, item, layout=spec, num_classes=num_classes,
                                  fit=fit)
  labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
  centres = np.asarray(jax.jit(sample)(jax.random.key(0), labels))
  assert centres.shape == (len(labels), 2) and centres.dtype == np.int32
  for k, boxes in enumerate(class_boxes):
    reference = _reference(canvas, item, tuple(boxes), fit)
    mask = locations.allowed_centres(canvas, item, boxes, fit)
    assert set(map(tuple, np.argwhere(mask)[:, ::-1].tolist())) == reference, k
    mine = centres[labels == k]
    counts = np.bincount(mine[:, 1] * canvas + mine[:, 0], minlength=canvas * canvas)
    seen = np.stack(np.divmod(np.flatnonzero(counts), canvas)[::-1], axis=-1)  # (x, y)
    counts = counts[counts > 0]
    # (a) only allowed, whole centres; (b) every allowed centre occurs.
    assert set(map(tuple, seen.tolist())) == reference, k
    assert all(locations.is_whole(c, canvas, item) for c in seen)
    # (c) uniform: chi-square far below a loose bound (df + 6 sd).
    expected = per_class / len(reference)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    df = len(reference) - 1
    assert chi2 < df + 6 * math.sqrt(2 * max(df, 1)) + 10, (k, chi2, df)


def test_paper_areas_partition_the_centres():
  masks = np.stack([locations.allowed_centres(224, 50, [locations.REGIONS[f"area{i}"]])
                    for i in range(9)])
  whole = np.zeros((224, 224), int)
  whole[25:200, 25:200] = 1
  np.testing.assert_array_equal(masks.sum(0), whole)  # every centre in exactly one area
  spans = []
  for mask in masks:
    ys, xs = np.nonzero(mask)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert {width, height} <= {58, 59} and mask.sum() == width * height  # full rectangles
    spans.append((xs.min(), ys.min()))
  # Row-major, row 0 on top: area1 is right of area0, area3 below it.
  assert spans[:4] == [(25, 25), (83, 25), (141, 25), (25, 83)]
  assert spans[8] == (141, 141)


def test_paper_quadrants_partition_the_centres():
  names = ["upper_left", "upper_right", "lower_left", "lower_right"]
  masks = {n: locations.allowed_centres(224, 50, [locations.REGIONS[n]]) for n in names}
  total = sum(m.astype(int) for m in masks.values())
  assert total[25:200, 25:200].min() == 1 and total.max() == 1 and total.sum() == 175 ** 2
  y, x = np.mgrid[:224, :224]
  np.testing.assert_array_equal(masks["upper_right"],
                                (x >= 112) & (x <= 199) & (y >= 25) & (y < 112))
  # all_but_upper_right is exactly the other three quadrants.
  rest = locations.allowed_centres(224, 50, locations.region_boxes("all_but_upper_right"))
  np.testing.assert_array_equal(rest, total.astype(bool) & ~masks["upper_right"])


def _paper_sample(condition, fit="centre", per_class=2000):
  sample = locations.make_sampler("regions", 224, 50, layout=locations.quadrant_layout(condition),
                                  num_classes=26, fit=fit)
  labels = np.repeat(np.arange(26, dtype=np.int32), per_class)
  return labels, np.asarray(jax.jit(sample)(jax.random.key(1), labels))


def _upper_right(centres):
  return (centres[:, 0] >= 112) & (centres[:, 1] < 112)


def test_paper_quadrant_conditions():
  labels, centres = _paper_sample("1")
  assert not _upper_right(centres).any()
  assert centres.min() == 25 and centres.max() == 199  # still reaches the canvas edges

  labels, centres = _paper_sample("2")
  late = labels >= 19  # T..Z
  assert _upper_right(centres[late]).all() and not _upper_right(centres[~late]).any()

  labels, centres = _paper_sample("3.1")
  a = centres[labels == 0]
  quadrant = (a[:, 0] >= 112).astype(int) + 2 * (a[:, 1] >= 112)
  assert set(quadrant.tolist()) == {0, 1, 2, 3}  # A fully translated
  assert _upper_right(centres[labels != 0]).all()

  for condition, first_local in [("3.2", 10), ("3.3", 20), ("3.4", 25)]:
    labels, centres = _paper_sample(condition, per_class=300)
    assert _upper_right(centres[labels >= first_local]).all()
    assert not _upper_right(centres[labels < first_local]).all()


def test_paper_condition_1_whole_fit_never_touches_upper_right():
  _, centres = _paper_sample("1", fit="whole")
  right_edge, top = centres[:, 0] - 25 + 50, centres[:, 1] - 25  # item pixels [x-25, x+25)
  assert not ((right_edge > 112) & (top < 112)).any()


def test_layout_builders_and_parsing():
  assert locations.area_layout() == ("0-1:area0;2-3:area1;4-5:area2;6-7:area3;8-9:area4;"
                                     "10-11:area5;12-13:area6;14-15:area7;16-17:area8")
  assert locations.area_layout(2, 1) == "0:area0_2x2;1:area1_2x2;2:area2_2x2;3:area3_2x2"
  assert locations.quadrant_layout("2") == "19-25:upper_right;*:all_but_upper_right"
  boxes = locations.parse_layout(locations.area_layout(), 18)
  assert boxes[0] == boxes[1] == [locations.REGIONS["area0"]]
  assert boxes[17] == [locations.REGIONS["area8"]]
  assert locations.areas(3) == [locations.REGIONS[f"area{i}"] for i in range(9)]
  assert locations.region_boxes("area4_3x3") == [locations.REGIONS["area4"]]
  boxes = locations.parse_layout(" 0 , 2-3 : top + top + left ; * : whole ;", 5)
  top, left = locations.REGIONS["top"], locations.REGIONS["left"]
  assert boxes == [[top, left], [locations.REGIONS["whole"]], [top, left], [top, left],
                   [locations.REGIONS["whole"]]]
  masks = locations.layout_masks(24, 6, locations.quadrant_layout("2"), 26)
  assert masks.shape == (26, 24, 24) and masks.dtype == bool
  assert not (masks[0] & masks[25]).any()  # T..Z and the rest never share a centre


@pytest.mark.parametrize("spec,num_classes,message", [
    ("0-17:area9", 18, "unknown region 'area9'; expected one of whole, upper_left"),
    ("0-17:all_but_whole", 18, "unknown region"),
    ("0-18:whole", 18, "class 18 out of range [0, 18)"),
    ("0-9:whole;9-17:top", 18, "class 9 is given twice"),
    ("0-16:whole", 18, "classes [17] have no region"),
    ("0-17", 18, "malformed entry '0-17'"),
    ("0-17:whole:top", 18, "malformed entry"),
    ("a-b:whole", 18, "bad classes 'a-b'"),
    ("5-3:whole;*:top", 18, "empty class range '5-3'"),
    ("*:whole;*:top", 18, "more than one '*'"),
])
def test_parse_layout_errors(spec, num_classes, message):
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    locations.parse_layout(spec, num_classes)
  assert repr(spec) in str(error.value)  # names the spec


def test_region_errors():
  with pytest.raises(ValueError, match="expected one of 1, 2, 3.1"):
    locations.quadrant_layout("5")
  with pytest.raises(ValueError, match="'centre', 'whole'"):
    locations.make_sampler("fully_translated", 24, 6, fit="middle")
  with pytest.raises(ValueError, match="needs a layout and num_classes"):
    locations.make_sampler("regions", 24, 6)
  with pytest.raises(ValueError, match="class 0: region area0 allows no centre"):
    locations.make_sampler("regions", 20, 10, layout=locations.area_layout(), num_classes=18,
                           fit="whole")
  with pytest.raises(ValueError, match="0 <= f0 < f1 <= 1"):
    locations.allowed_centres(24, 6, [(0.5, 0.5, 0, 1)])


def test_region_sampler_under_jit_and_vmap():
  sample = locations.make_sampler("regions", 24, 6, layout=locations.area_layout(),
                                  num_classes=18)
  keys = jax.random.split(jax.random.key(3), 4)
  labels = np.arange(18, dtype=np.int32)
  batched = jax.jit(jax.vmap(sample, in_axes=(0, None)))(keys, labels)
  assert batched.shape == (4, 18, 2) and batched.dtype == np.int32
  one = jax.jit(sample)
  for key, centres in zip(keys, np.asarray(batched)):
    np.testing.assert_array_equal(centres, one(key, labels))  # same draws as one by one
  both = jax.vmap(sample)(keys, np.tile(labels, (4, 1)))
  np.testing.assert_array_equal(both, batched)
  masks = locations.layout_masks(24, 6, locations.area_layout(), 18)
  flat = np.asarray(batched).reshape(-1, 2)
  assert masks[np.tile(labels, 4), flat[:, 1], flat[:, 0]].all()


def test_fraction_edges():
  # 0.29 * 100 is 28.999... in floats: still 29 of the 100 centres (canvas 110, item 11).
  left = locations.allowed_centres(110, 11, [(0, 0.29, 0, 1)])
  right = locations.allowed_centres(110, 11, [(0.29, 1, 0, 1)])
  assert left[5].sum() == 29 and right[5].sum() == 71 and not (left & right).any()
  # fit="whole" rounds box edges half up: 0.125 * 20 = 2.5 -> pixel 3, so the leftmost centre of
  # a 2-pixel item (pixels [c - 1, c + 1)) is 4.
  mask = locations.allowed_centres(20, 2, [(0.125, 1, 0, 1)], fit="whole")
  assert np.flatnonzero(mask[10]).min() == 4


@pytest.mark.parametrize("canvas,item", [(20, 6), (21, 5)])
def test_coverage_map_is_the_mean_footprint(canvas, item):
  mask = np.random.default_rng(0).random((canvas, canvas)) < 0.3
  lo, hi = locations.centre_range(canvas, item)
  mask[:lo], mask[hi + 1:], mask[:, :lo], mask[:, hi + 1:] = False, False, False, False
  brute = np.zeros((canvas, canvas))
  for y, x in zip(*np.nonzero(mask)):  # each centre's item: pixels [c - s // 2, c - s // 2 + s)
    brute[y - item // 2:y - item // 2 + item, x - item // 2:x - item // 2 + item] += 1
  cover = locations.coverage_map(mask, item)
  np.testing.assert_allclose(cover, brute / mask.sum())
  assert np.isclose(cover.sum(), item * item) and cover.max() <= 1


def test_paper_condition_1_coverage_spills_into_the_upper_right():
  # 22,969 allowed centres; an item enters the upper-right quadrant (x >= 112, y < 112) when its
  # centre has x >= 88 and y <= 136: 24 * 112 + 88 * 25 = 4,888 of them.
  (centre,) = locations.training_coverage(224, 50, locations.quadrant_layout("1"), 26)
  assert centre.group.classes == tuple(range(26)) and centre.group.region == "all_but_upper_right"
  assert (centre.allowed, centre.spilling) == (22969, 4888)
  np.testing.assert_array_equal(centre.pixels, ~locations.region_pixels(
      224, [locations.REGIONS["upper_right"]]))
  assert np.isclose(centre.map.sum(), 2500)
  assert np.isclose(centre.outside_pixel_fraction, centre.map[:112, 112:].sum() / 2500)
  assert centre.map[:112, 112:].max() > 0 and centre.map[:87, 137:].max() == 0
  (whole,) = locations.training_coverage(224, 50, locations.quadrant_layout("1"), 26, "whole")
  assert whole.spilling == 0 and whole.outside_pixel_fraction == 0
  assert whole.map[:112, 112:].max() == 0
  assert whole.numbers()["spilling_fraction"] == 0


def test_layout_groups_and_condition_2_coverage():
  groups = locations.layout_groups(locations.quadrant_layout("2"), 26)
  assert [(g.classes, g.region) for g in groups] == [
      (tuple(range(19)), "all_but_upper_right"), (tuple(range(19, 26)), "upper_right")]
  assert [len(g.classes) for g in locations.layout_groups(locations.area_layout(), 18)] == [2] * 9
  # T-Z centred in the upper-right quadrant's centres (x 112..199, y 25..111): an item leaves
  # the quadrant's pixels when x < 137 or y >= 88, i.e. all but 63 * 63 of the 88 * 87 centres.
  _, late = locations.training_coverage(224, 50, locations.quadrant_layout("2"), 26)
  assert late.numbers() == {
      "classes": list(range(19, 26)), "region": "upper_right", "allowed_centres": 7656,
      "spilling_centres": 7656 - 63 * 63, "spilling_fraction": (7656 - 63 * 63) / 7656,
      "outside_pixel_fraction": late.outside_pixel_fraction}
  for cover in locations.training_coverage(64, 16, locations.area_layout(), 18, "whole"):
    assert cover.spilling == 0 and np.isclose(cover.map.sum(), 256)
