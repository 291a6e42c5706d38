"""Invariance diagnostics of any trained network: ``configs/diagnose.py``.

``config.checkpoint`` names the network, one of:

  an export folder        ``.../export/seed<s>`` (variables.npz + config.json): one seed
  a stage folder          ``<stage_dir>/<stage>-<key>``: every seed it trained
  a run directory         a workdir whose ``stages/`` holds the stage named by ``config.stage``
                          (or its only stage): every seed
  a weights file          a torchvision ``state_dict`` (.pth) or Keras VGG16 weights (.h5), read
                          as ``config.model`` (name, padding, pooling) describes

For this package's own networks the model and the data (dataset, canvas and item size) come from
the checkpoint's stored config; any ``config.data`` key set on the command line replaces the
stored value (e.g. ``--config.data.dataset=fashion_mnist`` measures on other items), and the
canvas normalisation is the one the network trained with. A weights file needs
``config.data.dataset`` and keeps its own output layer (ImageNet's 1000 classes), so the items'
"correct class" is the network's own top-1 at the start of each path.

Writes to the workdir: ``config.json``, ``tests/invariance/`` (invariance.npz, result.json and
the figures of ``diagnostics``), ``report.json`` (the network, its origin and every measure) and
``summary.json`` last.
"""

from collections.abc import Collection
import dataclasses
import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from transinv_jax import checkpoints, config_checks, finetune, kernel, locks, models, sharding
from transinv_jax import workdir as workdir_lib
from transinv_jax.data import inputs
from transinv_jax.experiments import diagnostics, spec, stages
from transinv_jax.models import pretrained

WEIGHT_SUFFIXES = (".pth", ".pt", ".h5")
TEST = "invariance"


@dataclasses.dataclass
class Network:
  """The network to measure.

  Attributes:
    origin: what was loaded (the checkpoint's kind and folders).
    variables: the variables stacked over seeds, every leaf [S, ...] (S = 1 for a weights file).
    seeds: the seeds (or [0] for a weights file).
    num_classes: its output size.
    flat: the flat run config it is measured with (data, model, eval, seed).
    mean, std: the canvas normalisation (None: compute from the items, as training does).
  """
  origin: dict
  variables: Any
  seeds: list[int]
  num_classes: int
  flat: ml_collections.ConfigDict
  mean: np.ndarray | None
  std: np.ndarray | None


def _set_keys(section: ml_collections.ConfigDict) -> dict:
  """The keys given a value (command line or config file); unset placeholders are None."""
  return {k: v for k, v in section.items() if v is not None}


def export_folders(checkpoint: str, stage: str = "") -> tuple[str, list[epath.Path]]:
  """The kind of ``checkpoint`` and its export folders (one per seed).

  Args:
    checkpoint: an export, stage or run folder: local or gs:// (read through epath).
    stage: the stage, where ``checkpoint`` is a run folder of several.

  Returns:
    ``(kind, folders)``: ``export`` or ``stage``, and the export folder of each seed.

  Raises:
    CheckpointError: nothing readable there (the message says what is accepted).
  """
  path = epath.Path(checkpoint).expanduser()
  if (path / checkpoints.VARIABLES_FILE).is_file():
    return "export", [path]
  stage_dirs = [path] if (path / "export").is_dir() else sorted(
      p for p in (path / "stages").glob(f"{stage or '*'}-*") if (p / "export").is_dir())
  if (path / "stages").is_dir() and len(stage_dirs) != 1:
    names = sorted(p.name.rsplit("-", 1)[0] for p in (path / "stages").glob("*-*"))
    raise checkpoints.CheckpointError(
        f"config.checkpoint={checkpoint!r} is a run directory with "
        f"{'no' if not stage_dirs else 'more than one'} finished stage"
        f"{' named ' + repr(stage) if stage else ''}: set --config.stage to one of "
        f"{names or 'none (run the experiment first)'}")
  if stage_dirs and (stage_dirs[0] / "export").is_dir():
    seeds = sorted((stage_dirs[0] / "export").glob("seed*"), key=lambda p: int(p.name[4:]))
    if not seeds:
      raise checkpoints.CheckpointError(
          f"config.checkpoint={checkpoint!r}: {stage_dirs[0]} has no export/seed<s> folder; "
          "the stage has not finished (rerun its experiment)")
    return "stage", seeds
  raise checkpoints.CheckpointError(
      f"config.checkpoint={checkpoint!r} is not an export folder (variables.npz), a stage "
      "folder (export/seed<s>), a run directory (stages/) or a weights file "
      f"({', '.join(WEIGHT_SUFFIXES)})")


