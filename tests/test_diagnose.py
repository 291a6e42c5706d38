"""configs/diagnose.py on every kind of checkpoint, its errors, and the Azulay & Weiss experiment."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import azulay_weiss
import diagnose as diagnose_config
from conftest import tiny_config
from transinv_jax import checkpoints, config_checks, models
from transinv_jax.experiments import diagnose, diagnostics, pipeline, spec, stages
from transinv_jax.models import pretrained

CANVAS, ITEM = 32, 12


def _model_config(name="vgg11"):
  config = models.default_config()
  config.name, config.width, config.dtype = name, 1 / 16, "float32"
  return config


def _stage_config(data_dir) -> dict:
  """A stage's stored config (as pipeline exports it), at test sizes."""
  data = spec.base_config("").data
  data.update(dataset="mnist", data_dir=str(data_dir), canvas_size=CANVAS, item_size=ITEM,
              max_train_items=500)
  return {"seed": 0, "num_seeds": 1, "data": data.to_dict(),
          "model": _model_config().to_dict(), "train": spec.base_config("").train.to_dict()}


def _export_stage(root: pathlib.Path, data_dir, seeds=(0, 1)) -> pathlib.Path:
  """A stage folder with random networks for ``seeds`` (export/seed<s> + done.json)."""
  stored = _stage_config(data_dir)
  model = models.build_model(_model_config(), 10)
  stage = root / "stages" / "vanilla-0123456789"
  for seed in seeds:
    variables = model.init(jax.random.key(seed), jnp.zeros((1, CANVAS, CANVAS, 3)))
    checkpoints.export_variables(stage / "export" / f"seed{seed}", variables, stored)
  (stage / "done.json").write_text(json.dumps({"mean": [0.1] * 3, "std": [0.3] * 3}))
  return stage


def _config(checkpoint, **eval_overrides):
  config = diagnose_config.get_config("smoke")
  config.checkpoint = str(checkpoint)
  config.eval.invariance_items = 12
  config.eval.max_shift = 6
  config.eval.consistency_offset = 6
  config.eval.items_per_batch = 12
  config.eval.update(eval_overrides)
  return config


def test_stage_folder_every_seed(tmp_path, shared_data_dir):
  stage = _export_stage(tmp_path / "run", shared_data_dir)
  summary = diagnose.run(_config(stage), str(tmp_path / "diag"))
  report = json.loads((tmp_path / "diag" / "report.json").read_text())
  assert report["seeds"] == [0, 1] and report["origin"]["kind"] == "stage"
  assert report["dataset"] == "mnist" and report["reference_class"] == "label"
  for key in diagnostics.SCALARS:
    assert len(report[f"{key}_per_seed"]) == 2
    assert report[f"{key}_std"] >= 0
  assert 0 <= report["consistency"] <= 1 and 0 <= report["top1_change_rate"] <= 1
  assert 0 <= report["jagged_fraction"] <= 1 and 0 <= report["mad"] <= 1
  # Every conv and fc layer, in network order, each with its stride and measures.
  layers = report["layers"]
  assert layers[:3] == ["conv1_1", "conv2_1", "conv3_1"] and layers[-2:] == ["fc6", "fc7"]
  assert report["strides"][:3] == [1, 2, 4]
  assert len(report["nonshiftability"]) == len(layers) == len(report["equivariance_error"])
  # Zero padding around a non-zero (normalised black) background adds edge responses that stay
  # put as the item moves (Kayhan & van Gemert): conv1_1 is close to equivariant, not exactly.
  assert 0 < report["equivariance_error"][0] < 0.5
  with np.load(tmp_path / "diag" / "tests" / "invariance" / "invariance.npz") as f:
    assert f["correct_probability"].shape == (2, 12, 7)       # seeds, items, shifts 0..6
    assert f["feature_sums"].shape[:3] == (2, 12, 7)
    assert str(f["feature_layer"]) == "conv5_2"
    np.testing.assert_array_equal(f["shifts"][:, 0], 0)       # the path goes down (y)
    assert f["similarity"].shape[0] == 2
  for name in diagnostics.FIGURES:
    assert (tmp_path / "diag" / "tests" / "invariance" / name).is_file()
  assert summary["figures"] == sorted(f"tests/invariance/{n}" for n in diagnostics.FIGURES)
  # The run is finished: the same command does nothing more.
  again = diagnose.run(_config(stage), str(tmp_path / "diag"))
  assert again == json.loads((tmp_path / "diag" / "summary.json").read_text())


