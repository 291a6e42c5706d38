"""Shared test fixtures.

Tests run on CPU. Real data comes from ``../shared/data`` beside the checkout (CI clones the
repository next to it); the environment variable ``TRANSINV_JAX_DATA`` overrides that path.
"""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_data_path() -> pathlib.Path:
  env = os.environ.get("TRANSINV_JAX_DATA")
  return pathlib.Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
  """The offline dataset folder laid out as ../shared/data (mnist/, fashion_mnist/, leek/)."""
  path = shared_data_path()
  if not (path / "mnist").is_dir():
    pytest.skip(f"real data not found at {path}; set TRANSINV_JAX_DATA")
  return path
