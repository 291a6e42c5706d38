"""Where a run's trained stages live, and who may train one: the stage cache with its locks.

``<stage_dir>/<stage>-<key>/`` holds one trained stage (``pipeline.py`` lists its files); its
``done.json``, written last, marks it finished. A finished stage is read, never written, so any
number of runs share it without locks. Training one takes the folder's lock (``locks.py``):
another run that needs the same stage meanwhile waits for it and then loads the result
(``on_busy="wait"``), or stops with one line (``"refuse"``).

A read-only stage cache (a lab's trained networks on a read-only mount) is used as it is: its
finished stages are loaded, and a stage it lacks is trained into the run's own
``<workdir>/stages`` (``on_missing="train"``) or refused before any work (``"refuse"``, which also
refuses training into a writable cache: only finished stages are used).
"""

import contextlib
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from transinv_jax import checkpoints, locks, sharding
from transinv_jax import workdir as workdir_lib
from transinv_jax.experiments import stages
from transinv_jax.experiments.kinds import TrainedStage

ON_BUSY = ("wait", "refuse")
ON_MISSING = ("train", "refuse")
DONE = "done.json"


class StageStore:
  """The stage folders of one run.

  Args:
    config: the experiment config (its ``stage_dir``, stages and keys).
    workdir: the run directory (``<workdir>/stages`` is the default cache, and the run's own
      folder for stages a read-only cache lacks).
    mesh: where loaded variables are placed (replicated).
    seeds: the run's seeds; a stage holds one exported network per seed.
    on_busy: ``wait`` for another run training a needed stage, or ``refuse``.
    on_missing: ``train`` a stage the cache lacks, or ``refuse`` (before any work).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: epath.Path, mesh,
               seeds: list[int], on_busy: str = "wait", on_missing: str = "train"):
    for flag, value, allowed in (("--on_busy_stage", on_busy, ON_BUSY),
                                 ("--on_missing_stage", on_missing, ON_MISSING)):
      if value not in allowed:
        raise workdir_lib.WorkdirError(f"{flag}={value}: use one of {', '.join(allowed)}")
    self.config, self.mesh, self.seeds = config, mesh, seeds
    self.on_busy, self.on_missing = on_busy, on_missing
    self.own = workdir / "stages"
    self.cache = epath.Path(config.stage_dir) if config.stage_dir else self.own
    self.read_only = not workdir_lib.is_writable(self.cache)
    if self.read_only:
      logging.info("the stage cache %s is read-only: its finished stages are used as they are, "
                   "the others %s", self.cache,
                   f"trained into {self.own}" if on_missing == "train" else "refused")

  def directory(self, name: str) -> epath.Path:
    """The stage's folder: in the cache, or the run's own one when a read-only cache lacks it."""
    key = stages.stage_key(self.config, name)
    if self.read_only and not (self.cache / key / DONE).exists():
      return self.own / key
    return self.cache / key

  def _finished(self, name: str) -> bool:
    return (self.directory(name) / DONE).exists()

  def check_available(self, tests: list[str]) -> None:
    """With ``on_missing="refuse"``: raises now if a stage the tests need is not finished."""
    if self.on_missing != "refuse":
      return
    missing = []
    for test in tests:
      name = self.config.tests[test].stage
      while name and not self._finished(name) and name not in missing:
        missing.append(name)
        name = self.config.stages[name].parent  # its parent is needed to train it
    if missing:
      raise workdir_lib.WorkdirError(
          f"--on_missing_stage=refuse: stage(s) {', '.join(missing)} not finished in "
          f"{self.cache}; rerun with --on_missing_stage=train to train them into "
          f"{self.own if self.read_only else self.cache}")

  def load(self, name: str) -> TrainedStage | None:
    """The finished stage's networks, or None if it is not finished (or its export is damaged:
    it is finished again from its checkpoints)."""
    directory = self.directory(name)
    summary = workdir_lib.read_json(directory / DONE, f"stage {name}'s record")
    if summary is None:
      return None
    try:
      variables = [checkpoints.load_exported(directory / "export" / f"seed{s}")[0]
                   for s in self.seeds]
    except checkpoints.CheckpointError as e:
      if self.read_only and directory.parent == self.cache:
        raise workdir_lib.WorkdirError(f"stage {name} in the read-only cache: {e}") from None
      logging.warning("stage %s: %s; finishing the stage again from its checkpoints", name, e)
      return None
    variables = jax.tree.map(lambda *xs: np.stack(xs), *variables)
    logging.info("stage %s: finished earlier, loaded from %s", name, directory)
    return TrainedStage(jax.device_put(variables, sharding.replicated(self.mesh)),
                        np.asarray(summary["mean"], np.float32),
                        np.asarray(summary["std"], np.float32), summary["num_classes"], summary)

  @contextlib.contextmanager
  def training(self, name: str) -> Iterator[TrainedStage | None]:
    """Holds the stage folder's lock while the block trains the stage.

    Yields the stage when another run finished it while this one waited (nothing to train),
    else None (train it now: the lock is held and the folder's leftovers are cleared).
    """
    directory = self.directory(name)
    lock = locks.Lock(directory, f"training stage {name}")
    problem = ""
    if workdir_lib.is_writer():
      if self.on_busy == "refuse":
        holder = lock.try_acquire()
        if holder is not None:
          problem = (f"stage {name} ({directory}) is being trained by {locks.describe(holder)}; "
                     "rerun with --on_busy_stage=wait to wait for it and use its result")
      else:
        lock.wait(lambda holder: logging.warning(
            "stage %s: waiting for %s, which trains it in %s; its result is used here",
            name, locks.describe(holder), directory))
    if locks.process_zero_says(bool(problem)):
      raise locks.Held(problem or f"stage {name} is being trained by another run")
    try:
      finished = self.load(name) if locks.process_zero_says(self._finished(name)) else None
      if finished is None and workdir_lib.is_writer():
        workdir_lib.remove_leftovers(directory)
      yield finished
    finally:
      if workdir_lib.is_writer():
        lock.release()
