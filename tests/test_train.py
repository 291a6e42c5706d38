"""Training: the stop rule fires at the exact step (the authors' block rule on synthetic streams),
and resume equals an uninterrupted run. exp1's finding itself is in test_findings.py."""

import functools
import shutil
import signal
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import multihost_utils

from transinv_jax import checkpoints, preemption, sharding, train
from transinv_jax.data import canvas, locations
from transinv_jax.models import vgg

CANVAS, SIZE = 32, 8


@pytest.fixture(scope="module")
def setup():
  """A tiny model and random items; compiled once for the module."""
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  items = jax.device_put(
      train.Items(images=jnp.asarray(rng.integers(0, 256, (50, SIZE, SIZE, 1), dtype=np.uint8)),
                  labels=jnp.asarray(rng.integers(0, 3, 50), jnp.int32)),
      sharding.replicated(mesh))
  model = vgg.VGG11(num_classes=3, width=1 / 32, hidden=32)
  render = functools.partial(canvas.render, canvas_size=CANVAS, mean=np.float32(0.1),
                             std=np.float32(0.3), channels=3)
  step_kwargs = dict(render=render, batch_size=8, mesh=mesh,
                     sampler=locations.make_sampler("fully_translated", CANVAS, SIZE))
  new_state = lambda: train.create_train_state(model, jax.random.key(0)[None], (CANVAS, CANVAS, 3),
                                               1e-3, mesh)
  return items, new_state, step_kwargs


def run(state, setup_, stop, *, log_every=5, checkpoint_every=1000, on_checkpoint=None):
  items, _, step_kwargs = setup_
  records = []
  result = train.train_loop(state, items, jax.random.key(1)[None], log_every=log_every,
                            scan_steps=1, on_metrics=records.append,
                            on_checkpoint=on_checkpoint or (lambda s: None),
                            checkpoint_every=checkpoint_every, stop=stop, **step_kwargs)
  return result, records


def test_max_steps_stops_at_the_exact_step(setup):
  # 12 steps with syncs every 5: the last sync dispatches 3 steps past the cap, which are no-ops.
  result, records = run(setup[1](), setup, train.StopRule(1.1, 0, 12))
  assert result.stop_reason == ["max_steps"] and result.steps == [12]
  assert result.state.step.tolist() == [12]
  assert [r["step"] for r in records] == [[5], [10], [12]]


def test_accuracy_rule_fires_after_the_window(setup):
  # Threshold 0: every step qualifies, so the rule fires when the streak reaches the window.
  result, _ = run(setup[1](), setup, train.StopRule(0.0, 7, 100))
  assert result.stop_reason == ["accuracy"] and result.steps == [7]
  assert result.state.streak.tolist() == [7]
  # Threshold above 1 never qualifies: the cap fires instead, with no streak.
  result, _ = run(setup[1](), setup, train.StopRule(1.01, 3, 6))
  assert result.stop_reason == ["max_steps"] and result.state.streak.tolist() == [0]


def stop_rule_on(accuracies, stop: train.StopRule):
  """The stop rule run over a synthetic accuracy stream: per step (streak, block_mean, reason)."""
  def step(memory, x):
    i, accuracy = x
    new = train._stop_rule(types.SimpleNamespace(**memory), i + 1, accuracy, stop)
    reason = new.pop("stop_reason")
    return new, (new["streak"], new["block_mean"], reason)
  memory = {"streak": jnp.int32(0), "block_sum": jnp.float32(0), "block_mean": jnp.float32(np.nan)}
  accuracies = jnp.asarray(accuracies, jnp.float32)
  _, out = jax.lax.scan(step, memory, (jnp.arange(len(accuracies)), accuracies))
  return [np.asarray(o) for o in out]


def test_block_rule_on_synthetic_accuracy_streams():
  # Batches of 32 alternating under and over 0.75 whose blocks of 5 average 0.775: the authors'
  # block rule stops after 4 blocks (window 20) at step 20 exactly; single batches never do.
  block = [1.0, 1.0, 0.5, 0.5, 0.875]
  streak, means, reason = stop_rule_on(block * 8, train.StopRule(0.75, 20, 1000, block=5))
  assert np.flatnonzero(reason == train.STOP_ACCURACY)[0] == 19  # step 20
  assert streak[:20].tolist() == [0] * 4 + [5] * 5 + [10] * 5 + [15] * 5 + [20]
  np.testing.assert_allclose(means[4::5], 0.775)
  assert np.isnan(means[:4]).all()  # no block finished yet
  _, _, reason = stop_rule_on(block * 8, train.StopRule(0.75, 20, 1000, block=1))
  assert (reason == train.RUNNING).all()
  # A block below the goal (mean 0.7) resets the streak: 2 good, 1 bad, then 4 good -> step 35.
  stream = block * 2 + [0.75, 0.75, 0.75, 0.5, 0.75] + block * 6
  streak, means, reason = stop_rule_on(stream, train.StopRule(0.75, 20, 1000, block=5))
  assert streak[14] == 0 and np.isclose(means[14], 0.7)
  assert np.flatnonzero(reason == train.STOP_ACCURACY)[0] == 34
  # A block mean exactly at the goal counts; a window that is not a multiple of the block fires
  # at the first block end reaching it (window 7 -> step 10); block 1 is the per-batch rule.
  _, _, reason = stop_rule_on([0.75] * 12, train.StopRule(0.75, 7, 1000, block=5))
  assert np.flatnonzero(reason == train.STOP_ACCURACY)[0] == 9
  _, _, reason = stop_rule_on([0.8, 0.8, 0.7] + [0.8] * 3, train.StopRule(0.75, 3, 1000, block=1))
  assert np.flatnonzero(reason == train.STOP_ACCURACY)[0] == 5
  # The cap fires at max_steps whatever the blocks.
  _, _, reason = stop_rule_on([0.0] * 9, train.StopRule(0.75, 20, 8, block=5))
  assert np.flatnonzero(reason == train.STOP_MAX_STEPS)[0] == 7


