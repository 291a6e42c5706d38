"""A read-only shared stage cache (a lab's trained networks on a read-only mount) is used as it
is: finished stages are loaded without a write; a stage it lacks is trained into the run's own
folder, or refused before any work."""

import logging
import os
import pathlib
import subprocess

import pytest

from conftest import tiny_config
from transinv_jax import workdir
from transinv_jax.experiments import pipeline


def _tree(root: pathlib.Path) -> dict:
  """Every file and folder under ``root`` with its size and modification time."""
  return {os.fspath(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def read_only_cache(tmp_path_factory, shared_data_dir):
  """(the cache as written, the same folder mounted read-only)."""
  del shared_data_dir
  root = tmp_path_factory.mktemp("stage_store")
  config = tiny_config()
  config.stage_dir = str(root / "cache")
  pipeline.run(config, str(root / "lab_run"))
  mounted = root / "read_only"
  mounted.mkdir()
  for command in (["mount", "--bind", str(root / "cache"), str(mounted)],
                  ["mount", "-o", "remount,bind,ro", str(mounted)]):
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
      subprocess.run(["umount", str(mounted)], capture_output=True)
      pytest.skip(f"cannot make a read-only bind mount here ({' '.join(command)}: "
                  f"{proc.stderr.strip() or proc.returncode})")
  assert not workdir.is_writable(mounted)
  yield root / "cache", mounted
  subprocess.run(["umount", str(mounted)], check=False)


def test_finished_stages_are_used_without_a_write(read_only_cache, tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  cache, mounted = read_only_cache
  before = _tree(cache)
  config = tiny_config()
  config.stage_dir = str(mounted)
  config.eval.max_items = 16  # another experiment on the same stage
  summary = pipeline.run(config, str(tmp_path / "run"), on_missing_stage="refuse")
  assert summary["results"][0]["test_items"] == 16
  assert "finished earlier, loaded from " + str(mounted) in caplog.text
  assert _tree(cache) == before
  assert not (tmp_path / "run" / "stages").exists()


def test_a_stage_the_cache_lacks_is_refused_or_trained_into_the_run(read_only_cache, tmp_path):
  cache, mounted = read_only_cache
  before = _tree(cache)
  config = tiny_config()
  config.stage_dir = str(mounted)
  config.train.max_steps = 10  # another stage: not in the cache
  with pytest.raises(workdir.WorkdirError,
                     match=rf"--on_missing_stage=refuse: stage\(s\) vanilla_mnist not finished "
                     rf"in {mounted}; rerun with --on_missing_stage=train to train them into "
                     rf"{tmp_path / 'run' / 'stages'}"):
    pipeline.run(config, str(tmp_path / "run"), on_missing_stage="refuse")
  assert not (tmp_path / "run").exists()  # refused before any work
  pipeline.run(config, str(tmp_path / "run"))
  stage, = (tmp_path / "run" / "stages").iterdir()
  assert (stage / "done.json").is_file() and (stage / "export" / "seed0").is_dir()
  assert not (stage / "lock.json").exists()
  assert _tree(cache) == before
