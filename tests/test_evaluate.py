"""The shift sweep equals a plain loop over offsets, with padding of items and centres."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from transinv_jax import evaluate, sharding
from transinv_jax.data import canvas, locations
from transinv_jax.train import Items


def test_sweep_equals_plain_loop():
  canvas_size, size, num_classes = 24, 8, 4
  rng = np.random.default_rng(0)
  # 13 items (not a multiple of the batch) and 10 centres (not a multiple of the chunk).
  items = Items(images=jnp.asarray(rng.integers(0, 256, (13, size, size, 1), dtype=np.uint8)),
                labels=jnp.asarray(rng.integers(0, num_classes, 13), jnp.int32))
  centres = locations.grid_centres(np.array([4, 9, 20]), np.array([4, 12, 15, 20]))[:10]
  # A random linear classifier of the whole canvas: its answers depend on where the item is.
  params = jax.random.normal(jax.random.key(0), (canvas_size * canvas_size * 3, num_classes))
  render = functools.partial(canvas.render, canvas_size=canvas_size, mean=np.float32(0.1),
                             std=np.float32(0.3), channels=3)
  classify = lambda p, x: x.reshape(x.shape[0], -1) @ p

  result = evaluate.shift_sweep(params, items, centres, classify=classify, render=render,
                                num_classes=num_classes, mesh=sharding.make_mesh(),
                                items_per_batch=4, centres_per_chunk=3)

  predict = jax.jit(lambda x, c: jnp.argmax(classify(params, render(x, c)), -1))
  expected = np.zeros((len(centres), num_classes), np.int64)
  for i, c in enumerate(centres):
    hits = np.asarray(predict(items.images, jnp.tile(c, (13, 1)))) == np.asarray(items.labels)
    np.add.at(expected[i], np.asarray(items.labels)[hits], 1)
  np.testing.assert_array_equal(result.correct, expected)
  np.testing.assert_array_equal(result.totals, np.bincount(items.labels, minlength=num_classes))
  np.testing.assert_allclose(result.accuracy, expected.sum(1) / 13)
  # The predictions differ across centres: the sweep is not testing one location 10 times.
  assert len(set(map(tuple, expected))) > 1


def test_derived_accuracies():
  result = evaluate.SweepResult(centres=np.zeros((2, 2), np.int32),
                                correct=np.array([[3, 1], [0, 0]]), totals=np.array([3, 1]))
  np.testing.assert_allclose(result.accuracy, [1.0, 0.0])
  np.testing.assert_allclose(result.class_accuracy, [[1, 1], [0, 0]])
  np.testing.assert_allclose(result.normalised_accuracy, [100.0, -100.0])
  np.testing.assert_allclose(evaluate.normalised_accuracy(0.1, 10), 0.0, atol=1e-12)


def test_auto_chunk_falls_back_on_cpu_and_divides_free_memory(monkeypatch):
  # A call whose working memory grows with the chunk: 400 kB a centre (a sort materialises it).
  run = jax.jit(lambda x: jnp.sort(x[:, None] * jnp.arange(100_000.0), axis=1)[:, ::1000].sum(1))
  args = lambda n: (jax.ShapeDtypeStruct((n,), jnp.float32),)
  # XLA:CPU reports no memory statistics: the fallback, capped by the number of centres.
  assert evaluate.auto_chunk(run, args, num_centres=50, fallback=19) == 19
  assert evaluate.auto_chunk(run, args, num_centres=7, fallback=19) == 7

  class Device:
    def memory_stats(self):
      return {"bytes_limit": 10_000_000, "bytes_in_use": 2_000_000}

  monkeypatch.setattr(jax, "local_devices", lambda: [Device()])
  per_centre = run.lower(*args(1)).compile().memory_analysis()
  per_centre = per_centre.temp_size_in_bytes + per_centre.output_size_in_bytes
  expected = int(0.5 * 8_000_000 // per_centre)
  assert 1 < expected < 100  # decided by memory, not by the caps
  assert evaluate.auto_chunk(run, args, num_centres=10_000, fallback=19) == expected
  assert evaluate.auto_chunk(run, args, num_centres=3, fallback=19) == 3
