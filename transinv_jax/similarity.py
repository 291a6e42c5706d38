"""Cosine similarity of a network's activations for an item and the same item translated (exp5).

Biscione & Bowers (section 5, appendix A.3) compare a network's response to an item at the
leftmost-centred location (x = 25, y = 112 on a 224 canvas with 50 px items) with its response to
the same item moved horizontally (same y) to each other x of the test grid: the cosine similarity
of the flattened activations of one layer, taken after its ReLU, for one item per class, averaged
over those items. The penultimate layer gives the main figure (5); every layer gives the
per-layer figures (11 and 12).

All (item, centre) canvases of a chunk of centres are rendered and run through the network in one
jitted call; the similarities are reduced on the device in float32 and only ``[layers, centres,
items]`` numbers come back.
"""

import dataclasses
import functools
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from transinv_jax import evaluate, sharding
from transinv_jax.train import Items, RenderFn

# (variables, x [batch, H, W, C]) -> (logits, intermediates {name: [batch, ...]}), inference mode.
ApplyFn = Callable[[Any, jax.Array], tuple[jax.Array, dict]]

WHICH = ("all", "penultimate", "all+logits")

# Layer families of the model zoo, in network order. Jitted functions return dicts with sorted
# keys, so the order is rebuilt from the names (stem < conv/blocks < fc < global pool < logits).
_FAMILIES = (
    (re.compile(r"^stem$"), 0),                   # ResNet: conv1 + ReLU + stem pool
    (re.compile(r"^conv(\d+)(?:_(\d+))?$"), 1),   # VGG conv{s}_{i}, RookNet conv1
    (re.compile(r"^layer(\d+)_(\d+)$"), 1),       # ResNet block outputs (after the ReLU)
    (re.compile(r"^fc(\d+)$"), 2),                # VGG fc6, fc7; FCN fc1..fc5
    (re.compile(r"^(?:gap|gmp)$"), 3),            # VGG global pooling heads
    (re.compile(r"^logits$"), 4),
)


def pick_items(items: Items, num_classes: int, per_class: int = 1) -> Items:
  """The first ``per_class`` items of each class, in class order (deterministic).

  Args:
    items: images uint8 [num_items, size, size, channels], labels int32 [num_items].
    num_classes: classes 0 .. num_classes - 1 to pick from.
    per_class: items to take from each class.

  Returns:
    Items with ``num_classes * per_class`` items: class 0's first, then class 1's, ...

  Raises:
    ValueError: if a class has fewer than ``per_class`` items.
  """
  labels = np.asarray(jax.device_get(items.labels))
  index = []
  for c in range(num_classes):
    found = np.flatnonzero(labels == c)[:per_class]
    if found.size < per_class:
      raise ValueError(f"class {c} has {found.size} item(s); {per_class} per class are needed")
    index.extend(found.tolist())
  index = jnp.asarray(index, jnp.int32)
  return Items(images=jnp.take(items.images, index, axis=0),
               labels=jnp.take(items.labels, index, axis=0))


def _rank(name: str) -> tuple | None:
  """Sort key giving network order, or None for a name that is not a compared layer."""
  for pattern, family in _FAMILIES:
    match = pattern.match(name)
    if match:
      return (family,) + tuple(int(g) for g in match.groups() if g is not None)
  return None


