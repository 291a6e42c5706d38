"""Translation-invariance measures of any network, from its responses to items moved over a path.

The measures of the literature, each computed from one network's responses to items moved over a
path of shifts (``path``: Azulay & Weiss' 1-px vertical path, Zhang's diagonal), relative to the
item at a base centre:

* Zhang (2019), "Making convolutional networks shift-invariant again": **consistency**, how often
  the top-1 class agrees for two random shifts of the same item (``consistency``; mode
  ``"circular"`` rolls the canvas as Chaman & Dokmanic's APS evaluation does).
* Azulay & Weiss (2019), "Why do deep convolutional networks generalize so poorly to small image
  transformations?": the probability that the top-1 class changes after a 1-px shift
  (``top1_change_rate``), **jaggedness** (the correct class entering or leaving the top 5), the
  mean absolute change of a class probability (**MAD**: ``mad``, ``mad_top1``) and
  **nonshiftability** (a feature map's global sum changing by more than 20% of its mean).
* The **equivariance error** of each layer: how far a layer's maps for a shifted input are from its
  maps for the base input shifted by ``shift / stride`` cells, over the cells both maps hold. Kayhan
  & van Gemert (2020) point out that the image boundary is what lets a conv net break
  equivariance; the error shows where it does.

``shift_responses`` renders every (item, base + shift) canvas of a chunk of shifts in one call of
the evaluation kernel and reduces on the device: only class probabilities, per-map global sums and
peaks, and per-layer equivariance errors come back (``ShiftResponses``), for each seed's network.
The metric functions are pure functions of one seed's arrays; ``summarise`` turns them into the
JSON-ready scalars of a report.
"""

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from transinv_jax import kernel, similarity
from transinv_jax.data import canvas, locations
from transinv_jax.train import Items

PATHS = ("x", "y", "diagonal")
CONSISTENCY_MODES = ("translate", "circular")


def path(kind: str, length: int) -> np.ndarray:
  """Shifts along a straight path from 0 to ``length`` px, both ends included.

  Azulay & Weiss move the image down 1 px at a time (``"y"``); Zhang's consistency curve moves it
  diagonally by 0 .. 32 px (``"diagonal"``).

  Args:
    kind: ``"x"`` -> (d, 0), ``"y"`` -> (0, d), ``"diagonal"`` -> (d, d).
    length: the last d (d = 0, 1, ..., length).

  Returns:
    int32 [length + 1, 2], (dx, dy) offsets.
  """
  if kind not in PATHS:
    raise ValueError(f"unknown path {kind!r}; use one of {PATHS}")
  if length < 0:
    raise ValueError(f"path length must be >= 0, got {length}")
  d = np.arange(length + 1, dtype=np.int32)
  zero = np.zeros_like(d)
  dx, dy = {"x": (d, zero), "y": (zero, d), "diagonal": (d, d)}[kind]
  return np.stack([dx, dy], axis=-1)


def layer_stride(canvas_size: int, height: int) -> int:
  """A layer's total downsampling factor: the power of two nearest (in log scale) to canvas / H.

  Valid and full padding change a map's height by a few pixels (224 -> 226 -> 113 ...) without
  changing its stride; rounding to the nearest power of two absorbs that. At least 1.
  """
  return max(1, 2 ** int(round(math.log2(canvas_size / height))))


def _relative_error(a: jax.Array, b: jax.Array) -> jax.Array:
  """||a - b|| / ||b|| in float32; 0 when both are zero, 1 when only b is (equivariance_error)."""
  # Divided by the largest magnitude first, so the squares neither overflow nor underflow.
  scale = jnp.maximum(jnp.max(jnp.abs(a)), jnp.max(jnp.abs(b)))
  scale = jnp.where(scale > 0, scale, 1.0)
  a, b = a / scale, b / scale
  diff = jnp.sqrt(jnp.sum(jnp.square(a - b)))
  norm = jnp.sqrt(jnp.sum(jnp.square(b)))
  # With b = 0, diff = ||a||: a response that appears scores 1, as one that vanishes (a = 0) does.
  return jnp.where(norm > 0, diff / jnp.where(norm > 0, norm, 1.0), jnp.where(diff > 0, 1.0, 0.0))


