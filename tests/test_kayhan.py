"""Kayhan & van Gemert's experiments: corner locations, location labels, disjoint splits, the
rook, Quadrant ImageNet and data-efficiency configs, and the plain placed accuracy."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import data_efficiency
import quadrant
import rook
from conftest import shared_data_path
from transinv_jax import config_checks, evaluate, sharding
from transinv_jax.data import canvas, inputs, locations, sources
from transinv_jax.experiments import stages
from transinv_jax.train import Items


# -- where the items go


@pytest.mark.parametrize("canvas_size,item,border,expected", [
    (112, 56, 0, [[28, 28], [84, 84]]),          # Quadrant ImageNet, no border
    (144, 56, 16, [[44, 44], [100, 100]]),       # 16 px border: 2 * (56 + 16)
    (1136, 56, 512, [[540, 540], [596, 596]]),   # the largest border
    (57, 28, 0, [[14, 14], [43, 43]]),           # odd canvas: the item touches both edges
])
def test_corner_centres_fill_the_quadrants(canvas_size, item, border, expected):
  centres = locations.corner_centres(canvas_size, item, border)
  np.testing.assert_array_equal(centres, expected)
  for x, y in centres:
    assert locations.is_whole((x, y), canvas_size, item)
  # Pixels covered: the upper-left item starts at the border, the other ends at canvas - border.
  assert centres[0, 0] - item // 2 == border
  assert centres[1, 0] - item // 2 + item == canvas_size - border


def test_corner_centres_reject_a_border_without_room():
  with pytest.raises(ValueError, match="border 20 leaves no room.*at least 96"):
    locations.corner_centres(80, 56, 20)


def test_corners_sampler_places_each_class_at_its_corner():
  sample = locations.make_sampler("corners", 80, 24, num_classes=2, border=8)
  labels = jnp.array([0, 1, 1, 0], jnp.int32)
  centres = np.asarray(sample(jax.random.key(0), labels))
  np.testing.assert_array_equal(centres, [[20, 20], [60, 60], [60, 60], [20, 20]])
  with pytest.raises(ValueError, match="2 classes"):
    locations.make_sampler("corners", 80, 24, num_classes=10)


# -- labels and splits


def _item_set(n=10, classes=3):
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
  return sources.ItemSet(images=images, labels=np.arange(n, dtype=np.int32) % classes,
                         num_classes=classes, class_names=tuple("abc"[:classes]))


def test_location_labels_balanced_and_fixed():
  items = _item_set(11)
  first = inputs.location_labels(items, "location", "train")
  again = inputs.location_labels(items, "location", "train")
  other = inputs.location_labels(items, "location", "test")
  assert first.num_classes == 2 and first.class_names == locations.CORNERS
  np.testing.assert_array_equal(first.labels, again.labels)   # a fixed dataset, whatever the seed
  assert sorted(np.bincount(first.labels)) == [5, 6]           # balanced
  assert not np.array_equal(first.labels, other.labels)        # another split, another shuffle
  np.testing.assert_array_equal(first.images, items.images)    # the same items, each once


def test_location_pairs_put_every_item_at_both_corners():
  items = _item_set(5)
  pairs = inputs.location_labels(items, "location_pairs", "train")
  assert len(pairs.labels) == 10
  np.testing.assert_array_equal(pairs.labels, [0] * 5 + [1] * 5)
  np.testing.assert_array_equal(pairs.images[:5], pairs.images[5:])
  assert inputs.location_labels(items, "class", "train") is items
  with pytest.raises(config_checks.ConfigError, match="config.data.labels='where'"):
    inputs.location_labels(items, "where", "train")


def _mnist_data(**overrides):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from transinv_jax.experiments import spec  # pylint: disable=g-import-not-at-top
  data = spec.base_config("").data
  data.dataset = "mnist"
  data.data_dir = str(shared_data_path())
  data.update(overrides)
  return ml_collections.ConfigDict(data)


def test_train_val_test_splits_are_disjoint(shared_data_dir):
  del shared_data_dir
  data = _mnist_data(val_items=300, labels="location", train_location="corners")
  train = inputs.load_items(data, "train", 1000)
  val = inputs.load_items(data, "val", 0)
  test = inputs.load_items(data, "test", 1000)
  assert len(train.labels) == 1000 and len(val.labels) == 300 and len(test.labels) == 1000
  whole = sources.load_items("mnist", "train", data_dir=data.data_dir)
  # val is the end of the train file, train its beginning: no index in common.
  np.testing.assert_array_equal(val.images, whole.images[-300:])
  np.testing.assert_array_equal(train.images, whole.images[:1000])
  # And no image in common between any two splits (by content).
  digest = lambda s: {im.tobytes() for im in s.images}
  assert not digest(train) & digest(val)
  assert not digest(val) & digest(test)
  assert not digest(train) & digest(test)


def test_val_split_errors(shared_data_dir):
  del shared_data_dir
  with pytest.raises(config_checks.ConfigError, match="val_items > 0"):
    inputs.load_items(_mnist_data(), "val", 0)
  with pytest.raises(config_checks.ConfigError, match="val_items=60000 leaves no training"):
    inputs.load_items(_mnist_data(val_items=60000), "train", 0)


@pytest.mark.parametrize("overrides,match", [
    ({"train_location": "fully_translated"}, "location labels go with the 'corners' sampler"),
    ({"labels": "class"}, "location labels go with the 'corners' sampler"),
    ({"labels": "quadrant"}, "config.data.labels='quadrant'"),
    ({"labels": "location", "train_location": "corners", "border": 30},
     "config.data.border=30: border 30 leaves no room"),
    ({"val_items": -1}, "config.data.val_items=-1"),
])
def test_bad_location_configs(overrides, match):
  config = rook.get_config("smoke")
  flat = stages.stage_config(config, "zeros")
  flat.data.update(overrides)
  with pytest.raises(config_checks.ConfigError, match=match):
    config_checks.check_config(flat, 1)


# -- the accuracy with items placed as in training


def test_placed_accuracy_against_a_reference():
  """A classifier that answers "bottom-right" when the canvas' lower half is brighter is right
  exactly where the corners sampler put the item there; a labels' flip makes it always wrong."""
  size, item = 16, 8
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (13, item, item, 1), dtype=np.uint8)
  labels = jnp.asarray(rng.integers(0, 2, 13), jnp.int32)
  render = canvas.Renderer(size, 0.0, 1.0, 1)

  def classify(variables, x):
    del variables
    lower = x[:, size // 2:].sum((1, 2, 3)) > x[:, :size // 2].sum((1, 2, 3))
    return jax.nn.one_hot(lower.astype(jnp.int32), 2), {}

  mesh = sharding.make_mesh(jax.devices()[:1])
  sampler = locations.make_sampler("corners", size, item, num_classes=2)
  kwargs = dict(render=render, mesh=mesh, items_per_batch=4)
  correct, totals = evaluate.placed_accuracy(classify, None, Items(jnp.asarray(images), labels),
                                             jax.random.key(0), sampler=sampler, **kwargs)
  np.testing.assert_array_equal(totals, np.bincount(np.asarray(labels), minlength=2))
  np.testing.assert_array_equal(correct, totals[None])  # one seed: the network has no variables
  flipped = Items(jnp.asarray(images), 1 - labels)
  wrong, _ = evaluate.placed_accuracy(classify, None, flipped, jax.random.key(0),
                                      sampler=lambda k, l: sampler(k, 1 - l), **kwargs)
  np.testing.assert_array_equal(wrong, [[0, 0]])


# -- configs


def test_rook_config():
  config = rook.get_config()
  assert sorted(config.stages) == sorted(rook.PADDINGS)
  assert len(config.tests) == 8
  assert {t.kind for t in config.tests.values()} == {"accuracy"}
  assert {t.split for t in config.tests.values()} == {"train", "test"}
  flat = stages.stage_config(config, "full")
  assert flat.model.name == "rook" and flat.model.padding == "full"
  assert flat.data.canvas_size == 2 * flat.data.item_size and not flat.data.normalise
  config_checks.check_config(flat, 1)
  assert sorted(rook.get_config("full,valid").tests) == [
      "full_test", "full_train", "valid_test", "valid_train"]
  with pytest.raises(ValueError, match="same"):
    rook.get_config("same")


def test_quadrant_config():
  config = quadrant.get_config()
  assert len(config.tests) == len(quadrant.ARMS) * len(quadrant.BORDERS) * 3
  for border in quadrant.BORDERS:
    flat = stages.stage_config(config, f"scratch_{border}")
    assert flat.data.canvas_size == 2 * (56 + border)
    assert flat.data.labels == "location" and flat.data.val_items == 1000
  assert config.stages.frozen_random_64.parent == "random_init"
  assert config.stages.random_init.untrained
  assert config.stages.frozen_imagenet_0.parent == "imagenet"
  assert stages.finetune_policy(config, "frozen_pretrained_16") == "frozen_conv"
  # The pretrain learns the items' own classes, on the border-0 canvas.
  pretrain = stages.stage_config(config, "pretrain")
  assert pretrain.data.labels == "class" and pretrain.data.canvas_size == 112
  one = quadrant.get_config("frozen_random,64")
  assert sorted(one.tests) == [f"frozen_random_64_{s}" for s in ("test", "train", "val")]
  assert sorted(one.stages) == ["frozen_random_64", "random_init"]
  with pytest.raises(ValueError, match="borders"):
    quadrant.get_config("scratch,17")


def test_quadrant_imagenet_arm_needs_weights():
  config = quadrant.get_config("frozen_imagenet,0,smoke")
  with pytest.raises(config_checks.ConfigError, match="config.imagenet_weights is empty"):
    stages.check(config, 1)


def test_data_efficiency_config():
  config = data_efficiency.get_config()
  assert len(config.tests) == 10
  for padding in data_efficiency.PADDINGS:
    for size in data_efficiency.SIZES:
      flat = stages.stage_config(config, f"{padding}_{size}")
      assert flat.model.padding == padding and flat.data.max_train_items == size
  config_checks.check_config(stages.stage_config(config, "full_100"), 1)
  assert sorted(data_efficiency.get_config("full,smoke").tests) == ["full_200", "full_50"]