def load_network(config: ml_collections.ConfigDict, platform: str) -> Network:
  """Reads ``config.checkpoint`` and resolves the config it is measured with."""
  require = config_checks.require
  require(bool(config.checkpoint),
          "config.checkpoint is empty: pass --config.checkpoint= an export folder, a stage "
          "folder, a run directory or a .pth/.h5 weights file")
  data_keys, model_keys = _set_keys(config.data), _set_keys(config.model)
  flat = ml_collections.ConfigDict({"seed": config.seed, "num_seeds": 1,
                                    "data": spec.base_config("").data,
                                    "model": models.default_config(),
                                    "train": spec.base_config("").train,
                                    "eval": config.eval.to_dict()})
  path = pathlib.Path(config.checkpoint).expanduser()
  if path.suffix in WEIGHT_SUFFIXES:
    if not path.is_file():
      raise checkpoints.CheckpointError(f"config.checkpoint={config.checkpoint!r}: no such file")
    flat.model.update(model_keys)
    flat.data.update(data_keys)
    require(bool(flat.data.dataset),
            "a weights file needs the items to measure on: set --config.data.dataset (one of "
            "mnist, fashion_mnist, kmnist, emnist_letters, leek10, leek2)")
    # The network as it is, its own output layer kept: as exp5's and Azulay & Weiss' untrained
    # ImageNet stages load it.
    try:
      num_classes, variables = stages.imported_network(
          path, flat.model, (1, flat.data.canvas_size, flat.data.canvas_size, flat.data.channels),
          platform)
    except pretrained.PretrainedError as e:
      raise checkpoints.CheckpointError(
          f"config.checkpoint={config.checkpoint!r} read as config.model (name="
          f"{flat.model.name!r}): {e.detail}") from None
    except ValueError:
      raise config_checks.ConfigError(
          f"config.checkpoint={config.checkpoint!r} has no output layer; diagnostics need the "
          "network's class probabilities") from None
    origin = {"kind": "weights", "path": str(path)}
    return Network(origin, jax.tree.map(lambda v: np.asarray(v)[None], variables), [0],
                   num_classes, flat, None, None)

  kind, folders = export_folders(config.checkpoint, config.stage)
  if model_keys:
    raise config_checks.ConfigError(
        f"config.model.{sorted(model_keys)[0]} is set, but {config.checkpoint} carries its own "
        "model (its stored config); config.model applies to .pth/.h5 weights files only")
  loaded = [checkpoints.load_exported(f) for f in folders]
  stored = loaded[0][1]
  flat.model.update(stored["model"])
  flat.data.update(stored["data"])
  flat.data.update(data_keys)
  done = folders[0].parent.parent / "done.json"
  mean = std = None
  if done.is_file() and not {"dataset", "canvas_size", "item_size", "channels",
                             "normalise"} & set(data_keys):
    summary = json.loads(done.read_text())
    mean, std = (np.asarray(summary[k], np.float32) for k in ("mean", "std"))
  variables = jax.tree.map(lambda *per_seed: np.stack(per_seed), *(v for v, _ in loaded))
  num_classes = finetune.num_outputs(loaded[0][0]["params"])
  seeds = [int(f.name[4:]) if f.name.startswith("seed") else stored.get("seed", 0)
           for f in folders]
  origin = {"kind": kind, "folders": [str(f) for f in folders],
            "trained_on": stored["data"].get("dataset")}
  return Network(origin, variables, seeds, num_classes, flat, mean, std)


