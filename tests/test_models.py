"""VGG: pure functional, named intermediates, injected conv and pool; BatchNorm with batch
statistics (``config.model.batch_norm_stats="batch"``) in training and every evaluation path."""

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from transinv_jax import config_checks, evaluate, invariance, kernel, models, sharding, train
from transinv_jax.data import canvas, locations
from transinv_jax.experiments import stages
from transinv_jax.models import layers, pretrained, vgg


@pytest.fixture(scope="module")
def tiny_vgg16():
  model = vgg.VGG16(num_classes=7, width=1 / 16)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  params = jax.jit(model.init)(jax.random.key(1), x)["params"]
  return model, params, x


def test_vgg16_outputs_and_named_intermediates(tiny_vgg16):
  model, params, x = tiny_vgg16
  logits, out = model.apply({"params": params}, x)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  convs = [f"conv{s}_{i}" for s, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]
  assert set(out) == set(convs) | {f"pool{s}" for s in range(1, 6)} | {
      "fc6", "fc7", "pre_logits", "logits"}
  assert out["conv1_1"].shape == (2, 32, 32, 4)      # 64 / 16 channels, size kept
  assert out["pool1"].shape == (2, 16, 16, 4)
  assert out["conv5_3"].shape == (2, 2, 2, 32)       # 512 / 16
  assert out["pool5"].shape == (2, 1, 1, 32)
  assert out["fc6"].shape == (2, 256)                # 4096 / 16
  np.testing.assert_array_equal(out["pre_logits"], out["fc7"])
  np.testing.assert_array_equal(out["logits"], logits)
  assert all(float(out[n].min()) >= 0 for n in convs)  # after ReLU
  assert set(params) == set(convs) | {"fc6", "fc7", "logits"}
  assert params["conv1_1"]["kernel"].shape == (3, 3, 3, 4)


def test_vgg_is_pure(tiny_vgg16):
  model, params, x = tiny_vgg16
  a, _ = model.apply({"params": params}, x)
  b, _ = model.apply({"params": params}, x)
  np.testing.assert_array_equal(a, b)
  # Dropout acts only in training, and only through the given rng.
  t1, _ = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(0)})
  t2, _ = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(0)})
  np.testing.assert_array_equal(t1, t2)
  with pytest.raises(Exception):
    model.apply({"params": params}, x, train=True)


