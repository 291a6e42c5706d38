"""The benchmarks run and report what they claim to (structure only: timings are not tested)."""

import json
import subprocess
import sys

from conftest import REPO_ROOT, subprocess_env

TINY = ["--width=0.03125", "--canvas=32", "--item=8", "--batch=4", "--steps=2"]


def run(*args):
  proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=subprocess_env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout)


def test_throughput_with_peer_seeds_and_variants():
  result = run("benchmarks/throughput.py", *TINY, "--sweep_items=4", "--items_per_batch=4",
               "--peer", "--peer_workers=0", "--seeds=2", "--variants")
  assert result["sweep_grid"] == [5, 5] and result["sweep_canvases"] == 4 * 25
  assert result["train_img_per_sec"] > 0 and result["train_gflops_per_step"] > 0
  assert result["peer"]["model"] == "vgg16 width 0.03125" and result["peer"]["batch"] == 4
  assert set(result["ratio_to_peer"]) == {"train", "sweep_vs_peer_inference",
                                          "train_vs_peer_with_cpu_canvases"}
  assert result["seeds_together"]["seeds"] == 2
  assert set(result["variants"]) == {"plain", "full_padding", "blurpool",
                                     "full_padding_blurpool"}
  # Full convolution really does more work than the plain network.
  assert result["variants"]["full_padding"]["flops_ratio_to_plain"] > 1.1


def test_peer_is_skipped_without_torch():
  # The child process cannot find torch: the peer is skipped, saying so.
  code = ("import importlib.util, sys; sys.argv=['x']; "
          "sys.path.insert(0, 'benchmarks'); import throughput; "
          "importlib.util.find_spec = lambda name: None if name == 'torch' else 1; "
          "import argparse; print(throughput.run_peer(argparse.Namespace()))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "skipped" in proc.stdout and "torch is not installed" in proc.stdout
