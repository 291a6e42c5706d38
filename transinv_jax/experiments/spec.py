"""How experiment configs describe a staged pipeline (imports only ml_collections: configs use it).

An experiment config holds the shared sections (``data``, ``model``, ``train``, ``eval``) and two
tables built with ``stage`` and ``test``:

  config.stages.<name>   a network to train: from scratch, from ImageNet weights, or fine-tuned
                         from another stage (``parent``), with its own data/model/train overrides
  config.tests.<name>    a measurement of a stage's network: the shift sweep over the test grid
                         (``kind="sweep"``) or the cosine similarity of displaced items
                         (``kind="similarity"``), with its own data overrides and table labels

The pipeline trains each needed stage once (a stage used by six fine-tunes is trained once),
caches it under ``config.stage_dir`` keyed by everything that determines it, and then runs the
tests. A config argument keeps only some tests (one cell); the stages they need follow. Every
config file parses its argument with ``arguments.parse_args`` and a schema of keys: one grammar
(``key=value`` or a bare value, its short form) and one error format. ``resolved`` gives the
flat values each stage and test runs with.
"""

import copy

import ml_collections
from absl import logging

from transinv_jax import models

DATASETS = ("emnist_letters", "fashion_mnist", "kmnist", "mnist", "leek10", "leek2")
# Short names accepted in config arguments (the paper's labels).
ALIASES = {"emnist": "emnist_letters", "fmnist": "fashion_mnist", "fashionmnist": "fashion_mnist"}
# The paper's labels for tables and figures.
LABELS = {"emnist_letters": "EMNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST",
          "mnist": "MNIST", "leek10": "Leek10", "leek2": "Leek2"}
FINETUNE_POLICIES = ("all", "classifier", "frozen_conv")
TEST_KINDS = ("sweep", "similarity", "accuracy", "invariance")
LABEL_KINDS = ("class", "location", "location_pairs")
SPLITS = ("train", "val", "test")
# The figures every experiment draws (``config.figures``; reports.FIGURES draws them by name),
# each from the tests of one kind, when the run has some: heatmaps of sweeps, training coverage
# of stages trained in class regions, similarity curves, accuracy lines or bars, invariance
# comparisons. Experiments add their own (exp1: "accuracy_bars", exp2 and fcn: "transfer",
# exp4: "class_groups").
FIGURES = ("heatmaps", "coverage", "similarity", "accuracy", "invariance")


