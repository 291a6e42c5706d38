r"""Runs one experiment from one config file.

  python -m transinv_jax.main --config=configs/exp1.py:smoke --workdir=runs/smoke
  python -m transinv_jax.main --config=configs/exp1.py --workdir=runs/exp1 \
      --config.train.learning_rate=1e-3

On every host of a TPU VM slice, run the same command with ``--multihost``.

A run is safe to interrupt: SIGTERM (a TPU VM's preemption notice) checkpoints the training stage
and exits with status 143; rerunning the same command resumes where it stopped, as it does after
a kill or a full disk. A workdir that holds a run of another config is refused unless
``--on_config_change`` says what to do; one that another live run holds is refused at once.
"""

import logging as std_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from transinv_jax import checkpoints, config_checks, preemption, workdir
from transinv_jax.data import sources
from transinv_jax.models import pretrained

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and figures: a local path or a Cloud "
    "Storage folder (gs://bucket/run; needs gcsfs and google-cloud-storage).")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Call jax.distributed.initialize() (every host of a TPU slice).")
_CACHE = flags.DEFINE_string(
    "jax_cache_dir", os.environ.get("TRANSINV_JAX_CACHE",
                                    os.path.expanduser("~/.cache/transinv_jax/xla")),
    "Persistent XLA compilation cache ('' disables it).")
_ON_CONFIG_CHANGE = flags.DEFINE_enum(
    "on_config_change", "refuse", workdir.ON_CONFIG_CHANGE,
    "When --workdir holds a run of another config: refuse (default), resume (continue the "
    "stored run with its stored config, ignoring this one), or restart (discard its results "
    "and run this config; trained stages, keyed by what determines them, are kept).")
_ON_BUSY_STAGE = flags.DEFINE_enum(
    "on_busy_stage", "wait", ("wait", "refuse"),
    "When another run is training a stage this run needs (a shared --config.stage_dir): wait "
    "for it and use its result (default), or refuse.")
_ON_MISSING_STAGE = flags.DEFINE_enum(
    "on_missing_stage", "train", ("train", "refuse"),
    "A stage not finished in the stage cache: train it (into <workdir>/stages when the cache "
    "is read-only; default), or refuse before any work (use only finished stages).")
flags.mark_flags_as_required(["config", "workdir"])

# Libraries whose INFO records drown the run's own progress lines (orbax logs every file it writes).
_QUIET_LIBRARIES = ("/orbax/", "/tensorflow_datasets/", "/etils/")


class _QuietLibraries(std_logging.Filter):

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in _QUIET_LIBRARIES)


# Errors that mean "fix your input", reported as one line instead of a traceback.
USER_ERRORS = (config_checks.ConfigError, sources.DataError, checkpoints.CheckpointError,
               pretrained.PretrainedError, workdir.WorkdirError)


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
  from transinv_jax.experiments import pipeline  # pylint: disable=g-import-not-at-top
  preemption.install()
  config = _CONFIG.value
  logging.info("config:\n%s", config)
  try:
    experiment = EXPERIMENTS[config.experiment]
  except KeyError:
    sys.exit(f"error: config.experiment={config.experiment!r}; use one of {list(EXPERIMENTS)}")
  try:
    # Keys set on the command line stay as given; the config file's own device-split sizes are
    # rounded to the devices (config_checks.fit_to_devices).
    user_set = set(config_flags.get_override_values(flags.FLAGS["config"]))
    experiment(config, _WORKDIR.value, on_config_change=_ON_CONFIG_CHANGE.value,
               user_set=user_set, on_busy_stage=_ON_BUSY_STAGE.value,
               on_missing_stage=_ON_MISSING_STAGE.value)
  except USER_ERRORS + (pipeline.TrainingDiverged,) as e:
    sys.exit(f"error: {e}")
  except preemption.Preempted as e:
    logging.warning("%s", e)
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(preemption.EXIT_CODE)


if __name__ == "__main__":
  app.run(main)
