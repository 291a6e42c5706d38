"""Shared test fixtures.

Tests run on CPU. Real data comes from ``../shared/data`` beside the checkout (CI clones the
repository next to it); the environment variable ``TRANSINV_JAX_DATA`` overrides that path.

``jax_threefry_partitionable`` is switched off for the whole suite, here and in every subprocess
the tests start (``subprocess_env``): on 2 CPU cores it cuts parameter-init compile time about 3x.
It changes random values, not their meaning; the product keeps JAX's default.
"""

import atexit
import collections
import contextlib
import logging
import os
import pathlib
import re
import shutil
import sys
import tempfile

import jax
from jax.experimental.compilation_cache import compilation_cache
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "configs"))  # so tests can `import exp1` like config_flags
# TRANSINV_JAX_DEFAULT_PRNG=1 keeps JAX's default (partitionable threefry, the product's) instead:
# tests/test_platforms.py runs a slice of the suite that way in a subprocess, so that the tests do
# not hold only with the faster setting.
jax.config.update("jax_threefry_partitionable", os.environ.get("TRANSINV_JAX_DEFAULT_PRNG") == "1")
# One persistent XLA cache for the session, shared with the nested pytest runs: tests compile
# the same tiny programs many times over (every pipeline run builds its own jits). Fresh per
# session, so no test passes on a program an older checkout compiled; count_compiles turns it off.
XLA_CACHE = os.environ.get("TRANSINV_JAX_TEST_CACHE")
if not XLA_CACHE:
  XLA_CACHE = os.environ["TRANSINV_JAX_TEST_CACHE"] = tempfile.mkdtemp(prefix="transinv_xla_")
  atexit.register(shutil.rmtree, XLA_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def shared_data_path() -> pathlib.Path:
  env = os.environ.get("TRANSINV_JAX_DATA")
  return pathlib.Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def subprocess_env(**extra: str) -> dict:
  """Environment for a child Python running the package as the tests do."""
  env = dict(os.environ, JAX_THREEFRY_PARTITIONABLE="false", JAX_PLATFORMS="cpu",
             TRANSINV_JAX_DATA=str(shared_data_path()), **extra)
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
  return env


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
  """The offline dataset folder laid out as ../shared/data (mnist/, fashion_mnist/, leek/)."""
  path = shared_data_path()
  if not (path / "mnist").is_dir():
    pytest.skip(f"real data not found at {path}; set TRANSINV_JAX_DATA")
  return path


def tiny_config(arg: str = "smoke", experiment: str = "exp1"):
  """configs/<experiment>.py:<arg> shrunk further for unit tests: canvas 32, items 12, VGG11 at
  1/16, 20 steps, a 3x3 test grid of 40 items."""
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(experiment).get_config(arg)
  config.data.data_dir = str(shared_data_path())
  config.data.max_train_items = 2000
  config.data.canvas_size = 32
  config.data.item_size = 12
  config.data.fixed_centre = (6, 16)
  config.model.name = "vgg11"
  config.train.max_steps = 20
  config.train.log_every = 10
  config.train.checkpoint_every = 10
  config.eval.max_items = 40
  config.eval.items_per_batch = 16
  config.eval.centres_per_chunk = 4
  return config


def exported_variables(run_dir) -> dict:
  """Every seed's exported variables of a run, under ``seed<s>/<name>``."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = {}
  for path in sorted(pathlib.Path(run_dir).glob("stages/*/export/seed*/variables.npz")):
    with np.load(path) as f:
      out.update({f"{path.parent.name}/{k}": f[k] for k in f.files})
  return out


def only_result(summary: dict) -> dict:
  """The one test's row of a one-cell run's summary."""
  assert len(summary["results"]) == 1, summary["results"]
  return summary["results"][0]


def read_test_record(workdir, name: str | None = None) -> dict:
  """``tests/<name>/result.json`` of a run (the only test when ``name`` is None)."""
  import json  # pylint: disable=g-import-not-at-top
  folders = sorted(p for p in (pathlib.Path(workdir) / "tests").iterdir())
  folder = pathlib.Path(workdir) / "tests" / name if name else folders[0]
  return json.loads((folder / "result.json").read_text())


class _Compiles(logging.Handler):
  """Counts "Finished XLA compilation of jit(<name>)" records by name."""

  def __init__(self):
    super().__init__()
    self.names = collections.Counter()

  def emit(self, record):
    found = re.search(r"Finished XLA compilation of jit\((\w+)\)", record.getMessage())
    if found:
      self.names[found[1]] += 1


@contextlib.contextmanager
def count_compiles():
  """Yields a Counter of the programs XLA compiles inside, with the persistent cache off (a
  program it served would not be compiled, and not counted)."""
  handler, logger = _Compiles(), logging.getLogger("jax")
  cache_dir = jax.config.jax_compilation_cache_dir
  # JAX decides once whether to use the cache: the reset makes it look at the directory again.
  jax.config.update("jax_compilation_cache_dir", None)
  compilation_cache.reset_cache()
  logger.addHandler(handler)
  try:
    with jax.log_compiles():
      yield handler.names
  finally:
    logger.removeHandler(handler)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    compilation_cache.reset_cache()
