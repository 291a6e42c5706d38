"""A full disk or quota stops a run with one line (the folder, the space needed, what is kept),
leaves nothing half-written, and the rerun resumes to the same bits once there is space: injected
``OSError(ENOSPC)`` at every kind of write, and a real small tmpfs where one can be mounted."""

import json
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

import faults
from conftest import REPO_ROOT, exported_variables, subprocess_env

STEPS = "--config.train.max_steps=60"  # 12 records: room for every training fault below


def _run(run_dir, cache, fault=None, extra=()):
  proc = subprocess.run(
      faults.command(f"--workdir={run_dir}", f"--jax_cache_dir={cache}", STEPS, *extra,
                     fault=fault), cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
      text=True, timeout=600)
  return proc.returncode, proc.stderr


def _assert_same_run(clean: pathlib.Path, resumed: pathlib.Path) -> None:
  a, b = exported_variables(clean), exported_variables(resumed)
  assert sorted(a) == sorted(b) and any(k.startswith("seed1/") for k in a)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  read = lambda d: [{k: v for k, v in json.loads(l).items() if k not in ("steps_per_sec",
                                                                          "eta_seconds")}
                    for l in next(d.glob("stages/*/metrics.jsonl")).read_text().splitlines()]
  assert read(clean) == read(resumed)          # each step once, in order, the same values
  results = lambda d: [{k: v for k, v in r.items() if k != "seconds"}
                       for r in json.loads((d / "results.json").read_text())]
  assert results(clean) == results(resumed)
  assert not list(resumed.rglob("*.tmp[0-9]*"))
  assert not list(resumed.rglob("*orbax-checkpoint-tmp*"))


def _one_line_stop(code: int, err: str, kept: str) -> str:
  assert code == 1, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: no space left in "), last
  assert "needs" in last and kept in last, last
  assert last.endswith("free some space (or raise the quota) and rerun the same command: it "
                       "resumes where it stopped"), last
  return last


@pytest.fixture(scope="module")
def clean(tmp_path_factory, shared_data_dir):
  del shared_data_dir
  root = tmp_path_factory.mktemp("disk_full")
  code, err = _run(root / "clean", root / "xla")
  assert code == 0, err[-3000:]
  return root


# Each fault stops one run of the sequence in one workdir; the next run resumes. Training faults
# move it on by at most nth records each (6 of 12), so each lands in training.
FAULTS = (
    ("metrics", 2, "checkpoint"), ("tensorboard", 1, "checkpoint"),
    ("checkpoint", 2, "the last good checkpoint (step"),   # the free-space check refuses it
    ("orbax", 1, "checkpoint"),                            # orbax's own write fails
    ("*_digests/*.json", 1, "checkpoint"),                 # the checkpoint's seal
    ("*/export/seed0/variables.npz", 1, "the last good checkpoint (step 60"),
    ("*/stages/*/done.json", 1, "the last good checkpoint (step 60"),
    ("*/tests/*/result.json", 1, "every finished stage and test is kept"),
    ("*/figures/*", 1, "every finished stage and test is kept"),
    ("*/results.csv", 1, "every finished stage and test is kept"),
    ("*/summary.json", 1, "every finished stage and test is kept"),
)


def test_a_full_disk_at_every_kind_of_write_stops_in_one_line_and_resumes(clean):
  run_dir = clean / "full"
  for where, nth, kept in FAULTS:
    code, err = _run(run_dir, clean / "xla", fault=("enospc", where, nth))
    assert f"FAULT enospc {where}" in err, (where, err[-3000:])
    last = _one_line_stop(code, err, kept)
    assert "Traceback" not in err, (where, err[-3000:])
    # Nothing half-written: the failed file's temporary copy is gone, the summary not written.
    assert not list(run_dir.rglob("*.tmp[0-9]*")), where
    assert not (run_dir / "summary.json").exists(), (where, last)
  code, err = _run(run_dir, clean / "xla")
  assert code == 0, err[-3000:]
  _assert_same_run(clean / "clean", run_dir)


def _mount_tmpfs(path: pathlib.Path, size: int) -> None:
  path.mkdir()
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True, text=True)
  if proc.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): the "
                "injected faults above cover the same writes")


def _resize(path: pathlib.Path, size: int) -> None:
  subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def test_a_small_tmpfs_fills_and_the_rerun_resumes_once_there_is_space(clean):
  if shutil.which("mount") is None or os.geteuid() != 0:
    pytest.skip("mounting a tmpfs needs root and mount(8); the injected faults cover the writes")
  stage, = (clean / "clean" / "stages").iterdir()
  step = max(sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
             for d in (stage / "checkpoints").iterdir())
  disk = clean / "tmpfs"
  _mount_tmpfs(disk, step // 2)  # not even the first checkpoint fits: orbax's write fails
  try:
    code, err = _run(disk / "run", clean / "xla")
    _one_line_stop(code, err, "no checkpoint yet")
    # Room for one checkpoint and the small files: the free-space check refuses the second.
    _resize(disk, step + (512 << 10))
    code, err = _run(disk / "run", clean / "xla")
    last = _one_line_stop(code, err, "the last good checkpoint (step 5 in")
    assert "(writing 10 needs about" in last and "Traceback" not in err, err[-3000:]
    _resize(disk, 64 << 20)
    code, err = _run(disk / "run", clean / "xla")
    assert code == 0, err[-3000:]
    assert "resuming from the checkpoint of step 5" in err
    _assert_same_run(clean / "clean", disk / "run")
  finally:
    subprocess.run(["umount", str(disk)], check=False)
