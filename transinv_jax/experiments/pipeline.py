"""The staged pipeline: train each needed stage once (pretrain -> fine-tune), then run the tests.

config -> stages (items on the device, canvases made there, seeds trained side by side) -> tests
(shift sweep or cosine similarity per seed) -> tables and figures -> files:

  config.json                 the config as given (a rerun must match it)
  resolved_config.json        the flat values each stage and test runs with (spec.resolved)
  progress.json               which stage or test runs now, its step, steps/s and ETA
  <stage_dir>/<stage>-<key>/  one trained stage, reused by every test and fine-tune that needs it:
      stage.json                what determines it (data, model, train, parent's key, seeds)
      checkpoints/, metrics.jsonl   orbax checkpoints (a rerun resumes) and training records
      export/seed<s>/         variables.npz + config.json for each seed (numpy-readable)
      done.json               written last: the stage is finished once it exists
  tests/<test>/               sweep.npz and heatmaps, or similarity.npz; result.json written last
  results.csv, results.json   one row per test: per-seed figures, their mean and std
  figures/                    the experiment's figures (figures.py, by config.figures)
  summary.json                written last: the experiment is complete once it exists

``<stage_dir>`` is ``config.stage_dir`` or ``<workdir>/stages``; ``<key>`` hashes everything that
determines the stage, so stages can be shared between experiments (exp2 and exp5) safely.

Stage resolution (flat configs, keys, order, checks) is ``stages.py``; input preparation is
``data/inputs.py``; each test kind is a module of ``kinds/``, found by name in ``kinds.KINDS``.
"""

from collections.abc import Collection
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from transinv_jax import checkpoints, config_checks, finetune, kernel, locks, metric_writer
from transinv_jax import models, preemption, progress, sharding, train
from transinv_jax import workdir as workdir_lib
from transinv_jax.data import inputs, sources
from transinv_jax.experiments import kinds, preflight, reports, spec, stage_store, stages
from transinv_jax.experiments.kinds import TestContext, TrainedStage
from transinv_jax.models import pretrained


class TrainingDiverged(RuntimeError):
  """A stage's loss became NaN or infinite; its last good checkpoint is kept."""


