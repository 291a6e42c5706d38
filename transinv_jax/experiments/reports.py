"""The tables of a finished experiment and its figures: ``results.csv``, ``results.json`` and the
summary's results, one row per test, with the training coverage of regions stages
(``coverage``); then the figures named in ``config.figures`` (``figures.FIGURES``).
"""

import csv
import io
from typing import Sequence

import ml_collections
from absl import logging
from etils import epath

from transinv_jax import workdir as workdir_lib
from transinv_jax.experiments import coverage, figures, spec

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


def write(config: ml_collections.ConfigDict, workdir: epath.Path,
          records: Sequence[dict]) -> dict:
  """Writes the tables and the experiment's figures; returns the summary's results part."""
  written = []
  stages = coverage.training_coverage(config)
  if workdir_lib.is_writer():
    records = coverage.with_coverage(config, workdir, records, stages)
    workdir_lib.write_bytes_atomic(workdir / "results.csv", table(records).encode())
    workdir_lib.write_json_atomic(workdir / "results.json", list(records))
    run = figures.Figures(config, workdir, workdir / "figures", tuple(records), stages)
    for name in config.get("figures", spec.FIGURES):
      if name not in figures.FIGURES:  # check_figures refuses it before any work
        logging.warning("config.figures: no figure %r; known: %s", name, sorted(figures.FIGURES))
        continue
      written += figures.FIGURES[name](run)
  summary = {"results": [{k: r.get(k) for k in COLUMNS if k in r} for r in records],
             "figures": sorted(str(p.relative_to(workdir)) for p in written)}
  if stages:
    summary["training_coverage"] = {name: coverage.numbers(c) for name, c in stages.items()}
  return summary


