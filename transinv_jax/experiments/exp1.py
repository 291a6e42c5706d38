"""exp1 of Biscione & Bowers: train at one location, then sweep the grid of test locations.

config -> items (host, then device) -> train (canvases on the device) -> shift sweep -> files:

  config.json           the resolved config (a rerun must match it)
  metrics.jsonl         one record per compiled training call
  checkpoints/          orbax checkpoints; a rerun resumes from the latest
  sweep.npz             counts and accuracies per tested centre and class
  heatmap.png           the raw grid; heatmap_interpolated.png, over the canvas (figure 1C);
                        heatmap_per_class.png, one map per class
  export/               variables.npz + config.json, loadable without orbax
  summary.json          written last: the run is complete once it exists
"""

import functools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from transinv_jax import checkpoints, config_checks, evaluate, models, plots, sharding, train
from transinv_jax import workdir as workdir_lib
from transinv_jax.data import canvas, locations, sources
from transinv_jax.models import pretrained


def _config_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def load_data(config: ml_collections.ConfigDict) -> tuple[sources.ItemSet, sources.ItemSet]:
  """The train and test items that ``config.data`` / ``config.eval`` name (host arrays)."""
  common = dict(source=config.data.source, data_dir=config.data.data_dir or None,
                download=config.data.tfds_download)
  train_set = sources.load_items(config.data.dataset, "train",
                                 max_items=config.data.max_train_items, **common)
  test_set = sources.load_items(config.data.dataset, "test", max_items=config.eval.max_items,
                                **common)
  return train_set, test_set


def to_device(item_set: sources.ItemSet, item_size: int, mesh) -> train.Items:
  """Resizes items on the device, once, and replicates them over the mesh."""
  images = canvas.resize_items(item_set.images, item_size)
  return jax.device_put(train.Items(images=images, labels=jnp.asarray(item_set.labels, jnp.int32)),
                        sharding.replicated(mesh))


def test_axes(config: ml_collections.ConfigDict) -> np.ndarray:
  """The tested centres along each axis (the canvas is square, so x and y share them)."""
  d = config.data
  if config.eval.grid == "dense":
    return locations.dense_axis(d.canvas_size, d.item_size, config.eval.dense_stride)
  return locations.paper_axis(d.canvas_size, d.item_size, config.eval.grid_step)


