"""The staged pipeline on every experiment at tiny sizes: stages trained once and reused,
fine-tuning policies, resume after an interruption, tables and figures, the ImageNet arm."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import read_test_record, tiny_config
from transinv_jax import checkpoints, models, similarity
from transinv_jax.data import inputs
from transinv_jax.experiments import pipeline, spec, stages
from transinv_jax.models import pretrained


@pytest.fixture(scope="module")
def emnist_data_dir(tmp_path_factory, shared_data_dir):
  """The shared data plus EMNIST-letters files in the official format (not in ../shared/data):
  MNIST digits stand in for the letters, labelled 1..26 as EMNIST stores them."""
  from test_sources import _write_idx  # pylint: disable=g-import-not-at-top
  from transinv_jax.data import sources  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("data")
  for folder in shared_data_dir.iterdir():
    if folder.is_dir():
      (root / folder.name).symlink_to(folder)
  digits = sources.load_items("mnist", "train", data_dir=str(shared_data_dir), max_items=3120)
  for split, part in (("train", slice(0, 2600)), ("test", slice(2600, 3120))):
    images = digits.images[part, ..., 0]
    labels = (np.arange(len(images)) % 26 + 1).astype(np.uint8)
    _write_idx(root / "emnist" / f"emnist-letters-{split}-images-idx3-ubyte.gz",
               images.transpose(0, 2, 1))
    _write_idx(root / "emnist" / f"emnist-letters-{split}-labels-idx1-ubyte.gz", labels)
  return root


def _stage_dir(workdir, name):
  found, = (workdir / "stages").glob(f"{name}-*")
  return found


def _exported(workdir, name, seed=0):
  return checkpoints.load_exported(_stage_dir(workdir, name) / "export" / f"seed{seed}")[0]


def test_exp2_pretrains_once_fine_tunes_twice_and_resumes(tmp_path, shared_data_dir):
  config = tiny_config("mnist,smoke", "exp2")
  spec.keep_tests(config, ["mnist_mnist", "mnist_leek2"], "test")
  config.finetune = "frozen_conv"
  workdir = tmp_path / "run"
  summary = pipeline.run(config, str(workdir))
  assert sorted(p.name.rsplit("-", 1)[0] for p in (workdir / "stages").iterdir()) == [
      "finetune_mnist_leek2", "finetune_mnist_mnist", "pretrain_mnist"]
  pretrain = _stage_dir(workdir, "pretrain_mnist")
  assert json.loads((pretrain / "done.json").read_text())["train_location"] == "fully_translated"
  for name in ("finetune_mnist_mnist", "finetune_mnist_leek2"):
    stage = json.loads((_stage_dir(workdir, name) / "stage.json").read_text())
    assert stage["parent"] == "pretrain_mnist" and stage["finetune"] == "frozen_conv"
  # frozen_conv: the fine-tunes' convolutions are the pretrained ones; the classifier moved.
  before = _exported(workdir, "pretrain_mnist")["params"]
  after = _exported(workdir, "finetune_mnist_leek2")["params"]
  np.testing.assert_array_equal(before["conv1_1"]["kernel"], after["conv1_1"]["kernel"])
  assert not np.allclose(before["fc6"]["kernel"], after["fc6"]["kernel"])
  assert after["logits"]["kernel"].shape[-1] == 2  # Leek2's two classes: a fresh output layer
  # Tables and figures.
  rows = (workdir / "results.csv").read_text().splitlines()
  assert rows[0].startswith("test,kind,stage,dataset,pretrain,finetune") and len(rows) == 3
  assert {r["test"] for r in summary["results"]} == {"mnist_mnist", "mnist_leek2"}
  for figure in ("normalised_accuracy_matrix.png", "normalised_accuracy_bars.png",
                 "heatmaps.png"):
    assert (workdir / "figures" / figure).stat().st_size > 0
  record = read_test_record(workdir, "mnist_leek2")
  assert record["pretrain"] == "mnist" and record["finetune"] == "leek2"
  assert record["trained_centre"] == [6, 16] and record["num_classes"] == 2

  # Interrupted during the second fine-tune: a rerun trains only that one.
  mtime = (pretrain / "done.json").stat().st_mtime_ns
  kept = read_test_record(workdir, "mnist_mnist")
  leek2 = _stage_dir(workdir, "finetune_mnist_leek2")
  for path in (leek2 / "done.json", workdir / "summary.json",
               workdir / "tests" / "mnist_leek2" / "result.json"):
    path.unlink()
  again = pipeline.run(config, str(workdir))
  assert (pretrain / "done.json").stat().st_mtime_ns == mtime
  assert read_test_record(workdir, "mnist_mnist") == kept
  assert (leek2 / "done.json").exists() and len(again["results"]) == 2
  # A workdir for another cell shares the trained stages through stage_dir.
  other = tiny_config("mnist,smoke", "exp2")
  spec.keep_tests(other, ["mnist_leek2"], "test")
  other.finetune = "frozen_conv"
  other.stage_dir = str(workdir / "stages")
  pipeline.run(other, str(tmp_path / "other"))
  assert not (tmp_path / "other" / "stages").exists()
  assert (read_test_record(tmp_path / "other", "mnist_leek2")["mean_accuracy"] ==
          read_test_record(workdir, "mnist_leek2")["mean_accuracy"])


def test_exp4_quadrants_with_class_groups(tmp_path, emnist_data_dir):
  config = tiny_config("3.2,emnist,smoke", "exp4")
  config.data.data_dir = str(emnist_data_dir)
  config.eval.max_items = 104
  summary = pipeline.run(config, str(tmp_path / "run"))
  record = read_test_record(tmp_path / "run", "c3_2")
  assert record["num_classes"] == 26 and record["condition"] == "3.2"
  assert json.loads(record["class_groups"])["upper-right only"][0] == 10
  assert (tmp_path / "run" / "figures" / "class_groups_c3_2.png").stat().st_size > 0
  assert (tmp_path / "run" / "tests" / "c3_2" / "heatmap_per_class.png").exists()
  done = json.loads((_stage_dir(tmp_path / "run", "pretrain_c3_2") / "done.json").read_text())
  assert done["train_location"] == "regions"
  assert "figures/class_groups_c3_2.png" in summary["figures"]
  # The training pixel coverage per class group, from the config: A-J everywhere, K-Z upper-right
  # only (canvas 32, items 12: centres 6..26, the quadrant's x 16..26, y 6..15).
  assert "figures/coverage_pretrain_c3_2.png" in summary["figures"]
  assert (tmp_path / "run" / "figures" / "coverage_pretrain_c3_2.png").stat().st_size > 0
  groups = summary["training_coverage"]["pretrain_c3_2"]["groups"]
  assert [(g["names"], g["region"], g["allowed_centres"]) for g in groups] == [
      ("A-J", "whole", 21 * 21), ("K-Z", "upper_right", 11 * 10)]
  assert groups[0]["spilling_centres"] == 0 and groups[1]["spilling_centres"] > 0
  (row,) = json.loads((tmp_path / "run" / "results.json").read_text())
  assert row["training_coverage"]["stage"] == "pretrain_c3_2"
  by_region = row["accuracy_by_region"]
  assert by_region["upper_right"]["names"] == "K-Z"
  assert by_region["upper_right"]["inside_centres"] == 2  # of the grid 6, 16, 25: x >= 16, y 6
  assert 0 <= by_region["upper_right"]["outside"] <= 1
  assert by_region["whole"]["outside_centres"] == 0


def test_exp3_areas_on_emnist18(tmp_path, emnist_data_dir):
  config = tiny_config("emnist18,smoke", "exp3")
  config.data.data_dir = str(emnist_data_dir)
  pipeline.run(config, str(tmp_path / "run"))
  record = read_test_record(tmp_path / "run", "emnist18")
  assert record["num_classes"] == 18 and record["trained_centre"] is None
  assert list(record["class_mean_accuracy"])[-1] == "R"
  assert (tmp_path / "run" / "figures" / "coverage_pretrain.png").stat().st_size > 0


def test_exp5_similarity_before_and_after_fine_tuning(tmp_path, shared_data_dir):
  config = tiny_config("mnist,leek2,smoke", "exp5")
  full = tiny_config("vanilla,smoke", "exp5")
  config.stages.untrained_mnist = full.stages.untrained_mnist
  config.tests.vanilla_mnist = full.tests.vanilla_mnist
  workdir = tmp_path / "run"
  pipeline.run(config, str(workdir))
  with np.load(workdir / "tests" / "after_mnist_leek2" / "similarity.npz") as f:
    layers = list(f["layers"])
    # Every conv and linear layer, the output layer last (the authors hook every Linear).
    assert layers[0] == "conv1_1" and layers[-2:] == ["fc7", "logits"]
    assert f["mean"].shape == (len(layers), 3) and f["seed_mean"].shape == (1, len(layers), 3)
    np.testing.assert_allclose(f["mean"][:, 0], 1.0, atol=1e-5)  # no displacement
    np.testing.assert_array_equal(f["displacements"], [0, 10, 19])  # grid 6, 16, 25
    after_index = f["item_index"]
  record = read_test_record(workdir, "before_mnist_leek2")
  assert record["network"] == "pretrained" and record["penultimate"] == "fc7"
  assert record["layers"][-1] == "logits" and len(record["output_similarity"]) == 3
  assert len(record["penultimate_similarity"]) == 3
  # One item per class drawn by the seed: the same items before and after fine-tuning.
  leek2 = inputs.load_items(stages.test_config(config, "before_mnist_leek2").data, "test", 0)
  drawn = similarity.item_indices(leek2.labels, 2, seed=config.seed)
  assert record["item_indices"] == {str(config.seed): drawn.tolist()} and record[
      "items_per_class"] == 1
  np.testing.assert_array_equal(after_index, [drawn])
  # Before fine-tuning the pretrained network sees the normalisation of the items' dataset
  # (Leek2's training canvases), as after fine-tuning, not that of its own pretraining (MNIST).
  after = read_test_record(workdir, "after_mnist_leek2")
  norm = record["normalisation"]
  assert norm["from"].startswith("leek2 train canvases")
  assert norm["mean"] == after["normalisation"]["mean"] and not norm["same_as_stage"]
  assert after["normalisation"]["same_as_stage"]
  pretrain = json.loads((_stage_dir(workdir, "pretrain_mnist") / "done.json").read_text())
  assert norm["stage_normalisation"]["mean"] == pretrain["mean"] != norm["mean"]
  for figure in ("similarity_by_displacement_mnist.png", "similarity_finetuning_mnist.png",
                 "similarity_layers_vanilla_mnist.png",
                 "similarity_layers_largest_displacement.png"):
    assert (workdir / "figures" / figure).stat().st_size > 0, figure
  # The untrained network was never trained.
  done = json.loads((_stage_dir(workdir, "untrained_mnist") / "done.json").read_text())
  assert done["stop_reason"] == ["untrained"] and done["steps"] == [0]


def test_fcn_cell(tmp_path, shared_data_dir):
  config = tiny_config("leek10,leek2,smoke", "fcn")
  config.model.name = "fcn"
  pipeline.run(config, str(tmp_path / "run"))
  assert _exported(tmp_path / "run", "finetune_leek10_leek2")["params"]["fc5"]["kernel"].shape[
      -1] == 31  # 500 x 1/16
  assert (tmp_path / "run" / "figures" / "normalised_accuracy_matrix.png").exists()


def test_exp1_imagenet_arm_starts_from_the_weights_file(tmp_path, shared_data_dir):
  config = tiny_config("mnist,imagenet,smoke", "exp1")
  # A torchvision-layout file of the tiny VGG11 stands in for the ImageNet VGG16.
  source = models.build_model(config.model, 1000)
  variables = jax.jit(source.init)(jax.random.key(3), jnp.zeros((1, 32, 32, 3)))
  path = tmp_path / "vgg11.pth"
  pretrained.save_torchvision(jax.device_get(variables), "vgg11", path)
  config.imagenet_weights = str(path)
  config.train.learning_rate = 1e-12  # so the trained weights are still the file's
  config.train.max_steps = 2
  pipeline.run(config, str(tmp_path / "run"))
  got = _exported(tmp_path / "run", "imagenet_mnist")["params"]
  np.testing.assert_allclose(got["conv1_1"]["kernel"], variables["params"]["conv1_1"]["kernel"],
                             atol=1e-6)
  assert got["logits"]["kernel"].shape[-1] == 10
  record = read_test_record(tmp_path / "run", "imagenet_mnist")
  assert record["arm"] == "imagenet"
  # A file that does not fit the model stops the run before any file is written.
  config.imagenet_weights = str(tmp_path / "missing.pth")
  with pytest.raises(Exception, match="missing.pth"):
    pipeline.run(config, str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()