def test_export_folder_and_run_directory(tmp_path, shared_data_dir):
  stage = _export_stage(tmp_path / "run", shared_data_dir, seeds=(3,))
  one = diagnose.load_network(_config(stage / "export" / "seed3"), "cpu")
  assert one.seeds == [3] and one.origin["kind"] == "export" and one.num_classes == 10
  np.testing.assert_allclose(one.mean, 0.1)                   # the stage's own normalisation
  whole = diagnose.load_network(_config(tmp_path / "run"), "cpu")
  assert whole.seeds == [3] and whole.flat.model.name == "vgg11"
  assert whole.flat.data.canvas_size == CANVAS                # from the stored config
  other = _config(tmp_path / "run")
  other.data.dataset = "fashion_mnist"                         # measured on other items
  network = diagnose.load_network(other, "cpu")
  assert network.flat.data.dataset == "fashion_mnist" and network.mean is None


def test_weights_file_with_its_own_classes(tmp_path, shared_data_dir):
  """A torchvision file keeps its 7 outputs; MNIST's 10 classes are not its own, so each item's
  reference class is the network's top-1 at the start of the path."""
  model = models.build_model(_model_config(), 7)
  variables = model.init(jax.random.key(5), jnp.zeros((1, CANVAS, CANVAS, 3)))
  path = tmp_path / "net.pth"
  pretrained.save_torchvision(variables, "vgg11", path)
  config = _config(path)
  config.model.name, config.model.width = "vgg11", 1 / 16
  config.data.update(dataset="mnist", data_dir=str(shared_data_dir), canvas_size=CANVAS,
                     item_size=ITEM, max_train_items=500)
  diagnose.run(config, str(tmp_path / "diag"))
  report = json.loads((tmp_path / "diag" / "report.json").read_text())
  assert report["num_outputs"] == 7 and report["origin"]["kind"] == "weights"
  assert report["reference_class"].startswith("top-1")
  with np.load(tmp_path / "diag" / "tests" / "invariance" / "invariance.npz") as f:
    # The reference class is the prediction at shift 0, so there it is always the top-1.
    np.testing.assert_array_equal(f["labels"][0], f["predictions"][0][:, 0])


@pytest.mark.parametrize("setup,match", [
    (lambda tmp, data: "", "config.checkpoint is empty"),
    (lambda tmp, data: str(tmp / "missing.pth"), "missing.pth'.*no such file"),
    (lambda tmp, data: str(tmp), "is not an export folder.*a stage folder"),
    (lambda tmp, data: str(_two_stages(tmp, data)), "more than one finished stage.*--config.stage"),
])
def test_bad_checkpoints_leave_no_workdir(tmp_path, shared_data_dir, setup, match):
  config = _config("")
  config.checkpoint = setup(tmp_path, shared_data_dir)
  with pytest.raises((config_checks.ConfigError, checkpoints.CheckpointError), match=match):
    diagnose.run(config, str(tmp_path / "diag"))
  assert not (tmp_path / "diag").exists()


def _two_stages(tmp, data_dir):
  _export_stage(tmp / "run", data_dir, seeds=(0,))
  second = tmp / "run" / "stages" / "other-abcdef0123"
  second.mkdir(parents=True)
  (second / "export").mkdir()
  return tmp / "run"


def test_model_keys_apply_to_weights_files_only(tmp_path, shared_data_dir):
  stage = _export_stage(tmp_path / "run", shared_data_dir, seeds=(0,))
  config = _config(stage)
  config.model.padding = "full"
  with pytest.raises(config_checks.ConfigError, match="config.model.padding is set.*weights "
                     "files only"):
    diagnose.run(config, str(tmp_path / "diag"))


def test_a_path_longer_than_the_canvas_allows(tmp_path, shared_data_dir):
  stage = _export_stage(tmp_path / "run", shared_data_dir, seeds=(0,))
  with pytest.raises(config_checks.ConfigError, match="config.eval.max_shift=40.*use 1..20"):
    diagnose.run(_config(stage, max_shift=40), str(tmp_path / "diag"))
  assert not (tmp_path / "diag").exists()


def test_weights_file_needs_a_dataset(tmp_path):
  path = tmp_path / "net.pth"
  path.write_bytes(b"")
  with pytest.raises(config_checks.ConfigError, match="set --config.data.dataset"):
    diagnose.load_network(_config(path), "cpu")


