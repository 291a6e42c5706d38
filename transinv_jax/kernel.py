"""The evaluation kernel: render items at many centres, apply a network, reduce on the device.

Every evaluation (the shift sweep, placed accuracy, cosine similarity, invariance responses,
consistency) is one program of the same shape: each item of a batch is rendered at P centres, the
batch x P canvases go through one seed's network, and a small reduction of the logits and
intermediates (counts, similarities, per-map statistics) is all that comes back.

``Kernel`` names that program by values (network, renderer, reduction, mesh), so equal kernels
share one compiled program for every seed, chunk, call and test with the same shapes. Seeds are
evaluated one after another with that program (``over_seeds``), never vmapped: vmap over seeds
turns every convolution into a grouped convolution, which GPUs run slowly. ``whole_chunks`` splits
the points into calls of equal size that pad at most one point per call (before rounding the chunk
up to split over the devices).

A network whose BatchNorm normalises by the statistics of its input batch at test time too
(``config.model.batch_norm_stats="batch"``, the authors' ``track_running_stats=False``) gives each
item an answer that depends on the batch. The batch is then deliberately the authors' test batch:
the call's items at one placement (one centre, or one offset of consistency's pairs), never the
items x centres of a whole call; item batches are not padded for such networks (see
``evaluate.item_batches``), so padding never enters the statistics.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from transinv_jax import models, sharding
from transinv_jax.train import RenderFn

# (variables, x [batch, H, W, C]) -> (logits [batch, K], intermediates {name: [batch, ...]}).
# A network with a true ``batch_statistics`` attribute is applied to one placement at a time.
Network = Callable[[Any, jax.Array], tuple[jax.Array, dict]]
# (logits [B, P, K], intermediates {name: [B, P, ...]}, centres int32 [B or 1, P, 2], operands)
# -> what comes back from the device.
Reduce = Callable[[jax.Array, dict, jax.Array, Any], Any]


@dataclasses.dataclass(frozen=True, eq=False)
class Inference:
  """A Flax model of the zoo in inference mode, as a ``Network``.

  Compared by identity (Flax modules with dict attributes cannot be hashed): build one per
  network and reuse it, since the compiled kernels are cached on it.
  """
  model: nn.Module

  @property
  def batch_statistics(self) -> bool:
    """True where the model's BatchNorm uses its input batch's statistics at test time too."""
    return models.uses_batch_statistics(self.model)

  def __call__(self, variables: Any, x: jax.Array) -> tuple[jax.Array, dict]:
    return self.model.apply(variables, x, train=False)


def batch_statistics(net: Network) -> bool:
  """Whether ``net`` normalises by its input batch's statistics (see the module docstring)."""
  return bool(getattr(net, "batch_statistics", False))


@dataclasses.dataclass(frozen=True)
class Kernel:
  """Render at many centres, apply one seed's network, reduce: one compiled program per shape.

  Attributes:
    net: the network; a ``Network`` that is hashable (``Inference``, a module-level function).
    render: ``(images, centres) -> model input``, hashable (``canvas.Renderer``).
    reduce: the reduction, hashable and compared by value (a module-level function or a frozen
      dataclass).
    mesh: the device mesh to split the canvases over; a mesh of one device is stored as None.
  """
  net: Network
  render: RenderFn
  reduce: Reduce
  mesh: Mesh | None = None

  def __post_init__(self):
    if self.mesh is not None and self.mesh.size == 1:
      object.__setattr__(self, "mesh", None)  # one key, and one program, for one device

  def __call__(self, variables: Any, images: jax.Array, centres: jax.Array,
               operands: Any = None) -> Any:
    """The reduction of every item's canvases at its centres.

    Args:
      variables: one seed's variables (``seed_variables``).
      images: uint8 [batch, size, size, channels].
      centres: int32 [batch, points, 2], (x, y) of each item's canvases; or [1, points, 2], the
        same centres for every item.
      operands: whatever else the reduction reads (labels, base activations).

    Returns:
      What ``reduce`` returns, on the device.
    """
    return evaluation_kernel(self, variables, images, centres, operands)

  def lower(self, *args):
    """``jax.jit``'s ``lower`` of the call with these arguments (for ``auto_chunk``)."""
    return evaluation_kernel.lower(self, *args)


