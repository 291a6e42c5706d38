"""The ``invariance`` test: every invariance measure of one network (all its seeds), with files.

For the items of a split (the first ``eval.invariance_items``), on the canvas the network was
trained on, each measure of ``MEASURES`` runs on every seed:

  path         each item moved 1 px at a time along ``eval.shift_path`` (Azulay & Weiss: down),
               ``0..eval.max_shift`` px, centred on the canvas: P(top-1 changes), jaggedness, MAD,
               nonshiftability and equivariance error per layer, the global sums of the last
               spatial layer's maps (A&W figure 4)
  diagonal     the item moved by (d, d), d = 0..``eval.consistency_offset``: the probability of
               the correct class against the offset (Zhang's diagonal curve)
  consistency  ``eval.consistency_pairs`` random pairs of offsets per item (Zhang)
  similarity   the cosine similarity per layer against horizontal displacement from the
               leftmost-centred location, on one item per class (Biscione & Bowers, exp5)

When the network's classes are not the items' (ImageNet weights measured on MNIST digits), the
"correct class" of an item is the network's own top-1 class at the start of the path, and the
report says so. Writes ``invariance.npz`` (every measure's arrays) and the figures below into the
test's folder and returns the record (per-seed values, their mean and std).

A measure is a small class with a ``measure(subject) -> Measured`` method (the numeric work is in
``transinv_jax.invariance`` and ``similarity``); adding one is a new class and an entry in
``MEASURES`` (and its scalars in ``SCALARS``).
"""

import contextlib
import dataclasses
import warnings
from typing import Any, Protocol, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from transinv_jax import invariance, kernel, plots, similarity
from transinv_jax import workdir as workdir_lib
from transinv_jax.data import canvas, locations, sources
from transinv_jax.train import Items

# Scalars of the measures reported with mean, std and per-seed values, in the record's order.
SCALARS = ("consistency", "top1_change_rate", "jaggedness", "jagged_fraction", "mad", "mad_top1",
           "correct_probability")
FIGURES = ("correct_probability.png", "diagonal_curve.png", "feature_sums.png",
           "layer_metrics.png")


