"""One data-parallel mesh over every device: the same code on 1 CPU, 1 GPU or a TPU pod slice.

Parameters are replicated; anything with a batch axis is split along ``"batch"``. On multi-host
slices ``jax.devices()`` spans all hosts, and each host computes (renders) only its own shard.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH = "batch"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named ``"batch"`` over ``devices`` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (BATCH,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Split dimension ``axis`` over the mesh; other dimensions whole."""
  return NamedSharding(mesh, P(*([None] * axis), BATCH))


def constrain_batch(x: jax.Array, mesh: Mesh, axis: int = 0) -> jax.Array:
  """Inside jit: ask XLA to keep ``x`` split along ``axis``, so each device renders its own shard."""
  return jax.lax.with_sharding_constraint(x, batch_sharded(mesh, axis))