def layer_names(intermediates: dict, which: str = "all") -> list[str]:
  """Names of the layers to compare, in network order.

  ``"all"`` is every conv and linear layer whose output is taken after its ReLU, as the paper's
  per-layer figures: ``conv*`` and ``fc*`` (VGG, FCN, RookNet), the VGG global pooling heads
  ``gap`` / ``gmp`` (the features the logits read there), and for ResNets the ``stem`` and each
  block's output ``layer{i}_{j}``. Left out: ``pool*`` (pooling, not a conv or linear layer),
  ``pre_logits`` and ResNet's ``layer{i}`` (aliases of a layer already listed), and ``logits``
  (no ReLU: it can be negative); ``"all+logits"`` adds the logits at the end.
  ``"penultimate"`` is ``["pre_logits"]``, the main figure's layer.

  Args:
    intermediates: the model's intermediates dict (arrays or shapes; only the keys are read).
    which: one of ``WHICH``.

  Returns:
    Layer names, in network order whatever the dict's key order.
  """
  if which == "penultimate":
    if "pre_logits" not in intermediates:
      raise ValueError(f"no pre_logits among the intermediates {sorted(intermediates)}")
    return ["pre_logits"]
  if which not in ("all", "all+logits"):
    raise ValueError(f"unknown layer selection {which!r}; use one of {WHICH}")
  names = [n for n in intermediates if _rank(n) is not None and n != "logits"]
  if which == "all+logits" and "logits" in intermediates:
    names.append("logits")
  return sorted(names, key=_rank)


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """Cosine similarity along the last axis, in float32, safe for zero vectors.

  ReLU maps can be all zero, where the cosine is undefined. Convention: 1 when both vectors are
  zero (identical responses), 0 when exactly one is. Each vector is first divided by its largest
  magnitude, so the squared norms neither overflow nor underflow whatever the activation scale.

  Args:
    a: [..., features].
    b: [..., features] (broadcastable against ``a``).

  Returns:
    float32 [...], in [-1, 1].
  """
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  scale = lambda v: jnp.max(jnp.abs(v), axis=-1, keepdims=True)
  sa, sb = scale(a), scale(b)
  a = a / jnp.where(sa > 0, sa, 1.0)
  b = b / jnp.where(sb > 0, sb, 1.0)
  na = jnp.sqrt(jnp.sum(a * a, axis=-1))
  nb = jnp.sqrt(jnp.sum(b * b, axis=-1))
  nonzero = (na > 0) & (nb > 0)
  cos = jnp.sum(a * b, axis=-1) / jnp.where(nonzero, na * nb, 1.0)
  both_zero = (na == 0) & (nb == 0)
  return jnp.clip(jnp.where(nonzero, cos, jnp.where(both_zero, 1.0, 0.0)), -1.0, 1.0)


def displaced_centres(base_centre: Sequence[int], xs: Sequence[int]) -> np.ndarray:
  """The protocol's centres: the base centre moved horizontally to each x (same y).

  Args:
    base_centre: (x, y) of the reference location.
    xs: x centres to move to (the paper: the test grid's x values).

  Returns:
    int32 [len(xs), 2].
  """
  xs = np.asarray(xs, np.int32)
  return np.stack([xs, np.full_like(xs, base_centre[1])], axis=-1)


@dataclasses.dataclass(frozen=True)
class SimilarityResult:
  """Cosine similarities of one network, for every layer, displaced centre and item.

  Attributes:
    layers: [L] layer names, network order.
    centres: int32 [D, 2], the displaced centres (x, y).
    displacements: int32 [D], horizontal displacement ``x - base_x`` in px (positive: right).
    per_item: float32 [L, D, I], similarity of item i's activations at the base and at centre d.
    labels: int32 [I], the items' classes (with one item per class, per_item is per class).
  """
  layers: list[str]
  centres: np.ndarray
  displacements: np.ndarray
  per_item: np.ndarray
  labels: np.ndarray

  @property
  def mean(self) -> np.ndarray:
    """float32 [L, D]: the mean over items (the paper's curves)."""
    return self.per_item.mean(-1)

  def layer(self, name: str) -> np.ndarray:
    """float32 [D]: the mean over items for one layer."""
    return self.mean[self.layers.index(name)]


def _flat_similarity(base: dict, displaced: dict, layers: Sequence[str],
                     num_items: int) -> jax.Array:
  """[L, C, I] similarities from base activations [I, ...] and displaced ones [C * I, ...]."""
  out = []
  for name in layers:
    a = base[name].reshape((1, num_items, -1))
    b = displaced[name].reshape((-1, num_items, a.shape[-1]))
    out.append(cosine(a, b))
  return jnp.stack(out)


