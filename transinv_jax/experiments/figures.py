"""The figures of a finished experiment, by name, from its tests' records (the paper's figures).

``reports.write`` draws those named in ``config.figures`` (``FIGURES`` below maps each name to the
function drawing it; ``spec.FIGURES`` are every experiment's, each drawn from the tests of one
kind when the run has some). By name, and the experiments whose configs list them:

  heatmaps       every sweep's interpolated mean heatmap, side by side (exp1: figure 1C, bottom)
  accuracy_bars  (exp1) accuracy bars with std per dataset and arm (figure 1C, top)
  transfer       (exp2, fcn) normalised-accuracy matrix pretrain x fine-tune (figure 2B); bars
                 with std (figure 6); for the fully connected network, figure 13
  class_groups   (exp4) for conditions 3.x, separate heatmaps of the fully translated classes and
                 of the upper-right-only classes (figure 9); exp3's and exp4's heatmaps of each
                 test (figures 3, 4, 8) are ``heatmaps``, per class in each test's folder (7)
  coverage       any stage trained in class regions (exp3, exp4): ``coverage_<stage>.png``: per
                 class group, how often the training sampler puts item pixels on each canvas
                 pixel, regions outlined (computed from the config). Whatever the figures, the
                 records of tests on or after that stage get ``training_coverage`` (per group:
                 allowed centres, and how many put pixels outside the group's region); sweeps
                 of the stage itself get ``accuracy_by_region`` (per group: accuracy at the
                 tested centres inside and outside its region)
  similarity     (``similarity`` tests: exp5) penultimate cosine similarity against displacement
                 per network and dataset (figure 5A); before vs after fine-tuning for each
                 pretraining dataset (figures 5B, 10); every layer by displacement (figure 11)
                 and at the largest displacement (figure 12)
  accuracy       (``accuracy`` tests) rook: train and test accuracy per padding (bars); quadrant:
                 location accuracy against the border, one line per arm, per split;
                 data_efficiency: test accuracy against the training set size per padding
  invariance     (``invariance`` tests: azulay_weiss) the global sums of the last conv layer's
                 maps as the item moves, one panel per network (A&W figure 4); per-layer
                 nonshiftability, equivariance error and cosine similarity per network; the
                 scalar measures as bars

A new figure: a function ``(Figures) -> [paths written]`` and its line in ``FIGURES``; an
experiment draws it once its config lists the name.
"""

from collections.abc import Callable
import dataclasses
import json
from typing import Sequence
import warnings

import ml_collections
import numpy as np
from etils import epath

from transinv_jax import config_checks, plots
from transinv_jax import workdir as workdir_lib
from transinv_jax.experiments import coverage, spec
from transinv_jax.models import layers


def _sweep(workdir: epath.Path, test: str) -> dict:
  return workdir_lib.read_npz(workdir / "tests" / test / "sweep.npz")


def _similarity(workdir: epath.Path, test: str) -> dict:
  return workdir_lib.read_npz(workdir / "tests" / test / "similarity.npz")


def _in_paper_order(names) -> list[str]:
  """Unique dataset names in the paper's order (EMNIST, FashionMNIST, ..., Leek2)."""
  order = {d: i for i, d in enumerate(spec.DATASETS)}
  return sorted(dict.fromkeys(names), key=lambda d: (order.get(d, len(order)), d))


def _label(dataset: str) -> str:
  return spec.LABELS.get(dataset, dataset)


@dataclasses.dataclass(frozen=True)
class Figures:
  """What a figure is drawn from: the run's config, its records and where figures go."""
  config: ml_collections.ConfigDict
  workdir: epath.Path
  folder: epath.Path  # <workdir>/figures
  records: tuple[dict, ...]
  coverage: dict  # stage -> coverage.StageCoverage, the stages trained in class regions

  def of_kind(self, kind: str) -> list[dict]:
    """The records of the tests of one kind (sweep, similarity, accuracy, invariance)."""
    return [r for r in self.records if r["kind"] == kind]


def check_figures(config: ml_collections.ConfigDict) -> None:
  """Refuses a ``config.figures`` name that no function draws (before any work)."""
  unknown = [n for n in config.get("figures", ()) if n not in FIGURES]
  if unknown:
    raise config_checks.ConfigError(
        f"config.figures={tuple(config.figures)}: no figure {unknown}; use names from "
        f"{sorted(FIGURES)} (transinv_jax/experiments/figures.py, FIGURES)")


def _title(record: dict) -> str:
  parts = [record.get(k) for k in ("arm", "condition", "pretrain", "finetune", "network",
                                   "padding", "border", "train_items", "split")]
  named = " / ".join(str(p) for p in parts if p)
  return named or record["test"]


