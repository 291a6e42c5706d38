"""The shift sweep: accuracy of every seed's network with the items centred at each grid point.

Writes ``sweep.npz`` and the heatmaps of the mean over seeds.
"""

import pathlib
import warnings

import ml_collections
import numpy as np

from transinv_jax import evaluate, plots
from transinv_jax import workdir as workdir_lib
from transinv_jax.data import inputs, locations, sources
from transinv_jax.experiments import stages
from transinv_jax.experiments.kinds import context


def run(ctx: context.TestContext, name: str, entry: ml_collections.ConfigDict,
        flat: ml_collections.ConfigDict, trained: context.TrainedStage,
        directory: pathlib.Path) -> dict:
  """Sweeps the test items over the ``inputs.test_axes`` grid; see ``write_sweep``.

  Args:
    ctx: the run's shared services.
    name: the test's name in ``config.tests``.
    entry: its ``config.tests`` entry.
    flat: its flat config (``stages.test_config``).
    trained: the stage it measures.
    directory: the test's folder.

  Returns:
    The test's record (``write_sweep``).
  """
  test_set, test_items = ctx.test_items(name, flat, trained)
  axis = inputs.test_axes(flat)
  sweep = evaluate.shift_sweep(
      ctx.net(flat, trained.num_classes), trained.variables, test_items,
      locations.grid_centres(axis, axis),
      render=ctx.render(flat.data, trained.mean, trained.std), mesh=ctx.mesh,
      items_per_batch=flat.eval.items_per_batch, centres_per_chunk=flat.eval.centres_per_chunk)
  stage_data = stages.stage_config(ctx.config, entry.stage).data
  return write_sweep(directory, sweep, ctx.seeds, axis, test_set, flat.data.canvas_size,
                     inputs.trained_centre(stage_data), title=ctx.title(name))


def write_sweep(directory: pathlib.Path, sweep: evaluate.SweepResult, seeds: list[int],
                axis: np.ndarray, test_set: sources.ItemSet, canvas_size: int,
                trained: tuple[int, int] | None, title: str) -> dict:
  """Writes sweep.npz and the heatmaps (of the mean over seeds); returns the test's record.

  Args:
    directory: the test's folder.
    sweep: the sweep of every seed's network over the ``axis`` x ``axis`` grid.
    seeds: the seeds.
    axis: the tested centres along each axis.
    test_set: the test items (class names).
    canvas_size: canvas side, for the interpolated heatmap.
    trained: the 1-location training centre, marked on the heatmaps (None if trained elsewhere).
    title: figure title prefix.

  Returns:
    Mean accuracy and normalised accuracy (per seed, mean and std over seeds), accuracy at the
    trained location, along its row, and per class.
  """
  n, k = len(axis), test_set.num_classes
  seed_accuracy = sweep.accuracy.reshape(-1, n, n)                              # [S, n, n]
  accuracy = seed_accuracy.mean(0)
  class_accuracy = sweep.class_accuracy.reshape(-1, n, n, k).mean(0)             # [n, n, k]
  normalised = sweep.normalised_accuracy.reshape(-1, n, n)
  if workdir_lib.is_writer():
    workdir_lib.write_npz_atomic(
        directory / "sweep.npz", xs=axis, ys=axis, centres=sweep.centres,
        seeds=np.array(seeds), correct=sweep.correct, totals=sweep.totals, accuracy=accuracy,
        accuracy_std=seed_accuracy.std(0),
        seed_accuracy=seed_accuracy, class_accuracy=class_accuracy,
        normalised_accuracy=normalised.mean(0), class_names=np.array(test_set.class_names),
        trained_centre=np.array(trained if trained else (-1, -1)))
    over = f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else ""
    plots.grid_heatmap(accuracy, axis, axis, str(directory / "heatmap.png"),
                       title=f"{title}: accuracy by item centre{over}", trained=trained,
                       chance=1 / k)
    plots.canvas_heatmap(accuracy, axis, axis, canvas_size,
                         str(directory / "heatmap_interpolated.png"),
                         title=f"{title}: accuracy by item centre{over}", trained=trained,
                         chance=1 / k)
    plots.class_heatmaps(class_accuracy, axis, axis, test_set.class_names,
                         str(directory / "heatmap_per_class.png"),
                         title=f"{title}: accuracy per class{over}", trained=trained)
  record = {"grid": [n, n], "test_items": int(sweep.totals.sum()),
            "num_classes": k, "chance": 1 / k,
            "trained_centre": list(trained) if trained else None}
  figures = {"mean_accuracy": seed_accuracy.mean((1, 2)),
             "mean_normalised_accuracy": normalised.mean((1, 2))}
  if trained is not None and trained[1] in axis:
    row = int(np.searchsorted(axis, trained[1]))
    record["accuracy_along_trained_row"] = {str(x): float(a) for x, a in zip(axis, accuracy[row])}
    if trained[0] in axis:
      figures["accuracy_at_trained_location"] = seed_accuracy[
          :, row, int(np.searchsorted(axis, trained[0]))]
  with warnings.catch_warnings():  # a class without test items has no accuracy: NaN
    warnings.simplefilter("ignore", RuntimeWarning)
    record["class_mean_accuracy"] = dict(zip(test_set.class_names,
                                             np.nanmean(class_accuracy, (0, 1)).tolist()))
  for name, values in figures.items():
    record[name] = float(values.mean())
    record[f"{name}_std"] = float(values.std())
    record[f"{name}_per_seed"] = values.tolist()
  return record
