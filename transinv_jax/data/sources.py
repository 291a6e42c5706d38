"""Host-side (numpy) loading of the datasets' items, from the original files or from TFDS.

Source "files" reads a folder laid out as ``../shared/data`` (see its README.md):

  <data_dir>/mnist/, <data_dir>/fashion_mnist/: train-images-idx3-ubyte.gz,
      train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (or the same
      names uncompressed);
  <data_dir>/kmnist/: kmnist-{train,test}-{imgs,labels}.npz, or KMNIST's IDX files named as MNIST's;
  <data_dir>/emnist/: emnist-letters-{train,test}-{images-idx3,labels-idx1}-ubyte.gz (or in gzip/);
  <data_dir>/leek/: 1.png ... 24.png.

Missing files are fetched on first use (``download.py``): from their publishers (not Leek), or
from a mirror serving a data folder in this layout (config.data.mirror or
$TRANSINV_JAX_DATA_MIRROR).

Source "tfds" reads prepared TFDS datasets (Leek is not in TFDS).

Source "folder" (with dataset "folder") reads images from ``config.data.folder``, one subfolder
per class: ``root/<class>/*.{png,jpg,jpeg}``, e.g. ImageNet validation images (folders.py).
"""

import dataclasses
import importlib.util
import os
import pathlib

import numpy as np

from transinv_jax.data import download, folders, formats
from transinv_jax.data.formats import DataError

DATASETS = (
    "mnist", "fashion_mnist", "kmnist", "emnist_letters", "leek", "leek10", "leek2",
    "folder",  # the classes of config.data.folder (source "folder" only)
)
SOURCES = ("files", "tfds", "folder")
SPLITS = ("train", "test")
DATA_DIR_ENV = "TRANSINV_JAX_DATA"
DEFAULT_DATA_DIR = "~/.cache/transinv_jax/data"
MIRROR_ENV = download.MIRROR_ENV

# Leek image numbers (1..24) in Leek10 and Leek2. The paper does not say which images it used:
# this is our choice (the first ten, then the next two), and it must stay fixed so results compare.
LEEK10 = tuple(range(1, 11))
LEEK2 = (11, 12)
_LEEK_SUBSETS = {"leek": tuple(range(1, 25)), "leek10": LEEK10, "leek2": LEEK2}

_CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    # Romanised Kuzushiji hiragana お, き, す, つ, な, は, ま, や, れ, を (KMNIST's classmap order).
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    "emnist_letters": tuple(chr(ord("A") + i) for i in range(26)),
    **{name: tuple(f"leek{n:02d}" for n in numbers) for name, numbers in _LEEK_SUBSETS.items()},
}

_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _emnist_names(split: str, prefix: str) -> tuple[str, str]:
  return tuple(
      f"{prefix}emnist-letters-{split}-{kind}-ubyte.gz" for kind in ("images-idx3", "labels-idx1")
  )


# Dataset -> (folder under data_dir, {split: accepted (images file, labels file) pairs, in order}).
_FILE_LAYOUTS = {
    **{
        name: (name, {s: [(i + ".gz", l + ".gz"), (i, l)] for s, (i, l) in _IDX_NAMES.items()})
        for name in ("mnist", "fashion_mnist")
    },
    "kmnist": ("kmnist", {
        s: [(f"kmnist-{s}-imgs.npz", f"kmnist-{s}-labels.npz"), (i + ".gz", l + ".gz"), (i, l)]
        for s, (i, l) in _IDX_NAMES.items()
    }),
    "emnist_letters": (
        "emnist", {s: [_emnist_names(s, ""), _emnist_names(s, "gzip/")] for s in SPLITS}
    ),
}

_MNIST_FILES = (
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz"
)
# Dataset -> the files load_items looks for, for error messages.
_EXPECTED_FILES = {
    "mnist": f"{_MNIST_FILES} (also without .gz)",
    "fashion_mnist": f"{_MNIST_FILES} (also without .gz)",
    "kmnist": (
        "kmnist-train-imgs.npz, kmnist-train-labels.npz, kmnist-test-imgs.npz, "
        f"kmnist-test-labels.npz, or KMNIST's IDX files {_MNIST_FILES} (also without .gz)"
    ),
    "emnist_letters": (
        "emnist-letters-{train,test}-images-idx3-ubyte.gz and "
        "emnist-letters-{train,test}-labels-idx1-ubyte.gz (or the same in gzip/)"
    ),
    **{name: "1.png ... 24.png" for name in _LEEK_SUBSETS},
}

