"""The TF-free TensorBoard writer: its files read back with TensorFlow's and TensorBoard's readers
(tags, steps, values; TensorFlow checks every CRC), it never logs, and other processes write
nothing; a run imports no optional dependency; and the progress formatting of progress.py."""

import io
import logging
import subprocess
import sys

import pytest

from transinv_jax import metric_writer, progress

SCALARS = [(10, {"loss": 2.25, "train_accuracy": 0.125}),
           (20, {"loss": 1.5, "train_accuracy": 0.5}),
           (2**40, {"loss": 0.75, "train_accuracy": 1.0})]  # a step past 32 bits


def _write(logdir):
  with metric_writer.EventWriter(logdir) as writer:
    for step, scalars in SCALARS:
      writer.write_scalars(step, scalars)
  return writer.path


def test_crc32c_known_values():
  # The check value of CRC-32C (RFC 3720's test vector) and the empty string.
  assert metric_writer.crc32c(b"123456789") == 0xE3069283
  assert metric_writer.crc32c(b"") == 0
  assert metric_writer.crc32c(bytes(32)) == 0x8A9136AA


def test_masked_crc_matches_tensorboards():
  stub = pytest.importorskip("tensorboard.compat.tensorflow_stub.pywrap_tensorflow")
  for data in (b"", b"a", b"brain.Event:2", bytes(range(256)) * 3):
    assert metric_writer.masked_crc32c(data) == stub.masked_crc32c(data)


def test_events_read_back_with_tensorflow(tmp_path):
  tf = pytest.importorskip("tensorflow")
  path = _write(tmp_path)
  assert path.name.startswith("events.out.tfevents.")
  events = list(tf.compat.v1.train.summary_iterator(str(path)))
  assert events[0].file_version == "brain.Event:2"
  read = [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in events[1:]]
  assert read == SCALARS  # every value is exact in float32
  assert all(e.wall_time > 1.6e9 for e in events)


def test_tensorflow_rejects_a_damaged_record(tmp_path):
  """TensorFlow checks the CRCs, so the read back above checks ours too."""
  tf = pytest.importorskip("tensorflow")
  path = _write(tmp_path)
  data = bytearray(path.read_bytes())
  data[-6] ^= 1  # in the last record's data
  path.write_bytes(bytes(data))
  with pytest.raises(tf.errors.DataLossError):
    list(tf.compat.v1.train.summary_iterator(str(path)))


def test_events_read_back_with_tensorboard(tmp_path):
  accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
  _write(tmp_path / "board")
  board = accumulator.EventAccumulator(str(tmp_path / "board"))
  board.Reload()
  assert sorted(board.Tags()["scalars"]) == ["loss", "train_accuracy"]
  for tag in ("loss", "train_accuracy"):
    assert [(e.step, e.value) for e in board.Scalars(tag)] == [(s, v[tag]) for s, v in SCALARS]


def test_the_writer_logs_nothing(tmp_path, caplog):
  caplog.set_level(logging.DEBUG)
  _write(tmp_path)
  assert not caplog.records


def test_each_writer_has_its_own_file_and_other_processes_write_none(tmp_path):
  first, second = _write(tmp_path), _write(tmp_path)  # the same second: still two files
  assert first != second and len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
  idle = metric_writer.create(tmp_path / "other", active=False)
  idle.write_scalars(1, {"loss": 1.0})
  idle.close()
  assert not (tmp_path / "other").exists()


def test_a_run_imports_no_optional_dependency():
  """The base install (setup.py) has none of them: main and the pipeline must not need them."""
  code = ("import sys, transinv_jax.main, transinv_jax.experiments.pipeline; "
          "bad = [m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'tensorflow_datasets', 'clu', 'tensorboard', 'torch', 'h5py')]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (42.4, "42s"), (59.6, "1m00s"), (750, "12m30s"), (3599, "59m59s"),
    (3600 + 5 * 60 + 20, "1h05m"), (2 * 86400 + 4 * 3600, "2d04h"), (-3, "0s"),
    (None, "?"), (float("inf"), "?"), (float("nan"), "?")])
def test_format_duration(seconds, text):
  assert progress.format_duration(seconds) == text


def test_training_status_says_the_percent_is_of_the_cap_and_etas_are_bounds():
  assert progress.training_status(450, 1000, 12.34, 44.6, 3725) == (
      "step 450/1000 (45% of the cap), 12.3 steps/s, at most 45s left in the stage, 1h02m in "
      "the experiment")
  assert progress.percent(1200, 1000) == 100 and progress.percent(0, 0) == 100


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_the_bar_draws_one_line_on_a_terminal_only(monkeypatch):
  monkeypatch.setenv("COLUMNS", "40")
  pipe = io.StringIO()
  progress.Bar(pipe).show(0.5, "stage 1/1")
  assert not pipe.getvalue()
  terminal = _Terminal()
  bar = progress.Bar(terminal, width=10)
  bar.show(0.5, "stage 1/1 train")
  bar.show(1.0, "stage 1/1 train, and a tail longer than the terminal")
  bar.clear()
  bar.clear()  # nothing drawn: nothing to clear
  drawn = terminal.getvalue().split("\r")
  # Each bar ends at its line's start, so that any other log line overwrites it.
  assert drawn == ["", "[#####.....]  50% stage 1/1 train\x1b[K", "",
                   "[##########] 100% stage 1/1 train, and \x1b[K", "", "\x1b[K"]
  assert len(drawn[3]) == 39 + len("\x1b[K")  # one short of the 40 columns: never wraps
