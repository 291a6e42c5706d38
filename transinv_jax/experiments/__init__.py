"""Experiments: each config describes stages and tests that ``pipeline.run`` turns into files.

``EXPERIMENTS[config.experiment]`` runs one; they differ only in their configs and figures.
"""

from transinv_jax.experiments import diagnose, pipeline

EXPERIMENTS = {name: pipeline.run for name in ("exp1", "exp2", "exp3", "exp4", "exp5", "fcn",
                                               "rook", "quadrant", "data_efficiency",
                                               "azulay_weiss")}
EXPERIMENTS["diagnose"] = diagnose.run
