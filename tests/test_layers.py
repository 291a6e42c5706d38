"""Layers against PyTorch and the peers' reference code: padding modes, pools, BlurPool, APS."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transinv_jax.models import layers

BINOMIAL_ROWS = {1: [1], 2: [1, 1], 3: [1, 2, 1], 4: [1, 3, 3, 1], 5: [1, 4, 6, 4, 1],
                 6: [1, 5, 10, 10, 5, 1], 7: [1, 6, 15, 20, 15, 6, 1]}
TORCH_PADS = {"reflect": torch.nn.ReflectionPad2d, "replicate": torch.nn.ReplicationPad2d,
              "zeros": torch.nn.ZeroPad2d}


def to_torch(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def from_torch(t: torch.Tensor) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def normal(seed: int, shape) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def apply_conv(x, kernel, bias=None, **kwargs) -> np.ndarray:
  params = {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}
  conv = layers.Conv(features=kernel.shape[-1], kernel_size=kernel.shape[0],
                     use_bias=bias is not None, **kwargs)
  return np.asarray(conv.apply({"params": params}, x))


def torch_conv(x, kernel, bias, stride: int, mode: str) -> np.ndarray:
  k, _, cin, cout = kernel.shape
  padding = {"valid": 0, "full": k - 1}.get(mode, k // 2)
  conv = torch.nn.Conv2d(cin, cout, k, stride, padding, bias=bias is not None,
                         padding_mode="zeros" if mode in ("zeros", "valid", "full") else mode)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
    if bias is not None:
      conv.bias.copy_(torch.from_numpy(bias))
    return from_torch(conv(to_torch(x)))


def torch_blur_pool(x, size: int, pad_mode: str, stride: int = 2) -> np.ndarray:
  """Zhang's BlurPool (antialiased-cnns), on NHWC numpy in and out."""
  t = to_torch(x)
  if size == 1:
    return from_torch(t[:, :, ::stride, ::stride])
  pads = [(size - 1) // 2, math.ceil((size - 1) / 2)] * 2
  a = torch.tensor(BINOMIAL_ROWS[size], dtype=torch.float32)
  filt = a[:, None] * a[None, :]
  filt = (filt / filt.sum())[None, None].repeat(t.shape[1], 1, 1, 1)
  return from_torch(F.conv2d(TORCH_PADS[pad_mode](pads)(t), filt, stride=stride,
                             groups=t.shape[1]))


def torch_blur_pool_circular(x: np.ndarray, size: int) -> torch.Tensor:
  t = F.pad(to_torch(x), [(size - 1) // 2, size // 2] * 2, mode="circular")
  a = torch.tensor(BINOMIAL_ROWS[size], dtype=torch.float32)
  filt = (a[:, None] * a[None, :] / a.sum() ** 2)[None, None].repeat(t.shape[1], 1, 1, 1)
  return F.conv2d(t, filt, groups=t.shape[1])


def aps_reference(x: np.ndarray, norm: str = "l2", blur_size: int = 1) -> np.ndarray:
  """APS in numpy, per sample: blur, pad to even, choose the phase on the unblurred input."""
  source = x
  if blur_size > 1:
    source = from_torch(torch_blur_pool_circular(x, blur_size))
  even = ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0))
  x, source = np.pad(x, even, mode="wrap"), np.pad(source, even, mode="wrap")
  out = []
  for xb, sb in zip(x, source):
    comps = [np.abs(xb[i::2, j::2].astype(np.float64)) for i in (0, 1) for j in (0, 1)]
    norms = [{"l2": np.sqrt((c ** 2).sum()), "l1": c.sum(), "linf": c.max()}[norm] for c in comps]
    p = int(np.argmax(norms))
    out.append(sb[p // 2::2, p % 2::2])
  return np.stack(out)


# ---------------------------------------------------------------------------------------------
# Conv


@pytest.mark.parametrize("mode", layers.PADDING_MODES)
def test_conv_matches_torch_conv2d(mode):
  seed = 0
  for k in (3, 5):
    for stride in (1, 2):
      for size, (cin, cout), with_bias in ((7, (1, 2), True), (8, (3, 4), False)):
        seed += 1
        x = normal(seed, (2, size, size + 1, cin))
        kernel = normal(seed + 100, (k, k, cin, cout))
        bias = normal(seed + 200, (cout,)) if with_bias else None
        got = apply_conv(x, kernel, bias, strides=stride, padding=mode)
        np.testing.assert_allclose(got, torch_conv(x, kernel, bias, stride, mode), atol=1e-5,
                                   err_msg=f"k={k} stride={stride} size={size}")


def test_conv_by_hand_on_arange():
  x = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
  ones = np.ones((3, 3, 1, 1), np.float32)
  expected = {
      "zeros": [[8, 15, 12], [21, 36, 27], [20, 33, 24]],
      "valid": [[36]],
      "circular": [[36, 36, 36], [36, 36, 36], [36, 36, 36]],  # every window sees all of x
      "reflect": [[24, 27, 30], [33, 36, 39], [42, 45, 48]],
      "replicate": [[12, 18, 24], [30, 36, 42], [48, 54, 60]],
      "full": [[0, 1, 3, 3, 2], [3, 8, 15, 12, 7], [9, 21, 36, 27, 15], [9, 20, 33, 24, 13],
               [6, 13, 21, 15, 8]],
  }
  assert set(expected) == set(layers.PADDING_MODES)
  for mode, values in expected.items():
    np.testing.assert_array_equal(apply_conv(x, ones, padding=mode)[0, :, :, 0], values,
                                  err_msg=mode)


def test_full_conv_of_an_impulse_is_the_flipped_kernel():
  kernel = normal(0, (5, 5, 1, 1))
  x = np.zeros((1, 4, 4, 1), np.float32)
  x[0, 1, 2, 0] = 1
  got = apply_conv(x, kernel, padding="full")[0, :, :, 0]
  assert got.shape == (8, 8)  # n + k - 1
  expected = np.zeros((8, 8), np.float32)
  expected[1:6, 2:7] = kernel[::-1, ::-1, 0, 0]
  np.testing.assert_array_equal(got, expected)


def test_conv_padding_and_errors():
  assert [layers.conv_padding(5, m) for m in layers.PADDING_MODES] == [
      (2, 2), (0, 0), (4, 4), (2, 2), (2, 2), (2, 2)]
  with pytest.raises(ValueError, match="circular"):
    layers.Conv(features=2, padding="same").init(jax.random.key(0), jnp.ones((1, 4, 4, 1)))
  with pytest.raises(ValueError, match="replicate"):
    layers.pad(jnp.ones((1, 4, 4, 1)), (1, 1), (1, 1), "full")


def test_conv_params_are_laid_out_as_flax_conv():
  x = jnp.ones((1, 8, 8, 3))
  ours = jax.eval_shape(layers.Conv3x3(features=4).init, jax.random.key(0), x)
  theirs = jax.eval_shape(nn.Conv(4, (3, 3)).init, jax.random.key(0), x)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), ours) == jax.tree.map(
      lambda a: (a.shape, a.dtype), theirs)
  y, variables = jax.eval_shape(
      layers.Conv(features=4, dtype=jnp.bfloat16).init_with_output, jax.random.key(0), x)
  assert y.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


# ---------------------------------------------------------------------------------------------
# Pools


@pytest.mark.parametrize("window,stride,padding", [(2, 2, 0), (3, 3, 0), (3, 2, 0), (3, 2, 1),
                                                   (2, 1, 0), (3, 1, 1), (4, 2, 2)])
def test_max_pool_matches_torch(window, stride, padding):
  for size in (9, 10):
    x = normal(size, (2, size, size - 1, 3))
    expected = from_torch(F.max_pool2d(to_torch(x), window, stride, padding))
    np.testing.assert_array_equal(layers.max_pool(x, window, stride, padding), expected)


def test_max_pool_fast_path_equals_general_path():
  x = normal(0, (2, 11, 9, 3))
  for window in (2, 3):
    fast = layers.max_pool(x, window, window)
    general = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                                    (1, window, window, 1), "VALID")
    np.testing.assert_array_equal(fast, general)


