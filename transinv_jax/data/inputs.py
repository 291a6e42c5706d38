"""Input preparation from a ``config.data`` section: items, their labels, canvases and samplers.

What the pipeline, ``diagnose`` and the benchmarks share to turn a data config into device items,
a renderer and a training sampler. Depends on nothing in ``transinv_jax.experiments``: data flows
one way.
"""

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from transinv_jax import config_checks, models, sharding, train
from transinv_jax.data import canvas, locations, sources

# How ``config.data.labels`` may label items (``location_labels``).
LABEL_KINDS = ("class", "location", "location_pairs")


def load_items(data: ml_collections.ConfigDict, split: str, max_items: int) -> sources.ItemSet:
  """A split's items as ``data`` names them.

  In order: the first ``data.classes`` classes; ``"val"`` is the last ``data.val_items`` of the
  train file and ``"train"`` what comes before them (so the two never share an item); the first
  ``max_items``; then ``data.labels`` (``location_labels``).

  Args:
    data: a ``config.data`` section.
    split: ``"train"``, ``"val"`` or ``"test"``.
    max_items: keep the first N (0 = all).

  Returns:
    The items, labelled as the task needs.
  """
  file_split = "train" if split == "val" else split
  whole = bool(data.classes or data.get("val_items", 0))
  item_set = sources.load_items(
      data.dataset, file_split, source=data.source, data_dir=data.data_dir or None,
      max_items=0 if whole else max_items, download=data.tfds_download,
      folder=data.get("folder", ""), folder_size=data.get("folder_size", 0) or data.item_size,
      mirror=data.get("mirror", ""))
  images, labels = item_set.images, item_set.labels
  if data.classes:
    if data.classes > item_set.num_classes:
      raise config_checks.ConfigError(
          f"config.data.classes={data.classes}, but {data.dataset} has only "
          f"{item_set.num_classes} classes")
    keep = np.flatnonzero(labels < data.classes)
    images, labels = images[keep], labels[keep]
    item_set = dataclasses.replace(item_set, num_classes=data.classes,
                                   class_names=item_set.class_names[:data.classes])
  val = data.get("val_items", 0)
  if val and file_split == "train":
    config_checks.require(
        val < len(labels), f"config.data.val_items={val} leaves no training items: the "
        f"{data.dataset} train split has {len(labels)}; hold out fewer")
    part = slice(len(labels) - val, None) if split == "val" else slice(0, len(labels) - val)
    images, labels = images[part], labels[part]
  elif split == "val":
    raise config_checks.ConfigError(
        "a test of split 'val' needs config.data.val_items > 0 (items held out from the end of "
        "the train split)")
  if max_items:
    images, labels = images[:max_items], labels[:max_items]
  item_set = dataclasses.replace(item_set, images=images, labels=labels)
  return location_labels(item_set, data.get("labels", "class"), split)


def location_labels(item_set: sources.ItemSet, kind: str, split: str) -> sources.ItemSet:
  """Relabels items by where they go (Kayhan & van Gemert), for the ``"corners"`` sampler.

  Args:
    item_set: the items with their dataset classes.
    kind: ``"class"`` (unchanged), ``"location"`` (each item at one corner, half of them at each,
      by a fixed shuffle that depends only on the split: a fixed dataset, as Quadrant ImageNet)
      or ``"location_pairs"`` (every item twice, once at each corner: the rook patches).
    split: the split's name (seeds the fixed shuffle).

  Returns:
    The relabelled items: 2 classes, ``locations.CORNERS``.
  """
  if kind == "class":
    return item_set
  n = len(item_set.labels)
  if kind == "location":
    seed = int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], "little")
    order = np.random.default_rng(seed).permutation(n)
    labels, images = np.empty(n, np.int32), item_set.images
    labels[order] = np.arange(n) % 2
  elif kind == "location_pairs":
    images = np.concatenate([item_set.images, item_set.images])
    labels = np.repeat(np.arange(2, dtype=np.int32), n)
  else:
    raise config_checks.ConfigError(
        f"config.data.labels={kind!r}: use one of {', '.join(LABEL_KINDS)}")
  return sources.ItemSet(images=images, labels=labels, num_classes=2,
                         class_names=locations.CORNERS)


def to_device(item_set: sources.ItemSet, item_size: int, mesh) -> train.Items:
  """Resizes items on the device, once, and replicates them over the mesh."""
  images = canvas.resize_items(item_set.images, item_size)
  return jax.device_put(train.Items(images=images, labels=jnp.asarray(item_set.labels, jnp.int32)),
                        sharding.replicated(mesh))


def test_axes(config: ml_collections.ConfigDict) -> np.ndarray:
  """The tested centres along each axis (the canvas is square, so x and y share them)."""
  d = config.data
  if config.eval.grid == "dense":
    return locations.dense_axis(d.canvas_size, d.item_size, config.eval.dense_stride)
  return locations.paper_axis(d.canvas_size, d.item_size, config.eval.grid_step)


def trained_centre(data: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """The one training location of a 1-location stage; None for any other sampler."""
  if data.train_location == "leftmost_centred":
    return locations.leftmost_centred_centre(data.canvas_size, data.item_size)
  if data.train_location == "fixed":
    return tuple(int(c) for c in data.fixed_centre)
  return None


def canvas_normalisation(data: ml_collections.ConfigDict,
                         images: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """The canvas mean and std a stage trains with: the authors' statistics of its training
  canvases, or none (0 and 1: black stays 0, the value that zero padding adds, as Kayhan & van
  Gemert's black templates need) when ``data.normalise`` is off."""
  if not data.get("normalise", True):
    return np.zeros(data.channels, np.float32), np.ones(data.channels, np.float32)
  return canvas.canvas_stats(images, data.canvas_size, data.channels)


def render_fn(data: ml_collections.ConfigDict, mean: np.ndarray, std: np.ndarray, dtype: str,
              platform: str) -> canvas.Renderer:
  """``(images, centres) -> model input`` on ``data``'s canvas with this normalisation."""
  return canvas.Renderer(data.canvas_size, mean, std, data.channels,
                         models.compute_dtype(dtype, platform))


def make_sampler(data: ml_collections.ConfigDict, num_classes: int) -> locations.Sampler:
  """The training placement sampler ``data`` names (``locations.make_sampler``)."""
  return locations.make_sampler(data.train_location, data.canvas_size, data.item_size,
                                data.fixed_centre, layout=data.layout, num_classes=num_classes,
                                fit=data.fit, border=data.border)
