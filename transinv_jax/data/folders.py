"""Items from a folder of images, one subfolder per class (``config.data.source="folder"``).

Layouts (``config.data.folder`` is ``root``):

  root/<class>/*.{png,jpg,jpeg}                 one folder; "test" is every 5th image of each class
                                                (sorted by name), "train" the other four in five
  root/train/<class>/..., root/test/<class>/... the splits as given (``val/`` when there is no
  (or root/val/<class>/...)                     ``test/``, as in an ImageNet layout); both splits
                                                must hold the same class folders

An ImageNet validation folder sorted into class folders (1000 folders named by WordNet id, e.g.
``n01440764``, each of 50 ``.JPEG`` files) is the first layout: 40 train and 10 test images per
class. Sorted WordNet ids are torchvision's class order, so the labels match its ImageNet heads.

Classes are the sorted subfolder names; an image's label is its folder's index. Extensions match
in any case; hidden files and nested folders are skipped. Items are ordered round-robin over the
classes (the first image of every class, then the second, ...), so any prefix (``max_items``,
``config.data.max_train_items``) and any suffix (``config.data.val_items``) holds every class in
nearly equal numbers, as a shuffled dataset file would.

Images come in any size, so they are stored at one size on the host with the least distortion, as
ImageNet evaluation does: the centre square (side = the shorter side) resized to ``size`` x
``size`` (bilinear, antialiased), then resized on the device to ``config.data.item_size`` as
every other source (``canvas.resize_items``; a no-op at the default ``config.data.folder_size=0``,
which stores at the item size: one resampling). The aspect ratio is kept; the sides of
non-square images are cropped away. Images are RGB (3 channels), unless every image of the split
is grayscale (1 channel); transparent pixels are composited over black, the canvases' colour.
"""

import concurrent.futures
import itertools
import os
import pathlib

import numpy as np
from PIL import Image

from transinv_jax.data.formats import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")
TEST_EVERY = 5  # one folder: every 5th image of each class is held out as "test"
SPLITS = ("train", "test")
_HELD_OUT = ("test", "val")  # the test split's folder in a split layout, in order of preference
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L")
_FIX = ("set config.data.folder (configs/quadrant.py and configs/azulay_weiss.py: "
        "config.imagenet_folder) to a folder laid out as root/<class>/*.png|jpg|jpeg, or "
        "root/train/<class>/... and root/test/<class>/...")


def _class_dirs(path: pathlib.Path) -> list[pathlib.Path]:
  return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")),
                key=lambda p: p.name)


def _images(path: pathlib.Path) -> list[pathlib.Path]:
  """The image files directly in ``path``, sorted by name."""
  with os.scandir(path) as entries:
    return sorted((pathlib.Path(e.path) for e in entries
                   if not e.name.startswith(".") and e.is_file()
                   and os.path.splitext(e.name)[1].lower() in EXTENSIONS),
                  key=lambda p: p.name)


def _split_root(root: pathlib.Path, split: str) -> tuple[pathlib.Path | None, str]:
  """The folder holding ``split``'s class folders, or None when ``split`` is held out of ``root``.

  Returns:
    (folder or None, a description of the layout for messages).
  """
  held = next((root / n for n in _HELD_OUT if (root / n).is_dir()), None)
  train = root / "train"
  # root/train counts as a split only if it holds class folders (a class may be named "train").
  if held is not None and train.is_dir() and _class_dirs(train):
    return (train if split == "train" else held), f"{train} and {held}"
  return None, f"{root} (every {TEST_EVERY}th image of each class held out as test)"


def _check_root(root: str | os.PathLike) -> pathlib.Path:
  if not str(root):
    raise DataError(f"config.data.folder is empty: {_FIX}")
  path = pathlib.Path(root).expanduser()
  if not path.is_dir():
    raise DataError(f"config.data.folder={str(root)!r} is not a folder: {_FIX}")
  return path


def _classes(path: pathlib.Path) -> tuple[list[str], list[list[pathlib.Path]]]:
  """The class names under ``path`` and each class's image files; DataError if any is empty."""
  dirs = _class_dirs(path)
  if not dirs:
    loose = bool(_images(path))
    raise DataError(
        f"config.data.folder: {path} has no class folders"
        f"{' (its images must go in one subfolder per class)' if loose else ''}: {_FIX}")
  files = [_images(d) for d in dirs]
  empty = [str(d) for d, f in zip(dirs, files) if not f]
  if empty:
    raise DataError(
        f"config.data.folder: class folder(s) {', '.join(empty[:5])}"
        f"{' ...' if len(empty) > 5 else ''} hold no {'/'.join(EXTENSIONS)} image: add images "
        "or remove the folder(s)")
  return [d.name for d in dirs], files


