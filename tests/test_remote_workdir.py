"""Workdirs on Cloud Storage (gs://): every file of a run goes through etils.epath, and a bucket
that cannot be used stops the run before any work, in one line, without a local ``gs:`` folder.

CI has no bucket, so ``fake_gcs`` maps gs:// onto a local folder at the two places where files
are written: epath (``etils.epath.testing.mock_epath``: everything of transinv_jax, and orbax's
folders, metadata and commit files) and tensorstore, which writes orbax's arrays with its own GCS
driver, bypassing epath (its kvstore spec is pointed at the same folder). Everything else runs as
on a real bucket: the package and orbax see gs:// paths and take their object-store branches
(direct writes instead of renames, rewritten metrics.jsonl, orbax's commit-file steps).
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing
from orbax.checkpoint._src.path import gcs_utils

from conftest import REPO_ROOT, subprocess_env, tiny_config
from transinv_jax import checkpoints, workdir
from transinv_jax.experiments import pipeline

BUCKET = "gs://fake-bucket"


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """gs://<bucket>/<path> is <root>/<bucket>/<path>; yields root and the gs:// paths touched."""
  root = tmp_path / "gcs"
  root.mkdir()
  touched = set()

  def local(path):
    path = os.fspath(path)
    if path.startswith("gs://"):
      touched.add(path)
      return str(root / path[len("gs://"):])
    return path

  def remote(path):
    path = os.fspath(path)
    return "gs://" + path[len(str(root)) + 1:] if path.startswith(f"{root}/") else path

  def mapped(fn, path, *args, **kwargs):
    return fn(local(path), *args, **kwargs)

  def mapped_pair(fn, path, dst, **kwargs):
    return fn(local(path), local(dst), **kwargs)

  def glob(fn, pattern):
    return [remote(p) for p in fn(local(pattern))]

  def walk(fn, top, **kwargs):
    for folder, dirs, files in fn(local(top), **kwargs):
      yield remote(folder), dirs, files

  # With TensorFlow installed epath sends gs:// to tf.io.gfile, past mock_epath's backend table.
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  # Orbax's array data: tensorstore's "gcs" driver, here its "file" driver on the same folder.
  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs",
                      lambda path: {"driver": "file", "path": local(path)})
  # Orbax asks the bucket (google-cloud-storage) whether it has hierarchical folders before it
  # deletes an old step; a fake bucket has none. The preflight then need not ask for the client.
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
  monkeypatch.setattr(workdir, "_gcs_needs", lambda: [])
  with epath_testing.mock_epath(
      open=mapped, exists=mapped, isdir=mapped, listdir=mapped, makedirs=mapped, mkdir=mapped,
      remove=mapped, rmtree=mapped, stat=mapped, glob=glob, walk=walk, rename=mapped_pair,
      replace=mapped_pair, copy=mapped_pair):
    yield root, touched


def _files(folder: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_run_in_a_gs_workdir_writes_everything_there_and_resumes(fake_gcs, shared_data_dir,
                                                                    tmp_path, monkeypatch, caplog):
  root, touched = fake_gcs
  config = tiny_config()
  config.data.data_dir = str(shared_data_dir.resolve())
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)  # where pathlib would have made gs:/fake-bucket/run
  config.train.max_steps = 15  # checkpoints at 5, 10, 15: orbax deletes step 5 (max_to_keep 2)
  config.train.checkpoint_every = 5
  config.train.log_every = 5
  summary = pipeline.run(config, f"{BUCKET}/run")
  run = root / "fake-bucket" / "run"
  files = _files(run)
  stage = next(p for p in (run / "stages").iterdir()).name
  for name in ("config.json", "progress.json", "results.csv", "results.json", "summary.json",
               "figures/heatmaps.png", "figures/accuracy_bars.png",
               f"stages/{stage}/stage.json", f"stages/{stage}/done.json",
               f"stages/{stage}/metrics.jsonl", f"stages/{stage}/export/seed0/variables.npz",
               f"stages/{stage}/export/seed0/config.json",
               f"stages/{stage}/checkpoints_digests/15.json",
               "tests/vanilla_mnist/sweep.npz", "tests/vanilla_mnist/heatmap.png",
               "tests/vanilla_mnist/result.json"):
    assert name in files, name
  # Orbax's arrays (tensorstore) and its gs:// commit marker, not a renamed temporary folder.
  assert any(f.startswith(f"stages/{stage}/checkpoints/15/") and "ocdbt" in f for f in files)
  assert f"stages/{stage}/checkpoints/15/commit_success.txt" in files
  assert not [f for f in files if "/checkpoints/5/" in f or f.endswith("_digests/5.json")]
  assert any(f.startswith(f"stages/{stage}/tensorboard/events.out.tfevents.") for f in files)
  # Written in place: no temporary files, no probe left; nothing local (no ./gs: folder).
  assert not [f for f in files if ".tmp" in f or "probe" in f], files
  assert not list(cwd.iterdir())
  assert f"{BUCKET}/run/config.json" in touched
  # The object-store branch of metrics.jsonl (rewritten whole) keeps every record.
  records = workdir.read_metrics(epath.Path(f"{BUCKET}/run/stages/{stage}/metrics.jsonl"))
  assert [r["step"] for r in records] == [[5], [10], [15]]
  assert summary["results"][0]["test_items"] == 40
  ckpts = checkpoints.Checkpoints(f"{BUCKET}/run/stages/{stage}/checkpoints")
  assert ckpts.all_steps() == [10, 15] and ckpts.check(15) is None
  ckpts.close()

  # A crash after the last checkpoint: the rerun restores it from the bucket (orbax through
  # tensorstore) and makes the same results.
  before = workdir.read_npz(run / "tests/vanilla_mnist/sweep.npz")
  for name in (f"stages/{stage}/done.json", "summary.json"):
    (run / name).unlink()
  for name in (f"stages/{stage}/export", "tests"):
    epath.Path(f"{BUCKET}/run/{name}").rmtree()
  caplog.set_level("INFO")
  pipeline.run(config, f"{BUCKET}/run")
  assert "resuming from the checkpoint of step 15" in caplog.text
  after = workdir.read_npz(epath.Path(f"{BUCKET}/run/tests/vanilla_mnist/sweep.npz"))
  np.testing.assert_array_equal(before["correct"], after["correct"])
  assert not list(cwd.iterdir())


