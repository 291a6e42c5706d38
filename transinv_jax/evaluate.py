"""Shift sweep: accuracy at every tested location, each seed's network in turn.

For a batch of test items and a chunk of centres, every (item, centre) canvas is rendered on the
device and classified in one call of the evaluation kernel; counts of correct answers per centre
and class accumulate on the device and come back once, at the end. ``placed_accuracy`` is the plain
test accuracy, with items placed as in training.
"""

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from transinv_jax import kernel, progress, sharding
from transinv_jax.data import canvas, locations
from transinv_jax.train import Items


@dataclasses.dataclass(frozen=True)
class SweepResult:
  """Counts from a shift sweep of S seeds' networks over ``num_centres`` locations.

  Attributes:
    centres: int32 [num_centres, 2], the item centres (x, y).
    correct: int64 [S, num_centres, num_classes], correctly classified items per seed, centre
      and class.
    totals: int64 [num_classes], test items per class (the same at every centre).
  """
  centres: np.ndarray
  correct: np.ndarray
  totals: np.ndarray

  @property
  def accuracy(self) -> np.ndarray:
    """float [S, num_centres]: accuracy over all test items at each centre."""
    return self.correct.sum(-1) / self.totals.sum()

  @property
  def class_accuracy(self) -> np.ndarray:
    """float [S, num_centres, num_classes]: per-class accuracy (NaN for a class with no items)."""
    with np.errstate(invalid="ignore", divide="ignore"):
      return self.correct / self.totals

  @property
  def normalised_accuracy(self) -> np.ndarray:
    """float [S, num_centres]: 0 = chance, 100 = perfect."""
    return normalised_accuracy(self.accuracy, self.totals.shape[0])


def normalised_accuracy(accuracy: np.ndarray, num_classes: int) -> np.ndarray:
  """Rescales accuracy so that chance (1 / num_classes) is 0 and perfect is 100."""
  chance = 1.0 / num_classes
  return 100.0 * (np.asarray(accuracy) - chance) / (1.0 - chance)


def count_correct(logits: jax.Array, intermediates: dict, centres: jax.Array,
                  operands: tuple[jax.Array, jax.Array]) -> jax.Array:
  """The kernel's reduction for both: correct answers per centre and class.

  Args:
    logits: [batch, points, num_classes].
    intermediates: not used.
    centres: not used.
    operands: ``(labels, valid)``: int32 [batch] and bool [batch], False for padding.

  Returns:
    int32 [points, num_classes].
  """
  del intermediates, centres
  labels, valid = operands
  correct = (jnp.argmax(logits, -1) == labels[:, None]) & valid[:, None]
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.int32)
  return jnp.einsum("bp,bc->pc", correct.astype(jnp.int32), one_hot)


def item_batches(items: Items, items_per_batch: int, mesh: Mesh,
                 pad: bool = True) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
  """``(images, labels, valid)`` batches of ``items``, split over the mesh.

  With ``pad``, the last batch is padded with zero items whose ``valid`` is False, so every batch
  has the same shape (one compilation) and the padding is masked out of the counts. Without it
  (networks with test-time batch statistics, where padding would enter every item's answer),
  the last batch holds the remaining items only, as a PyTorch ``DataLoader`` without
  ``drop_last``: one more compilation; it is replicated where it does not split over the mesh.
  """
  num_items = items.num_items
  extra = -num_items % items_per_batch if pad else 0
  images = jnp.pad(items.images, ((0, extra),) + ((0, 0),) * 3)
  labels = jnp.pad(items.labels, (0, extra))
  valid = jnp.arange(num_items + extra) < num_items
  batches = []
  for b in range(0, num_items + extra, items_per_batch):
    size = min(items_per_batch, num_items + extra - b)
    spec = (sharding.batch_sharded(mesh) if size % mesh.size == 0
            else sharding.replicated(mesh))
    batches.append(jax.device_put((images[b:b + size], labels[b:b + size], valid[b:b + size]),
                                  spec))
  return batches


def _totals(items: Items, num_classes: int) -> np.ndarray:
  """int64 [num_classes]: items per class."""
  labels = np.asarray(jax.device_get(items.labels))
  return np.bincount(labels, minlength=num_classes).astype(np.int64)


