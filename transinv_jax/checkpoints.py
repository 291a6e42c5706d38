"""Orbax checkpoints of the train state, and an export of the model variables that loads without
orbax."""

import concurrent.futures
import contextlib
import hashlib
import json
import os
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from transinv_jax import workdir as workdir_lib

VARIABLES_FILE = "variables.npz"
CONFIG_FILE = "config.json"


class CheckpointError(RuntimeError):
  """A checkpoint or export that is missing or cannot be read."""


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


class Checkpoints:
  """The train state's checkpoints under ``directory``; saves are asynchronous.

  Orbax writes each step into a temporary folder and renames it into place when complete, so a
  crash mid-write leaves no step that looks finished. Once a save has finished, its files'
  SHA-256 digests go into ``<directory>_digests/<step>.json`` (the seal). Restoring walks the steps
  from the newest: a step whose files do not match its seal (bit rot, truncation, a deleted file),
  or that orbax cannot read, is skipped with a warning and the next older one is tried; a damaged
  checkpoint is never loaded.

  The training thread only hands the state to orbax: waiting for the write and hashing the files
  (seconds for a VGG16 of 5 seeds with its Adam state) happen on a background thread, so a
  checkpoint pauses training only for orbax's copy of the arrays to the host.

  A full disk or quota stops a save with ``workdir.DiskFull`` (one line: the folder, about how much
  the step needs, what is kept): locally the free space is checked before orbax starts a write
  (the newest step's size on disk), so its writer threads do not fail one by one; the first save,
  whose size is not known yet, is tried, and orbax's failure is turned into the same error;
  orbax's temporary folder of a failed save is removed by the next run.

  ``directory`` may be local or on Cloud Storage (``gs://``): orbax takes epath paths, and writes
  the arrays through tensorstore's own GCS driver there (its file driver locally); the seals go
  through epath. On gs:// orbax marks a finished step with a commit file instead of a rename.
  """

  def __init__(self, directory: epath.PathLike, max_to_keep: int = 2):
    directory = epath.Path(directory)
    if workdir_lib.is_local(directory):
      directory = directory.absolute()  # tensorstore's file driver needs absolute paths
    # cleanup_tmp_directories: a save cut short (a kill, a full disk) leaves a temporary step
    # folder; the next run's manager removes it.
    self._manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True))
    self.directory = directory
    self._seals = directory.with_name(directory.name + "_digests")
    self._sealer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint-seal")
    self._sealing: concurrent.futures.Future | None = None
    self._saving: tuple[int, int | None] = (0, None)  # the pending save's step and size

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, state: Any) -> None:
    """Saves ``state`` (a flax struct) under its step; returns before the write ends.

    A state of several seeds is saved under its furthest seed's step, which only grows.
    """
    step = int(np.max(jax.device_get(state.step)))
    self._finish_sealing()  # the previous save is sealed (long since, normally) before the next
    if step in self._manager.all_steps():
      return
    tree = flax.serialization.to_state_dict(state)
    needed, known = self._size_estimate(tree)
    free = workdir_lib.free_bytes(self.directory)
    if known and free is not None and free < needed:  # refused before orbax's threads start
      raise workdir_lib.DiskFull(self._step_dir(step), needed)
    try:
      self._manager.save(step, args=ocp.args.StandardSave(tree))
    except Exception as e:
      self._raise_if_disk_full(e, step, needed)
      raise
    self._sealing = self._sealer.submit(self._write_and_seal)
    self._saving = step, needed

  def _size_estimate(self, tree: Any) -> tuple[int, bool]:
    """Bytes the next step needs, and whether that is known: the newest step's size on disk
    with a margin for orbax's metadata; before the first step, the state's size in memory, an
    upper bound only (orbax compresses: on disk a step took 45% of it here)."""
    steps = self.all_steps()
    if steps and workdir_lib.is_local(self.directory):
      size = sum(os.path.getsize(os.path.join(folder, name))
                 for folder, _, names in os.walk(self._step_dir(steps[-1])) for name in names)
      return int(size * 1.05) + (1 << 20), True
    size = sum(getattr(x, "nbytes", None) or np.asarray(x).nbytes  # no copy of device arrays
               for x in jax.tree.leaves(tree))
    return size + (1 << 20), False

  def _raise_if_disk_full(self, e: BaseException, step: int, needed: int | None) -> None:
    if isinstance(e, workdir_lib.DiskFull):  # the seal's own write: it names its file
      raise e
    if workdir_lib.is_disk_full(e):
      raise workdir_lib.DiskFull(self._step_dir(step), needed) from None

  def _write_and_seal(self) -> None:
    self._manager.wait_until_finished()
    self._seal()

  def _finish_sealing(self) -> None:
    """Waits for the background write and seal of the last save; raises what it raised (a full
    disk as ``DiskFull``)."""
    if self._sealing is not None:
      sealing, self._sealing = self._sealing, None
      try:
        sealing.result()
      except Exception as e:
        self._raise_if_disk_full(e, *self._saving)
        raise

  def _step_dir(self, step: int) -> epath.Path:
    return epath.Path(self._manager.directory) / str(step)

  def _digests(self, step: int) -> dict[str, str]:
    root = self._step_dir(step)
    # walk, not rglob: epath refuses "**" patterns on object stores.
    files = sorted(epath.Path(folder) / name for folder, _, names in root.walk() for name in names)
    return {os.fspath(p.relative_to(root)): _sha256(p) for p in files}

  def _seal(self) -> None:
    """Writes the seal of every finished step that has none (after ``wait_until_finished``)."""
    if not workdir_lib.is_writer():
      return
    for step in self._manager.all_steps():
      seal = self._seals / f"{step}.json"
      if not seal.exists() and self._step_dir(step).is_dir():
        workdir_lib.write_json_atomic(seal, self._digests(step))
    for seal in self._seals.glob("*.json") if self._seals.is_dir() else ():
      if seal.stem.isdigit() and int(seal.stem) not in self._manager.all_steps():
        seal.unlink(missing_ok=True)  # orbax dropped that step (max_to_keep)

  def check(self, step: int) -> str | None:
    """Why step ``step`` must not be loaded, or None if its files match its seal.

    A step without a seal (the process ended between the save and its seal) is left to orbax's
    own reading to judge.
    """
    seal = self._seals / f"{step}.json"
    if not seal.exists():
      return None
    try:
      expected = json.loads(seal.read_text())
    except ValueError:
      return f"its seal {seal} is unreadable"
    found = self._digests(step)
    missing = sorted(set(expected) - set(found))
    if missing:
      return f"{len(missing)} file(s) missing, e.g. {missing[0]}"
    changed = sorted(k for k in expected if found[k] != expected[k])
    if changed:
      return f"{len(changed)} file(s) changed since it was written, e.g. {changed[0]}"
    return None

  def restore_latest(self, state: Any) -> Any | None:
    """The newest readable checkpoint restored into ``state``'s structure and sharding.

    Damaged steps are skipped with a warning (see the class docstring).

    Returns:
      The restored state, or None when there is no usable checkpoint (train from the start).
    """
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, flax.serialization.to_state_dict(state))
    for step in reversed(self.all_steps()):
      problem = self.check(step)
      if problem is None:
        try:
          restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
          return flax.serialization.from_state_dict(state, restored)
        except Exception as e:  # orbax raises many types; all mean "unreadable"
          problem = f"orbax cannot read it ({type(e).__name__}: {str(e)[:200]})"
      logging.warning("checkpoint %d in %s is damaged and skipped: %s", step, self.directory,
                      problem)
    return None

  def wait(self) -> None:
    """Blocks until the running save has finished and is sealed."""
    self._finish_sealing()
    self._manager.wait_until_finished()
    self._seal()

  def close(self, quiet: bool = False) -> None:
    """Finishes the pending save and closes; ``quiet`` (while another error is on its way)
    closes without raising the save's own error."""
    try:
      self.wait()
    except Exception:
      if not quiet:
        raise
    finally:
      with contextlib.suppress(Exception):  # a failed save may leave orbax unable to close
        self._manager.close()
      self._sealer.shutdown()

  def kept(self) -> str:
    """What survives a stop here, for the stop's message."""
    return kept(self.directory)


