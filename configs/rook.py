r"""Kayhan & van Gemert, the rook experiment: can one conv layer tell where a patch is?

One 5x5 conv filter, ReLU, global max pooling and a softmax classifier (``model.name="rook"``)
sees the same patch in the upper-left corner (class 0) or the bottom-right corner (class 1) of a
black canvas twice its size (``data.labels="location_pairs"``: every patch appears at both
corners). Global max pooling makes the net translation invariant if the conv is translation
equivariant, so it should be at chance; with zero "same" or valid padding the image border breaks
equivariance and the net learns the location; with full or circular padding it cannot (exactly
chance: the two canvases give the same pooled response). One network per padding (zeros = "same",
valid, full, circular), five seeds each; train and test accuracy per padding (``results.csv``,
``figures/accuracy.png``).

The patches are Fashion-MNIST items (train split for training, test split for testing); the
paper's rook image is not public, and any patch shows the effect. Canvases are not normalised
(``data.normalise=False``), so black is 0, the value zero padding adds, as in the paper.

  python -m transinv_jax.main --config=configs/rook.py --workdir=runs/rook
  python -m transinv_jax.main --config=configs/rook.py:full,smoke --workdir=runs/rook_full

Config arguments (comma separated; ``configs/rook.py:padding=full,size=smoke``):
``padding=zeros|valid|full|circular`` (repeatable; default all) and ``size=smoke|paper``; short
forms: each value alone (``full,smoke``).

Expected cost: 4 trainings of 5 seeds x 3000 steps of a one-filter net: a minute on one GPU, a few
minutes on a laptop CPU.
"""

from transinv_jax.experiments import arguments, spec

PADDINGS = ("zeros", "valid", "full", "circular")
SCHEMA = {"padding": arguments.Key(PADDINGS, multi=True), "size": arguments.size_key("smoke")}


def get_config(arg: str | None = None):
  """rook config; ``arg`` e.g. ``"zeros,full"``, ``"smoke"``."""
  args = arguments.parse_args(arg, SCHEMA, "configs/rook.py")
  config = spec.base_config("rook")
  config.data.dataset = "fashion_mnist"
  config.data.labels = "location_pairs"
  config.data.train_location = "corners"
  config.data.border = 0
  config.data.normalise = False
  config.data.item_size = 28
  config.data.canvas_size = 56
  config.data.max_train_items = 1000    # 1000 patches x 2 corners
  config.model.name = "rook"
  config.model.width = 1 / 16           # RookNet has 16 filters at width 1: the paper's one
  config.model.dtype = "float32"
  config.train.learning_rate = 1e-2
  config.train.max_steps = 3000
  config.train.stop_accuracy = 1.0      # train the full budget unless perfect for 500 steps
  config.train.stop_window = 500
  config.train.checkpoint_every = 1000
  config.eval.max_items = 1000
  config.eval.items_per_batch = 250
  names = []
  for padding in PADDINGS:
    config.stages[padding] = spec.stage(model={"padding": padding})
    for split in ("train", "test"):
      name = f"{padding}_{split}"
      config.tests[name] = spec.test(padding, kind="accuracy", split=split,
                                     labels={"padding": padding, "split": split})
      if not args.padding or padding in args.padding:
        names.append(name)
  spec.keep_tests(config, names, args)
  if args.size == "smoke":
    config.num_seeds = 2
    config.data.max_train_items = 200
    config.train.max_steps = 300
    config.train.stop_window = 100
    config.train.log_every = 50
    config.train.checkpoint_every = 300
    config.eval.max_items = 200
    config.eval.items_per_batch = 100
  return config
