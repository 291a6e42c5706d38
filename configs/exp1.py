r"""Biscione & Bowers, experiment 1: ImageNet-pretrained vs vanilla VGG16, trained at one location.

Each network is trained on items (resized to 50x50) at the leftmost-centred location of a black
224x224 canvas and tested with the same test items centred on every point of a 19x19 grid. The
vanilla arm starts from Kaiming initialisation; the ImageNet arm from torchvision's ImageNet VGG16
(a file you supply: ``--config.imagenet_weights=vgg16-397923af.pth``). Six datasets, five seeds
each (config.seeds_mode: sequential, one compiled step for every seed).

  python -m transinv_jax.main --config=configs/exp1.py --workdir=runs/exp1 \
      --config.imagenet_weights=/path/to/vgg16-397923af.pth
  python -m transinv_jax.main --config=configs/exp1.py:mnist,vanilla --workdir=runs/exp1_mnist

Config arguments (comma separated; ``configs/exp1.py:dataset=mnist,arm=vanilla,size=smoke``):

  dataset=<dataset>  datasets to keep, repeatable (emnist, fashion_mnist or fmnist, kmnist, mnist,
                     leek10, leek2; default all); short form: the name alone
  arm=vanilla|imagenet  arms to keep, repeatable (default both); short form: the arm alone
                     (``pretrained`` is imagenet)
  size=smoke|mini|paper  the sizes (default paper); short form: ``smoke`` or ``mini``

``smoke`` alone is the smallest cell, MNIST vanilla, at CPU sizes (canvas 64, items 16, width
1/16, 400 steps, one seed): well under a minute on a 2-core CPU with the real MNIST files:

  TRANSINV_JAX_DATA=../shared/data python -m transinv_jax.main \
      --config=configs/exp1.py:smoke --workdir=runs/smoke

``mini`` (alone: MNIST vanilla) sits between smoke and the paper: canvas 112, items 25, VGG16 at
1/8 width, the paper's 19x19 grid scaled, one seed; about 15 minutes a cell on a 2-core CPU, with
the finding as clear as the paper's (README, "Findings at CPU size"):

  TRANSINV_JAX_DATA=../shared/data python -m transinv_jax.main \
      --config=configs/exp1.py:mini --workdir=runs/exp1_mini

Expected cost at the paper's sizes: 12 cells, each training 5 seeds to the stop rule (at most
5000 steps at batch 32) plus the sweep (2000 test items x 361 locations x 5 seeds): minutes per
cell on one H100, days on a CPU.

Learning rate: the paper's text says Adam 1e-3, but a VGG16 without BatchNorm stays at chance with
it (measured on an H100: loss 2.30 after 1500 steps), and the authors' code uses 1e-4, so 1e-4 is
the default here; ``--config.train.learning_rate=1e-3`` gives the paper's text.
"""

from transinv_jax.experiments import arguments, spec

ARMS = ("vanilla", "imagenet")
SCHEMA = {"dataset": arguments.dataset_key(multi=True),
          "arm": arguments.Key(ARMS, multi=True, aliases={"pretrained": "imagenet"}),
          "size": arguments.size_key("smoke", "mini")}


def get_config(arg: str | None = None):
  """exp1 config; ``arg`` e.g. ``"mnist,vanilla"``, ``"dataset=mnist,size=smoke"``."""
  args = arguments.parse_args(arg, SCHEMA, "configs/exp1.py")
  datasets, arms = args.dataset, args.arm
  if args.size != "paper" and not datasets and not arms:  # the smallest cell
    datasets, arms = ["mnist"], ["vanilla"]
  config = spec.base_config("exp1")
  for arm in ARMS:
    for dataset in spec.DATASETS:
      name = f"{arm}_{dataset}"
      config.stages[name] = spec.stage(imagenet=arm == "imagenet", data={"dataset": dataset})
      config.tests[name] = spec.test(name, labels={"arm": arm})
  config.figures = spec.FIGURES + ("accuracy_bars",)
  spec.keep_tests(config, [f"{a}_{d}" for a in arms or ARMS for d in datasets or spec.DATASETS],
                  args)
  if args.size == "smoke":
    spec.shrink_for_smoke(config)
  elif args.size == "mini":
    spec.shrink_for_mini(config)
  return config