def list_folder(root: str | os.PathLike,
                split: str = "train") -> tuple[list[tuple[pathlib.Path, int]], tuple[str, ...]]:
  """Finds a split's image files and labels, without reading them.

  Args:
    root: config.data.folder (see the module docstring for the layouts).
    split: "train" or "test".

  Returns:
    ``(files, class_names)``: (path, label) pairs in item order (round-robin over the classes),
    and the sorted class folder names, indexed by label.

  Raises:
    DataError: the folder is missing, has no class folders, a class folder holds no image, the
      two splits' class folders differ, or the split has no image.
    ValueError: unknown split.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  path = _check_root(root)
  folder, layout = _split_root(path, split)
  if folder is None:
    names, files = _classes(path)
    keep = (lambda i: i % TEST_EVERY == TEST_EVERY - 1) if split == "test" else (
        lambda i: i % TEST_EVERY != TEST_EVERY - 1)
    files = [[f for i, f in enumerate(fs) if keep(i)] for fs in files]
  else:
    names, files = _classes(folder)
    other, _ = _split_root(path, "test" if split == "train" else "train")
    other_names = [d.name for d in _class_dirs(other)]
    if other_names != names:
      missing = sorted(set(names) ^ set(other_names))
      raise DataError(
          f"config.data.folder: {folder} and {other} hold different class folders "
          f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} in only one): give both "
          "splits the same classes")
  pairs = [(f, label) for label, fs in enumerate(files) for f in fs]
  if not pairs:
    raise DataError(
        f"config.data.folder: no {split} image in {layout}: every class has fewer than "
        f"{TEST_EVERY} images; add images, or split them yourself into root/train/<class>/ and "
        "root/test/<class>/")
  by_class = [[(f, label) for f in fs] for label, fs in enumerate(files)]
  order = [p for group in itertools.zip_longest(*by_class) for p in group if p is not None]
  return order, tuple(names)


def class_names(root: str | os.PathLike) -> tuple[str, ...]:
  """The folder's class names, indexed by label (the train split's), without reading images."""
  return list_folder(root, "train")[1]


def _read(path: pathlib.Path, size: int) -> np.ndarray:
  """One image's centre square at ``size`` x ``size``: uint8 [size, size] (gray) or [.., 3]."""
  try:
    with Image.open(path) as image:
      gray = image.mode in _GRAY_MODES
      # JPEG: decode at a reduced scale no smaller than the target (DCT scaling), much faster.
      image.draft("L" if gray else "RGB", (size, size))
      if image.mode.startswith("I"):  # 16-bit grayscale PNG: to 8 bits, rounded
        values = np.asarray(image, np.float64) * (255 / 65535)
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
      if image.mode in ("LA", "RGBA", "PA") or "transparency" in image.info:
        rgba = np.asarray(image.convert("LA" if gray else "RGBA"), np.uint32)
        # Transparent pixels over black (the canvas), rounded as formats.read_png_over_black.
        image = Image.fromarray(
            ((rgba[..., :-1] * rgba[..., -1:] + 127) // 255).astype(np.uint8).squeeze(-1)
            if gray else ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8))
      image = image.convert("L" if gray else "RGB")
      w, h = image.size
      side = min(w, h)
      box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
      return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise DataError(f"cannot read {path}: {e}; replace or remove the file") from e


def load_folder(
    root: str | os.PathLike,
    split: str = "train",
    *,
    size: int,
    max_items: int = 0,
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """Reads a split of a class-per-folder image collection into host memory.

  Args:
    root: config.data.folder (see the module docstring for the layouts and the splits).
    split: "train" or "test".
    size: stored side in pixels: each image's centre square is resized to size x size.
    max_items: when > 0, read only the first max_items items (round-robin order over the classes).
    workers: decoding threads (0 = one per CPU, at most 32); PIL releases the GIL while decoding.

  Returns:
    ``(images, labels, class_names)``: uint8 [num_items, size, size, channels] with channels 3,
    or 1 when every image is grayscale; int32 [num_items] in 0..num_classes-1; the sorted class
    folder names, indexed by label.

  Raises:
    DataError: a bad folder (see ``list_folder``) or an unreadable image (the message names it).
    ValueError: unknown split, negative max_items, size < 1.
  """
  if max_items < 0:
    raise ValueError(f"max_items must be >= 0, got {max_items}")
  if size < 1:
    raise ValueError(f"size must be >= 1, got {size}")
  files, names = list_folder(root, split)
  if max_items:
    files = files[:max_items]
  workers = workers or min(32, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    arrays = list(pool.map(lambda f: _read(f[0], size), files))
  if all(a.ndim == 2 for a in arrays):
    images = np.stack(arrays)[..., None]
  else:  # grayscale images among colour ones: three equal channels
    images = np.stack([a if a.ndim == 3 else np.repeat(a[..., None], 3, -1) for a in arrays])
  labels = np.array([label for _, label in files], np.int32)
  return images, labels, names