@pytest.mark.parametrize("window,stride,padding", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (6, 2, 2)])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_matches_torch(window, stride, padding, count_include_pad):
  x = normal(window, (2, 11, 10, 3))
  expected = from_torch(F.avg_pool2d(to_torch(x), window, stride, padding,
                                     count_include_pad=count_include_pad))
  np.testing.assert_allclose(layers.avg_pool(x, window, stride, padding, count_include_pad),
                             expected, atol=1e-6)


def test_global_pools():
  x = normal(0, (2, 5, 6, 3))
  np.testing.assert_allclose(layers.global_avg_pool(x), x.mean(axis=(1, 2)), atol=1e-6)
  np.testing.assert_array_equal(layers.global_max_pool(x), x.max(axis=(1, 2)))


# ---------------------------------------------------------------------------------------------
# BlurPool


def test_binomial_filter_is_the_normalised_outer_product():
  for size, row in BINOMIAL_ROWS.items():
    a = np.array(row, np.float32)
    expected = np.outer(a, a) / np.outer(a, a).sum()
    filt = layers.binomial_filter(size)
    assert filt.dtype == np.float32 and filt.shape == (size, size)
    np.testing.assert_array_equal(filt, expected)
    np.testing.assert_array_equal(filt, filt.T)
    np.testing.assert_array_equal(filt, filt[::-1, ::-1])
    assert filt.sum() == 1
  for size in (0, 8):
    with pytest.raises(ValueError):
      layers.binomial_filter(size)


