r"""Runs one experiment from one config file.

  python -m transinv_jax.main --config=configs/exp1.py:smoke --workdir=runs/smoke
  python -m transinv_jax.main --config=configs/exp1.py --workdir=runs/exp1 \
      --config.train.learning_rate=1e-3

On every host of a TPU VM slice, run the same command with ``--multihost``.
"""

import logging as std_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from transinv_jax import checkpoints, config_checks
from transinv_jax.data import sources
from transinv_jax.models import pretrained

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Call jax.distributed.initialize() (every host of a TPU slice).")
_CACHE = flags.DEFINE_string(
    "jax_cache_dir", os.environ.get("TRANSINV_JAX_CACHE",
                                    os.path.expanduser("~/.cache/transinv_jax/xla")),
    "Persistent XLA compilation cache ('' disables it).")
flags.mark_flags_as_required(["config", "workdir"])

# Libraries whose INFO records drown the run's own progress lines (orbax logs every file it writes).
_QUIET_LIBRARIES = ("/orbax/", "/tensorflow_datasets/", "/etils/")


class _QuietLibraries(std_logging.Filter):

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in _QUIET_LIBRARIES)


# Errors that mean "fix your input", reported as one line instead of a traceback.
USER_ERRORS = (config_checks.ConfigError, sources.DataError, checkpoints.CheckpointError,
               pretrained.PretrainedError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if _MULTIHOST.value:
    jax.distributed.initialize()
  if _CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _CACHE.value)
  # Imported here so that --help stays fast.
  from transinv_jax.experiments import EXPERIMENTS  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  logging.info("config:\n%s", config)
  try:
    experiment = EXPERIMENTS[config.experiment]
  except KeyError:
    sys.exit(f"error: config.experiment={config.experiment!r}; use one of {list(EXPERIMENTS)}")
  try:
    experiment(config, _WORKDIR.value)
  except USER_ERRORS as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
