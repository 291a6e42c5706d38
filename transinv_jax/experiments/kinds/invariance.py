"""Invariance diagnostics (``diagnostics.invariance_test``) of every seed's network on the test
items, whatever their classes (a network of other classes is measured on its own top-1)."""

import pathlib

import ml_collections

from transinv_jax.experiments import diagnostics
from transinv_jax.experiments.kinds import context


def run(ctx: context.TestContext, name: str, entry: ml_collections.ConfigDict,
        flat: ml_collections.ConfigDict, trained: context.TrainedStage,
        directory: pathlib.Path) -> dict:
  """Runs the invariance measures; they write their arrays and figures to ``directory``.

  Args:
    ctx: the run's shared services.
    name: the test's name in ``config.tests``.
    entry: its ``config.tests`` entry (unused).
    flat: its flat config (``stages.test_config``).
    trained: the stage it measures.
    directory: the test's folder.

  Returns:
    The measures' record (``diagnostics.invariance_test``).
  """
  del entry  # the split and item count come through ctx.test_items
  item_set, items = ctx.test_items(name, flat, trained, same_classes=False)
  return diagnostics.invariance_test(
      ctx.net(flat, trained.num_classes), trained.variables, item_set, items, flat=flat,
      render=ctx.render(flat.data, trained.mean, trained.std), mesh=ctx.mesh,
      directory=directory, seeds=ctx.seeds, labelled=item_set.num_classes == trained.num_classes,
      title=ctx.title(name))
