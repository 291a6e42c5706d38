"""Translation-invariance measures: hand-computed paths, analytic networks, a direct-loop check."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transinv_jax import invariance, kernel, models
from transinv_jax.data import canvas
from transinv_jax.models import layers, small
from transinv_jax.train import Items

CANVAS, SIZE, NUM_CLASSES = 32, 8, 3
BASE = (4, 16)  # leftmost-centred: whole centres are 4..28 on each axis
# Both signs, several strides (VGG at 32 px: 1, 2, 4, 8, 16), and shifts that no stride divides.
SHIFTS = np.array([[0, 0], [1, 0], [2, 0], [4, -4], [8, 8], [16, 0], [3, 5], [0, -8]], np.int32)

RENDER = canvas.Renderer(CANVAS, 0.1, 0.3, 3)
RENDER_GRAY = canvas.Renderer(CANVAS, 0.1, 0.3, 1)
RENDER_RAW16 = canvas.Renderer(16, 0.0, 1.0, 1)  # pixel / 255, black is 0


def _items(num=NUM_CLASSES, size=SIZE, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(1, 256, (num, size, size, 1), dtype=np.uint8)
  return Items(images=jnp.asarray(images), labels=jnp.arange(num, dtype=jnp.int32) % NUM_CLASSES)


def _pixels(values):
  """1-px items of the given grey values."""
  images = np.asarray(values, np.uint8).reshape(-1, 1, 1, 1)
  return Items(images=jnp.asarray(images), labels=jnp.zeros(len(values), jnp.int32))


# --- Path metrics on hand-made probabilities -----------------------------------------------------

# Item 0 (label 2): argmax 0 0 1 1 0; label in the top 2: out in out out in.
# Item 1 (label 1): the same probabilities at every shift.
# Item 2 (label 0): argmax 0 1 2 1 0 (a 0.45 tie goes to class 1); in the top 2: in out in out in.
PROBS = np.array([
    [[.6, .3, .1], [.5, .1, .4], [.2, .7, .1], [.3, .6, .1], [.5, .2, .3]],
    [[.2, .5, .3]] * 5,
    [[.5, .3, .2], [.2, .5, .3], [.4, .1, .5], [.1, .45, .45], [.34, .33, .33]],
])
LABELS = np.array([2, 1, 0])


def test_path_metrics_hand_computed():
  np.testing.assert_allclose(invariance.correct_probability(PROBS, LABELS),
                             [[.1, .4, .1, .1, .3], [.5] * 5, [.5, .2, .4, .1, .34]])
  np.testing.assert_allclose(invariance.top1_change_rate(PROBS), [2 / 4, 0, 4 / 4])
  # Leaving and re-entering both count: item 0 enters twice and drops out once.
  np.testing.assert_array_equal(invariance.jaggedness(PROBS, LABELS, top=2), [3, 0, 4])
  # Top 1: item 0's label never leads, item 2's leads at the ends only (out at shifts 1..3).
  np.testing.assert_array_equal(invariance.jaggedness(PROBS, LABELS, top=1), [0, 0, 2])
  # With classes <= top the label is always in.
  np.testing.assert_array_equal(invariance.jaggedness(PROBS, LABELS, top=3), [0, 0, 0])
  np.testing.assert_allclose(invariance.mad(PROBS, LABELS), [.8 / 4, 0, 1.04 / 4])
  # c_t = 0 0 1 1: |.5-.6| + |.2-.5| + |.6-.7| + |.2-.6|; item 2, c_t = 0 1 2 1:
  # |.2-.5| + |.1-.5| + |.45-.5| + |.33-.45|.
  np.testing.assert_allclose(invariance.mad_top1(PROBS), [.9 / 4, 0, .87 / 4])


def test_jaggedness_ties_count_for_the_label():
  probs = np.array([[[.5, .5, 0.], [.6, .4, 0.], [.4, .6, 0.]]])
  # Label 1 ties for first, then is second, then first: in, out, in.
  np.testing.assert_array_equal(invariance.jaggedness(probs, [1], top=1), [2])
  with pytest.raises(ValueError, match="shifts >= 2"):
    invariance.top1_change_rate(probs[:, :1])


def test_nonshiftability_hand_computed():
  sums = np.zeros((3, 4, 3))
  peaks = np.zeros((3, 4, 3))
  # Item 0: map 0 jumps twice (|-5| > 0.2 * 8.75); map 1 stays within 0.2 * 1.05; map 2 jumps
  # three times but its peak 0.3 is below 0.1 * 4 (inactive).
  sums[0] = np.array([[10, 1, 0], [10, 1.1, 100], [5, 1, 0], [10, 1.1, 100]])
  peaks[0, :, 0], peaks[0, :, 1], peaks[0, :, 2] = [4, 1, 1, 1], [1, 0, 0, 0], 0.3
  # Item 1: nothing responds. Item 2: one map, negative sums, one jump of 8 > 0.2 * |-8|.
  sums[2, :, 0] = [-10, -10, -10, -2]
  peaks[2, :, 0] = 1.0
  rate, active = invariance.nonshiftability(sums, peaks)
  np.testing.assert_allclose(rate, [2 / 6, np.nan, 1 / 3])
  np.testing.assert_array_equal(active, [2, 0, 1])
  # A lower threshold lets map 2 in; a lower tolerance counts map 1's 0.1 steps.
  rate, active = invariance.nonshiftability(sums, peaks, activity_threshold=0.05)
  np.testing.assert_allclose(rate[0], 5 / 9)
  assert active[0] == 3
  rate, _ = invariance.nonshiftability(sums, peaks, tolerance=0.05)
  np.testing.assert_allclose(rate[0], 5 / 6)


# --- equivariance_error on hand-made maps --------------------------------------------------------

def test_equivariance_error_definition():
  rng = np.random.default_rng(1)
  base = rng.normal(size=(5, 6, 2)).astype(np.float32)
  # Shift (dx, dy) = (2, -1): shifted[y, x] = base[y + 1, x - 2]; row 4 and columns 0, 1 are new.
  shifted = np.roll(base, (-1, 2), axis=(0, 1))
  shifted[4], shifted[:, :2] = 50.0, -50.0
  error = lambda b, s, shift, stride=1: float(invariance.equivariance_error(
      jnp.asarray(b), jnp.asarray(s), jnp.array(shift, jnp.int32), stride))
  assert error(base, shifted, (2, -1)) < 1e-6
  assert error(base, shifted, (0, 0)) > 0.5
  # Doubled shift on a stride-2 layer: the same map shift; an odd one has no counterpart.
  assert error(base, shifted, (4, -2), 2) < 1e-6
  assert np.isnan(error(base, shifted, (3, -2), 2))
  assert np.isnan(error(base, shifted, (4, -1), 2))
  # One changed cell inside the overlap: ||delta|| / ||base over the overlap||.
  delta = np.array([0.3, -0.4], np.float32)
  changed = shifted.copy()
  changed[2, 3] += delta
  expected = np.linalg.norm(delta) / np.linalg.norm(base[1:5, 0:4])
  np.testing.assert_allclose(error(base, changed, (2, -1)), expected, rtol=1e-5)
  # No overlap left: undefined.
  assert np.isnan(error(base, shifted, (6, 0)))
  # Scale does not matter (no overflow); low precision is computed in float32.
  np.testing.assert_allclose(error(base * 1e30, changed * 1e30, (2, -1)), expected, rtol=1e-5)
  out = invariance.equivariance_error(jnp.asarray(base, jnp.bfloat16),
                                      jnp.asarray(shifted, jnp.bfloat16), jnp.array([2, -1]))
  assert out.dtype == jnp.float32
  # Jitted and vmapped over shifts, as shift_responses uses it.
  shifts = jnp.array([[2, -1], [4, -2], [3, -2], [0, 0]])
  batched = jax.jit(jax.vmap(functools.partial(invariance.equivariance_error, stride=2),
                             in_axes=(None, None, 0)))(base, shifted, shifts)
  np.testing.assert_allclose(batched, [error(base, shifted, s.tolist(), 2) for s in shifts],
                             atol=1e-6)


def test_equivariance_error_zero_conventions_and_non_spatial():
  error = lambda b, s: float(invariance.equivariance_error(
      jnp.asarray(b, jnp.float32), jnp.asarray(s, jnp.float32), jnp.zeros(2, jnp.int32)))
  assert error([3, 4], [3, 4]) == 0.0
  np.testing.assert_allclose(error([3, 4], [3, 9]), 1.0, rtol=1e-6)  # ||(0, 5)|| / ||(3, 4)||
  np.testing.assert_allclose(error([3, 4], [-3, -4]), 2.0, rtol=1e-6)
  assert error([3, 4], [0, 0]) == 1.0                         # the response vanishes
  assert error([0, 0], [0, 2]) == 1.0                         # a response appears
  assert error([0, 0], [0, 0]) == 0.0                         # both silent: identical
  assert error(np.zeros((2, 2, 1)), np.zeros((2, 2, 1))) == 0.0
  assert error(np.zeros((2, 2, 1)), np.ones((2, 2, 1))) == 1.0


def test_path_and_layer_stride():
  np.testing.assert_array_equal(invariance.path("x", 2), [[0, 0], [1, 0], [2, 0]])
  np.testing.assert_array_equal(invariance.path("y", 2), [[0, 0], [0, 1], [0, 2]])
  np.testing.assert_array_equal(invariance.path("diagonal", 32)[-1], [32, 32])
  assert invariance.path("diagonal", 32).shape == (33, 2)
  with pytest.raises(ValueError, match="unknown path"):
    invariance.path("z", 3)
  # canvas / H to the nearest power of two: valid / full padding's few pixels are absorbed.
  cases = {(32, 32): 1, (32, 16): 2, (32, 1): 32, (224, 7): 32, (224, 226): 1, (224, 113): 2,
           (224, 110): 2, (224, 54): 4, (224, 300): 1}
  for (size, height), stride in cases.items():
    assert invariance.layer_stride(size, height) == stride, (size, height)


# --- Analytic networks through shift_responses ---------------------------------------------------

def _identity(v, x):
  """The canvas itself as a layer; logits from invariant statistics of the canvas."""
  del v
  logits = jnp.stack([x.mean((1, 2, 3)), jnp.square(x).mean((1, 2, 3)), x.max((1, 2, 3))], -1)
  return logits, {"conv1": x}


def test_identity_network_is_equivariant_and_invariant():
  items = _items(4)
  shifts = np.concatenate([invariance.path("x", 5), [[0, -3], [7, 9], [24, -12]]])
  seeds = invariance.shift_responses(_identity, None, items, render=RENDER_GRAY,
                                     base_centre=BASE, shifts=shifts, shifts_per_chunk=3)
  assert seeds.probs.shape == (1, 4, 9, 3) and seeds.num_seeds == 1
  r = seeds.seed(0)
  assert r.layers == ["conv1"] and r.strides == {"conv1": 1} and r.spatial == {"conv1": True}
  assert r.probs.shape == (4, 9, 3) and r.sums["conv1"].shape == (4, 9, 1)
  np.testing.assert_array_equal(r.centres, np.asarray(BASE) + shifts)
  np.testing.assert_allclose(r.equivariance["conv1"], 0.0, atol=1e-6)
  # A whole item on a uniform background: the same global sum wherever it is.
  sums = r.sums["conv1"][..., 0]
  np.testing.assert_allclose(sums, np.broadcast_to(sums[:, :1], sums.shape), rtol=1e-5)
  rate, active = invariance.nonshiftability(r.sums["conv1"], r.peaks["conv1"])
  np.testing.assert_array_equal(rate, 0.0)
  np.testing.assert_array_equal(active, 1)
  np.testing.assert_array_equal(invariance.top1_change_rate(r.probs), 0.0)
  np.testing.assert_array_equal(invariance.jaggedness(r.probs, r.labels, top=1), 0)
  np.testing.assert_allclose(invariance.mad(r.probs, r.labels), 0.0, atol=1e-6)
  np.testing.assert_allclose(invariance.mad_top1(r.probs), 0.0, atol=1e-6)
  summary = invariance.summarise(r, top=1)
  assert summary["equivariance_error"][0] < 1e-6 and summary["nonshiftability"] == [0.0]
  assert summary["top1_change_rate"] == 0.0 and summary["jaggedness"] == 0.0
  json.dumps(summary)
  # No layers: class probabilities only.
  bare = invariance.shift_responses(_identity, None, items, render=RENDER_GRAY, base_centre=BASE,
                                    shifts=shifts, layers=[]).seed(0)
  assert bare.layers == [] and bare.sums == {} and bare.equivariance == {}
  np.testing.assert_allclose(bare.probs, r.probs, rtol=1e-6)
  assert invariance.summarise(bare)["nonshiftability"] == []


def _subsample(v, x):
  del v
  return jnp.zeros((x.shape[0], 2)), {"conv1": x[:, ::2, ::2]}


def test_stride_two_subsampling_alternates():
  values = np.array([200, 100])
  items = _pixels(values)
  shifts = np.concatenate([invariance.path("x", 6), [[1, 1], [2, 2], [0, -3], [0, -4]]])
  r = invariance.shift_responses(_subsample, None, items, render=RENDER_RAW16,
                                 base_centre=(4, 4), shifts=shifts).seed(0)
  assert r.strides == {"conv1": 2}
  even = (shifts % 2 == 0).all(-1)
  np.testing.assert_allclose(r.equivariance["conv1"][:, even], 0.0, atol=1e-6)
  assert np.isnan(r.equivariance["conv1"][:, ~even]).all()
  # The pixel is seen at even shifts only: the global sum alternates between its value and 0.
  expected = values[:, None] / 255.0 * even[None]
  np.testing.assert_allclose(r.sums["conv1"][..., 0], expected, rtol=1e-6)
  np.testing.assert_allclose(r.peaks["conv1"][..., 0], expected, rtol=1e-6)
  on_path = slice(0, 7)  # the x path 0..6: every neighbouring pair jumps
  rate, active = invariance.nonshiftability(r.sums["conv1"][:, on_path],
                                            r.peaks["conv1"][:, on_path])
  np.testing.assert_array_equal(rate, 1.0)
  np.testing.assert_array_equal(active, 1)
  summary = invariance.summarise(r)
  assert summary["layers"] == ["conv1"] and summary["equivariance_error"][0] < 1e-6


def _rooknet(padding):
  conv = functools.partial(layers.Conv, kernel_size=3, padding=padding)
  model = small.RookNet(num_classes=4, features=4, conv=conv)
  variables = model.init(jax.random.key(3), jnp.zeros((1, CANVAS, CANVAS, 1)))
  return kernel.Inference(model), jax.tree.map(lambda v: v[None], variables)  # one seed


@pytest.fixture(scope="module")
def rooknets():
  return {p: _rooknet(p) for p in ("circular", "zeros")}


def test_circular_padding_is_consistent_and_equivariant(rooknets):
  net, variables = rooknets["circular"]
  items = _items(6, seed=2)
  kwargs = dict(render=RENDER_GRAY, base_centre=(4, 4), max_offset=16, pairs_per_item=3,
                items_per_batch=4)
  # Circular conv + global max pooling: exactly invariant to rolls and to whole-item moves.
  for mode in ("circular", "translate"):
    result = invariance.consistency(net, variables, items, jax.random.key(0), mode=mode,
                                    **kwargs)
    assert result.agreement.shape == (1, 6, 3) and result.rate.tolist() == [1.0], mode
    assert (result.offsets[:, :, 0] != result.offsets[:, :, 1]).any()  # two draws per pair
  # Moving a whole item on a uniform background rolls the canvas: conv1 is equivariant over the
  # overlap, the pooled features invariant.
  shifts = np.concatenate([invariance.path("diagonal", 10), [[20, -9], [3, 0]]])
  r = invariance.shift_responses(net, variables, items, render=RENDER_GRAY, base_centre=BASE,
                                 shifts=shifts, layers=["conv1", "pre_logits"]).seed(0)
  assert r.spatial == {"conv1": True, "pre_logits": False} and r.strides == {"conv1": 1}
  np.testing.assert_allclose(r.equivariance["conv1"], 0.0, atol=1e-5)
  np.testing.assert_allclose(r.equivariance["pre_logits"], 0.0, atol=1e-5)
  np.testing.assert_allclose(r.probs, np.broadcast_to(r.probs[:, :1], r.probs.shape), atol=1e-5)


def test_zero_padding_breaks_equivariance_at_the_border(rooknets):
  # Kayhan & van Gemert: zero padding differs from the (non-zero) background at the border, and
  # those border responses stay put while the item moves.
  net, variables = rooknets["zeros"]
  shifts = invariance.path("x", 4)
  r = invariance.shift_responses(net, variables, _items(2, seed=2), render=RENDER_GRAY,
                                 base_centre=BASE, shifts=shifts, layers=["conv1"]).seed(0)
  np.testing.assert_allclose(r.equivariance["conv1"][:, 0], 0.0, atol=1e-6)
  assert (r.equivariance["conv1"][:, 1:] > 1e-3).all()


def _quadrants(v, x):
  """Class = the quadrant holding the brightest pixels: 2 * (y >= 8) + (x >= 8) on 16 px."""
  del v
  q = x[..., 0].reshape(x.shape[0], 2, 8, 2, 8).sum((2, 4))
  return q.reshape(x.shape[0], 4), {}


def _quadrant(x, y):
  return 2 * (y % 16 >= 8) + (x % 16 >= 8)


def test_consistency_matches_the_drawn_offsets():
  items = _pixels([255] * 5)
  kwargs = dict(render=RENDER_RAW16, base_centre=(4, 4), max_offset=8, pairs_per_item=4)
  for mode, low in (("translate", 0), ("circular", -8)):
    result = invariance.consistency(_quadrants, None, items, jax.random.key(1), mode=mode,
                                    items_per_batch=2, **kwargs)
    offsets = result.offsets
    assert offsets.shape == (5, 4, 2, 2) and offsets.min() >= low and offsets.max() <= 7
    assert (offsets < 0).any() == (mode == "circular")
    expected = _quadrant(4 + offsets[..., 0], 4 + offsets[..., 1])
    np.testing.assert_array_equal(result.predictions, expected[None])
    np.testing.assert_array_equal(result.agreement, expected[None, ..., 0] == expected[..., 1])
    assert 0.0 < result.rate[0] < 1.0
    # Deterministic in the key, whatever the batching; another key draws other offsets.
    again = invariance.consistency(_quadrants, None, items, jax.random.key(1), mode=mode,
                                   items_per_batch=64, **kwargs)
    np.testing.assert_array_equal(again.offsets, result.offsets)
    np.testing.assert_array_equal(again.agreement, result.agreement)
    other = invariance.consistency(_quadrants, None, items, jax.random.key(2), mode=mode,
                                   **kwargs)
    assert (other.offsets != result.offsets).any()


# --- A real network against a direct loop --------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_vgg():
  """The model, its network and one seed's variables, stacked: every leaf [1, ...]."""
  config = models.default_config()
  config.name, config.width, config.dtype = "vgg11", 1 / 32, "float32"
  model = models.build_model(config, NUM_CLASSES)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, CANVAS, CANVAS, 3)))
  return model, kernel.Inference(model), jax.tree.map(lambda v: v[None], variables)


