"""Test kinds: what a ``config.tests`` entry of each ``kind`` measures in a trained stage.

Every kind is a module with one entry point of the same signature::

  run(ctx: context.TestContext, name: str, entry: ConfigDict, flat: ConfigDict,
      trained: context.TrainedStage, directory: pathlib.Path) -> dict

``ctx`` carries what a test needs from the run (mesh, seeds, items, networks, renderers),
``entry`` is the test's ``config.tests`` entry and ``flat`` its flat config
(``stages.test_config``); it writes its arrays and figures to ``directory`` and returns its result
record, to which ``pipeline.Pipeline.test`` adds the test's bookkeeping. What a test records
follows from its own kind and config keys only.

Adding a test kind is one new module here with its ``run`` and one line in ``KINDS`` below (its
name is also listed in ``spec.TEST_KINDS``, the config grammar that ``stages.check`` validates
against; the two are checked to agree on import).
"""

from transinv_jax.experiments import spec
from transinv_jax.experiments.kinds import accuracy, invariance, similarity, sweep
from transinv_jax.experiments.kinds.context import TestContext, TrainedStage

KINDS = {
    "sweep": sweep.run,
    "similarity": similarity.run,
    "accuracy": accuracy.run,
    "invariance": invariance.run,
}

# A kind a config may name but nothing runs (or the reverse) would fail only mid-run.
assert set(KINDS) == set(spec.TEST_KINDS), (sorted(KINDS), spec.TEST_KINDS)

__all__ = ["KINDS", "TestContext", "TrainedStage"]
