"""Where items go on the canvas: training samplers and the test grids.

A location is the item's centre ``(x, y)`` in canvas pixels, as the authors' code defines it: an item
of size ``s`` centred at ``c`` covers pixels ``[c - s // 2, c - s // 2 + s)`` on that axis. Every
function here returns integer centres that keep the item whole on the canvas; nothing is ever cropped.
``training_coverage`` says where a class-region sampler puts item pixels (the exp3 and exp4
coverage figures).
"""

import dataclasses
import math
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# (key, labels [batch]) -> centres int32 [batch, 2] as (x, y). Labels are an argument so that
# class-dependent samplers (areas, quadrants) share the signature.
Sampler = Callable[[jax.Array, jax.Array], jax.Array]

SAMPLERS = ("leftmost_centred", "fully_translated", "fixed", "regions", "corners")
# Kayhan & van Gemert's location classes: the item in the upper-left or the bottom-right corner.
CORNERS = ("upper_left", "bottom_right")


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


def corner_centres(canvas_size: int, item_size: int, border: int = 0) -> np.ndarray:
  """Kayhan & van Gemert's two locations: the item in the upper-left corner (class 0) or the
  bottom-right corner (class 1) of the canvas, inside a black border of ``border`` px.

  With ``canvas_size = 2 * (item_size + border)`` the item fills one quadrant of the image inside
  the border, as in Quadrant ImageNet (56 px items, borders 0 to 512 px); with ``border = 0`` it
  touches the canvas edges, as the rook patches do.

  Args:
    canvas_size: canvas side in pixels.
    item_size: item side in pixels.
    border: black margin kept between the item and the canvas edge, in pixels.

  Returns:
    int32 [2, 2]: the (x, y) centres of class 0 and class 1.

  Raises:
    ValueError: the border leaves no room for a whole item (named values and the fix).
  """
  lo = item_size // 2
  upper_left = border + lo
  bottom_right = canvas_size - border - item_size + lo
  if border < 0 or bottom_right < upper_left:
    raise ValueError(
        f"border {border} leaves no room for a {item_size} px item on a {canvas_size} px canvas: "
        f"use a canvas of at least {item_size + 2 * max(border, 0)} px (Kayhan & van Gemert: "
        f"2 * (item + border) = {2 * (item_size + max(border, 0))})")
  return np.array([[upper_left] * 2, [bottom_right] * 2], np.int32)


def corners(canvas_size: int, item_size: int, border: int = 0) -> Sampler:
  """Each item at its class's corner (``corner_centres``); labels are 0 or 1."""
  table = jnp.asarray(corner_centres(canvas_size, item_size, border))

  def sample(key, labels):
    del key
    return table[jnp.clip(labels, 0, 1)]

  return sample


def make_sampler(name: str, canvas_size: int, item_size: int,
                 centre: Sequence[int] | None = None, *, layout: str = "",
                 num_classes: int | None = None, fit: str = "centre",
                 border: int = 0) -> Sampler:
  """The sampler called ``name`` (one of ``SAMPLERS``).

  Args:
    name: ``"leftmost_centred"``, ``"fully_translated"``, ``"fixed"``, ``"regions"`` or
      ``"corners"``.
    canvas_size: canvas side in pixels.
    item_size: item side in pixels.
    centre: ``(x, y)`` for ``"fixed"``.
    layout: ``"regions"``: each class's region (``parse_layout``), e.g. ``area_layout()`` or
      ``quadrant_layout("2")``.
    num_classes: ``"regions"``: how many classes the layout covers.
    fit: ``"regions"``: ``"centre"`` or ``"whole"`` (``allowed_centres``).
    border: ``"corners"``: the black margin around the two corners (``corner_centres``).

  Returns:
    The sampler.
  """
  if fit not in FITS:
    raise ValueError(f"unknown fit {fit!r}; expected one of {', '.join(map(repr, FITS))}")
  if name == "regions":
    if not layout or num_classes is None:
      raise ValueError("the 'regions' sampler needs a layout and num_classes, e.g. "
                       "layout=area_layout(), num_classes=18")
    return region_sampler(canvas_size, item_size, parse_layout(layout, num_classes), fit)
  if name == "corners":
    if num_classes is not None and num_classes != 2:
      raise ValueError(f"the 'corners' sampler places 2 classes (upper-left, bottom-right), not "
                       f"{num_classes}: use it with config.data.labels='location' or "
                       "'location_pairs'")
    return corners(canvas_size, item_size, border)
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