@functools.partial(jax.jit, static_argnums=0)
def evaluation_kernel(kernel: Kernel, variables: Any, images: jax.Array, centres: jax.Array,
                      operands: Any) -> Any:
  """``Kernel.__call__``, jitted with the kernel as its static key."""
  batch, points = images.shape[0], centres.shape[1]
  # Item-major [batch * points]: items split over the mesh stay split in contiguous blocks, and
  # a reshape recovers [batch, points].
  x = kernel.render(jnp.repeat(images, points, axis=0),
                    jnp.broadcast_to(centres, (batch, points, 2)).reshape(-1, 2))
  # An unpadded last batch of items (batch statistics) may not split over the devices.
  if kernel.mesh is not None and (not batch_statistics(kernel.net) or
                                  x.shape[0] % kernel.mesh.size == 0):
    x = sharding.constrain_batch(x, kernel.mesh)
  per_item = lambda a: a.reshape((batch, points) + a.shape[1:])
  if batch_statistics(kernel.net):
    # One batch per placement: the items at point p are normalised together, as the authors
    # test a batch of items at one location. vmap keeps it one program of the same convs.
    logits, intermediates = jax.vmap(kernel.net, in_axes=(None, 1), out_axes=1)(
        variables, per_item(x))
  else:
    logits, intermediates = jax.tree.map(per_item, kernel.net(variables, x))
  return kernel.reduce(logits, intermediates, centres, operands)


def num_seeds(variables: Any) -> int:
  """S, the leading axis of variables stacked over seeds; 1 for a network without variables."""
  leaves = jax.tree.leaves(variables)
  return leaves[0].shape[0] if leaves else 1


@jax.jit
def seed_variables(variables: Any, seed: jax.Array) -> Any:
  """One seed's variables from variables stacked over seeds (one program for every seed)."""
  return jax.tree.map(lambda v: v[seed], variables)


def over_seeds(variables: Any, evaluate: Callable[[Any], Any]) -> Any:
  """``evaluate(one seed's variables)`` for every seed, one after another, stacked on the host.

  Args:
    variables: variables stacked over seeds, every leaf [S, ...].
    evaluate: one seed's variables -> a pytree of arrays.

  Returns:
    The pytree with numpy arrays of shape [S, ...].
  """
  # Every seed is dispatched before any result is fetched: the device never waits for the host.
  results = jax.device_get([evaluate(seed_variables(variables, s))
                            for s in range(num_seeds(variables))])
  return jax.tree.map(lambda *per_seed: np.stack(per_seed), *results)


