"""The ``invariance`` test: every invariance measure of one network (all its seeds), with files.

For the items of a split (the first ``eval.invariance_items``), on the canvas the network was
trained on:

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
report says so. Writes ``invariance.npz`` and the figures below into the test's folder and
returns the record (per-seed values, their mean and std).
"""

import contextlib
import dataclasses
import warnings
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from transinv_jax import invariance, kernel, plots, similarity
from transinv_jax import workdir as workdir_lib
from transinv_jax.data import canvas, locations, sources
from transinv_jax.train import Items

# Scalars of invariance.summarise (and consistency) reported with mean, std and per-seed values.
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
  d, ev = flat.data, flat.eval
  room = np.subtract(*locations.centre_range(d.canvas_size, d.item_size)[::-1])
  shifts = invariance.path(ev.shift_path, ev.max_shift)
  base = path_base(d.canvas_size, d.item_size, ev.shift_path, ev.max_shift)
  diagonal_length = int(min(ev.consistency_offset, room))
  diagonal = invariance.path("diagonal", diagonal_length)
  diagonal_offsets = np.abs(diagonal).max(-1)
  diagonal_base = path_base(d.canvas_size, d.item_size, "diagonal", diagonal_length)
  if ev.consistency_mode == "translate":
    consistency_base = path_base(d.canvas_size, d.item_size, "diagonal",
                                 ev.consistency_offset - 1)
  else:
    consistency_base = path_base(d.canvas_size, d.item_size, "diagonal", 0)
  leftmost = locations.leftmost_centred_centre(d.canvas_size, d.item_size)
  displaced = similarity.displaced_centres(
      leftmost, locations.paper_axis(d.canvas_size, d.item_size, ev.grid_step))
  # One item per class among the measured items: the first of each (exp5's similarity test
  # draws them by the seed instead, similarity.item_indices).
  _, first_of_class = np.unique(item_set.labels, return_index=True)
  chosen = np.sort(first_of_class)
  similar_items = Items(images=items.images[chosen], labels=items.labels[chosen])

  logging.info("invariance: %d seed(s), %d items, %d shifts along %s", len(seeds),
               items.num_items, len(shifts), ev.shift_path)
  path = invariance.shift_responses(net, variables, items, render=render, base_centre=base,
                                    shifts=shifts, shifts_per_chunk=ev.shifts_per_chunk,
                                    mesh=mesh)
  path_runs = [path.seed(s) for s in range(len(seeds))]
  if not labelled:  # the network's own answer at the start of the path is the reference
    path_runs = [dataclasses.replace(r, labels=r.predictions[:, 0].astype(np.int32))
                 for r in path_runs]
  num_classes = path.probs.shape[-1]
  top = min(ev.top, num_classes - 1) if num_classes > 1 else 1
  per_seed = [invariance.summarise(r, top=top, activity_threshold=ev.activity_threshold,
                                   tolerance=ev.shift_tolerance) for r in path_runs]
  diag = invariance.shift_responses(net, variables, items, render=render,
                                    base_centre=diagonal_base, shifts=diagonal, layers=[],
                                    shifts_per_chunk=ev.shifts_per_chunk, mesh=mesh)
  reference = diag.labels if labelled else diag.predictions[:, :, 0]
  diagonal_runs = invariance.correct_probability(diag.probs, reference)        # [S, I, P]
  pairs = invariance.consistency(
      net, variables, items, jax.random.key(flat.seed), render=render,
      base_centre=consistency_base, max_offset=ev.consistency_offset,
      pairs_per_item=ev.consistency_pairs, mode=ev.consistency_mode,
      items_per_batch=ev.items_per_batch, mesh=mesh)
  for summary, rate in zip(per_seed, pairs.rate):
    summary["consistency"] = float(rate)
  similarities = similarity.cosine_similarity(
      net, variables, similar_items, render=render, base_centre=leftmost, centres=displaced,
      mesh=mesh)

  first = path_runs[0]
  layers = first.layers
  spatial = [n for n in layers if first.spatial[n]]
  feature_layer = spatial[-1] if spatial else layers[-1]
  offsets = np.abs(shifts).max(-1)
  stack = lambda key: np.array([s[key] for s in per_seed], np.float64)
  nonshift = np.array([[np.nan if v is None else v for v in s["nonshiftability"]]
                       for s in per_seed])                                     # [S, L]
  equivariance = np.array([[np.nan if v is None else v for v in s["equivariance_error"]]
                           for s in per_seed])                                 # [S, L]
  sim = similarities.seed_mean                                                 # [S, L2, D]
  if workdir_lib.is_writer():
    with _quiet():
      equivariance_by_shift = np.stack([[np.nanmean(r.equivariance[n], 0) for n in layers]
                                        for r in path_runs])                   # [S, L, P]
    workdir_lib.write_npz_atomic(
        directory / "invariance.npz", seeds=np.array(seeds), shifts=shifts, offsets=offsets,
        base_centre=np.array(base), layers=np.array(layers),
        strides=np.array([first.strides.get(n, 0) for n in layers]),
        labels=np.stack([r.labels for r in path_runs]),
        correct_probability=np.stack([r.correct_probability for r in path_runs]),
        predictions=path.predictions,
        nonshiftability=nonshift, equivariance_error=equivariance,
        equivariance_by_shift=equivariance_by_shift, feature_layer=np.array(feature_layer),
        feature_sums=path.sums[feature_layer],
        diagonal_offsets=diagonal_offsets,
        diagonal_probability=diagonal_runs, consistency_agreement=pairs.agreement,
        similarity_layers=np.array(similarities.layers),
        similarity_displacements=similarities.displacements, similarity=sim)
    _figures(directory, title, first, feature_layer, offsets, diagonal_offsets,
             diagonal_runs, layers, nonshift, equivariance, similarities.layers, sim,
             int(similarities.displacements[-1]), ev.shift_path)

  record = {"test_items": int(items.num_items), "num_classes": item_set.num_classes,
            "reference_class": "label" if labelled else "top-1 at the start of the path",
            "path": ev.shift_path, "max_shift": int(ev.max_shift), "base_centre": list(base),
            "top": per_seed[0]["top"], "activity_threshold": float(ev.activity_threshold),
            "shift_tolerance": float(ev.shift_tolerance),
            "consistency_mode": ev.consistency_mode,
            "consistency_offset": int(ev.consistency_offset),
            "consistency_pairs": int(ev.consistency_pairs), "layers": layers,
            "strides": [first.strides.get(n, 0) for n in layers],
            "nonshiftability": _per_layer(nonshift, np.nanmean),
            "nonshiftability_std": _per_layer(nonshift, np.nanstd),
            "equivariance_error": _per_layer(equivariance, np.nanmean),
            "equivariance_error_std": _per_layer(equivariance, np.nanstd),
            "feature_layer": feature_layer,
            "diagonal_probability": np.mean(diagonal_runs, axis=(0, 1)).tolist(),
            "similarity_layers": similarities.layers,
            "similarity_displacements": similarities.displacements.tolist(),
            "similarity_at_largest_displacement": sim[:, :, -1].mean(0).tolist()}
  for key in SCALARS:
    values = stack(key)
    record[key] = float(values.mean())
    record[f"{key}_std"] = float(values.std())
    record[f"{key}_per_seed"] = values.tolist()
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