# ---------------------------------------------------------------------------------------------
# Class-dependent regions (exp3: 9 areas, 2 classes each; exp4: quadrant conditions).
# ---------------------------------------------------------------------------------------------

# A region box: ``(fx0, fx1, fy0, fy1)``, fractions of a space (see ``allowed_centres`` for the
# two spaces), ``0 <= f0 < f1 <= 1`` on each axis; y grows downwards, so small y is the top.
Box = tuple[float, float, float, float]

# "centre": the box cuts the space of whole-item centres (the paper's exp3: an item may overlap a
# neighbouring area a little). "whole": the item's pixels must lie inside the box's pixels.
FITS = ("centre", "whole")

# Fractions are floats: 0.29 * 100 is 28.999..., and must count as 29.
_EPS = 1e-9


def areas(n: int) -> list[Box]:
  """The ``n`` x ``n`` equal split of the space, row-major: area ``row * n + col``, row 0 on top.

  Neighbours share the same float edge, so the areas partition the space exactly.

  Args:
    n: areas per side.

  Returns:
    ``n * n`` boxes.
  """
  if n < 1:
    raise ValueError(f"areas per side must be >= 1, got {n}")
  edges = [i / n for i in range(n + 1)]
  return [(edges[c], edges[c + 1], edges[r], edges[r + 1]) for r in range(n) for c in range(n)]


REGIONS: dict[str, Box] = {
    "whole": (0.0, 1.0, 0.0, 1.0),
    "upper_left": (0.0, 0.5, 0.0, 0.5),
    "upper_right": (0.5, 1.0, 0.0, 0.5),
    "lower_left": (0.0, 0.5, 0.5, 1.0),
    "lower_right": (0.5, 1.0, 0.5, 1.0),
    "left": (0.0, 0.5, 0.0, 1.0),
    "right": (0.5, 1.0, 0.0, 1.0),
    "top": (0.0, 1.0, 0.0, 0.5),
    "bottom": (0.0, 1.0, 0.5, 1.0),
    **{f"area{i}": box for i, box in enumerate(areas(3))},
}

_ALL_BUT = "all_but_"
_AREA_OF = re.compile(r"area(\d+)_(\d+)x(\d+)")  # area<i>_<n>x<n>: area i of an n x n split


def _check_box(box: Sequence[float]) -> Box:
  """``box`` as a tuple of 4 floats, after checking ``0 <= f0 < f1 <= 1`` on both axes."""
  if len(box) != 4:
    raise ValueError(f"a region box is (fx0, fx1, fy0, fy1), got {box!r}")
  fx0, fx1, fy0, fy1 = (float(f) for f in box)
  if not (0 <= fx0 < fx1 <= 1 and 0 <= fy0 < fy1 <= 1):
    raise ValueError(f"region box {box!r} needs 0 <= f0 < f1 <= 1 on both axes")
  return fx0, fx1, fy0, fy1


def _box_name(box: Box) -> str:
  """The ``REGIONS`` name of ``box`` if it has one (for error messages), else the tuple."""
  for name, known in REGIONS.items():
    if known == tuple(box):
      return name
  return repr(tuple(box))


def _complement(box: Box) -> list[Box]:
  """``whole`` minus ``box`` as disjoint boxes: full-height strips left and right of it, and the
  parts above and below it between those strips (same edges, so the split stays exact)."""
  fx0, fx1, fy0, fy1 = box
  parts = []
  if fx0 > 0:
    parts.append((0.0, fx0, 0.0, 1.0))
  if fx1 < 1:
    parts.append((fx1, 1.0, 0.0, 1.0))
  if fy0 > 0:
    parts.append((fx0, fx1, 0.0, fy0))
  if fy1 < 1:
    parts.append((fx0, fx1, fy1, 1.0))
  return parts


