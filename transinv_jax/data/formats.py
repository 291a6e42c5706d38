"""Readers for the datasets' original file formats (IDX, npz, PNG), returning numpy arrays."""

import gzip
import pathlib
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

# IDX type byte -> numpy big-endian dtype (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DataError(ValueError):
  """A user-facing data loading error; the message names the config key and the fix.

  Defined here so the format readers can raise it; `sources` re-exports it.
  """


def read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads an IDX file (gzip-compressed when the name ends in .gz).

  Args:
    path: the file.

  Returns:
    The array with the shape and (native-endian) dtype stored in the header,
    e.g. uint8 [num_items, height, width] for image files.

  Raises:
    DataError: the file is not a valid IDX file (the message names it).
  """
  try:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f"cannot read {path}: {e}; the file is corrupt, replace it") from e
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
    raise DataError(f"{path} is not an IDX file (magic number {raw[:4].hex()}); replace it")
  ndim = raw[3]
  header_size = 4 + 4 * ndim
  if len(raw) < header_size:
    raise DataError(f"{path} is truncated (IDX header incomplete); replace it")
  shape = struct.unpack(f">{ndim}i", raw[4:header_size])
  dtype = _IDX_DTYPES[raw[2]]
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - header_size != expected:
    raise DataError(
        f"{path} has {len(raw) - header_size} data bytes but its IDX header {shape} says "
        f"{expected}; the file is corrupt, replace it"
    )
  data = np.frombuffer(raw, dtype, offset=header_size).reshape(shape)
  return data.astype(dtype.newbyteorder("="))


def read_npz(path: pathlib.Path) -> np.ndarray:
  """Reads the array saved under `arr_0` by np.savez(_compressed), as in the official KMNIST files.

  Args:
    path: the .npz file.

  Returns:
    The stored array.

  Raises:
    DataError: the file is not a valid npz file or has no `arr_0` (the message names it).
  """
  try:
    with np.load(path, allow_pickle=False) as npz:
      return npz["arr_0"]
  except KeyError as e:
    raise DataError(
        f"{path} has no array 'arr_0' (as in the official KMNIST files); replace it"
    ) from e
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise DataError(f"cannot read {path}: {e}; the file is corrupt, replace it") from e


def background_mask(rgb: np.ndarray, threshold: int = 235) -> np.ndarray:
  """Near-white pixels connected to the image border: the background of a stimulus on white.

  A flood fill from the border through pixels whose every channel is >= ``threshold``, so white
  highlights inside an object stay part of it.

  Args:
    rgb: uint8 [height, width, 3].
    threshold: smallest channel value counted as white.

  Returns:
    bool [height, width], True on the background.
  """
  white = rgb.min(axis=-1) >= threshold
  mask = np.zeros_like(white)
  mask[0, :], mask[-1, :], mask[:, 0], mask[:, -1] = white[0, :], white[-1, :], white[:, 0], white[:, -1]
  while True:
    grown = mask.copy()
    grown[1:, :] |= mask[:-1, :]
    grown[:-1, :] |= mask[1:, :]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    grown &= white
    if np.array_equal(grown, mask):
      return mask
    mask = grown


def read_png_over_black(path: pathlib.Path) -> np.ndarray:
  """Reads a stimulus PNG and puts the object on black.

  With a real alpha mask (some alpha below 255), the image is composited over black. The Leek files
  as published carry no such mask (alpha is 255 everywhere, and 15.png has no alpha channel): the
  objects sit on white, so the background is found as the near-white region connected to the border
  (``background_mask``) and set to black, since the experiments paste items on black canvases.

  Args:
    path: the image file.

  Returns:
    uint8 [height, width, 3].

  Raises:
    DataError: the file is not a readable image (the message names it).
  """
  try:
    with Image.open(path) as image:
      rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
  except OSError as e:
    raise DataError(f"cannot read {path}: {e}; the file is corrupt, replace it") from e
  if (rgba[..., 3] < 255).any():
    # Integer rounding of rgb * alpha / 255 (never exactly .5, so no tie rule needed).
    return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
  rgb = rgba[..., :3].astype(np.uint8)
  return np.where(background_mask(rgb)[..., None], np.uint8(0), rgb)