def _heatmap_panels(workdir, sweeps, figures, config) -> list[epath.Path]:
  """Every sweep's interpolated mean heatmap side by side, one panel per test."""
  panels, titles, marks = [], [], []
  xs = None
  for record in sweeps:
    data = _sweep(workdir, record["test"])
    xs = data["xs"]
    panels.append(data["accuracy"])
    titles.append(f"{_title(record)}\n{_label(record['dataset'])}: "
                  f"{100 * record['mean_accuracy']:.0f}%")
    marks.append(record.get("trained_centre"))
  path = figures / "heatmaps.png"
  plots.heatmap_panels(panels, xs, xs, config.data.canvas_size, str(path), titles=titles,
                       trained=marks, title=f"{config.experiment}: accuracy by item centre "
                       f"(mean of {config.num_seeds} seed(s))")
  return [path]


def _exp1_bars(sweeps, figures) -> list[epath.Path]:
  datasets = _in_paper_order(r["dataset"] for r in sweeps)
  arms = sorted(dict.fromkeys(r.get("arm", "") for r in sweeps), reverse=True)  # vanilla first
  means = np.full((len(arms), len(datasets)), np.nan)
  stds = np.zeros_like(means)
  for r in sweeps:
    i, j = arms.index(r.get("arm", "")), datasets.index(r["dataset"])
    means[i, j], stds[i, j] = r["mean_accuracy"], r["mean_accuracy_std"]
  chance = [next(r["chance"] for r in sweeps if r["dataset"] == d) for d in datasets]
  path = figures / "accuracy_bars.png"
  plots.grouped_bars(means * 100, stds * 100, [_label(d) for d in datasets], arms, str(path),
                     title="exp1: mean accuracy over the test grid\n(error bars: std over seeds)",
                     ylabel="accuracy (%)", chance=[100 * c for c in chance])
  return [path]


def _transfer_figures(sweeps, figures, experiment) -> list[epath.Path]:
  pretrains = _in_paper_order(r["pretrain"] for r in sweeps)
  finetunes = _in_paper_order(r["finetune"] for r in sweeps)
  means = np.full((len(pretrains), len(finetunes)), np.nan)
  stds = np.zeros_like(means)
  for r in sweeps:
    i, j = pretrains.index(r["pretrain"]), finetunes.index(r["finetune"])
    means[i, j] = r["mean_normalised_accuracy"]
    stds[i, j] = r["mean_normalised_accuracy_std"]
  matrix = figures / "normalised_accuracy_matrix.png"
  plots.matrix(means, [_label(p) for p in pretrains], [_label(f) for f in finetunes],
               str(matrix), title=f"{experiment}: normalised accuracy, fully translated test\n"
               "(0 = chance, 100 = perfect)", xlabel="fine-tuned (1-location) and tested on",
               ylabel="pretrained (fully translated) on", vmin=0, vmax=100)
  bars = figures / "normalised_accuracy_bars.png"
  plots.grouped_bars(means.T, stds.T, [_label(p) for p in pretrains],
                     [_label(f) for f in finetunes], str(bars),
                     title=f"{experiment}: normalised accuracy by pretraining dataset\n"
                     "(error bars: std over seeds)",
                     ylabel="normalised accuracy", chance=None, legend_title="fine-tuned on")
  return [matrix, bars]


def _coverage_figures(config, stages, figures) -> list[epath.Path]:
  """``coverage_<stage>.png`` for every regions stage: one panel per class group."""
  written = []
  for name, stage in stages.items():
    d = stage.data
    titles = []
    for g in stage.groups:
      n = g.numbers()
      titles.append(f"{coverage.class_span(stage.class_names, g.group.classes)}: {g.group.region}\n"
                    f"{n['spilling_centres']:,} of {n['allowed_centres']:,} centres "
                    f"({100 * n['spilling_fraction']:.0f}%) leave it")
    path = figures / f"coverage_{name}.png"
    plots.coverage_panels(
        [g.map for g in stage.groups], [g.pixels for g in stage.groups], str(path),
        titles=titles, title=f"{config.experiment} {name}: training pixel coverage per class "
        f"group\n(fit={d['fit']}, canvas {d['canvas_size']}, items {d['item_size']})")
    written.append(path)
  return written


