"""Preemption and crashes lose nothing: SIGKILL at random points and SIGTERM resume to the same
bits; damaged checkpoints are skipped, never loaded; NaN stops training before a bad checkpoint;
reruns are deterministic; a workdir of another config is refused, resumed as is, or restarted."""

import json
import logging as std_logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO_ROOT, exported_variables, subprocess_env, tiny_config
from transinv_jax import checkpoints, preemption, sharding, train, workdir
from transinv_jax.data import canvas, locations
from transinv_jax.experiments import pipeline
from transinv_jax.models import vgg

# A tiny exp1 cell of two seeds through the real command: 60 steps, a checkpoint every 5.
ARGS = ("--config=configs/exp1.py:smoke", "--config.model.name=vgg11", "--config.num_seeds=2",
        "--config.data.canvas_size=32", "--config.data.item_size=12",
        "--config.data.max_train_items=500", "--config.train.max_steps=60",
        "--config.train.stop_window=0", "--config.train.log_every=5",
        "--config.train.checkpoint_every=5", "--config.eval.max_items=20",
        "--config.eval.items_per_batch=20", "--config.eval.centres_per_chunk=7")


def _start(run_dir: pathlib.Path, cache: pathlib.Path, fault=None) -> subprocess.Popen:
  flags = (*ARGS, f"--workdir={run_dir}", f"--jax_cache_dir={cache}")
  argv = [sys.executable, "-m", "transinv_jax.main", *flags] if fault is None else [
      sys.executable, str(REPO_ROOT / "tests" / "faults.py"), *map(str, fault), "--", *flags]
  return subprocess.Popen(argv, cwd=REPO_ROOT, env=subprocess_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _records(run_dir: pathlib.Path) -> int:
  files = list(run_dir.glob("stages/*/metrics.jsonl"))
  return len(files[0].read_text().splitlines()) if files else 0


def _wait_for_records(proc, run_dir, count, timeout=300) -> bool:
  """Waits until the stage has logged ``count`` records; False if the run ended first."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if _records(run_dir) >= count:
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.05)
  raise TimeoutError(f"no {count} records in {run_dir}")


def _same_records(a: pathlib.Path, b: pathlib.Path) -> None:
  """Determinism: the same config and seed give the same metrics and results (timing aside)."""
  drop = lambda r, keys: {k: v for k, v in r.items() if k not in keys}
  read = lambda d: [drop(json.loads(l), ("steps_per_sec", "eta_seconds")) for l in
                    next(d.glob("stages/*/metrics.jsonl")).read_text().splitlines()]
  assert read(a) == read(b)
  results = lambda d: [drop(r, ("seconds",)) for r in
                       json.loads((d / "results.json").read_text())]
  assert results(a) == results(b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shared_data_dir):
  del shared_data_dir
  root = tmp_path_factory.mktemp("reliability")
  proc = _start(root / "clean", root / "xla_cache")
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return root


# Where each run is killed (tests/faults.py: at the nth such write of that process, half-way
# through it), one run after another in one workdir. Training moves on at most n records per
# killed run (8 in all, of 12), so every training kill lands in training; the later kills land
# in the stage's export and record, a test, the figures, the tables and the summary.
KILLS = (("metrics", 2), ("checkpoint", 2), ("*_digests/*.json", 1), ("tensorboard", 2),
         ("metrics", 1), ("checkpoint", 1),
         ("*/export/seed1/variables.npz", 1), ("*/stages/*/done.json", 1),
         ("*/tests/*/result.json", 1), ("*/figures/*", 1), ("*/results.csv", 1),
         ("*/summary.json", 1))
FIRST_AFTER_TRAINING = 7  # KILLS[7:] find training over: they must not train again


def test_sigkill_at_every_kind_of_write_resumes_to_the_same_bits(uninterrupted):
  root = uninterrupted
  run_dir, trained = root / "killed", None
  for i, (where, nth) in enumerate(KILLS):
    proc = _start(run_dir, root / "xla_cache", fault=("kill", where, nth))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL and f"FAULT kill {where}" in err, (
        i, where, proc.returncode, err[-3000:])
    stage, = (run_dir / "stages").iterdir()
    if i < FIRST_AFTER_TRAINING - 1:
      assert _records(run_dir) < 12, (i, where, "training ended before its kills")
    if i >= FIRST_AFTER_TRAINING:  # a rerun after training ends finishes without training
      assert (stage / "metrics.jsonl").read_bytes() == trained[0], (i, where)
      assert sorted(p.name for p in (stage / "checkpoints").iterdir()) == trained[1], (i, where)
    if i == FIRST_AFTER_TRAINING - 1:
      assert _records(run_dir) == 12, err[-3000:]
      trained = ((stage / "metrics.jsonl").read_bytes(),
                 sorted(p.name for p in (stage / "checkpoints").iterdir()))
  assert not (run_dir / "summary.json").exists()
  proc = _start(run_dir, root / "xla_cache")
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert "taking over the lock" in err     # the killed run's lock, its process gone
  clean, resumed = exported_variables(root / "clean"), exported_variables(run_dir)
  assert sorted(clean) == sorted(resumed) and any(k.startswith("seed1/") for k in clean)
  for key in clean:
    np.testing.assert_array_equal(clean[key], resumed[key], err_msg=key)
  # The metrics file holds each step once, in order, with the uninterrupted run's values.
  steps = [json.loads(l)["step"] for l in
           next(run_dir.glob("stages/*/metrics.jsonl")).read_text().splitlines()]
  assert steps == [[s, s] for s in range(5, 61, 5)], steps
  _same_records(root / "clean", run_dir)
  done = lambda d: json.loads(next(d.glob("stages/*/done.json")).read_text())
  for key in ("steps", "stop_reason", "final_train_accuracy", "stop_block_mean"):
    assert done(run_dir)[key] == done(root / "clean")[key], key
  assert not list(run_dir.rglob("*.tmp[0-9]*"))
  assert not list(run_dir.rglob("*orbax-checkpoint-tmp*"))


def test_sigterm_checkpoints_exits_143_and_the_rerun_resumes(uninterrupted):
  root = uninterrupted
  run_dir = root / "preempted"
  proc = _start(run_dir, root / "xla_cache")
  assert _wait_for_records(proc, run_dir, 3)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == preemption.EXIT_CODE, err[-3000:]
  assert "preempted during stage vanilla_mnist, checkpointed at step" in err
  step = int(err.split("checkpointed at step ")[1].split(":")[0])
  assert 15 <= step < 60
  stage, = (run_dir / "stages").iterdir()
  assert str(step) in {p.name for p in (stage / "checkpoints").iterdir()}
  assert (stage / "checkpoints_digests" / f"{step}.json").is_file()  # sealed
  assert not (run_dir / "summary.json").exists() and not (stage / "done.json").exists()
  proc = _start(run_dir, root / "xla_cache")
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert f"resuming from the checkpoint of step {step}" in err
  clean, resumed = exported_variables(root / "clean"), exported_variables(run_dir)
  for key in clean:
    np.testing.assert_array_equal(clean[key], resumed[key], err_msg=key)
  _same_records(root / "clean", run_dir)


# -- damaged checkpoints


@pytest.fixture()
def saved(tmp_path):
  """Checkpoints at steps 3 and 6 of a tiny training run."""
  model = vgg.VGG11(num_classes=3, width=1 / 32, hidden=16)
  mesh = sharding.make_mesh(jax.devices()[:1])
  rng = np.random.default_rng(0)
  items = train.Items(jnp.asarray(rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)),
                      jnp.asarray(rng.integers(0, 3, 20), jnp.int32))
  render = lambda im, c: canvas.render(im, c, canvas_size=32, mean=jnp.float32(0.1),
                                       std=jnp.float32(0.3), channels=3)
  fresh = lambda: train.create_train_state(model, jax.random.key(0)[None], (32, 32, 3), 1e-3,
                                            mesh)
  ckpts = checkpoints.Checkpoints(tmp_path / "ckpt", max_to_keep=5)
  kwargs = dict(log_every=3, scan_steps=1, on_metrics=lambda r: None, render=render,
                sampler=locations.make_sampler("fully_translated", 32, 8), batch_size=4,
                mesh=mesh, on_checkpoint=ckpts.save, checkpoint_every=3)
  result = train.train_loop(fresh(), items, jax.random.key(1)[None],
                            stop=train.StopRule(1.1, 0, 6), **kwargs)
  ckpts.wait()
  return tmp_path / "ckpt", fresh, result, (items, kwargs)


def _flip_a_byte(step_dir: pathlib.Path):
  biggest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(biggest.read_bytes())
  data[len(data) // 2] ^= 0xFF
  biggest.write_bytes(bytes(data))


def _truncate(step_dir):
  biggest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[:10])


def _delete_a_file(step_dir):
  next(p for p in sorted(step_dir.rglob("*")) if p.is_file()).unlink()


@pytest.mark.parametrize("damage,problem", [
    (_flip_a_byte, "changed since it was written"),
    (_truncate, "changed since it was written"),
    (_delete_a_file, "missing"),
])
def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(saved, damage, problem, caplog):
  directory, fresh, _, _ = saved
  ckpts = checkpoints.Checkpoints(directory)
  assert ckpts.all_steps() == [3, 6] and ckpts.check(6) is None
  damage(directory / "6")
  assert problem in ckpts.check(6)
  restored = ckpts.restore_latest(fresh())
  assert restored.step.tolist() == [3]
  assert "checkpoint 6" in caplog.text and "damaged and skipped" in caplog.text


def test_an_unsealed_damaged_checkpoint_is_skipped_too(saved):
  """A crash between a save and its seal leaves a step orbax alone must judge: garbage in it
  fails orbax's reading, and it is skipped."""
  directory, fresh, _, _ = saved
  (directory.with_name("ckpt_digests") / "6.json").unlink()
  for path in (directory / "6").rglob("*"):
    if path.is_file():
      path.write_bytes(b"garbage")
  assert checkpoints.Checkpoints(directory).restore_latest(fresh()).step.tolist() == [3]


def test_a_damaged_seal_or_all_damaged_leaves_nothing_loaded(saved):
  directory, fresh, _, _ = saved
  (directory.with_name("ckpt_digests") / "6.json").write_text("{not json")
  ckpts = checkpoints.Checkpoints(directory)
  assert "unreadable" in ckpts.check(6)
  _flip_a_byte(directory / "3")
  assert ckpts.restore_latest(fresh()) is None   # train from the start, never from bad bits


# -- NaN guard


def test_nan_stops_training_before_a_bad_checkpoint(saved):
  directory, fresh, result, (items, kwargs) = saved
  ckpts = checkpoints.Checkpoints(directory, max_to_keep=5)
  kwargs = dict(kwargs, on_checkpoint=ckpts.save)
  # The state of step 6, still running, with params gone bad (as an overflow would leave them).
  poisoned = result.state.replace(
      params=jax.tree.map(lambda p: p * jnp.nan, result.state.params),
      stop_reason=jnp.full((1,), train.RUNNING, jnp.int32))
  with pytest.raises(train.Diverged, match="the training loss is nan at step 7"):
    train.train_loop(poisoned, items, jax.random.key(1)[None], stop=train.StopRule(1.1, 0, 12),
                     **kwargs)
  ckpts.wait()
  assert ckpts.all_steps() == [3, 6]                 # nothing saved after the last good one
  good = ckpts.restore_latest(fresh())
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(good.params))


