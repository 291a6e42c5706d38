"""Files in the run directory, written so that a crash never leaves one looking complete.

Every file is written to a temporary name and renamed into place; ``summary.json`` is written last
and is the mark of a finished run. On multi-host runs only process 0 writes.

Paths go through ``etils.epath``, so a workdir (or ``config.stage_dir``) may be a local folder or
a Cloud Storage folder (``gs://bucket/run``; epath needs ``gcsfs`` or TensorFlow for it). On an
object store a file is one object, written whole in one request: it is already atomic, so it is
written in place instead of to a temporary name (a rename there is a copy and a delete).

``config.json`` holds the run's config. A rerun with the same config resumes (or finds the run
finished); a rerun with another config is refused unless ``on_config_change`` says how:
``resume`` continues the stored run with its stored config, ``restart`` discards the run's
results and runs the new config (trained stages are kept: their folders are keyed by everything
that determines them, so a stage of the new config never reuses one it should not).
"""

import contextlib
import errno
import importlib.util
import io
import json
import os
import re
import shutil
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

SUMMARY = "summary.json"
CONFIG = "config.json"
ON_CONFIG_CHANGE = ("refuse", "resume", "restart")
# What ``restart`` removes: everything a run writes except its trained stages.
RESULTS = (SUMMARY, CONFIG, "progress.json", "results.csv", "results.json", "report.json",
           "tests", "figures")


class WorkdirError(RuntimeError):
  """A workdir that cannot be used as it is; the message says what to do."""


# A full disk, and a full quota: the same for a run.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(WorkdirError):
  """A write found no space; the message names the folder, the space needed, what is kept.

  Args:
    path: the file that could not be written.
    needed: roughly how many bytes the write needed (None if unknown).
    kept: what of the run is safe ("the last good checkpoint (step 40 in ...) is kept").
  """

  def __init__(self, path: epath.PathLike, needed: int | None, kept: str = ""):
    self.path, self.needed, self.kept = epath.Path(path), needed, kept
    self.free = free_bytes(self.path.parent)
    need = f"needs about {format_bytes(needed)}" if needed else "needs more"
    free = f", {format_bytes(self.free)} free" if self.free is not None else ""
    super().__init__(
        f"no space left in {self.path.parent} (writing {self.path.name} {need}{free})"
        f"{'; ' + kept if kept else ''}; free some space (or raise the quota) and rerun the "
        "same command: it resumes where it stopped")

  def keeping(self, kept: str) -> "DiskFull":
    """The same error, saying what is kept (the first caller that knows says it)."""
    return self if self.kept else DiskFull(self.path, self.needed, kept)


def is_disk_full(e: BaseException | None) -> bool:
  """Whether ``e`` or an error it came from is a full disk or quota (libraries wrap it)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, DiskFull) or (isinstance(e, OSError) and e.errno in NO_SPACE):
      return True
    if re.search(r"No space left on device|Disk quota exceeded|RESOURCE_EXHAUSTED: .*space",
                 str(e)):
      return True
    e = e.__cause__ or e.__context__
  return False


def free_bytes(directory: epath.PathLike) -> int | None:
  """Bytes this process may still write under ``directory`` (its nearest existing parent); None
  off this machine (an object store has no such number)."""
  if not is_local(directory):
    return None
  path = os.path.abspath(os.fspath(directory))
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def format_bytes(n: int | None) -> str:
  if n is None:
    return "?"
  for unit in ("bytes", "KB", "MB", "GB"):
    if n < 1024 or unit == "GB":
      return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} TB"


def is_writable(directory: epath.PathLike) -> bool:
  """Whether this process may write in ``directory`` (its nearest existing parent): False on a
  read-only mount. Object stores say so only on a write, so they count as writable here."""
  if not is_local(directory):
    return True
  path = os.path.abspath(os.fspath(directory))
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return os.access(path, os.W_OK)


# What an interrupted write leaves: write_bytes_atomic's temporary files and an unlinked lock's
# temporary copy (locks.py). Orbax cleans its own temporary step folders.
_LEFTOVER = re.compile(r"^\..+\.tmp\d+$|^\.lock\.json\.(stale\.)?[0-9a-f]{32}$")


def remove_leftovers(directory: epath.PathLike, skip: tuple[str, ...] = ()) -> int:
  """Deletes the temporary files of interrupted writes under ``directory`` (a local one), except
  under the folders named in ``skip``; call it only while holding the folder's lock.

  Returns:
    How many files were removed.
  """
  if not is_local(directory) or not os.path.isdir(directory):
    return 0
  removed = 0
  for folder, dirs, names in os.walk(directory):
    dirs[:] = [d for d in dirs if d not in skip]
    for name in names:
      if _LEFTOVER.match(name):
        os.unlink(os.path.join(folder, name))
        removed += 1
  if removed:
    logging.info("removed %d temporary file(s) of an interrupted run in %s", removed, directory)
  return removed


def is_local(path: epath.PathLike) -> bool:
  """Whether ``path`` is on this machine's file system (not ``gs://`` or another object store)."""
  return "://" not in os.fspath(path)


