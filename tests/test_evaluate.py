"""The shift sweep equals a plain loop over offsets, with padding of items and centres."""

import jax
import jax.numpy as jnp
import numpy as np

from transinv_jax import evaluate, sharding
from transinv_jax.data import canvas, locations
from transinv_jax.train import Items


def _linear(params, x):
  """A linear classifier of the whole canvas: its answers depend on where the item is."""
  return x.reshape(x.shape[0], -1) @ params, {}


def test_sweep_equals_plain_loop_for_every_seed():
  canvas_size, size, num_classes = 24, 8, 4
  rng = np.random.default_rng(0)
  # 13 items (not a multiple of the batch) and 10 centres (not a multiple of the chunk).
  items = Items(images=jnp.asarray(rng.integers(0, 256, (13, size, size, 1), dtype=np.uint8)),
                labels=jnp.asarray(rng.integers(0, num_classes, 13), jnp.int32))
  centres = locations.grid_centres(np.array([4, 9, 20]), np.array([4, 12, 15, 20]))[:10]
  # Two seeds' random classifiers, stacked.
  params = jax.random.normal(jax.random.key(0), (2, canvas_size * canvas_size * 3, num_classes))
  render = canvas.Renderer(canvas_size, 0.1, 0.3, 3)

  result = evaluate.shift_sweep(_linear, params, items, centres, render=render,
                                mesh=sharding.make_mesh(), items_per_batch=4, centres_per_chunk=3)

  assert result.correct.shape == (2, len(centres), num_classes)
  for seed in range(2):
    predict = jax.jit(lambda x, c, s=seed: jnp.argmax(_linear(params[s], render(x, c))[0], -1))
    expected = np.zeros((len(centres), num_classes), np.int64)
    for i, c in enumerate(centres):
      hits = np.asarray(predict(items.images, jnp.tile(c, (13, 1)))) == np.asarray(items.labels)
      np.add.at(expected[i], np.asarray(items.labels)[hits], 1)
    np.testing.assert_array_equal(result.correct[seed], expected)
    np.testing.assert_allclose(result.accuracy[seed], expected.sum(1) / 13)
    # The predictions differ across centres: the sweep is not testing one location 10 times.
    assert len(set(map(tuple, expected))) > 1
  np.testing.assert_array_equal(result.totals, np.bincount(items.labels, minlength=num_classes))
  assert (result.correct[0] != result.correct[1]).any()  # each seed's own network


def test_derived_accuracies():
  result = evaluate.SweepResult(centres=np.zeros((2, 2), np.int32),
                                correct=np.array([[[3, 1], [0, 0]]]), totals=np.array([3, 1]))
  np.testing.assert_allclose(result.accuracy, [[1.0, 0.0]])
  np.testing.assert_allclose(result.class_accuracy, [[[1, 1], [0, 0]]])
  np.testing.assert_allclose(result.normalised_accuracy, [[100.0, -100.0]])
  np.testing.assert_allclose(evaluate.normalised_accuracy(0.1, 10), 0.0, atol=1e-12)

