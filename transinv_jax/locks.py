"""One writer per run directory and per stage folder: ``lock.json`` with its holder's heartbeat.

A run locks its workdir for its whole length, and each stage folder while it trains that stage
(``experiments/stage_store.py``). The lock file names its holder (host, pid, the process's start
time, the command) and a heartbeat that a background thread refreshes every ``HEARTBEAT_S``.

Another process finds the lock held, or stale, and takes over a stale one with a warning:

  * on this host: the holder's pid is gone, or now belongs to a newer process (its start time in
    ``/proc`` differs from the one recorded);
  * from another host (a shared file system): no heartbeat for ``STALE_AFTER_S`` seconds
    (``$TRANSINV_JAX_LOCK_STALE_S`` overrides it).

Locally the lock is created atomically (a hard link of a complete file, which fails if the lock
exists), so two processes never both hold it. On an object store (``gs://``) no create-if-absent
exists through epath: the lock is written, read back a second later, and held if it is still
ours; two runs started within that second may both pass (best effort, said in README).

On several hosts only process 0 locks; ``process_zero_says`` gives every process its outcome.
"""

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

from transinv_jax import workdir as workdir_lib

LOCK = "lock.json"
HEARTBEAT_S = 10.0
STALE_AFTER_S = float(os.environ.get("TRANSINV_JAX_LOCK_STALE_S", 120))
WORKDIR_HINT = ("wait for it to end, or use another --workdir (a lock whose process is gone is "
                "taken over by the next run on its own)")


class Held(workdir_lib.WorkdirError):
  """The lock belongs to another live process; the message names it and what to do."""