def equivariance_error(base: jax.Array, shifted: jax.Array, shift: jax.Array,
                       stride: int = 1) -> jax.Array:
  """Relative distance between a layer's response to a shifted item and its shifted base response.

  Spatial maps ``[H, W, C]`` (one item, one layer): for a shift (dx, dy) whose components are both
  multiples of ``stride``, the shift moves the map by (sx, sy) = (dx, dy) / stride cells, and the
  error compares ``A = shifted[y, x]`` with ``B = base[y - sy, x - sx]`` over the cells (y, x)
  where both exist: ``||A - B||_2 / ||B||_2``. Cells that enter or leave the map are left out, so
  a layer that is exactly equivariant away from the boundary scores 0. NaN when dx or dy is not a
  multiple of ``stride`` (no cell-aligned counterpart) or when the overlap is empty.

  Anything else (``[F]``, e.g. fc or pooled features; other ranks are flattened) is compared whole,
  as an invariance error: ``||shifted - base||_2 / ||base||_2``; ``stride`` is not used.

  Zero norms: 0 when both are zero (identical responses); 1 when only ``B`` is zero, the same value
  a response that vanishes (``A = 0``, ``B != 0``) gets. Computed in float32.

  Args:
    base: the layer's response to the item at the base centre, ``[H, W, C]`` or ``[F]``.
    shifted: the response to the item at base + shift, the same shape.
    shift: int32 [2], (dx, dy) in canvas pixels; may be traced.
    stride: the layer's downsampling factor (``layer_stride``), a static int.

  Returns:
    float32 scalar; jittable and vmappable.
  """
  base = jnp.asarray(base).astype(jnp.float32)
  shifted = jnp.asarray(shifted).astype(jnp.float32)
  if base.shape != shifted.shape:
    raise ValueError(f"base {base.shape} and shifted {shifted.shape} differ in shape")
  if base.ndim != 3:
    return _relative_error(shifted.ravel(), base.ravel())
  h, w = base.shape[:2]
  shift = jnp.asarray(shift, jnp.int32)
  dx, dy = shift[0], shift[1]
  aligned = (dx % stride == 0) & (dy % stride == 0)
  sx, sy = dx // stride, dy // stride
  # rolled[y, x] = base[y - sy, x - sx] (wrapping); the mask keeps the cells that did not wrap.
  rolled = jnp.roll(base, (sy, sx), axis=(0, 1))
  ys = jax.lax.broadcasted_iota(jnp.int32, (h, w), 0) - sy
  xs = jax.lax.broadcasted_iota(jnp.int32, (h, w), 1) - sx
  overlap = ((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w))[..., None]
  error = _relative_error(jnp.where(overlap, shifted, 0.0), jnp.where(overlap, rolled, 0.0))
  return jnp.where(aligned & overlap.any(), error, jnp.nan)


