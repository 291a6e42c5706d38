"""The evaluation kernel: even chunks, memory-sized chunks, and one compile per program."""

import types

import jax
import jax.numpy as jnp
import numpy as np

from conftest import count_compiles
from transinv_jax import evaluate, invariance, kernel, models, sharding, similarity
from transinv_jax.data import canvas, locations
from transinv_jax.train import Items


def _calls_and_padding(num, chunk, num_items=1, mesh=None):
  padded, chunk = kernel.whole_chunks(np.arange(num), chunk, num_items, mesh)
  assert padded.shape[0] % chunk == 0
  np.testing.assert_array_equal(padded[:num], np.arange(num))
  np.testing.assert_array_equal(padded[num:], num - 1)  # copies of the last point
  return padded.shape[0] // chunk, chunk, padded.shape[0] - num


def test_whole_chunks_share_the_points_evenly():
  # The calls first, then the chunk: 361 centres at most 111 a call are 4 calls of 91.
  assert _calls_and_padding(361, 111) == (4, 91, 3)
  assert _calls_and_padding(361, 19) == (19, 19, 0)
  assert _calls_and_padding(361, 1000) == (1, 361, 0)
  assert _calls_and_padding(10, 3) == (4, 3, 2)
  assert _calls_and_padding(5, 0) == (5, 1, 0)
  for num in range(1, 120):
    for chunk in range(1, num + 2):
      calls, got, padding = _calls_and_padding(num, chunk)
      assert got <= chunk and calls == -(-num // chunk) and padding <= calls - 1
  # 5 items a point over 8 devices: the chunk grows to a multiple of 8 (40 canvases a call).
  mesh = types.SimpleNamespace(size=8)
  assert _calls_and_padding(361, 111, 5, mesh) == (4, 96, 23)
  assert _calls_and_padding(361, 111, 4, mesh) == (4, 92, 7)
  assert _calls_and_padding(3, 1, 8, mesh) == (3, 1, 0)


def test_auto_chunk_falls_back_on_cpu_and_divides_free_memory(monkeypatch):
  # A call whose working memory grows with the chunk: 400 kB a point (a sort materialises it).
  run = jax.jit(lambda x: jnp.sort(x[:, None] * jnp.arange(100_000.0), axis=1)[:, ::1000].sum(1))
  args = lambda n: (jax.ShapeDtypeStruct((n,), jnp.float32),)
  # XLA:CPU reports no memory statistics: the fallback, capped by the number of points.
  assert kernel.auto_chunk(run, args, num_points=50, fallback=19) == 19
  assert kernel.auto_chunk(run, args, num_points=7, fallback=19) == 7

  class Device:
    def memory_stats(self):
      return {"bytes_limit": 10_000_000, "bytes_in_use": 2_000_000}

  monkeypatch.setattr(jax, "local_devices", lambda: [Device()])
  per_point = run.lower(*args(1)).compile().memory_analysis()
  per_point = per_point.temp_size_in_bytes + per_point.output_size_in_bytes
  expected = int(0.5 * 8_000_000 // per_point)
  assert 1 < expected < 100  # decided by memory, not by the caps
  assert kernel.auto_chunk(run, args, num_points=10_000, fallback=19) == expected
  assert kernel.auto_chunk(run, args, num_points=3, fallback=19) == 3


def _evaluate_everything(net, variables, items, render, mesh):
  """Every evaluation, each in several chunks or batches; returns each one's seeds axis."""
  centres = locations.grid_centres(np.array([4, 10, 16, 22, 28]), np.array([4, 16, 28]))
  sweep = evaluate.shift_sweep(net, variables, items, centres, render=render, mesh=mesh,
                               items_per_batch=4, centres_per_chunk=4)
  correct, _ = evaluate.placed_accuracy(
      net, variables, items, jax.random.key(0), render=render, mesh=mesh, items_per_batch=4,
      sampler=locations.make_sampler("fully_translated", render.canvas_size, 8))
  chosen = Items(items.images[:3], items.labels[:3])
  similar = similarity.cosine_similarity(
      net, variables, chosen, render=render, base_centre=(4, 16),
      centres=similarity.displaced_centres((4, 16), [4, 9, 16, 22, 28]), centres_per_chunk=2)
  responses = invariance.shift_responses(net, variables, chosen, render=render,
                                         base_centre=(8, 8), shifts=invariance.path("y", 6),
                                         layers=["conv2_1", "fc7"], shifts_per_chunk=3)
  pairs = invariance.consistency(net, variables, items, jax.random.key(1), render=render,
                                 base_centre=(8, 8), max_offset=8, pairs_per_item=2,
                                 items_per_batch=4)
  return [sweep.correct.shape[0], correct.shape[0], similar.per_item.shape[0],
          responses.probs.shape[0], pairs.predictions.shape[0]]


def test_evaluation_compiles_once_whatever_the_seeds():
  config = models.default_config()
  config.update(name="vgg11", width=1 / 32, dtype="float32")
  model = models.build_model(config, 3)
  init = jax.jit(model.init)
  x = jnp.zeros((1, 32, 32, 3))
  stacked = lambda seeds: jax.tree.map(lambda *v: jnp.stack(v),
                                       *[init(jax.random.key(s), x) for s in seeds])
  one, three = stacked([0]), stacked([0, 1, 2])
  rng = np.random.default_rng(0)
  items = Items(images=jnp.asarray(rng.integers(1, 256, (10, 8, 8, 1), dtype=np.uint8)),
                labels=jnp.asarray(rng.integers(0, 3, 10), jnp.int32))
  render, mesh = canvas.Renderer(32, 0.1, 0.3, 3), sharding.make_mesh()

  # A network object of its own for each run, so that each compiles its kernels afresh.
  with count_compiles() as with_one:
    assert _evaluate_everything(kernel.Inference(model), one, items, render, mesh) == [1] * 5
  net = kernel.Inference(model)
  with count_compiles() as with_three:
    assert _evaluate_everything(net, three, items, render, mesh) == [3] * 5
  # One program each: the sweep, placed accuracy, consistency, and the base and the chunks of
  # the similarity and of the invariance responses; not one per seed, chunk or batch.
  assert with_one["evaluation_kernel"] == with_three["evaluation_kernel"] == 7
  with count_compiles() as again:
    _evaluate_everything(net, three, items, render, mesh)
  assert not again, again  # a second call of everything compiles nothing at all
