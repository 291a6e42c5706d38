"""The staged pipeline: train each needed stage once (pretrain -> fine-tune), then run the tests.

config -> stages (items on the device, canvases made there, seeds trained side by side) -> tests
(shift sweep or cosine similarity per seed) -> tables and figures -> files:

  config.json                 the resolved config (a rerun must match it)
  progress.json               which stage or test runs now, its step, steps/s and ETA
  <stage_dir>/<stage>-<key>/  one trained stage, reused by every test and fine-tune that needs it:
      stage.json                what determines it (data, model, train, parent's key, seeds)
      checkpoints/, metrics.jsonl   orbax checkpoints (a rerun resumes) and training records
      export/seed<s>/         variables.npz + config.json for each seed (numpy-readable)
      done.json               written last: the stage is finished once it exists
  tests/<test>/               sweep.npz and heatmaps, or similarity.npz; result.json written last
  results.csv, results.json   one row per test: per-seed figures, their mean and std
  figures/                    the experiment's figures (reports.py)
  summary.json                written last: the experiment is complete once it exists

``<stage_dir>`` is ``config.stage_dir`` or ``<workdir>/stages``; ``<key>`` hashes everything that
determines the stage, so stages can be shared between experiments (exp2 and exp5) safely.
"""

from collections.abc import Collection
import copy
import dataclasses
import functools
import hashlib
import json
import pathlib
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from transinv_jax import checkpoints, config_checks, evaluate, finetune, kernel, metric_writer
from transinv_jax import models, plots, preemption, progress, sharding, similarity, train
from transinv_jax import workdir as workdir_lib
from transinv_jax.data import canvas, locations, sources
from transinv_jax.experiments import diagnostics, reports, spec
from transinv_jax.models import pretrained


class TrainingDiverged(RuntimeError):
  """A stage's loss became NaN or infinite; its last good checkpoint is kept."""


# Keys that change how a stage is run, not what it computes: left out of its cache key.
_RUN_ONLY = {("data", "data_dir"), ("data", "mirror"), ("data", "tfds_download"),
             ("train", "log_every"), ("train", "scan_steps"), ("train", "checkpoint_every")}


def _as_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def stage_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A stage's flat config: the shared sections with the stage's overrides applied."""
  entry = config.stages[name]
  flat = ml_collections.ConfigDict({
      "seed": config.seed, "num_seeds": config.num_seeds,
      "data": copy.deepcopy(config.data.to_dict()), "model": copy.deepcopy(config.model.to_dict()),
      "train": copy.deepcopy(config.train.to_dict()), "eval": copy.deepcopy(config.eval.to_dict())})
  for section in ("data", "model", "train"):
    for key, value in entry[section].items():
      if value is not None:  # None: inherit the shared section's value
        flat[section][key] = value
  if entry.imagenet:
    flat.model.pretrained = config.imagenet_weights
  return flat


def test_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A test's flat config: its stage's, with the test's data overrides."""
  entry = config.tests[name]
  flat = stage_config(config, entry.stage)
  for key, value in entry.data.items():
    if value is not None:
      flat.data[key] = value
  return flat


def stage_key(config: ml_collections.ConfigDict, name: str) -> str:
  """``<name>-<hash>``: the hash covers the stage's data, model, training, seeds and parent."""
  entry, flat = config.stages[name], _as_dict(stage_config(config, name))
  identity = {"seed": flat["seed"], "num_seeds": flat["num_seeds"],
              "finetune": finetune_policy(config, name) if entry.parent else "", "untrained": entry.untrained,
              "parent": stage_key(config, entry.parent) if entry.parent else ""}
  for section in ("data", "model", "train"):
    identity[section] = {k: v for k, v in flat[section].items() if (section, k) not in _RUN_ONLY}
  if identity["data"].get("source") != "folder":  # so other sources' stages keep their keys
    for key in ("folder", "folder_size"):
      identity["data"].pop(key, None)
  if entry.untrained:
    identity.pop("train")
  if keeps_file_head(entry):  # not the earlier stages that put a fresh task head on the file
    identity["output_layer"] = "file"
  if identity["model"]["pretrained"]:  # the file's contents, not where it lies
    identity["model"]["pretrained"] = pathlib.Path(identity["model"]["pretrained"]).name
  digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
  return f"{name}-{digest}"