def run(config: ml_collections.ConfigDict, workdir: str, on_config_change: str = "refuse",
        user_set: Collection[str] = (), on_busy_stage: str = "wait",
        on_missing_stage: str = "train") -> dict:
  """Measures the network of ``config.checkpoint``; see the module docstring.

  Every check (the checkpoint, the resolved config, the data files) runs before any file is
  written.

  Args:
    config: a ``configs/diagnose.py`` config.
    workdir: the run directory.
    on_config_change: when ``workdir`` holds a run of another config (``workdir.py``).
    user_set: the keys set on the command line; the device-split sizes among the others are
      rounded to the devices (``config_checks.fit_to_devices``).
    on_busy_stage, on_missing_stage: accepted for the command line's sake; diagnose trains no
      stage (it reads finished ones only).

  Returns:
    The summary (also in ``workdir/summary.json``).
  """
  del on_busy_stage, on_missing_stage
  # A gs:// (non-local) workdir is proven writable here, before any other work.
  workdir = workdir_lib.check_usable(workdir)
  locks.check_free(workdir)
  config = stages.workdir_config(config, workdir, on_config_change)
  mesh = sharding.make_mesh()
  platform = jax.default_backend()
  network = load_network(config, platform)
  flat = network.flat
  for change in config_checks.fit_to_devices(flat, mesh.size, user_set):
    logging.info("%s", change)
  try:
    config_checks.check_config(flat, mesh.size)
    config_checks.check_invariance_eval(flat)
  except config_checks.ConfigError as e:
    raise config_checks.ConfigError(f"{e} (the data and model resolved from "
                                    f"{config.checkpoint})") from None
  d = flat.data
  item_set = inputs.load_items(d, config.split, flat.eval.invariance_items)
  with locks.holding(workdir, f"diagnose {config.checkpoint} in {workdir}"):
    return _measure(config, workdir, mesh, platform, network, item_set)


def _measure(config, workdir, mesh, platform, network: Network, item_set) -> dict:
  flat, d = network.flat, network.flat.data
  finished = workdir_lib.prepare(json.loads(config.to_json_best_effort()), workdir)
  if finished is not None:
    logging.info("%s already holds a finished run; nothing to do", workdir)
    return finished
  items = inputs.to_device(item_set, d.item_size, mesh)
  if network.mean is None:
    train_set = inputs.load_items(d, "train", d.max_train_items)
    train_items = inputs.to_device(train_set, d.item_size, mesh)
    network.mean, network.std = inputs.canvas_normalisation(d, train_items.images)
  net = kernel.Inference(models.build_model(flat.model, network.num_classes, platform))
  render = inputs.render_fn(d, network.mean, network.std, flat.model.dtype, platform)
  variables = jax.device_put(network.variables, sharding.replicated(mesh))
  directory = workdir / "tests" / TEST
  record = diagnostics.invariance_test(
      net, variables, item_set, items, flat=flat, render=render, mesh=mesh,
      directory=directory, seeds=network.seeds,
      labelled=network.num_classes == item_set.num_classes, title=f"diagnose {flat.model.name}")
  record.update({"test": TEST, "kind": "invariance", "dataset": d.dataset, "split": config.split,
                 "network": flat.model.name, "origin": network.origin,
                 "model": flat.model.to_dict(), "data": flat.data.to_dict(),
                 "num_outputs": network.num_classes, "seeds": network.seeds})
  if workdir_lib.is_writer():
    workdir_lib.write_json_atomic(directory / "result.json", record)
    workdir_lib.write_json_atomic(workdir / "report.json", record)
  summary = {"experiment": "diagnose", "checkpoint": config.checkpoint,
             "origin": network.origin, "results": [{k: record.get(k) for k in (
                 "test", "network", "dataset") + diagnostics.SCALARS}],
             "figures": sorted(f"tests/{TEST}/{f}" for f in diagnostics.FIGURES),
             "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}
  if workdir_lib.is_writer():
    workdir_lib.write_json_atomic(workdir / workdir_lib.SUMMARY, summary)
  logging.info("finished: %s", json.dumps(summary)[:2000])
  return summary