def _np_equivariance(base, shifted, dx, dy, stride):
  """Reference by slicing: shifted[y, x] against base[y - sy, x - sx] where both exist."""
  base, shifted = np.asarray(base, np.float64), np.asarray(shifted, np.float64)
  if base.ndim == 3:
    if dx % stride or dy % stride:
      return np.nan
    sx, sy = dx // stride, dy // stride
    h, w = base.shape[:2]
    shifted = shifted[max(sy, 0):h + min(sy, 0), max(sx, 0):w + min(sx, 0)]
    base = base[max(-sy, 0):h - max(sy, 0), max(-sx, 0):w - max(sx, 0)]
  a, b = np.linalg.norm(shifted - base), np.linalg.norm(base)
  return a / b if b > 0 else float(a > 0)


def test_shift_responses_match_direct_loop(tiny_vgg):
  model, net, variables = tiny_vgg
  items = _items()
  r = invariance.shift_responses(net, variables, items, render=RENDER, base_centre=BASE,
                                 shifts=SHIFTS, shifts_per_chunk=3).seed(0)
  convs = ["conv1_1", "conv2_1", "conv3_1", "conv3_2", "conv4_1", "conv4_2", "conv5_1", "conv5_2"]
  assert r.layers == convs + ["fc6", "fc7"]
  assert r.strides == dict(zip(convs, [1, 2, 4, 4, 8, 8, 16, 16]))
  assert not r.spatial["fc7"] and r.spatial["conv5_2"]
  np.testing.assert_array_equal(r.labels, np.arange(NUM_CLASSES))

  run = jax.jit(model.apply)
  n = items.num_items
  variables_alone = jax.tree.map(lambda v: v[0], variables)
  _, base = run(variables_alone, RENDER(items.images, jnp.tile(jnp.array(BASE), (n, 1))))
  for p, (dx, dy) in enumerate(SHIFTS):
    centre = jnp.tile(jnp.array([BASE[0] + dx, BASE[1] + dy]), (n, 1))
    logits, moved = run(variables_alone, RENDER(items.images, centre))
    np.testing.assert_allclose(r.probs[:, p], jax.nn.softmax(logits), rtol=1e-5, atol=1e-6)
    for name in r.layers:
      act = np.asarray(moved[name], np.float64)
      spatial = act.ndim == 4
      np.testing.assert_allclose(r.sums[name][:, p], act.sum((1, 2)) if spatial else act,
                                 rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(r.peaks[name][:, p], act.max((1, 2)) if spatial else act,
                                 rtol=1e-5, atol=1e-6)
      expected = [_np_equivariance(base[name][i], act[i], dx, dy, r.strides.get(name, 1))
                  for i in range(n)]
      np.testing.assert_allclose(r.equivariance[name][:, p], expected, rtol=1e-5, atol=1e-6,
                                 err_msg=f"{name} at shift {(dx, dy)}")
  # Not vacuous: the zero-padded VGG is not equivariant everywhere, and NaN only where undefined.
  assert np.nanmax(r.equivariance["conv1_1"]) > 1e-2
  assert np.isnan(r.equivariance["conv2_1"][:, [1, 6]]).all()

  # One chunk (the automatic one on CPU) and explicit layers give the same numbers.
  whole = invariance.shift_responses(net, variables, items, render=RENDER, base_centre=BASE,
                                     shifts=SHIFTS, layers=["fc7", "conv2_1"]).seed(0)
  assert whole.layers == ["fc7", "conv2_1"]
  np.testing.assert_allclose(whole.probs, r.probs, rtol=1e-6, atol=1e-7)
  for name in whole.layers:
    np.testing.assert_allclose(whole.sums[name], r.sums[name], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(whole.equivariance[name], r.equivariance[name], rtol=1e-5,
                               atol=1e-6)
  np.testing.assert_allclose(r.correct_probability,
                             r.probs[np.arange(n), :, r.labels], rtol=0)
  summary = invariance.summarise(r, top=2)
  assert len(summary["nonshiftability"]) == len(summary["equivariance_error"]) == len(r.layers)
  assert summary["num_shifts"] == len(SHIFTS)
  json.dumps(summary)


# --- Validation ---------------------------------------------------------------------------------

def test_validation_errors():
  items = _items(2)
  call = functools.partial(invariance.shift_responses, _identity, None, items, render=RENDER_GRAY)
  with pytest.raises(ValueError, match=r"shift \(dx, dy\) = \(-1, 0\)"):
    call(base_centre=BASE, shifts=[[0, 0], [-1, 0]])
  with pytest.raises(ValueError, match=r"shift \(dx, dy\) = \(0, 13\).*move base_centre"):
    call(base_centre=BASE, shifts=[[0, 12], [0, 13]])
  with pytest.raises(ValueError, match=r"base_centre \(3, 16\) crops"):
    call(base_centre=(3, 16), shifts=[[1, 0]])
  with pytest.raises(ValueError, match=r"\['nope'\].*available: \['conv1'\]"):
    call(base_centre=BASE, shifts=[[0, 0]], layers=["conv1", "nope"])
  kwargs = dict(render=RENDER_GRAY, base_centre=BASE)
  with pytest.raises(ValueError, match="max_offset 26"):
    invariance.consistency(_identity, None, items, jax.random.key(0), max_offset=26, **kwargs)
  with pytest.raises(ValueError, match="unknown consistency mode"):
    invariance.consistency(_identity, None, items, jax.random.key(0), max_offset=4, mode="roll",
                           **kwargs)