def path_base(canvas_size: int, item_size: int, kind: str, length: int) -> tuple[int, int]:
  """The start of a path of ``length`` px (``invariance.path``) that stays whole on the canvas,
  placed so that the path is centred on the canvas: (x, y)."""
  lo, hi = locations.centre_range(canvas_size, item_size)
  if length > hi - lo:
    raise ValueError(f"a path of {length} px does not fit: items move at most {hi - lo} px on a "
                     f"{canvas_size} px canvas")
  start = int(np.clip(canvas_size // 2 - length // 2, lo, hi - length))
  centre = int(np.clip(canvas_size // 2, lo, hi))
  return {"x": (start, centre), "y": (centre, start), "diagonal": (start, start)}[kind]


@dataclasses.dataclass(frozen=True)
class Path:
  """A straight path of 1-px steps (``invariance.path``), centred on the canvas.

  Attributes:
    kind: ``"x"``, ``"y"`` or ``"diagonal"``.
    length: the last step, px.
    base: (x, y), the item centre at step 0 (``path_base``).
  """
  kind: str
  length: int
  base: tuple[int, int]

  @property
  def shifts(self) -> np.ndarray:
    """int32 [length + 1, 2], (dx, dy) from ``base``."""
    return invariance.path(self.kind, self.length)


def paths(data: ml_collections.ConfigDict, ev: ml_collections.ConfigDict) -> dict[str, Path]:
  """The measures' paths, by name; each is checked to keep the items whole here, up front.

  Args:
    data: the test's ``data`` config (canvas and item size).
    ev: the test's ``eval`` config.

  Returns:
    ``{"path", "diagonal", "consistency": Path}``; consistency draws its offsets from its path's
    base (``"translate"``: up to ``consistency_offset - 1`` px on each axis).
  """
  room = np.subtract(*locations.centre_range(data.canvas_size, data.item_size)[::-1])
  table = {"path": (ev.shift_path, ev.max_shift),
           "diagonal": ("diagonal", int(min(ev.consistency_offset, room))),
           "consistency": ("diagonal", ev.consistency_offset - 1
                           if ev.consistency_mode == "translate" else 0)}
  return {name: Path(kind, length, path_base(data.canvas_size, data.item_size, kind, length))
          for name, (kind, length) in table.items()}


@dataclasses.dataclass(frozen=True)
class Subject:
  """What every measure sees: the networks (S seeds), the items and the test's config.

  Attributes:
    net: ``(variables, x) -> (logits, intermediates)`` in inference mode.
    variables: the networks' variables, every leaf [S, ...].
    item_set: the items on the host (labels, class count).
    items: the same I items on the device.
    flat: the test's flat config (``data`` and ``eval``).
    render: composes model input from items and centres.
    mesh: the device mesh.
    labelled: whether the items' classes are the network's outputs.
    paths: ``paths(flat.data, flat.eval)``.
  """
  net: kernel.Network
  variables: Any
  item_set: sources.ItemSet
  items: Items
  flat: ml_collections.ConfigDict
  render: canvas.Renderer
  mesh: Any
  labelled: bool
  paths: dict[str, Path]


@dataclasses.dataclass(frozen=True)
class Measured:
  """One measure's output.

  Attributes:
    arrays: {key: array} for ``invariance.npz`` (per-seed arrays lead with the seeds axis [S]).
    per_seed: {scalar: float64 [S]}, each key in ``SCALARS``: reported as mean, std and values.
    settings: what was measured (path, parameters), JSON-ready; the record lists every measure's
      settings before the results.
    results: the measure's other record values, JSON-ready.
  """
  arrays: dict[str, np.ndarray]
  per_seed: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  settings: dict[str, Any] = dataclasses.field(default_factory=dict)
  results: dict[str, Any] = dataclasses.field(default_factory=dict)


class Measure(Protocol):
  """An invariance measure: runs the networks on the subject's items and reduces the responses.

  Attributes:
    name: a short name, for the log.
  """
  name: str

  def measure(self, subject: Subject) -> Measured:
    """Measures every seed's network.

    Args:
      subject: the networks, items and config.

    Returns:
      The measure's arrays (keys unique across ``MEASURES``), per-seed scalars and record.
    """


class AlongPath:
  """Azulay & Weiss: each item moved 1 px at a time along ``eval.shift_path``: the path scalars
  of ``invariance.summarise``, per-layer nonshiftability and equivariance error, and the last
  spatial layer's map sums."""
  name = "path"
  # invariance.summarise's scalars reported per seed.
  scalars = ("top1_change_rate", "jaggedness", "jagged_fraction", "mad", "mad_top1",
             "correct_probability")

  def measure(self, subject: Subject) -> Measured:
    ev, path = subject.flat.eval, subject.paths["path"]
    shifts = path.shifts
    logging.info("invariance: %d items, %d shifts along %s", subject.items.num_items,
                 len(shifts), ev.shift_path)
    responses = invariance.shift_responses(
        subject.net, subject.variables, subject.items, render=subject.render,
        base_centre=path.base, shifts=shifts, shifts_per_chunk=ev.shifts_per_chunk,
        mesh=subject.mesh)
    runs = [responses.seed(s) for s in range(responses.num_seeds)]
    if not subject.labelled:  # the network's own answer at the start of the path is the reference
      runs = [dataclasses.replace(r, labels=r.predictions[:, 0].astype(np.int32)) for r in runs]
    num_classes = responses.probs.shape[-1]
    top = min(ev.top, num_classes - 1) if num_classes > 1 else 1
    summaries = [invariance.summarise(r, top=top, activity_threshold=ev.activity_threshold,
                                      tolerance=ev.shift_tolerance) for r in runs]
    first = runs[0]
    layers = first.layers
    spatial = [n for n in layers if first.spatial[n]]
    feature_layer = spatial[-1] if spatial else layers[-1]
    strides = [first.strides.get(n, 0) for n in layers]
    # None (undefined) -> NaN, per seed and layer: [S, L].
    per_layer = lambda key: np.array([[np.nan if v is None else v for v in s[key]]
                                      for s in summaries])
    nonshift, equivariance = per_layer("nonshiftability"), per_layer("equivariance_error")
    with _quiet():
      equivariance_by_shift = np.stack([[np.nanmean(r.equivariance[n], 0) for n in layers]
                                        for r in runs])                        # [S, L, P]
    arrays = {
        "shifts": shifts, "offsets": np.abs(shifts).max(-1), "base_centre": np.array(path.base),
        "layers": np.array(layers), "strides": np.array(strides),
        "labels": np.stack([r.labels for r in runs]),                          # [S, I]
        "correct_probability": np.stack([r.correct_probability for r in runs]),  # [S, I, P]
        "predictions": responses.predictions,                                  # [S, I, P]
        "nonshiftability": nonshift, "equivariance_error": equivariance,
        "equivariance_by_shift": equivariance_by_shift,
        "feature_layer": np.array(feature_layer),
        "feature_sums": responses.sums[feature_layer]}                         # [S, I, P, C]
    return Measured(
        arrays=arrays,
        per_seed={k: np.array([s[k] for s in summaries], np.float64) for k in self.scalars},
        settings={"path": ev.shift_path, "max_shift": int(ev.max_shift),
                  "base_centre": list(path.base), "top": summaries[0]["top"],
                  "activity_threshold": float(ev.activity_threshold),
                  "shift_tolerance": float(ev.shift_tolerance)},
        results={"layers": layers, "strides": strides,
                 "nonshiftability": _per_layer(nonshift, np.nanmean),
                 "nonshiftability_std": _per_layer(nonshift, np.nanstd),
                 "equivariance_error": _per_layer(equivariance, np.nanmean),
                 "equivariance_error_std": _per_layer(equivariance, np.nanstd),
                 "feature_layer": feature_layer})


class Diagonal:
  """Zhang's diagonal curve: the probability of the correct class as each item moves by (d, d)."""
  name = "diagonal"

  def measure(self, subject: Subject) -> Measured:
    path = subject.paths["diagonal"]
    shifts = path.shifts
    responses = invariance.shift_responses(
        subject.net, subject.variables, subject.items, render=subject.render,
        base_centre=path.base, shifts=shifts, layers=[],
        shifts_per_chunk=subject.flat.eval.shifts_per_chunk, mesh=subject.mesh)
    reference = responses.labels if subject.labelled else responses.predictions[:, :, 0]
    probability = invariance.correct_probability(responses.probs, reference)   # [S, I, P]
    return Measured(
        arrays={"diagonal_offsets": np.abs(shifts).max(-1),
                "diagonal_probability": probability},
        results={"diagonal_probability": np.mean(probability, axis=(0, 1)).tolist()})


class Consistency:
  """Zhang's consistency: whether two random offsets of an item get the same top-1 class."""
  name = "consistency"

  def measure(self, subject: Subject) -> Measured:
    ev = subject.flat.eval
    pairs = invariance.consistency(
        subject.net, subject.variables, subject.items, jax.random.key(subject.flat.seed),
        render=subject.render, base_centre=subject.paths["consistency"].base,
        max_offset=ev.consistency_offset, pairs_per_item=ev.consistency_pairs,
        mode=ev.consistency_mode, items_per_batch=ev.items_per_batch, mesh=subject.mesh)
    return Measured(
        arrays={"consistency_agreement": pairs.agreement},                     # [S, I, pairs]
        per_seed={"consistency": np.array(pairs.rate, np.float64)},
        settings={"consistency_mode": ev.consistency_mode,
                  "consistency_offset": int(ev.consistency_offset),
                  "consistency_pairs": int(ev.consistency_pairs)})


class Similarity:
  """Biscione & Bowers: per-layer cosine similarity against horizontal displacement from the
  leftmost-centred location, on the first measured item of each class (exp5's similarity test
  draws them by the seed instead, ``similarity.item_indices``)."""
  name = "similarity"

  def measure(self, subject: Subject) -> Measured:
    d, items = subject.flat.data, subject.items
    leftmost = locations.leftmost_centred_centre(d.canvas_size, d.item_size)
    displaced = similarity.displaced_centres(
        leftmost, locations.paper_axis(d.canvas_size, d.item_size, subject.flat.eval.grid_step))
    _, first_of_class = np.unique(subject.item_set.labels, return_index=True)
    chosen = np.sort(first_of_class)
    result = similarity.cosine_similarity(
        subject.net, subject.variables, Items(images=items.images[chosen],
                                              labels=items.labels[chosen]),
        render=subject.render, base_centre=leftmost, centres=displaced, mesh=subject.mesh)
    sim = result.seed_mean                                                     # [S, L, D]
    return Measured(
        arrays={"similarity_layers": np.array(result.layers),
                "similarity_displacements": result.displacements, "similarity": sim},
        results={"similarity_layers": result.layers,
                 "similarity_displacements": result.displacements.tolist(),
                 "similarity_at_largest_displacement": sim[:, :, -1].mean(0).tolist()})


# In the order of invariance.npz and the record.
MEASURES: tuple[Measure, ...] = (AlongPath(), Diagonal(), Consistency(), Similarity())


def invariance_test(net: kernel.Network, variables: Any, item_set: sources.ItemSet,
                    items: Items, *, flat: ml_collections.ConfigDict, render: canvas.Renderer,
                    mesh, directory: epath.Path, seeds: Sequence[int], labelled: bool,
                    title: str) -> dict:
  """Measures one network's invariance (each seed) and writes ``invariance.npz`` and figures.

  Args:
    net: ``(variables, x) -> (logits, intermediates)`` in inference mode (``kernel.Inference``).
    variables: the network's variables stacked over seeds, every leaf [S, ...].
    item_set: the items on the host (class names, count).
    items: the same items on the device.
    flat: the test's flat config (``data`` and ``eval``; see ``config_checks``).
    render: composes model input from items and centres, with the network's normalisation.
    mesh: the device mesh.
    directory: the test's folder.
    seeds: the seed of each of the S networks.
    labelled: whether the items' classes are the network's outputs; if not, each item's
      reference class is the network's top-1 at the start of the path.
    title: figure title prefix.

  Returns:
    The test's record.
  """
  subject = Subject(net=net, variables=variables, item_set=item_set, items=items, flat=flat,
                    render=render, mesh=mesh, labelled=labelled,
                    paths=paths(flat.data, flat.eval))
  logging.info("invariance: %d seed(s), measures %s", len(seeds),
               ", ".join(m.name for m in MEASURES))
  measured = [m.measure(subject) for m in MEASURES]

  arrays = {"seeds": np.array(seeds)}
  record = {"test_items": int(items.num_items), "num_classes": item_set.num_classes,
            "reference_class": "label" if labelled else "top-1 at the start of the path"}
  per_seed = {}
  for m in measured:
    arrays.update(m.arrays)
    record.update(m.settings)
    per_seed.update(m.per_seed)
  for m in measured:
    record.update(m.results)
  if set(per_seed) != set(SCALARS):
    raise ValueError(f"the measures report scalars {sorted(per_seed)}; SCALARS lists "
                     f"{sorted(SCALARS)}")
  for key in SCALARS:
    values = per_seed[key]
    record[key] = float(values.mean())
    record[f"{key}_std"] = float(values.std())
    record[f"{key}_per_seed"] = values.tolist()

  if workdir_lib.is_writer():
    workdir_lib.write_npz_atomic(directory / "invariance.npz", **arrays)
    _figures(directory, title, arrays, flat.eval.shift_path)
  return record


@contextlib.contextmanager
def _quiet():
  """Means over seeds or shifts where a measure is undefined everywhere (NaN) stay NaN, quietly."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    yield


def _per_layer(values: np.ndarray, reduce) -> list:
  """``reduce`` (np.nanmean or np.nanstd) over seeds of [S, L] values; None where undefined."""
  with _quiet():
    out = reduce(values, 0)
  return [None if not np.isfinite(v) else float(v) for v in out]


def _figures(directory: epath.Path, title: str, arrays: dict[str, np.ndarray],
             path_kind: str) -> None:
  """Writes ``FIGURES`` from the test's arrays (those of ``invariance.npz``)."""
  offsets, layers = arrays["offsets"], arrays["layers"].tolist()
  feature_layer = str(arrays["feature_layer"])
  diagonal = arrays["diagonal_probability"]                                    # [S, I, P]
  sim = arrays["similarity"]                                                   # [S, L2, D]
  plots.shift_rows(arrays["correct_probability"][0], offsets, str(directory / FIGURES[0]),
                   title=f"{title}: probability of the correct class as the item moves "
                   f"({path_kind}, 1 px steps; seed {0})")
  plots.curves(arrays["diagonal_offsets"], {"mean over items": diagonal.mean((0, 1))},
               str(directory / FIGURES[1]), stds={"mean over items": diagonal.mean(1).std(0)},
               ylim=(0.0, 1.02), title=f"{title}: probability of the correct class, diagonal "
               "shift (Zhang)\n(error bars: std over seeds)", xlabel="diagonal offset (px)",
               ylabel="probability")
  plots.feature_sums({feature_layer: arrays["feature_sums"][0, 0]}, offsets,
                     str(directory / FIGURES[2]), title=f"{title}: global sum of each "
                     f"{feature_layer} map as the first item moves ({path_kind})")
  with _quiet():
    metrics = {"nonshiftability": {"": np.nanmean(arrays["nonshiftability"], 0)},
               "equivariance error": {"": np.nanmean(arrays["equivariance_error"], 0)}}
  if arrays["similarity_layers"].tolist() == layers:
    largest = int(arrays["similarity_displacements"][-1])
    metrics[f"cosine similarity at {largest} px"] = {"": sim[:, :, -1].mean(0)}
  with _quiet():
    plots.layer_panels(layers, metrics, str(directory / FIGURES[3]),
                       title=f"{title}: per-layer invariance (mean over seeds)")