def finetune_policy(config: ml_collections.ConfigDict, name: str) -> str:
  """The stage's fine-tuning policy: its own, else ``config.finetune``."""
  return config.stages[name].finetune or config.finetune


def stage_order(config: ml_collections.ConfigDict) -> list[str]:
  """The stages the tests need, each after its parent."""
  order = []

  def visit(name, chain=()):
    if name in chain:
      raise config_checks.ConfigError(f"config.stages: {' -> '.join(chain + (name,))} is a cycle")
    if name not in config.stages:
      raise config_checks.ConfigError(
          f"{chain[-1] if chain else 'a test'} needs stage {name!r}, which config.stages does "
          f"not define; defined: {', '.join(config.stages) or 'none'}")
    parent = config.stages[name].parent
    if parent:
      visit(parent, chain + (name,))
    if name not in order:
      order.append(name)

  for test_name in config.tests:
    visit(config.tests[test_name].stage)
  return order


def check(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Checks the whole pipeline before any file is written: every stage and test config."""
  _require = config_checks.require
  _require(len(config.tests) > 0, "config.tests is empty: nothing to run")
  _require(config.get("seeds_mode", "sequential") in train.SEEDS_MODES,
           f"config.seeds_mode={config.get('seeds_mode')!r}: use one of "
           f"{', '.join(train.SEEDS_MODES)} (sequential is the fast one on GPU and TPU)")
  if config.data.dataset:
    _require(config.data.dataset in sources.DATASETS,
             f"config.data.dataset={config.data.dataset!r} is not a known dataset; use one of "
             f"{', '.join(sources.DATASETS)}")
    per_stage = sorted({config.stages[n].data.get("dataset") for n in stage_order(config)} -
                       {None, config.data.dataset})
    _require(not per_stage,
             f"config.data.dataset={config.data.dataset!r} has no effect: this experiment sets "
             f"the dataset of each stage ({', '.join(per_stage)}); select cells with the config "
             "argument instead, e.g. configs/exp1.py:kmnist,vanilla")
  for name in stage_order(config):
    entry = config.stages[name]
    _require(finetune_policy(config, name) in spec.FINETUNE_POLICIES,
             f"config.stages.{name}.finetune or config.finetune="
             f"{finetune_policy(config, name)!r}: use one of "
             f"{', '.join(spec.FINETUNE_POLICIES)}")
    if entry.imagenet:
      _require(bool(config.imagenet_weights),
               f"stage {name} starts from ImageNet weights, but config.imagenet_weights is empty: "
               "pass --config.imagenet_weights=/path/to/vgg16-397923af.pth (torchvision's "
               "ImageNet VGG16), or select cells without the ImageNet network (see the config's "
               "docstring)")
    _require(not (entry.parent and entry.imagenet),
             f"config.stages.{name}: a stage starts from a parent or from ImageNet, not both")
    try:
      config_checks.check_config(stage_config(config, name), num_devices)
    except config_checks.ConfigError as e:
      raise config_checks.ConfigError(f"stage {name}: {e}") from None
  for name, entry in config.tests.items():
    _require(entry.kind in spec.TEST_KINDS,
             f"config.tests.{name}.kind={entry.kind!r}: use one of {', '.join(spec.TEST_KINDS)}")
    _require(_split(entry) in spec.SPLITS,
             f"config.tests.{name}.split={entry.get('split')!r}: use one of "
             f"{', '.join(spec.SPLITS)}")
    flat = test_config(config, name)
    if entry.kind == "invariance":
      try:
        config_checks.check_invariance_eval(flat)
      except config_checks.ConfigError as e:
        raise config_checks.ConfigError(f"test {name}: {e}") from None
    _require(flat.data.dataset in sources.DATASETS,
             f"config.tests.{name}.data.dataset={flat.data.dataset!r}: use one of "
             f"{', '.join(sources.DATASETS)}")


# ---------------------------------------------------------------------------------------------
# Data


def load_items(data: ml_collections.ConfigDict, split: str, max_items: int) -> sources.ItemSet:
  """A split's items as ``data`` names them.

  In order: the first ``data.classes`` classes; ``"val"`` is the last ``data.val_items`` of the
  train file and ``"train"`` what comes before them (so the two never share an item); the first
  ``max_items``; then ``data.labels`` (``location_labels``).

  Args:
    data: a ``config.data`` section.
    split: ``"train"``, ``"val"`` or ``"test"``.
    max_items: keep the first N (0 = all).

  Returns:
    The items, labelled as the task needs.
  """
  file_split = "train" if split == "val" else split
  whole = bool(data.classes or data.get("val_items", 0))
  item_set = sources.load_items(
      data.dataset, file_split, source=data.source, data_dir=data.data_dir or None,
      max_items=0 if whole else max_items, download=data.tfds_download,
      folder=data.get("folder", ""), folder_size=data.get("folder_size", 0) or data.item_size,
      mirror=data.get("mirror", ""))
  images, labels = item_set.images, item_set.labels
  if data.classes:
    if data.classes > item_set.num_classes:
      raise config_checks.ConfigError(
          f"config.data.classes={data.classes}, but {data.dataset} has only "
          f"{item_set.num_classes} classes")
    keep = np.flatnonzero(labels < data.classes)
    images, labels = images[keep], labels[keep]
    item_set = dataclasses.replace(item_set, num_classes=data.classes,
                                   class_names=item_set.class_names[:data.classes])
  val = data.get("val_items", 0)
  if val and file_split == "train":
    config_checks.require(
        val < len(labels), f"config.data.val_items={val} leaves no training items: the "
        f"{data.dataset} train split has {len(labels)}; hold out fewer")
    part = slice(len(labels) - val, None) if split == "val" else slice(0, len(labels) - val)
    images, labels = images[part], labels[part]
  elif split == "val":
    raise config_checks.ConfigError(
        "a test of split 'val' needs config.data.val_items > 0 (items held out from the end of "
        "the train split)")
  if max_items:
    images, labels = images[:max_items], labels[:max_items]
  item_set = dataclasses.replace(item_set, images=images, labels=labels)
  return location_labels(item_set, data.get("labels", "class"), split)


def location_labels(item_set: sources.ItemSet, kind: str, split: str) -> sources.ItemSet:
  """Relabels items by where they go (Kayhan & van Gemert), for the ``"corners"`` sampler.

  Args:
    item_set: the items with their dataset classes.
    kind: ``"class"`` (unchanged), ``"location"`` (each item at one corner, half of them at each,
      by a fixed shuffle that depends only on the split: a fixed dataset, as Quadrant ImageNet)
      or ``"location_pairs"`` (every item twice, once at each corner: the rook patches).
    split: the split's name (seeds the fixed shuffle).

  Returns:
    The relabelled items: 2 classes, ``locations.CORNERS``.
  """
  if kind == "class":
    return item_set
  n = len(item_set.labels)
  if kind == "location":
    seed = int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], "little")
    order = np.random.default_rng(seed).permutation(n)
    labels, images = np.empty(n, np.int32), item_set.images
    labels[order] = np.arange(n) % 2
  elif kind == "location_pairs":
    images = np.concatenate([item_set.images, item_set.images])
    labels = np.repeat(np.arange(2, dtype=np.int32), n)
  else:
    raise config_checks.ConfigError(
        f"config.data.labels={kind!r}: use one of {', '.join(spec.LABEL_KINDS)}")
  return sources.ItemSet(images=images, labels=labels, num_classes=2,
                         class_names=locations.CORNERS)


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


def trained_centre(data: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """The one training location of a 1-location stage; None for any other sampler."""
  if data.train_location == "leftmost_centred":
    return locations.leftmost_centred_centre(data.canvas_size, data.item_size)
  if data.train_location == "fixed":
    return tuple(int(c) for c in data.fixed_centre)
  return None


def canvas_normalisation(data: ml_collections.ConfigDict,
                         images: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """The canvas mean and std a stage trains with: the authors' statistics of its training
  canvases, or none (0 and 1: black stays 0, the value that zero padding adds, as Kayhan & van
  Gemert's black templates need) when ``data.normalise`` is off."""
  if not data.get("normalise", True):
    return np.zeros(data.channels, np.float32), np.ones(data.channels, np.float32)
  return canvas.canvas_stats(images, data.canvas_size, data.channels)


def render_fn(data: ml_collections.ConfigDict, mean: np.ndarray, std: np.ndarray, dtype: str,
              platform: str) -> canvas.Renderer:
  """``(images, centres) -> model input`` on ``data``'s canvas with this normalisation."""
  return canvas.Renderer(data.canvas_size, mean, std, data.channels,
                         models.compute_dtype(dtype, platform))


def make_sampler(data: ml_collections.ConfigDict, num_classes: int) -> locations.Sampler:
  return locations.make_sampler(data.train_location, data.canvas_size, data.item_size,
                                data.fixed_centre, layout=data.layout, num_classes=num_classes,
                                fit=data.fit, border=data.border)


def keeps_file_head(entry: ml_collections.ConfigDict) -> bool:
  """Whether a stage is the ImageNet network measured as it is (``untrained`` + ``imagenet``):
  the file's own output layer (ImageNet's 1000 classes) is kept, not a fresh task head, so the
  tests that need a class take the network's own top-1 (``diagnostics.invariance_test``)."""
  return bool(entry.untrained and entry.imagenet)


def imported_network(path: str, model: ml_collections.ConfigDict,
                     input_shape: tuple[int, ...], platform: str) -> tuple[int, dict]:
  """A weights file's network as it is, with its own output layer: the untrained ImageNet stages
  and ``configs/diagnose.py`` on a weights file.

  Args:
    path: a torchvision ``.pth`` (or Keras VGG16 ``.h5``) file.
    model: ``config.model`` (name, padding, pooling, width 1).
    input_shape: ``(1, canvas, canvas, channels)``.
    platform: the JAX backend (the compute dtype).

  Returns:
    ``(num_classes, variables)``: the file's class count and its variables for
    ``models.build_model(model, num_classes)`` (one network, not stacked over seeds).

  Raises:
    pretrained.PretrainedError: the file is unreadable or does not fit ``model``.
    ValueError: the file has no output layer.
  """
  converted = pretrained.read_converted(path, model.name)
  num_classes = finetune.num_outputs(converted.get("params", {}))
  target = pretrained.abstract_target(models.build_model(model, num_classes, platform),
                                      input_shape)
  return num_classes, pretrained.adapt(converted, target)


# ---------------------------------------------------------------------------------------------
# Stages


@dataclasses.dataclass
class TrainedStage:
  """A finished stage.

  Attributes:
    variables: the network's variables, stacked over seeds when there are several.
    mean, std: the canvas normalisation the network was trained with.
    num_classes: its output size.
    summary: ``done.json``: steps, stop reasons and final training accuracy per seed.
  """
  variables: Any
  mean: np.ndarray
  std: np.ndarray
  num_classes: int
  summary: dict


class Pipeline:
  """Runs one experiment config in one workdir; every result is cached on disk."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path, mesh):
    self.config, self.workdir, self.mesh = config, workdir, mesh
    # Local or gs:// (epath): run() has checked that a non-local one can be written.
    self.stage_dir = epath.Path(config.stage_dir) if config.stage_dir else workdir / "stages"
    self.seeds = [config.seed + i for i in range(config.num_seeds)]
    self.platform = jax.default_backend()
    self._stages: dict[str, TrainedStage] = {}
    self._items: dict[tuple, tuple[sources.ItemSet, train.Items]] = {}
    self._nets: dict[tuple, kernel.Inference] = {}  # see _net
    self.order = stage_order(config)
    self.progress = {"stages_total": len(self.order), "tests_total": len(config.tests),
                     "stages_done": 0, "tests_done": 0}

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
      item_set = load_items(data, split, max_items)
      self._items[key] = item_set, to_device(item_set, data.item_size, self.mesh)
    return self._items[key]

  def _render(self, data, mean, std):
    return render_fn(data, mean, std, self.config.model.dtype, self.platform)

  # -- stages

  def stage(self, name: str) -> TrainedStage:
    """The stage's trained network: from the cache, or trained now (its parent first)."""
    if name in self._stages:
      return self._stages[name]
    flat, entry = stage_config(self.config, name), self.config.stages[name]
    directory = self.stage_dir / stage_key(self.config, name)
    summary = workdir_lib.read_json(directory / "done.json", f"stage {name}'s record")
    if summary is not None:
      try:
        variables = [checkpoints.load_exported(directory / "export" / f"seed{s}")[0]
                     for s in self.seeds]
      except checkpoints.CheckpointError as e:
        logging.warning("stage %s: %s; finishing the stage again from its checkpoints", name, e)
        summary = None
    if summary is not None:
      variables = jax.tree.map(lambda *xs: np.stack(xs), *variables)
      logging.info("stage %s: finished earlier, loaded from %s", name, directory)
      result = TrainedStage(jax.device_put(variables, sharding.replicated(self.mesh)),
                            np.asarray(summary["mean"], np.float32),
                            np.asarray(summary["std"], np.float32), summary["num_classes"],
                            summary)
    else:
      parent = self.stage(entry.parent) if entry.parent else None
      result = self._train_stage(name, flat, entry, directory, parent)
    self._stages[name] = result
    self.report(stages_done=self.progress["stages_done"] + 1)
    return result

  def _train_stage(self, name, flat, entry, directory: pathlib.Path,
                   parent: TrainedStage | None) -> TrainedStage:
    d, t = flat.data, flat.train
    train_set, train_items = self.items(d, "train", d.max_train_items)
    num_classes, imported = train_set.num_classes, None
    if keeps_file_head(entry):  # the network as it is: the file's classes, not the items'
      num_classes, imported = imported_network(flat.model.pretrained, flat.model,
                                               (1, d.canvas_size, d.canvas_size, d.channels),
                                               self.platform)
    model = models.build_model(flat.model, num_classes, self.platform)
    init_keys, data_keys = (jnp.stack(keys) for keys in
                            zip(*(jax.random.split(jax.random.key(s)) for s in self.seeds)))
    policy = finetune_policy(self.config, name) if parent is not None else "all"
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
    mean, std = canvas_normalisation(d, train_items.images)
    if workdir_lib.is_writer():
      directory.mkdir(parents=True, exist_ok=True)
      workdir_lib.write_json_atomic(directory / "stage.json", {
          "name": name, "key": directory.name, "parent": entry.parent, "finetune": policy,
          "untrained": entry.untrained, "config": _as_dict(flat)})
    index = self.order.index(name) + 1
    if entry.untrained:
      result = train.TrainResult(state=state, stop_reason=["untrained"] * len(self.seeds),
                                 steps=[0] * len(self.seeds),
                                 final_train_accuracy=[None] * len(self.seeds),
                                 seconds=0.0, block_mean=[None] * len(self.seeds))
    else:
      result = self._run_training(name, index, flat, state, train_items, data_keys,
                                  train_set.num_classes, mean, std, directory)
    reasons, steps, accuracy = result.stop_reason, result.steps, result.final_train_accuracy
    for i, seed in enumerate(self.seeds):
      checkpoints.export_variables(directory / "export" / f"seed{seed}",
                                   kernel.seed_variables(result.state.variables, i),
                                   _as_dict(flat))
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
    writer = workdir_lib.MetricsWriter(directory / "metrics.jsonl", keep_until=start_step)
    board = metric_writer.create(directory / "tensorboard", active=workdir_lib.is_writer())
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
    try:
      result = train.train_loop(
          state, train_items, data_keys,
          stop=train.StopRule(t.stop_accuracy, t.stop_window, t.max_steps, t.stop_block),
          log_every=t.log_every, scan_steps=t.scan_steps, on_metrics=on_metrics,
          on_checkpoint=ckpts.save, checkpoint_every=t.checkpoint_every,
          seeds_mode=self.config.get("seeds_mode", "sequential"),
          should_stop=preemption.requested, render=self._render(d, mean, std),
          sampler=make_sampler(d, num_classes), batch_size=t.batch_size, mesh=self.mesh)
    except train.StopRequested as e:
      raise preemption.Preempted(f"stage {name}, checkpointed at step {e.step}") from None
    except train.Diverged as e:
      kept = ckpts.all_steps()
      raise TrainingDiverged(
          f"stage {name}: {e}; training stopped there. The last good checkpoint "
          f"({f'step {kept[-1]}' if kept else 'none yet'}) is kept in {ckpts.directory}. Lower "
          f"config.train.learning_rate (now {t.learning_rate}) or check the data; a changed "
          "config trains the stage afresh in a new folder") from None
    finally:
      bar.clear()
      ckpts.close()
      board.close()
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
    entry, flat = self.config.tests[name], test_config(self.config, name)
    trained = self.stage(entry.stage)
    self.report(now=f"test {name}")
    logging.info("[test %d/%d %s] %s of stage %s on %s", self.progress["tests_done"] + 1,
                 self.progress["tests_total"], name, entry.kind, entry.stage, flat.data.dataset)
    if workdir_lib.is_writer():
      directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run = {"sweep": self._sweep, "similarity": self._similarity, "accuracy": self._accuracy,
           "invariance": self._invariance}[entry.kind]
    record = run(name, entry, flat, trained, directory)
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

  def _test_items(self, flat, trained: TrainedStage, name: str, same_classes: bool = True):
    item_set, items = self.items(flat.data, _split(self.config.tests[name]),
                                 _test_max_items(self.config, name, flat))
    if same_classes and item_set.num_classes != trained.num_classes:
      raise config_checks.ConfigError(
          f"test {name}: {flat.data.dataset} has {item_set.num_classes} classes but the network "
          f"of stage {self.config.tests[name].stage} has {trained.num_classes} outputs; test a "
          "stage trained (or fine-tuned) on this dataset")
    return item_set, items

  def _net(self, flat, num_classes: int) -> kernel.Inference:
    """The network of ``flat.model`` in inference mode, one object per architecture and run: the
    compiled evaluation kernels are cached on it, so every test and seed reuses them."""
    architecture = {k: v for k, v in flat.model.to_dict().items() if k != "pretrained"}
    key = (json.dumps(architecture, sort_keys=True), num_classes, self.platform)
    if key not in self._nets:
      self._nets[key] = kernel.Inference(
          models.build_model(flat.model, num_classes, self.platform))
    return self._nets[key]

  def _sweep(self, name, entry, flat, trained: TrainedStage, directory) -> dict:
    test_set, test_items = self._test_items(flat, trained, name)
    axis = test_axes(flat)
    sweep = evaluate.shift_sweep(
        self._net(flat, trained.num_classes), trained.variables, test_items,
        locations.grid_centres(axis, axis),
        render=self._render(flat.data, trained.mean, trained.std), mesh=self.mesh,
        items_per_batch=flat.eval.items_per_batch, centres_per_chunk=flat.eval.centres_per_chunk)
    stage_data = stage_config(self.config, entry.stage).data
    return write_sweep(directory, sweep, self.seeds, axis, test_set, flat.data.canvas_size,
                       trained_centre(stage_data), title=f"{self.config.experiment} {name}")

  def _similarity(self, name, entry, flat, trained: TrainedStage, directory) -> dict:
    # Any network's layers can be compared on any items: its classes need not be theirs.
    test_set, test_items = self._test_items(flat, trained, name, same_classes=False)
    d = flat.data
    base = locations.leftmost_centred_centre(d.canvas_size, d.item_size)
    axis = test_axes(flat)
    centres = np.stack([axis, np.full_like(axis, base[1])], -1).astype(np.int32)
    # Each seed's network on its own draw of items per class (the authors draw them at random).
    per_class = flat.eval.similarity_items_per_class
    index = np.stack([similarity.item_indices(test_set.labels, test_set.num_classes, per_class,
                                              seed=s) for s in self.seeds])         # [S, I]
    mean, std, normalisation = self._similarity_normalisation(flat, trained)
    # Every conv and linear layer, the output layer last, as the authors hook them.
    result = similarity.cosine_similarity(
        self._net(flat, trained.num_classes), trained.variables, test_items,
        render=self._render(d, mean, std), base_centre=base, centres=centres,
        layers="all+logits", item_index=index)
    layers, means = result.layers, result.seed_mean                        # [S, L, D]
    if workdir_lib.is_writer():
      workdir_lib.write_npz_atomic(
          directory / "similarity.npz", layers=np.array(layers), centres=centres,
          displacements=result.displacements, seeds=np.array(self.seeds), seed_mean=means,
          mean=result.mean, std=result.std, per_item=result.per_item, item_index=index,
          item_labels=result.labels, canvas_mean=mean, canvas_std=std)
    # The penultimate layer (the main figure's): the one the output layer reads.
    penultimate = len(layers) - 2 if layers[-1] == "logits" and len(layers) > 1 else -1
    return {"layers": layers, "displacements": result.displacements.tolist(),
            "penultimate": layers[penultimate],
            "penultimate_similarity": means[:, penultimate].mean(0).tolist(),
            "penultimate_similarity_std": means[:, penultimate].std(0).tolist(),
            "mean_penultimate_similarity": float(means[:, penultimate].mean()),
            "mean_penultimate_similarity_std": float(means[:, penultimate].mean(1).std()),
            "output_similarity": (means[:, -1].mean(0).tolist()
                                  if layers[-1] == "logits" else None),
            "items_per_class": int(per_class),
            "item_indices": {str(s): i.tolist() for s, i in zip(self.seeds, index)},
            "item_indices_of": f"the {_split(entry)} split of {d.dataset} as loaded "
                               "(config.data.classes applied)",
            "item_labels": result.labels.tolist(), "normalisation": normalisation}

  def _similarity_normalisation(self, flat, trained: TrainedStage):
    """The canvas normalisation of a similarity test: the statistics of the items' dataset (its
    training canvases), whatever network is measured.

    The authors' ``CosSim`` renders each canvas with the ``transform`` of the dataset it is given,
    the items' dataset, whose mean and std their generators estimate from that dataset itself. So
    the network pretrained on P and measured on F's items before fine-tuning sees F's
    normalisation, as it does after fine-tuning on F (the canvases differ only by the network);
    the untrained and ImageNet networks see their items' too (not ImageNet's statistics).

    Returns:
      ``(mean, std, record)``: float32 [channels] each, and what the result record states.
    """
    d = flat.data
    _, train_items = self.items(d, "train", d.max_train_items)
    mean, std = canvas_normalisation(d, train_items.images)
    source = (f"{d.dataset} train canvases (the items' dataset, as the authors' CosSim "
              "normalises)" if d.get("normalise", True) else "none (config.data.normalise=False)")
    return mean, std, {
        "mean": np.asarray(mean).tolist(), "std": np.asarray(std).tolist(), "from": source,
        "stage_normalisation": {"mean": np.asarray(trained.mean).tolist(),
                                "std": np.asarray(trained.std).tolist()},
        "same_as_stage": bool(np.allclose(mean, trained.mean) and np.allclose(std, trained.std))}

  def _accuracy(self, name, entry, flat, trained: TrainedStage, directory) -> dict:
    del directory  # the record is the whole result
    item_set, items = self._test_items(flat, trained, name)
    # One fixed placement key for every seed and rerun: the same canvases for every network.
    correct, totals = evaluate.placed_accuracy(
        self._net(flat, trained.num_classes), trained.variables, items, jax.random.key(flat.seed),
        render=self._render(flat.data, trained.mean, trained.std),
        sampler=make_sampler(flat.data, item_set.num_classes), mesh=self.mesh,
        items_per_batch=flat.eval.items_per_batch)
    accuracy = correct.sum(-1) / totals.sum()                              # [S]
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)
      per_class = (correct / totals).mean(0)
    return {"split": _split(entry), "test_items": int(totals.sum()),
            "num_classes": item_set.num_classes, "chance": 1 / item_set.num_classes,
            "train_location": flat.data.train_location, "accuracy": float(accuracy.mean()),
            "accuracy_std": float(accuracy.std()), "accuracy_per_seed": accuracy.tolist(),
            "class_accuracy": dict(zip(item_set.class_names, per_class.tolist()))}

  def _invariance(self, name, entry, flat, trained: TrainedStage, directory) -> dict:
    item_set, items = self._test_items(flat, trained, name, same_classes=False)
    return diagnostics.invariance_test(
        self._net(flat, trained.num_classes), trained.variables, item_set, items, flat=flat,
        render=self._render(flat.data, trained.mean, trained.std), mesh=self.mesh,
        directory=directory, seeds=self.seeds, labelled=item_set.num_classes == trained.num_classes,
        title=f"{self.config.experiment} {name}")

  # -- the whole run

  def run(self) -> dict:
    records = [self.test(name) for name in self.config.tests]
    self.report(now="report")
    summary = reports.write(self.config, self.workdir, records)
    summary.update({"experiment": self.config.experiment, "tests": len(records),
                    "stages": {n: stage_key(self.config, n) for n in self.order},
                    "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"})
    if "stand_in" in self.config:  # spec.resolve_stand_in: what stood in for ImageNet, if any
      summary["stand_in"] = self.config.stand_in
    return summary


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


def _split(entry: ml_collections.ConfigDict) -> str:
  return entry.get("split") or "test"


def _test_max_items(config, name: str, flat) -> int:
  """Sweeps and accuracy take the first ``eval.max_items``, invariance the first
  ``eval.invariance_items``; similarity picks per class from the whole split."""
  kind = config.tests[name].kind
  if kind == "invariance":
    return flat.eval.invariance_items
  return 0 if kind == "similarity" else flat.eval.max_items


def check_inputs(pipeline: Pipeline) -> None:
  """Loads every split the run needs, builds every sampler, and fits every pretrained file to
  its model, so that a missing file or a bad layout stops the run before anything is written."""
  config = pipeline.config
  for name in pipeline.order:
    flat = stage_config(config, name)
    train_set, _ = pipeline.items(flat.data, "train", flat.data.max_train_items)
    try:
      make_sampler(flat.data, train_set.num_classes)
    except ValueError as e:
      raise config_checks.ConfigError(
          f"stage {name}: config.data.train_location={flat.data.train_location!r}, "
          f"layout={flat.data.layout!r}: {e}") from None
    d = flat.data
    if keeps_file_head(config.stages[name]):
      try:
        imported_network(flat.model.pretrained, flat.model,
                         (1, d.canvas_size, d.canvas_size, d.channels), pipeline.platform)
      except pretrained.PretrainedError as e:
        raise pretrained.PretrainedError(e.detail, flat.model.pretrained) from None
      except ValueError as e:
        raise config_checks.ConfigError(
            f"stage {name} measures the network of {flat.model.pretrained} as it is, which "
            f"needs its output layer: {e}") from None
    elif flat.model.pretrained:
      model = models.build_model(flat.model, train_set.num_classes, pipeline.platform)
      target = pretrained.abstract_target(model, (1, d.canvas_size, d.canvas_size, d.channels))
      pretrained.load_pretrained(flat.model.pretrained, flat.model.name,
                                 jax.tree.map(lambda x: x[None], target))  # one seed shows the fit
  for name in config.tests:
    flat = test_config(config, name)
    pipeline.items(flat.data, _split(config.tests[name]), _test_max_items(config, name, flat))
    if config.tests[name].kind == "similarity":  # its normalisation: the items' training canvases
      pipeline.items(flat.data, "train", flat.data.max_train_items)


def workdir_config(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                   on_config_change: str) -> ml_collections.ConfigDict:
  """The config to run in ``workdir`` (``workdir.choose_config``): ``config`` or the stored one."""
  chosen = workdir_lib.choose_config(_as_dict(config), workdir, on_config_change)
  return config if chosen == _as_dict(config) else ml_collections.ConfigDict(chosen)


def fit_to_devices(config: ml_collections.ConfigDict, num_devices: int,
                   user_set: Collection[str] = ()) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose device-split sizes the user did not set fit the devices.

  See ``config_checks.fit_to_devices``; each change is logged (a training batch as a warning: it
  changes the protocol, and the stage's key with it).
  """
  config = copy.deepcopy(config)
  for change in config_checks.fit_to_devices(config, num_devices, user_set):
    (logging.warning if "batch_size" in change else logging.info)("%s", change)
  return config


def run(config: ml_collections.ConfigDict, workdir: str, on_config_change: str = "refuse",
        user_set: Collection[str] = ()) -> dict:
  """Runs (or resumes, or finds finished) the experiment that ``config`` describes.

  Every check (each stage's and test's config, data files, pretrained weights, an existing
  workdir's config) runs before any file is written.

  Args:
    config: an experiment config (see spec.py and configs/).
    workdir: the run directory.
    on_config_change: when ``workdir`` holds a run of another config: ``refuse``, ``resume``
      (run the stored config) or ``restart`` (see ``workdir.py``).
    user_set: the keys set on the command line; the device-split sizes among the others are
      rounded to the devices (``fit_to_devices``).

  Returns:
    The experiment's summary (also in ``workdir/summary.json``).
  """
  # A gs:// (non-local) workdir is proven writable here, before any other work.
  workdir = workdir_lib.check_usable(workdir)
  config = spec.resolve_stand_in(config)  # --config.imagenet_folder, or the stand-in, said so
  chosen = workdir_config(config, workdir, on_config_change)
  if chosen is not config:  # the stored run's config: no command-line keys apply
    config, user_set = chosen, ()
  if config.stage_dir:
    workdir_lib.check_usable(config.stage_dir, "--config.stage_dir")
  mesh = sharding.make_mesh()
  # The workdir keeps the config as given; what runs fits the devices at hand.
  fitted = fit_to_devices(config, mesh.size, user_set)
  check(fitted, mesh.size)
  pipeline = Pipeline(fitted, workdir, mesh)
  check_inputs(pipeline)
  finished = workdir_lib.prepare(_as_dict(config), workdir)
  if finished is not None:
    logging.info("%s already holds a finished run; nothing to do", workdir)
    return finished
  summary = pipeline.run()
  if workdir_lib.is_writer():
    workdir_lib.write_json_atomic(workdir / workdir_lib.SUMMARY, summary)
  pipeline.report(now="finished")
  logging.info("finished: %s", json.dumps(summary)[:2000])
  return summary
