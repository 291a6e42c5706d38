"""Fetches missing dataset files from their publishers, or from a mirror of a data folder.

A file is written under a temporary name in its folder (``.part-*``) and renamed only once it is
complete and verified, so an interrupted or corrupt download is never read. What is verified:

  * publisher downloads (the MNIST, Fashion-MNIST and KMNIST IDX ``.gz`` files, the EMNIST
    archive): the publisher's md5 (as torchvision lists them); for MNIST the md5 of the decoded
    file is accepted too;
  * EMNIST letters files read by HTTP range from the archive (when its server accepts ranges): each
    member's CRC-32 and size from the archive's central directory, and that it decodes (the
    archive's own md5 would need the whole 560 MB archive);
  * files from a mirror: the publisher's md5 where one is known (the names above), else only that
    the file decodes (gzip CRC-32 and IDX sizes, npz, PNG): EMNIST letters files, KMNIST npz
    files, Leek PNGs.

A mirror (config.data.mirror or $TRANSINV_JAX_DATA_MIRROR) is a base URL serving a data folder in
its own layout, ``<mirror>/<dataset folder>/<file name>``, e.g. ``python -m http.server`` run in a
data folder.
"""

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import io
import os
import pathlib
import tempfile
import time
from typing import Sequence
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib

from absl import logging

from transinv_jax.data import formats
from transinv_jax.data.formats import DataError

MIRROR_ENV = "TRANSINV_JAX_DATA_MIRROR"
TIMEOUT_S = 15.0  # per connection and per read: offline fails fast, a stalled server too
PROGRESS_EVERY_S = 5.0
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """A file as its publisher serves it.

  Attributes:
    urls: where the publisher serves it, tried in order.
    md5s: accepted md5s of the file as served or, for a .gz file, of its decoded content.
  """

  urls: tuple[str, ...]
  md5s: tuple[str, ...]


def _published(bases: Sequence[str], md5s: dict[str, tuple[str, ...]]) -> dict[str, RemoteFile]:
  return {name: RemoteFile(tuple(base + name for base in bases), md5) for name, md5 in md5s.items()}


# Folder under the data folder -> {file name: RemoteFile}; tests point it at a local server.
# MNIST: the .gz md5s, then the md5s of the decoded files (both as torchvision and LeCun list them).
PUBLISHED = {
    "mnist": _published(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"), {
            "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873",
                                           "6bbc9ace898e44ae57da46a324031adb"),
            "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432",
                                           "a25bea736e30d166cdddb491f175f624"),
            "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3",
                                          "2646ac647ad5339dbf082846283269ea"),
            "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c",
                                          "27ae3e4e09519cfbb04c329615203637"),
        }),
    "fashion_mnist": _published(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",), {
            "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",),
            "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe",),
            "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79",),
            "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310",),
        }),
    "kmnist": _published(
        ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",), {
            "train-images-idx3-ubyte.gz": ("bdb82020997e1d708af4cf47b453dcf7",),
            "train-labels-idx1-ubyte.gz": ("e144d726b3acfaa3e44228e80efcd344",),
            "t10k-images-idx3-ubyte.gz": ("5c965bf0a639b31b8f53240b1b52f4d7",),
            "t10k-labels-idx1-ubyte.gz": ("7320c461ea6c1c855c0b718fb2a4b134",),
        }),
}
# EMNIST letters come out of the publisher's archive of every EMNIST split, as gzip/<name>.
EMNIST_FOLDER = "emnist"
EMNIST_ARCHIVE = RemoteFile(("https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",),
                            ("58c8d27c78d21e728a6bc7b3cc06412e",))
EMNIST_LETTERS = tuple(f"emnist-letters-{split}-{kind}-ubyte.gz" for split in ("train", "test")
                       for kind in ("images-idx3", "labels-idx1"))


def _ways_on(folder: str, mirror: str) -> str:
  way = (f"fix the mirror {mirror} (it must serve a data folder's layout)" if mirror else
         f"set a mirror serving a data folder ({MIRROR_ENV} or --config.data.mirror)")
  return (f"set config.data.data_dir (or TRANSINV_JAX_DATA) to a folder whose {folder}/ has them, "
          f"or {way}")