def kept(directory: epath.PathLike) -> str:
  """``the last good checkpoint (step N in <directory>) is kept``, or that none exists yet."""
  directory = epath.Path(directory)
  steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
      if directory.is_dir() else []
  if not steps:
    return f"no checkpoint yet in {directory}"
  return f"the last good checkpoint (step {steps[-1]} in {directory}) is kept"

def export_variables(directory: epath.PathLike, variables: Any, config: dict) -> epath.Path:
  """Writes ``variables.npz`` and ``config.json`` to ``directory``.

  The arrays are stored float32 under flat keys ``"collection/layer/name"`` (e.g.
  ``params/conv1_1/kernel``, ``batch_stats/bn1_1/mean``), so numpy alone reads them;
  ``load_exported`` rebuilds the nested tree that ``model.apply`` takes.
  """
  directory = epath.Path(directory)
  flat = flax.traverse_util.flatten_dict(jax.device_get(variables), sep="/")
  if workdir_lib.is_writer():
    workdir_lib.write_npz_atomic(directory / VARIABLES_FILE,
                                 **{k: np.asarray(v) for k, v in flat.items()})
    workdir_lib.write_json_atomic(directory / CONFIG_FILE, config)
  return directory


def load_exported(directory: epath.PathLike) -> tuple[dict, dict]:
  """Reads an ``export_variables`` folder.

  Args:
    directory: folder holding ``variables.npz`` and ``config.json``.

  Returns:
    ``(variables, config)``: the nested variables (``{"params": ..., "batch_stats": ...}``) of
    numpy arrays, and the run's config as a dict.
  """
  directory = epath.Path(directory)
  variables_path, config_path = directory / VARIABLES_FILE, directory / CONFIG_FILE
  for path in (variables_path, config_path):
    if not path.is_file():
      raise CheckpointError(f"{path} not found: pass the 'export' folder of a finished run")
  try:
    flat = workdir_lib.read_npz(variables_path)
    config = json.loads(config_path.read_text())
  except Exception as e:
    raise CheckpointError(f"cannot read export in {directory}: {e}") from e
  return flax.traverse_util.unflatten_dict(flat, sep="/"), config