def _one_line(e: BaseException) -> str:
  return " ".join(f"{type(e).__name__}: {e}".split())[:500]


def _gcs_needs() -> list[str]:
  """What orbax needs beyond epath for a gs:// checkpoint folder and is not installed."""
  try:
    found = importlib.util.find_spec("google.cloud.storage") is not None
  except ImportError:  # no google.cloud namespace at all
    found = False
  # Orbax deletes old steps on gs:// (CheckpointManager's max_to_keep) through it.
  return [] if found else ["google-cloud-storage"]


def check_usable(path: epath.PathLike, flag: str = "--workdir") -> epath.Path:
  """``path`` as an epath; a non-local one is made and proven writable before any work.

  Makes the folder, writes a probe file, reads it back and deletes it (on every host: all of
  them write checkpoints). A local path is left to the usual checks and is not created here, so
  that a run stopped by a bad config leaves no folder behind.

  Args:
    path: a workdir or stage folder: a local path, ``gs://bucket/...`` or any path epath accepts.
    flag: how the user named it, for the message.

  Returns:
    The path as an ``epath.Path``.

  Raises:
    WorkdirError: the folder cannot be used (no backend installed for its scheme, no access),
      in one line that says why.
  """
  path = epath.Path(path)
  if is_local(path):
    return path
  hint = ""
  if os.fspath(path).startswith("gs://"):
    hint = ('; gs:// needs pip install -e ".[gcs]" (gcsfs and google-cloud-storage; TensorFlow '
            "can stand in for gcsfs) and credentials that may write to the bucket (gcloud auth "
            "application-default login, or the VM's service account)")
  probe = path / f".transinv_probe.{jax.process_index()}.{os.getpid()}"
  token = f"transinv_jax probe {os.getpid()}".encode()
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(token)
    if probe.read_bytes() != token:
      raise OSError("the probe file read back differs from what was written")
    probe.unlink()
  except Exception as e:  # backends raise ImportError, OSError, auth and HTTP errors...
    raise WorkdirError(f"{flag}={path} cannot be used ({_one_line(e)}){hint}") from None
  missing = _gcs_needs() if os.fspath(path).startswith("gs://") else []
  if missing:
    raise WorkdirError(f"{flag}={path}: orbax needs {', '.join(missing)} to manage checkpoints "
                       f"on Cloud Storage{hint}")
  return path


def read_json(path: epath.PathLike, what: str) -> Any | None:
  """A JSON file the run wrote earlier, or None (with a warning) if it is missing or damaged.

  Only for files that can be made again (a test's result, a stage's record, the summary): the
  caller redoes the work when None comes back.
  """
  path = epath.Path(path)
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (ValueError, OSError) as e:
    logging.warning("%s %s is damaged (%s): it will be made again", what, path, e)
    return None


def diff(a: Any, b: Any, prefix: str = "config") -> list[str]:
  """The dotted keys whose values differ between two nested dicts."""
  if isinstance(a, dict) and isinstance(b, dict):
    return [k for key in sorted(set(a) | set(b))
            for k in diff(a.get(key), b.get(key), f"{prefix}.{key}")]
  return [] if a == b else [prefix]


def stored_config(workdir: epath.PathLike) -> dict | None:
  """The config a workdir's run was started with, or None for a new workdir."""
  path = epath.Path(workdir) / CONFIG
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise WorkdirError(
        f"--workdir={workdir}: {CONFIG} is damaged ({e}); rerun with "
        "--on_config_change=restart to start the run over (trained stages are kept), or use a "
        "new --workdir") from None


def choose_config(current: dict, workdir: epath.PathLike, on_config_change: str) -> dict:
  """The config to run in ``workdir``: ``current``, or the stored one when resuming as is.

  Reads only; nothing is written or removed (``prepare`` does that, after every check).

  Raises:
    WorkdirError: the workdir holds another config and ``on_config_change`` is ``refuse``, or
      its config.json is damaged.
  """
  if on_config_change not in ON_CONFIG_CHANGE:
    raise WorkdirError(f"--on_config_change={on_config_change}: use one of "
                       f"{', '.join(ON_CONFIG_CHANGE)}")
  if on_config_change == "restart":
    return current  # whatever is there (even a damaged config.json) is cleared by prepare
  stored = stored_config(workdir)
  if stored is None or stored == current:
    return current
  changed = diff(stored, current)
  if on_config_change == "resume":
    logging.warning("--on_config_change=resume: continuing the run in %s with its stored config; "
                    "ignored: %s", workdir, ", ".join(changed))
    return stored
  raise WorkdirError(
      f"--workdir={workdir} holds a run with a different config (changed: "
      f"{', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}); rerun with "
      "--on_config_change=resume to continue that run as it was, or --on_config_change=restart "
      "to discard its results and run this config (trained stages are kept), or use a new "
      "--workdir")


