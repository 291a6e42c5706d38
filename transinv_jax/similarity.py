"""Cosine similarity of a network's activations for an item and the same item translated (exp5).

Biscione & Bowers (section 5, appendix A.3) compare a network's response to an item at the
leftmost-centred location (x = 25, y = 112 on a 224 canvas with 50 px items) with its response to
the same item moved horizontally (same y) to each other x of the test grid: the cosine similarity
of the flattened activations of one layer, taken after its ReLU, for one item per class (drawn at
random by the authors, by the network's seed here: ``item_indices``), averaged over those items.
The penultimate layer gives the main figure (5); every layer gives the per-layer figures (11 and
12). The authors hook every ``Conv2d`` and ``Linear`` module, so their last layer is the output
layer (the logits, before the softmax): ``"all+logits"`` below.

All (item, centre) canvases of a chunk of centres are rendered and run through the network in one
call of the evaluation kernel; the similarities are reduced on the device in float32 and only
``[items, centres]`` numbers per layer come back.
"""

import dataclasses
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from transinv_jax import kernel
from transinv_jax.data import canvas
from transinv_jax.train import Items

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


# Mixed into each seed's item draw, so that it is independent of the seed's training keys.
_DRAW_STREAM = 5


def item_indices(labels: np.ndarray, num_classes: int, per_class: int = 1,
                 seed: int | None = None) -> np.ndarray:
  """Which items to compare: ``per_class`` of each class, in class order.

  The authors draw one image of each class at random (their ``CosSim`` takes a random sample of
  each class's folder); here the draw is made reproducible: a function of ``seed`` alone (the
  network's seed, ``config.seed`` + its index), so a network is measured on the same items in
  every run and every test on the same items (before and after fine-tuning), and the seeds of a
  run on different items.

  Args:
    labels: int [num_items], the items' classes.
    num_classes: classes 0 .. num_classes - 1 to pick from.
    per_class: items to take from each class.
    seed: the draw's seed; None takes the first ``per_class`` of each class instead.

  Returns:
    int64 [num_classes * per_class] indices into ``labels``: class 0's, then class 1's, ...

  Raises:
    ValueError: if a class has fewer than ``per_class`` items.
  """
  labels = np.asarray(labels)
  rng = None if seed is None else np.random.default_rng((int(seed), _DRAW_STREAM))
  index = []
  for c in range(num_classes):
    found = np.flatnonzero(labels == c)
    if found.size < per_class:
      raise ValueError(f"class {c} has {found.size} item(s); {per_class} per class are needed")
    index.extend(found[:per_class] if rng is None else
                 np.sort(rng.choice(found, per_class, replace=False)))
  return np.asarray(index, np.int64)