def _start_time(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (``/proc``), or None where unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      # The command name (field 2) may hold spaces: count fields after its closing parenthesis.
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def describe(holder: dict) -> str:
  """``pid 123 on host h (since 10:02:03, heartbeat 4 s ago): <what>``."""
  beat = time.time() - float(holder.get("heartbeat", 0))
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
  return (f"pid {holder.get('pid')} on host {holder.get('host')} (since {since}, heartbeat "
          f"{beat:.0f} s ago): {holder.get('what', '?')}")


def why_stale(holder: dict) -> str | None:
  """Why ``holder``'s lock may be taken over, or None while it is live."""
  pid = holder.get("pid")
  if holder.get("host") == socket.gethostname() and isinstance(pid, int):
    if not _alive(pid):
      return f"its process {pid} is gone"
    recorded, now = holder.get("start_time"), _start_time(pid)
    if recorded is not None and now is not None and recorded != now:
      return f"pid {pid} now belongs to another process"
    return None
  silent = time.time() - float(holder.get("heartbeat", 0))
  if silent > STALE_AFTER_S:
    return f"no heartbeat for {silent:.0f} s (more than {STALE_AFTER_S:.0f} s)"
  return None


def read_holder(path: epath.PathLike) -> dict | None:
  """The lock's content; None if there is no lock; ``{}`` if it cannot be read (half a write
  cannot happen locally; on an object store it is treated as stale after STALE_AFTER_S)."""
  path = epath.Path(path)
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except (ValueError, OSError):
    return {}


class Lock:
  """The lock file ``<directory>/lock.json`` held by this process (see the module docstring).

  Args:
    directory: the folder to lock (made if missing).
    what: what the holder does there, for others' messages ("run exp1 in runs/a").
  """

  def __init__(self, directory: epath.PathLike, what: str):
    self.directory = epath.Path(directory)
    self.path = self.directory / LOCK
    self.token = uuid.uuid4().hex
    self.what = what
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._record: dict | None = None

  def _content(self) -> bytes:
    now = time.time()
    self._record = self._record or {
        "host": socket.gethostname(), "pid": os.getpid(), "start_time": _start_time(os.getpid()),
        "started": now, "what": self.what, "command": " ".join(sys.argv)[:500],
        "token": self.token}
    return json.dumps(dict(self._record, heartbeat=now), indent=2).encode() + b"\n"

  def _create(self) -> bool:
    """Creates the lock file if there is none; whether this process now holds it."""
    self.directory.mkdir(parents=True, exist_ok=True)
    if not workdir_lib.is_local(self.path):
      if self.path.exists():
        return False
      self.path.write_bytes(self._content())
      time.sleep(1.0)  # a rival's write in the same second wins or loses here
      return (read_holder(self.path) or {}).get("token") == self.token
    # Complete first, then linked into place: the link fails if the lock exists, and a reader
    # never sees half a lock.
    tmp = self.path.with_name(f".{LOCK}.{self.token}")
    workdir_lib.write_bytes_atomic(tmp, self._content())
    try:
      os.link(tmp, self.path)
      return True
    except FileExistsError:
      return False
    except OSError:  # a file system without hard links
      try:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
      except FileExistsError:
        return False
      with os.fdopen(fd, "wb") as f:
        f.write(self._content())
      return True
    finally:
      tmp.unlink(missing_ok=True)

  def _take_over(self, holder: dict, reason: str) -> None:
    """Moves a stale lock aside (only if it is still the one judged stale)."""
    aside = self.path.with_name(f".{LOCK}.stale.{self.token}")
    try:
      self.path.rename(aside)
    except (FileNotFoundError, OSError):
      return  # another process moved it first; creating decides between us
    if read_holder(aside) != holder:  # a new holder came in between: give it back
      if workdir_lib.is_local(self.path):
        with contextlib.suppress(FileExistsError):
          os.link(aside, self.path)
      aside.unlink(missing_ok=True)
      return
    aside.unlink(missing_ok=True)
    logging.warning("taking over the lock of %s: %s, held by %s", self.directory, reason,
                    describe(holder))

  def try_acquire(self) -> dict | None:
    """Takes the lock (a stale one too); None once held, else the live holder's record."""
    for _ in range(20):  # a stale lock and rivals: a few rounds settle it
      if self._create():
        self._start_heartbeat()
        return None
      holder = read_holder(self.path)
      if holder is None:
        continue  # released meanwhile
      reason = why_stale(holder)
      if reason is None:
        return holder
      self._take_over(holder, reason)
    raise Held(f"{self.path}: could not take the lock after 20 tries; remove it by hand if "
               "no run uses this folder")

  def acquire(self, hint: str) -> None:
    """Takes the lock or raises ``Held`` naming the holder and ``hint`` (what to do)."""
    holder = self.try_acquire()
    if holder is not None:
      raise Held(f"{self.directory} is in use by {describe(holder)}; {hint}")

  def wait(self, on_wait: Callable[[dict], None], poll_s: float = 2.0) -> None:
    """Takes the lock, waiting while a live process holds it; ``on_wait(holder)`` is called
    when the wait starts and when the holder changes."""
    shown = None
    while (holder := self.try_acquire()) is not None:
      if holder.get("token") != shown:
        on_wait(holder)
        shown = holder.get("token")
      time.sleep(poll_s)

  def _start_heartbeat(self) -> None:
    self._stop.clear()
    self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat {self.path}",
                                    daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      if (read_holder(self.path) or {}).get("token") != self.token:
        logging.error("the lock %s is no longer this process's (taken over); stopping its "
                      "heartbeat", self.path)
        return
      try:
        workdir_lib.write_bytes_atomic(self.path, self._content())
      except OSError as e:  # a full disk: the heartbeat goes stale, the run goes on
        logging.warning("cannot refresh the lock %s: %s", self.path, e)

  def release(self) -> None:
    """Removes the lock if it is still this process's."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if (read_holder(self.path) or {}).get("token") == self.token:
      self.path.unlink(missing_ok=True)


def process_zero_says(value: Any) -> Any:
  """Process 0's ``value`` on every process (a small int or bool); itself on one host."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return type(value)(multihost_utils.broadcast_one_to_all(np.int32(value)))


def check_free(directory: epath.PathLike, hint: str = WORKDIR_HINT) -> None:
  """Raises ``Held`` now if a live process holds ``directory``'s lock (a read: nothing is
  written), so that a second run stops before loading anything."""
  holder = read_holder(epath.Path(directory) / LOCK) if workdir_lib.is_writer() else None
  busy = holder is not None and why_stale(holder) is None
  if process_zero_says(busy):
    raise Held(f"{directory} is in use by {describe(holder or {})}; {hint}")


@contextlib.contextmanager
def holding(directory: epath.PathLike, what: str, hint: str = WORKDIR_HINT) -> Iterator[None]:
  """Holds ``directory``'s lock for the block (process 0 takes it; every process learns whether
  it was free); raises ``Held`` when another live process has it."""
  lock, problem = Lock(directory, what), ""
  if workdir_lib.is_writer():
    try:
      lock.acquire(hint)
    except Held as e:
      problem = str(e)
  if process_zero_says(bool(problem)):
    raise Held(problem or f"{directory} is in use by another run (process 0 says); {hint}")
  try:
    yield
  finally:
    if workdir_lib.is_writer():
      lock.release()
