r"""Biscione & Bowers, experiment 2: pretrain fully translated, fine-tune at one location (6x6).

A VGG16 is pretrained on each of the six datasets with items anywhere on the canvas (fully
translated), then fine-tuned on each dataset's 1-location version (leftmost-centred) and tested on
that dataset over the 19x19 grid. 6 pretrained networks (each trained once and reused by its six
fine-tunes) x 6 fine-tunes, five seeds each. Outputs: the normalised-accuracy
matrix (figure 2B), bars with std (figure 6), heatmaps, results.csv.

  python -m transinv_jax.main --config=configs/exp2.py --workdir=runs/exp2
  python -m transinv_jax.main --config=configs/exp2.py:emnist,mnist --workdir=runs/exp2_em_m

Config arguments (comma separated, e.g.
``configs/exp2.py:pretrain=emnist,finetune=mnist,size=smoke``):

  pretrain=<dataset>  the pretraining dataset (its six fine-tunes; default all six)
  finetune=<dataset>  the fine-tuning dataset (default all six)
  size=smoke|mini|paper  ``smoke`` (CPU sizes), ``mini`` (between smoke and the paper: canvas
                      112, items 25, VGG16 at 1/8 width, pretraining at most 3000 steps; one cell
                      in about 20 minutes on a 2-core CPU, see README's "Findings at CPU size")
                      or paper (the default)

Short forms: ``emnist`` is ``pretrain=emnist``, ``emnist,mnist`` is
``pretrain=emnist,finetune=mnist``, ``smoke`` and ``mini`` are sizes.

Fine-tuning trains every layer; set ``--config.finetune=frozen_conv`` or ``classifier`` to freeze
more. Share trained stages with exp5 through ``--config.stage_dir=runs/stages``.

Expected cost at the paper's sizes: 42 trainings of 5 seeds (at most 5000 steps at batch 32 each)
and 36 sweeps; about an hour per seed group on one H100 (DESIGN.md measured ~3 h for a naive
sequential run of all seeds).
"""

from transinv_jax.experiments import arguments, spec

SCHEMA = {"pretrain": arguments.dataset_key(), "finetune": arguments.dataset_key(after="pretrain"),
          "size": arguments.size_key("smoke", "mini")}


def get_config(arg: str | None = None):
  """exp2 config; ``arg`` e.g. ``"emnist"``, ``"emnist,mnist,smoke"``, ``"finetune=mnist"``."""
  args = arguments.parse_args(arg, SCHEMA, "configs/exp2.py")
  config = spec.base_config("exp2")
  for pretrain in spec.DATASETS:
    config.stages[f"pretrain_{pretrain}"] = spec.stage(
        data={"dataset": pretrain, "train_location": "fully_translated"})
    for finetune in spec.DATASETS:
      name = f"{pretrain}_{finetune}"
      config.stages[f"finetune_{name}"] = spec.stage(
          parent=f"pretrain_{pretrain}", data={"dataset": finetune})
      config.tests[name] = spec.test(f"finetune_{name}",
                                     labels={"pretrain": pretrain, "finetune": finetune})
  config.figures = spec.FIGURES + ("transfer",)
  pretrains = [args.pretrain] if args.pretrain else spec.DATASETS
  finetunes = [args.finetune] if args.finetune else spec.DATASETS
  spec.keep_tests(config, [f"{p}_{f}" for p in pretrains for f in finetunes], args)
  if args.size == "smoke":
    spec.shrink_for_smoke(config)
  elif args.size == "mini":
    spec.shrink_for_mini(config)
    for name, stage in config.stages.items():  # translation invariance takes longer to learn
      if name.startswith("pretrain_"):
        stage.train.max_steps = 3000
  return config
