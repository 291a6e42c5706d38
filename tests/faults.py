"""Faults injected into a real run, at one kind of write: a full disk, a kill, a pause.

  python tests/faults.py WHAT WHERE NTH -- <transinv_jax.main flags>

runs the command line of ``transinv_jax.main`` with the fault armed; tests use ``injected`` for
the same in-process. The fault fires at the ``NTH`` write (counted in this process only) of:

  metrics      a record appended to a stage's metrics.jsonl
  tensorboard  a record appended to an event file
  checkpoint   a checkpoint save (enospc: the free-space check finds none; kill: orbax's write
               has started)
  orbax        orbax's asynchronous write of a checkpoint (enospc raised when it is waited for)
  <glob>       a file written whole (``workdir.write_bytes_atomic``) whose path matches, e.g.
               ``*/tests/*/result.json``, ``*/figures/*``, ``*_digests/*``

WHAT is ``enospc`` (the write fails half-way with ``OSError(ENOSPC)``), ``kill`` (SIGKILL half-way
through the write, or just after a checkpoint save starts) or ``pause`` (before the write: touch
``$TRANSINV_TEST_GATE.reached``, then wait until ``$TRANSINV_TEST_GATE`` exists). Each firing
prints ``FAULT <what> <where> <path>`` to stderr first. With ``$TRANSINV_TEST_WRITES`` set, every
whole-file write and checkpoint save is logged there as ``<pid> <path>`` (``<dir>/<step>`` for a
checkpoint), so tests can tell that two processes never wrote the same file.
"""

import contextlib
import errno
import fnmatch
import os
import pathlib
import signal
import sys
import time
from unittest import mock

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

from transinv_jax import checkpoints, workdir  # pylint: disable=g-import-not-at-top  # noqa: E402

KINDS = ("enospc", "kill", "pause")
APPENDS = {"metrics": "metrics.jsonl", "tensorboard": "events.out.tfevents.*"}


def _log_write(path) -> None:
  log = os.environ.get("TRANSINV_TEST_WRITES")
  if log:
    with open(log, "a") as f:
      f.write(f"{os.getpid()} {path}\n")


class _Fault:
  """Counts the matching writes and fires at the nth."""

  def __init__(self, what: str, where: str, nth: int):
    if what not in KINDS:
      raise ValueError(f"fault {what!r}: use one of {KINDS}")
    self.what, self.where, self.nth, self.count = what, where, nth, 0

  def due(self, kind: str, path) -> bool:
    if kind == "append":
      pattern = APPENDS.get(self.where)
      hit = pattern is not None and fnmatch.fnmatch(os.path.basename(os.fspath(path)), pattern)
    elif kind in ("checkpoint", "orbax"):
      hit = self.where == kind
    else:
      hit = self.where not in APPENDS and self.where not in ("checkpoint", "orbax") and \
          fnmatch.fnmatch(os.fspath(path), self.where)
    if hit:
      self.count += 1
    return hit and self.count == self.nth

  def announce(self, path) -> None:
    print(f"FAULT {self.what} {self.where} {path}", file=sys.stderr, flush=True)

  def pause(self) -> None:
    gate = pathlib.Path(os.environ["TRANSINV_TEST_GATE"])
    pathlib.Path(f"{gate}.reached").write_text(str(os.getpid()))
    deadline = time.time() + 600
    while not gate.exists() and time.time() < deadline:
      time.sleep(0.05)

  def half_then(self, write_all):
    """A ``workdir._write_all`` that writes half the bytes, then fails or dies."""

    def faulty(fd, data):
      write_all(fd, bytes(data[:len(data) // 2]))
      if self.what == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
      raise OSError(errno.ENOSPC, "No space left on device (injected)")

    return faulty

  def fire_during(self, call, path, *args):
    """Runs ``call(path, *args)`` with the fault at its byte writes."""
    self.announce(path)
    if self.what == "pause":
      self.pause()
      return call(path, *args)
    with mock.patch.object(workdir, "_write_all", self.half_then(workdir._write_all)):
      return call(path, *args)


@contextlib.contextmanager
def injected(what: str, where: str, nth: int = 1):
  """Arms one fault (see the module docstring) for the block."""
  fault = _Fault(what, where, nth)
  write_bytes, append = workdir.write_bytes_atomic, workdir.append
  save, wait = checkpoints.Checkpoints.save, checkpoints.ocp.CheckpointManager.wait_until_finished

  def write_bytes_atomic(path, data):
    _log_write(path)
    if fault.due("file", path):
      return fault.fire_during(write_bytes, path, data)
    return write_bytes(path, data)

  def append_(path, data):
    if fault.due("append", path):
      return fault.fire_during(append, path, data)
    return append(path, data)

  def save_(self, state):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    step = int(np.max(jax.device_get(state.step)))
    self._finish_sealing()  # as save does first: then all_steps knows whether step is saved
    if step in self._manager.all_steps():
      return save(self, state)  # saved already (the final state, just after its window's)
    _log_write(f"{self.directory}/{step}")
    if not fault.due("checkpoint", self.directory):
      return save(self, state)
    fault.announce(f"{self.directory}/{step}")
    if fault.what == "pause":
      fault.pause()
    elif fault.what == "enospc":  # the free-space check finds the disk full
      with mock.patch.object(workdir, "free_bytes", lambda _: 1000):
        return save(self, state)
    save(self, state)
    if fault.what == "kill":  # orbax's write is under way
      os.kill(os.getpid(), signal.SIGKILL)

  def wait_(self):
    wait(self)
    if fault.due("orbax", self.directory):
      fault.announce(self.directory)
      if fault.what == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
      raise OSError(errno.ENOSPC, "No space left on device (injected in orbax's write)")

  with mock.patch.object(workdir, "write_bytes_atomic", write_bytes_atomic), \
      mock.patch.object(workdir, "append", append_), \
      mock.patch.object(checkpoints.Checkpoints, "save", save_), \
      mock.patch.object(checkpoints.ocp.CheckpointManager, "wait_until_finished", wait_):
    yield fault


# A tiny exp1 cell of two seeds through the real command: 20 steps, a record and a checkpoint
# every 5 (tests pass max_steps to make it longer).
TINY_RUN = ("--config=configs/exp1.py:smoke", "--config.model.name=vgg11", "--config.num_seeds=2",
            "--config.data.canvas_size=32", "--config.data.item_size=12",
            "--config.data.max_train_items=500", "--config.train.max_steps=20",
            "--config.train.stop_window=0", "--config.train.log_every=5",
            "--config.train.checkpoint_every=5", "--config.eval.max_items=20",
            "--config.eval.items_per_batch=20", "--config.eval.centres_per_chunk=7")


def command(*flags: str, fault: tuple[str, str, int] | None = None) -> list[str]:
  """The argv of ``transinv_jax.main`` with ``flags`` (after TINY_RUN's), under ``fault``."""
  if fault is None:
    return [sys.executable, "-m", "transinv_jax.main", *TINY_RUN, *flags]
  what, where, nth = fault
  return [sys.executable, __file__, what, where, str(nth), "--", *TINY_RUN, *flags]


def main(argv: list[str]) -> None:
  if len(argv) < 4 or "--" not in argv:
    sys.exit(__doc__)
  split = argv.index("--")
  what, where, nth = argv[1:split]
  from absl import app  # pylint: disable=g-import-not-at-top
  from transinv_jax import main as entry  # pylint: disable=g-import-not-at-top
  sys.argv = ["transinv_jax.main", *argv[split + 1:]]
  with injected(what, where, int(nth)):
    app.run(entry.main)


if __name__ == "__main__":
  main(sys.argv)