@pytest.mark.parametrize("pad_mode", ["reflect", "replicate", "zeros"])
def test_blur_pool_matches_zhang(pad_mode):
  for size in BINOMIAL_ROWS:
    for h, w in ((9, 9), (10, 8)):
      x = normal(size, (2, h, w, 3))
      got = layers.blur_pool(x, size, 2, pad_mode)
      assert got.shape == (2, (h + 1) // 2, (w + 1) // 2, 3)
      np.testing.assert_allclose(got, torch_blur_pool(x, size, pad_mode), atol=1e-6,
                                 err_msg=f"size={size} input={h}x{w}")


def test_blur_pool_circular_matches_torch():
  x = normal(0, (2, 9, 8, 3))
  for size in (2, 3, 4, 5):
    np.testing.assert_allclose(layers.blur_pool(x, size, 1, "circular"),
                               from_torch(torch_blur_pool_circular(x, size)), atol=1e-6)


@pytest.mark.parametrize("size", [1, 3, 4])
def test_max_blur_pool_matches_zhang(size):
  x = normal(size, (2, 10, 9, 3))
  maxed = from_torch(torch.nn.MaxPool2d(2, 1)(to_torch(x)))
  np.testing.assert_allclose(layers.max_blur_pool(x, size),
                             torch_blur_pool(maxed, size, "reflect"), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# APS


def test_aps_keeps_the_dominant_phase_per_sample():
  x = normal(0, (4, 6, 6, 2)) * 0.1
  for b, (i, j) in enumerate([(1, 0), (0, 0), (1, 1), (0, 1)]):
    x[b, i::2, j::2] += 10
  expected = np.stack([x[b, i::2, j::2] for b, (i, j) in enumerate([(1, 0), (0, 0), (1, 1),
                                                                     (0, 1)])])
  np.testing.assert_array_equal(layers.aps_downsample(x), expected)


def test_aps_ties_go_to_the_lowest_phase():
  x = np.zeros((1, 4, 4, 1), np.float32)
  x[0, 0::2, 1::2, 0] = [[1, 2], [3, 4]]  # phase 1
  x[0, 1::2, 1::2, 0] = [[4, 3], [2, 1]]  # phase 3: same values, so the same norms
  for norm in ("l2", "l1", "linf"):
    np.testing.assert_array_equal(layers.aps_downsample(x, norm=norm)[0, :, :, 0],
                                  [[1, 2], [3, 4]])


def test_aps_norms_select_as_expected():
  x = np.zeros((1, 4, 4, 1), np.float32)
  x[0, 0::2, 0::2, 0] = [[3, 3], [3, 3]]      # largest l1 (12)
  x[0, 0::2, 1::2, 0] = [[5, 0], [0, 0]]      # largest linf (5)
  x[0, 1::2, 1::2, 0] = [[4.5, 4.5], [0, 0]]  # largest l2 (sqrt 40.5 > sqrt 36)
  for norm, (i, j) in (("l1", (0, 0)), ("linf", (0, 1)), ("l2", (1, 1))):
    np.testing.assert_array_equal(layers.aps_downsample(x, norm=norm), x[:, i::2, j::2],
                                  err_msg=norm)
  with pytest.raises(ValueError):
    layers.aps_downsample(x, norm="l3")
  with pytest.raises(ValueError):
    layers.aps_downsample(x, stride=3)


@pytest.mark.parametrize("norm,blur_size", [("l2", 1), ("l1", 1), ("linf", 1), ("l2", 3),
                                            ("l2", 4)])
def test_aps_matches_reference_on_odd_and_even_sizes(norm, blur_size):
  for shape in ((4, 7, 7, 3), (4, 8, 5, 3)):
    x = normal(blur_size, shape)
    np.testing.assert_allclose(layers.aps_downsample(x, norm=norm, blur_size=blur_size),
                               aps_reference(x, norm, blur_size), atol=1e-6)


def test_blurred_aps_chooses_on_the_unblurred_input():
  x = normal(3, (16, 6, 6, 1))
  blurred = from_torch(torch_blur_pool_circular(x, 3))
  on_blurred = aps_reference(blurred)
  on_unblurred = aps_reference(x, blur_size=3)
  differ = np.abs(on_blurred - on_unblurred).max(axis=(1, 2, 3)) > 1e-4
  assert differ.any()  # the two rules disagree somewhere, so the check below means something
  np.testing.assert_allclose(layers.aps_downsample(x, blur_size=3), on_unblurred, atol=1e-6)


def circular_shifts(x: np.ndarray, shifts) -> np.ndarray:
  """``[1, h, w, c]`` -> ``[len(shifts), h, w, c]``, one circular shift per row."""
  return np.concatenate([np.roll(x, s, axis=(1, 2)) for s in shifts])


SHIFTS = [(dy, dx) for dy in range(4) for dx in range(4)] + [(5, 7), (9, 2)]


@pytest.mark.parametrize("blur_size", [1, 3])
def test_aps_max_pool_is_equivariant_up_to_phase(blur_size):
  x = normal(blur_size, (1, 16, 16, 3))
  pool = jax.jit(lambda x: layers.aps_max_pool(x, blur_size=blur_size))
  y = np.asarray(pool(x))[0]
  shifted = np.asarray(pool(circular_shifts(x, SHIFTS)))
  assert shifted.shape == (len(SHIFTS), 8, 8, 3)
  for (dy, dx), ys in zip(SHIFTS, shifted):
    # A shift by d moves the pooled map by d // 2 or (d + 1) // 2, depending on the phase.
    candidates = [np.roll(y, (sy, sx), axis=(0, 1)) for sy in (dy // 2, (dy + 1) // 2)
                  for sx in (dx // 2, (dx + 1) // 2)]
    assert min(np.abs(ys - c).max() for c in candidates) < 1e-6, (dy, dx)
  np.testing.assert_allclose(layers.global_avg_pool(shifted),
                             np.broadcast_to(layers.global_avg_pool(y[None]), (len(SHIFTS), 3)),
                             atol=1e-6)


def two_layer_net(x: jax.Array, params, pool) -> jax.Array:
  for p in params:
    x = pool(jax.nn.relu(layers.Conv3x3(features=4, padding="circular").apply({"params": p}, x)))
  return layers.global_avg_pool(x)


@pytest.mark.parametrize("pool,invariant", [
    (layers.aps_max_pool, True),
    (lambda x: layers.aps_max_pool(x, blur_size=3), True),
    # Not linf: the 2x2 max copies the peak into all four phases, an exact tie broken by index.
    (lambda x: layers.aps_max_pool(x, norm="l1"), True),
    (layers.max_pool, False),
])
def test_circular_net_with_aps_is_shift_invariant(pool, invariant):
  x = normal(0, (1, 16, 16, 3))
  params = [{"kernel": normal(1, (3, 3, 3, 4)), "bias": normal(2, (4,))},
            {"kernel": normal(3, (3, 3, 4, 4)), "bias": normal(4, (4,))}]
  out = np.asarray(jax.jit(two_layer_net, static_argnums=2)(circular_shifts(x, SHIFTS), params,
                                                            pool))
  gap = np.abs(out - out[0]).max()
  if invariant:
    assert gap < 1e-5
  else:
    assert gap > 1e-3


# ---------------------------------------------------------------------------------------------
# BatchNorm with batch statistics


def test_batch_statistics_norm_matches_torch_without_running_stats():
  # A large mean and unequal spreads per channel: the two-pass variance must not cancel.
  x = normal(0, (6, 5, 7, 4)) * np.array([0.5, 1, 3, 10], np.float32) + 20
  scale, bias = normal(1, (4,)), normal(2, (4,))
  reference = torch.nn.BatchNorm2d(4, track_running_stats=False)
  reference.weight.data, reference.bias.data = torch.from_numpy(scale), torch.from_numpy(bias)
  reference.eval()  # changes nothing without running statistics: the authors' test mode
  expected = from_torch(reference(to_torch(x)))

  norm = layers.BatchStatisticsNorm()
  variables = norm.init(jax.random.key(0), x)
  assert set(variables) == {"params"} and set(variables["params"]) == {"scale", "bias"}
  for use_running_average in (True, False):  # the models' train flag is ignored
    got = layers.BatchStatisticsNorm(use_running_average=use_running_average).apply(
        {"params": {"scale": scale, "bias": bias}}, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  half = layers.BatchStatisticsNorm(dtype=jnp.bfloat16).apply(
      {"params": {"scale": scale, "bias": bias}}, x)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(half, np.float32), expected, rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------------------------
# jit and grad


def test_grads_are_finite():
  x = jnp.asarray(normal(0, (2, 8, 7, 3)))

  def check(f, *args):
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=range(len(args))))(*args)
    for g in jax.tree.leaves(grads):
      assert bool(jnp.all(jnp.isfinite(g))) and bool(jnp.any(g != 0))

  for mode in layers.PADDING_MODES:
    conv = layers.Conv(features=4, kernel_size=3, strides=2, padding=mode)
    params = conv.init(jax.random.key(0), x)["params"]
    check(lambda p, x: conv.apply({"params": p}, x), params, x)
  check(lambda x: layers.blur_pool(x, 4), x)
  check(layers.max_blur_pool, x)
  check(lambda x: layers.aps_max_pool(x, blur_size=3), x)
  check(layers.aps_max_pool, x)
