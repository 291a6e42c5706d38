"""Files in the run directory, written so that a crash never leaves one looking complete.

Every file is written to a temporary name and renamed into place; ``summary.json`` is written last
and is the mark of a finished run. On multi-host runs only process 0 writes.
"""

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np

SUMMARY = "summary.json"


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
  """Appends one JSON object per line to ``metrics.jsonl`` (a rerun appends after a resume)."""

  def __init__(self, path: pathlib.Path):
    self._path = pathlib.Path(path)

  def write(self, **record: Any) -> None:
    if not is_writer():
      return
    line = json.dumps(record, default=_to_builtin)
    with open(self._path, "a") as f:
      f.write(line + "\n")


def read_metrics(path: pathlib.Path) -> list[dict]:
  """The records of a ``metrics.jsonl`` file."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