def _class_group_heatmaps(workdir, sweeps, figures) -> list[epath.Path]:
  """exp4 condition 3.x: the fully translated classes and the upper-right-only ones apart."""
  written = []
  for record in sweeps:
    groups = record.get("class_groups")
    if not groups:
      continue
    data = _sweep(workdir, record["test"])
    panels, titles = [], []
    for group, classes in json.loads(groups).items():
      with np.errstate(invalid="ignore"):
        panels.append(np.nanmean(data["class_accuracy"][..., classes], -1))
      names = data["class_names"][classes]
      titles.append(f"{group}: {names[0]}-{names[-1]}" if len(names) > 1 else
                    f"{group}: {names[0]}")
    path = figures / f"class_groups_{record['test']}.png"
    plots.heatmap_panels(panels, data["xs"], data["ys"], None, str(path), titles=titles,
                         title=f"exp4 {_title(record)}: accuracy by class group")
    written.append(path)
  return written


def _similarity_figures(workdir, sims, figures) -> list[epath.Path]:
  written = []
  by_items = {}
  for record in sims:
    by_items.setdefault(record.get("items", record["dataset"]), []).append(record)
  # Figure 5A: penultimate similarity against displacement, one line per network, per dataset.
  for dataset, records in by_items.items():
    curves = {_title(r): np.asarray(r["penultimate_similarity"]) for r in records
              if r.get("network") in ("vanilla", "imagenet", "pretrained")}
    stds = {_title(r): np.asarray(r["penultimate_similarity_std"]) for r in records
            if r.get("network") in ("vanilla", "imagenet", "pretrained")}
    if curves:
      path = figures / f"similarity_by_displacement_{dataset}.png"
      plots.similarity_curves(np.asarray(records[0]["displacements"]), curves, str(path),
                              title=f"exp5: penultimate-layer cosine similarity, "
                              f"{_label(dataset)} items", stds=stds)
      written.append(path)
  # Figures 5B and 10: before vs after fine-tuning, per pretraining dataset.
  pretrains = list(dict.fromkeys(r["pretrain"] for r in sims if r.get("pretrain")))
  for pretrain in pretrains:
    curves = {}
    for r in sims:
      if r.get("pretrain") != pretrain or r.get("network") not in ("pretrained", "finetuned"):
        continue
      stage = 0 if r["network"] == "pretrained" else 1
      curves.setdefault(_label(r["items"]), [np.nan, np.nan])[stage] = (
          r["mean_penultimate_similarity"])
    if curves:
      path = figures / f"similarity_finetuning_{pretrain}.png"
      plots.similarity_by_layer_lines(
          ["before fine-tuning", "after fine-tuning"],
          {k: np.asarray(v) for k, v in curves.items()}, str(path),
          title=f"exp5: pretrained on {_label(pretrain)} (fully translated)\nmean penultimate "
          "cosine similarity, per fine-tuning dataset", xlabel="stage")
      written.append(path)
  # Figures 11 and 12: every layer, for the networks tested on every layer.
  at_extreme = {}
  for r in sims:
    if r.get("network") not in ("vanilla", "imagenet"):
      continue
    data = _similarity(workdir, r["test"])
    layers = [str(l) for l in data["layers"]]
    path = figures / f"similarity_layers_{r['test']}.png"
    plots.similarity_layers(layers, data["displacements"], data["mean"], str(path),
                            title=f"exp5: cosine similarity per layer, {_title(r)}, "
                            f"{_label(r['items'])} items")
    written.append(path)
    at_extreme[f"{_title(r)} ({_label(r['items'])})"] = (layers, data["mean"][:, -1],
                                                         int(data["displacements"][-1]))
  if at_extreme:
    layers = next(iter(at_extreme.values()))[0]
    curves = {k: v[1] for k, v in at_extreme.items() if v[0] == layers}
    path = figures / "similarity_layers_largest_displacement.png"
    plots.similarity_by_layer_lines(
        layers, curves, str(path),
        title=f"exp5: cosine similarity per layer at the largest displacement "
        f"({next(iter(at_extreme.values()))[2]} px)")
    written.append(path)
  return written


