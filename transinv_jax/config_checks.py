"""Checks a config before any work, so mistakes stop in a second with the key and the fix."""

from collections.abc import Collection
import pathlib

import jax
import jax.numpy as jnp
import ml_collections

from transinv_jax import models
from transinv_jax.data import folders, locations, sources
from transinv_jax.models import layers, vgg


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and what would fix it."""


def require(ok: bool, message: str) -> None:
  """Raises ``ConfigError(message)`` unless ``ok``."""
  if not ok:
    raise ConfigError(message)


_require = require

# Sizes split over the devices: (section, key). The same config runs on 1 CPU or a 256-chip slice.
DEVICE_SPLIT_SIZES = (("train", "batch_size"), ("eval", "items_per_batch"))


def device_multiple(value: int, num_devices: int) -> int:
  """The smallest positive multiple of ``num_devices`` at or above ``value``."""
  return max(num_devices, -(-value // num_devices) * num_devices)


def _split_hint(key: str, value: int, num_devices: int) -> str:
  return (f"{key}={value} must be a positive multiple of the {num_devices} devices it is split "
          f"over: use {device_multiple(value, num_devices)}, or leave it unset and it is rounded "
          "to the devices")


def fit_to_devices(config: ml_collections.ConfigDict, num_devices: int,
                   user_set: Collection[str] = ()) -> list[str]:
  """Rounds the device-split sizes the user did not set up to a multiple of the devices.

  A config file's batch of 100 evaluation items cannot split over 8 devices; rather than refuse
  the file on an 8-GPU server or a TPU v3-8, such sizes grow to the next multiple (104). Sizes set
  on the command line are the user's and stay as given (``check_config`` then names a working
  value). Evaluation sizes only change how items are chunked, never results; a rounded training
  batch changes the protocol, so it is logged as a warning by the caller.

  Args:
    config: a run config: ``train``/``eval`` sections, and for pipelines ``stages.<name>.train``
      and ``tests.<name>.eval`` overrides (None inherits). Changed in place.
    num_devices: devices the batch is split over.
    user_set: dotted keys set on the command line (``config_flags.get_override_values``), e.g.
      ``train.batch_size`` or ``stages.pretrain.train.batch_size``.

  Returns:
    One line per changed size, ``config.<key>: <old> -> <new> (...)``.
  """
  sections = [("", config)]
  for group in ("stages", "tests"):
    for name, entry in (config.get(group) or {}).items():
      sections.append((f"{group}.{name}.", entry))
  changes = []
  for prefix, node in sections:
    for section, key in DEVICE_SPLIT_SIZES:
      part = node.get(section)
      value = part.get(key) if part is not None else None
      path = f"{prefix}{section}.{key}"
      if value is None or path in user_set or value <= 0 or value % num_devices == 0:
        continue
      part[key] = device_multiple(value, num_devices)
      changes.append(f"config.{path}: {value} -> {part[key]} (a multiple of the {num_devices} "
                     "devices)")
  return changes


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ``ConfigError`` for the first value that cannot work.

  Args:
    config: a full run config (``data``, ``model``, ``train``, ``eval`` sections).
    num_devices: devices the batch is split over.
  """
  data, train, ev = config.data, config.train, config.eval
  _require(data.dataset in sources.DATASETS,
           f"config.data.dataset={data.dataset!r} is not a known dataset; "
           f"use one of {', '.join(sources.DATASETS)}")
  _require(data.source in sources.SOURCES,
           f"config.data.source={data.source!r}: use 'files' (original files under "
           "config.data.data_dir), 'tfds' or 'folder' (images under config.data.folder)")
  _check_folder(data)
  _require(not data.get("mirror") or "://" in data.mirror,
           f"config.data.mirror={data.get('mirror')!r}: give a base URL serving a data folder, "
           "e.g. http://host:8000 (`python -m http.server 8000` run in the folder)")
  _require(data.canvas_size > 0 and data.item_size > 0,
           "config.data.canvas_size and config.data.item_size must be positive")
  _require(data.item_size <= data.canvas_size,
           f"config.data.item_size={data.item_size} is larger than config.data.canvas_size="
           f"{data.canvas_size}: items are pasted whole, never cropped; make the item smaller "
           "or the canvas larger")
  _require(data.channels in (1, 3), f"config.data.channels={data.channels}: use 1 or 3")
  _require(data.get("classes", 0) >= 0,
           f"config.data.classes={data.get('classes')}: use 0 (all) or the number of classes "
           "to keep (EMNIST18: 18)")
  _require(data.get("fit", "centre") in ("centre", "whole"),
           f"config.data.fit={data.get('fit')!r}: use centre (the item's centre lies in its "
           "region) or whole (the whole item does)")
  _require(data.train_location != "regions" or bool(data.get("layout")),
           "config.data.train_location='regions' needs config.data.layout, e.g. "
           "'0-1:area0;2-3:area1' (see transinv_jax/data/locations.py)")
  _require(data.train_location in locations.SAMPLERS,
           f"config.data.train_location={data.train_location!r}: use one of "
           f"{', '.join(locations.SAMPLERS)}")
  labels = data.get("labels", "class")
  _require(labels in ("class", "location", "location_pairs"),
           f"config.data.labels={labels!r}: use class (the dataset's classes), location (each "
           "item at one corner) or location_pairs (each item at both corners)")
  _require((labels != "class") == (data.train_location == "corners"),
           f"config.data.labels={labels!r} with config.data.train_location="
           f"{data.train_location!r}: location labels go with the 'corners' sampler and only "
           "with it; set both (labels='location', train_location='corners') or neither")
  _require(data.get("val_items", 0) >= 0,
           f"config.data.val_items={data.get('val_items')}: use 0 or the number of train items "
           "to hold out")
  if data.train_location == "corners":
    try:
      locations.corner_centres(data.canvas_size, data.item_size, data.border)
    except ValueError as e:
      raise ConfigError(f"config.data.border={data.border}: {e}") from None
  if data.train_location == "fixed":
    lo, hi = locations.centre_range(data.canvas_size, data.item_size)
    _require(len(data.fixed_centre) == 2 and
             locations.is_whole(data.fixed_centre, data.canvas_size, data.item_size),
             f"config.data.fixed_centre={tuple(data.fixed_centre)} puts the item (partly) off "
             f"the canvas: with canvas {data.canvas_size} and item {data.item_size}, both x and "
             f"y must lie in [{lo}, {hi}]")
  _check_model(config)
  _require(config.num_seeds >= 1, f"config.num_seeds={config.num_seeds}: use 1 or more "
           "(the paper repeats every condition 5 times)")
  _require(train.learning_rate > 0,
           f"config.train.learning_rate={train.learning_rate}: must be positive")
  _require(train.batch_size > 0 and train.batch_size % num_devices == 0,
           _split_hint("config.train.batch_size", train.batch_size, num_devices))
  _require(train.max_steps > 0, f"config.train.max_steps={train.max_steps}: must be positive")
  _require(0 <= train.stop_accuracy <= 1,
           f"config.train.stop_accuracy={train.stop_accuracy}: must be in [0, 1]")
  _require(train.stop_window >= 0, "config.train.stop_window must be >= 0 (0 disables the rule)")
  _require(train.stop_block >= 1,
           f"config.train.stop_block={train.stop_block}: must be >= 1 (steps averaged per check "
           "of the stop rule; 5 is the authors', 1 checks every batch)")
  _require(train.scan_steps > 0, "config.train.scan_steps must be positive")
  _require(train.log_every > 0 and train.log_every % train.scan_steps == 0,
           f"config.train.log_every={train.log_every} must be a positive multiple of "
           f"config.train.scan_steps={train.scan_steps}")
  _require(train.checkpoint_every > 0, "config.train.checkpoint_every must be positive")
  _require(ev.grid in ("paper", "dense"), f"config.eval.grid={ev.grid!r}: use paper or dense")
  _require(ev.grid_step > 0 and ev.dense_stride > 0,
           "config.eval.grid_step and config.eval.dense_stride must be positive")
  _require(ev.max_items >= 0, "config.eval.max_items must be >= 0 (0 = the whole test split)")
  _require(ev.items_per_batch > 0 and ev.items_per_batch % num_devices == 0,
           _split_hint("config.eval.items_per_batch", ev.items_per_batch, num_devices))
  _require(ev.centres_per_chunk >= 0,
           "config.eval.centres_per_chunk must be >= 0 (0 = as many as the device memory holds)")