def test_injected_conv_and_pool_are_used():
  calls = []

  def avg_pool(x):
    calls.append(x.shape)
    return nn.avg_pool(x, (2, 2), (2, 2))

  conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding="VALID")
  model = vgg.VGG11(num_classes=3, width=1 / 16, conv=conv, pool=avg_pool)
  x = jnp.ones((1, 160, 160, 3))
  (logits, out), _ = jax.eval_shape(model.init_with_output, jax.random.key(0), x)
  assert len(calls) == 5                         # one pool per stage
  assert out["conv1_1"].shape == (1, 158, 158, 4)  # VALID padding shrinks by 2
  assert logits.shape == (1, 3)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_reshape_max_pool_equals_reduce_window(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  expected = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  np.testing.assert_array_equal(layers.max_pool(x), expected)
  np.testing.assert_array_equal(layers.max_pool(x, 3, 2),
                                nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID"))


def test_bfloat16_compute_keeps_float32_params():
  model = vgg.VGG11(num_classes=3, width=1 / 16, dtype=jnp.bfloat16)
  x = jnp.ones((1, 32, 32, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  (logits, out), _ = jax.eval_shape(model.init_with_output, jax.random.key(0), x)
  assert out["conv1_1"].dtype == jnp.bfloat16 and logits.dtype == jnp.float32


def test_too_small_input_is_refused():
  model = vgg.VGG16(num_classes=3, width=1 / 16)
  with pytest.raises(ValueError, match="at least 32 px"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 16, 16, 3)))


@pytest.mark.parametrize("size", [1, 2, 5, 7, 9, 14])
def test_adaptive_avg_pool_matches_torch_bins(size):
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3))
  out = np.asarray(vgg.adaptive_avg_pool(x, (7, 7)))
  assert out.shape == (2, 7, 7, 3)
  # PyTorch's bins: [floor(i * n / 7), ceil((i + 1) * n / 7)).
  for i in range(7):
    for j in range(7):
      r0, r1 = (i * size) // 7, -(-((i + 1) * size) // 7)
      c0, c1 = (j * (size + 1)) // 7, -(-((j + 1) * (size + 1)) // 7)
      np.testing.assert_allclose(out[:, i, j], np.asarray(x[:, r0:r1, c0:c1]).mean((1, 2)),
                                 rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# BatchNorm with batch statistics: config.model.batch_norm_stats


CANVAS, SIZE = 32, 8


def bn_config(stats: str, **overrides) -> ml_collections.ConfigDict:
  """A tiny VGG11-BN (global average pooling head: no classifier to compile)."""
  config = models.default_config()
  config.update({"name": "vgg11", "width": 1 / 32, "dtype": "float32", "dropout": 0.0,
                 "head": "gap", "batch_norm": True, "batch_norm_stats": stats, **overrides})
  return config


@pytest.fixture(scope="module")
def batch_run():
  """A VGG11-BN with batch statistics after 3 training steps, and 6 items to test it on."""
  model, mesh = models.build_model(bn_config("batch"), 3), sharding.make_mesh()
  rng = np.random.default_rng(0)
  items = train.Items(
      images=jnp.asarray(rng.integers(1, 256, (6, SIZE, SIZE, 1), dtype=np.uint8)),
      labels=jnp.asarray(rng.integers(0, 3, 6), jnp.int32))
  render = canvas.Renderer(CANVAS, 0.1, 0.3, 3)
  state = train.create_train_state(model, jax.random.key(0)[None], (CANVAS, CANVAS, 3), 1e-3,
                                   mesh)
  step = jax.jit(lambda s, k: train.train_steps(
      s, items, k, num_steps=1, render=render, batch_size=8, mesh=mesh,
      sampler=locations.make_sampler("fully_translated", CANVAS, SIZE),
      stop=train.StopRule(1.1, 0, 100)))
  one, losses = jax.tree.map(lambda v: v[0], state), []
  for _ in range(3):
    one, metrics = step(one, jax.random.key(1))
    losses.append(float(metrics["loss"][0]))
  return types.SimpleNamespace(model=model, state=state, trained=one, losses=losses,
                               variables=one.variables, items=items, render=render, mesh=mesh)


def test_batch_statistics_model_trains_and_keeps_no_running_statistics(batch_run):
  model, variables = batch_run.model, batch_run.variables
  assert not batch_run.state.batch_stats and not batch_run.trained.batch_stats
  assert int(batch_run.trained.step) == 3 and np.isfinite(batch_run.losses).all()
  assert set(variables) == {"params"} and set(variables["params"]["bn1_1"]) == {"scale", "bias"}
  assert np.abs(variables["params"]["bn1_1"]["scale"] - 1).max() > 0  # trained
  assert models.uses_batch_statistics(model)
  x = jax.random.normal(jax.random.key(0), (6, CANVAS, CANVAS, 3))
  apply = jax.jit(lambda x: model.apply(variables, x)[0])
  test = apply(x)
  (trained, _), updates = jax.jit(functools.partial(model.apply, train=True,
                                                    mutable=["batch_stats"]))(variables, x)
  assert not updates  # nothing for train.py to carry
  np.testing.assert_allclose(trained, test, rtol=1e-5, atol=1e-6)
  # Batch statistics: item 0's answer changes with the other items of its batch.
  others = x.at[1:].set(2 * jax.random.normal(jax.random.key(2), x[1:].shape) + 1)
  assert np.abs(apply(others)[0] - test[0]).max() > 1e-3
  # Running statistics, today's default, keep them; ResNets take "batch" too.
  running = models.build_model(bn_config("running"), 3)
  assert not models.uses_batch_statistics(running)
  assert set(jax.eval_shape(running.init, jax.random.key(0), x)) == {"params", "batch_stats"}
  resnet = models.build_model(bn_config("batch", name="resnet18"), 3)
  assert models.uses_batch_statistics(resnet)
  assert set(jax.eval_shape(resnet.init, jax.random.key(0), x)) == {"params"}


def test_batch_norm_stats_is_validated():
  with pytest.raises(ValueError, match=r"config.model.batch_norm_stats='moving': use one of "
                     "running, batch"):
    models.build_model(bn_config("moving"), 3)
  with pytest.raises(ValueError, match=r"vgg11 does not have: set config.model.batch_norm=True"):
    models.build_model(bn_config("batch", batch_norm=False), 3)
  with pytest.raises(ValueError, match="fcn does not have"):
    models.build_model(bn_config("batch", name="fcn"), 3)

  def checked(**model):
    config = stages.stage_config(tiny_config(), "vanilla_mnist")
    config.model.update({"batch_norm": True, "batch_norm_stats": "batch", **model})
    config_checks.check_config(config, 1)

  checked()
  for model, message in [({"batch_norm_stats": "moving"}, "batch_norm_stats='moving': use running"),
                         ({"batch_norm": False}, "set config.model.batch_norm=True"),
                         ({"pretrained": __file__}, "keeps no running statistics")]:
    with pytest.raises(config_checks.ConfigError, match=message):
      checked(**model)


def test_batch_statistics_export_has_no_running_statistics():
  model = models.build_model(bn_config("batch", head="classifier"), 3)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, CANVAS, CANVAS, 3)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32), shapes["params"])
  state_dict = pretrained.to_torchvision({"params": params}, "vgg11")
  # As BatchNorm2d(track_running_stats=False).state_dict(): weight and bias only.
  assert "features.1.weight" in state_dict and not any("running" in k for k in state_dict)
  back = pretrained.from_torchvision(state_dict, "vgg11")
  assert set(back) == {"params"}
  jax.tree.map(np.testing.assert_array_equal, back["params"], params)


