"""Training coverage of the stages trained in class regions (exp3, exp4), from the config.

For each stage with ``train_location="regions"``: per class group, how often the training
sampler puts item pixels on each canvas pixel, how many of its allowed centres spill outside
the group's region, and (for its sweeps) accuracy at the tested centres inside and outside the
region. ``reports.write`` adds these to the records; ``figures`` draws the coverage maps.
"""

import dataclasses
from typing import Sequence

import ml_collections
import numpy as np
from etils import epath

from transinv_jax import workdir as workdir_lib
from transinv_jax.data import locations, sources
from transinv_jax.experiments import spec


def class_span(names: Sequence[str], classes: Sequence[int]) -> str:
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


def training_coverage(config: ml_collections.ConfigDict) -> dict[str, StageCoverage]:
  """Every stage trained with ``train_location="regions"``, by name: its coverage per group."""
  found = {}
  for name in config.get("stages", {}):
    data = spec.stage_values(config, name)["data"]
    if data["train_location"] != "regions":
      continue
    names = sources.class_names(data["dataset"], data.get("folder", ""))[:data["classes"] or None]
    found[name] = StageCoverage(
        data, names, locations.training_coverage(
            data["canvas_size"], data["item_size"], data["layout"], len(names), data["fit"]))
  return found


def numbers(stage: StageCoverage) -> dict:
  """The JSON figures of a stage's coverage (what ``figures.coverage`` draws, in numbers)."""
  d = stage.data
  return {"fit": d["fit"], "canvas_size": d["canvas_size"], "item_size": d["item_size"],
          "layout": d["layout"],
          "groups": [{"names": class_span(stage.class_names, g.group.classes), **g.numbers()}
                     for g in stage.groups]}


def with_coverage(config: ml_collections.ConfigDict, workdir: epath.Path,
                  records: Sequence[dict], coverage: dict) -> list[dict]:
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
      record["training_coverage"] = {"stage": name, **numbers(coverage[name])}
    if (name and name == record["stage"] and record["kind"] == "sweep"
        and record.get("num_classes") == len(coverage[name].class_names)):
      record["accuracy_by_region"] = accuracy_by_region(
          workdir_lib.read_npz(workdir / "tests" / record["test"] / "sweep.npz"), coverage[name])
    result.append(record)
  return result


def accuracy_by_region(sweep: dict, stage: StageCoverage) -> dict:
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
    entry = {"names": class_span(stage.class_names, classes)}
    for where, chosen in (("inside", inside), ("outside", ~inside)):
      items = chosen.sum() * totals[classes].sum()
      with np.errstate(invalid="ignore", divide="ignore"):
        per_seed = correct[:, chosen][..., classes].sum((1, 2)) / items     # [S]
      entry.update({where: float(per_seed.mean()), f"{where}_std": float(per_seed.std()),
                    f"{where}_per_seed": per_seed.tolist(), f"{where}_centres": int(chosen.sum())})
    result[g.group.region] = entry
  return result