@dataclasses.dataclass(frozen=True)
class ShiftResponses:
  """S seeds' networks' responses to I items, each moved over a path of P shifts.

  ``shift_responses`` gives every array a leading seeds axis [S]; ``seed(s)`` is one seed's
  responses without it, which ``summarise`` and the path metrics take. The properties work on
  either.

  Attributes:
    shifts: int32 [P, 2], (dx, dy) from the base centre.
    centres: int32 [P, 2], the item centres base + shift, (x, y).
    labels: int32 [I], the items' classes.
    layers: [L] layer names, network order.
    strides: {layer: int}, the downsampling factor of each spatial layer (``layer_stride``).
    spatial: {layer: bool}, whether the layer has [H, W, C] maps.
    probs: float32 [S, I, P, K], softmax of the logits.
    sums: {layer: float32 [S, I, P, C]}, each map's sum over H, W (non-spatial: the values).
    peaks: {layer: float32 [S, I, P, C]}, each map's max over H, W (non-spatial: the values).
    equivariance: {layer: float32 [S, I, P]}, ``equivariance_error`` against the base response
      (NaN at shifts that are not multiples of the layer's stride).
  """
  shifts: np.ndarray
  centres: np.ndarray
  labels: np.ndarray
  layers: list[str]
  strides: dict[str, int]
  spatial: dict[str, bool]
  probs: np.ndarray
  sums: dict[str, np.ndarray]
  peaks: dict[str, np.ndarray]
  equivariance: dict[str, np.ndarray]

  @property
  def num_seeds(self) -> int:
    return self.probs.shape[0] if self.probs.ndim == 4 else 1

  @property
  def num_items(self) -> int:
    return self.probs.shape[-3]

  @property
  def num_shifts(self) -> int:
    return self.probs.shape[-2]

  @property
  def predictions(self) -> np.ndarray:
    """int [S, I, P] (or [I, P] for one seed's): the top-1 class at every shift."""
    return self.probs.argmax(-1)

  @property
  def correct_probability(self) -> np.ndarray:
    """float32 [S, I, P] (or [I, P]): the probability of each item's own class at every shift."""
    return correct_probability(self.probs, self.labels)

  def seed(self, index: int) -> "ShiftResponses":
    """Seed ``index``'s responses, without the seeds axis."""
    pick = lambda per_layer: {name: a[index] for name, a in per_layer.items()}
    return dataclasses.replace(self, probs=self.probs[index], sums=pick(self.sums),
                               peaks=pick(self.peaks), equivariance=pick(self.equivariance))


@dataclasses.dataclass(frozen=True)
class Responses:
  """The kernel's reduction for ``shift_responses``: class probabilities, and per layer the maps'
  sums and peaks and the equivariance error against the base response.

  Attributes:
    layers: the layers, in order.
    strides: each layer's stride (``layer_stride``), None for a non-spatial layer.
  """
  layers: tuple[str, ...]
  strides: tuple[int | None, ...]

  def __call__(self, logits: jax.Array, intermediates: dict, centres: jax.Array,
               operands: tuple[dict, jax.Array]) -> dict:
    """Reduces [I, P, ...] responses to probs [I, P, K] and per layer sums, peaks [I, P, C] and
    equivariance [I, P]; ``operands`` are ``(base {layer: [I, 1, ...]}, base_centre [2])``."""
    base, base_centre = operands
    shifts = centres[0] - base_centre                        # [P, 2]: the same for every item
    out = {"probs": jax.nn.softmax(logits.astype(jnp.float32), axis=-1), "sums": {},
           "peaks": {}, "equivariance": {}}
    for name, stride in zip(self.layers, self.strides):
      act = intermediates[name].astype(jnp.float32)
      if stride is None:  # non-spatial: the values are the "maps"
        out["sums"][name] = out["peaks"][name] = act.reshape(act.shape[:2] + (-1,))
      else:
        out["sums"][name] = act.sum(axis=(2, 3))
        out["peaks"][name] = act.max(axis=(2, 3))
      error = functools.partial(equivariance_error, stride=stride or 1)
      per_shift = jax.vmap(error, in_axes=(None, 0, 0))        # one item, every shift
      per_item = jax.vmap(per_shift, in_axes=(0, 0, None))     # every item
      out["equivariance"][name] = per_item(base[name][:, 0], act, shifts)
    return out


def _check_base(base_centre: np.ndarray, canvas_size: int, item_size: int) -> None:
  """ValueError when the base centre itself does not keep the item whole."""
  if not locations.is_whole(base_centre, canvas_size, item_size):
    lo, hi = locations.centre_range(canvas_size, item_size)
    raise ValueError(f"base_centre {tuple(base_centre.tolist())} crops a {item_size}-px item on a "
                     f"{canvas_size}-px canvas (whole centres are {lo}..{hi} on each axis)")