def _figures(directory, title, first, feature_layer, offsets, diagonal_offsets, diagonal_runs,
             layers, nonshift, equivariance, sim_layers, sim, largest, path_kind) -> None:
  plots.shift_rows(first.correct_probability, offsets, str(directory / FIGURES[0]),
                   title=f"{title}: probability of the correct class as the item moves "
                   f"({path_kind}, 1 px steps; seed {0})")
  plots.curves(diagonal_offsets, {"mean over items": diagonal_runs.mean((0, 1))},
               str(directory / FIGURES[1]), stds={"mean over items": diagonal_runs.mean(1).std(0)},
               ylim=(0.0, 1.02), title=f"{title}: probability of the correct class, diagonal "
               "shift (Zhang)\n(error bars: std over seeds)", xlabel="diagonal offset (px)",
               ylabel="probability")
  plots.feature_sums({feature_layer: first.sums[feature_layer][0]}, offsets,
                     str(directory / FIGURES[2]), title=f"{title}: global sum of each "
                     f"{feature_layer} map as the first item moves ({path_kind})")
  with _quiet():
    metrics = {"nonshiftability": {"": np.nanmean(nonshift, 0)},
               "equivariance error": {"": np.nanmean(equivariance, 0)}}
  if list(sim_layers) == list(layers):
    metrics[f"cosine similarity at {largest} px"] = {"": sim[:, :, -1].mean(0)}
  with _quiet():
    plots.layer_panels(layers, metrics, str(directory / FIGURES[3]),
                       title=f"{title}: per-layer invariance (mean over seeds)")


def comparison_figures(workdir: epath.Path, records: Sequence[dict], figures: epath.Path,
                       experiment: str) -> list[epath.Path]:
  """Figures comparing the networks of several ``invariance`` tests (Azulay & Weiss).

  Returns:
    The files written: ``feature_sums.png`` (the first item's last-layer map sums, one panel per
    network: A&W figure 4), ``invariance_by_layer.png`` (where the networks share layers) and
    ``invariance_measures.png`` (the scalar measures as bars).
  """
  def load(test):
    return workdir_lib.read_npz(workdir / "tests" / test / "invariance.npz")

  data = {r.get("network") or r["test"]: load(r["test"]) for r in records}
  written = []
  path = figures / "feature_sums.png"
  plots.feature_sums({f"{name} ({str(v['feature_layer'])})": v["feature_sums"][0, 0]
                      for name, v in data.items()}, next(iter(data.values()))["offsets"],
                     str(path), title=f"{experiment}: global sum of each last-layer map as the "
                     "first item moves 1 px at a time (seed 0)")
  written.append(path)
  layer_lists = {tuple(str(n) for n in v["layers"]) for v in data.values()}
  if len(layer_lists) == 1:
    layers = list(next(iter(layer_lists)))
    with _quiet():
      metrics = {"nonshiftability": {n: np.nanmean(v["nonshiftability"], 0)
                                     for n, v in data.items()},
                 "equivariance error": {n: np.nanmean(v["equivariance_error"], 0)
                                        for n, v in data.items()}}
    path = figures / "invariance_by_layer.png"
    plots.layer_panels(layers, metrics, str(path),
                       title=f"{experiment}: per-layer invariance (mean over seeds)")
    written.append(path)
  shown = ("consistency", "top1_change_rate", "jagged_fraction", "mad", "mad_top1")
  means = np.array([[r[k] for k in shown] for r in records])
  stds = np.array([[r[f"{k}_std"] for k in shown] for r in records])
  path = figures / "invariance_measures.png"
  plots.grouped_bars(means, stds, list(shown), list(data), str(path),
                     title=f"{experiment}: invariance measures\n(error bars: std over seeds)",
                     ylabel="value", legend_title="network")
  written.append(path)
  return written