class DownloadError(DataError):
  """A URL could not be read: unreachable, an HTTP error, or the connection cut short.

  Attributes:
    status: the HTTP status, when the server answered one.
  """

  def __init__(self, message: str, status: int | None = None):
    super().__init__(message)
    self.status = status


def mirror_url(mirror: str, folder: str, name: str) -> str:
  """``<mirror>/<folder>/<name>``: a data folder's layout under a base URL."""
  return f"{mirror.rstrip('/')}/{folder}/{urllib.parse.quote(name)}"


def ensure_files(root: pathlib.Path, folder: str, layouts: Sequence[Sequence[str]], mirror: str,
                 expected: str) -> tuple[pathlib.Path, ...]:
  """Returns the files of the first complete layout under ``root/folder``, fetching if none is.

  Args:
    root: the data folder; created when a download needs it (and removed again if the download
      fails and leaves it empty).
    folder: the dataset's folder under it (``mnist``, ``emnist``, ``leek``, ...).
    layouts: accepted lists of file names (relative to the folder), in order of preference.
    mirror: base URL of a served data folder; "" fetches from the publishers.
    expected: what the folder must hold, for messages.

  Returns:
    The paths of one complete layout.

  Raises:
    DataError: the files are missing and cannot be fetched, or a fetched file is corrupt; one line
      naming the file, the URLs tried and the ways on.
  """
  path = root / folder
  for names in layouts:
    if all((path / name).is_file() for name in names):
      return tuple(path / name for name in names)
  if mirror:
    candidates = list(layouts)  # a mirror serves a data folder: any accepted layout
  else:
    fetchable = EMNIST_LETTERS if folder == EMNIST_FOLDER else PUBLISHED.get(folder, {})
    candidates = [names for names in layouts if all(name in fetchable for name in names)]
  missing = [str(path / name) for name in layouts[0] if not (path / name).is_file()]
  if not candidates:
    raise DataError(
        f"missing {', '.join(missing)}: {path} must hold {expected}; it has no publisher download, "
        f"so {_ways_on(folder, mirror)}")
  created = _make_folder(path)
  try:
    for names in candidates:
      try:
        for name in names:
          if not (path / name).is_file():
            _fetch_one(folder, name, path, mirror)
        return tuple(path / name for name in names)
      except DownloadError as e:
        if not (mirror and e.status == 404 and names is not candidates[-1]):
          raise DataError(f"missing {path / name} and could not download it from {e}; "
                          f"{path} must hold {expected}: {_ways_on(folder, mirror)}") from None
  except BaseException:
    for folder_made in created:  # deepest first; stops at the first that is not empty
      try:
        folder_made.rmdir()
      except OSError:
        break
    raise
  raise AssertionError("unreachable")


def fetch(url: str, destination: pathlib.Path, md5s: Sequence[str] = ()) -> None:
  """Downloads ``url`` to ``destination``, verified, through a temporary file beside it.

  Args:
    url: an http(s) (or file) URL.
    destination: the file to write; its folder must exist.
    md5s: accepted md5s of the file, or of its decoded content for a .gz; empty: check only that
      the file decodes (``check_decodes``).

  Raises:
    DownloadError: the URL cannot be read or the connection closed early.
    DataError: the file is corrupt. Nothing is left at ``destination`` or beside it.
  """
  with _atomic(destination) as tmp:
    response = _open(url)
    with response, tmp.open("wb") as out:
      total = int(response.headers.get("Content-Length") or 0) or None
      progress, digest = _Progress(url, total), hashlib.md5()
      while chunk := _read(response, url):
        out.write(chunk)
        digest.update(chunk)
        progress.update(len(chunk))
    if total is not None and progress.done != total:
      raise DownloadError(f"{url}: connection closed after {progress.done} of {total} bytes")
    progress.finish()
    if md5s:
      _check_md5(tmp, digest.hexdigest(), md5s, url)
    else:
      check_decodes(tmp, url)


