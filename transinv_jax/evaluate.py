"""Shift sweep: accuracy at every tested location at once, by vmap over locations.

For a batch of test items and a chunk of centres, every (item, centre) canvas is rendered on the
device and classified in one call; counts of correct answers per centre and class accumulate on the
device and come back once, at the end. ``placed_accuracy`` is the plain test accuracy, with items
placed as in training.
"""

import dataclasses
import functools
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from transinv_jax import sharding
from transinv_jax.train import Items, RenderFn

# (params, x [batch, H, W, C]) -> logits [batch, num_classes]
ClassifyFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class SweepResult:
  """Counts from a shift sweep over ``num_centres`` locations.

  Attributes:
    centres: int32 [num_centres, 2], the item centres (x, y).
    correct: int64 [num_centres, num_classes], correctly classified items per centre and class.
    totals: int64 [num_classes], test items per class (the same at every centre).
  """
  centres: np.ndarray
  correct: np.ndarray
  totals: np.ndarray

  @property
  def accuracy(self) -> np.ndarray:
    """float [num_centres]: accuracy over all test items at each centre."""
    return self.correct.sum(-1) / self.totals.sum()

  @property
  def class_accuracy(self) -> np.ndarray:
    """float [num_centres, num_classes]: per-class accuracy (NaN for a class with no items)."""
    with np.errstate(invalid="ignore", divide="ignore"):
      return self.correct / self.totals

  @property
  def normalised_accuracy(self) -> np.ndarray:
    """float [num_centres]: 0 = chance, 100 = perfect."""
    return normalised_accuracy(self.accuracy, self.totals.shape[0])


def normalised_accuracy(accuracy: np.ndarray, num_classes: int) -> np.ndarray:
  """Rescales accuracy so that chance (1 / num_classes) is 0 and perfect is 100."""
  chance = 1.0 / num_classes
  return 100.0 * (np.asarray(accuracy) - chance) / (1.0 - chance)


def count_correct(params: Any, images: jax.Array, labels: jax.Array, valid: jax.Array,
                  centres: jax.Array, *, classify: ClassifyFn, render: RenderFn,
                  num_classes: int, mesh: Mesh) -> jax.Array:
  """Correct answers for every item of a batch at every centre of a chunk.

  Args:
    params: model params.
    images: uint8 [batch, s, s, c], split over the mesh.
    labels: int32 [batch].
    valid: bool [batch]; False for padding.
    centres: int32 [chunk, 2], (x, y).
    classify: the model's logits function.
    render: composes model input from items and centres.
    num_classes: number of classes.
    mesh: the device mesh.

  Returns:
    int32 [chunk, num_classes].
  """
  batch, chunk = labels.shape[0], centres.shape[0]
  # [batch, chunk, H, W, C]: the item axis stays outermost so that the flattened batch is still
  # split over the mesh in contiguous blocks, with no resharding.
  per_centre = lambda c: render(images, jnp.broadcast_to(c, (batch, 2)))
  x = jax.vmap(per_centre, out_axes=1)(centres)
  x = sharding.constrain_batch(x.reshape((batch * chunk,) + x.shape[2:]), mesh)
  predictions = jnp.argmax(classify(params, x), -1).reshape(batch, chunk)
  correct = (predictions == labels[:, None]) & valid[:, None]
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
  return jnp.einsum("bo,bc->oc", correct.astype(jnp.int32), one_hot)


