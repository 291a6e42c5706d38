"""Experiments: each turns one config into files in a workdir. ``EXPERIMENTS[config.experiment]``."""

from transinv_jax.experiments import exp1

EXPERIMENTS = {"exp1": exp1.run}