def _check_whole(centres: np.ndarray, shifts: np.ndarray, canvas_size: int,
                 item_size: int) -> None:
  """ValueError naming the first shift whose centre does not keep the item whole."""
  lo, hi = locations.centre_range(canvas_size, item_size)
  for shift, centre in zip(shifts, centres):
    if not locations.is_whole(centre, canvas_size, item_size):
      raise ValueError(
          f"shift (dx, dy) = {tuple(int(v) for v in shift)} moves the item centre to "
          f"{tuple(int(v) for v in centre)}, which crops a {item_size}-px item on a "
          f"{canvas_size}-px canvas (whole centres are {lo}..{hi} on each axis); drop that "
          "shift, shorten the path or move base_centre")


def shift_responses(net: kernel.Network, variables: Any, items: Items, *,
                    render: canvas.Renderer, base_centre: Sequence[int], shifts: np.ndarray,
                    layers: Sequence[str] | str | None = None, shifts_per_chunk: int = 0,
                    mesh: Mesh | None = None) -> ShiftResponses:
  """Each seed's class probabilities, map sums and peaks, and equivariance errors along a path.

  Every item is rendered at ``base_centre + shift`` for each shift; all shifts of a chunk run in
  one call of the evaluation kernel and are reduced on the device, so only [I, P, ...] arrays
  come back per seed. The equivariance reference is each item's response at ``base_centre``
  (computed once per seed), whether or not the path includes shift (0, 0); there the error is
  float noise (~1e-7), not exactly 0, as the reference runs in a batch of another shape.

  Args:
    net: ``(variables, x) -> (logits, intermediates)`` in inference mode
      (``kernel.Inference``); keep one object per network: the compiled kernels are cached on it.
    variables: the network's variables stacked over S seeds, every leaf [S, ...].
    items: the items (e.g. ``similarity.pick_items``), on the device.
    render: composes model input from items and centres; its canvas size sets the layers'
      strides.
    base_centre: (x, y), keeping the item whole.
    shifts: int32 [P, 2], (dx, dy) offsets from ``base_centre`` (``path``); each must keep the
      item whole on the canvas.
    layers: layer names; or ``"all"`` / ``"penultimate"`` / ``"all+logits"``
      (``similarity.layer_names``); None is ``"all"``.
    shifts_per_chunk: the most shifts per call (each call runs ``items * chunk`` canvases); 0
      picks the largest chunk that fits half the free device memory (8 where it cannot be read).
    mesh: optional device mesh to split each call's canvases over (the chunk is rounded up so
      that they divide evenly); None runs on the default device.

  Returns:
    A ``ShiftResponses`` with probs [S, I, P, K] and per layer sums / peaks [S, I, P, C] and
    equivariance [S, I, P].

  Raises:
    ValueError: a shift (or the base centre) crops the item, or a layer is not among the model's
      intermediates.
  """
  shifts = np.asarray(shifts, np.int32).reshape(-1, 2)
  if shifts.shape[0] == 0:
    raise ValueError("no shifts given")
  base_centre = np.asarray(base_centre, np.int32).reshape(2)
  canvas_size, item_size = render.canvas_size, items.images.shape[1]
  _check_base(base_centre, canvas_size, item_size)
  centres = base_centre + shifts
  _check_whole(centres, shifts, canvas_size, item_size)

  names, shapes = similarity.resolve_layers(net, variables, items.images, render, layers)
  spatial = {n: len(shapes[n].shape) == 4 for n in names}
  strides = {n: layer_stride(canvas_size, shapes[n].shape[1]) for n in names if spatial[n]}
  responses = kernel.against_base(
      net, variables, items.images, render=render,
      reduce=Responses(tuple(names), tuple(strides.get(n) for n in names)), layers=names,
      base_centre=base_centre, centres=centres, centres_per_chunk=shifts_per_chunk, mesh=mesh)
  return ShiftResponses(
      shifts=shifts, centres=centres.astype(np.int32),
      labels=np.asarray(jax.device_get(items.labels), np.int32), layers=names,
      strides=strides, spatial=spatial, probs=responses["probs"],
      sums={n: responses["sums"][n] for n in names},
      peaks={n: responses["peaks"][n] for n in names},
      equivariance={n: responses["equivariance"][n] for n in names})