def test_block_rule_in_the_loop_stops_at_a_block_end(setup):
  # Threshold 0: every block qualifies; window 7 in blocks of 5 fires at step 10 (not 7), and
  # the result carries the block mean at the stop.
  result, records = run(setup[1](), setup, train.StopRule(0.0, 7, 100, block=5))
  assert result.stop_reason == ["accuracy"] and result.steps == [10]
  assert result.state.streak.tolist() == [10]
  assert 0 <= result.block_mean[0] <= 1 and records[-1]["block_mean"] == result.block_mean


def test_resume_from_checkpoint_equals_uninterrupted(setup, tmp_path):
  stop = train.StopRule(1.1, 0, 20)
  ckpts = checkpoints.Checkpoints(tmp_path / "ckpt", max_to_keep=5)
  full, _ = run(setup[1](), setup, stop, checkpoint_every=10, on_checkpoint=ckpts.save)
  ckpts.wait()
  assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == ["10", "20"]
  # A crash after step 10: step 20 never reached the disk.
  shutil.rmtree(tmp_path / "ckpt" / "20")
  restored = checkpoints.Checkpoints(tmp_path / "ckpt").restore_latest(setup[1]())
  assert restored.step.tolist() == [10]
  resumed, records = run(restored, setup, stop)
  assert resumed.steps == [20] and records[0]["step"] == [15]
  for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(resumed.state.params)):
    np.testing.assert_array_equal(a, b)
  chex_opt = zip(jax.tree.leaves(full.state.opt_state), jax.tree.leaves(resumed.state.opt_state))
  for a, b in chex_opt:
    np.testing.assert_array_equal(a, b)


def test_checkpoint_round_trip_and_corruption(setup, tmp_path):
  state, _ = run(setup[1](), setup, train.StopRule(1.1, 0, 5))
  ckpts = checkpoints.Checkpoints(tmp_path / "ckpt")
  assert ckpts.restore_latest(setup[1]()) is None  # nothing saved yet
  ckpts.save(state.state)
  ckpts.wait()
  restored = checkpoints.Checkpoints(tmp_path / "ckpt").restore_latest(setup[1]())
  for a, b in zip(jax.tree.leaves(state.state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)
  assert restored.stop_reason.tolist() == [train.STOP_MAX_STEPS]
  # Damage every data file of the only checkpoint: it is skipped, never loaded; none is left.
  for path in (tmp_path / "ckpt" / "5").rglob("*"):
    if path.is_file() and "metadata" not in path.name:
      path.write_bytes(b"garbage")
  assert checkpoints.Checkpoints(tmp_path / "ckpt").restore_latest(setup[1]()) is None


def test_export_loads_without_orbax(setup, tmp_path):
  state = jax.tree.map(lambda x: x[0], setup[1]())  # one seed's network
  checkpoints.export_variables(tmp_path / "export", state.variables, {"seed": 3})
  variables, config = checkpoints.load_exported(tmp_path / "export")
  assert config == {"seed": 3}
  assert jax.tree.structure(variables) == jax.tree.structure(jax.device_get(state.variables))
  for a, b in zip(jax.tree.leaves(state.variables), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  with np.load(tmp_path / "export" / "variables.npz") as f:  # plain numpy reads it
    assert "params/conv1_1/kernel" in f.files
  with pytest.raises(checkpoints.CheckpointError, match="not found"):
    checkpoints.load_exported(tmp_path / "missing")


def test_preemption_sync_point_stops_at_the_agreed_check(setup, monkeypatch):
  """A stand-in for JAX's preemption service: every host stops at the check it agrees on."""
  asked = []

  def reached(check):  # as the service answers after a notice: True at the agreed check only
    asked.append(check)
    return check == 2

  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", reached)
  preemption.clear()
  preemption.install()  # numbers checks from 0
  saved = []
  items, new_state, step_kwargs = setup
  try:
    with pytest.raises(train.StopRequested) as stopped:
      train.train_loop(new_state(), items, jax.random.key(1)[None], log_every=5, scan_steps=1,
                       on_metrics=lambda r: None, on_checkpoint=saved.append,
                       checkpoint_every=1000, stop=train.StopRule(1.1, 0, 100),
                       should_stop=preemption.requested, **step_kwargs)
  finally:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
  assert asked == [0, 1, 2]  # one check per window, numbered alike on every host
  # The third check stops after the window in flight: steps 5, 10, 15 read, then 20.
  assert stopped.value.step == 20
  assert int(np.max(jax.device_get(saved[-1].step))) == 20


def test_sigterm_stays_with_the_runtime_where_its_preemption_service_runs(monkeypatch):
  before = signal.getsignal(signal.SIGTERM)
  monkeypatch.setattr(preemption, "runtime_service", lambda: True)
  preemption.install()
  assert signal.getsignal(signal.SIGTERM) is before
  monkeypatch.setattr(preemption, "runtime_service", lambda: False)
  try:
    preemption.install()
    assert signal.getsignal(signal.SIGTERM) is not before
  finally:
    signal.signal(signal.SIGTERM, before)
  # Without a distributed runtime, the sync point answers False and costs nothing.
  monkeypatch.undo()
  assert not preemption.runtime_service()
  assert not preemption.sync_point(0)