def region_names() -> list[str]:
  """The region names ``parse_layout`` accepts, two as patterns (for error messages)."""
  return [*REGIONS, "all_but_<region other than whole>", "area<i>_<n>x<n>"]


def region_boxes(name: str) -> list[Box]:
  """The boxes of a named region.

  Args:
    name: a ``REGIONS`` key; ``all_but_<key>`` (whole minus that region, e.g.
      ``all_but_upper_right``); or ``area<i>_<n>x<n>`` (area ``i`` of an ``n`` x ``n`` split,
      row-major, so ``area4_3x3`` is ``area4``).

  Returns:
    The region as a union of boxes.
  """
  if name in REGIONS:
    return [REGIONS[name]]
  if name.startswith(_ALL_BUT) and name[len(_ALL_BUT):] in REGIONS and name != _ALL_BUT + "whole":
    return _complement(REGIONS[name[len(_ALL_BUT):]])
  match = _AREA_OF.fullmatch(name)
  if match and match[2] == match[3] and int(match[1]) < int(match[2]) ** 2:
    return [areas(int(match[2]))[int(match[1])]]
  raise ValueError(f"unknown region {name!r}; expected one of {', '.join(region_names())}")


def _centre_span(f0: float, f1: float, lo: int, hi: int) -> tuple[int, int]:
  """Centres ``[start, stop)`` that fraction ``[f0, f1)`` of the ``n`` centres ``lo..hi`` gets.

  Half-open on ``lo + floor(f * n)``, so boxes sharing an edge split the centres exactly; ``f1 ==
  1`` reaches ``hi`` (``lo + n == hi + 1``).
  """
  n = hi - lo + 1
  return lo + math.floor(f0 * n + _EPS), lo + math.floor(f1 * n + _EPS)


def _pixel_span(f0: float, f1: float, canvas_size: int) -> tuple[int, int]:
  """Pixels ``[a, b)`` of fraction ``[f0, f1)`` of the canvas, edges rounded half up."""
  return (math.floor(f0 * canvas_size + 0.5 + _EPS), math.floor(f1 * canvas_size + 0.5 + _EPS))


def region_pixels(canvas_size: int, boxes: Sequence[Sequence[float]]) -> np.ndarray:
  """The canvas pixels of a region, as ``fit="whole"`` reads its boxes.

  A box covers pixels ``[round(f0 * canvas), round(f1 * canvas))`` per axis, rounded half up.

  Args:
    canvas_size: canvas side in pixels.
    boxes: the region, one or more ``(fx0, fx1, fy0, fy1)``.

  Returns:
    bool [canvas_size, canvas_size] indexed ``[y, x]``.
  """
  pixels = np.zeros((canvas_size, canvas_size), bool)
  for box in boxes:
    fx0, fx1, fy0, fy1 = _check_box(box)
    x0, x1 = _pixel_span(fx0, fx1, canvas_size)
    y0, y1 = _pixel_span(fy0, fy1, canvas_size)
    pixels[y0:y1, x0:x1] = True
  return pixels