def _base_and_logits(logits, intermediates, centres, operands):
  """``kernel.against_base``'s reduction: the base logits and the logits at each centre."""
  del intermediates, centres
  return operands[0]["logits"], logits


def test_batch_statistics_evaluations_take_the_items_at_one_placement(batch_run):
  model, variables, items, render = (batch_run.model, batch_run.variables, batch_run.items,
                                     batch_run.render)
  stacked = jax.tree.map(lambda v: v[None], variables)
  net = kernel.Inference(model)
  assert net.batch_statistics and kernel.batch_statistics(net)
  apply = jax.jit(lambda x: model.apply(variables, x)[0])
  at = lambda images, c: np.asarray(apply(render(images, jnp.tile(c, (len(images), 1)))))

  # The kernel normalises the items at each centre together: the logits at a centre are the
  # model's for the batch of items at that centre (not for items x centres at once).
  centres = np.array([[4, 4], [16, 16], [27, 9]], np.int32)
  base, moved = kernel.against_base(
      net, stacked, items.images[:4], render=render, reduce=_base_and_logits,
      layers=["logits"], base_centre=np.array([4, 16]), centres=centres,
      centres_per_chunk=2, mesh=batch_run.mesh)
  np.testing.assert_allclose(base[0, :, 0], at(items.images[:4], np.array([4, 16])),
                             rtol=1e-4, atol=1e-5)
  for p, c in enumerate(centres):
    np.testing.assert_allclose(moved[0, :, p], at(items.images[:4], c), rtol=1e-4, atol=1e-5)

  # The sweep's batches of 4 and 2 items: no padding enters the statistics.
  batches = evaluate.item_batches(items, 4, batch_run.mesh, pad=False)
  assert [len(b[0]) for b in batches] == [4, 2] and all(bool(b[2].all()) for b in batches)
  sweep = evaluate.shift_sweep(net, stacked, items, centres, render=render, mesh=batch_run.mesh,
                               items_per_batch=4, centres_per_chunk=2)
  labels = np.asarray(items.labels)
  expected = np.zeros((len(centres), 3), np.int64)
  for p, c in enumerate(centres):
    for b in (slice(0, 4), slice(4, 6)):
      hits = at(items.images[b], c).argmax(-1) == labels[b]
      np.add.at(expected[p], labels[b][hits], 1)
  np.testing.assert_array_equal(sweep.correct[0], expected)

  # Consistency runs on unpadded batches (here 3 and 3 items, each at its own offsets).
  pairs = invariance.consistency(net, stacked, items, jax.random.key(1), render=render,
                                 base_centre=(8, 8), max_offset=8, pairs_per_item=2,
                                 items_per_batch=3)
  assert pairs.predictions.shape == (1, 6, 2, 2)


def test_fcn_initialisation_is_the_authors():
  # Biscione & Bowers' FC network: every weight from N(0, 0.01), every bias zero (not LeCun's
  # fan-in scaled normal, whose first-layer std here would be 1/sqrt(768) = 0.036).
  config = models.default_config()
  config.name = "fcn"
  config.width = 1 / 8
  model = models.build_model(config, 10, "cpu")
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
  assert list(params) == ["fc1", "fc2", "fc3", "fc4", "fc5", "logits"]
  for name, layer in params.items():
    kernel = np.asarray(layer["kernel"])
    assert abs(kernel.std() - 0.01) < 0.001 and abs(kernel.mean()) < 0.001, name
    np.testing.assert_array_equal(layer["bias"], 0)
