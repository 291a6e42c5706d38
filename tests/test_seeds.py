"""Seeds trained side by side: every seeds mode gives each seed the run it would have alone."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import count_compiles, only_result, tiny_config
from transinv_jax import models, sharding, train
from transinv_jax.data import canvas, locations

SEEDS = (0, 1, 2)


def setup(mesh):
  rng = np.random.default_rng(0)
  items = jax.device_put(
      train.Items(images=jnp.asarray(rng.integers(0, 256, (60, 8, 8, 1), dtype=np.uint8)),
                  labels=jnp.asarray(rng.integers(0, 2, 60), jnp.int32)),
      sharding.replicated(mesh))
  config = models.default_config()
  config.update(name="vgg11", width=1 / 32, dropout=0.5)
  model = models.build_model(config, 2)
  render = functools.partial(canvas.render, canvas_size=32, mean=np.float32(0.1),
                             std=np.float32(0.3), channels=3)
  step_kwargs = dict(render=render, batch_size=8, mesh=mesh,
                     sampler=locations.make_sampler("fully_translated", 32, 8),
                     # Accuracy >= 0.5 on 3 steps in a row, or 15 steps: seeds stop when they may.
                     stop=train.StopRule(0.5, 3, 15))
  return items, model, step_kwargs


def run(state, items, keys, step_kwargs, mode):
  records = []
  result = train.train_loop(state, items, keys, log_every=4, scan_steps=1, seeds_mode=mode,
                            on_metrics=records.append, on_checkpoint=lambda s: None,
                            checkpoint_every=100, **step_kwargs)
  return result, records


@pytest.fixture(scope="module")
def seeds_runs():
  """Each seed alone, and all seeds side by side in every mode."""
  mesh = sharding.make_mesh()
  items, model, step_kwargs = setup(mesh)
  keys = [jax.random.split(jax.random.key(s)) for s in SEEDS]
  init = lambda ks: train.create_train_state(model, jnp.stack(ks), (32, 32, 3), 1e-3, mesh)
  alone = [run(init([ik]), items, dk[None], step_kwargs, "sequential")[0] for ik, dk in keys]
  init_keys, data_keys = [k[0] for k in keys], jnp.stack([k[1] for k in keys])
  together = {mode: run(init(init_keys), items, data_keys, step_kwargs, mode)
              for mode in train.SEEDS_MODES}
  return alone, together


def test_sequential_seeds_are_bitwise_the_runs_alone(seeds_runs):
  alone, together = seeds_runs
  result, records = together["sequential"]
  assert result.steps == [r.steps[0] for r in alone]
  assert len(set(result.steps)) > 1  # seeds stopped at different steps: each has its own rule
  assert result.stop_reason == [r.stop_reason[0] for r in alone]
  assert result.final_train_accuracy == [r.final_train_accuracy[0] for r in alone]
  assert all(len(r["train_accuracy"]) == len(SEEDS) for r in records)
  for i, single in enumerate(alone):
    mine = jax.tree.map(lambda x, i=i: x[i], result.state)
    for a, b in zip(jax.tree.leaves(single.state), jax.tree.leaves(mine)):
      np.testing.assert_array_equal(a[0], b)
  # The seeds really differ from each other.
  kernels = result.state.params["conv1_1"]["kernel"]
  assert not np.allclose(kernels[0], kernels[1])


@pytest.mark.parametrize("mode", ["vmap", "lax_map"])
def test_every_seeds_mode_gives_the_same_seeds(seeds_runs, mode):
  _, together = seeds_runs
  reference, _ = together["sequential"]
  result, records = together[mode]
  assert result.steps == reference.steps and result.stop_reason == reference.stop_reason
  assert [r["step"] for r in records][-1] == reference.steps
  np.testing.assert_allclose(result.final_train_accuracy, reference.final_train_accuracy)
  # The same computation batched or looped: equal up to float summation order.
  for a, b in zip(jax.tree.leaves(reference.state.params), jax.tree.leaves(result.state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_stopped_seed_is_no_longer_dispatched():
  """Sequential mode: once the host has seen a seed stop, its state is not touched again."""
  mesh = sharding.make_mesh()
  items, model, step_kwargs = setup(mesh)
  state = train.create_train_state(model, jax.random.split(jax.random.key(0), 2), (32, 32, 3),
                                   1e-3, mesh)
  runner = train.SeedsRunner("sequential", state, items, jax.random.split(jax.random.key(1), 2),
                             scan_steps=1, **step_kwargs)
  first = runner.fetch([runner.dispatch(np.array([True, True]))])
  second = runner.fetch([runner.dispatch(np.array([True, False]))])
  assert first["step"].tolist() == [[1, 1]] and second["step"].tolist() == [[2, -1]]
  assert second["active"].tolist() == [[True, False]]
  assert jax.device_get(runner.state.step).tolist() == [2, 1]


def test_exp1_with_repetitions(tmp_path, shared_data_dir):
  """Three seeds through the whole pipeline: per-seed results, the middle seed equal to its run
  alone, and every program compiled as often as for one seed (once per run, whatever the seeds)."""
  from transinv_jax.experiments import pipeline  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.num_seeds = 3
  config.seed = 4
  jax.clear_caches()
  with count_compiles() as three_seeds:
    summary = only_result(pipeline.run(config, str(tmp_path / "together")))
  record = json.loads((tmp_path / "together" / "tests" / "vanilla_mnist" / "result.json")
                      .read_text())
  assert record["seeds"] == [4, 5, 6] and len(record["stage_stop_reason"]) == 3
  per_seed = record["accuracy_at_trained_location_per_seed"]
  assert summary["accuracy_at_trained_location"] == pytest.approx(np.mean(per_seed))
  assert summary["accuracy_at_trained_location_std"] == pytest.approx(np.std(per_seed))
  with np.load(tmp_path / "together" / "tests" / "vanilla_mnist" / "sweep.npz") as sweep:
    assert sweep["correct"].shape == (3, 9, 10) and sweep["seed_accuracy"].shape == (3, 3, 3)
    np.testing.assert_allclose(sweep["accuracy"], sweep["seed_accuracy"].mean(0))
    np.testing.assert_array_equal(sweep["seeds"], [4, 5, 6])
  stage, = (tmp_path / "together" / "stages").iterdir()
  for seed in (4, 5, 6):
    assert (stage / "export" / f"seed{seed}" / "variables.npz").is_file()
  # The middle seed alone gives the same run (up to float summation order).
  config.num_seeds, config.seed = 1, 5
  jax.clear_caches()
  with count_compiles() as one_seed:
    pipeline.run(config, str(tmp_path / "alone"))
  alone = json.loads((tmp_path / "alone" / "tests" / "vanilla_mnist" / "result.json")
                     .read_text())
  assert alone["stage_steps"] == [record["stage_steps"][1]]
  assert abs(alone["accuracy_at_trained_location"] - per_seed[1]) <= 0.05
  assert three_seeds == one_seed and three_seeds["train_steps"] == 1, (three_seeds, one_seed)
  assert three_seeds["evaluation_kernel"] == 1
