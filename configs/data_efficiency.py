r"""Kayhan & van Gemert, data efficiency: full convolution against "same" (zero) padding.

Full convolution keeps convolutions translation equivariant up to the image border, a stronger
inductive bias that should pay off most when training data are few. A ResNet-18 with zero "same"
padding and one with full padding (``model.padding="full"``) are trained on growing subsets of a
classification dataset (the first N items of the train split: 100, 300, 1000, 3000, 10000), items
anywhere on the canvas, and tested on the test split with items placed the same way. Outputs:
``results.csv`` and ``figures/accuracy_by_train_size.png`` (test accuracy against the training
set size per padding, as the paper's figure). The paper used ImageNet subsets; here Fashion-MNIST
(``--config.data.dataset`` picks another).

  python -m transinv_jax.main --config=configs/data_efficiency.py --workdir=runs/data_eff
  python -m transinv_jax.main --config=configs/data_efficiency.py:full,100,smoke \
      --workdir=runs/data_eff_smoke

Config arguments: paddings (zeros, full) and/or training set sizes to keep, plus ``smoke``.

Expected cost: 10 trainings of 5 seeds x at most 3000 steps at batch 32 on 64x64 canvases: about
half an hour on one H100.
"""

from transinv_jax.experiments import spec

PADDINGS = ("zeros", "full")
SIZES = (100, 300, 1000, 3000, 10000)


def get_config(arg: str | None = None):
  """data_efficiency config; ``arg`` e.g. ``"full"``, ``"zeros,100"``, ``"smoke"``."""
  tokens, smoke = spec.parse_arg(arg)
  sizes = (50, 200) if smoke else SIZES
  paddings = [t for t in tokens if t in PADDINGS]
  chosen = [int(t) for t in tokens if t.isdigit()]
  unknown = [t for t in tokens if t not in PADDINGS and not t.isdigit()]
  bad = [n for n in chosen if n not in sizes]
  if unknown or bad:
    raise ValueError(f"configs/data_efficiency.py: {unknown or bad}: use paddings from "
                     f"{PADDINGS} and training set sizes from {sizes}")
  config = spec.base_config("data_efficiency")
  config.data.dataset = "fashion_mnist"
  config.data.train_location = "fully_translated"
  config.data.canvas_size = 64
  config.data.item_size = 28
  config.model.name = "resnet18"
  config.train.learning_rate = 1e-3
  config.train.max_steps = 3000
  config.train.stop_accuracy = 0.99     # small sets are learnt by heart quickly: stop there
  config.train.stop_window = 200
  config.eval.max_items = 5000
  config.eval.items_per_batch = 250
  names = []
  for padding in PADDINGS:
    for size in sizes:
      stage = f"{padding}_{size}"
      config.stages[stage] = spec.stage(model={"padding": padding},
                                        data={"max_train_items": size})
      config.tests[stage] = spec.test(stage, kind="accuracy",
                                      labels={"padding": padding, "train_items": str(size)})
      if (not paddings or padding in paddings) and (not chosen or size in chosen):
        names.append(stage)
  spec.keep_tests(config, names, arg or "")
  if smoke:
    config.num_seeds = 1
    config.data.canvas_size = 32
    config.data.item_size = 16
    config.model.width = 1 / 16
    config.train.max_steps = 150
    config.train.stop_window = 50
    config.train.log_every = 25
    config.train.checkpoint_every = 150
    config.eval.max_items = 200
    config.eval.items_per_batch = 100
  return config