PATHS = ("x", "y", "diagonal")


def check_invariance_eval(config: ml_collections.ConfigDict) -> None:
  """The invariance diagnostics' keys (``config.eval``), against the canvas they run on."""
  ev, data = config.eval, config.data
  _require(ev.invariance_items > 0,
           f"config.eval.invariance_items={ev.invariance_items}: must be positive")
  _require(ev.shift_path in PATHS,
           f"config.eval.shift_path={ev.shift_path!r}: use one of {', '.join(PATHS)}")
  lo, hi = locations.centre_range(data.canvas_size, data.item_size)
  room = hi - lo
  _require(0 < ev.max_shift <= room,
           f"config.eval.max_shift={ev.max_shift}: the path must keep the {data.item_size} px "
           f"item whole on the {data.canvas_size} px canvas, so use 1..{room}")
  _require(ev.consistency_mode in ("translate", "circular"),
           f"config.eval.consistency_mode={ev.consistency_mode!r}: use translate or circular")
  limit = room + 1 if ev.consistency_mode == "translate" else data.canvas_size
  _require(0 < ev.consistency_offset <= limit,
           f"config.eval.consistency_offset={ev.consistency_offset}: use 1..{limit} "
           f"({ev.consistency_mode} offsets must keep the item whole on the canvas)")
  _require(ev.consistency_pairs > 0,
           f"config.eval.consistency_pairs={ev.consistency_pairs}: must be positive")
  _require(ev.top > 0, f"config.eval.top={ev.top}: must be positive (Azulay & Weiss: 5)")
  _require(0 <= ev.activity_threshold < 1,
           f"config.eval.activity_threshold={ev.activity_threshold}: use a fraction in [0, 1)")
  _require(ev.shift_tolerance > 0,
           f"config.eval.shift_tolerance={ev.shift_tolerance}: must be positive (A&W: 0.2)")
  _require(ev.shifts_per_chunk >= 0,
           "config.eval.shifts_per_chunk must be >= 0 (0 = as many as the device memory holds)")


