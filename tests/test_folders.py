"""Images from class folders (config.data.source="folder"): the reader, its errors, the ImageNet
folder of configs/quadrant.py and configs/azulay_weiss.py, and one run on a generated folder."""

import json
import logging
import pathlib

import numpy as np
import pytest
from PIL import Image

import azulay_weiss
import quadrant
from conftest import tiny_config
from transinv_jax import config_checks
from transinv_jax.data import folders, inputs, locations, sources
from transinv_jax.experiments import pipeline, spec, stages

CLASSES = ("cat", "dog", "eel")


def _photo(width: int, height: int, side: tuple, centre: tuple) -> Image.Image:
  """An RGB image: ``centre`` colour in its centre square, ``side`` outside it."""
  pixels = np.empty((height, width, 3), np.uint8)
  pixels[:] = side
  lo = (max(width, height) - min(width, height)) // 2
  if width >= height:
    pixels[:, lo:lo + height] = centre
  else:
    pixels[lo:lo + width] = centre
  return Image.fromarray(pixels)


def _write(path: pathlib.Path, image: Image.Image) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path)


def make_folder(root: pathlib.Path, per_class: int = 6, gray: bool = False) -> pathlib.Path:
  """``root/<class>/``: ``per_class`` images each, of several sizes (wide and tall), RGB
  JPEG and grayscale PNG (only PNG when ``gray``); class c's centre square has value 40 * (c + 1)
  in every channel, its sides 255."""
  for c, name in enumerate(CLASSES):
    value = 40 * (c + 1)
    for i in range(per_class):
      width, height = (30 + 4 * i, 20 + 2 * c) if i % 3 else (18 + c, 26 + 3 * i)
      image = _photo(width, height, (255,) * 3, (value,) * 3)
      if gray or i % 2:
        _write(root / name / f"{i:02d}.png", image.convert("L"))
      else:  # uppercase extension, as ImageNet's .JPEG
        _write(root / name / f"{i:02d}.JPEG", image)
  return root


# -- the reader


def test_classes_labels_order_and_splits(tmp_path):
  root = make_folder(tmp_path / "photos")
  images, labels, names = folders.load_folder(root, "train", size=8)
  assert names == CLASSES
  # Every 5th image of each class (index 4) is held out as test: 5 train, 1 test per class.
  assert images.shape == (15, 8, 8, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, [0, 1, 2] * 5)  # round-robin over the classes
  test_images, test_labels, _ = folders.load_folder(root, "test", size=8)
  np.testing.assert_array_equal(test_labels, [0, 1, 2])
  # The centre square only, whatever the image's size and shape, as ImageNet evaluation's resize
  # and centre crop: the sides reach only the outer ring through the filter (JPEG: within its
  # rounding).
  for image, label in zip(np.concatenate([images, test_images]), [*labels, *test_labels]):
    value = 40 * (label + 1)
    np.testing.assert_allclose(image[1:-1, 1:-1], value, atol=6)
    assert np.abs(image.astype(int) - value).max() < (255 - value) / 2
  files, _ = folders.list_folder(root, "train")
  test_files, _ = folders.list_folder(root, "test")
  assert not {f for f, _ in files} & {f for f, _ in test_files}
  assert sorted(f.name for f, _ in test_files) == ["04.JPEG"] * 3
  first, first_labels, _ = folders.load_folder(root, "train", size=8, max_items=4)
  np.testing.assert_array_equal(first, images[:4])
  np.testing.assert_array_equal(first_labels, [0, 1, 2, 0])


def test_grayscale_and_colour(tmp_path):
  gray = make_folder(tmp_path / "gray", gray=True)
  images, _, _ = folders.load_folder(gray, "train", size=6)
  assert images.shape == (15, 6, 6, 1)  # every image grayscale: one channel
  mixed, _, _ = folders.load_folder(make_folder(tmp_path / "mixed"), "train", size=6)
  assert mixed.shape[-1] == 3
  np.testing.assert_array_equal(mixed[..., 0], mixed[..., 2])  # grayscale items: equal channels
  # A transparent pixel is black (the canvas), an opaque one keeps its colour.
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., :3], rgba[:2, :, 3] = 255, 255
  _write(tmp_path / "alpha" / "a" / "0.png", Image.fromarray(rgba))
  alpha, _, _ = folders.load_folder(tmp_path / "alpha", "train", size=4)
  np.testing.assert_array_equal(alpha[0, :2], 255)
  np.testing.assert_array_equal(alpha[0, 2:], 0)
  # A 16-bit grayscale PNG keeps its top 8 bits (128 * 257 -> 128).
  _write(tmp_path / "deep" / "a" / "0.png", Image.fromarray(np.full((4, 4), 128 * 257, np.uint16)))
  deep, _, _ = folders.load_folder(tmp_path / "deep", "train", size=2)
  np.testing.assert_array_equal(deep, np.full((1, 2, 2, 1), 128))