def check_decodes(path: pathlib.Path, what: str) -> None:
  """Raises DataError unless ``path`` decodes by its suffix: PNG, npz, or IDX (.gz: its CRC-32)."""
  reader = {".png": formats.read_png_over_black, ".npz": formats.read_npz}.get(path.suffix,
                                                                              formats.read_idx)
  try:
    reader(path)
  except DataError as e:
    raise DataError(f"{what} is corrupt ({e}); nothing was kept") from None


def _check_md5(path: pathlib.Path, md5: str, md5s: Sequence[str], url: str) -> None:
  if md5 in md5s:
    return
  if path.suffix == ".gz":
    try:
      if hashlib.md5(gzip.decompress(path.read_bytes())).hexdigest() in md5s:
        return
    except (OSError, EOFError, zlib.error):
      pass
  raise DataError(f"{url} is corrupt: its md5 {md5} is none of the publisher's "
                  f"({', '.join(md5s)}); nothing was kept")


def _fetch_one(folder: str, name: str, path: pathlib.Path, mirror: str) -> None:
  """Fetches ``path/name`` from the mirror or its publisher (EMNIST: every letters file)."""
  if mirror:
    known = PUBLISHED.get(folder, {}).get(name)
    (path / name).parent.mkdir(parents=True, exist_ok=True)  # e.g. emnist/gzip/
    fetch(mirror_url(mirror, folder, name), path / name, known.md5s if known else ())
  elif folder == EMNIST_FOLDER:
    _fetch_emnist_letters(path)
  else:
    remote, failures = PUBLISHED[folder][name], []
    for url in remote.urls:  # the publisher's mirrors, in turn
      try:
        return fetch(url, path / name, remote.md5s)
      except DownloadError as e:
        failures.append(str(e))
    raise DownloadError("; ".join(failures))


def _fetch_emnist_letters(path: pathlib.Path) -> None:
  """Writes the EMNIST letters files missing from ``path``, from the publisher's archive.

  Reads only those members by HTTP range when the server allows it; else downloads the whole
  archive beside them, checks its md5, extracts them and removes it.
  """
  url = EMNIST_ARCHIVE.urls[0]
  size = _range_size(url)
  local = path / ".download-gzip.zip"  # only ever written complete and verified, by fetch
  if size:
    logging.info("reading the EMNIST letters files from %s by HTTP range (%s)", url, _size(size))
    archive = io.BufferedReader(_RangeReader(url, size), buffer_size=4 * _CHUNK)
  else:
    if not local.is_file():  # else left complete and verified by an interrupted extraction
      fetch(url, local, EMNIST_ARCHIVE.md5s)
    archive = local
  try:
    with zipfile.ZipFile(archive) as zf:
      for name in EMNIST_LETTERS:
        if not (path / name).is_file():
          _extract(zf, f"gzip/{name}", path / name, url)
  except (zipfile.BadZipFile, EOFError, zlib.error) as e:
    raise DataError(f"{url} is corrupt ({e}); the bad file was not kept") from None
  finally:
    if not size:
      local.unlink(missing_ok=True)


def _extract(zf: zipfile.ZipFile, member: str, destination: pathlib.Path, url: str) -> None:
  """Writes ``member`` to ``destination``; zipfile checks its CRC-32 and size as it reads."""
  try:
    info = zf.getinfo(member)
  except KeyError:
    raise DataError(f"{url} has no {member}; the archive changed, use a mirror") from None
  with _atomic(destination) as tmp:
    progress = _Progress(f"{url}:{member}", info.file_size)
    with zf.open(info) as src, tmp.open("wb") as out:
      while chunk := src.read(_CHUNK):
        out.write(chunk)
        progress.update(len(chunk))
    progress.finish()
    check_decodes(tmp, f"{url}:{member}")


