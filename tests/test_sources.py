"""Tests for transinv_jax.data.sources and transinv_jax.data.formats."""

import gzip
import importlib.util
import pathlib
import re
import socket
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from transinv_jax.data import download
from transinv_jax.data import formats
from transinv_jax.data import sources
from transinv_jax.data.sources import DataError


@pytest.fixture(autouse=True)
def offline(monkeypatch):
  """Publishers unreachable (a closed port: no network, and fast) and no mirror in the env."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    down = f"http://127.0.0.1:{s.getsockname()[1]}"
  for folder, files in download.PUBLISHED.items():
    monkeypatch.setitem(download.PUBLISHED, folder, {
        name: download.RemoteFile((f"{down}/{name}",), remote.md5s)
        for name, remote in files.items()})
  monkeypatch.setattr(download, "EMNIST_ARCHIVE",
                      download.RemoteFile((f"{down}/gzip.zip",), download.EMNIST_ARCHIVE.md5s))
  monkeypatch.delenv(download.MIRROR_ENV, raising=False)
  return down


def _idx_bytes(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
  return header + array.astype(np.uint8).tobytes()


def _write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  data = _idx_bytes(array)
  path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _random_items(num_items: int, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(num_items, 28, 28), dtype=np.uint8)
  return images, rng.integers(0, num_classes, size=num_items).astype(np.uint8)


def _composite(path: pathlib.Path) -> np.ndarray:
  """Independent reference for compositing over black: float maths, then rounding."""
  rgba = np.asarray(Image.open(path).convert("RGBA"), dtype=np.float64)
  return np.round(rgba[..., :3] * rgba[..., 3:] / 255).astype(np.uint8)


# Real data.


def test_real_mnist_train(shared_data_dir):
  items = sources.load_items("mnist", "train", data_dir=str(shared_data_dir))
  assert items.images.shape == (60000, 28, 28, 1)
  assert items.images.dtype == np.uint8
  assert items.labels.dtype == np.int32
  counts = np.bincount(items.labels, minlength=10)
  assert len(counts) == 10 and counts.sum() == 60000 and counts.min() > 5000
  assert abs(items.images.mean() / 255 - 0.1307) < 5e-4
  assert items.num_classes == 10
  assert items.class_names == tuple("0123456789")


def test_real_mnist_test_and_max_items(shared_data_dir):
  full = sources.load_items("mnist", "test", data_dir=str(shared_data_dir))
  assert full.images.shape == (10000, 28, 28, 1)
  assert np.bincount(full.labels).sum() == 10000
  assert full.labels[:5].tolist() == [7, 2, 1, 0, 4]  # The well-known first MNIST test labels.
  head = sources.load_items("mnist", "test", data_dir=str(shared_data_dir), max_items=100)
  assert head.images.shape == (100, 28, 28, 1)
  np.testing.assert_array_equal(head.images, full.images[:100])
  np.testing.assert_array_equal(head.labels, full.labels[:100])


def test_real_fashion_mnist(shared_data_dir):
  items = sources.load_items("fashion_mnist", "test", data_dir=str(shared_data_dir))
  assert items.images.shape == (10000, 28, 28, 1)
  assert np.bincount(items.labels).tolist() == [1000] * 10
  assert items.num_classes == 10
  assert items.class_names[0] == "T-shirt/top" and items.class_names[9] == "Ankle boot"


def test_data_dir_from_env(shared_data_dir, monkeypatch, tmp_path):
  monkeypatch.setenv(sources.DATA_DIR_ENV, str(shared_data_dir))
  assert sources.resolve_data_dir(None) == shared_data_dir
  assert sources.resolve_data_dir(str(tmp_path)) == tmp_path  # The config value wins.
  assert len(sources.load_items("mnist", "test", max_items=3).labels) == 3


def test_real_leek(shared_data_dir):
  data_dir = str(shared_data_dir)
  leek = sources.load_items("leek", "train", data_dir=data_dir)
  assert leek.images.shape == (24, 130, 130, 3)
  assert leek.images.dtype == np.uint8
  assert leek.labels.tolist() == list(range(24))
  assert leek.num_classes == 24 and leek.class_names[0] == "leek01"
  for n in (1, 15, 24):  # 15.png is stored as RGB, without alpha.
    # The published files are opaque yellow objects on white: the white surround becomes black,
    # every other pixel is kept as it is.
    original = np.asarray(Image.open(shared_data_dir / "leek" / f"{n}.png").convert("RGB"))
    item = leek.images[n - 1]
    background = (item == 0).all(-1)
    assert background[0, 0] and background[-1, -1]
    assert 0.3 < background.mean() < 0.7
    assert (original[background].min(-1) >= 235).all()
    np.testing.assert_array_equal(item[~background], original[~background])
    yellow = (item[..., 0] > 150) & (item[..., 1] > 120) & (item[..., 2] < 100)
    assert yellow.mean() > 0.2
  test_split = sources.load_items("leek", "test", data_dir=data_dir)
  np.testing.assert_array_equal(test_split.images, leek.images)
  np.testing.assert_array_equal(test_split.labels, leek.labels)

  for name, numbers, size in (("leek10", sources.LEEK10, 10), ("leek2", sources.LEEK2, 2)):
    subset = sources.load_items(name, "train", data_dir=data_dir)
    assert len(numbers) == size and subset.images.shape == (size, 130, 130, 3)
    assert subset.labels.tolist() == list(range(size)) and subset.num_classes == size
    np.testing.assert_array_equal(subset.images, leek.images[np.array(numbers) - 1])
    assert subset.class_names == tuple(f"leek{n:02d}" for n in numbers)
  assert not set(sources.LEEK10) & set(sources.LEEK2)
  assert set(sources.LEEK10) | set(sources.LEEK2) <= set(range(1, 25))


# Synthetic files in the official formats.


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip(tmp_path, suffix):
  images, labels = _random_items(7, 10)
  _write_idx(tmp_path / "mnist" / f"t10k-images-idx3-ubyte{suffix}", images)
  _write_idx(tmp_path / "mnist" / f"t10k-labels-idx1-ubyte{suffix}", labels)
  read = formats.read_idx(tmp_path / "mnist" / f"t10k-images-idx3-ubyte{suffix}")
  np.testing.assert_array_equal(read, images)
  items = sources.load_items("mnist", "test", data_dir=str(tmp_path))
  np.testing.assert_array_equal(items.images[..., 0], images)
  np.testing.assert_array_equal(items.labels, labels)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00\x08",  # Shorter than the magic number.
        b"\x08\x03\x00\x00" + bytes(100),  # Little-endian magic.
        bytes([0, 0, 0x07, 1]) + struct.pack(">i", 3) + bytes(3),  # Unknown type byte.
        bytes([0, 0, 0x08, 3]) + struct.pack(">ii", 2, 28),  # Header cut short.
        bytes([0, 0, 0x08, 3]) + struct.pack(">iii", 2, 28, 28) + bytes(28 * 28),  # Data cut short.
    ],
)
def test_idx_corrupt_names_file(tmp_path, raw):
  path = tmp_path / "bad-idx3-ubyte.gz"
  path.write_bytes(gzip.compress(raw))
  with pytest.raises(DataError, match=re.escape(str(path))):
    formats.read_idx(path)


def test_idx_bad_gzip_names_file(tmp_path):
  path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
  _write_idx(path, np.zeros((2, 28, 28), np.uint8))
  path.write_bytes(path.read_bytes()[:20])
  _write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(2, np.uint8))
  with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
    sources.load_items("mnist", "test", data_dir=str(tmp_path))


def test_mismatched_counts_and_labels(tmp_path):
  _write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8))
  _write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(2, np.uint8))
  with pytest.raises(DataError, match="3 images but 2 labels"):
    sources.load_items("mnist", "test", data_dir=str(tmp_path))
  _write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 10], np.uint8))
  with pytest.raises(DataError, match="outside 0..9"):
    sources.load_items("mnist", "test", data_dir=str(tmp_path))


def test_kmnist_npz(tmp_path):
  images, labels = _random_items(12, 10, seed=1)
  (tmp_path / "kmnist").mkdir()
  np.savez_compressed(tmp_path / "kmnist" / "kmnist-train-imgs.npz", images)
  np.savez_compressed(tmp_path / "kmnist" / "kmnist-train-labels.npz", labels)
  items = sources.load_items("kmnist", "train", data_dir=str(tmp_path), max_items=5)
  assert items.images.shape == (5, 28, 28, 1) and items.images.dtype == np.uint8
  np.testing.assert_array_equal(items.images[..., 0], images[:5])
  np.testing.assert_array_equal(items.labels, labels[:5])
  assert items.num_classes == 10 and items.class_names[0] == "o" and items.class_names[9] == "wo"


def test_kmnist_idx(tmp_path):
  images, labels = _random_items(6, 10, seed=2)
  _write_idx(tmp_path / "kmnist" / "t10k-images-idx3-ubyte.gz", images)
  _write_idx(tmp_path / "kmnist" / "t10k-labels-idx1-ubyte.gz", labels)
  items = sources.load_items("kmnist", "test", data_dir=str(tmp_path))
  np.testing.assert_array_equal(items.images[..., 0], images)
  np.testing.assert_array_equal(items.labels, labels)


def test_kmnist_corrupt_npz_names_file(tmp_path):
  folder = tmp_path / "kmnist"
  folder.mkdir()
  (folder / "kmnist-test-imgs.npz").write_bytes(b"PK\x03\x04 not really a zip")
  np.savez_compressed(folder / "kmnist-test-labels.npz", np.zeros(2, np.uint8))
  with pytest.raises(DataError, match="kmnist-test-imgs.npz"):
    sources.load_items("kmnist", "test", data_dir=str(tmp_path))
  np.savez_compressed(folder / "kmnist-test-imgs.npz", images=np.zeros((2, 28, 28), np.uint8))
  with pytest.raises(DataError, match="kmnist-test-imgs.npz.*arr_0"):
    sources.load_items("kmnist", "test", data_dir=str(tmp_path))


@pytest.mark.parametrize("subfolder", ["", "gzip/"])
def test_emnist_letters_files(tmp_path, subfolder):
  upright, labels0 = _random_items(26 * 2, 26, seed=3)
  labels0[:26] = np.arange(26)  # Every class, including both ends.
  prefix = tmp_path / "emnist" / subfolder
  _write_idx(prefix / "emnist-letters-train-images-idx3-ubyte.gz", upright.transpose(0, 2, 1))
  _write_idx(prefix / "emnist-letters-train-labels-idx1-ubyte.gz", labels0 + 1)
  items = sources.load_items("emnist_letters", "train", data_dir=str(tmp_path))
  np.testing.assert_array_equal(items.images[..., 0], upright)
  np.testing.assert_array_equal(items.labels, labels0)
  assert items.num_classes == 26 and items.class_names[0] == "A" and items.class_names[25] == "Z"


def _write_leek(folder: pathlib.Path, rng: np.random.Generator) -> None:
  folder.mkdir(parents=True)
  for n in range(1, 25):
    rgba = rng.integers(0, 256, size=(9, 11, 4), dtype=np.uint8)
    rgba[:3, :, 3] = 0  # Transparent rows with colour underneath.
    rgba[3:6, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / f"{n}.png")


def test_leek_composites_over_black(tmp_path):
  _write_leek(tmp_path / "leek", np.random.default_rng(4))
  items = sources.load_items("leek", "train", data_dir=str(tmp_path))
  assert items.images.shape == (24, 9, 11, 3)
  for n in range(1, 25):
    path = tmp_path / "leek" / f"{n}.png"
    rgba = np.asarray(Image.open(path))
    assert rgba[:3, :, :3].any()
    np.testing.assert_array_equal(items.images[n - 1][rgba[..., 3] == 0], 0)
    np.testing.assert_array_equal(items.images[n - 1, 3:6], rgba[3:6, :, :3])
    np.testing.assert_array_equal(items.images[n - 1], _composite(path))


def test_leek_missing_or_corrupt_file(tmp_path):
  _write_leek(tmp_path / "leek", np.random.default_rng(5))
  (tmp_path / "leek" / "24.png").unlink()
  (tmp_path / "leek" / "2.png").write_bytes(b"not a png")
  assert sources.load_items("leek2", "test", data_dir=str(tmp_path)).images.shape[0] == 2
  with pytest.raises(DataError, match=r"24\.png.*config\.data\.data_dir"):
    sources.load_items("leek", "train", data_dir=str(tmp_path))
  with pytest.raises(DataError, match=r"/2\.png"):
    sources.load_items("leek10", "train", data_dir=str(tmp_path))


# Config errors.


def test_unknown_dataset_source_split(tmp_path):
  with pytest.raises(DataError, match=r"config\.data\.dataset.*mnist, fashion_mnist.*leek2"):
    sources.load_items("cifar10", "train", data_dir=str(tmp_path))
  with pytest.raises(DataError, match=r"config\.data\.source.*files, tfds"):
    sources.load_items("mnist", "train", source="hub", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="split"):
    sources.load_items("mnist", "validation", data_dir=str(tmp_path))


def test_no_data_dir_defaults_to_the_cache(monkeypatch, tmp_path, offline):
  monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  assert sources.resolve_data_dir("") == tmp_path / ".cache" / "transinv_jax" / "data"
  default = re.escape(str(tmp_path / ".cache" / "transinv_jax" / "data" / "mnist"))
  with pytest.raises(DataError, match=rf"missing {default}/train-images.*{offline}.*"
                                      r"config\.data\.data_dir.*TRANSINV_JAX_DATA"):
    sources.load_items("mnist", "train")
  assert not (tmp_path / ".cache").exists()  # made for the download, removed when it failed


def test_missing_paths(tmp_path, offline):
  # Missing files are downloaded; with the publishers unreachable, the error says so.
  missing_root = re.escape(str(tmp_path / "nowhere"))
  with pytest.raises(DataError,
                     match=rf"{missing_root}.*{offline}.*config\.data\.data_dir.*mnist/"):
    sources.load_items("mnist", "train", data_dir=str(tmp_path / "nowhere"))
  emnist_dir = re.escape(str(tmp_path / "emnist"))
  with pytest.raises(DataError, match=rf"{emnist_dir}/emnist-letters-.*gzip\.zip.*data\.data_dir"):
    sources.load_items("emnist_letters", "test", data_dir=str(tmp_path))
  _write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8))
  with pytest.raises(DataError, match=r"missing \S*train-labels-idx1-ubyte\.gz.*data\.data_dir"):
    sources.load_items("mnist", "train", data_dir=str(tmp_path))
  (tmp_path / "file").write_text("")
  with pytest.raises(DataError, match=r"cannot create \S*file/mnist.*config\.data\.data_dir"):
    sources.load_items("mnist", "train", data_dir=str(tmp_path / "file"))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mnist"]


# TFDS.


@pytest.fixture
def tfds(monkeypatch):
  """tensorflow_datasets, with Python-level network connections made to fail."""
  module = pytest.importorskip("tensorflow_datasets")

  def no_network(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")

  monkeypatch.setattr(socket.socket, "connect", no_network)
  monkeypatch.setattr(socket, "create_connection", no_network)
  return module


def test_tfds_mnist_mock(tfds):
  with tfds.testing.mock_data(num_examples=25):
    items = sources.load_items("mnist", "train", source="tfds")
    head = sources.load_items("mnist", "test", source="tfds", max_items=10)
  assert items.images.shape == (25, 28, 28, 1) and items.images.dtype == np.uint8
  assert items.labels.dtype == np.int32 and items.labels.min() >= 0 and items.labels.max() <= 9
  assert items.class_names == tuple("0123456789")
  assert head.images.shape == (10, 28, 28, 1)


def test_tfds_emnist_letters_mapping(tfds):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  upright, labels0 = _random_items(26, 26, seed=6)
  labels0[:] = np.arange(26)

  def as_dataset(self, split, **kwargs):  # Stored as TFDS stores EMNIST: transposed, labels 1..26.
    del self, split, kwargs
    return tf.data.Dataset.from_tensor_slices({
        "image": upright.transpose(0, 2, 1)[..., None],
        "label": labels0.astype(np.int64) + 1,
    })

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    items = sources.load_items("emnist_letters", "test", source="tfds")
  np.testing.assert_array_equal(items.images[..., 0], upright)
  np.testing.assert_array_equal(items.labels, labels0)
  assert items.num_classes == 26


def test_tfds_errors(tfds, tmp_path):
  with pytest.raises(DataError, match=r"config\.data\.source='files'"):
    sources.load_items("leek10", "train", source="tfds")
  with pytest.raises(DataError, match=r"not prepared.*--config\.data\.tfds_download=True.*"
                                      r"config\.data\.source='files'"):
    sources.load_items("mnist", "test", source="tfds", data_dir=str(tmp_path))


@pytest.mark.parametrize("absent", ["tensorflow", "tensorflow_datasets"])
def test_tfds_without_tensorflow_is_one_line(monkeypatch, absent):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *args: None if name == absent else find_spec(name, *args))
  with pytest.raises(DataError) as raised:
    sources.load_items("mnist", "test", source="tfds")
  assert str(raised.value) == ("config.data.source='tfds' needs TensorFlow Datasets with "
                               'TensorFlow: pip install -e ".[tfds]"')


def test_import_does_not_load_tensorflow():
  code = (
      "import sys, transinv_jax.data.sources; "
      "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')]; "
      "assert not bad, bad"
  )
  subprocess.run([sys.executable, "-c", code], check=True)


def test_background_mask_keeps_white_inside_objects():
  rgb = np.full((9, 9, 3), 255, np.uint8)
  rgb[2:7, 2:7] = (230, 190, 20)   # a yellow square ...
  rgb[4, 4] = 255                   # ... with a white highlight inside it
  mask = formats.background_mask(rgb)
  assert mask[0, 0] and mask[8, 8] and mask[1, 4]
  assert not mask[4, 4] and not mask[2:7, 2:7].any()
  assert mask.sum() == 81 - 25