def test_path_base_centres_the_path():
  assert diagnostics.path_base(64, 16, "y", 32) == (32, 16)
  assert diagnostics.path_base(64, 16, "x", 10) == (27, 32)
  assert diagnostics.path_base(64, 16, "diagonal", 48) == (8, 8)   # the whole range
  with pytest.raises(ValueError, match="at most 48 px"):
    diagnostics.path_base(64, 16, "y", 49)


# -- Azulay & Weiss: max pooling against 6x6 average pooling


def test_azulay_weiss_config():
  config = azulay_weiss.get_config()
  assert sorted(config.tests) == ["avg", "max"]
  avg = stages.stage_config(config, "avg")
  assert avg.model.pooling == "avg" and avg.model.avg_pool_size == 6
  assert stages.stage_config(config, "max").model.pooling == "max"
  assert {t.kind for t in config.tests.values()} == {"invariance"}
  assert sorted(azulay_weiss.get_config("imagenet").stages) == ["imagenet"]


def test_azulay_weiss_pipeline(tmp_path, shared_data_dir):
  del shared_data_dir
  config = tiny_config("smoke", "azulay_weiss")
  config.eval.invariance_items = 8
  config.eval.max_shift = 8
  config.eval.consistency_offset = 8
  config.eval.items_per_batch = 8
  summary = pipeline.run(config, str(tmp_path))
  records = {r["test"]: r for r in summary["results"]}
  assert sorted(records) == ["avg", "max"]
  for name in ("feature_sums.png", "invariance_by_layer.png", "invariance_measures.png"):
    assert f"figures/{name}" in summary["figures"]
  result = json.loads((tmp_path / "tests" / "avg" / "result.json").read_text())
  assert result["network"] == "avg" and result["feature_layer"] == "conv5_2"
  assert len(result["nonshiftability"]) == len(result["layers"])
  header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
  assert {"consistency", "jaggedness", "mad", "top1_change_rate"} <= set(header)


def test_azulay_weiss_imagenet_network_as_it_is(tmp_path, shared_data_dir):
  """The ImageNet arm keeps the file's 1000-way output layer (no fresh 10-way head) and scores
  every measure against the network's own top-1 at the start of the path, as diagnose does."""
  del shared_data_dir
  config = tiny_config("imagenet,smoke", "azulay_weiss")
  config.eval.update(invariance_items=8, max_shift=4, consistency_offset=4, items_per_batch=8)
  # A torchvision-layout file of the tiny VGG11 (1/16 width) stands in for ImageNet's VGG16.
  # Random weights of the model's shapes, without compiling its init.
  shapes = pretrained.abstract_target(models.build_model(config.model, 1000), (1, 32, 32, 3))
  rng = np.random.default_rng(3)
  variables = jax.tree.map(lambda v: rng.normal(0, 0.1, v.shape).astype(np.float32), shapes)
  path = tmp_path / "vgg11.pth"
  pretrained.save_torchvision(variables, "vgg11", path)
  config.imagenet_weights = str(path)
  pipeline.run(config, str(tmp_path / "run"))
  stage, = (tmp_path / "run" / "stages").glob("imagenet-*")
  got = checkpoints.load_exported(stage / "export" / "seed0")[0]["params"]
  for leaf in ("kernel", "bias"):  # the file's own head, not a fresh one
    np.testing.assert_allclose(got["logits"][leaf], variables["params"]["logits"][leaf],
                               atol=1e-6)
  assert got["logits"]["kernel"].shape[-1] == 1000
  assert json.loads((stage / "done.json").read_text())["num_classes"] == 1000
  result = json.loads((tmp_path / "run" / "tests" / "imagenet" / "result.json").read_text())
  assert result["reference_class"].startswith("top-1") and result["num_classes"] == 10
  with np.load(tmp_path / "run" / "tests" / "imagenet" / "invariance.npz") as f:
    # The reference is the top-1 at shift 0: no change there; ImageNet classes, not 0..9.
    np.testing.assert_array_equal(f["labels"], f["predictions"][:, :, 0])
    assert (f["labels"] >= 10).any()


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO_ROOT, subprocess_env  # pylint: disable=g-import-not-at-top
  proc = subprocess.run(
      [sys.executable, "-m", "transinv_jax.main", "--config=configs/diagnose.py:smoke",
       f"--workdir={tmp_path / 'diag'}", f"--config.checkpoint={tmp_path / 'nothing'}"],
      cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(
      f"error: config.checkpoint='{tmp_path / 'nothing'}' is not an export folder")
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "diag").exists()
