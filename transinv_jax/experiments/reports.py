"""Tables and figures of a finished experiment, from its tests' records (the paper's figures).

Every experiment writes ``results.csv`` and ``results.json`` (one row per test) and the summary;
the figures are those named in ``config.figures`` (``FIGURES`` below maps each name to the
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
import csv
import dataclasses
import io
import json
from typing import Sequence

import ml_collections
import numpy as np
from absl import logging
from etils import epath

from transinv_jax import config_checks, plots
from transinv_jax import workdir as workdir_lib
from transinv_jax.data import locations, sources
from transinv_jax.experiments import diagnostics, spec
from transinv_jax.models import layers

# Scalar columns of results.csv, in order (per-seed lists stay in results.json).
COLUMNS = ("test", "kind", "stage", "dataset", "arm", "pretrain", "finetune", "condition",
           "network", "padding", "border", "train_items", "items", "split", "mean_accuracy",
           "mean_accuracy_std", "mean_normalised_accuracy", "mean_normalised_accuracy_std",
           "accuracy_at_trained_location", "accuracy_at_trained_location_std", "accuracy",
           "accuracy_std", "mean_penultimate_similarity", "mean_penultimate_similarity_std",
           "consistency", "consistency_std", "top1_change_rate", "top1_change_rate_std",
           "jaggedness", "jaggedness_std", "jagged_fraction", "jagged_fraction_std", "mad",
           "mad_std", "mad_top1", "mad_top1_std", "test_items", "seconds")


def table(records: Sequence[dict]) -> str:
  """results.csv: one row per test; the columns no test has are left out."""
  columns = [c for c in COLUMNS if any(c in r for r in records)]
  out = io.StringIO()
  writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  for record in records:
    writer.writerow({c: _cell(record.get(c)) for c in columns})
  return out.getvalue()


def _cell(value):
  if isinstance(value, float):
    return f"{value:.6g}"
  return "" if value is None else value


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
  coverage: dict  # stage -> StageCoverage, the stages trained in class regions

  def of_kind(self, kind: str) -> list[dict]:
    """The records of the tests of one kind (sweep, similarity, accuracy, invariance)."""
    return [r for r in self.records if r["kind"] == kind]


def check_figures(config: ml_collections.ConfigDict) -> None:
  """Refuses a ``config.figures`` name that no function draws (before any work)."""
  unknown = [n for n in config.get("figures", ()) if n not in FIGURES]
  if unknown:
    raise config_checks.ConfigError(
        f"config.figures={tuple(config.figures)}: no figure {unknown}; use names from "
        f"{sorted(FIGURES)} (transinv_jax/experiments/reports.py, FIGURES)")


def write(config: ml_collections.ConfigDict, workdir: epath.Path,
          records: Sequence[dict]) -> dict:
  """Writes the tables and the experiment's figures; returns the summary's results part."""
  figures = workdir / "figures"
  written = []
  coverage = _training_coverage(config)
  if workdir_lib.is_writer():
    records = _with_coverage(config, workdir, records, coverage)
    workdir_lib.write_bytes_atomic(workdir / "results.csv", table(records).encode())
    workdir_lib.write_json_atomic(workdir / "results.json", list(records))
    run = Figures(config, workdir, figures, tuple(records), coverage)
    for name in config.get("figures", spec.FIGURES):
      if name not in FIGURES:  # check_figures refuses it before any work; a record's config
        logging.warning("config.figures: no figure %r; known: %s", name, sorted(FIGURES))
        continue
      written += FIGURES[name](run)
  summary = {"results": [{k: r.get(k) for k in COLUMNS if k in r} for r in records],
             "figures": sorted(str(p.relative_to(workdir)) for p in written)}
  if coverage:
    summary["training_coverage"] = {name: _coverage_numbers(c) for name, c in coverage.items()}
  return summary


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


def _class_span(names: Sequence[str], classes: Sequence[int]) -> str:
  """``"A-S"`` for consecutive classes, ``"A"`` for one, else the names joined by commas."""
  chosen = [str(names[k]) if k < len(names) else str(k) for k in classes]
  if len(chosen) == 1:
    return chosen[0]
  if list(classes) == list(range(classes[0], classes[-1] + 1)):
    return f"{chosen[0]}-{chosen[-1]}"
  return ",".join(chosen)


@dataclasses.dataclass(frozen=True)
class StageCoverage:
  """A regions stage's training coverage (``locations.training_coverage``) and what it used."""
  data: dict  # the stage's resolved data section
  class_names: tuple[str, ...]
  groups: list[locations.Coverage]


