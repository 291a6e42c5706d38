"""Files in the run directory, written so that a crash never leaves one looking complete.

Every file is written to a temporary name and renamed into place; ``summary.json`` is written last
and is the mark of a finished run. On multi-host runs only process 0 writes.

``config.json`` holds the run's config. A rerun with the same config resumes (or finds the run
finished); a rerun with another config is refused unless ``on_config_change`` says how:
``resume`` continues the stored run with its stored config, ``restart`` discards the run's
results and runs the new config (trained stages are kept: their folders are keyed by everything
that determines them, so a stage of the new config never reuses one it should not).
"""

import json
import os
import pathlib
import shutil
from typing import Any

import jax
import numpy as np

from absl import logging

SUMMARY = "summary.json"
CONFIG = "config.json"
ON_CONFIG_CHANGE = ("refuse", "resume", "restart")
# What ``restart`` removes: everything a run writes except its trained stages.
RESULTS = (SUMMARY, CONFIG, "progress.json", "results.csv", "results.json", "report.json",
           "tests", "figures")


class WorkdirError(RuntimeError):
  """A workdir that cannot be used as it is; the message says what to do."""


def read_json(path: pathlib.Path, what: str) -> Any | None:
  """A JSON file the run wrote earlier, or None (with a warning) if it is missing or damaged.

  Only for files that can be made again (a test's result, a stage's record, the summary): the
  caller redoes the work when None comes back.
  """
  path = pathlib.Path(path)
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


def stored_config(workdir: pathlib.Path) -> dict | None:
  """The config a workdir's run was started with, or None for a new workdir."""
  path = pathlib.Path(workdir) / CONFIG
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise WorkdirError(
        f"--workdir={workdir}: {CONFIG} is damaged ({e}); rerun with "
        "--on_config_change=restart to start the run over (trained stages are kept), or use a "
        "new --workdir") from None


def choose_config(current: dict, workdir: pathlib.Path, on_config_change: str) -> dict:
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


def prepare(config: dict, workdir: pathlib.Path) -> dict | None:
  """Creates the workdir for ``config`` (from ``choose_config``), clearing another config's run.

  Returns:
    The stored summary if this exact run already finished, else None.
  """
  workdir = pathlib.Path(workdir)
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
          shutil.rmtree(path)
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


def write_bytes_atomic(path: pathlib.Path, data: bytes) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _to_builtin(x: Any) -> Any:
  if isinstance(x, (np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, np.generic):
    return x.item()
  raise TypeError(f"not JSON serialisable: {type(x)}")


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  write_bytes_atomic(path, json.dumps(obj, indent=2, default=_to_builtin).encode() + b"\n")


def write_npz_atomic(path: pathlib.Path, **arrays: np.ndarray) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


class MetricsWriter:
  """Appends one JSON object per line to ``metrics.jsonl``.

  Args:
    path: the file.
    keep_until: on a resume, the restored step: records of later steps (written by the
      interrupted run after its last checkpoint) are dropped, since the resumed run writes them
      again. None keeps everything.
  """

  def __init__(self, path: pathlib.Path, keep_until: int | None = None):
    self._path = pathlib.Path(path)
    if keep_until is not None and self._path.exists() and is_writer():
      kept = [line for line in self._path.read_text().splitlines()
              if line.strip() and _last_step(json.loads(line)) <= keep_until]
      write_bytes_atomic(self._path, "".join(line + "\n" for line in kept).encode())

  def write(self, **record: Any) -> None:
    if not is_writer():
      return
    line = json.dumps(record, default=_to_builtin)
    with open(self._path, "a") as f:
      f.write(line + "\n")


def _last_step(record: dict) -> int:
  return int(np.max(record.get("step", 0)))


def read_metrics(path: pathlib.Path) -> list[dict]:
  """The records of a ``metrics.jsonl`` file."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