def pick_items(items: Items, num_classes: int, per_class: int = 1,
               seed: int | None = None) -> Items:
  """The items ``item_indices`` names (the first of each class without a ``seed``).

  Args:
    items: images uint8 [num_items, size, size, channels], labels int32 [num_items].
    num_classes: classes 0 .. num_classes - 1 to pick from.
    per_class: items to take from each class.
    seed: the draw's seed (``item_indices``); None: the first ``per_class`` of each class.

  Returns:
    Items with ``num_classes * per_class`` items: class 0's first, then class 1's, ...

  Raises:
    ValueError: if a class has fewer than ``per_class`` items.
  """
  index = item_indices(np.asarray(jax.device_get(items.labels)), num_classes, per_class, seed)
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
  (no ReLU: it can be negative); ``"all+logits"`` adds the logits at the end, as the authors'
  hooks on every ``Linear`` do (exp5's per-layer figures).
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
  """Cosine similarities of S seeds' networks, for every layer, displaced centre and item.

  Attributes:
    layers: [L] layer names, network order.
    centres: int32 [D, 2], the displaced centres (x, y).
    displacements: int32 [D], horizontal displacement ``x - base_x`` in px (positive: right).
    per_item: float32 [S, L, D, I], similarity of item i's activations at the base and at centre
      d, for each seed's network.
    labels: int32 [I], the items' classes (with one item per class, per_item is per class).
    item_index: int64 [S, I], which of the given items each seed's network was measured on
      (``cosine_similarity``'s ``item_index``); None when every seed saw all of them.
  """
  layers: list[str]
  centres: np.ndarray
  displacements: np.ndarray
  per_item: np.ndarray
  labels: np.ndarray
  item_index: np.ndarray | None = None

  @property
  def seed_mean(self) -> np.ndarray:
    """float32 [S, L, D]: each seed's mean over items."""
    return self.per_item.mean(-1)

  @property
  def mean(self) -> np.ndarray:
    """float32 [L, D]: the mean over seeds of the mean over items (the paper's curves)."""
    return self.seed_mean.mean(0)

  @property
  def std(self) -> np.ndarray:
    """float32 [L, D]: the std across seeds of the mean over items (0 for one seed)."""
    return self.seed_mean.std(0)

  def layer(self, name: str) -> np.ndarray:
    """float32 [D]: ``mean`` for one layer."""
    return self.mean[self.layers.index(name)]


def similarity_to_base(logits: jax.Array, intermediates: dict, centres: jax.Array,
                       operands: tuple[dict, jax.Array]) -> dict:
  """The kernel's reduction: cosine similarity of every item at every centre with its base.

  Args:
    logits: not used.
    intermediates: {layer: [I, P, ...]}, the activations at the chunk's centres.
    centres: not used.
    operands: ``(base, base_centre)`` from ``kernel.against_base``: {layer: [I, 1, ...]}.

  Returns:
    {layer: float32 [I, P]} for the layers of ``base``.
  """
  del logits, centres
  base, _ = operands
  flat = lambda a: a.reshape(a.shape[:2] + (-1,))
  return {name: cosine(flat(a), flat(intermediates[name])) for name, a in base.items()}


def resolve_layers(net: kernel.Network, variables: Any, images: jax.Array,
                   render: canvas.Renderer,
                   layers: Sequence[str] | str | None) -> tuple[list[str], dict]:
  """The requested layers, checked against the network's intermediates (shapes only).

  Args:
    net: the network.
    variables: its variables, stacked over seeds.
    images: the items' images, uint8 [I, size, size, channels].
    render: composes model input from items and centres.
    layers: layer names; or ``"all"`` / ``"penultimate"`` / ``"all+logits"`` (``layer_names``);
      None is ``"all"``.

  Returns:
    ``(names, shapes)``: the layer names (network order for a selection), and every
    intermediate's ``jax.ShapeDtypeStruct`` [I, ...] for one canvas per item.

  Raises:
    ValueError: a named layer is not among the intermediates.
  """
  x = jax.eval_shape(render, images, jax.ShapeDtypeStruct((images.shape[0], 2), jnp.int32))
  _, shapes = jax.eval_shape(net, jax.eval_shape(kernel.seed_variables, variables, 0), x)
  if layers is None or isinstance(layers, str):
    return layer_names(shapes, layers or "all"), shapes
  missing = [n for n in layers if n not in shapes]
  if missing:
    raise ValueError(f"layers {missing} are not among the model's intermediates; available: "
                     f"{sorted(shapes)}")
  return list(layers), shapes


def cosine_similarity(net: kernel.Network, variables: Any, items: Items, *,
                      render: canvas.Renderer, base_centre: tuple[int, int], centres: np.ndarray,
                      layers: Sequence[str] | str | None = None, centres_per_chunk: int = 8,
                      mesh: Mesh | None = None,
                      item_index: np.ndarray | None = None) -> SimilarityResult:
  """Per-layer cosine similarity between each item at ``base_centre`` and at each of ``centres``.

  For seed s, layer l, centre d and item i: cos(flat(act_l(item_i at base)), flat(act_l(item_i
  at d))), in float32 (whatever the model's compute dtype); see ``cosine`` for all-zero
  activations.

  Args:
    net: ``(variables, x) -> (logits, intermediates)`` in inference mode
      (``kernel.Inference``); keep one object per network: the compiled kernels are cached on it.
    variables: the network's variables stacked over S seeds, every leaf [S, ...].
    items: the items to compare (``pick_items``: one per class), on the device.
    render: composes model input from items and centres, as in training and the shift sweep.
    base_centre: (x, y) reference location (the paper: leftmost-centred, (25, 112)).
    centres: int32 [D, 2] displaced centres (``displaced_centres``), each keeping the item whole.
    layers: layer names; or ``"all"`` / ``"penultimate"`` / ``"all+logits"`` (``layer_names``);
      None is ``"all"``.
    centres_per_chunk: the most centres per call (each call runs ``items * chunk`` canvases); 0
      picks the largest chunk that fits half the free device memory (8 where it cannot be read).
    mesh: optional device mesh to split each call's canvases over (the chunk is rounded up so
      that they divide evenly); None runs on the default device.
    item_index: int [S, I]: seed s compares the items ``item_index[s]`` of ``items`` (each
      seed its own draw, ``item_indices``; the same classes in the same order for every seed);
      None: every seed compares all of ``items``.

  Returns:
    A ``SimilarityResult``; ``.per_item`` is [S, L, D, I], ``.mean`` [L, D].
  """
  if item_index is not None:
    # One seed at a time on its own items: same shapes for every seed, so one compilation.
    item_index = np.asarray(item_index, np.int64)
    parts = [cosine_similarity(
        net, jax.tree.map(lambda v, s=s: v[s:s + 1], variables),
        Items(images=jnp.take(items.images, jnp.asarray(index, jnp.int32), axis=0),
              labels=jnp.take(items.labels, jnp.asarray(index, jnp.int32), axis=0)),
        render=render, base_centre=base_centre, centres=centres, layers=layers,
        centres_per_chunk=centres_per_chunk, mesh=mesh) for s, index in enumerate(item_index)]
    if len({tuple(p.labels) for p in parts}) != 1:
      raise ValueError("item_index: every seed must compare items of the same classes, in the "
                       "same order")
    return dataclasses.replace(parts[0], item_index=item_index,
                               per_item=np.concatenate([p.per_item for p in parts]))
  centres = np.asarray(centres, np.int32).reshape(-1, 2)
  base_centre = np.asarray(base_centre, np.int32)
  names, _ = resolve_layers(net, variables, items.images, render, layers)
  similarity = kernel.against_base(
      net, variables, items.images, render=render, reduce=similarity_to_base, layers=names,
      base_centre=base_centre, centres=centres, centres_per_chunk=centres_per_chunk, mesh=mesh)
  # {layer: [S, I, D]} -> [S, L, D, I]
  per_item = np.stack([similarity[name].swapaxes(1, 2) for name in names], axis=1)
  return SimilarityResult(
      layers=names, centres=centres, displacements=centres[:, 0] - base_centre[0],
      per_item=per_item.astype(np.float32),
      labels=np.asarray(jax.device_get(items.labels), np.int32))
