"""VGG: pure functional, named intermediates, injected conv and pool."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transinv_jax.models import layers, vgg


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