def base_config(experiment: str) -> ml_collections.ConfigDict:
  """The shared sections at the paper's sizes (224 canvas, 50 px items, VGG16, Adam 1e-4)."""
  config = ml_collections.ConfigDict()
  config.experiment = experiment
  config.seed = 0
  config.num_seeds = 5                  # repetitions (seed, seed + 1, ...) trained side by side
  config.seeds_mode = "sequential"      # sequential (one compiled single-seed step, round-robin)
                                        # | vmap | lax_map: see train.SEEDS_MODES
  config.stage_dir = ""                 # "" -> <workdir>/stages; share it to reuse stages
  config.imagenet_weights = ""          # torchvision vgg16 .pth (or Keras .h5) for ImageNet arms
  config.finetune = "all"               # which layers a fine-tune trains: all | classifier |
                                        # frozen_conv (its output layer is always fresh)
  config.figures = FIGURES              # the figures reports.write draws, by name

  config.data = ml_collections.ConfigDict()
  config.data.dataset = ""              # set by each stage (select cells with the config argument)
  config.data.classes = 0               # keep the first N classes (0 = all): EMNIST18 is 18
  config.data.source = "files"          # "files" (original files on disk), "tfds" or "folder"
                                        # (config.data.folder, with dataset "folder")
  config.data.data_dir = ""             # "" -> $TRANSINV_JAX_DATA, else ~/.cache/transinv_jax/data
  config.data.mirror = ""               # base URL serving a data folder, fetched from when files
                                        # are missing ("" -> $TRANSINV_JAX_DATA_MIRROR, else the
                                        # publishers)
  config.data.tfds_download = False     # let TFDS download (needs internet)
  config.data.folder = ""               # source "folder": root/<class>/*.{png,jpg,jpeg}
                                        # (transinv_jax/data/folders.py)
  config.data.folder_size = 0           # source "folder": images' stored side (their centre
                                        # square resized); 0 = item_size (one resampling)
  config.data.max_train_items = 0       # 0 = the whole train split
  config.data.val_items = 0             # held out from the end of the train split as "val"
  config.data.labels = "class"          # class | location (each item at one corner, fixed:
                                        # Quadrant ImageNet) | location_pairs (each item at
                                        # both corners: the rook patches); location needs
                                        # train_location="corners"
  config.data.canvas_size = 224
  config.data.item_size = 50
  config.data.channels = 3              # grayscale items are replicated to 3 identical channels
  config.data.normalise = True          # canvas mean/std of the training canvases (the authors);
                                        # False keeps black at 0, the zero padding's value
  config.data.train_location = "leftmost_centred"  # fully_translated | fixed | regions |
                                                   # corners
  config.data.fixed_centre = (25, 112)  # (x, y), used when train_location == "fixed"
  config.data.layout = ""               # "regions": which classes go where (locations.py)
  config.data.fit = "centre"            # "regions": the centre in the region, or the whole item
  config.data.border = 0                # "corners": black margin around the corners (Kayhan)

  config.model = models.default_config()  # a plain VGG16; see transinv_jax/models/__init__.py

  config.train = ml_collections.ConfigDict()
  config.train.learning_rate = 1e-4     # the authors' code; the paper's text says 1e-3 (README)
  config.train.batch_size = 32
  config.train.max_steps = 5000
  config.train.stop_accuracy = 0.75     # stop once training accuracy, averaged over blocks
  config.train.stop_block = 5           # of this many steps (the authors' framework; 1 = every
  config.train.stop_window = 800        # batch), stays >= this for this many steps (0 = never)
  config.train.log_every = 50           # steps between host syncs and metrics records
  config.train.scan_steps = 1           # steps per compiled call (>1 helps small GPU batches)
  config.train.checkpoint_every = 1000

  config.eval = ml_collections.ConfigDict()
  config.eval.grid = "paper"            # "paper" (19x19 on 224) or "dense" (every pixel)
  config.eval.grid_step = 10            # "paper": spacing of the inner grid values
  config.eval.dense_stride = 1          # "dense": spacing in pixels
  config.eval.max_items = 2000          # test items swept (first N of the test split; 0 = all)
  config.eval.items_per_batch = 64
  config.eval.centres_per_chunk = 0     # centres per call; 0 = as many as device memory holds
  config.eval.similarity_items_per_class = 1  # exp5: items per class (the authors: one)
  # Invariance diagnostics (kind="invariance", configs/diagnose.py); see transinv_jax/invariance.py
  config.eval.invariance_items = 200    # test items measured (the first N of the split)
  config.eval.shift_path = "y"          # 1 px steps along x | y (Azulay & Weiss) | diagonal
  config.eval.max_shift = 32            # path length: shifts 0..max_shift px
  config.eval.consistency_offset = 32   # Zhang: offsets in [0, 32) (circular: [-32, 32))
  config.eval.consistency_mode = "translate"  # translate (on the canvas) | circular (roll)
  config.eval.consistency_pairs = 5     # random pairs of offsets per item
  config.eval.top = 5                   # jaggedness: the correct class in or out of the top-5
  config.eval.activity_threshold = 0.1  # nonshiftability: maps peaking above 0.1 x the layer's
                                        # largest response for that item
  config.eval.shift_tolerance = 0.2     # nonshiftability: a change > 20% of the map's mean sum
  config.eval.shifts_per_chunk = 0      # shifts per call; 0 = as many as device memory holds

  config.stages = ml_collections.ConfigDict()
  config.tests = ml_collections.ConfigDict()
  return config


def imagenet_folder(config: ml_collections.ConfigDict, stand_in: str,
                    data: dict | None = None) -> None:
  """Lets ``--config.imagenet_folder`` replace a config's stand-in items by ImageNet images.

  Adds ``config.imagenet_folder`` (""), ``config.imagenet_data`` (the data keys that change
  with the ImageNet images: source and dataset "folder", and ``data``) and ``config.stand_in``.
  Command-line overrides come after ``get_config``, so ``resolve_stand_in`` applies them when
  the run starts.

  Args:
    config: the experiment config, its stand-in data already set.
    stand_in: what stands in for the ImageNet images, for the warning and ``config.stand_in``;
      ``{dataset}`` becomes config.data.dataset.
    data: further data overrides with the ImageNet images (e.g. their item size).
  """
  config.imagenet_folder = ""
  config.imagenet_data = ml_collections.ConfigDict(
      {"source": "folder", "dataset": "folder", **(data or {})})
  config.stand_in = stand_in


