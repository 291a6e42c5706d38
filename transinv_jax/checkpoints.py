"""Orbax checkpoints of the train state, and an export of the model variables that loads without
orbax."""

import json
import pathlib
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from transinv_jax import workdir as workdir_lib

VARIABLES_FILE = "variables.npz"
CONFIG_FILE = "config.json"


class CheckpointError(RuntimeError):
  """A checkpoint or export that is missing or cannot be read."""


class Checkpoints:
  """The train state's checkpoints under ``directory``; saves are asynchronous."""

  def __init__(self, directory: pathlib.Path, max_to_keep: int = 2):
    self._manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state: Any) -> None:
    """Saves ``state`` (a flax struct) under its step; returns before the write ends.

    A state of several seeds is saved under its furthest seed's step, which only grows.
    """
    step = int(np.max(jax.device_get(state.step)))
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)))

  def restore_latest(self, state: Any) -> Any | None:
    """The latest checkpoint restored into ``state``'s structure and sharding, or None if none."""
    step = self._manager.latest_step()
    if step is None:
      return None
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, flax.serialization.to_state_dict(state))
    try:
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # orbax raises many types; all mean "unreadable"
      raise CheckpointError(
          f"checkpoint {step} in {self._manager.directory} cannot be read ({e}); "
          "delete that step's folder to resume from an earlier one, or use a new --workdir") from e
    return flax.serialization.from_state_dict(state, restored)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def export_variables(directory: pathlib.Path, variables: Any, config: dict) -> pathlib.Path:
  """Writes ``variables.npz`` and ``config.json`` to ``directory``.

  The arrays are stored float32 under flat keys ``"collection/layer/name"`` (e.g.
  ``params/conv1_1/kernel``, ``batch_stats/bn1_1/mean``), so numpy alone reads them;
  ``load_exported`` rebuilds the nested tree that ``model.apply`` takes.
  """
  directory = pathlib.Path(directory)
  flat = flax.traverse_util.flatten_dict(jax.device_get(variables), sep="/")
  if workdir_lib.is_writer():
    workdir_lib.write_npz_atomic(directory / VARIABLES_FILE,
                                 **{k: np.asarray(v) for k, v in flat.items()})
    workdir_lib.write_json_atomic(directory / CONFIG_FILE, config)
  return directory


def load_exported(directory: pathlib.Path) -> tuple[dict, dict]:
  """Reads an ``export_variables`` folder.

  Args:
    directory: folder holding ``variables.npz`` and ``config.json``.

  Returns:
    ``(variables, config)``: the nested variables (``{"params": ..., "batch_stats": ...}``) of
    numpy arrays, and the run's config as a dict.
  """
  directory = pathlib.Path(directory)
  variables_path, config_path = directory / VARIABLES_FILE, directory / CONFIG_FILE
  for path in (variables_path, config_path):
    if not path.is_file():
      raise CheckpointError(f"{path} not found: pass the 'export' folder of a finished run")
  try:
    with np.load(variables_path) as f:
      flat = {k: f[k] for k in f.files}
    config = json.loads(config_path.read_text())
  except Exception as e:
    raise CheckpointError(f"cannot read export in {directory}: {e}") from e
  return flax.traverse_util.unflatten_dict(flat, sep="/"), config