def _accuracy_figures(records, figures, experiment) -> list[epath.Path]:
  """Kayhan & van Gemert's figures from ``accuracy`` tests, by what the tests' labels vary:
  accuracy against the border per arm (Quadrant ImageNet), against the training set size per
  padding (data efficiency), or bars per padding and split (the rook)."""
  chance = records[0]["chance"]
  written = []

  def lines(x_key, line_key, split):
    chosen = [r for r in records if r.get("split") == split]
    xs = sorted({int(r[x_key]) for r in chosen})
    means, stds = {}, {}
    for r in chosen:
      label = r.get(line_key, "")
      means.setdefault(label, np.full(len(xs), np.nan))[xs.index(int(r[x_key]))] = r["accuracy"]
      stds.setdefault(label, np.zeros(len(xs)))[xs.index(int(r[x_key]))] = r["accuracy_std"]
    return xs, means, stds

  if any("border" in r for r in records):
    for split in sorted({r.get("split") for r in records}):
      xs, means, stds = lines("border", "arm", split)
      path = figures / f"accuracy_by_border_{split}.png"
      plots.curves(xs, means, str(path), stds=stds, chance=chance, ylim=(0.0, 1.02),
                   title=f"{experiment}: location accuracy ({split} split) against the black "
                   "border\n(error bars: std over seeds)", xlabel="border (px)",
                   ylabel="accuracy")
      written.append(path)
  elif any("train_items" in r for r in records):
    xs, means, stds = lines("train_items", "padding", "test")
    path = figures / "accuracy_by_train_size.png"
    plots.curves(xs, means, str(path), stds=stds, log_x=True, chance=chance,
                 title=f"{experiment}: test accuracy against the training set size\n"
                 "(error bars: std over seeds)", xlabel="training items", ylabel="accuracy")
    written.append(path)
  else:
    order = {p: i for i, p in enumerate(layers.PADDING_MODES)}  # zeros, valid, full, circular
    groups = sorted(dict.fromkeys(r.get("padding") or r["test"] for r in records),
                    key=lambda g: (order.get(g, len(order)), g))
    series = list(dict.fromkeys(r.get("split", "test") for r in records))
    means = np.full((len(series), len(groups)), np.nan)
    stds = np.zeros_like(means)
    for r in records:
      i, j = series.index(r.get("split", "test")), groups.index(r.get("padding") or r["test"])
      means[i, j], stds[i, j] = r["accuracy"], r["accuracy_std"]
    path = figures / "accuracy.png"
    plots.grouped_bars(means * 100, stds * 100, groups, series, str(path),
                       title=f"{experiment}: accuracy per network\n(error bars: std over seeds)",
                       ylabel="accuracy (%)", chance=[100 * chance] * len(groups),
                       legend_title="split")
    written.append(path)
  return written


def _invariance_figures(workdir: epath.Path, records: Sequence[dict], figures: epath.Path,
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
    with warnings.catch_warnings():  # NaN (quietly) where a measure is undefined
      warnings.simplefilter("ignore", RuntimeWarning)
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


# -- the figures by name (config.figures): each draws from the run, and returns what it wrote


def _fig_heatmaps(run: Figures) -> list[epath.Path]:
  sweeps = run.of_kind("sweep")
  return _heatmap_panels(run.workdir, sweeps, run.folder, run.config) if sweeps else []


def _fig_accuracy_bars(run: Figures) -> list[epath.Path]:
  sweeps = run.of_kind("sweep")
  return _exp1_bars(sweeps, run.folder) if sweeps else []


def _fig_transfer(run: Figures) -> list[epath.Path]:
  sweeps = run.of_kind("sweep")
  return _transfer_figures(sweeps, run.folder, run.config.experiment) if sweeps else []


def _fig_class_groups(run: Figures) -> list[epath.Path]:
  return _class_group_heatmaps(run.workdir, run.of_kind("sweep"), run.folder)


def _fig_coverage(run: Figures) -> list[epath.Path]:
  return _coverage_figures(run.config, run.coverage, run.folder)


def _fig_similarity(run: Figures) -> list[epath.Path]:
  sims = run.of_kind("similarity")
  return _similarity_figures(run.workdir, sims, run.folder) if sims else []


def _fig_accuracy(run: Figures) -> list[epath.Path]:
  accuracy = run.of_kind("accuracy")
  return _accuracy_figures(accuracy, run.folder, run.config.experiment) if accuracy else []


def _fig_invariance(run: Figures) -> list[epath.Path]:
  invariance = run.of_kind("invariance")
  if not invariance:
    return []
  return _invariance_figures(run.workdir, invariance, run.folder, run.config.experiment)


FIGURES: dict[str, Callable[[Figures], list[epath.Path]]] = {
    "heatmaps": _fig_heatmaps,            # every sweep's heatmap, side by side
    "accuracy_bars": _fig_accuracy_bars,  # exp1: accuracy per dataset and arm (figure 1C)
    "transfer": _fig_transfer,            # exp2, fcn: normalised accuracy matrix and bars
    "class_groups": _fig_class_groups,    # exp4 3.x: heatmaps per class group (figure 9)
    "coverage": _fig_coverage,            # stages trained in class regions: pixel coverage
    "similarity": _fig_similarity,        # similarity tests (exp5's figures)
    "accuracy": _fig_accuracy,            # accuracy tests (rook, quadrant, data_efficiency)
    "invariance": _fig_invariance,        # invariance tests (azulay_weiss)
}