@contextlib.contextmanager
def _atomic(destination: pathlib.Path):
  """Yields a temporary path beside ``destination``, renamed to it if the block succeeds.

  The name keeps the destination's suffix (readers go by it) and starts with ".part-", so no
  reader ever takes it for the file; it is removed whatever happens.
  """
  fd, name = tempfile.mkstemp(dir=destination.parent, prefix=".part-",
                              suffix=f"-{destination.name}")
  os.close(fd)
  tmp = pathlib.Path(name)
  try:
    yield tmp
    os.replace(tmp, destination)
  finally:
    tmp.unlink(missing_ok=True)


def _make_folder(path: pathlib.Path) -> list[pathlib.Path]:
  """Creates ``path``; returns the folders created, deepest first."""
  created = [p for p in (path, *path.parents) if not p.exists()]
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise DataError(f"cannot create {path} to download into ({e}); set config.data.data_dir (or "
                    "TRANSINV_JAX_DATA) to a folder you can write") from None
  return created


def _open(request: str | urllib.request.Request):
  url = request if isinstance(request, str) else request.full_url
  try:
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)
  except urllib.error.HTTPError as e:
    raise DownloadError(f"{url}: HTTP {e.code} {e.reason}", status=e.code) from None
  except urllib.error.URLError as e:
    raise DownloadError(f"{url}: {e.reason}") from None
  except (OSError, http.client.HTTPException, ValueError) as e:
    raise DownloadError(f"{url}: {e or type(e).__name__}") from None


def _read(response, url: str) -> bytes:
  try:
    return response.read(_CHUNK)
  except (OSError, http.client.HTTPException) as e:
    raise DownloadError(f"{url}: connection failed mid-file ({e or type(e).__name__})") from None


def _range_size(url: str) -> int | None:
  """The size of ``url`` if its server answers range requests, else None."""
  with _open(urllib.request.Request(url, headers={"Range": "bytes=0-0"})) as response:
    total = response.headers.get("Content-Range", "").rpartition("/")[2]
    return int(total) if response.status == 206 and total.isdigit() else None


class _RangeReader(io.RawIOBase):
  """A URL's bytes as a read-only seekable file, through HTTP range requests."""

  def __init__(self, url: str, size: int):
    super().__init__()
    self.url, self.size, self.pos = url, size, 0

  def readable(self) -> bool:
    return True

  def seekable(self) -> bool:
    return True

  def tell(self) -> int:
    return self.pos

  def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
    self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
    return self.pos

  def readinto(self, buffer) -> int:
    end = min(self.pos + len(buffer), self.size)
    if end <= self.pos:
      return 0
    request = urllib.request.Request(self.url, headers={"Range": f"bytes={self.pos}-{end - 1}"})
    with _open(request) as response:
      data = b"".join(iter(lambda: _read(response, self.url), b""))
    if response.status != 206 or len(data) != end - self.pos:
      raise DownloadError(f"{self.url}: range {self.pos}-{end - 1} answered with HTTP "
                          f"{response.status} and {len(data)} bytes")
    buffer[:len(data)] = data
    self.pos = end
    return len(data)


class _Progress:
  """Logs a download's bytes, percent and rate every PROGRESS_EVERY_S seconds."""

  def __init__(self, what: str, total: int | None):
    self.what, self.total, self.done = what, total, 0
    self.start = self.last = time.monotonic()
    logging.info("downloading %s (%s)", what, _size(total) if total else "size unknown")

  def update(self, num_bytes: int) -> None:
    self.done += num_bytes
    if time.monotonic() - self.last >= PROGRESS_EVERY_S:
      self.last = time.monotonic()
      logging.info("%s: %s", self.what, self.status())

  def status(self) -> str:
    rate = self.done / max(time.monotonic() - self.start, 1e-6)
    percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
    return f"{_size(self.done)}{percent} at {_size(rate)}/s"

  def finish(self) -> None:
    logging.info("downloaded %s: %s", self.what, self.status())


def _size(num_bytes: float) -> str:
  return f"{num_bytes / 1e6:.1f} MB" if num_bytes >= 1e6 else f"{num_bytes / 1e3:.0f} kB"