class Pipeline:
  """Runs one experiment config in one workdir; every result is cached on disk."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path, mesh,
               on_busy_stage: str = "wait", on_missing_stage: str = "train"):
    self.config, self.workdir, self.mesh = config, workdir, mesh
    self.seeds = [config.seed + i for i in range(config.num_seeds)]
    # The stage folders (config.stage_dir or <workdir>/stages; local or gs://) and their locks.
    self.store = stage_store.StageStore(config, workdir, mesh, self.seeds, on_busy_stage,
                                        on_missing_stage)
    self.platform = jax.default_backend()
    self._stages: dict[str, TrainedStage] = {}
    self._items: dict[tuple, tuple[sources.ItemSet, train.Items]] = {}
    self._nets: dict[tuple, kernel.Inference] = {}  # see _net
    self.order = stages.stage_order(config)
    self.progress = {"stages_total": len(self.order), "tests_total": len(config.tests),
                     "stages_done": 0, "tests_done": 0}
    # What every test kind gets from this run (kinds.KINDS).
    self.context = TestContext(config=config, mesh=mesh, platform=self.platform,
                               seeds=self.seeds, items=self.items, net=self._net,
                               render=self._render)

  # -- bookkeeping

  def report(self, **fields) -> None:
    """Updates progress.json with ``fields``."""
    self.progress.update(fields)
    if workdir_lib.is_writer():
      workdir_lib.write_json_atomic(self.workdir / "progress.json", self.progress)

  def items(self, data: ml_collections.ConfigDict, split: str, max_items: int):
    """(host ItemSet, device Items) for a split, loaded and resized once per run."""
    key = (data.dataset, data.classes, data.source, split, max_items, data.item_size,
           data.val_items, data.labels, data.get("folder", ""), data.get("folder_size", 0))
    if key not in self._items:
      item_set = inputs.load_items(data, split, max_items)
      self._items[key] = item_set, inputs.to_device(item_set, data.item_size, self.mesh)
    return self._items[key]

  def _render(self, data, mean, std):
    return inputs.render_fn(data, mean, std, self.config.model.dtype, self.platform)

  # -- stages

  def stage(self, name: str) -> TrainedStage:
    """The stage's trained network: from the cache, or trained now (its parent first)."""
    if name in self._stages:
      return self._stages[name]
    result = self.store.load(name)
    if result is None:
      with self.store.training(name) as result:  # another run may finish it while this waits
        if result is None:
          entry = self.config.stages[name]
          parent = self.stage(entry.parent) if entry.parent else None
          directory = self.store.directory(name)
          try:
            result = self._train_stage(name, stages.stage_config(self.config, name), entry,
                                       directory, parent)
          except workdir_lib.DiskFull as e:  # its record or export: redone from a checkpoint
            raise e.keeping(checkpoints.kept(directory / "checkpoints")) from None
    self._stages[name] = result
    self.report(stages_done=self.progress["stages_done"] + 1)
    return result

  def _train_stage(self, name, flat, entry, directory: pathlib.Path,
                   parent: TrainedStage | None) -> TrainedStage:
    d, t = flat.data, flat.train
    train_set, train_items = self.items(d, "train", d.max_train_items)
    num_classes, imported = train_set.num_classes, None
    if stages.keeps_file_head(entry):  # the network as it is: the file's classes, not the items'
      num_classes, imported = stages.imported_network(
          flat.model.pretrained, flat.model, (1, d.canvas_size, d.canvas_size, d.channels),
          self.platform)
    model = models.build_model(flat.model, num_classes, self.platform)
    init_keys, data_keys = (jnp.stack(keys) for keys in
                            zip(*(jax.random.split(jax.random.key(s)) for s in self.seeds)))
    policy = stages.finetune_policy(self.config, name) if parent is not None else "all"
    state = train.create_train_state(model, init_keys, (d.canvas_size, d.canvas_size, d.channels),
                                     t.learning_rate, self.mesh,
                                     trainable=finetune.trainable(policy))
    if parent is not None:
      try:
        variables = finetune.transfer(parent.variables, state.variables)
      except ValueError as e:
        raise config_checks.ConfigError(f"stage {name} (parent {entry.parent}): {e}") from None
      state = state.replace(params=variables["params"],
                            batch_stats=variables.get("batch_stats", state.batch_stats))
    elif imported is not None:
      variables = jax.device_put(
          jax.tree.map(lambda v: np.stack([np.asarray(v)] * len(self.seeds)), imported),
          sharding.replicated(self.mesh))
      state = state.replace(params=variables["params"],
                            batch_stats=variables.get("batch_stats", state.batch_stats))
      logging.info("stage %s: the network of %s as it is (its %d outputs kept)", name,
                   flat.model.pretrained, num_classes)
    elif flat.model.pretrained:
      variables = pretrained.load_pretrained(flat.model.pretrained, flat.model.name,
                                             jax.device_get(state.variables))
      variables = jax.device_put(variables, sharding.replicated(self.mesh))
      state = state.replace(params=variables["params"],
                            batch_stats=variables.get("batch_stats", state.batch_stats))
      logging.info("stage %s: starting from the pretrained weights in %s", name,
                   flat.model.pretrained)
    mean, std = inputs.canvas_normalisation(d, train_items.images)
    if workdir_lib.is_writer():
      directory.mkdir(parents=True, exist_ok=True)
      workdir_lib.write_json_atomic(directory / "stage.json", {
          "name": name, "key": directory.name, "parent": entry.parent, "finetune": policy,
          "untrained": entry.untrained, "config": stages.as_dict(flat)})
    index = self.order.index(name) + 1
    if entry.untrained:
      result = train.TrainResult(state=state, stop_reason=["untrained"] * len(self.seeds),
                                 steps=[0] * len(self.seeds),
                                 final_train_accuracy=[None] * len(self.seeds),
                                 seconds=0.0, block_mean=[None] * len(self.seeds))
    else:
      result = self._run_training(name, index, flat, state, train_items, data_keys,
                                  train_set.num_classes, mean, std, directory)
    reasons, steps = result.stop_reason, result.steps
    accuracy = train.last_accuracies(result.final_train_accuracy, directory / "metrics.jsonl")
    for i, seed in enumerate(self.seeds):
      checkpoints.export_variables(directory / "export" / f"seed{seed}",
                                   kernel.seed_variables(result.state.variables, i),
                                   stages.as_dict(flat))
    summary = {"stage": name, "key": directory.name, "parent": entry.parent,
               "dataset": d.dataset, "train_location": d.train_location, "seeds": self.seeds,
               "stop_reason": reasons, "steps": steps, "final_train_accuracy": accuracy,
               # The stop rule's block mean at the stop (train.StopRule), per seed.
               "stop_block_mean": result.block_mean,
               "stop_rule": {"accuracy": t.stop_accuracy, "window": t.stop_window,
                             "block": t.stop_block, "max_steps": t.max_steps},
               "train_seconds": result.seconds, "num_classes": num_classes,
               # The file's own classes have no names here (ImageNet's 1000 for VGG16).
               "class_names": list(train_set.class_names) if imported is None else [],
               "mean": np.asarray(mean).tolist(), "std": np.asarray(std).tolist()}
    if workdir_lib.is_writer():
      workdir_lib.write_json_atomic(directory / "done.json", summary)
    return TrainedStage(result.state.variables, np.asarray(mean), np.asarray(std),
                        num_classes, summary)

  def _run_training(self, name, index, flat, state, train_items, data_keys, num_classes,
                    mean, std, directory) -> train.TrainResult:
    d, t = flat.data, flat.train
    ckpts = checkpoints.Checkpoints(directory / "checkpoints")
    restored = ckpts.restore_latest(state)
    start_step = 0
    if restored is not None:
      state = restored
      start_step = int(np.max(jax.device_get(state.step)))
      logging.info("stage %s: resuming from the checkpoint of step %d", name, start_step)
    elif ckpts.all_steps():
      logging.warning("stage %s: no usable checkpoint in %s; training from the start", name,
                      ckpts.directory)
    # Records written after the restored step by an interrupted run are dropped: the resumed run
    # writes them again (the same values: every step is a function of the seed and its number).
    try:
      writer = workdir_lib.MetricsWriter(directory / "metrics.jsonl", keep_until=start_step)
      board = metric_writer.create(directory / "tensorboard", active=workdir_lib.is_writer())
    except workdir_lib.DiskFull as e:
      ckpts.close(quiet=True)
      raise e.keeping(ckpts.kept()) from None
    bar = progress.Bar()  # drawn only where stderr is a terminal
    total = len(self.order)

    def on_metrics(record):
      writer.write(**record)
      step = int(np.max(record["step"]))
      board.write_scalars(step, {k: float(np.nanmean(np.asarray(record[k], np.float64)))
                                 for k in ("loss", "train_accuracy", "steps_per_sec")})
      # Stages still to train after this one, each at most max_steps: an upper bound.
      later = sum(1 for s in self.order[index:] if s not in self._stages)
      experiment_eta = (record["eta_seconds"] +
                        later * t.max_steps / max(record["steps_per_sec"], 1e-9))
      status = progress.training_status(step, t.max_steps, record["steps_per_sec"],
                                        record["eta_seconds"], experiment_eta)
      shown = {k: np.round(v, 3).tolist() for k, v in record.items()}
      bar.clear()  # the log line replaces the bar, which is drawn again below it
      # The one log line of this record (the event writer logs nothing).
      logging.info("[stage %d/%d %s] %s; per seed: step %s loss %s train_accuracy %s "
                   "block_mean %s streak %s", index, total, name, status, shown["step"],
                   shown["loss"], shown["train_accuracy"], shown["block_mean"], shown["streak"])
      bar.show(step / max(t.max_steps, 1),
               f"{step}/{t.max_steps} <={progress.format_duration(record['eta_seconds'])} "
               f"(all <={progress.format_duration(experiment_eta)}) stage {index}/{total} {name}")
      self.report(now=f"stage {name}", stage_index=index, step=record["step"],
                  max_steps=t.max_steps, percent_of_max_steps=progress.percent(step, t.max_steps),
                  steps_per_sec=record["steps_per_sec"], stage_eta_seconds=record["eta_seconds"],
                  experiment_eta_seconds_at_most=experiment_eta,
                  stage_eta=progress.format_duration(record["eta_seconds"]),
                  experiment_eta_at_most=progress.format_duration(experiment_eta))

    logging.info("[stage %d/%d %s] training on %s (%s), %d seed(s)", index, total, name,
                 d.dataset, d.train_location, len(self.seeds))
    finished = False
    try:
      result = train.train_loop(
          state, train_items, data_keys,
          stop=train.StopRule(t.stop_accuracy, t.stop_window, t.max_steps, t.stop_block),
          log_every=t.log_every, scan_steps=t.scan_steps, on_metrics=on_metrics,
          on_checkpoint=ckpts.save, checkpoint_every=t.checkpoint_every,
          seeds_mode=self.config.get("seeds_mode", "sequential"),
          should_stop=preemption.requested, render=self._render(d, mean, std),
          sampler=inputs.make_sampler(d, num_classes), batch_size=t.batch_size, mesh=self.mesh)
      finished = True
    except train.StopRequested as e:
      raise preemption.Preempted(f"stage {name}, checkpointed at step {e.step}") from None
    except train.Diverged as e:
      kept = ckpts.all_steps()
      raise TrainingDiverged(
          f"stage {name}: {e}; training stopped there. The last good checkpoint "
          f"({f'step {kept[-1]}' if kept else 'none yet'}) is kept in {ckpts.directory}. Lower "
          f"config.train.learning_rate (now {t.learning_rate}) or check the data; a changed "
          "config trains the stage afresh in a new folder") from None
    except workdir_lib.DiskFull as e:  # metrics, events or a checkpoint
      raise e.keeping(ckpts.kept()) from None
    finally:
      bar.clear()
      board.close()
      try:
        ckpts.close(quiet=not finished)  # waits for the last save's write and seal
      except workdir_lib.DiskFull as e:
        raise e.keeping(ckpts.kept()) from None
    return result

  # -- tests

  def test(self, name: str) -> dict:
    """A test's result record (from ``tests/<name>/result.json`` when it ran before)."""
    directory = self.workdir / "tests" / name
    done = directory / "result.json"
    record = workdir_lib.read_json(done, f"test {name}'s result")
    if record is not None:
      return record
    if preemption.requested():
      raise preemption.Preempted(f"the tests, before test {name}")
    entry, flat = self.config.tests[name], stages.test_config(self.config, name)
    trained = self.stage(entry.stage)
    self.report(now=f"test {name}")
    logging.info("[test %d/%d %s] %s of stage %s on %s", self.progress["tests_done"] + 1,
                 self.progress["tests_total"], name, entry.kind, entry.stage, flat.data.dataset)
    if workdir_lib.is_writer():
      directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    record = kinds.KINDS[entry.kind](self.context, name, entry, flat, trained, directory)
    record.update({"test": name, "kind": entry.kind, "stage": entry.stage,
                   "stage_key": trained.summary["key"], "dataset": flat.data.dataset,
                   **(entry.labels.to_dict() if entry.labels else {}),
                   "seeds": self.seeds, "stage_steps": trained.summary["steps"],
                   "stage_stop_reason": trained.summary["stop_reason"],
                   "seconds": time.perf_counter() - start})
    if workdir_lib.is_writer():
      workdir_lib.write_json_atomic(done, record)
    self.report(tests_done=self.progress["tests_done"] + 1)
    return record

  def _net(self, flat, num_classes: int) -> kernel.Inference:
    """The network of ``flat.model`` in inference mode, one object per architecture and run: the
    compiled evaluation kernels are cached on it, so every test and seed reuses them."""
    key = (models.architecture_key(flat.model), num_classes, self.platform)
    if key not in self._nets:
      self._nets[key] = kernel.Inference(
          models.build_model(flat.model, num_classes, self.platform))
    return self._nets[key]

  # -- the whole run

  def run(self) -> dict:
    records = [self.test(name) for name in self.config.tests]
    self.report(now="report")
    summary = reports.write(self.config, self.workdir, records)
    summary.update({"experiment": self.config.experiment, "tests": len(records),
                    "stages": {n: stages.stage_key(self.config, n) for n in self.order},
                    "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"})
    if "stand_in" in self.config:  # spec.resolve_stand_in: what stood in for ImageNet, if any
      summary["stand_in"] = self.config.stand_in
    return summary