def test_an_unusable_bucket_stops_main_in_one_line_without_a_local_folder(tmp_path):
  # Whatever this machine has (no gcsfs, no credentials, no network, no such bucket), the run
  # stops before loading any data.
  proc = subprocess.run(
      [sys.executable, "-m", "transinv_jax.main", f"--config={REPO_ROOT / 'configs/exp1.py'}:smoke",
       "--workdir=gs://nonexistent-bucket-xyz/run"], cwd=tmp_path,
      env=subprocess_env(PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert errors[0].startswith("error: --workdir=gs://nonexistent-bucket-xyz/run")
  assert "Traceback" not in proc.stderr and "training on" not in proc.stderr
  assert not list(tmp_path.iterdir())


def test_a_usable_bucket_without_orbax_s_gcs_client_is_refused(fake_gcs, monkeypatch):
  monkeypatch.setattr(workdir, "_gcs_needs", lambda: ["google-cloud-storage"])
  with pytest.raises(workdir.WorkdirError, match=r"^--workdir=gs://b/run: orbax needs "
                     r"google-cloud-storage.*pip install -e \"\.\[gcs\]\""):
    workdir.check_usable("gs://b/run")
  assert not list((fake_gcs[0] / "b" / "run").iterdir())  # the probe is gone


def test_a_missing_backend_is_named(monkeypatch, tmp_path):
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # epath's fsspec backend
  try:
    import gcsfs  # pylint: disable=g-import-not-at-top,unused-import
    pytest.skip("gcsfs is installed: the no-backend message needs it missing")
  except ImportError:
    pass
  config = tiny_config()
  config.stage_dir = "gs://b/stages"
  with pytest.raises(workdir.WorkdirError,
                     match=r"^--config.stage_dir=gs://b/stages cannot be used \(ImportError: "
                     "Please install gcsfs[^\n]*$"):
    pipeline.run(config, str(tmp_path / "run"))
  assert not list(tmp_path.iterdir())  # no local workdir
  assert not pathlib.Path("gs:").exists()


def test_local_paths_keep_renames_and_appends(tmp_path):
  path = tmp_path / "a" / "m.jsonl"
  writer = workdir.MetricsWriter(path)
  with pytest.raises(FileNotFoundError):  # local: appends, into the folder the stage made
    writer.write(step=1)
  path.parent.mkdir()
  writer.write(step=1)
  writer.write(step=2)
  workdir.MetricsWriter(path, keep_until=1)  # a resume from step 1 drops the later record
  assert workdir.read_metrics(path) == [{"step": 1}]
  workdir.write_npz_atomic(tmp_path / "x.npz", a=np.arange(3))
  np.testing.assert_array_equal(np.load(tmp_path / "x.npz")["a"], np.arange(3))
  assert workdir.check_usable(tmp_path / "new") == epath.Path(tmp_path / "new")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "x.npz"]  # not made, no temp left