def _base_activations(variables: Any, images: jax.Array, base_centre: jax.Array, *,
                      apply_fn: ApplyFn, render: RenderFn, layers: Sequence[str]) -> dict:
  """{layer: [I, ...]}: the activations of every item at the base centre."""
  x = render(images, jnp.broadcast_to(base_centre, (images.shape[0], 2)))
  _, intermediates = apply_fn(variables, x)
  return {name: intermediates[name] for name in layers}


def _chunk_similarity(variables: Any, images: jax.Array, base: dict, centres: jax.Array, *,
                      apply_fn: ApplyFn, render: RenderFn, layers: Sequence[str],
                      mesh: Mesh | None) -> jax.Array:
  """float32 [L, C, I]: similarity of every item at every centre of a chunk with its base."""
  num_items = images.shape[0]
  # [C, I, H, W, ch] -> [C * I, ...]: centre-major, so a reshape recovers [C, I] afterwards.
  x = jax.vmap(lambda c: render(images, jnp.broadcast_to(c, (num_items, 2))))(centres)
  x = x.reshape((-1,) + x.shape[2:])
  if mesh is not None and mesh.size > 1:
    x = sharding.constrain_batch(x, mesh)
  _, intermediates = apply_fn(variables, x)
  return _flat_similarity(base, intermediates, layers, num_items)


@functools.lru_cache(maxsize=16)
def _compiled(apply_fn: ApplyFn, render: RenderFn, layers: tuple[str, ...],
              mesh: Mesh | None) -> tuple[Callable, Callable]:
  # Cached so that a loop over seeds (same apply_fn and render) compiles once.
  base = jax.jit(functools.partial(_base_activations, apply_fn=apply_fn, render=render,
                                   layers=layers))
  chunk = jax.jit(functools.partial(_chunk_similarity, apply_fn=apply_fn, render=render,
                                    layers=layers, mesh=mesh))
  return base, chunk


def _resolve_layers(apply_fn: ApplyFn, variables: Any, items: Items, render: RenderFn,
                    base_centre: np.ndarray, layers: Sequence[str] | str | None) -> list[str]:
  """The requested layer names, checked against the model's intermediates (shapes only)."""
  x = jax.eval_shape(lambda im: render(im, jnp.broadcast_to(base_centre, (im.shape[0], 2))),
                     items.images)
  _, intermediates = jax.eval_shape(apply_fn, variables, x)
  if layers is None or isinstance(layers, str):
    return layer_names(intermediates, layers or "all")
  missing = [n for n in layers if n not in intermediates]
  if missing:
    raise ValueError(f"layers {missing} are not among the intermediates {sorted(intermediates)}")
  return list(layers)


