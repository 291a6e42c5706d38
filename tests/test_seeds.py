"""Seeds trained together in one compiled program (vmap) match separate runs."""

import functools

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def run(state, items, key, step_kwargs, seeds):
  records = []
  result = train.train_loop(state, items, key, log_every=4, scan_steps=1, seeds=seeds,
                            on_metrics=records.append, on_checkpoint=lambda s: None,
                            checkpoint_every=100, **step_kwargs)
  return result, records


def test_seeds_together_equal_separate_runs():
  mesh = sharding.make_mesh()
  items, model, step_kwargs = setup(mesh)
  keys = [jax.random.split(jax.random.key(s)) for s in SEEDS]
  init = lambda k: train.create_train_state(model, k, (32, 32, 3), 1e-3, mesh)

  separate = [run(init(ik), items, dk, step_kwargs, seeds=False)[0] for ik, dk in keys]
  together, records = run(init(jnp.stack([k[0] for k in keys])), items,
                          jnp.stack([k[1] for k in keys]), step_kwargs, seeds=True)

  assert together.steps == [r.steps for r in separate]
  assert len(set(together.steps)) > 1  # seeds stopped at different steps: each has its own rule
  assert together.stop_reason == [r.stop_reason for r in separate]
  assert len(records[0]["train_accuracy"]) == len(SEEDS)
  for i, alone in enumerate(separate):
    mine = jax.tree.map(lambda x, i=i: x[i], together.state.params)
    # The same computation batched: equal up to float summation order, not bitwise.
    for a, b in zip(jax.tree.leaves(alone.state.params), jax.tree.leaves(mine)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(together.final_train_accuracy[i], alone.final_train_accuracy)
  # The seeds really differ from each other.
  kernels = together.state.params["conv1_1"]["kernel"]
  assert not np.allclose(kernels[0], kernels[1])


def test_exp1_with_repetitions(tmp_path, shared_data_dir):
  from conftest import only_result, tiny_config  # pylint: disable=g-import-not-at-top
  from transinv_jax.experiments import pipeline  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.num_seeds = 3
  config.seed = 4
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
  pipeline.run(config, str(tmp_path / "alone"))
  alone = json.loads((tmp_path / "alone" / "tests" / "vanilla_mnist" / "result.json")
                     .read_text())
  assert alone["stage_steps"] == [record["stage_steps"][1]]
  assert abs(alone["accuracy_at_trained_location"] - per_seed[1]) <= 0.05