def test_bad_params_are_never_saved_even_with_a_finite_loss(saved):
  """An update that overflows leaves NaN params after a step whose loss was finite: the
  checkpoint that would follow is refused."""
  directory, _, result, (items, kwargs) = saved
  ckpts = checkpoints.Checkpoints(directory, max_to_keep=5)
  stopped_bad = result.state.replace(
      params=jax.tree.map(lambda p: p.at[(0,) * p.ndim].set(jnp.inf), result.state.params))
  with pytest.raises(train.Diverged, match="the parameters are NaN or infinite after step 6"):
    train.train_loop(stopped_bad, items, jax.random.key(1)[None], stop=train.StopRule(1.1, 0, 6),
                     **dict(kwargs, on_checkpoint=ckpts.save))
  ckpts.wait()
  assert ckpts.all_steps() == [3, 6] and ckpts.check(6) is None   # step 6 is still the good one


def test_a_diverging_stage_names_the_step_and_writes_no_result(tmp_path, shared_data_dir):
  del shared_data_dir
  config = tiny_config()
  config.train.learning_rate = 1e30
  with pytest.raises(pipeline.TrainingDiverged,
                     match=r"stage vanilla_mnist: the (training loss is (nan|inf) at step|"
                     r"parameters are NaN or infinite after step) \d+.*"
                     r"config.train.learning_rate"):
    pipeline.run(config, str(tmp_path / "run"))
  stage, = (tmp_path / "run" / "stages").iterdir()
  assert not (stage / "done.json").exists() and not (stage / "export").exists()
  assert not (tmp_path / "run" / "summary.json").exists()


