"""Stage resolution: an experiment config -> its stages and tests, their flat configs and keys.

A stage's flat config is the shared sections with the stage's overrides; a test's is its stage's
with the test's data overrides. ``stage_key`` hashes what determines a trained stage, so stages
can be shared between experiments; ``check`` checks every stage and test before any file is
written.
"""

from collections.abc import Collection
import copy
import hashlib
import json
import pathlib

import ml_collections
from absl import logging

from transinv_jax import config_checks, finetune, models, train
from transinv_jax import workdir as workdir_lib
from transinv_jax.data import sources
from transinv_jax.experiments import figures, spec
from transinv_jax.models import pretrained

# Keys that change how a stage is run, not what it computes: left out of its cache key.
_RUN_ONLY = {("data", "data_dir"), ("data", "mirror"), ("data", "tfds_download"),
             ("train", "log_every"), ("train", "scan_steps"), ("train", "checkpoint_every")}


def as_dict(config: ml_collections.ConfigDict) -> dict:
  """``config`` as plain JSON values (what is hashed and stored)."""
  return json.loads(config.to_json_best_effort())


def stage_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A stage's flat config: seeds, the shared sections with the stage's overrides applied
  (``spec.stage_values``: what ``resolved_config.json`` shows) and the eval section."""
  return ml_collections.ConfigDict({
      "seed": config.seed, "num_seeds": config.num_seeds, **spec.stage_values(config, name),
      "eval": copy.deepcopy(config.eval.to_dict())})


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
  entry, flat = config.stages[name], as_dict(stage_config(config, name))
  identity = {"seed": flat["seed"], "num_seeds": flat["num_seeds"],
              "finetune": finetune_policy(config, name) if entry.parent else "",
              "untrained": entry.untrained,
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
  figures.check_figures(config)
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
    _require(test_split(entry) in spec.SPLITS,
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


def test_split(entry: ml_collections.ConfigDict) -> str:
  """The split a ``config.tests`` entry runs on (``"test"`` unless it names one)."""
  return entry.get("split") or "test"


def test_max_items(config: ml_collections.ConfigDict, name: str,
                   flat: ml_collections.ConfigDict) -> int:
  """Sweeps and accuracy take the first ``eval.max_items``, invariance the first
  ``eval.invariance_items``; similarity picks per class from the whole split."""
  kind = config.tests[name].kind
  if kind == "invariance":
    return flat.eval.invariance_items
  return 0 if kind == "similarity" else flat.eval.max_items


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


def workdir_config(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                   on_config_change: str) -> ml_collections.ConfigDict:
  """The config to run in ``workdir`` (``workdir.choose_config``): ``config`` or the stored one."""
  chosen = workdir_lib.choose_config(as_dict(config), workdir, on_config_change)
  return config if chosen == as_dict(config) else ml_collections.ConfigDict(chosen)


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
