"""TensorBoard event files without TensorFlow, TensorBoard or CLU.

TensorBoard reads ``events.out.tfevents.*`` files: TFRecords (length, masked CRC32C of the length,
data, masked CRC32C of the data) of serialized ``tensorflow.Event`` protos. Scalars need only a few
proto fields, so they are encoded here by hand:

  Event    wall_time (1, double), step (2, int64), file_version (3, string), summary (5)
  Summary  value (1, repeated)
  Value    tag (1, string), simple_value (2, float)

``simple_value`` is what ``tf.compat.v1.summary.scalar`` writes; TensorBoard shows it as a scalar.
The writer never logs: the training loop's own log line is the one record of each step.
"""

import contextlib
import itertools
import os
import socket
import struct
import time
from collections.abc import Mapping

from etils import epath

from transinv_jax import workdir as workdir_lib

# CRC32C (Castagnoli), reflected polynomial: TFRecord's checksum.
_CRC32C_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8


def _crc32c_table() -> tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (_CRC32C_POLY if crc & 1 else 0)
    table.append(crc)
  return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC32C of ``data``; byte by byte, fast enough for records of a few hundred bytes."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC32C: rotated right by 15 bits, plus a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: uint64 length, its masked CRC, the data, the data's masked CRC."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data +
          struct.pack("<I", masked_crc32c(data)))


# -- protobuf wire format, only what Event needs


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # negative int64s take ten bytes, as protobuf encodes them
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint(field << 3 | wire_type)


def _bytes_field(field: int, payload: bytes) -> bytes:
  return _key(field, 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, file_version: str | None = None,
          scalars: Mapping[str, float] | None = None) -> bytes:
  """A serialized ``Event`` proto.

  Args:
    wall_time: seconds since the epoch.
    step: the training step.
    file_version: set on a file's first event only ("brain.Event:2").
    scalars: tag -> value, written as one ``Summary`` of ``simple_value``s.

  Returns:
    The proto's bytes.
  """
  out = _key(1, 1) + struct.pack("<d", wall_time)
  if step:
    out += _key(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _bytes_field(3, file_version.encode())
  if scalars:
    summary = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value))
        for tag, value in scalars.items())
    out += _bytes_field(5, summary)
  return out


_FILE_NUMBERS = itertools.count()


class EventWriter:
  """Writes scalars to a new ``events.out.tfevents.<time>.<host>.<pid>.<n>`` file in ``logdir``.

  A new file per writer, as TensorFlow does: a resumed stage adds a file next to the earlier ones
  and TensorBoard reads them all. ``logdir`` may be local or any ``etils.epath`` path (gs://...).

  Args:
    logdir: the folder; made if missing.
  """

  def __init__(self, logdir: str | os.PathLike):
    directory = epath.Path(logdir)
    directory.mkdir(parents=True, exist_ok=True)
    now = time.time()
    # pid and a counter keep two writers opened in the same second from sharing a file.
    self.path = directory / (f"events.out.tfevents.{int(now)}.{socket.gethostname()}."
                             f"{os.getpid()}.{next(_FILE_NUMBERS)}")
    # Locally each record is appended whole or not at all (workdir.append: a full disk leaves no
    # torn record); an object store takes one open stream.
    self._file = None if workdir_lib.is_local(self.path) else self.path.open("wb")
    self._write(tfrecord(event(now, file_version="brain.Event:2")))

  def _write(self, record: bytes) -> None:
    if self._file is None:
      workdir_lib.append(self.path, record)
    else:
      self._file.write(record)
      self._file.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Writes one event of ``scalars`` (tag -> value) at ``step``, flushed at once so that
    TensorBoard shows a running stage."""
    self._write(tfrecord(event(time.time(), step, scalars={
        tag: float(value) for tag, value in scalars.items()})))

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()

  def close(self) -> None:
    if self._file is not None and not self._file.closed:
      with contextlib.suppress(OSError):  # after a failed write: the error is already raised
        self._file.close()

  def __enter__(self) -> "EventWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class NoWriter:
  """Stands in for an ``EventWriter`` on processes that write no files (all but process 0)."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    del step, scalars

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def create(logdir: str | os.PathLike, active: bool = True) -> EventWriter | NoWriter:
  """An ``EventWriter`` for ``logdir`` where ``active`` (process 0), else a ``NoWriter``.

  Args:
    logdir: the folder of the event files.
    active: whether this process writes files (``workdir.is_writer()``).

  Returns:
    A writer with ``write_scalars(step, scalars)`` and ``close()``.
  """
  return EventWriter(logdir) if active else NoWriter()
