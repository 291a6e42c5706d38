"""Preemption: SIGTERM asks the run to checkpoint and stop at its next safe point.

TPU VMs (and most schedulers) announce a preemption with SIGTERM and kill the process a little
later. ``install()`` replaces the default handler (exit at once) by a flag; the training loop
checks ``requested()`` at every host sync, saves a checkpoint and raises ``Preempted``, and
``main`` exits with ``EXIT_CODE``. Rerunning the same command resumes from that checkpoint.

On several processes the flag is combined over all of them at each check (every process calls
``requested()`` at the same points of the same loop), so that all stop at the same step even if
only some received the signal.
"""

import signal
import threading

import jax
import numpy as np

# 128 + SIGTERM, the status a shell reports for a process ended by SIGTERM: launchers treat it as
# "preempted, rerun to resume".
EXIT_CODE = 143

_flag = threading.Event()


class Preempted(Exception):
  """The run stopped on a preemption request after saving its progress.

  Attributes:
    where: what was running (a stage and its step, or a test).
  """

  def __init__(self, where: str):
    super().__init__(f"preempted during {where}: progress saved; rerun the same command to "
                     "resume")
    self.where = where


def _handler(signum, frame) -> None:
  del frame
  _flag.set()
  # A second signal while saving still ends the process the default way.
  signal.signal(signum, signal.SIG_DFL)


def install() -> None:
  """Turns SIGTERM into a stop request (call once, in the main thread)."""
  _flag.clear()
  signal.signal(signal.SIGTERM, _handler)


def request() -> None:
  """Asks for a stop as SIGTERM would (tests, or a caller with its own preemption notice)."""
  _flag.set()


def clear() -> None:
  _flag.clear()


def requested() -> bool:
  """Whether any process has been asked to stop; every process must call this at the same point."""
  local = _flag.is_set()
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.array(local))))
