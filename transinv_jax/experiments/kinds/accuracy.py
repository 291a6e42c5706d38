"""Placed accuracy: every seed's network on the test items placed as the stage's sampler places
its training items (one fixed placement key, so every network sees the same canvases)."""

import pathlib
import warnings

import jax
import ml_collections

from transinv_jax import evaluate
from transinv_jax.data import inputs
from transinv_jax.experiments import stages
from transinv_jax.experiments.kinds import context


def run(ctx: context.TestContext, name: str, entry: ml_collections.ConfigDict,
        flat: ml_collections.ConfigDict, trained: context.TrainedStage,
        directory: pathlib.Path) -> dict:
  """Measures placed accuracy; the record is the whole result (nothing is written).

  Args:
    ctx: the run's shared services.
    name: the test's name in ``config.tests``.
    entry: its ``config.tests`` entry.
    flat: its flat config (``stages.test_config``).
    trained: the stage it measures.
    directory: the test's folder (unused).

  Returns:
    Accuracy per seed [S], its mean and std, and the mean accuracy per class.
  """
  del directory  # the record is the whole result
  item_set, items = ctx.test_items(name, flat, trained)
  # One fixed placement key for every seed and rerun: the same canvases for every network.
  correct, totals = evaluate.placed_accuracy(
      ctx.net(flat, trained.num_classes), trained.variables, items, jax.random.key(flat.seed),
      render=ctx.render(flat.data, trained.mean, trained.std),
      sampler=inputs.make_sampler(flat.data, item_set.num_classes), mesh=ctx.mesh,
      items_per_batch=flat.eval.items_per_batch)
  accuracy = correct.sum(-1) / totals.sum()                              # [S]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    per_class = (correct / totals).mean(0)
  return {"split": stages.test_split(entry), "test_items": int(totals.sum()),
          "num_classes": item_set.num_classes, "chance": 1 / item_set.num_classes,
          "train_location": flat.data.train_location, "accuracy": float(accuracy.mean()),
          "accuracy_std": float(accuracy.std()), "accuracy_per_seed": accuracy.tolist(),
          "class_accuracy": dict(zip(item_set.class_names, per_class.tolist()))}
