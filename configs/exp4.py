r"""Biscione & Bowers, experiment 4: quadrants; the upper-right quadrant is treated specially.

EMNIST letters (26 classes) are trained with item centres restricted by quadrant, then tested
fully translated (the 19x19 grid over the whole canvas), and also after 1-location MNIST
fine-tuning (appendix A.2.2):

  1     every letter everywhere but the upper-right quadrant (figures 4 left, 7, 8 left)
  2     letters T-Z only in the upper-right quadrant, the others only elsewhere (figures 4
        right, 8 right)
  3.1   letter A fully translated, the others only in the upper-right quadrant (figure 9)
  3.2   A-J fully translated, the others upper-right only
  3.3   A-T fully translated, the others upper-right only
  3.4   A-Y fully translated, Z upper-right only

For conditions 3.x the figures show the fully translated and the upper-right-only letters apart.

What "empty" means: by default (``config.data.fit="centre"``, exp3's wording) a letter's centre is
drawn in its region of centres, so a letter centred near the quadrant's edge puts pixels inside
it: in condition 1, 4,888 of the 22,969 allowed centres (21%) at 224 / 50; in condition 2, T-Z
leave the upper-right quadrant from 3,687 of their 7,656. ``--config.data.fit=whole`` keeps every
pixel inside its region (condition 1's quadrant then sees no training pixel). Each run draws
``figures/coverage_<stage>.png`` (how often each pixel is covered by a training item, per class
group) and records the counts (``training_coverage``) and the accuracy inside and outside each
group's region (``accuracy_by_region``) in results.json.

  python -m transinv_jax.main --config=configs/exp4.py --workdir=runs/exp4
  python -m transinv_jax.main --config=configs/exp4.py:2 --workdir=runs/exp4_c2

Config arguments (comma separated; ``configs/exp4.py:condition=3.2,test=mnist,size=smoke``):

  condition=1|2|3.1|3.2|3.3|3.4  conditions to keep, repeatable (default all)
  test=emnist|mnist  ``emnist``: the tests without fine-tuning, ``mnist``: those after MNIST
                     fine-tuning; repeatable (default both)
  size=smoke|paper   ``smoke``: CPU sizes

Short forms: each value alone (``3.2,mnist``, ``2,smoke``).

Expected cost at the paper's sizes: 12 trainings of 5 seeds (at most 5000 steps at batch 32) and
12 sweeps: under an hour on one H100.
"""

import json

from transinv_jax.data import locations
from transinv_jax.experiments import arguments, spec

CONDITIONS = ("1", "2", "3.1", "3.2", "3.3", "3.4")
# Conditions 3.x: the letters trained everywhere (the others only upper-right).
FULLY_TRANSLATED = {"3.1": 1, "3.2": 10, "3.3": 20, "3.4": 25}
SCHEMA = {"condition": arguments.Key(CONDITIONS, multi=True),
          "test": arguments.Key(("emnist", "mnist"), multi=True), "size": arguments.size_key("smoke")}


def get_config(arg: str | None = None):
  """exp4 config; ``arg`` e.g. ``"1"``, ``"3.2,mnist"``, ``"2,smoke"``."""
  args = arguments.parse_args(arg, SCHEMA, "configs/exp4.py")
  conditions, kinds = args.condition, args.test
  config = spec.base_config("exp4")
  names = []
  for condition in CONDITIONS:
    c = "c" + condition.replace(".", "_")
    config.stages[f"pretrain_{c}"] = spec.stage(data={
        "dataset": "emnist_letters", "train_location": "regions",
        "layout": locations.quadrant_layout(condition)})
    config.stages[f"finetune_{c}_mnist"] = spec.stage(parent=f"pretrain_{c}",
                                                      data={"dataset": "mnist"})
    labels = {"condition": condition}
    if condition in FULLY_TRANSLATED:
      n = FULLY_TRANSLATED[condition]
      labels["class_groups"] = json.dumps({"fully translated": list(range(n)),
                                           "upper-right only": list(range(n, 26))})
    config.tests[c] = spec.test(f"pretrain_{c}", labels=labels)
    config.tests[f"{c}_mnist"] = spec.test(f"finetune_{c}_mnist",
                                           labels={"condition": condition, "finetune": "mnist"})
    if condition in (conditions or CONDITIONS):
      names += [n for n, kind in ((c, "emnist"), (f"{c}_mnist", "mnist"))
                if kind in (kinds or ("emnist", "mnist"))]
  config.figures = spec.FIGURES + ("class_groups",)
  spec.keep_tests(config, names, args)
  if args.size == "smoke":
    spec.shrink_for_smoke(config)
  return config
