r"""Kayhan & van Gemert, Quadrant ImageNet: how far from the border can a CNN tell where it is?

Images of 56x56 sit in the upper-left (class 0) or bottom-right (class 1) quadrant of a 112x112
black image, which is framed by a black border of 0, 16, 32, 64, 128, 256 or 512 px on every side
(canvas ``2 * (56 + border)``). Each image has one fixed quadrant (``data.labels="location"``, a
fixed balanced shuffle). A ResNet-18 learns the quadrant in four arms:

  scratch            every layer trained from a random start
  frozen_random      random conv weights, frozen; only the classifier trains
  frozen_pretrained  conv weights pretrained here (the items' own classes, anywhere on a 112
                     canvas), frozen
  frozen_imagenet    torchvision's ImageNet ResNet-18 conv weights, frozen (the paper's arm;
                     needs ``--config.imagenet_weights=resnet18-f37072fd.pth``)

Splits really are disjoint: train is the first 1000 items of the train file, val its last 1000
(``data.val_items``), test the first 1000 of the test file; every arm reports train, val and test
accuracy.

The paper's images are ImageNet validation photos: ``--config.imagenet_folder`` reads them from a
folder of class folders (``<wnid>/*.JPEG``, 1000 of them; ``transinv_jax/data/folders.py``), each
photo's centre square resized to 56 px on the host. With one folder, every 5th image of each class
is the test split and the rest the train split (10 and 40 per class), so train, val and test
still share no image:

  python -m transinv_jax.main --config=configs/quadrant.py --workdir=runs/quadrant \
      --config.imagenet_folder=/data/imagenet/val

Without it, Fashion-MNIST items resized to 56 px stand in for the photos (another dataset:
``--config.data.dataset``); the run logs a warning and records it in ``config.stand_in``
(config.json and summary.json).

Outputs: ``results.csv``, ``figures/accuracy_by_border.png`` (test accuracy against the border per
arm, the paper's figure).

  python -m transinv_jax.main --config=configs/quadrant.py:scratch,frozen_random \
      --workdir=runs/quadrant
  python -m transinv_jax.main --config=configs/quadrant.py:scratch,32,smoke --workdir=runs/q32

Config arguments (comma separated; ``configs/quadrant.py:arm=scratch,border=32,size=smoke``):

  arm=scratch|frozen_random|frozen_pretrained|frozen_imagenet  arms to keep, repeatable
  border=<int>     borders to keep, repeatable: 0, 16, 32, 64, 128, 256, 512 (smoke: 0, 8, 32)
  size=smoke|paper ``smoke``: borders 0, 8 and 32 on a 16 px item, ResNet-18 at 1/16 width

Short forms: each value alone (``scratch,64``, ``frozen_imagenet,0,smoke``). No argument runs
every arm at every border.

Expected cost: 21 trainings per arm of 5 seeds x at most 2000 steps at batch 32; the 512 px border
makes 1136x1136 canvases (about 26x the work of 224x224): hours on one H100 for all arms.
"""

from transinv_jax.experiments import arguments, spec

BORDERS = (0, 16, 32, 64, 128, 256, 512)
ARMS = ("scratch", "frozen_random", "frozen_pretrained", "frozen_imagenet")
ITEM = 56
SMOKE_BORDERS = (0, 8, 32)
SCHEMA = {"arm": arguments.Key(ARMS, multi=True), "border": arguments.Key(int, multi=True),
          "size": arguments.size_key("smoke")}
NOTES = (f"borders: {', '.join(map(str, BORDERS))} (smoke: "
         f"{', '.join(map(str, SMOKE_BORDERS))})",)


def _location_data(border: int, item: int) -> dict:
  return {"labels": "location", "train_location": "corners", "border": border,
          "canvas_size": 2 * (item + border)}


def get_config(arg: str | None = None):
  """quadrant config; ``arg`` e.g. ``"scratch,frozen_random"``, ``"64,smoke"``."""
  args = arguments.parse_args(arg, SCHEMA, "configs/quadrant.py", NOTES)
  smoke = args.size == "smoke"
  item, borders = (16, SMOKE_BORDERS) if smoke else (ITEM, BORDERS)
  arms, chosen = args.arm, args.border
  for border in chosen:
    if border not in borders:
      raise args.error(str(border), f"not one of the borders at size {args.size}")
  config = spec.base_config("quadrant")
  config.finetune = "frozen_conv"
  config.data.dataset = "fashion_mnist"
  spec.imagenet_folder(config, "{dataset} items stand in for Quadrant ImageNet's ImageNet "
                       "validation photos")
  config.data.item_size = item
  config.data.max_train_items = 1000
  config.data.val_items = 1000
  config.model.name = "resnet18"
  config.train.learning_rate = 1e-3
  config.train.max_steps = 2000
  config.train.stop_accuracy = 0.99
  config.train.stop_window = 200
  config.eval.max_items = 1000
  config.eval.items_per_batch = 100
  # The parents of the frozen arms: a random network (not trained), a network trained on the
  # items' classes anywhere on a 112 px canvas, ImageNet's. Their conv weights fit any canvas.
  config.stages.random_init = spec.stage(untrained=True, data=_location_data(0, item))
  config.stages.pretrain = spec.stage(
      data={"train_location": "fully_translated", "canvas_size": 2 * item, "val_items": 0,
            "max_train_items": 10000}, train={"max_steps": 5000, "stop_accuracy": 0.9})
  config.stages.imagenet = spec.stage(untrained=True, imagenet=True, data=_location_data(0, item))
  parents = {"scratch": "", "frozen_random": "random_init", "frozen_pretrained": "pretrain",
             "frozen_imagenet": "imagenet"}
  names = []
  for arm in ARMS:
    for border in borders:
      stage = f"{arm}_{border}"
      config.stages[stage] = spec.stage(parent=parents[arm], data=_location_data(border, item))
      for split in ("train", "val", "test"):
        name = f"{stage}_{split}"
        config.tests[name] = spec.test(stage, kind="accuracy", split=split,
                                       labels={"arm": arm, "border": str(border), "split": split})
        if (not arms or arm in arms) and (not chosen or border in chosen):
          names.append(name)
  spec.keep_tests(config, names, args)
  if smoke:
    config.num_seeds = 1
    config.data.max_train_items = 200
    config.data.val_items = 200
    config.model.width = 1 / 16
    config.train.max_steps = 200
    config.train.stop_window = 50
    config.train.log_every = 25
    config.train.checkpoint_every = 200
    config.eval.max_items = 200
    if "pretrain" in config.stages:
      config.stages.pretrain.train.max_steps = 300
  return config