def _path_probs(probs: np.ndarray) -> np.ndarray:
  probs = np.asarray(probs)
  if probs.ndim != 3 or probs.shape[1] < 2:
    raise ValueError(f"probs must be [items, shifts >= 2, classes], got {probs.shape}")
  return probs


def correct_probability(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """The probability of each item's own class at every shift.

  Args:
    probs: [..., items, shifts, classes], e.g. with a leading seeds axis.
    labels: int [items], or [..., items] (a reference class per seed).

  Returns:
    [..., items, shifts], ``probs[..., i, t, labels[..., i]]``.
  """
  probs = np.asarray(probs)
  labels = np.asarray(labels).astype(np.int64)[..., None, None]
  index = np.broadcast_to(labels, probs.shape[:-1] + (1,))
  return np.take_along_axis(probs, index, axis=-1)[..., 0]


def top1_change_rate(probs: np.ndarray) -> np.ndarray:
  """Azulay & Weiss' P(top-1 change): how often the top-1 class differs between neighbours.

  For neighbouring shifts (t, t + 1) of the path, the fraction of the P - 1 pairs whose argmax
  differs (ties go to the lowest class index, as ``argmax``). On a 1-px path this is the
  probability that the top-1 prediction changes after a 1-pixel shift.

  Args:
    probs: [items, shifts, classes], shifts >= 2 in path order.

  Returns:
    float [items].
  """
  top = _path_probs(probs).argmax(-1)
  return (top[:, 1:] != top[:, :-1]).mean(-1)


def _in_top(probs: np.ndarray, labels: np.ndarray, top: int) -> np.ndarray:
  """bool [I, P]: fewer than ``top`` classes are strictly more probable than the label."""
  p_label = correct_probability(probs, labels)
  return (probs > p_label[..., None]).sum(-1) < top


def jaggedness(probs: np.ndarray, labels: np.ndarray, top: int = 5) -> np.ndarray:
  """Azulay & Weiss' jaggedness: how often the correct class enters or leaves the top ``top``.

  The label is in the top ``top`` at a shift when fewer than ``top`` classes have a strictly
  higher probability (ties count in its favour). Jaggedness is the number of neighbouring pairs
  (t, t + 1) of the path where that membership differs: both leaving and re-entering count, so a
  label that drops out once and comes back scores 2. With ``classes <= top`` the label is always
  in and the answer is 0 by definition (pass a smaller ``top`` for few classes).

  Args:
    probs: [items, shifts, classes], shifts >= 2 in path order.
    labels: int [items].
    top: the top-k set's size (A&W: 5).

  Returns:
    int64 [items], between 0 and P - 1.
  """
  inside = _in_top(_path_probs(probs), labels, top)
  return (inside[:, 1:] != inside[:, :-1]).sum(-1).astype(np.int64)


def mad(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Azulay & Weiss' mean absolute difference (appendix) of the correct class's probability.

  ``mean_t |p_{t+1}[label] - p_t[label]|`` over the P - 1 neighbouring pairs of the path.

  Args:
    probs: [items, shifts, classes], shifts >= 2 in path order.
    labels: int [items].

  Returns:
    float [items].
  """
  p = correct_probability(_path_probs(probs), labels)
  return np.abs(np.diff(p, axis=1)).mean(-1)


def mad_top1(probs: np.ndarray) -> np.ndarray:
  """Azulay & Weiss' script's MAD: the change of the probability of the current top-1 class.

  ``mean_t |p_{t+1}[c_t] - p_t[c_t]|`` with ``c_t = argmax p_t``, over the P - 1 neighbouring pairs
  of the path (no label needed).

  Args:
    probs: [items, shifts, classes], shifts >= 2 in path order.

  Returns:
    float [items].
  """
  probs = _path_probs(probs)
  top = probs[:, :-1].argmax(-1)[..., None]
  now = np.take_along_axis(probs[:, :-1], top, axis=-1)[..., 0]
  after = np.take_along_axis(probs[:, 1:], top, axis=-1)[..., 0]
  return np.abs(after - now).mean(-1)


def nonshiftability(sums: np.ndarray, peaks: np.ndarray, *, activity_threshold: float = 0.1,
                    tolerance: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
  """Azulay & Weiss' nonshiftability of one layer: how often a map's global sum jumps.

  A&W count "the number of times the global sum of a feature map changes by more than 20% of the
  mean as the input is translated", over feature maps whose maximum response is above a
  threshold. They do not give the threshold; ours is relative. Map c of item i is active when
  ``max_t peaks[i, t, c] > activity_threshold * max_{t, c'} peaks[i, t, c']`` and that largest
  peak is > 0. For each active map, a neighbouring pair (t, t + 1) counts when
  ``|sums[i, t+1, c] - sums[i, t, c]| > tolerance * |mean_t sums[i, :, c]|``; the rate is the count
  over ``(P - 1) * active maps``.

  Args:
    sums: [items, shifts, maps], each map's global sum (one seed's ``ShiftResponses.sums[layer]``).
    peaks: [items, shifts, maps], each map's max (``ShiftResponses.peaks[layer]``).
    activity_threshold: share of the item's largest peak a map must exceed to count.
    tolerance: the jump, as a share of the map's mean sum, that counts as a change.

  Returns:
    ``(rate, active_maps)``: float [items] (NaN for an item with no active map) and int64 [items].
  """
  sums = np.asarray(sums, np.float64)
  peaks = np.asarray(peaks, np.float64)
  if sums.shape != peaks.shape or sums.ndim != 3 or sums.shape[1] < 2:
    raise ValueError(f"sums {sums.shape} and peaks {peaks.shape} must be the same "
                     "[items, shifts >= 2, maps]")
  map_peak = peaks.max(axis=1)                              # [I, C]
  top = map_peak.max(axis=-1, keepdims=True)                # [I, 1]
  active = (map_peak > activity_threshold * top) & (top > 0)
  jumps = np.abs(np.diff(sums, axis=1)) > tolerance * np.abs(sums.mean(axis=1))[:, None]
  count = (jumps & active[:, None]).sum(axis=(1, 2))
  active_maps = active.sum(-1).astype(np.int64)
  pairs = (sums.shape[1] - 1) * active_maps
  with np.errstate(invalid="ignore", divide="ignore"):
    rate = np.where(active_maps > 0, count / pairs, np.nan)
  return rate, active_maps


@dataclasses.dataclass(frozen=True)
class ConsistencyResult:
  """Zhang's consistency of S seeds' networks: whether two random shifts of an item get the same
  top-1 class.

  Attributes:
    agreement: bool [S, I, pairs].
    predictions: int32 [S, I, pairs, 2], the top-1 class of each shift of each pair.
    offsets: int32 [I, pairs, 2, 2], the two (dx, dy) offsets of each pair (every seed's).
    labels: int32 [I].
    mode: ``"translate"`` or ``"circular"``.
    max_offset: the offsets' bound.
  """
  agreement: np.ndarray
  predictions: np.ndarray
  offsets: np.ndarray
  labels: np.ndarray
  mode: str
  max_offset: int

  @property
  def rate(self) -> np.ndarray:
    """float [S]: the share of pairs that agree (Zhang's consistency), per seed."""
    return self.agreement.mean((-2, -1))

  @property
  def accuracy(self) -> np.ndarray:
    """float [S]: the share of all 2 * pairs shifted canvases classified correctly, per seed."""
    return (self.predictions == self.labels[:, None, None]).mean((-3, -2, -1))


def top_class(logits: jax.Array, intermediates: dict, centres: jax.Array,
              operands: Any) -> jax.Array:
  """The kernel's reduction for ``consistency``: int32 [batch, points], each canvas' top-1 class."""
  del intermediates, centres, operands
  return jnp.argmax(logits, -1).astype(jnp.int32)


def consistency(net: kernel.Network, variables: Any, items: Items, key: jax.Array, *,
                render: canvas.Renderer, base_centre: Sequence[int], max_offset: int,
                pairs_per_item: int = 1, mode: str = "translate", items_per_batch: int = 64,
                mesh: Mesh | None = None) -> ConsistencyResult:
  """Zhang's consistency: the top-1 class agrees for two random shifts of the same item.

  For each item and pair, two independent offsets (dx, dy) are drawn, each component uniform over
  the integers of ``[0, max_offset)`` (``"translate"``: the item is rendered at
  ``base_centre + offset``) or of ``[-max_offset, max_offset)`` (``"circular"``: the canvas
  rendered at ``base_centre`` is rolled circularly by the offset, x along the width, as Chaman &
  Dokmanic's APS evaluation does with ``torch.roll``). A pair agrees when both argmaxes are equal.
  The draws depend on ``key`` only, not on the batching; every seed's network sees the same.

  Args:
    net: ``(variables, x) -> (logits, intermediates)`` in inference mode (as
      ``shift_responses``).
    variables: the network's variables stacked over S seeds, every leaf [S, ...].
    items: the items, on the device.
    key: PRNG key for the offsets.
    render: composes model input from items and centres (its canvas size bounds the offsets).
    base_centre: (x, y); with ``"translate"``, ``base_centre + max_offset - 1`` must keep the item
      whole.
    max_offset: the offsets' bound (Zhang: 32 on ImageNet's 224 crops).
    pairs_per_item: pairs drawn per item.
    mode: one of ``CONSISTENCY_MODES``.
    items_per_batch: items per call (each call runs ``2 * pairs_per_item`` canvases per item);
      with test-time batch statistics, the batch they are taken over at each of the
      ``2 * pairs_per_item`` offsets (each item at its own draw).
    mesh: optional device mesh to split each call's canvases over.

  Returns:
    A ``ConsistencyResult``; ``.rate`` is each seed's consistency.

  Raises:
    ValueError: unknown mode, or an offset range that would crop the item.
  """
  if mode not in CONSISTENCY_MODES:
    raise ValueError(f"unknown consistency mode {mode!r}; use one of {CONSISTENCY_MODES}")
  if max_offset < 1 or pairs_per_item < 1 or items_per_batch < 1:
    raise ValueError(f"max_offset ({max_offset}), pairs_per_item ({pairs_per_item}) and "
                     f"items_per_batch ({items_per_batch}) must be >= 1")
  canvas_size, item_size = render.canvas_size, items.images.shape[1]
  base_centre = np.asarray(base_centre, np.int32).reshape(2)
  _check_base(base_centre, canvas_size, item_size)
  lo, hi = locations.centre_range(canvas_size, item_size)
  if mode == "translate" and not locations.is_whole(base_centre + max_offset - 1, canvas_size,
                                                    item_size):
    raise ValueError(
        f"max_offset {max_offset} moves the item from base_centre {tuple(base_centre.tolist())} "
        f"up to {tuple((base_centre + max_offset - 1).tolist())}, which crops a {item_size}-px "
        f"item on a {canvas_size}-px canvas (whole centres are {lo}..{hi}); use max_offset <= "
        f"{int(hi - base_centre.max() + 1)} or move base_centre")
  num_items = items.num_items
  low = 0 if mode == "translate" else -max_offset
  offsets = np.asarray(jax.device_get(jax.random.randint(
      key, (num_items, pairs_per_item, 2, 2), low, max_offset, jnp.int32)))

  # The canvas at the base centre rolled by an offset is the item placed circularly there.
  run = kernel.Kernel(net, dataclasses.replace(render, wrap=mode == "circular"), top_class, mesh)
  # Whole batches (2 * pairs * batch canvases divide over the devices), padded with copies of
  # the last item; their answers are sliced off. Not padded where the network normalises by the
  # batch's statistics: the copies would enter them (the last batch is then smaller).
  if kernel.batch_statistics(net):
    index, batch = np.arange(num_items), items_per_batch
  else:
    index, batch = kernel.whole_chunks(np.arange(num_items), items_per_batch,
                                       2 * pairs_per_item, run.mesh)
  images = items.images[jnp.asarray(index)]
  centres = (base_centre + offsets.reshape(num_items, 2 * pairs_per_item, 2))[index]
  batches = [(images[b:b + batch], jnp.asarray(centres[b:b + batch]))
             for b in range(0, len(index), batch)]
  predictions = kernel.over_seeds(variables, lambda one_seed: jnp.concatenate(
      [run(one_seed, *b) for b in batches]))
  predictions = predictions[:, :num_items].reshape(-1, num_items, pairs_per_item, 2)
  return ConsistencyResult(
      agreement=predictions[..., 0] == predictions[..., 1], predictions=predictions,
      offsets=offsets, labels=np.asarray(jax.device_get(items.labels), np.int32), mode=mode,
      max_offset=int(max_offset))


def _json_float(value: float) -> float | None:
  """A Python float for JSON; None for NaN (undefined), as ``train`` does."""
  value = float(value)
  return None if math.isnan(value) else value


def _nanmean(values: np.ndarray) -> float:
  """Mean of the non-NaN values; NaN (without a warning) when there are none."""
  values = np.asarray(values, np.float64)
  defined = ~np.isnan(values)
  return float(values[defined].mean()) if defined.any() else math.nan


def summarise(responses: ShiftResponses, *, top: int = 5, activity_threshold: float = 0.1,
              tolerance: float = 0.2) -> dict:
  """The scalars of a report from one seed's responses along a path, JSON-ready.

  Item-level measures are averaged over items; undefined values (no active map, no shift that is
  a nonzero multiple of a layer's stride) are None.

  Args:
    responses: one seed's (``ShiftResponses.seed``), with at least 2 shifts in path order.
    top: the top-k set of ``jaggedness``.
    activity_threshold: as ``nonshiftability``.
    tolerance: as ``nonshiftability``.

  Returns:
    ``{"num_items", "num_shifts", "top", "top1_change_rate", "jaggedness"`` (mean count),
    ``"jagged_fraction"`` (share of items with at least one transition), ``"mad"``,
    ``"mad_top1"``, ``"correct_probability"`` (mean over items and shifts), ``"layers"``, and per
    layer in that order ``"nonshiftability"`` (mean over items with an active map) and
    ``"equivariance_error"`` (mean over items and the shifts other than (0, 0) where it is
    defined)``}``.
  """
  probs, labels = responses.probs, responses.labels
  jagged = jaggedness(probs, labels, top)
  moved = np.any(responses.shifts != 0, axis=-1)
  nonshift, equivariance = [], []
  for name in responses.layers:
    rate, _ = nonshiftability(responses.sums[name], responses.peaks[name],
                              activity_threshold=activity_threshold, tolerance=tolerance)
    nonshift.append(_json_float(_nanmean(rate)))
    equivariance.append(_json_float(_nanmean(responses.equivariance[name][:, moved])))
  return {
      "num_items": int(responses.num_items),
      "num_shifts": int(responses.num_shifts),
      "top": int(top),
      "top1_change_rate": float(top1_change_rate(probs).mean()),
      "jaggedness": float(jagged.mean()),
      "jagged_fraction": float((jagged > 0).mean()),
      "mad": float(mad(probs, labels).mean()),
      "mad_top1": float(mad_top1(probs).mean()),
      "correct_probability": float(responses.correct_probability.mean()),
      "layers": list(responses.layers),
      "nonshiftability": nonshift,
      "equivariance_error": equivariance,
  }
