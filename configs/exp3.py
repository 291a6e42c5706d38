r"""Biscione & Bowers, experiment 3: the whole canvas, but each class only in its own area.

The centres of the canvas are split into 9 equal areas (58x58 px of centres on 224 / 50 items);
EMNIST's first 18 letters (EMNIST18, A-R) are trained two per area (A, B in the top-left area,
row-major), each item centred anywhere in its area (never cropped; an item may overlap the next
area). Then two tests:

  finetune   the network fine-tuned on 1-location MNIST, tested on MNIST over the grid
             (figure 3A): no invariance on the untrained locations
  emnist18   the pretrained network on EMNIST18 fully translated, without fine-tuning
             (figure 3B): letters recognised only in their own area

  python -m transinv_jax.main --config=configs/exp3.py --workdir=runs/exp3
  python -m transinv_jax.main --config=configs/exp3.py:emnist18 --workdir=runs/exp3_emnist18

Config arguments (comma separated; ``configs/exp3.py:test=emnist18,size=smoke``):
``test=finetune|emnist18`` (repeatable; default both) and ``size=smoke|paper`` (``smoke``: CPU
sizes); short forms: the test or the size alone (``emnist18,smoke``).

Per-class heatmaps are in each test's folder; ``--config.data.fit=whole`` keeps every item wholly
inside its area instead. ``figures/coverage_pretrain.png`` shows how often each
pixel is covered by a training item of each area's pair: at 224 / 50 the areas are 75 px wide
and the items 50, so about 80% of the allowed centres put pixels in a neighbouring area
(``training_coverage`` in results.json).

Expected cost at the paper's sizes: two trainings of 5 seeds (at most 5000 steps at batch 32)
and two sweeps: minutes on one H100.
"""

from transinv_jax.data import locations
from transinv_jax.experiments import arguments, spec

TESTS = ("finetune", "emnist18")
SCHEMA = {"test": arguments.Key(TESTS, multi=True), "size": arguments.size_key("smoke")}


def get_config(arg: str | None = None):
  """exp3 config; ``arg`` e.g. ``"finetune"``, ``"emnist18,smoke"``."""
  args = arguments.parse_args(arg, SCHEMA, "configs/exp3.py")
  config = spec.base_config("exp3")
  config.stages.pretrain = spec.stage(data={
      "dataset": "emnist_letters", "classes": 18, "train_location": "regions",
      "layout": locations.area_layout(3, 2)})
  config.stages.finetune_mnist = spec.stage(parent="pretrain", data={"dataset": "mnist"})
  config.tests.finetune = spec.test("finetune_mnist", labels={"pretrain": "emnist18_areas",
                                                              "finetune": "mnist"})
  config.tests.emnist18 = spec.test("pretrain", labels={"pretrain": "emnist18_areas"})
  spec.keep_tests(config, args.test or list(TESTS), args)
  if args.size == "smoke":
    spec.shrink_for_smoke(config)
  return config
