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
  python -m transinv_jax.main --config=configs/data_efficiency.py:full,50,smoke \
      --workdir=runs/data_eff_smoke

Config arguments (comma separated, e.g.
``configs/data_efficiency.py:padding=full,train_items=50,size=smoke``):

  padding=zeros|full  paddings to keep, repeatable (default both)
  train_items=<int>   training set sizes to keep, repeatable: 100, 300, 1000, 3000, 10000
                      (smoke: 50, 200)
  size=smoke|paper    ``smoke``: CPU sizes

Short forms: each value alone (``zeros,100``, ``50,smoke``).

Expected cost: 10 trainings of 5 seeds x at most 3000 steps at batch 32 on 64x64 canvases: about
half an hour on one H100.
"""

from transinv_jax.experiments import arguments, spec

PADDINGS = ("zeros", "full")
SIZES = (100, 300, 1000, 3000, 10000)
SMOKE_SIZES = (50, 200)
SCHEMA = {"padding": arguments.Key(PADDINGS, multi=True), "train_items": arguments.Key(int, multi=True),
          "size": arguments.size_key("smoke")}
NOTES = (f"train_items: {', '.join(map(str, SIZES))} (smoke: "
         f"{', '.join(map(str, SMOKE_SIZES))})",)


def get_config(arg: str | None = None):
  """data_efficiency config; ``arg`` e.g. ``"full"``, ``"zeros,100"``, ``"smoke"``."""
  args = arguments.parse_args(arg, SCHEMA, "configs/data_efficiency.py", NOTES)
  smoke = args.size == "smoke"
  sizes = SMOKE_SIZES if smoke else SIZES
  paddings, chosen = args.padding, args.train_items
  for size in chosen:
    if size not in sizes:
      raise args.error(str(size), f"not one of the training set sizes at size {args.size}")
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
  spec.keep_tests(config, names, args)
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