def cosine_similarity(apply_fn: ApplyFn, variables: Any, items: Items, *, render: RenderFn,
                      base_centre: tuple[int, int], centres: np.ndarray,
                      layers: Sequence[str] | str | None = None, centres_per_chunk: int = 8,
                      mesh: Mesh | None = None) -> SimilarityResult:
  """Per-layer cosine similarity between each item at ``base_centre`` and at each of ``centres``.

  For layer l, centre d and item i: cos(flat(act_l(item_i at base)), flat(act_l(item_i at d))),
  in float32 (whatever the model's compute dtype); see ``cosine`` for all-zero activations.

  Args:
    apply_fn: ``(variables, x) -> (logits, intermediates)`` in inference mode, e.g.
      ``lambda v, x: model.apply(v, x, train=False)``. Keep the same function object across
      seeds: the compiled calls are cached on it.
    variables: one model's variables (not stacked over seeds; see ``by_seed``).
    items: the items to compare (``pick_items``: one per class), on the device.
    render: ``(images, centres) -> model input``, as in training and the shift sweep.
    base_centre: (x, y) reference location (the paper: leftmost-centred, (25, 112)).
    centres: int32 [D, 2] displaced centres (``displaced_centres``), each keeping the item whole.
    layers: layer names; or ``"all"`` / ``"penultimate"`` / ``"all+logits"`` (``layer_names``);
      None is ``"all"``.
    centres_per_chunk: centres per call (each call runs ``items * chunk`` canvases); 0 picks
      the largest chunk that fits half the free device memory (8 where it cannot be read).
    mesh: optional device mesh to split each call's canvases over (the chunk is rounded up so
      that they divide evenly); None runs on the default device.

  Returns:
    A ``SimilarityResult``; ``.mean`` is [L, D], ``.per_item`` [L, D, I].
  """
  centres = np.asarray(centres, np.int32).reshape(-1, 2)
  base_centre = np.asarray(base_centre, np.int32)
  num_items, num_centres = items.num_items, centres.shape[0]
  names = _resolve_layers(apply_fn, variables, items, render, base_centre, layers)
  if mesh is not None and mesh.size == 1:
    mesh = None
  base_fn, chunk_fn = _compiled(apply_fn, render, tuple(names), mesh)
  base = base_fn(variables, items.images, jnp.asarray(base_centre))

  if not centres_per_chunk:
    centres_per_chunk = evaluate.auto_chunk(
        chunk_fn, lambda n: (variables, items.images, base,
                             jax.ShapeDtypeStruct((n, 2), jnp.int32)),
        num_centres, fallback=8)
    logging.info("similarity: %d centres per call", centres_per_chunk)
  padded, chunk = evaluate.whole_chunks(centres, centres_per_chunk, num_items, mesh)
  parts = [chunk_fn(variables, items.images, base, jnp.asarray(padded[c:c + chunk]))
           for c in range(0, padded.shape[0], chunk)]
  per_item = np.asarray(jax.device_get(jnp.concatenate(parts, axis=1)), np.float32)
  return SimilarityResult(
      layers=names, centres=centres, displacements=centres[:, 0] - base_centre[0],
      per_item=per_item[:, :num_centres],
      labels=np.asarray(jax.device_get(items.labels), np.int32))


@dataclasses.dataclass(frozen=True)
class SeedsSimilarity:
  """Similarities of several trained repetitions (seeds) of one network.

  Attributes:
    layers: [L] layer names, network order.
    centres: int32 [D, 2].
    displacements: int32 [D].
    per_seed: float32 [S, L, D, I], each seed's ``SimilarityResult.per_item``.
    labels: int32 [I].
  """
  layers: list[str]
  centres: np.ndarray
  displacements: np.ndarray
  per_seed: np.ndarray
  labels: np.ndarray

  @property
  def seed_mean(self) -> np.ndarray:
    """float32 [S, L, D]: each seed's mean over items."""
    return self.per_seed.mean(-1)

  @property
  def mean(self) -> np.ndarray:
    """float32 [L, D]: the mean over seeds of the mean over items."""
    return self.seed_mean.mean(0)

  @property
  def std(self) -> np.ndarray:
    """float32 [L, D]: the std across seeds of the mean over items (0 for one seed)."""
    return self.seed_mean.std(0)


def by_seed(apply_fn: ApplyFn, variables_per_seed: Sequence[Any], items: Items,
            **kwargs) -> SeedsSimilarity:
  """``cosine_similarity`` for each seed's variables (compiled once), stacked.

  Args:
    apply_fn: as ``cosine_similarity``.
    variables_per_seed: one variables tree per seed. For variables trained together (stacked
      on a leading seed axis) pass ``[jax.tree.map(lambda v: v[i], stacked) for i in ...]``.
    items: as ``cosine_similarity``.
    **kwargs: the other ``cosine_similarity`` arguments.

  Returns:
    A ``SeedsSimilarity``; ``.mean`` and ``.std`` are [L, D].
  """
  results = [cosine_similarity(apply_fn, v, items, **kwargs) for v in variables_per_seed]
  if not results:
    raise ValueError("no variables given")
  first = results[0]
  return SeedsSimilarity(layers=first.layers, centres=first.centres,
                         displacements=first.displacements,
                         per_seed=np.stack([r.per_item for r in results]), labels=first.labels)