def run(config: ml_collections.ConfigDict, workdir: str, on_config_change: str = "refuse",
        user_set: Collection[str] = (), on_busy_stage: str = "wait",
        on_missing_stage: str = "train") -> dict:
  """Runs (or resumes, or finds finished) the experiment that ``config`` describes.

  Every check (each stage's and test's config, data files, pretrained weights, an existing
  workdir's config, a run already working in ``workdir``) runs before any file is written.
  The run holds ``workdir``'s lock to its end (``locks.py``), and each stage folder's while it
  trains that stage (``stage_store.py``).

  Args:
    config: an experiment config (see spec.py and configs/).
    workdir: the run directory.
    on_config_change: when ``workdir`` holds a run of another config: ``refuse``, ``resume``
      (run the stored config) or ``restart`` (see ``workdir.py``).
    user_set: the keys set on the command line; the device-split sizes among the others are
      rounded to the devices (``fit_to_devices``).
    on_busy_stage: when another run trains a stage this one needs: ``wait`` for it and use its
      result, or ``refuse``.
    on_missing_stage: a stage not finished in the stage cache: ``train`` it (into the run's own
      folder when the cache is read-only), or ``refuse`` before any work.

  Returns:
    The experiment's summary (also in ``workdir/summary.json``).

  Raises:
    locks.Held: another live run holds ``workdir`` (or, with ``refuse``, a needed stage).
    workdir.DiskFull: no space for a write; the message says what is kept. A rerun resumes.
  """
  # A gs:// (non-local) workdir is proven writable here, before any other work.
  workdir = workdir_lib.check_usable(workdir)
  locks.check_free(workdir)  # a second run on a live workdir stops before loading anything
  config = spec.resolve_stand_in(config)  # --config.imagenet_folder, or the stand-in, said so
  chosen = stages.workdir_config(config, workdir, on_config_change)
  if chosen is not config:  # the stored run's config: no command-line keys apply
    config, user_set = chosen, ()
  if config.stage_dir:
    workdir_lib.check_usable(config.stage_dir, "--config.stage_dir")
  mesh = sharding.make_mesh()
  # The workdir keeps the config as given; what runs fits the devices at hand.
  fitted = stages.fit_to_devices(config, mesh.size, user_set)
  stages.check(fitted, mesh.size)
  pipeline = Pipeline(fitted, workdir, mesh, on_busy_stage, on_missing_stage)
  preflight.check_inputs(pipeline)
  pipeline.store.check_available(list(fitted.tests))
  with locks.holding(workdir, f"run {config.experiment} in {workdir}"):
    try:
      return _run_locked(config, fitted, workdir, pipeline)
    except workdir_lib.DiskFull as e:  # tests, tables, figures, summary: nothing to redo
      raise e.keeping("every finished stage and test is kept") from None


def _run_locked(config, fitted, workdir, pipeline: Pipeline) -> dict:
  finished = workdir_lib.prepare(stages.as_dict(config), workdir)
  if finished is not None:
    logging.info("%s already holds a finished run; nothing to do", workdir)
    return finished
  if workdir_lib.is_writer():  # an interrupted write's temporary files (stages: their own lock)
    workdir_lib.remove_leftovers(workdir, skip=("stages",))
  # What each stage and test runs with (config.json keeps the config as given, mostly None in
  # the stage and test sections); for reading, never compared on a rerun.
  resolved = spec.resolved(fitted)
  logging.info("resolved config:\n%s", json.dumps(resolved, indent=2))
  if workdir_lib.is_writer():
    workdir_lib.write_json_atomic(workdir / "resolved_config.json", resolved)
  summary = pipeline.run()
  if workdir_lib.is_writer():
    workdir_lib.write_json_atomic(workdir / workdir_lib.SUMMARY, summary)
  pipeline.report(now="finished")
  logging.info("finished: %s", json.dumps(summary)[:2000])
  return summary
