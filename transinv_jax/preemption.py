"""Preemption: SIGTERM asks the run to checkpoint and stop at its next safe point.

TPU VMs (and most schedulers) announce a preemption with SIGTERM and kill the process a little
later. ``install()`` replaces the default handler (exit at once) by a flag; the training loop
checks ``requested()`` at every host sync, saves a checkpoint and raises ``Preempted``, and
``main`` exits with ``EXIT_CODE``. Rerunning the same command resumes from that checkpoint.

On several processes the flag is combined over all of them at each check (every process calls
``requested()`` at the same points of the same loop), so that all stop at the same step even if
only some received the signal.

Where JAX's preemption service runs (``jax.distributed.initialize()`` on a TPU slice or a GPU
cluster, with ``jax_enable_preemption_service`` on, its default), the runtime hears the notice
itself, tells every host, and agrees on a step to stop at:
``multihost_utils.reached_preemption_sync_point`` (what orbax's
``CheckpointManager.reached_preemption`` wraps) becomes True at the same check on every host.
``requested()`` asks it at every check, numbering the checks 0, 1, 2, ... the same on every host,
as the service requires; ``install()`` then leaves SIGTERM to the runtime, since replacing its
handler would hide the notice from it.
"""

import itertools
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

# 128 + SIGTERM, the status a shell reports for a process ended by SIGTERM: launchers treat it as
# "preempted, rerun to resume".
EXIT_CODE = 143

_flag = threading.Event()
# Numbers the checks for the preemption service: every host counts the same checks.
_checks = itertools.count()


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


def runtime_service() -> bool:
  """Whether JAX's preemption service runs (multi-process runs with it enabled)."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  state = distributed.global_state
  return state.client is not None and state.preemption_sync_manager is not None


def install() -> None:
  """Turns SIGTERM into a stop request (call once, in the main thread, after
  ``jax.distributed.initialize()``).

  Where JAX's preemption service runs, SIGTERM stays with it (see the module docstring).
  """
  global _checks
  _flag.clear()
  _checks = itertools.count()
  if not runtime_service():
    signal.signal(signal.SIGTERM, _handler)


def request() -> None:
  """Asks for a stop as SIGTERM would (tests, or a caller with its own preemption notice)."""
  _flag.set()


def clear() -> None:
  _flag.clear()


def sync_point(check: int) -> bool:
  """The preemption service's answer for ``check`` (False where the service does not run)."""
  try:
    return bool(multihost_utils.reached_preemption_sync_point(check))
  except RuntimeError:  # a distributed client without the preemption service
    return False


def requested() -> bool:
  """Whether any process has been asked to stop; every process must call this at the same point.

  True when this process got SIGTERM or ``request()``, when another process did (several
  processes), or when the preemption service says every host reached its sync point.
  """
  local = _flag.is_set() or sync_point(next(_checks))
  if jax.process_count() == 1:
    return local
  return bool(np.any(multihost_utils.process_allgather(np.array(local))))