_TFDS_NAMES = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "kmnist": "kmnist",
    "emnist_letters": "emnist/letters",
}


@dataclasses.dataclass(frozen=True)
class ItemSet:
  """A dataset split's items.

  Attributes:
    images: uint8 [num_items, height, width, channels]; channels 1 (grayscale) or 3 (RGB).
    labels: int32 [num_items], in 0..num_classes-1.
    num_classes: number of classes.
    class_names: [num_classes] names, indexed by label.
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]


def class_names(dataset: str, folder: str = "") -> tuple[str, ...]:
  """``dataset``'s class names, indexed by label, without reading its files (for dataset
  "folder": the class folders of ``folder``, config.data.folder)."""
  if dataset == "folder":
    return folders.class_names(folder)
  if dataset not in _CLASS_NAMES:
    raise DataError(f"unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}")
  return _CLASS_NAMES[dataset]


def resolve_data_dir(data_dir: str | None) -> pathlib.Path:
  """Returns the folder holding the original dataset files.

  Args:
    data_dir: config.data.data_dir; when empty, the environment variable TRANSINV_JAX_DATA, then
      DEFAULT_DATA_DIR.

  Returns:
    The folder (not checked for existence: downloads create it).
  """
  return pathlib.Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


def load_items(
    dataset: str,
    split: str,
    *,
    source: str = "files",
    data_dir: str | None = None,
    max_items: int = 0,
    download: bool = False,
    folder: str = "",
    folder_size: int = 0,
    mirror: str | None = None,
) -> ItemSet:
  """Loads a dataset split's items into host memory.

  Args:
    dataset: one of DATASETS (config.data.dataset).
    split: "train" or "test". Leek has one image per class, so its "test" equals its "train".
    source: "files" (original files under the data folder) or "tfds" (config.data.source).
    data_dir: config.data.data_dir. For "files", the folder laid out as ../shared/data (default: env
      TRANSINV_JAX_DATA); for "tfds", the TFDS data dir (default: TFDS's own).
    max_items: when > 0, keep only the first max_items items (file order).
    download: for "tfds", let TFDS download and prepare the dataset (needs internet).
    folder: for "folder", the root of the class folders (config.data.folder; see folders.py).
    folder_size: for "folder", the side the images are stored at (config.data.folder_size, or
      the item size when that is 0): each image's centre square resized to it.
    mirror: for "files", the base URL of a served data folder to fetch missing files from
      (config.data.mirror; default: env TRANSINV_JAX_DATA_MIRROR, then the publishers).

  Returns:
    The items.

  Raises:
    DataError: bad config value, missing files that cannot be fetched, corrupt files, or TFDS
      dataset not prepared.
    ValueError: unknown split or negative max_items.
  """
  if source == "folder" or dataset == "folder":
    return _load_folder(dataset, split, source, folder, folder_size, max_items)
  if dataset not in DATASETS:
    raise DataError(
        f"unknown dataset {dataset!r} in config.data.dataset; use one of {', '.join(DATASETS)}"
    )
  if source not in SOURCES:
    raise DataError(
        f"unknown source {source!r} in config.data.source; use one of {', '.join(SOURCES)}"
    )
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if max_items < 0:
    raise ValueError(f"max_items must be >= 0, got {max_items}")

  class_names = _CLASS_NAMES[dataset]
  mirror = mirror or os.environ.get(MIRROR_ENV, "")
  if source == "tfds":
    images, labels, origin = _load_tfds(dataset, split, data_dir, download)
  elif dataset in _LEEK_SUBSETS:
    images, labels, origin = _load_leek(dataset, resolve_data_dir(data_dir), mirror)
  else:
    images, labels, origin = _load_files(dataset, split, resolve_data_dir(data_dir), mirror)

  if images.ndim == 3:
    images = images[..., None]
  if (images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3)
      or labels.ndim != 1):
    raise DataError(
        f"{origin}: expected uint8 images and 1-D labels, got {images.dtype} {images.shape} and "
        f"{labels.dtype} {labels.shape}; replace the files"
    )
  if dataset == "emnist_letters":
    # The files and TFDS both store EMNIST letters transposed, with labels 1..26 (TFDS: a
    # ClassLabel of 37; its catalog: "inverted horizontally and rotated 90 anti-clockwise").
    images, labels = np.swapaxes(images, 1, 2), labels.astype(np.int64) - 1
  if len(images) != len(labels):
    raise DataError(
        f"{origin}: {len(images)} images but {len(labels)} labels; replace the files"
    )
  if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
    raise DataError(
        f"{origin}: labels {labels.min()}..{labels.max()} outside 0..{len(class_names) - 1}; "
        "replace the files"
    )
  if max_items:
    images, labels = images[:max_items], labels[:max_items]
  return ItemSet(
      images=np.ascontiguousarray(images),
      labels=labels.astype(np.int32),
      num_classes=len(class_names),
      class_names=class_names,
  )


def _load_folder(dataset: str, split: str, source: str, folder: str, size: int,
                 max_items: int) -> ItemSet:
  """Source "folder": ``folders.load_folder``'s items; dataset and source must both say so."""
  if (source, dataset) != ("folder", "folder"):
    raise DataError(
        f"config.data.source={source!r} with config.data.dataset={dataset!r}: images from "
        "config.data.folder need both set to 'folder'")
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if size < 1:
    raise DataError(f"folder_size={size}: give the stored side in pixels (the pipeline gives "
                    "config.data.folder_size, or config.data.item_size when that is 0)")
  images, labels, names = folders.load_folder(folder, split, size=size, max_items=max_items)
  return ItemSet(images=images, labels=labels, num_classes=len(names), class_names=names)


def _read(path: pathlib.Path) -> np.ndarray:
  return formats.read_npz(path) if path.suffix == ".npz" else formats.read_idx(path)


def _load_files(
    dataset: str, split: str, root: pathlib.Path, mirror: str
) -> tuple[np.ndarray, np.ndarray, str]:
  """Reads an MNIST-like dataset's split from its original files, fetched first if missing.

  Returns:
    images [num_items, height, width] as stored, labels [num_items] as stored, and the files' names
    for messages.
  """
  folder, layouts = _FILE_LAYOUTS[dataset]
  images_path, labels_path = download.ensure_files(
      root, folder, layouts[split], mirror, _EXPECTED_FILES[dataset])
  return _read(images_path), _read(labels_path), f"{images_path} / {labels_path}"


def _load_leek(
    dataset: str, root: pathlib.Path, mirror: str
) -> tuple[np.ndarray, np.ndarray, str]:
  """Reads the dataset's Leek images, composited over black; class i is the subset's i-th image.

  Missing images come only from a mirror: Leek has no publisher download.
  """
  names = [f"{n}.png" for n in _LEEK_SUBSETS[dataset]]
  paths = download.ensure_files(root, "leek", [names], mirror, _EXPECTED_FILES[dataset])
  images = np.stack([formats.read_png_over_black(path) for path in paths])
  return images, np.arange(len(names)), str(root / "leek")


def _load_tfds(
    dataset: str, split: str, data_dir: str | None, download: bool
) -> tuple[np.ndarray, np.ndarray, str]:
  """Reads a dataset's split from TFDS.

  Returns:
    images [num_items, height, width, channels] and labels [num_items] as stored, and the TFDS name
    for messages.
  """
  if dataset not in _TFDS_NAMES:
    raise DataError(
        f"dataset {dataset!r} is not in TFDS: set config.data.source='files' and put its files "
        "under config.data.data_dir"
    )
  if not all(importlib.util.find_spec(m) for m in ("tensorflow", "tensorflow_datasets")):
    # Checked before importing, so that TensorFlow's start-up lines do not bury the message.
    raise DataError("config.data.source='tfds' needs TensorFlow Datasets with TensorFlow: "
                    'pip install -e ".[tfds]"')
  # Imported here because importing TensorFlow takes seconds.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  name = _TFDS_NAMES[dataset]
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, download=download, as_supervised=True)
  except AssertionError as e:  # TFDS's "could not find data" when the dataset is not prepared.
    raise DataError(
        f"TFDS dataset {name!r} is not prepared in {data_dir or 'the default TFDS data dir'}: "
        f"prepare it with internet (`tfds build {name}`, or --config.data.tfds_download=True) into "
        "config.data.data_dir, or set config.data.source='files'"
    ) from e
  # batch_size=-1 in tfds.load aborts under tfds.testing.mock_data, so batch and concatenate.
  batches = list(tfds.as_numpy(ds.batch(10_000)))
  images = np.concatenate([b[0] for b in batches])
  labels = np.concatenate([b[1] for b in batches])
  return images, labels, f"TFDS {name} {split}"