def _check_folder(data: ml_collections.ConfigDict) -> None:
  """Source "folder": dataset "folder" with it, and a folder of class folders holding images."""
  folder = data.get("folder", "")
  _require((data.source == "folder") == (data.dataset == "folder"),
           f"config.data.source={data.source!r} with config.data.dataset={data.dataset!r}: "
           "images from config.data.folder need both set to 'folder'; the other datasets take "
           "source 'files' or 'tfds'")
  if data.source != "folder":
    return
  _require(data.get("folder_size", 0) >= 0,
           f"config.data.folder_size={data.get('folder_size')}: use the stored side in pixels "
           "(0 = config.data.item_size)")
  try:
    folders.class_names(folder)  # lists the class folders and checks each has an image
  except sources.DataError as e:
    raise ConfigError(str(e)) from None


def _check_model(config: ml_collections.ConfigDict) -> None:
  """The model knobs, then an abstract build at the configured input size (no compute)."""
  model, data = config.model, config.data
  _require(model.name in models.MODELS,
           f"config.model.name={model.name!r}: use one of {', '.join(models.MODELS)}")
  _require(model.width > 0, f"config.model.width={model.width}: must be positive")
  _require(0 <= model.dropout < 1, f"config.model.dropout={model.dropout}: must be in [0, 1)")
  _require(model.dtype in ("auto", "float32", "bfloat16", "float16"),
           f"config.model.dtype={model.dtype!r}: use auto, float32, bfloat16 or float16")
  _require(model.padding in layers.PADDING_MODES,
           f"config.model.padding={model.padding!r}: use one of {', '.join(layers.PADDING_MODES)}")
  try:
    overrides = models.parse_overrides(model.padding_overrides)
  except ValueError as e:
    raise ConfigError(f"config.model.padding_overrides: {e}") from None
  if overrides:
    convs = {f"conv{s}_{i}" for s, stage in enumerate(vgg.STAGES.get(model.name, ()), 1)
             for i in range(1, len(stage) + 1)}
    for layer, mode in overrides.items():
      _require(layer in convs, f"config.model.padding_overrides names {layer!r}, which "
               f"{model.name} does not have; per-layer overrides take VGG conv names such as "
               "conv1_1")
      _require(mode in layers.PADDING_MODES, f"config.model.padding_overrides: {layer}={mode}: "
               f"use one of {', '.join(layers.PADDING_MODES)}")
  pools = ("max", "blur") if model.name in models.RESNETS else models.POOLINGS
  _require(model.pooling in pools,
           f"config.model.pooling={model.pooling!r}: {model.name} takes {', '.join(pools)}")
  _require(1 <= model.blur_size <= 7, f"config.model.blur_size={model.blur_size}: use 1..7")
  _require(model.avg_pool_size >= 2 and model.avg_pool_size % 2 == 0,
           f"config.model.avg_pool_size={model.avg_pool_size}: use an even size >= 2")
  stats = model.get("batch_norm_stats", "running")
  _require(stats in models.BATCH_NORM_STATS,
           f"config.model.batch_norm_stats={stats!r}: use running (running averages at test "
           "time, torch's model.eval()) or batch (the batch's own statistics at train and test "
           "time, the authors' track_running_stats=False)")
  try:
    models.batch_norm(model)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _require(not (stats == "batch" and model.pretrained),
           f"config.model.batch_norm_stats='batch' keeps no running statistics, but "
           f"config.model.pretrained={model.pretrained!r} brings them; keep 'running' to start "
           "from pretrained weights")
  if model.pretrained:
    _require(pathlib.Path(model.pretrained).expanduser().is_file(),
             f"config.model.pretrained={model.pretrained!r} is not a file: give the path of a "
             "torchvision state_dict (.pth) or the Keras VGG16 weights (.h5)")
  heads = {"vgg": ("default", "classifier", "gap", "gmp"), "res": ("default", "gap", "gmp")}
  allowed = heads.get(model.name[:3], ("default",))
  _require(model.head in allowed,
           f"config.model.head={model.head!r}: {model.name} takes {', '.join(allowed)}")
  # Build it abstractly at the configured input size: catches a canvas too small for the
  # model's poolings (and any other shape mismatch) before any work.
  shape = (1, data.canvas_size, data.canvas_size, data.channels)
  problem = _shape_problem(model, shape)
  if problem:
    raise ConfigError(
        f"config.model ({model.name}, padding {model.padding}, pooling {model.pooling}) does "
        f"not fit config.data.canvas_size={data.canvas_size}: {problem}; make the canvas larger "
        "or change the model")


# The abstract build's verdict per architecture and input shape: an experiment's stages share
# a few (quadrant's 31 stages, 6 architectures), and each build traces the whole network.
_SHAPE_PROBLEMS: dict[tuple[str, tuple[int, ...]], str] = {}


def _shape_problem(model: ml_collections.ConfigDict, shape: tuple[int, ...]) -> str:
  """Why the model cannot be built at ``shape`` ("" if it can), from one abstract build."""
  key = (models.architecture_key(model), shape)
  if key not in _SHAPE_PROBLEMS:
    try:
      # All abstract, the key too: an eager op here would compile only on a cache miss.
      init = models.build_model(model, 2).init
      jax.eval_shape(lambda x: init(jax.random.key(0), x),
                     jax.ShapeDtypeStruct(shape, jnp.float32))
      _SHAPE_PROBLEMS[key] = ""
    except (ValueError, TypeError) as e:
      _SHAPE_PROBLEMS[key] = str(e)
  return _SHAPE_PROBLEMS[key]