def auto_chunk(run, args_for_chunk, num_centres: int, fallback: int,
               memory_fraction: float = 0.5) -> int:
  """Centres per call that fit the device's free memory, from XLA's own memory analysis.

  Compiles the call for one centre, reads its working memory, and divides a fraction of the
  free device memory by it (the working memory grows linearly with the chunk). Backends that
  report no memory statistics (CPU) get ``fallback``.

  Args:
    run: the jitted ``count_correct``.
    args_for_chunk: ``chunk -> run's arguments`` for a chunk of that many centres.
    num_centres: centres to sweep in all (the chunk never exceeds it).
    fallback: the chunk where memory cannot be read.
    memory_fraction: share of the free memory a call may use.

  Returns:
    Centres per call, at least 1.
  """
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" not in stats:
    return max(1, min(fallback, num_centres))
  free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
  analysis = run.lower(*args_for_chunk(1)).compile().memory_analysis()
  per_centre = max(1, analysis.temp_size_in_bytes + analysis.output_size_in_bytes)
  return int(max(1, min(num_centres, memory_fraction * free // per_centre)))


def whole_chunks(points: np.ndarray, chunk: int, num_items: int,
                 mesh: Mesh | None) -> tuple[np.ndarray, int]:
  """Pads ``points`` to whole chunks of a call over ``per_point x chunk`` canvases.

  Args:
    points: [P, ...], what each call takes a chunk of (centres, shifts, item indices).
    chunk: the requested points per call (clipped to 1..P).
    num_items: canvases per point in a call (items per centre, or shifted copies per item);
      with a mesh of several devices the chunk grows until ``num_items * chunk`` splits evenly
      over them.
    mesh: the device mesh, or None for one device.

  Returns:
    ``(padded, chunk)``: the points followed by copies of the last (to be sliced off afterwards)
    up to a multiple of the chunk, and the chunk.
  """
  num = points.shape[0]
  chunk = max(1, min(chunk, num))
  if mesh is not None and mesh.size > 1:
    step = mesh.size // math.gcd(num_items, mesh.size)
    chunk = -(-chunk // step) * step
  return np.concatenate([points, np.repeat(points[-1:], -num % chunk, axis=0)]), chunk


def item_batches(items: Items, items_per_batch: int, mesh: Mesh):
  """``(images, labels, valid)`` batches of ``items``, split over the mesh.

  The last batch is padded with zero items whose ``valid`` is False, so every batch has the same
  shape (one compilation) and the padding is masked out of the counts.
  """
  num_items = items.num_items
  pad = -num_items % items_per_batch
  images = jnp.pad(items.images, ((0, pad),) + ((0, 0),) * 3)
  labels = jnp.pad(items.labels, (0, pad))
  valid = jnp.arange(num_items + pad) < num_items
  batch_spec = sharding.batch_sharded(mesh)
  for b in range(0, num_items + pad, items_per_batch):
    sl = slice(b, b + items_per_batch)
    yield jax.device_put((images[sl], labels[sl], valid[sl]), batch_spec)


def shift_sweep(params: Any, items: Items, centres: np.ndarray, *, classify: ClassifyFn,
                render: RenderFn, num_classes: int, mesh: Mesh, items_per_batch: int,
                centres_per_chunk: int) -> SweepResult:
  """Accuracy of ``classify`` for every test item at every centre.

  Memory is bounded by ``items_per_batch * centres_per_chunk`` canvases per call.

  Args:
    params: model params (replicated).
    items: the test items on the device.
    centres: int32 [num_centres, 2], (x, y), each keeping the item whole.
    classify: ``(params, x) -> logits``.
    render: composes model input from items and centres.
    num_classes: number of classes.
    mesh: the device mesh; ``items_per_batch`` must divide over it.
    items_per_batch: test items per call.
    centres_per_chunk: centres per call; 0 picks the largest chunk that fits half the free device
      memory (``auto_chunk``; one grid row, 19, where the backend reports no memory).

  Returns:
    The counts; ``.accuracy``, ``.class_accuracy``, ``.normalised_accuracy`` derive from them.
  """
  centres = np.asarray(centres, np.int32)
  num_items, num_centres = items.num_items, centres.shape[0]
  run = jax.jit(functools.partial(count_correct, classify=classify, render=render,
                                  num_classes=num_classes, mesh=mesh))
  if not centres_per_chunk:
    batch = lambda x: jax.ShapeDtypeStruct((items_per_batch,) + x.shape[1:], x.dtype)
    centres_per_chunk = auto_chunk(
        run, lambda n: (params, batch(items.images), batch(items.labels),
                        jax.ShapeDtypeStruct((items_per_batch,), jnp.bool_),
                        jax.ShapeDtypeStruct((n, 2), jnp.int32)),
        num_centres, fallback=19)
    logging.info("sweep: %d centres per call", centres_per_chunk)
  centres_per_chunk = min(centres_per_chunk, num_centres)
  # Pad the centres to whole chunks; the padding is sliced off.
  padded_centres = np.concatenate(
      [centres, np.repeat(centres[-1:], -num_centres % centres_per_chunk, axis=0)])

  chunks = []
  num_chunks = padded_centres.shape[0] // centres_per_chunk
  start = time.perf_counter()
  for i, c in enumerate(range(0, padded_centres.shape[0], centres_per_chunk), 1):
    chunk = jnp.asarray(padded_centres[c:c + centres_per_chunk])
    total = jnp.zeros((centres_per_chunk, num_classes), jnp.int32)
    for batch in item_batches(items, items_per_batch, mesh):
      total = total + run(params, *batch, chunk)
    chunks.append(total)
    if i % max(1, num_chunks // 10) == 0 or i == num_chunks:  # about ten progress lines
      jax.block_until_ready(total)
      elapsed = time.perf_counter() - start
      logging.info("sweep: %d/%d centre chunks, %.0f canvases/s, %.0f s to go", i, num_chunks,
                   i * centres_per_chunk * num_items / elapsed, elapsed * (num_chunks / i - 1))
  correct = np.asarray(jax.device_get(jnp.concatenate(chunks)))[:num_centres].astype(np.int64)
  totals = np.bincount(np.asarray(jax.device_get(items.labels)), minlength=num_classes)
  return SweepResult(centres=centres, correct=correct, totals=totals.astype(np.int64))


def placed_correct(params: Any, images: jax.Array, labels: jax.Array, valid: jax.Array,
                   key: jax.Array, *, classify: ClassifyFn, render: RenderFn, sampler,
                   num_classes: int, mesh: Mesh) -> jax.Array:
  """Correct answers per class for a batch of items, each placed once by ``sampler``.

  Args:
    params: model params.
    images: uint8 [batch, s, s, c], split over the mesh.
    labels: int32 [batch].
    valid: bool [batch]; False for padding.
    key: the batch's placement key.
    classify: the model's logits function.
    render: composes model input from items and centres.
    sampler: ``(key, labels) -> centres`` (``locations.make_sampler``), as in training.
    num_classes: number of classes.
    mesh: the device mesh.

  Returns:
    int32 [num_classes].
  """
  x = sharding.constrain_batch(render(images, sampler(key, labels)), mesh)
  correct = (jnp.argmax(classify(params, x), -1) == labels) & valid
  return jnp.einsum("b,bc->c", correct.astype(jnp.int32),
                    jax.nn.one_hot(labels, num_classes, dtype=jnp.int32))


def placed_accuracy(params: Any, items: Items, key: jax.Array, *, classify: ClassifyFn,
                    render: RenderFn, sampler, num_classes: int, mesh: Mesh,
                    items_per_batch: int) -> tuple[np.ndarray, np.ndarray]:
  """Accuracy with every item placed as in training (the stage's sampler), once.

  The placements derive from ``key`` and the batch index only, so every seed's network and
  every rerun sees the same canvases.

  Args:
    params: model params (replicated).
    items: the items on the device.
    key: placement key.
    classify: ``(params, x) -> logits``.
    render: composes model input from items and centres.
    sampler: ``(key, labels) -> centres``.
    num_classes: number of classes.
    mesh: the device mesh; ``items_per_batch`` must divide over it.
    items_per_batch: items per call.

  Returns:
    ``(correct, totals)``: int64 [num_classes] each.
  """
  run = jax.jit(functools.partial(placed_correct, classify=classify, render=render,
                                  sampler=sampler, num_classes=num_classes, mesh=mesh))
  total = jnp.zeros((num_classes,), jnp.int32)
  for i, batch in enumerate(item_batches(items, items_per_batch, mesh)):
    total = total + run(params, *batch, jax.random.fold_in(key, i))
  correct = np.asarray(jax.device_get(total)).astype(np.int64)
  totals = np.bincount(np.asarray(jax.device_get(items.labels)), minlength=num_classes)
  return correct, totals.astype(np.int64)