def whole_chunks(points: np.ndarray, chunk: int, num_items: int,
                 mesh: Mesh | None) -> tuple[np.ndarray, int]:
  """Pads ``points`` to calls of equal size, at most ``chunk`` points each where it can.

  The number of calls comes first (the fewest of at most ``chunk`` points), then the chunk that
  shares the points evenly over them, so the padding is at most one point per call: 361 centres
  at most 111 at a time are 4 calls of 91 (3 padded), not 4 of 111 (83 padded).

  Args:
    points: [P, ...], what each call takes a chunk of (centres, shifts, item indices).
    chunk: the most points per call (clipped to 1..P).
    num_items: canvases per point in a call (items per centre, or shifted copies per item);
      with a mesh of several devices the chunk grows until ``num_items * chunk`` splits evenly
      over them.
    mesh: the device mesh, or None for one device.

  Returns:
    ``(padded, chunk)``: the points followed by copies of the last (to be sliced off afterwards)
    up to a whole number of chunks, and the chunk.
  """
  num = points.shape[0]
  calls = -(-num // max(1, min(chunk, num)))
  chunk = -(-num // calls)
  if mesh is not None and mesh.size > 1:
    step = mesh.size // math.gcd(num_items, mesh.size)
    chunk = -(-chunk // step) * step
  padding = -num % chunk
  return np.concatenate([points, np.repeat(points[-1:], padding, axis=0)]), chunk


def chunks(padded: np.ndarray, chunk: int) -> Iterator[jax.Array]:
  """The chunks of ``whole_chunks``' padded points, on the device."""
  for start in range(0, padded.shape[0], chunk):
    yield jnp.asarray(padded[start:start + chunk])


def auto_chunk(run, args_for_chunk: Callable[[int], tuple], num_points: int, fallback: int,
               memory_fraction: float = 0.5) -> int:
  """Points per call that fit the device's free memory, from XLA's own memory analysis.

  Compiles the call for one point (once per call and argument shapes), reads its working memory,
  and divides a fraction of the free device memory by it (the working memory grows linearly with
  the chunk). Backends that report no memory statistics (CPU) get ``fallback``.

  Args:
    run: the jitted call (a ``Kernel``), with a ``lower`` method.
    args_for_chunk: ``chunk -> run's arguments`` for a chunk of that many points (arrays or
      ``jax.ShapeDtypeStruct``).
    num_points: points to evaluate in all (the chunk never exceeds it).
    fallback: the chunk where memory cannot be read.
    memory_fraction: share of the free memory a call may use.

  Returns:
    Points per call, at least 1.
  """
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_limit" not in stats:
    return max(1, min(fallback, num_points))
  free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
  leaves, treedef = jax.tree.flatten(args_for_chunk(1))
  shapes = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
                 for x in leaves)
  per_point = _bytes_per_point(run, treedef, shapes)
  return int(max(1, min(num_points, memory_fraction * free // per_point)))


@functools.lru_cache(maxsize=64)
def _bytes_per_point(run, treedef, shapes: tuple) -> int:
  # Cached: the probe is a compile of its own, needed once per kernel and shapes.
  analysis = run.lower(*jax.tree.unflatten(treedef, shapes)).compile().memory_analysis()
  return max(1, analysis.temp_size_in_bytes + analysis.output_size_in_bytes)


@dataclasses.dataclass(frozen=True)
class Activations:
  """The kernel's reduction to the activations of ``layers``: {layer: [batch, points, ...]}."""
  layers: tuple[str, ...]

  def __call__(self, logits: jax.Array, intermediates: dict, centres: jax.Array,
               operands: Any) -> dict:
    del logits, centres, operands
    return {name: intermediates[name] for name in self.layers}


def against_base(net: Network, variables: Any, images: jax.Array, *, render: RenderFn,
                 reduce: Reduce, layers: Sequence[str], base_centre: np.ndarray,
                 centres: np.ndarray, centres_per_chunk: int, mesh: Mesh | None) -> Any:
  """Each seed's ``reduce`` of every item at every centre, against the item at a base centre.

  For each seed, the activations of ``layers`` with every item at ``base_centre`` are computed
  once; then every item is rendered at each of ``centres``, a chunk per call, and ``reduce``
  gets ``operands = (base, base_centre)``: base {layer: [I, 1, ...]} and int32 [2].

  Args:
    net: the network (hashable: ``Inference``).
    variables: its variables stacked over S seeds.
    images: uint8 [I, size, size, channels], every item in every call.
    render: composes model input from items and centres (hashable: ``canvas.Renderer``).
    reduce: the per-chunk reduction, returning arrays [I, chunk, ...].
    layers: the layers of the base activations.
    base_centre: int [2], (x, y).
    centres: int32 [P, 2], (x, y).
    centres_per_chunk: the most centres per call; 0 picks the largest chunk that fits half the
      free device memory (8 where it cannot be read).
    mesh: the device mesh to split each call's canvases over, or None.

  Returns:
    ``reduce``'s pytree with numpy arrays [S, I, P, ...].
  """
  num_items, num_centres = images.shape[0], centres.shape[0]
  base_run = Kernel(net, render, Activations(tuple(layers)))
  run = Kernel(net, render, reduce, mesh)
  at_base = jnp.asarray(np.reshape(base_centre, (1, 1, 2)), jnp.int32)
  base_centre = jnp.asarray(base_centre, jnp.int32)
  if not centres_per_chunk:
    one_seed = seed_variables(variables, 0)
    base = jax.eval_shape(base_run, one_seed, images, at_base)
    centres_per_chunk = auto_chunk(
        run, lambda n: (one_seed, images, jax.ShapeDtypeStruct((1, n, 2), jnp.int32),
                        (base, base_centre)),
        num_centres, fallback=8)
  padded, chunk = whole_chunks(centres, centres_per_chunk, num_items, run.mesh)
  centre_chunks = [c[None] for c in chunks(padded, chunk)]  # [1, chunk, 2]: every item

  def evaluate(one_seed):
    operands = base_run(one_seed, images, at_base), base_centre
    parts = [run(one_seed, images, c, operands) for c in centre_chunks]
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *parts)

  return jax.tree.map(lambda a: a[:, :, :num_centres], over_seeds(variables, evaluate))