def _centres_inside(pixels: np.ndarray, item_size: int) -> np.ndarray:
  """Whole-item centres whose every pixel is in ``pixels``: bool [canvas, canvas], [y, x]."""
  canvas_size = pixels.shape[0]
  lo, hi = centre_range(canvas_size, item_size)
  # Summed-area table: a window is inside the region iff all its item_size**2 pixels are.
  table = np.pad(pixels.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
  s = item_size
  window = table[s:, s:] - table[:-s, s:] - table[s:, :-s] + table[:-s, :-s]  # [top, left]
  # The window with top-left pixel (left, top) is the item centred at (left + s//2, top + s//2).
  mask = np.zeros_like(pixels)
  mask[lo:hi + 1, lo:hi + 1] = window == s * s
  return mask


def allowed_centres(canvas_size: int, item_size: int, boxes: Sequence[Sequence[float]],
                    fit: str = "centre") -> np.ndarray:
  """Where an item may be centred so that it is whole on the canvas and inside a region.

  The region is the union of ``boxes``; ``fit`` says what a box is a fraction of:

  * ``"centre"``: the space of whole-item centres ``lo..hi`` on each axis (``centre_range``). With
    ``n = hi - lo + 1``, a centre ``c`` is in ``[f0, f1)`` iff ``lo + floor(f0 * n) <= c < lo +
    floor(f1 * n)`` (``f1 == 1`` reaches ``hi``): boxes sharing edges (``areas``, the quadrants)
    partition the centres exactly. On 224 / 50 the 3 x 3 areas are 58, 58 and 59 centres wide.
    Items may overlap a neighbouring region, as in the paper's exp3.
  * ``"whole"``: the canvas pixels. A box covers pixels ``[round(f0 * canvas), round(f1 *
    canvas))`` per axis, rounded half up, and every pixel of the item, ``[c - s // 2, c - s // 2 +
    s)`` per axis, must lie in the union of the boxes' pixels.

  Args:
    canvas_size: canvas side in pixels.
    item_size: item side in pixels.
    boxes: the region, one or more ``(fx0, fx1, fy0, fy1)``.
    fit: ``"centre"`` or ``"whole"``.

  Returns:
    bool [canvas_size, canvas_size] indexed ``[y, x]``: True where a centre ``(x, y)`` is allowed.

  Raises:
    ValueError: bad ``fit`` or box, or a region that allows no centre (say, an item larger than
      the region under ``fit="whole"``).
  """
  if fit not in FITS:
    raise ValueError(f"unknown fit {fit!r}; expected one of {', '.join(map(repr, FITS))}")
  boxes = [_check_box(box) for box in boxes]
  lo, hi = centre_range(canvas_size, item_size)
  mask = np.zeros((canvas_size, canvas_size), bool)
  if fit == "centre":
    for fx0, fx1, fy0, fy1 in boxes:
      x0, x1 = _centre_span(fx0, fx1, lo, hi)
      y0, y1 = _centre_span(fy0, fy1, lo, hi)
      mask[y0:y1, x0:x1] = True
  else:
    mask = _centres_inside(region_pixels(canvas_size, boxes), item_size)
  if not mask.any():
    names = " + ".join(_box_name(box) for box in boxes) or "(no boxes)"
    raise ValueError(
        f"region {names} allows no centre for a {item_size}-pixel item on a {canvas_size}-pixel "
        f"canvas with fit={fit!r}; use a larger region or a smaller item"
        + (", or fit='centre'" if fit == "whole" else ""))
  return mask


def _parse_classes(text: str, spec: str, num_classes: int) -> list[int]:
  """Class indices of ``"3"``, ``"0-9"`` or ``"0,2,5-7"`` (each checked against the range)."""
  classes = []
  for part in text.split(","):
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
    if not match:
      raise ValueError(f"layout {spec!r}: bad classes {text!r}; write e.g. '3', '0-9', '0,2,5-7' "
                       "or '*'")
    first = int(match[1])
    last = int(match[2]) if match[2] is not None else first
    if last < first:
      raise ValueError(f"layout {spec!r}: empty class range {part.strip()!r}; write 'low-high'")
    if last >= num_classes:
      raise ValueError(f"layout {spec!r}: class {last} out of range [0, {num_classes}); "
                       f"num_classes is {num_classes}")
    classes.extend(range(first, last + 1))
  return classes


def _union_boxes(regions_text: str, spec: str) -> list[Box]:
  """The boxes of ``"name+name..."`` (each box once, in order); errors name the layout."""
  boxes = []
  for name in regions_text.split("+"):
    try:
      boxes.extend(box for box in region_boxes(name.strip()) if box not in boxes)
    except ValueError as e:
      raise ValueError(f"layout {spec!r}: {e}") from None
  return boxes


def parse_layout(spec: str, num_classes: int) -> list[list[Box]]:
  """Each class's region from a config string.

  Grammar: entries ``CLASSES:REGIONS`` joined by ``;``. ``CLASSES`` is a comma list of indices and
  inclusive ranges (``0,2,5-7``) or ``*``, every class no other entry names. ``REGIONS`` is region
  names (``region_boxes``) joined by ``+``, a union. Whitespace and empty entries are ignored.
  Examples: ``"0-1:area0;2-3:area1"``, ``"19-25:upper_right;*:all_but_upper_right"``.

  Args:
    spec: the layout.
    num_classes: how many classes there are; every one must get a region.

  Returns:
    Per class its boxes, ``num_classes`` lists.

  Raises:
    ValueError: a malformed entry, an unknown region, a class out of range, named twice, or
      given no region.
  """
  regions: list[list[Box] | None] = [None] * num_classes
  rest = None  # the "*" entry's boxes
  for entry in spec.split(";"):
    if not entry.strip():
      continue
    if entry.count(":") != 1:
      raise ValueError(f"layout {spec!r}: malformed entry {entry.strip()!r}; write "
                       "'CLASSES:REGION[+REGION...]', e.g. '0-1:area0'")
    classes_text, regions_text = (part.strip() for part in entry.split(":"))
    boxes = _union_boxes(regions_text, spec)
    if classes_text == "*":
      if rest is not None:
        raise ValueError(f"layout {spec!r}: more than one '*' entry; keep one")
      rest = boxes
      continue
    for k in _parse_classes(classes_text, spec, num_classes):
      if regions[k] is not None:
        raise ValueError(f"layout {spec!r}: class {k} is given twice; name each class once")
      regions[k] = boxes
  missing = [k for k, boxes in enumerate(regions) if boxes is None]
  if missing and rest is None:
    raise ValueError(f"layout {spec!r}: classes {missing} have no region; add entries for them "
                     "or a '*:REGION' entry for the rest")
  return [rest if boxes is None else boxes for boxes in regions]


def area_layout(num_areas_per_side: int = 3, classes_per_area: int = 2) -> str:
  """exp3's layout: classes ``k * classes_per_area ...`` in area ``k`` (row-major, row 0 on top).

  Args:
    num_areas_per_side: the space splits into this many areas per side (3 in the paper).
    classes_per_area: consecutive classes per area (2 in the paper: 18 classes).

  Returns:
    e.g. ``"0-1:area0;2-3:area1;...;16-17:area8"``; for a split other than 3 x 3 the areas are
    named ``area<i>_<n>x<n>``.
  """
  n, c = num_areas_per_side, classes_per_area
  if n < 1 or c < 1:
    raise ValueError(f"need >= 1 area per side and class per area, got {n} and {c}")
  name = (lambda i: f"area{i}") if n == 3 else (lambda i: f"area{i}_{n}x{n}")
  classes = (lambda i: f"{i}") if c == 1 else (lambda i: f"{i * c}-{i * c + c - 1}")
  return ";".join(f"{classes(i)}:{name(i)}" for i in range(n * n))


# exp4 on EMNIST letters (26 classes, A = 0 ... Z = 25); "upper" is small y.
QUADRANT_LAYOUTS = {
    "1": "*:all_but_upper_right",                            # nothing ever upper-right
    "2": "19-25:upper_right;*:all_but_upper_right",          # T..Z only upper-right
    "3.1": "0:whole;*:upper_right",                          # A everywhere, the rest upper-right
    "3.2": "0-9:whole;*:upper_right",                        # A-J everywhere
    "3.3": "0-19:whole;*:upper_right",                       # A-T everywhere
    "3.4": "0-24:whole;*:upper_right",                       # A-Y everywhere
}


def quadrant_layout(condition: str) -> str:
  """exp4's layout for ``condition`` (a ``QUADRANT_LAYOUTS`` key: "1", "2", "3.1" ... "3.4")."""
  if condition not in QUADRANT_LAYOUTS:
    raise ValueError(f"unknown exp4 condition {condition!r}; expected one of "
                     f"{', '.join(QUADRANT_LAYOUTS)}")
  return QUADRANT_LAYOUTS[condition]


def layout_masks(canvas_size: int, item_size: int, spec: str, num_classes: int,
                 fit: str = "centre") -> np.ndarray:
  """Every class's allowed centres (for region maps): bool [num_classes, canvas, canvas], [k, y, x].
  """
  return np.stack([allowed_centres(canvas_size, item_size, boxes, fit)
                   for boxes in parse_layout(spec, num_classes)])


@dataclasses.dataclass(frozen=True)
class RegionGroup:
  """The classes a layout trains in one region (exp4 condition 2: A-S, and T-Z).

  Attributes:
    classes: the class indices, increasing.
    region: the layout's name for the region, e.g. ``"all_but_upper_right"``.
    boxes: the region's boxes.
  """
  classes: tuple[int, ...]
  region: str
  boxes: tuple[Box, ...]


def layout_groups(spec: str, num_classes: int) -> list[RegionGroup]:
  """The classes of ``spec`` grouped by region, in order of their first class.

  Args:
    spec: the layout (``parse_layout``).
    num_classes: how many classes there are.

  Returns:
    One group per distinct region.
  """
  names = {}
  for entry in spec.split(";"):
    if entry.count(":") == 1:
      text = entry.split(":")[1].strip()
      names.setdefault(tuple(_union_boxes(text, spec)), text)
  groups: dict[tuple[Box, ...], list[int]] = {}
  for k, boxes in enumerate(parse_layout(spec, num_classes)):
    groups.setdefault(tuple(boxes), []).append(k)
  return [RegionGroup(tuple(classes), names[boxes], boxes) for boxes, classes in groups.items()]


def coverage_map(mask: np.ndarray, item_size: int) -> np.ndarray:
  """How often each pixel is covered by an item centred uniformly over ``mask``'s centres.

  Exact: pixel ``p`` is covered by the items centred in ``[p - (s - 1 - s // 2), p + s // 2]``
  on each axis, so the map is a box sum of the mask (a summed-area table), over its count.

  Args:
    mask: bool [canvas, canvas] indexed ``[y, x]``: the allowed centres (``allowed_centres``),
      all keeping the item whole.
    item_size: item side ``s`` in pixels.

  Returns:
    float64 [canvas, canvas] in [0, 1]: the probability that a drawn item covers the pixel; it
    sums to ``s * s``.
  """
  canvas_size = mask.shape[0]
  s = item_size
  table = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
  p = np.arange(canvas_size)
  start = np.clip(p - (s - 1 - s // 2), 0, canvas_size)  # first centre covering p
  stop = np.clip(p + s // 2 + 1, 0, canvas_size)         # one past the last
  counts = (table[np.ix_(stop, stop)] - table[np.ix_(start, stop)]
            - table[np.ix_(stop, start)] + table[np.ix_(start, start)])
  return counts / mask.sum()


@dataclasses.dataclass(frozen=True)
class Coverage:
  """Where the training sampler puts one class group's item pixels (``training_coverage``).

  Attributes:
    group: the classes and their region.
    centres: the allowed centres, bool [canvas, canvas] ([y, x]).
    pixels: the region's pixels (``region_pixels``), bool [canvas, canvas].
    map: ``coverage_map`` of ``centres``, float64 [canvas, canvas].
    spilling: how many allowed centres put at least one item pixel outside ``pixels``.
    outside_pixel_fraction: the mean fraction of an item's pixels outside ``pixels``.
  """
  group: RegionGroup
  centres: np.ndarray
  pixels: np.ndarray
  map: np.ndarray
  spilling: int
  outside_pixel_fraction: float

  @property
  def allowed(self) -> int:
    return int(self.centres.sum())

  def numbers(self) -> dict:
    """The JSON-ready figures (no maps)."""
    return {"classes": list(self.group.classes), "region": self.group.region,
            "allowed_centres": self.allowed, "spilling_centres": self.spilling,
            "spilling_fraction": self.spilling / self.allowed,
            "outside_pixel_fraction": self.outside_pixel_fraction}


def training_coverage(canvas_size: int, item_size: int, spec: str, num_classes: int,
                      fit: str = "centre") -> list[Coverage]:
  """Per class group of a layout, the training pixel coverage and how far items leave the region.

  Under ``fit="centre"`` an item centred near a region's edge covers pixels of the next region
  (exp4 condition 1 on 224 / 50: 4,888 of 22,969 centres put pixels in the "empty" upper-right
  quadrant); under ``fit="whole"`` none does. The region's pixels are the boxes read as
  ``fit="whole"`` reads them.

  Args:
    canvas_size: canvas side in pixels.
    item_size: item side in pixels.
    spec: the layout (``parse_layout``).
    num_classes: how many classes there are.
    fit: ``"centre"`` or ``"whole"`` (``allowed_centres``).

  Returns:
    One ``Coverage`` per ``layout_groups`` group.
  """
  result = []
  for group in layout_groups(spec, num_classes):
    centres = allowed_centres(canvas_size, item_size, group.boxes, fit)
    pixels = region_pixels(canvas_size, group.boxes)
    cover = coverage_map(centres, item_size)
    spilling = centres & ~_centres_inside(pixels, item_size)
    result.append(Coverage(group, centres, pixels, cover, int(spilling.sum()),
                           float(cover[~pixels].sum() / item_size**2)))
  return result


def region_sampler(canvas_size: int, item_size: int, class_boxes: Sequence[Sequence[Box]],
                   fit: str = "centre") -> Sampler:
  """Centres uniform over each class's allowed centres (``allowed_centres``), exact support.

  Each distinct region becomes a row of flat indices ``y * canvas + x`` of its allowed centres;
  a draw picks a uniform position below the row's count. Jittable and vmappable; the tables are
  constants, so labels may be sharded.

  Args:
    canvas_size: canvas side in pixels.
    item_size: item side in pixels.
    class_boxes: per class its boxes (``parse_layout``); labels index it.
    fit: ``"centre"`` or ``"whole"`` (see ``allowed_centres``).

  Returns:
    A sampler; centres int32 [batch, 2] as (x, y).

  Raises:
    ValueError: a class with no allowed centre (named), or a bad box or fit.
  """
  rows, row_of, class_row = [], {}, []
  for k, boxes in enumerate(class_boxes):
    key = tuple(_check_box(box) for box in boxes)
    if key not in row_of:  # classes sharing a region share a row: exp4 has 1 or 2 rows, not 26
      try:
        mask = allowed_centres(canvas_size, item_size, key, fit)
      except ValueError as e:
        raise ValueError(f"class {k}: {e}") from None
      row_of[key] = len(rows)
      rows.append(np.flatnonzero(mask))  # [y, x] row-major: flat = y * canvas + x
    class_row.append(row_of[key])
  if not rows:
    raise ValueError("region_sampler needs at least one class")
  counts = np.array([len(r) for r in rows], np.int32)
  # Pad with a valid index so that even a stray position lands on an allowed centre.
  table = np.stack([np.pad(r, (0, counts.max() - len(r)), mode="edge") for r in rows])
  table = table.astype(np.int32)
  class_row = np.array(class_row, np.int32)

  def sample(key, labels):
    row = jnp.asarray(class_row)[labels]
    count = jnp.asarray(counts)[row]
    pos = jax.random.randint(key, labels.shape, 0, count, dtype=jnp.int32)
    flat = jnp.asarray(table)[row, jnp.clip(pos, 0, count - 1)]
    return jnp.stack([flat % canvas_size, flat // canvas_size], axis=-1).astype(jnp.int32)

  return sample
