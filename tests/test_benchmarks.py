"""The benchmarks run and report what they claim to (structure only: timings are not tested)."""

import json
import subprocess
import sys

import jax.numpy as jnp
import pytest
from conftest import REPO_ROOT, subprocess_env

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = ["--width=0.03125", "--canvas=32", "--item=8", "--batch=4", "--steps=2"]


def run(*args, env=None):
  proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env or subprocess_env(),
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
  assert set(result["seeds_together"]) == {"sequential", "vmap", "lax_map"}
  assert all(r["seeds"] == 2 and r["img_per_sec_ratio_to_one_seed"] > 0
             for r in result["seeds_together"].values())
  assert set(result["variants"]) == {"plain", "full_padding", "blurpool",
                                     "full_padding_blurpool"}
  # Full convolution really does more work than the plain network.
  assert result["variants"]["full_padding"]["flops_ratio_to_plain"] > 1.1
  # No peak is known for a CPU: every MFU is null, and the JSON says why.
  assert result["peak_tflops"] is None and "--peak_tflops" in result["mfu_note"]
  assert result["model_gflops_per_image_forward"] > 0
  assert result["mfu"] == {"train": None, "sweep": None,
                           "seeds_together": dict.fromkeys(("sequential", "vmap", "lax_map")),
                           "variants": dict.fromkeys(throughput.VARIANTS)}


def test_throughput_mfu_with_a_peak_and_scaling_over_simulated_devices():
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
  result = run("benchmarks/throughput.py", *TINY, "--sweep_items=4", "--items_per_batch=4",
               "--peak_tflops=1", "--scaling", env=env)
  assert result["device"] == "4 x cpu"
  assert result["peak_tflops"] == 1 and result["peak_tflops_source"] == "--peak_tflops"
  assert result["mfu"]["train"] > 0 and result["mfu"]["sweep"] > 0
  # The training step's model FLOPs: forward + backward = 3x the forward pass.
  assert result["model_gflops_per_image_train"] == pytest.approx(
      3 * result["model_gflops_per_image_forward"])
  runs = result["scaling"]["runs"]
  assert [r["devices"] for r in runs] == [1, 2, 4]
  assert [r["global_batch"] for r in runs] == [4, 8, 16]  # weak scaling: 4 per device
  assert runs[0]["efficiency"] == 1.0
  assert all(r["train_img_per_sec"] > 0 and r["efficiency"] > 0 and r["mfu"] > 0 for r in runs)
  assert "share the same cores" in result["scaling"]["note"]


def test_peak_tflops_by_device_kind():
  assert throughput.peak_tflops("NVIDIA H100 80GB HBM3", jnp.bfloat16)[0] == 989
  assert throughput.peak_tflops("NVIDIA H100 80GB HBM3", jnp.float32)[0] == 67
  assert throughput.peak_tflops("NVIDIA H100 PCIe", jnp.bfloat16)[0] == 756
  assert throughput.peak_tflops("NVIDIA H200", jnp.bfloat16)[0] == 989
  assert throughput.peak_tflops("NVIDIA A100-SXM4-80GB", jnp.float32)[0] == 19.5
  assert throughput.peak_tflops("TPU v4", jnp.bfloat16)[0] == 275
  assert throughput.peak_tflops("TPU v5 lite", jnp.bfloat16)[0] == 197
  assert throughput.peak_tflops("TPU v5p", jnp.bfloat16)[0] == 459
  assert throughput.peak_tflops("TPU v6 lite", jnp.bfloat16)[0] == 918
  peak, why = throughput.peak_tflops("cpu", jnp.float32)
  assert peak is None and "--peak_tflops" in why
  assert throughput.peak_tflops("cpu", jnp.float32, 2.5) == (2.5, "--peak_tflops")
  assert throughput.mfu(1e12, None, 1) is None and throughput.mfu(1e12, 2.0, 4) == 0.125


def test_end_to_end_against_the_peer(shared_data_dir):
  del shared_data_dir  # only its check: the run needs the real MNIST files
  result = run("benchmarks/end_to_end.py", "--config_arg=mnist,vanilla,smoke", "--seeds=2",
               "--max_steps=6", "--max_items=20", "--max_train_items=200", "--width=0.03125",
               "--peer_workers=0")
  ours, peer = result["ours"], result["peer"]
  assert result["cell"] == "vanilla_mnist" and result["batch"] == 32
  # Both sides train both seeds to the stop rule (here the 6-step cap), then sweep the 7x7 grid.
  assert ours["steps"] == [6, 6] and ours["stop_reason"] == ["max_steps", "max_steps"]
  assert peer["steps"] == [6, 6] and peer["stop_reason"] == ["max_steps", "max_steps"]
  assert [s["seed"] for s in peer["per_seed"]] == [0, 1]
  assert ours["grid"] == [7, 7] and ours["sweep_canvases"] == peer["sweep_canvases"] == 2 * 20 * 49
  assert peer["model"] == "vgg16 width 0.03125" and peer["canvas"] == 64 and peer["item"] == 16
  assert 0 <= peer["sweep_accuracy_mean"] <= 1 and 0 <= ours["sweep_accuracy_mean"] <= 1
  assert result["ratio"] > 0 and result["ratio_per_seed_step"] > 0
  assert result["peak_tflops"] is None and ours["mfu"] is None


def test_peer_is_skipped_without_torch():
  # The child process cannot find torch: the peer is skipped, saying so.
  code = ("import importlib.util, sys; sys.argv=['x']; "
          "sys.path.insert(0, 'benchmarks'); import throughput; "
          "importlib.util.find_spec = lambda name: None if name == 'torch' else 1; "
          "print(throughput.run_torch_peer([]))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "skipped" in proc.stdout and "torch is not installed" in proc.stdout
