"""Tests for transinv_jax.data.download: files fetched on first use, from "publishers" and mirrors
served over HTTP on 127.0.0.1 (ranges, truncation and corruption on demand)."""

import contextlib
import functools
import gzip
import hashlib
import http.server
import io
import logging
import pathlib
import re
import socket
import struct
import threading
import time
import zipfile

import numpy as np
import pytest

from conftest import tiny_config
from transinv_jax import config_checks
from transinv_jax.experiments import stages
from transinv_jax.data import download
from transinv_jax.data import sources
from transinv_jax.data.sources import DataError


class _Handler(http.server.SimpleHTTPRequestHandler):
  """Serves a folder; on demand answers Range requests, cuts files short or flips bytes."""

  ranges = truncate = corrupt = False
  requests: list  # (path, Range header), set per server

  def log_message(self, *args):
    del args

  def do_GET(self):
    self.requests.append((self.path, self.headers.get("Range")))
    path = pathlib.Path(self.translate_path(self.path))
    if not path.is_file():
      self.send_error(404)
      return
    data = path.read_bytes()
    status, body = 200, data
    wanted = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
    if self.ranges and wanted:
      start, end = int(wanted[1]), min(int(wanted[2]), len(data) - 1)
      status, body = 206, data[start:end + 1]
    if self.corrupt:
      body = bytes(b ^ 0x55 for b in body[:64]) + body[64:]
    self.send_response(status)
    self.send_header("Content-Length", str(len(body)))
    if status == 206:
      self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
    self.end_headers()
    self.wfile.write(body[:len(body) // 2] if self.truncate else body)


@contextlib.contextmanager
def serve(folder: pathlib.Path, **behaviour):
  """Serves ``folder`` on 127.0.0.1; yields (base URL, the list of requests made)."""
  handler = type("Handler", (_Handler,), dict(behaviour, requests=[]))
  server = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
  thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # quick stop
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_port}", handler.requests
  finally:
    server.shutdown()
    server.server_close()


def _closed_port_url() -> str:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


@pytest.fixture(autouse=True)
def no_env_mirror(monkeypatch):
  monkeypatch.delenv(download.MIRROR_ENV, raising=False)


def _idx_gz(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
  return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def _fake_mnist(folder: pathlib.Path, seed: int = 0) -> dict[str, bytes]:
  """Writes small IDX .gz files with MNIST's names; returns {name: bytes}."""
  rng = np.random.default_rng(seed)
  files = {}
  for prefix, n in (("train", 12), ("t10k", 5)):
    files[f"{prefix}-images-idx3-ubyte.gz"] = _idx_gz(rng.integers(0, 256, (n, 28, 28)))
    files[f"{prefix}-labels-idx1-ubyte.gz"] = _idx_gz(rng.integers(0, 10, n))
  folder.mkdir(parents=True, exist_ok=True)
  for name, data in files.items():
    (folder / name).write_bytes(data)
  return files


def _publish(monkeypatch, folder: str, bases, files: dict[str, bytes]) -> None:
  """Points the publisher table of ``folder`` at ``bases`` with the files' md5s."""
  monkeypatch.setitem(download.PUBLISHED, folder, {
      name: download.RemoteFile(tuple(f"{b}/{name}" for b in bases),
                                (hashlib.md5(data).hexdigest(),))
      for name, data in files.items()})


def _leftovers(folder: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_publisher_download_is_verified_and_used_once(tmp_path, monkeypatch):
  files = _fake_mnist(tmp_path / "publisher")
  data_dir = tmp_path / "not" / "yet" / "data"  # created by the download
  with serve(tmp_path / "publisher") as (url, requests):
    # The first of the publisher's mirrors is down: the second serves.
    _publish(monkeypatch, "mnist", (_closed_port_url(), url), files)
    items = sources.load_items("mnist", "test", data_dir=str(data_dir))
    assert sorted(p for p, _ in requests) == ["/t10k-images-idx3-ubyte.gz",
                                              "/t10k-labels-idx1-ubyte.gz"]
    sources.load_items("mnist", "test", data_dir=str(data_dir))
    assert len(requests) == 2  # present now: not fetched again
  assert items.images.shape == (5, 28, 28, 1)
  for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    assert (data_dir / "mnist" / name).read_bytes() == files[name]
  assert _leftovers(data_dir / "mnist") == ["t10k-images-idx3-ubyte.gz",
                                            "t10k-labels-idx1-ubyte.gz"]


def test_real_checksums_from_a_mirror_of_the_shared_folder(tmp_path, shared_data_dir):
  # The shared MNIST .gz files were recompressed: accepted by their decoded md5s. Fashion-MNIST's
  # are the publisher's own files.
  with serve(shared_data_dir) as (url, _):
    for dataset in ("mnist", "fashion_mnist"):
      items = sources.load_items(dataset, "test", data_dir=str(tmp_path), mirror=url)
      expected = sources.load_items(dataset, "test", data_dir=str(shared_data_dir))
      np.testing.assert_array_equal(items.images, expected.images)
      np.testing.assert_array_equal(items.labels, expected.labels)
      for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        served = (shared_data_dir / dataset / name).read_bytes()
        assert (tmp_path / dataset / name).read_bytes() == served
        assert download.PUBLISHED[dataset][name].md5s  # checked against the publisher's md5s
  md5s = download.PUBLISHED["mnist"]["t10k-labels-idx1-ubyte.gz"].md5s
  decoded = gzip.decompress((shared_data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
  assert hashlib.md5(decoded).hexdigest() in md5s


def test_corrupt_download_is_refused_and_nothing_kept(tmp_path, monkeypatch):
  files = _fake_mnist(tmp_path / "publisher")
  with serve(tmp_path / "publisher", corrupt=True) as (url, _):
    _publish(monkeypatch, "mnist", (url,), files)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz is corrupt: its md5 "):
      sources.load_items("mnist", "test", data_dir=str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()  # created for the download, removed again
    # Without a known md5 (from a mirror), the file must decode: its gzip CRC fails.
    (tmp_path / "data").mkdir()
    (tmp_path / "publisher" / "emnist").mkdir()
    (tmp_path / "publisher" / "emnist" / "emnist-letters-test-images-idx3-ubyte.gz").write_bytes(
        files["t10k-images-idx3-ubyte.gz"])
    with pytest.raises(DataError, match=r"emnist-letters-test-images-idx3-ubyte\.gz is corrupt"):
      download.fetch(f"{url}/emnist/emnist-letters-test-images-idx3-ubyte.gz",
                     tmp_path / "data" / "letters.gz")
  assert _leftovers(tmp_path / "data") == []  # no file, no temporary file


def test_cut_connection_leaves_nothing(tmp_path, monkeypatch):
  files = _fake_mnist(tmp_path / "publisher")
  (tmp_path / "data").mkdir()
  with serve(tmp_path / "publisher", truncate=True) as (url, _):
    _publish(monkeypatch, "mnist", (url,), files)
    with pytest.raises(DataError, match=r"connection closed after \d+ of \d+ bytes"):
      sources.load_items("mnist", "train", data_dir=str(tmp_path / "data"))
  assert _leftovers(tmp_path / "data") == []  # the existing data folder stays, empty


def test_offline_is_one_line_with_the_ways_on(tmp_path, monkeypatch):
  down = _closed_port_url()
  _publish(monkeypatch, "mnist", (down,), _fake_mnist(tmp_path / "unused"))
  start = time.monotonic()
  with pytest.raises(DataError) as raised:
    sources.load_items("mnist", "train", data_dir=str(tmp_path / "data"))
  assert time.monotonic() - start < 5
  message = str(raised.value)
  assert "\n" not in message
  assert str(tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz") in message
  assert f"{down}/train-images-idx3-ubyte.gz" in message
  for way in ("config.data.data_dir", "TRANSINV_JAX_DATA", "TRANSINV_JAX_DATA_MIRROR",
              "--config.data.mirror"):
    assert way in message
  assert not (tmp_path / "data").exists()  # created for the download, removed again


def _letters_zip(path: pathlib.Path, seed: int = 0, bad_crc: bool = False) -> dict[str, bytes]:
  """A small gzip.zip with the real member names (plus another split's); returns the letters."""
  rng = np.random.default_rng(seed)
  letters = {}
  for split, n in (("train", 10), ("test", 4)):
    images = rng.integers(0, 256, (n, 28, 28))
    letters[f"emnist-letters-{split}-images-idx3-ubyte.gz"] = _idx_gz(images)
    letters[f"emnist-letters-{split}-labels-idx1-ubyte.gz"] = _idx_gz(rng.integers(1, 27, n))
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("gzip/emnist-balanced-train-images-idx3-ubyte.gz", rng.bytes(300_000))
    for name, data in letters.items():
      zf.writestr(f"gzip/{name}", data)
  if bad_crc:  # flip a byte inside the stored train images member
    raw = bytearray(path.read_bytes())
    raw[raw.index(letters["emnist-letters-train-images-idx3-ubyte.gz"]) + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
  return letters


@pytest.mark.parametrize("ranges", [True, False])
def test_emnist_letters_from_the_archive(tmp_path, monkeypatch, ranges):
  (tmp_path / "nist").mkdir()
  archive = tmp_path / "nist" / "gzip.zip"
  letters = _letters_zip(archive)
  with serve(tmp_path / "nist", ranges=ranges) as (url, requests):
    monkeypatch.setattr(download, "EMNIST_ARCHIVE", download.RemoteFile(
        (f"{url}/gzip.zip",), (hashlib.md5(archive.read_bytes()).hexdigest(),)))
    items = sources.load_items("emnist_letters", "train", data_dir=str(tmp_path / "data"))
  assert items.images.shape == (10, 28, 28, 1) and items.num_classes == 26
  assert items.labels.min() >= 0 and items.labels.max() <= 25
  for name, data in letters.items():  # both splits, from one visit
    assert (tmp_path / "data" / "emnist" / name).read_bytes() == data
  assert _leftovers(tmp_path / "data" / "emnist") == sorted(letters)  # the archive is gone
  if ranges:  # the probe, then only past the other split's 300 kB member at the start
    starts = [int(re.match(r"bytes=(\d+)-", r)[1]) for _, r in requests]
    assert starts[0] == 0 and min(starts[1:]) > 300_000 and len(starts) < 10
  else:
    assert [r for _, r in requests] == ["bytes=0-0", None]  # the probe, then the whole archive


@pytest.mark.parametrize("ranges", [True, False])
def test_emnist_letters_bad_member_is_refused(tmp_path, monkeypatch, ranges):
  (tmp_path / "nist").mkdir()
  archive = tmp_path / "nist" / "gzip.zip"
  _letters_zip(archive, bad_crc=True)
  with serve(tmp_path / "nist", ranges=ranges) as (url, _):
    # Without ranges the whole archive is checked by md5 (here its md5 is right: the member's
    # CRC-32 still catches the flipped byte).
    monkeypatch.setattr(download, "EMNIST_ARCHIVE", download.RemoteFile(
        (f"{url}/gzip.zip",), (hashlib.md5(archive.read_bytes()).hexdigest(),)))
    with pytest.raises(DataError, match=r"gzip\.zip is corrupt \(Bad CRC-32"):
      sources.load_items("emnist_letters", "train", data_dir=str(tmp_path / "data"))
  assert _leftovers(tmp_path / "data") == []


def test_mirror_serves_any_accepted_layout(tmp_path, monkeypatch, shared_data_dir):
  served = tmp_path / "lab"
  files = _fake_mnist(served / "kmnist")  # KMNIST as IDX, not npz: the npz names are 404s
  (served / "emnist" / "gzip").mkdir(parents=True)  # EMNIST letters in gzip/
  for name, data in _letters_zip(tmp_path / "unused.zip").items():
    (served / "emnist" / "gzip" / name).write_bytes(data)
  (served / "leek").symlink_to((shared_data_dir / "leek").resolve())
  data_dir = tmp_path / "data"
  with serve(served) as (url, requests):
    # KMNIST's IDX names have publisher md5s, which these small files fail.
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz is corrupt: its md5"):
      sources.load_items("kmnist", "test", data_dir=str(data_dir), mirror=url)
    _publish(monkeypatch, "kmnist", (), files)
    requests.clear()
    kmnist = sources.load_items("kmnist", "test", data_dir=str(data_dir), mirror=url + "/")
    assert (data_dir / "kmnist" / "t10k-images-idx3-ubyte.gz").read_bytes() == (
        files["t10k-images-idx3-ubyte.gz"])
    assert requests[0][0] == "/kmnist/kmnist-test-imgs.npz"
    letters = sources.load_items("emnist_letters", "test", data_dir=str(data_dir), mirror=url)
    assert (data_dir / "emnist" / "gzip" / "emnist-letters-test-labels-idx1-ubyte.gz").is_file()
    leek2 = sources.load_items("leek2", "train", data_dir=str(data_dir), mirror=url)
  assert kmnist.images.shape == (5, 28, 28, 1) and letters.images.shape == (4, 28, 28, 1)
  np.testing.assert_array_equal(
      leek2.images, sources.load_items("leek2", "train", data_dir=str(shared_data_dir)).images)
  assert _leftovers(data_dir / "leek") == ["11.png", "12.png"]


def test_leek_without_a_mirror_says_how(tmp_path):
  with pytest.raises(DataError, match=r"missing \S+/leek/11\.png.*no publisher download.*"
                                      r"TRANSINV_JAX_DATA_MIRROR"):
    sources.load_items("leek2", "train", data_dir=str(tmp_path))
  assert _leftovers(tmp_path) == []


def test_mirror_from_the_environment_and_default_data_dir(tmp_path, monkeypatch,
                                                          shared_data_dir):
  monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  default = tmp_path / ".cache" / "transinv_jax" / "data"
  assert sources.resolve_data_dir("") == default
  with serve(shared_data_dir) as (url, _):
    monkeypatch.setenv(download.MIRROR_ENV, url)
    items = sources.load_items("leek2", "test")
  assert items.images.shape == (2, 130, 130, 3)
  assert _leftovers(default / "leek") == ["11.png", "12.png"]


def test_progress_is_logged(tmp_path, monkeypatch, caplog):
  (tmp_path / "served").mkdir()
  (tmp_path / "served" / "big.gz").write_bytes(_idx_gz(np.zeros((4000, 28, 28))))
  monkeypatch.setattr(download, "PROGRESS_EVERY_S", 0.0)
  monkeypatch.setattr(download, "_CHUNK", 1 << 10)
  with caplog.at_level(logging.INFO), serve(tmp_path / "served") as (url, _):
    download.fetch(f"{url}/big.gz", tmp_path / "big.gz")
  lines = [r.getMessage() for r in caplog.records]
  size = (tmp_path / "big.gz").stat().st_size
  assert any(line == f"downloading {url}/big.gz ({size / 1e3:.0f} kB)" for line in lines)
  assert any(re.search(r"big\.gz: \d+ kB \(\d+%\) at [\d.]+ (kB|MB)/s", line) for line in lines)
  assert lines[-1].startswith(f"downloaded {url}/big.gz: ") and "(100%)" in lines[-1]


def test_mirror_config_check():
  config = tiny_config()
  config.data.mirror = "lab-server:8000"
  with pytest.raises(config_checks.ConfigError, match=r"config\.data\.mirror='lab-server:8000'"):
    stages.check(config, num_devices=1)
  config.data.mirror = "http://lab-server:8000"
  stages.check(config, num_devices=1)


def test_zip_member_read_by_range_equals_the_file(tmp_path):
  # The range reader as zipfile sees it: seeks, short reads, the end of the file.
  data = np.random.default_rng(1).bytes(50_000)
  (tmp_path / "blob").write_bytes(data)
  with serve(tmp_path, ranges=True) as (url, _):
    reader = io.BufferedReader(download._RangeReader(f"{url}/blob", len(data)), buffer_size=4096)
    assert reader.read(10) == data[:10]
    reader.seek(-7, io.SEEK_END)
    assert reader.read() == data[-7:]
    reader.seek(12_345)
    assert reader.read(20_000) == data[12_345:32_345]