def resolve_stand_in(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config as it runs: the ImageNet folder's items, or the stand-in, said so.

  With ``config.imagenet_folder``, a copy whose data section reads it (``config.imagenet_data``
  applied, ``config.data.folder`` set) and ``config.stand_in`` empty. Without, the stand-in
  stays, ``config.stand_in`` records it (config.json, summary.json) and a warning says so.
  Configs without ``imagenet_folder`` (see ``imagenet_folder``) come back unchanged.
  """
  if "imagenet_folder" not in config:
    return config
  resolved = copy.deepcopy(config)
  if not config.imagenet_folder:
    resolved.stand_in = config.stand_in.format(dataset=config.data.dataset)
    logging.warning("%s: %s; pass --config.imagenet_folder=/path/to/imagenet/val for the "
                    "paper's images", config.experiment, resolved.stand_in)
    return resolved
  resolved.data.update(config.imagenet_data.to_dict())
  resolved.data.folder = config.imagenet_folder
  resolved.stand_in = ""
  return resolved


def shrink_for_smoke(config: ml_collections.ConfigDict) -> None:
  """The ``smoke`` variant: the real code paths at CPU sizes (canvas 64, items 16, width 1/16).

  A 1/16-width VGG16 without BatchNorm barely moves in a few hundred steps at 1e-4; 1e-3 without
  dropout reaches ~55% training accuracy on MNIST in 400 steps, enough to see the effect.
  """
  config.num_seeds = 1
  config.data.max_train_items = 5000
  config.data.canvas_size = 64
  config.data.item_size = 16
  config.data.fixed_centre = (8, 32)
  config.model.width = 1 / 16
  config.model.dropout = 0.0
  config.train.learning_rate = 1e-3
  config.train.max_steps = 400
  config.train.stop_accuracy = 0.9
  config.train.stop_window = 50
  config.train.log_every = 25
  config.train.checkpoint_every = 200
  config.eval.max_items = 500
  config.eval.items_per_batch = 100
  config.eval.centres_per_chunk = 7


def shrink_for_mini(config: ml_collections.ConfigDict) -> None:
  """The ``mini`` variant, between smoke and the paper: the findings clearly, on a 2-core CPU.

  Half the paper's geometry (canvas 112, items 25: the same item-to-canvas ratio, so the 19x19
  grid and the leftmost-centred location are the paper's, scaled) and a VGG16 at 1/8 width (1/4
  was measured at 1.1 steps/s on 2 cores: an exp1 cell would take over 30 minutes). One seed,
  10000 training items, 300 test items; Adam 1e-3 without dropout, as the smoke size (a thin
  VGG16 without BatchNorm barely moves at 1e-4 in the budget).
  """
  config.num_seeds = 1
  config.data.max_train_items = 10000
  config.data.canvas_size = 112
  config.data.item_size = 25
  config.data.fixed_centre = (12, 56)
  config.model.width = 1 / 8
  config.model.dropout = 0.0
  config.train.learning_rate = 1e-3
  config.train.max_steps = 2000
  config.train.log_every = 50
  config.train.checkpoint_every = 500
  config.eval.grid_step = 5
  config.eval.max_items = 300
  config.eval.items_per_batch = 100


def stage(*, parent: str = "", finetune: str = "", untrained: bool = False,
          imagenet: bool = False, data: dict | None = None, model: dict | None = None,
          train: dict | None = None) -> ml_collections.ConfigDict:
  """One training stage.

  Args:
    parent: the stage whose trained network this one starts from ("" = a fresh network).
    finetune: with a parent, which layers train (``FINETUNE_POLICIES``; "" = ``config.finetune``);
      the output layer is always fresh.
    untrained: keep the starting network as it is (no training): the "no training" and "trained
      on ImageNet" networks of exp5.
    imagenet: start from ``config.imagenet_weights`` (torchvision's ImageNet VGG16).
    data, model, train: overrides of the shared sections.

  Returns:
    The stage's config entry.
  """
  entry = ml_collections.ConfigDict({
      "parent": parent, "finetune": finetune, "untrained": untrained, "imagenet": imagenet})
  base = base_config("")
  for section, overrides in (("data", data), ("model", model), ("train", train)):
    entry[section] = _overrides(base[section], overrides or {}, f"stage {section}")
  return entry


def placeholders(base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``base``'s keys, each an unset typed placeholder (None) that the command line may set."""
  return _overrides(base, {}, "placeholders")


def _overrides(base: ml_collections.ConfigDict, values: dict,
               where: str) -> ml_collections.ConfigDict:
  """Every key of ``base``: the given value, or a typed placeholder (None = inherit).

  Placeholders keep every key overridable from the command line with a locked config, e.g.
  ``--config.stages.pretrain_mnist.train.max_steps=6000``.
  """
  unknown = sorted(set(values) - set(base))
  if unknown:
    raise ValueError(f"{where}: unknown key(s) {unknown}; use keys of the shared section")
  return ml_collections.ConfigDict({
      key: values[key] if key in values else
      ml_collections.config_dict.placeholder(type(value)) for key, value in base.items()})


def test(stage_name: str, *, kind: str = "sweep", split: str = "test", data: dict | None = None,
         labels: dict | None = None) -> ml_collections.ConfigDict:
  """One test of a stage's network.

  Args:
    stage_name: the stage tested.
    kind: ``"sweep"`` (accuracy over the test grid), ``"similarity"`` (cosine similarity of
      every layer between the leftmost-centred item and the item moved along x), ``"accuracy"``
      (accuracy with items placed as in training: the stage's sampler) or ``"invariance"``
      (every invariance measure of ``transinv_jax/invariance.py``).
    split: the items tested: ``"test"``, ``"train"`` or ``"val"`` (``config.data.val_items``
      held out from the end of the train split).
    data: overrides of the stage's data (e.g. another dataset); default: the stage's own.
    labels: strings naming the cell in tables and figures (e.g. pretrain / finetune).

  Returns:
    The test's config entry.
  """
  return ml_collections.ConfigDict({
      "stage": stage_name, "kind": kind, "split": split, "labels": labels or {},
      "data": _overrides(base_config("").data, data or {}, "test data")})


# -- the values each stage and test runs with


def stage_values(config: ml_collections.ConfigDict, name: str) -> dict:
  """A stage's flat data, model and train sections: the shared ones, its overrides applied.

  The same values as ``stage_config`` of the pipeline (None inherits the shared value; an
  ImageNet stage's model reads ``config.imagenet_weights``), as plain dicts.
  """
  entry = config.stages[name]
  flat = {}
  for section in ("data", "model", "train"):
    flat[section] = copy.deepcopy(config[section].to_dict())
    flat[section].update({k: copy.deepcopy(v) for k, v in entry[section].to_dict().items()
                          if v is not None})
  if entry.imagenet:
    flat["model"]["pretrained"] = config.imagenet_weights
  return flat


def resolved(config: ml_collections.ConfigDict) -> dict:
  """The config as each stage and test runs it: flat values, no None inheritance left.

  ``config.json`` stores the config as given (stage and test sections hold only overrides, the
  rest None); this is what to read instead: the run's settings, then per stage its parent,
  fine-tuning policy and flat data/model/train, and per test its stage, kind, split, labels and
  flat data/eval. Call it on the config as it runs (after ``resolve_stand_in``).

  Args:
    config: an experiment config (configs without stages, e.g. configs/diagnose.py, come back
      as a plain dict).

  Returns:
    ``{"run": {...}, "stages": {name: {...}}, "tests": {name: {...}}}``, JSON-serialisable.
  """
  plain = _plain(config.to_dict())
  if "stages" not in config or "tests" not in config:
    return plain
  sections = ("data", "model", "train", "eval", "stages", "tests")
  result = {"run": {k: v for k, v in plain.items() if k not in sections},
            "stages": {}, "tests": {}}
  for name, entry in config.stages.items():
    policy = (entry.finetune or config.finetune) if entry.parent else ""
    result["stages"][name] = {
        "parent": entry.parent, "finetune": policy, "untrained": entry.untrained,
        "imagenet": entry.imagenet, **_plain(stage_values(config, name))}
  for name, entry in config.tests.items():
    data = stage_values(config, entry.stage)["data"]
    data.update({k: v for k, v in entry.data.to_dict().items() if v is not None})
    result["tests"][name] = {
        "stage": entry.stage, "kind": entry.kind, "split": entry.split,
        "labels": _plain(entry.labels.to_dict()), "data": _plain(data),
        "eval": _plain(config.eval.to_dict())}
  return result


def _plain(value):
  """``value`` with tuples as lists and ConfigDicts as dicts: what JSON stores."""
  if isinstance(value, (dict, ml_collections.ConfigDict)):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def keep_tests(config: ml_collections.ConfigDict, names: list[str], selector) -> None:
  """Keeps only the tests ``names`` (one cell) and the stages they need.

  Args:
    config: the experiment config, every test in it.
    names: the tests to keep.
    selector: the parsed config argument (``arguments.Args``: its error format), or a string naming it.

  Raises:
    ValueError: if ``names`` is empty.
  """
  if not names:
    if hasattr(selector, "error"):  # arguments.Args
      raise selector.error(selector.arg, "selects no test")
    raise ValueError(f"config argument {selector!r} selects no test; see the config's docstring")
  kept = ml_collections.ConfigDict({n: config.tests[n] for n in names})
  config.tests = kept
  needed = set()
  for name in names:
    stage_name = config.tests[name].stage
    while stage_name and stage_name not in needed:
      needed.add(stage_name)
      stage_name = config.stages[stage_name].parent
  config.stages = ml_collections.ConfigDict(
      {n: s for n, s in config.stages.items() if n in needed})