# -- workdirs: another config, damaged files


class _Lines(std_logging.Handler):

  def __init__(self):
    super().__init__(std_logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shared_data_dir):
  """A finished tiny run; ``run.log`` next to it holds its INFO log lines."""
  del shared_data_dir
  run_dir = tmp_path_factory.mktemp("workdirs") / "run"
  absl_logger, handler = std_logging.getLogger("absl"), _Lines()
  level = absl_logger.level
  absl_logger.setLevel(std_logging.INFO)
  absl_logger.addHandler(handler)
  try:
    pipeline.run(tiny_config(), str(run_dir))
  finally:
    absl_logger.removeHandler(handler)
    absl_logger.setLevel(level)
  (run_dir.parent / "run.log").write_text("".join(line + "\n" for line in handler.lines))
  return run_dir


def test_resume_as_is_runs_the_stored_config(finished_run, tmp_path):
  run_dir = tmp_path / "run"
  shutil.copytree(finished_run, run_dir)
  changed = tiny_config()
  changed.eval.max_items = 8
  summary = pipeline.run(changed, str(run_dir), on_config_change="resume")
  assert summary == json.loads((finished_run / "summary.json").read_text())
  assert json.loads((run_dir / "config.json").read_text())["eval"]["max_items"] == 40


def test_restart_discards_results_and_keeps_stages(finished_run, tmp_path):
  run_dir = tmp_path / "run"
  shutil.copytree(finished_run, run_dir)
  changed = tiny_config()
  changed.eval.max_items = 8                       # a test setting: the stage is the same
  stage_before = sorted(p.name for p in (run_dir / "stages").iterdir())
  summary = pipeline.run(changed, str(run_dir), on_config_change="restart")
  assert summary["results"][0]["test_items"] == 8
  assert json.loads((run_dir / "config.json").read_text())["eval"]["max_items"] == 8
  assert sorted(p.name for p in (run_dir / "stages").iterdir()) == stage_before


