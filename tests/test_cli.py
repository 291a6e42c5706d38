"""The command line: the README's smoke run end to end, rerun, resume after a crash, and errors
that stop before any work with the config key and the fix."""

import functools
import http.server
import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import REPO_ROOT, only_result, read_test_record, subprocess_env, tiny_config
from transinv_jax import checkpoints, config_checks, workdir
from transinv_jax.data import sources
from transinv_jax.experiments import pipeline, stages


def main(*args, env=None):
  return subprocess.run([sys.executable, "-m", "transinv_jax.main", *args], cwd=REPO_ROOT,
                        env=env or subprocess_env(), capture_output=True, text=True,
                        timeout=900)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, *args):
    del args


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, shared_data_dir):
  """The README's smoke command from an empty data folder, its files fetched from a mirror: the
  shared data folder served on 127.0.0.1 by this process for the module's tests."""
  workdir = tmp_path_factory.mktemp("cli") / "smoke"
  cache = workdir.parent / "xla_cache"
  data_dir = workdir.parent / "data"
  data_dir.mkdir()
  server = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(shared_data_dir)))
  threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
  env = subprocess_env(TRANSINV_JAX_DATA_MIRROR=f"http://127.0.0.1:{server.server_port}")
  env["TRANSINV_JAX_DATA"] = str(data_dir)
  args = ("--config=configs/exp1.py:smoke", f"--workdir={workdir}", f"--jax_cache_dir={cache}")
  try:
    proc = main(*args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = sorted(p.name for p in (shared_data_dir / "mnist").iterdir())
    assert sorted(p.name for p in (data_dir / "mnist").iterdir()) == served
    for name in served:
      fetched, original = data_dir / "mnist" / name, shared_data_dir / "mnist" / name
      assert fetched.read_bytes() == original.read_bytes(), name
    assert f"downloaded {env['TRANSINV_JAX_DATA_MIRROR']}/mnist/t10k-images" in proc.stderr
    yield workdir, args
  finally:
    server.shutdown()
    server.server_close()


def _stage(workdir):
  stage, = (workdir / "stages").iterdir()
  return stage


def test_smoke_run_writes_every_output(smoke_run):
  workdir, _ = smoke_run
  stage, test = _stage(workdir), workdir / "tests" / "vanilla_mnist"
  assert stage.name.startswith("vanilla_mnist-")
  for path in (workdir / "config.json", workdir / "progress.json", workdir / "results.csv",
               workdir / "results.json", workdir / "summary.json",
               workdir / "figures" / "heatmaps.png", workdir / "figures" / "accuracy_bars.png",
               stage / "stage.json", stage / "done.json", stage / "metrics.jsonl",
               stage / "checkpoints" / "400", stage / "export" / "seed0" / "variables.npz",
               stage / "export" / "seed0" / "config.json", test / "sweep.npz",
               test / "heatmap.png", test / "heatmap_interpolated.png",
               test / "heatmap_per_class.png", test / "result.json"):
    assert path.exists(), path
  summary = json.loads((workdir / "summary.json").read_text())
  row = only_result(summary)
  record = read_test_record(workdir)
  assert record["stage_stop_reason"][0] in ("accuracy", "max_steps") and record["grid"] == [7, 7]
  # Learned at the trained location (centre x=8), near chance far from it.
  along = record["accuracy_along_trained_row"]
  assert row["accuracy_at_trained_location"] == along["8"] >= 0.5
  assert along["55"] <= 0.3
  assert "vanilla_mnist,sweep,vanilla_mnist,mnist,vanilla," in (workdir / "results.csv").read_text()
  with np.load(test / "sweep.npz") as sweep:
    assert sweep["accuracy"].shape == (7, 7)
    assert sweep["class_accuracy"].shape == (7, 7, 10)
    assert sweep["correct"].shape == (1, 49, 10) and sweep["totals"].sum() == 500
    assert sweep["seed_accuracy"].shape == (1, 7, 7) and not sweep["accuracy_std"].any()
    np.testing.assert_array_equal(sweep["xs"], [8, 12, 22, 32, 42, 52, 55])
    np.testing.assert_allclose(sweep["accuracy"][3, 0], row["accuracy_at_trained_location"])
  config = json.loads((workdir / "config.json").read_text())
  assert config["data"]["canvas_size"] == 64 and config["train"]["learning_rate"] == 1e-3
  # resolved_config.json: the flat values the stage and the test ran with (config.json keeps
  # the stage's overrides only, the rest None).
  resolved = json.loads((workdir / "resolved_config.json").read_text())
  assert config["stages"]["vanilla_mnist"]["data"]["canvas_size"] is None
  ran = resolved["stages"]["vanilla_mnist"]
  assert ran["data"]["canvas_size"] == 64 and ran["data"]["dataset"] == "mnist"
  assert ran["train"]["learning_rate"] == 1e-3 and ran["parent"] == ""
  assert resolved["tests"]["vanilla_mnist"]["kind"] == "sweep"
  assert resolved["tests"]["vanilla_mnist"]["stage"] == "vanilla_mnist"
  records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == [[s] for s in range(25, 401, 25)]  # one seed
  assert records[-1]["eta_seconds"] == 0 and records[0]["eta_seconds"] > 0
  progress = json.loads((workdir / "progress.json").read_text())
  assert progress["stages_done"] == progress["stages_total"] == 1
  assert progress["tests_done"] == progress["tests_total"] == 1 and progress["now"] == "finished"


def test_rerun_of_a_finished_run_does_nothing(smoke_run):
  workdir, args = smoke_run
  before = (_stage(workdir) / "metrics.jsonl").read_text()
  proc = main(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "already holds a finished run" in proc.stderr
  assert (_stage(workdir) / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("change,key", [
    (dict(dataset="cifar10"), "config.data.dataset"),
    (dict(item_size=40), "config.data.item_size"),
    (dict(train_location="fixed", fixed_centre=(30, 16)), "config.data.fixed_centre"),
    (dict(train_location="fixed", fixed_centre=(5, 16)), "config.data.fixed_centre"),
    (dict(data_dir="/dev/null/data"), "config.data.data_dir"),
    (dict(source="hdf5"), "config.data.source"),
])
def test_bad_config_stops_before_any_work(tmp_path, change, key):
  config = tiny_config()
  config.data.update(change)
  with pytest.raises((config_checks.ConfigError, sources.DataError), match=key.replace(".", r"\.")):
    pipeline.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_batch_must_split_over_devices_and_canvas_fit_the_model(tmp_path):
  config = tiny_config()
  with pytest.raises(config_checks.ConfigError, match="config.train.batch_size"):
    stages.check(config, num_devices=5)
  config.data.canvas_size, config.data.item_size = 16, 8
  with pytest.raises(config_checks.ConfigError, match="config.data.canvas_size"):
    stages.check(config, num_devices=1)


def test_workdir_with_another_config_is_refused(tmp_path, shared_data_dir):
  (tmp_path / "run").mkdir()
  stored = json.loads(tiny_config().to_json_best_effort())
  stored["seed"] = 7
  (tmp_path / "run" / "config.json").write_text(json.dumps(stored))
  with pytest.raises(workdir.WorkdirError, match="config.seed.*--on_config_change=resume"):
    pipeline.run(tiny_config(), str(tmp_path / "run"))
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json"]


def test_cli_reports_errors_without_traceback(tmp_path):
  proc = main("--config=configs/exp1.py:smoke", f"--workdir={tmp_path / 'run'}",
              "--config.data.dataset=cifar10")
  assert proc.returncode == 1
  assert "error: config.data.dataset='cifar10' is not a known dataset" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "run").exists()
  proc = main("--config=configs/exp1.py:smoke", f"--workdir={tmp_path / 'run'}",
              "--config.train.learnin_rate=1e-3")
  assert proc.returncode != 0 and "learnin_rate" in proc.stderr
  assert not (tmp_path / "run").exists()


def test_tfds_source_end_to_end(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.data.source = "tfds"
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.max_train_items = 64
  config.train.max_steps = 10
  with tfds.testing.mock_data(num_examples=64):
    summary = only_result(pipeline.run(config, str(tmp_path / "run")))
  assert read_test_record(tmp_path / "run")["stage_steps"] == [10]
  assert summary["test_items"] == 40
  with np.load(tmp_path / "run" / "tests" / "vanilla_mnist" / "sweep.npz") as sweep:
    assert sweep["accuracy"].shape == (3, 3) and sweep["totals"].sum() == 40


def test_export_to_torchvision(smoke_run, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  workdir, _ = smoke_run
  out = tmp_path / "vgg16.pth"
  proc = subprocess.run([sys.executable, "-m", "transinv_jax.export", f"--workdir={workdir}",
                         f"--out={out}"], cwd=REPO_ROOT, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  state_dict = torch.load(out)
  variables, _ = checkpoints.load_exported(_stage(workdir) / "export" / "seed0")
  # torchvision's names; conv weights OIHW.
  assert list(state_dict)[:2] == ["features.0.weight", "features.0.bias"]
  assert "classifier.6.weight" in state_dict
  np.testing.assert_array_equal(state_dict["features.0.weight"].numpy(),
                                variables["params"]["conv1_1"]["kernel"].transpose(3, 2, 0, 1))
  proc = subprocess.run([sys.executable, "-m", "transinv_jax.export",
                         f"--workdir={tmp_path / 'none'}", f"--out={out}"], cwd=REPO_ROOT,
                        env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and "no finished stage" in proc.stderr
