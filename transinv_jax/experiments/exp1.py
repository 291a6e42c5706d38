"""exp1 of Biscione & Bowers: train at one location, then sweep the grid of test locations.

config -> items (host, then device) -> train (canvases on the device) -> shift sweep -> files:

  config.json           the resolved config (a rerun must match it)
  metrics.jsonl         one record per compiled training call
  checkpoints/          orbax checkpoints; a rerun resumes from the latest
  sweep.npz             counts and accuracies per tested centre, class and seed
  heatmap.png           the raw grid; heatmap_interpolated.png, over the canvas (figure 1C);
                        heatmap_per_class.png, one map per class
  export/               variables.npz + config.json, loadable without orbax (export/seed{s}/
                        for each seed when config.num_seeds > 1)
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
                           mesh, seeds: bool = False) -> train.TrainState:
  """Replaces the fresh params with imported ones (the last layer stays fresh: new classes)."""
  variables = pretrained.load_pretrained(config.pretrained, config.name,
                                         jax.device_get(state.variables), seeds=seeds)
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
  # Repetitions: seeds seed, seed + 1, ...; several are trained together in one program.
  seeds = [config.seed + i for i in range(config.num_seeds)]
  multi = len(seeds) > 1
  init_key, data_key = (jnp.stack(keys) if multi else keys[0] for keys in
                        zip(*(jax.random.split(jax.random.key(s)) for s in seeds)))
  state = train.create_train_state(model, init_key, (d.canvas_size, d.canvas_size, d.channels),
                                   config.train.learning_rate, mesh)
  if config.model.pretrained:  # read (and fail on a bad file) before the workdir is touched
    state = _start_from_pretrained(state, config.model, mesh, seeds=multi)
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
    shown = {k: np.round(v, 3).tolist() for k, v in record.items()}
    logging.info("step %(step)s loss %(loss)s train_accuracy %(train_accuracy)s streak "
                 "%(streak)s (%(steps_per_sec)s steps/s, at most %(eta_seconds)s s to go)", shown)

  t = config.train
  sampler = locations.make_sampler(d.train_location, d.canvas_size, d.item_size, d.fixed_centre)
  result = train.train_loop(
      state, train_items, data_key,
      stop=train.StopRule(t.stop_accuracy, t.stop_window, t.max_steps),
      log_every=t.log_every, scan_steps=t.scan_steps, on_metrics=on_metrics,
      on_checkpoint=ckpts.save, checkpoint_every=t.checkpoint_every, seeds=multi,
      render=render, sampler=sampler, batch_size=t.batch_size, mesh=mesh)
  ckpts.wait()
  ckpts.close()

  # Sweep every test item over the grid, for each seed.
  axis = test_axes(config)
  start = time.perf_counter()
  classify = lambda variables, x: model.apply(variables, x, train=False)[0]
  per_seed = ([jax.tree.map(lambda x, i=i: x[i], result.state.variables)
               for i in range(len(seeds))] if multi else [result.state.variables])
  sweeps = [evaluate.shift_sweep(
      variables, test_items, locations.grid_centres(axis, axis), classify=classify,
      render=render, num_classes=test_set.num_classes, mesh=mesh,
      items_per_batch=config.eval.items_per_batch,
      centres_per_chunk=config.eval.centres_per_chunk) for variables in per_seed]
  sweep_seconds = time.perf_counter() - start
  summary = write_results(config, workdir, result, sweeps, seeds, axis, test_set, sweep_seconds)
  for seed, variables in zip(seeds, per_seed):
    checkpoints.export_variables(workdir / "export" / (f"seed{seed}" if multi else ""),
                                 variables, _config_json(config))
  if workdir_lib.is_writer():
    workdir_lib.write_json_atomic(workdir / workdir_lib.SUMMARY, summary)
  logging.info("finished: %s", json.dumps(summary))
  return summary


def write_results(config, workdir, result: train.TrainResult,
                  sweeps: list[evaluate.SweepResult], seeds: list[int], axis: np.ndarray,
                  test_set: sources.ItemSet, sweep_seconds: float) -> dict:
  """Writes sweep.npz and the heatmaps (of the mean over seeds); returns the summary record."""
  n, k = len(axis), test_set.num_classes
  seed_accuracy = np.stack([s.accuracy.reshape(n, n) for s in sweeps])          # [S, n, n]
  accuracy = seed_accuracy.mean(0)
  class_accuracy = np.mean([s.class_accuracy.reshape(n, n, k) for s in sweeps], axis=0)
  normalised = np.stack([s.normalised_accuracy.reshape(n, n) for s in sweeps])
  trained = trained_centre(config)
  if workdir_lib.is_writer():
    workdir_lib.write_npz_atomic(
        workdir / "sweep.npz", xs=axis, ys=axis, centres=sweeps[0].centres, seeds=np.array(seeds),
        correct=np.stack([s.correct for s in sweeps]), totals=sweeps[0].totals,
        accuracy=accuracy, accuracy_std=seed_accuracy.std(0), seed_accuracy=seed_accuracy,
        class_accuracy=class_accuracy, normalised_accuracy=normalised.mean(0),
        class_names=np.array(test_set.class_names),
        trained_centre=np.array(trained if trained else (-1, -1)))
    over = f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else ""
    title = f"exp1 {config.data.dataset}: accuracy by item centre{over}"
    plots.grid_heatmap(accuracy, axis, axis, str(workdir / "heatmap.png"), title=title,
                       trained=trained, chance=1 / k)
    plots.canvas_heatmap(accuracy, axis, axis, config.data.canvas_size,
                         str(workdir / "heatmap_interpolated.png"), title=title,
                         trained=trained, chance=1 / k)
    plots.class_heatmaps(class_accuracy, axis, axis, test_set.class_names,
                         str(workdir / "heatmap_per_class.png"),
                         title=f"exp1 {config.data.dataset}: accuracy per class{over}",
                         trained=trained)
  summary = {
      "experiment": config.experiment, "dataset": config.data.dataset,
      "seeds": seeds if len(seeds) > 1 else seeds[0],
      "stop_reason": result.stop_reason, "steps": result.steps,
      "final_train_accuracy": result.final_train_accuracy,
      "train_seconds": result.seconds, "sweep_seconds": sweep_seconds,
      "test_items": int(sweeps[0].totals.sum()), "grid": [n, n],
      "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
  }
  # Each figure: the mean over seeds, its std across seeds (0 for one seed), and the per-seed list.
  figures = {"mean_accuracy": seed_accuracy.mean((1, 2)),
             "mean_normalised_accuracy": normalised.mean((1, 2))}
  if trained is not None and trained[1] in axis:
    row = int(np.searchsorted(axis, trained[1]))
    summary["accuracy_along_trained_row"] = {
        str(x): float(a) for x, a in zip(axis, accuracy[row])}
    if trained[0] in axis:
      figures["accuracy_at_trained_location"] = seed_accuracy[
          :, row, int(np.searchsorted(axis, trained[0]))]
  for name, values in figures.items():
    summary[name] = float(values.mean())
    if len(seeds) > 1:
      summary[f"{name}_std"] = float(values.std())
      summary[f"{name}_per_seed"] = values.tolist()
  return summary