def test_a_bad_new_config_does_not_wipe_the_old_run(finished_run, tmp_path):
  run_dir = tmp_path / "run"
  shutil.copytree(finished_run, run_dir)
  changed = tiny_config()
  changed.data.item_size = 100
  with pytest.raises(Exception, match="config.data.item_size=100"):
    pipeline.run(changed, str(run_dir), on_config_change="restart")
  assert (run_dir / "summary.json").exists() and (run_dir / "tests").is_dir()


def test_damaged_results_are_made_again(finished_run, tmp_path):
  run_dir = tmp_path / "run"
  shutil.copytree(finished_run, run_dir)
  record = json.loads((run_dir / "tests" / "vanilla_mnist" / "result.json").read_text())
  (run_dir / "summary.json").write_text("{truncated")
  (run_dir / "tests" / "vanilla_mnist" / "result.json").write_text("")
  stage, = (run_dir / "stages").iterdir()
  (stage / "export" / "seed0" / "variables.npz").unlink()     # the stage finishes again
  summary = pipeline.run(tiny_config(), str(run_dir))
  again = json.loads((run_dir / "tests" / "vanilla_mnist" / "result.json").read_text())
  assert again["mean_accuracy"] == record["mean_accuracy"]
  assert summary["results"][0]["mean_accuracy"] == record["mean_accuracy"]


def test_a_damaged_config_json_says_how_to_go_on(finished_run, tmp_path):
  run_dir = tmp_path / "run"
  shutil.copytree(finished_run, run_dir)
  (run_dir / "config.json").write_text("{")
  with pytest.raises(workdir.WorkdirError, match="config.json is damaged.*restart"):
    pipeline.run(tiny_config(), str(run_dir))
  summary = pipeline.run(tiny_config(), str(run_dir), on_config_change="restart")
  assert summary["results"][0]["test_items"] == 40


def test_tensorboard_events_are_written(finished_run):
  stage, = (finished_run / "stages").iterdir()
  files = list((stage / "tensorboard").glob("events.out.tfevents.*"))
  assert len(files) == 1
  tf = pytest.importorskip("tensorflow")
  events = list(tf.compat.v1.train.summary_iterator(str(files[0])))
  records = workdir.read_metrics(stage / "metrics.jsonl")
  assert [e.step for e in events[1:]] == [max(r["step"]) for r in records] == [10, 20]
  for event, record in zip(events[1:], records):
    values = {v.tag: v.simple_value for v in event.summary.value}
    assert sorted(values) == ["loss", "steps_per_sec", "train_accuracy"]
    assert values["loss"] == pytest.approx(np.mean(record["loss"]), rel=1e-6)


def test_each_training_record_is_logged_once_with_percent_and_eta(finished_run):
  stage, = (finished_run / "stages").iterdir()
  records = workdir.read_metrics(stage / "metrics.jsonl")
  # CLU's logging writer used to log every record a second time.
  lines = [line for line in (finished_run.parent / "run.log").read_text().splitlines()
           if "train_accuracy" in line]
  assert len(lines) == len(records) == 2
  for line, record in zip(lines, records):
    step = max(record["step"])
    assert f"step {step}/20 ({5 * step}% of the cap)" in line, line
    assert "at most" in line and "left in the stage" in line, line
  progress = json.loads((finished_run / "progress.json").read_text())
  assert progress["max_steps"] == 20 and progress["percent_of_max_steps"] == 100
  assert progress["stage_eta"] == "0s"


def test_only_process_zero_writes(monkeypatch, tmp_path):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert not workdir.is_writer()
  workdir.MetricsWriter(tmp_path / "m.jsonl").write(step=1)
  assert not (tmp_path / "m.jsonl").exists()
  assert workdir.prepare({"a": 1}, tmp_path / "run") is None
  assert not (tmp_path / "run").exists()


def test_sigterm_sets_the_flag_instead_of_ending_the_process():
  preemption.clear()
  assert not preemption.requested()
  preemption.install()
  try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)
    assert preemption.requested()
  finally:
    preemption.clear()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