def trained_centre(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  d = config.data
  if d.train_location == "leftmost_centred":
    return locations.leftmost_centred_centre(d.canvas_size, d.item_size)
  if d.train_location == "fixed":
    return tuple(int(c) for c in d.fixed_centre)
  return None


def _prepare_workdir(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict | None:
  """Creates the workdir, or checks that an existing one holds this config.

  Returns:
    The stored summary if this exact run already finished, else None.
  """
  stored_path = workdir / "config.json"
  current = _config_json(config)
  if stored_path.exists():
    stored = json.loads(stored_path.read_text())
    if stored != current:
      changed = sorted(_diff(stored, current))
      raise config_checks.ConfigError(
          f"--workdir={workdir} holds a run with a different config (changed: "
          f"{', '.join(changed)}); use a new --workdir, or delete that one to start over")
    summary = workdir / workdir_lib.SUMMARY
    if summary.exists():
      return json.loads(summary.read_text())
    logging.info("resuming the run in %s", workdir)
  elif workdir_lib.is_writer():
    workdir.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_json_atomic(stored_path, current)
  return None


def _diff(a: Any, b: Any, prefix: str = "config") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    return [k for key in sorted(set(a) | set(b))
            for k in _diff(a.get(key), b.get(key), f"{prefix}.{key}")]
  return [] if a == b else [prefix]


def _start_from_pretrained(state: train.TrainState, config: ml_collections.ConfigDict,
                           mesh) -> train.TrainState:
  """Replaces the fresh params with imported ones (the last layer stays fresh: new classes)."""
  variables = pretrained.load_pretrained(config.pretrained, config.name, state.variables)
  variables = jax.device_put(variables, sharding.replicated(mesh))
  logging.info("starting from the pretrained weights in %s", config.pretrained)
  return state.replace(params=variables["params"],
                       batch_stats=variables.get("batch_stats", state.batch_stats))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains at one location and sweeps the test grid; writes everything to ``workdir``.

  Every check (config values, data files, pretrained weights, an existing workdir's config) runs
  before any file is written.

  Args:
    config: an exp1 config (see configs/exp1.py).
    workdir: the run directory; a rerun with the same config resumes (or returns if finished).

  Returns:
    The run's summary (also in ``workdir/summary.json``).
  """
  mesh = sharding.make_mesh()
  config_checks.check_config(config, mesh.size)
  train_set, test_set = load_data(config)
  d, platform = config.data, jax.default_backend()
  model = models.build_model(config.model, train_set.num_classes, platform)
  init_key, data_key = jax.random.split(jax.random.key(config.seed))
  state = train.create_train_state(model, init_key, (d.canvas_size, d.canvas_size, d.channels),
                                   config.train.learning_rate, mesh)
  if config.model.pretrained:  # read (and fail on a bad file) before the workdir is touched
    state = _start_from_pretrained(state, config.model, mesh)
  workdir = pathlib.Path(workdir)
  finished = _prepare_workdir(config, workdir)
  if finished is not None:
    logging.info("%s already holds a finished run; nothing to do", workdir)
    return finished

  train_items = to_device(train_set, d.item_size, mesh)
  test_items = to_device(test_set, d.item_size, mesh)
  mean, std = canvas.canvas_stats(train_items.images, d.canvas_size, d.channels)
  render = functools.partial(canvas.render, canvas_size=d.canvas_size, mean=mean, std=std,
                             channels=d.channels,
                             dtype=models.compute_dtype(config.model.dtype, platform))

  # Train (or resume, or find training already finished in the latest checkpoint).
  ckpts = checkpoints.Checkpoints(workdir / "checkpoints")
  restored = ckpts.restore_latest(state)
  if restored is not None:
    state = restored
    logging.info("restored step %d from %s", int(jax.device_get(state.step)), workdir)
  writer = workdir_lib.MetricsWriter(workdir / "metrics.jsonl")

  def on_metrics(record):
    writer.write(**record)
    logging.info("step %(step)d loss %(loss).4f train_accuracy %(train_accuracy).3f "
                 "streak %(streak)d (%(steps_per_sec).1f steps/s, at most %(eta_seconds).0f s "
                 "to go)", record)

  t = config.train
  sampler = locations.make_sampler(d.train_location, d.canvas_size, d.item_size, d.fixed_centre)
  result = train.train_loop(
      state, train_items, data_key,
      stop=train.StopRule(t.stop_accuracy, t.stop_window, t.max_steps),
      log_every=t.log_every, scan_steps=t.scan_steps, on_metrics=on_metrics,
      on_checkpoint=ckpts.save, checkpoint_every=t.checkpoint_every,
      render=render, sampler=sampler, batch_size=t.batch_size, mesh=mesh)
  ckpts.wait()
  ckpts.close()

  # Sweep every test item over the grid.
  axis = test_axes(config)
  start = time.perf_counter()
  classify = lambda variables, x: model.apply(variables, x, train=False)[0]
  sweep = evaluate.shift_sweep(
      result.state.variables, test_items, locations.grid_centres(axis, axis), classify=classify,
      render=render, num_classes=test_set.num_classes, mesh=mesh,
      items_per_batch=config.eval.items_per_batch,
      centres_per_chunk=config.eval.centres_per_chunk)
  sweep_seconds = time.perf_counter() - start
  summary = write_results(config, workdir, result, sweep, axis, test_set, sweep_seconds)
  checkpoints.export_variables(workdir / "export", result.state.variables, _config_json(config))
  if workdir_lib.is_writer():
    workdir_lib.write_json_atomic(workdir / workdir_lib.SUMMARY, summary)
  logging.info("finished: %s", json.dumps(summary))
  return summary


def write_results(config, workdir, result: train.TrainResult, sweep: evaluate.SweepResult,
                  axis: np.ndarray, test_set: sources.ItemSet, sweep_seconds: float) -> dict:
  """Writes sweep.npz and the heatmaps; returns the summary record."""
  n, k = len(axis), test_set.num_classes
  accuracy = sweep.accuracy.reshape(n, n)
  trained = trained_centre(config)
  if workdir_lib.is_writer():
    workdir_lib.write_npz_atomic(
        workdir / "sweep.npz", xs=axis, ys=axis, centres=sweep.centres, correct=sweep.correct,
        totals=sweep.totals, accuracy=accuracy,
        class_accuracy=sweep.class_accuracy.reshape(n, n, k),
        normalised_accuracy=sweep.normalised_accuracy.reshape(n, n),
        class_names=np.array(test_set.class_names),
        trained_centre=np.array(trained if trained else (-1, -1)))
    title = f"exp1 {config.data.dataset}: accuracy by item centre"
    plots.grid_heatmap(accuracy, axis, axis, str(workdir / "heatmap.png"), title=title,
                       trained=trained, chance=1 / k)
    plots.canvas_heatmap(accuracy, axis, axis, config.data.canvas_size,
                         str(workdir / "heatmap_interpolated.png"), title=title,
                         trained=trained, chance=1 / k)
    plots.class_heatmaps(sweep.class_accuracy.reshape(n, n, k), axis, axis,
                         test_set.class_names, str(workdir / "heatmap_per_class.png"),
                         title=f"exp1 {config.data.dataset}: accuracy per class", trained=trained)
  summary = {
      "experiment": config.experiment, "dataset": config.data.dataset,
      "stop_reason": result.stop_reason, "steps": result.steps,
      "final_train_accuracy": result.final_train_accuracy,
      "train_seconds": result.seconds, "sweep_seconds": sweep_seconds,
      "test_items": int(sweep.totals.sum()), "grid": [n, n],
      "mean_accuracy": float(accuracy.mean()),
      "mean_normalised_accuracy": float(sweep.normalised_accuracy.mean()),
      "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
  }
  if trained is not None and trained[1] in axis:
    row = int(np.searchsorted(axis, trained[1]))
    summary["accuracy_along_trained_row"] = {
        str(x): float(a) for x, a in zip(axis, accuracy[row])}
    if trained[0] in axis:
      summary["accuracy_at_trained_location"] = float(
          accuracy[row, int(np.searchsorted(axis, trained[0]))])
  return summary