def shift_sweep(net: kernel.Network, variables: Any, items: Items, centres: np.ndarray, *,
                render: canvas.Renderer, mesh: Mesh, items_per_batch: int,
                centres_per_chunk: int) -> SweepResult:
  """Accuracy of each seed's network for every test item at every centre.

  Memory is bounded by ``items_per_batch * centres_per_chunk`` canvases per call.

  Args:
    net: ``(variables, x) -> (logits, intermediates)`` in inference mode (``kernel.Inference``);
      keep one object per network: the compiled kernel is cached on it.
    variables: the network's variables stacked over S seeds, every leaf [S, ...] (replicated).
    items: the test items on the device.
    centres: int32 [num_centres, 2], (x, y), each keeping the item whole.
    render: composes model input from items and centres.
    mesh: the device mesh; ``items_per_batch`` must divide over it.
    items_per_batch: test items per call; for a network with test-time batch statistics
      (``config.model.batch_norm_stats="batch"``) also the test batch they are taken over, at
      each centre separately (``kernel.evaluation_kernel``).
    centres_per_chunk: the most centres per call (the calls share the centres evenly); 0 picks
      the largest chunk that fits half the free device memory (``kernel.auto_chunk``; one grid
      row, 19, where the backend reports no memory).

  Returns:
    The counts, correct [S, num_centres, num_classes]; ``.accuracy``, ``.class_accuracy``,
    ``.normalised_accuracy`` derive from them.
  """
  centres = np.asarray(centres, np.int32)
  num_centres = centres.shape[0]
  run = kernel.Kernel(net, render, count_correct, mesh)
  batches = item_batches(items, items_per_batch, mesh, pad=not kernel.batch_statistics(net))
  if not centres_per_chunk:
    images, labels, valid = batches[0]
    centres_per_chunk = kernel.auto_chunk(
        run, lambda n: (kernel.seed_variables(variables, 0), images,
                        jax.ShapeDtypeStruct((1, n, 2), jnp.int32), (labels, valid)),
        num_centres, fallback=19)
  padded, chunk = kernel.whole_chunks(centres, centres_per_chunk, items_per_batch, mesh)
  logging.info("sweep: %d calls of %d centres per item batch", padded.shape[0] // chunk, chunk)
  centre_chunks = [c[None] for c in kernel.chunks(padded, chunk)]  # [1, chunk, 2]: every item
  calls = kernel.num_seeds(variables) * len(centre_chunks)
  done, start = 0, time.perf_counter()

  def sweep(one_seed):
    nonlocal done
    per_chunk = []
    for chunk_centres in centre_chunks:
      total = sum(run(one_seed, images, chunk_centres, (labels, valid))
                  for images, labels, valid in batches)
      per_chunk.append(total)
      done += 1
      if done % max(1, calls // 10) == 0 or done == calls:  # about ten progress lines
        jax.block_until_ready(total)
        elapsed = time.perf_counter() - start
        logging.info("sweep: %d/%d centre chunks (%d%%), %.0f canvases/s, %s to go", done,
                     calls, 100 * done // calls, done * chunk * items.num_items / elapsed,
                     progress.format_duration(elapsed * (calls / done - 1)))
    return jnp.concatenate(per_chunk)

  correct = kernel.over_seeds(variables, sweep)[:, :num_centres].astype(np.int64)
  return SweepResult(centres=centres, correct=correct,
                     totals=_totals(items, correct.shape[-1]))


def placed_accuracy(net: kernel.Network, variables: Any, items: Items, key: jax.Array, *,
                    render: canvas.Renderer, sampler: locations.Sampler, mesh: Mesh,
                    items_per_batch: int) -> tuple[np.ndarray, np.ndarray]:
  """Accuracy of each seed's network with every item placed as in training, once.

  The placements derive from ``key`` and the batch index only, so every seed's network and
  every rerun sees the same canvases.

  Args:
    net: as ``shift_sweep``.
    variables: as ``shift_sweep``, stacked over S seeds.
    items: the items on the device.
    key: placement key.
    render: composes model input from items and centres.
    sampler: ``(key, labels) -> centres`` (the stage's, as in training).
    mesh: the device mesh; ``items_per_batch`` must divide over it.
    items_per_batch: items per call (and test batch, as ``shift_sweep``).

  Returns:
    ``(correct, totals)``: int64 [S, num_classes] and int64 [num_classes].
  """
  run = kernel.Kernel(net, render, count_correct, mesh)
  # [batch, 1, 2]: one canvas per item.
  placed = [(images, sampler(jax.random.fold_in(key, i), labels)[:, None], (labels, valid))
            for i, (images, labels, valid) in enumerate(
                item_batches(items, items_per_batch, mesh, pad=not kernel.batch_statistics(net)))]
  correct = kernel.over_seeds(variables, lambda one_seed: sum(
      run(one_seed, images, centres, operands) for images, centres, operands in placed))
  correct = correct[:, 0].astype(np.int64)
  return correct, _totals(items, correct.shape[-1])