def _training_coverage(config: ml_collections.ConfigDict) -> dict[str, StageCoverage]:
  """Every stage trained with ``train_location="regions"``, by name: its coverage per group."""
  # Here, not on top: pipeline imports this module.
  from transinv_jax.experiments import pipeline  # pylint: disable=g-import-not-at-top
  found = {}
  for name in config.get("stages", {}):
    data = pipeline.stage_config(config, name).data
    if data.train_location != "regions":
      continue
    names = sources.class_names(data.dataset, data.get("folder", ""))[:data.classes or None]
    found[name] = StageCoverage(
        data.to_dict(), names, locations.training_coverage(
            data.canvas_size, data.item_size, data.layout, len(names), data.fit))
  return found


def _coverage_numbers(stage: StageCoverage) -> dict:
  """The JSON figures of a stage's coverage (what ``_coverage_figures`` draws, in numbers)."""
  d = stage.data
  return {"fit": d["fit"], "canvas_size": d["canvas_size"], "item_size": d["item_size"],
          "layout": d["layout"],
          "groups": [{"names": _class_span(stage.class_names, g.group.classes), **g.numbers()}
                     for g in stage.groups]}


def _with_coverage(config, workdir, records, coverage) -> list[dict]:
  """``records`` with ``training_coverage`` on the tests of a regions stage (or a stage after
  one) and ``accuracy_by_region`` on the sweeps of a regions stage itself."""
  if not coverage:
    return list(records)
  result = []
  for record in records:
    record = dict(record)
    name = record.get("stage")
    while name and name not in coverage:  # a fine-tune inherits its parent's training
      name = config.stages[name].parent if name in config.stages else ""
    if name:
      record["training_coverage"] = {"stage": name, **_coverage_numbers(coverage[name])}
    if (name and name == record["stage"] and record["kind"] == "sweep"
        and record.get("num_classes") == len(coverage[name].class_names)):
      record["accuracy_by_region"] = _accuracy_by_region(
          _sweep(workdir, record["test"]), coverage[name])
    result.append(record)
  return result


def _accuracy_by_region(sweep: dict, stage: StageCoverage) -> dict:
  """Per class group, accuracy at the tested centres inside its region and outside it.

  Inside is the region as ``fit="centre"`` reads it (the boxes cut the centres' range), which
  splits the test grid exactly whatever the stage's fit: exp4 condition 1's "outside" is the
  upper-right quadrant's centres under both fits.

  Args:
    sweep: the test's sweep.npz (``correct`` [S, centres, classes], ``totals`` [classes],
      ``centres`` [centres, 2] as (x, y)).
    stage: the tested stage's coverage.

  Returns:
    ``{region: {"names", "inside", "inside_std", "inside_per_seed", "inside_centres", and the
    same for "outside"}}``; accuracy over the group's test items (NaN where no centre falls).
  """
  d = stage.data
  x, y = sweep["centres"][:, 0], sweep["centres"][:, 1]
  correct, totals = sweep["correct"], sweep["totals"]
  result = {}
  for g in stage.groups:
    classes = list(g.group.classes)
    inside = locations.allowed_centres(d["canvas_size"], d["item_size"], g.group.boxes,
                                       "centre")[y, x]                         # [centres]
    entry = {"names": _class_span(stage.class_names, classes)}
    for where, chosen in (("inside", inside), ("outside", ~inside)):
      items = chosen.sum() * totals[classes].sum()
      with np.errstate(invalid="ignore", divide="ignore"):
        per_seed = correct[:, chosen][..., classes].sum((1, 2)) / items     # [S]
      entry.update({where: float(per_seed.mean()), f"{where}_std": float(per_seed.std()),
                    f"{where}_per_seed": per_seed.tolist(), f"{where}_centres": int(chosen.sum())})
    result[g.group.region] = entry
  return result


def _coverage_figures(config, coverage, figures) -> list[epath.Path]:
  """``coverage_<stage>.png`` for every regions stage: one panel per class group."""
  written = []
  for name, stage in coverage.items():
    d = stage.data
    titles = []
    for g in stage.groups:
      n = g.numbers()
      titles.append(f"{_class_span(stage.class_names, g.group.classes)}: {g.group.region}\n"
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
  return diagnostics.comparison_figures(run.workdir, invariance, run.folder,
                                        run.config.experiment)


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