def prepare(config: dict, workdir: epath.PathLike) -> dict | None:
  """Creates the workdir for ``config`` (from ``choose_config``), clearing another config's run.

  Returns:
    The stored summary if this exact run already finished, else None.
  """
  workdir = epath.Path(workdir)
  try:
    stored = stored_config(workdir)
  except WorkdirError:
    stored = {}  # damaged: cleared below, as another config's run is
  if stored not in (None, config):
    logging.warning("--on_config_change=restart: removing the results of the previous run in %s",
                    workdir)
    if is_writer():
      for name in RESULTS:
        path = workdir / name
        if path.is_dir():
          path.rmtree()
        elif path.exists():
          path.unlink()
  if (workdir / CONFIG).exists():
    summary = read_json(workdir / SUMMARY, "the run's summary")
    if summary is not None:
      return summary
    logging.info("resuming the run in %s", workdir)
  elif is_writer():
    workdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(workdir / CONFIG, config)
  return None


def is_writer() -> bool:
  """Only process 0 writes shared files."""
  return jax.process_index() == 0


def write_bytes_atomic(path: epath.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` so that a reader sees the old file or the new one, whole.

  Args:
    path: the file: local, or on an object store (``gs://``).
    data: its new content.
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(path):
    # An object store shows an object only once its upload is complete: one write is atomic.
    path.write_bytes(data)
    return
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    _write_file(tmp, data)
  except OSError as e:
    tmp.unlink(missing_ok=True)  # never half a file left behind
    if e.errno in NO_SPACE:
      raise DiskFull(path, len(data)) from None
    raise
  os.replace(tmp, path)


def _write_file(path: epath.Path, data: bytes) -> None:
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
  try:
    _write_all(fd, data)
    os.fsync(fd)
  finally:
    os.close(fd)


def _to_builtin(x: Any) -> Any:
  if isinstance(x, (np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(f"not JSON serialisable: {type(x)}")


def write_json_atomic(path: epath.PathLike, obj: Any) -> None:
  write_bytes_atomic(path, json.dumps(obj, indent=2, default=_to_builtin).encode() + b"\n")


def write_npz_atomic(path: epath.PathLike, **arrays: np.ndarray) -> None:
  """``np.savez`` to ``path`` (local or not), atomically as ``write_bytes_atomic``."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_bytes_atomic(path, buffer.getvalue())


def read_npz(path: epath.PathLike) -> dict[str, np.ndarray]:
  """Every array of an ``.npz`` file (local or not)."""
  with epath.Path(path).open("rb") as f:
    data = f.read()  # whole: np.load seeks, which remote files may not do well
  with np.load(io.BytesIO(data)) as f:
    return {k: f[k] for k in f.files}


class MetricsWriter:
  """Appends one JSON object per line to ``metrics.jsonl``.

  Object stores (``gs://``) cannot append: there the file is written again, whole, with each
  record (one object write, so never a half line; a stage's records are a few hundred KB).

  Args:
    path: the file.
    keep_until: on a resume, the restored step: records of later steps (written by the
      interrupted run after its last checkpoint) are dropped, since the resumed run writes them
      again. None keeps everything.
  """

  def __init__(self, path: epath.PathLike, keep_until: int | None = None):
    self._path = epath.Path(path)
    self._lines = None if is_local(self._path) else []  # an object store's whole file
    if not is_writer() or not self._path.exists():
      return
    if keep_until is None and self._lines is None:
      return
    kept = [line for line in self._path.read_text().splitlines() if _record(line) is not None]
    if keep_until is not None:
      kept = [line for line in kept if _last_step(_record(line)) <= keep_until]
      write_bytes_atomic(self._path, "".join(line + "\n" for line in kept).encode())
    if self._lines is not None:
      self._lines = kept

  def write(self, **record: Any) -> None:
    if not is_writer():
      return
    line = json.dumps(record, default=_to_builtin)
    if self._lines is not None:
      self._lines.append(line)
      write_bytes_atomic(self._path, "".join(l + "\n" for l in self._lines).encode())
      return
    append(self._path, (line + "\n").encode())


def append(path: epath.PathLike, data: bytes) -> None:
  """Appends ``data`` to a local file, whole or not at all: on a failed write (a full disk) the
  file is cut back to its old length, so a reader never meets half a record."""
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    size = os.fstat(fd).st_size
    try:
      _write_all(fd, data)
    except OSError as e:
      with contextlib.suppress(OSError):
        os.ftruncate(fd, size)
      if e.errno in NO_SPACE:
        raise DiskFull(path, len(data)) from None
      raise
  finally:
    os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
  view = memoryview(data)
  while view:
    view = view[os.write(fd, view):]


def _last_step(record: dict) -> int:
  return int(np.max(record.get("step", 0)))


def _record(line: str) -> dict | None:
  """One line's record; None for a blank line or the torn last line of a killed writer."""
  try:
    record = json.loads(line)
  except ValueError:
    return None
  return record if isinstance(record, dict) else None


def read_metrics(path: epath.PathLike) -> list[dict]:
  """The records of a ``metrics.jsonl`` file."""
  return [r for line in epath.Path(path).read_text().splitlines()
          if (r := _record(line)) is not None]
