"""The model zoo through its config: every family builds and trains, APS with circular padding is
exactly invariant to circular shifts, and bad knobs stop with the key and the fix."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from transinv_jax import config_checks, models, sharding, train
from transinv_jax.data import canvas, locations
from transinv_jax.experiments import pipeline, stages
from transinv_jax.models import pretrained as pretrained_lib


def model_config(**knobs):
  config = models.default_config()
  config.width = 1 / 16
  config.dropout = 0.0
  config.update(knobs)
  return config


def shifted_logits(config, size=32, shifts=((0, 0), (1, 0), (0, 1), (1, 1), (3, 5), (7, 2),
                                            (16, 16), (31, 30))):
  model = models.build_model(config, 5)
  x = jax.random.normal(jax.random.key(0), (1, size, size, 3))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  batch = jnp.concatenate([jnp.roll(x, s, axis=(1, 2)) for s in shifts])
  return np.asarray(model.apply(variables, batch)[0])


def test_aps_with_circular_padding_is_exactly_shift_invariant():
  # The property APS guarantees: every circular shift of the input gives the same logits.
  logits = shifted_logits(model_config(name="vgg11", padding="circular", pooling="aps",
                                       head="gap"))
  np.testing.assert_allclose(logits, np.broadcast_to(logits[0], logits.shape), rtol=1e-5,
                             atol=1e-5)
  blurred = shifted_logits(model_config(name="vgg11", padding="circular", pooling="aps",
                                        blur_size=3, head="gap"))
  np.testing.assert_allclose(blurred, np.broadcast_to(blurred[0], blurred.shape), rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("pooling", ["max", "blur"])
def test_strided_pooling_is_not_shift_invariant(pooling):
  logits = shifted_logits(model_config(name="vgg11", padding="circular", pooling=pooling,
                                       head="gap"))
  assert np.abs(logits - logits[0]).max() > 1e-3


@pytest.mark.parametrize("knobs", [
    dict(name="vgg16", batch_norm=True, head="gap"),
    dict(name="vgg13", pooling="avg", padding="full"),
    dict(name="resnet18", pooling="blur", blur_size=4),
    dict(name="resnet50", padding="full"),
    dict(name="fcn"),
    dict(name="rook", padding="full"),
])
def test_every_family_trains_through_the_step(knobs):
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  items = jax.device_put(
      train.Items(images=jnp.asarray(rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)),
                  labels=jnp.asarray(rng.integers(0, 3, 16), jnp.int32)),
      sharding.replicated(mesh))
  model = models.build_model(model_config(**knobs), 3)
  state = train.create_train_state(model, jax.random.key(0)[None], (32, 32, 3), 1e-3, mesh)
  state = jax.tree.map(lambda x: x[0], state)  # one seed, as train_step takes it
  render = functools.partial(canvas.render, canvas_size=32, mean=np.float32(0.1),
                             std=np.float32(0.3), channels=3)
  step = jax.jit(functools.partial(
      train.train_step, render=render, batch_size=8, mesh=mesh,
      sampler=locations.make_sampler("fully_translated", 32, 8),
      stop=train.StopRule(1.1, 0, 100)))
  before = jax.device_get(state.variables)
  state, metrics = step(state, items, jax.random.key(1))
  assert np.isfinite(float(metrics["loss"]))
  after = jax.device_get(state.variables)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after)
  assert all(jax.tree.leaves(changed["params"]))         # every parameter moved
  if "batch_stats" in after:                              # running statistics were updated
    assert all(jax.tree.leaves(changed["batch_stats"]))


@pytest.mark.parametrize("change,key", [
    (dict(padding="same"), "config.model.padding"),
    (dict(pooling="strided"), "config.model.pooling"),
    (dict(name="resnet18", pooling="aps"), "config.model.pooling"),
    (dict(blur_size=9), "config.model.blur_size"),
    (dict(avg_pool_size=5), "config.model.avg_pool_size"),
    (dict(name="resnet18", head="classifier"), "config.model.head"),
    (dict(padding_overrides="conv9_1=full"), "config.model.padding_overrides"),
    (dict(padding_overrides="conv1_1=wide"), "config.model.padding_overrides"),
    (dict(padding_overrides="conv1_1"), "config.model.padding_overrides"),
    (dict(name="alexnet"), "config.model.name"),
    (dict(padding="valid"), "config.data.canvas_size"),   # 64 px shrink to nothing
])
def test_bad_model_knobs_are_refused(change, key):
  config = tiny_config()
  config.data.canvas_size = 64
  config.model.update(change)
  with pytest.raises(config_checks.ConfigError, match=key.replace(".", r"\.")):
    stages.check(config, num_devices=1)


def test_padding_override_reaches_the_layer():
  config = model_config(name="vgg11", padding_overrides="conv1_1=full, conv2_1=valid")
  model = models.build_model(config, 3)
  (_, out), _ = jax.eval_shape(model.init_with_output, jax.random.key(0), jnp.ones((1, 64, 64, 3)))
  assert out["conv1_1"].shape[1:3] == (66, 66)   # full: +2
  assert out["conv2_1"].shape[1:3] == (31, 31)   # 33 after the pool, valid: -2


def test_run_starts_from_pretrained_weights(tmp_path):
  config = model_config(name="resnet18", width=1.0)
  mesh = sharding.make_mesh()
  # A torchvision-layout file: another ResNet18 (1000 classes), saved as torch.save would.
  source = models.build_model(config, 1000)
  source_variables = jax.jit(source.init)(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))
  path = tmp_path / "resnet18.pth"
  pretrained_lib.save_torchvision(jax.device_get(source_variables), "resnet18", path)
  config.pretrained = str(path)

  state = train.create_train_state(models.build_model(config, 10), jax.random.key(0)[None],
                                   (32, 32, 3), 1e-3, mesh)
  # What the pipeline does for a stage with config.model.pretrained.
  started = pretrained_lib.load_pretrained(path, "resnet18", jax.device_get(state.variables))
  np.testing.assert_array_equal(started["params"]["conv1"]["kernel"][0],
                                source_variables["params"]["conv1"]["kernel"])
  np.testing.assert_array_equal(started["batch_stats"]["layer4_1"]["bn2"]["var"][0],
                                source_variables["batch_stats"]["layer4_1"]["bn2"]["var"])
  # New classes: the last layer keeps its fresh init.
  assert started["params"]["fc"]["kernel"].shape == (1, 512, 10)
  np.testing.assert_array_equal(started["params"]["fc"]["kernel"], state.params["fc"]["kernel"])


@pytest.mark.parametrize("change,error,message", [
    (dict(pretrained="/nonexistent/vgg16.pth"), config_checks.ConfigError,
     r"config\.model\.pretrained"),
    (dict(pretrained=__file__), pretrained_lib.PretrainedError, "test_zoo.py"),
])
def test_bad_pretrained_is_refused_before_work(tmp_path, change, error, message):
  config = tiny_config()
  config.model.update(change)
  with pytest.raises(error, match=message):
    pipeline.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
