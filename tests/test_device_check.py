"""benchmarks/device_check.sh runs every part and reports what it claims (structure, not speed)."""

import glob
import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, subprocess_env

PARTS = {"reference_train_b128", "train_b128", "reference_train_b32", "train_b32",
         "reference_inference_b512", "inference_b512", "sweep", "seeds_sequential",
         "seeds_vmap", "seeds_lax_map"}


def check(*args, env=None, timeout=400):
  proc = subprocess.run(["bash", "benchmarks/device_check.sh", *args], cwd=REPO_ROOT,
                        env=env or subprocess_env(PYTHON=sys.executable), capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout), proc.stderr


def numbers(tree):
  """Every number in a nested dict (None included, so a missing ratio is seen)."""
  if isinstance(tree, dict):
    return [n for v in tree.values() for n in numbers(v)]
  return [tree] if tree is None or isinstance(tree, (int, float)) else []


def test_tiny_runs_every_part_with_positive_figures():
  # A generous deadline: on a loaded machine no part may be skipped (the next test covers that).
  result, _ = check("--tiny", "--deadline=500", timeout=700)
  assert result["errors"] == {}, result["errors"]
  assert result["check"] == "tiny" and result["platform"] == "cpu"
  assert result["jax"] and result["date"] and result["device_kind"] == "cpu"
  parts = result["parts"]
  assert set(parts) == PARTS
  for name, part in parts.items():
    rate = part.get("img_per_sec", part.get("canvases_per_sec"))
    assert rate > 0, name
    assert result["compile_seconds"][name] >= 0 and part["first_call_s"] > 0, name
  for part in ("train_b128", "reference_train_b128"):
    assert parts[part]["batch"] == 128 and parts[part]["compile"]["programs"] >= 1
  for mode in ("sequential", "vmap", "lax_map"):
    assert parts[f"seeds_{mode}"]["seeds"] == 5 and parts[f"seeds_{mode}"]["batch"] == 32
  assert parts["inference_b512"]["batch"] == 512
  assert parts["inference_b512"]["gflops_per_image"] > 0
  # The steady-state sweep reuses its compiled kernel: nothing compiles in the timed call.
  assert parts["sweep"]["compiles_in_timed_call"] == 0
  ratios = result["ratios"]
  assert set(ratios["to_reference"]) == {"train_b128", "train_b32", "inference",
                                         "sweep_vs_reference_inference"}
  assert set(ratios["to_peers_h100"]["train_b32"]) == {"pytorch_eager", "pytorch_compile",
                                                       "minimal_flax"}
  assert set(ratios["seeds_to_one_seed_b32"]) == {"sequential", "vmap", "lax_map"}
  assert all(r is not None and r > 0 for r in numbers(ratios)), ratios
  # No peak FLOP/s for a CPU: MFU is null and the JSON says why.
  assert result["mfu"] is None and "--peak_tflops" in result["mfu_note"]
  # The import path stays clear of what GPU machines lack.
  assert result["imported_but_missing_on_gpu_machines"] == []


def test_parts_that_do_not_fit_the_deadline_are_skipped_and_said_so():
  result, _ = check("--tiny", "--deadline=1", "--only=train_b32,sweep", timeout=120)
  assert set(result["parts"]) == {"train_b32", "sweep"}
  assert all(e.startswith("skipped: ") for e in result["errors"].values()), result["errors"]
  assert result["ratios"]["to_reference"]["train_b32"] is None


def test_prepare_fetches_the_wheels(tmp_path):
  """``--prepare`` needs the package index (CI reaches it); skipped where pip cannot."""
  wheels = tmp_path / "wheels"
  proc = subprocess.run(
      ["bash", "benchmarks/device_check.sh", "--prepare"], cwd=REPO_ROOT, capture_output=True,
      text=True, timeout=300,
      env=subprocess_env(PYTHON=sys.executable, DEVICE_CHECK_WHEELS=str(wheels),
                         PIP_RETRIES="0", PIP_TIMEOUT="15"))
  if proc.returncode != 0:
    pytest.skip(f"pip download failed (no package index here?): {proc.stderr[-500:]}")
  assert glob.glob(str(wheels / "ml_collections-*-py3-none-any.whl"))
  tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
  if tag in ("cp310", "cp311", "cp312", "cp313"):
    assert glob.glob(str(wheels / f"pyyaml-*-{tag}-*.whl"))