def test_train_and_test_folders(tmp_path):
  root = tmp_path / "split"
  make_folder(root / "train", per_class=2)
  make_folder(root / "val", per_class=1)
  train, train_labels, names = folders.load_folder(root, "train", size=4)
  _, test_labels, test_names = folders.load_folder(root, "test", size=4)
  assert names == test_names == CLASSES
  assert len(train) == 6 and list(test_labels) == [0, 1, 2]  # as given, nothing held out
  np.testing.assert_array_equal(train_labels, [0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("layout,split,match", [
    ({}, "train", "is not a folder"),
    ({"loose.png": 1}, "train", "no class folders .*one subfolder per class"),
    ({"a/0.png": 1, "b/notes.txt": 0}, "train", r"class folder\(s\) .*b hold no"),
    ({"a/0.png": 4}, "test", "no test image .*fewer than 5"),
    ({"train/a/0.png": 1, "test/b/0.png": 1}, "train", "different class folders"),
    ({"a/0.png": 1, "a/1.png": -1}, "train", "cannot read .*1.png"),
])
def test_bad_folders(tmp_path, layout, split, match):
  root = tmp_path / "bad"
  for name, count in layout.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if count == 0:
      path.write_text("not an image")
    elif count < 0:
      path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    else:
      for i in range(count):
        Image.new("L", (3, 3)).save(path.with_name(f"{i}{path.suffix}"))
  with pytest.raises(sources.DataError, match=match):
    folders.load_folder(root if layout else tmp_path / "missing", split, size=4)


def test_sources_and_config_checks(tmp_path):
  root = make_folder(tmp_path / "photos")
  items = sources.load_items("folder", "test", source="folder", folder=str(root), folder_size=5)
  assert items.num_classes == 3 and items.class_names == CLASSES and items.images.shape[1] == 5
  assert sources.class_names("folder", str(root)) == CLASSES
  with pytest.raises(sources.DataError, match="both set to 'folder'"):
    sources.load_items("mnist", "train", source="folder", folder=str(root), folder_size=5)
  with pytest.raises(sources.DataError, match="config.data.folder is empty"):
    sources.load_items("folder", "train", source="folder", folder_size=5)
  base = spec.base_config("")
  base.model.update(name="vgg11", width=1 / 16)
  base.data.update(dataset="folder", source="folder", folder=str(root), canvas_size=32,
                   item_size=12)
  config_checks.check_config(base, 1)
  for overrides, match in (
      ({"folder": str(tmp_path / "nowhere")}, "config.data.folder='.*nowhere' is not a folder"),
      ({"dataset": "mnist"}, "config.data.source='folder' with config.data.dataset='mnist'"),
      ({"folder_size": -1}, "config.data.folder_size=-1")):
    bad = spec.base_config("")
    bad.update(base.to_dict())
    bad.data.update(overrides)
    with pytest.raises(config_checks.ConfigError, match=match):
      config_checks.check_config(bad, 1)


# -- the ImageNet folder of quadrant and azulay_weiss


@pytest.mark.parametrize("module,arg,item", [
    (quadrant, "scratch,0", 56), (azulay_weiss, "max", azulay_weiss.IMAGENET_ITEM),
    (azulay_weiss, "max,smoke", 16)])
def test_configs_read_the_imagenet_folder_or_say_they_do_not(tmp_path, caplog, module, arg,
                                                             item):
  config = module.get_config(arg)
  with caplog.at_level(logging.WARNING):
    stand_in = spec.resolve_stand_in(config)
  assert stand_in.data.source == "files" and stand_in.data.dataset == "fashion_mnist"
  assert stand_in.stand_in.startswith("fashion_mnist items stand in for")
  assert "--config.imagenet_folder" in caplog.text and "fashion_mnist items" in caplog.text
  root = make_folder(tmp_path / "val")
  config.imagenet_folder = str(root)
  resolved = spec.resolve_stand_in(config)
  assert (resolved.data.source, resolved.data.dataset, resolved.data.folder) == (
      "folder", "folder", str(root))
  assert resolved.data.item_size == item and resolved.stand_in == ""
  assert config.data.source == "files"  # the config given is left as it was
  stages.check(resolved, 1)
  # Another folder, another stage; stages of other sources keep their keys.
  stage = next(iter(resolved.stages))
  assert stages.stage_key(resolved, stage) != stages.stage_key(stand_in, stage)
  resolved.data.folder = str(tmp_path / "other")
  assert stages.stage_key(resolved, stage) != stages.stage_key(
      spec.resolve_stand_in(config), stage)
  stand_in.data.folder, stand_in.data.folder_size = "ignored", 99
  assert stages.stage_key(stand_in, stage) == stages.stage_key(
      spec.resolve_stand_in(module.get_config(arg)), stage)


def test_quadrant_runs_on_a_folder(tmp_path):
  """Quadrant ImageNet end to end on a generated folder: train/val/test accuracy recorded, the
  folder's images on the device at the item size, and no stand-in."""
  root = make_folder(tmp_path / "val")
  config = tiny_config("scratch,0,smoke", "quadrant")
  config.imagenet_folder = str(root)
  config.data.val_items = 5
  config.train.update(max_steps=10, log_every=10, checkpoint_every=10, stop_window=0)
  summary = pipeline.run(config, str(tmp_path / "run"))
  assert summary["stand_in"] == ""
  records = {r["test"]: r for r in summary["results"]}
  assert sorted(records) == ["scratch_0_test", "scratch_0_train", "scratch_0_val"]
  # 15 train images (the last 5 held out as val), 3 test images; 2 location classes.
  assert [records[f"scratch_0_{s}"]["test_items"] for s in ("train", "val", "test")] == [10, 5, 3]
  stored = json.loads((tmp_path / "run" / "config.json").read_text())
  assert stored["data"]["source"] == "folder" and stored["data"]["folder"] == str(root)
  # Stored on the host at the item size (config.data.folder_size=0): the device resize is a no-op.
  flat = stages.stage_config(spec.resolve_stand_in(config), "scratch_0")
  train = inputs.load_items(flat.data, "train", 0)
  assert train.images.shape == (10, 12, 12, 3) and train.class_names == locations.CORNERS
