r"""Training and shift-sweep throughput of the real code paths; prints one JSON object.

  python benchmarks/throughput.py                      # the paper's sizes: VGG16, 224, batch 128
  python benchmarks/throughput.py --width=0.125 --canvas=64 --item=16 --batch=32   # CPU-sized

Training: jitted ``train.train_step`` (canvases sampled, placed and normalised on the device inside
the step), Adam, ``--dtype`` compute (default: bf16 on GPU/TPU, fp32 on CPU). Sweep:
``evaluate.shift_sweep`` over the 19x19 paper grid (canvases made on the device). Timings exclude
compilation. At the paper's sizes the JSON includes the peer figures of DESIGN.md (one H100, bf16)
and our ratio to each; compare ratios only when ``device`` is an H100.

``--peer`` also runs the PyTorch peer (``torch_peer.py``: torchvision VGG16, bf16 autocast,
channels_last, torch.compile on GPU, PIL canvases in DataLoader workers) in a child process at the
same sizes, and prints its figures and our ratios to them; it is skipped, saying so, without torch.
``--seeds=5`` also times five seeds trained side by side in each seeds mode (``sequential``: the
one single-seed program per seed, round-robin; ``vmap``; ``lax_map``), each seed with its own params
and batches, and prints each mode's per-image throughput against one seed's.
``--variants`` also times VGG16 with full padding (Kayhan & van Gemert), with MaxBlurPool (Zhang),
and with both, beside the plain one, and prints each one's ratio to the plain VGG16: the model zoo's
knobs must stay on the fast path.

MFU (model FLOPs utilisation) = model FLOP/s / (peak FLOP/s of one device x device count). Model
FLOPs are the model's alone (not canvas rendering, the loss or Adam): XLA's cost analysis of the
jitted forward pass on one batch of canvases, per image; a training image counts 3x its forward
pass (forward + backward, the usual convention). The peak comes from ``PEAK_TFLOPS`` by device kind
and compute dtype, or from ``--peak_tflops``; where neither gives one (CPU), every ``mfu`` is null
and ``mfu_note`` says why.

``--scaling`` times the training step on meshes of 1, 2, 4, ... devices and all of them, at a fixed
per-device batch (weak scaling: global batch = devices x ``--batch``), with each one's efficiency
against one device. On CPU with simulated devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) every "device" shares the same cores, so
this checks the mechanism and its overheads, not speed; on a GPU host or a TPU slice it measures
real scaling.
"""

import argparse
import contextlib
import functools
import importlib.util
import json
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from transinv_jax import evaluate, kernel, models, sharding, train
from transinv_jax.data import canvas, locations

# DESIGN.md, one H100, bf16, VGG16 at 224x224, batch 128.
PEERS = {
    "train_img_per_sec": {"pytorch_eager": 3042, "pytorch_compile": 4614, "minimal_flax": 3728},
    "sweep_canvases_per_sec": {"pytorch_eager_inference": 7985,
                               "pytorch_compile_inference": 13682, "minimal_flax": 17398},
}


# Dense (no sparsity) peak TFLOP/s of one device, from the vendors' data sheets, by a lower-case
# substring of ``jax.devices()[0].device_kind``; the first match wins, so specific names come first.
# GPU fp32 is the plain (non-tensor-core) FP32 peak; XLA may run f32 convs on TF32 tensor cores
# (H100 SXM: 495 dense), so an fp32 MFU there can exceed what this peak allows; pass --peak_tflops
# to judge against TF32. TPUs have no separate fp32 peak: at JAX's default precision f32 matmuls and
# convs run as bf16 passes, so the bf16 peak is the ceiling.
PEAK_TFLOPS = {
    "h100 pcie": {"bf16": 756, "fp32": 51},
    "h100 nvl": {"bf16": 835, "fp32": 60},
    "h100": {"bf16": 989, "fp32": 67},         # SXM
    "h200": {"bf16": 989, "fp32": 67},         # the H100's compute, more memory
    "a100": {"bf16": 312, "fp32": 19.5},
    "tpu v4": {"bf16": 275, "fp32": 275},
    "tpu v5 lite": {"bf16": 197, "fp32": 197},  # v5e
    "tpu v5e": {"bf16": 197, "fp32": 197},
    "tpu v5": {"bf16": 459, "fp32": 459},       # v5p ("TPU v5" or "TPU v5p")
    "tpu v6 lite": {"bf16": 918, "fp32": 918},  # v6e (Trillium)
    "tpu v6e": {"bf16": 918, "fp32": 918},
}
MFU_DEFINITION = ("model FLOP/s / (peak_tflops * 1e12 * devices); model FLOPs: XLA's cost analysis "
                  "of the jitted forward pass per image, x3 for a training image")


def peak_tflops(device_kind: str, dtype, override: float | None = None) -> tuple[float | None, str]:
  """The dense peak TFLOP/s of one device at ``dtype``, and where the figure comes from.

  Args:
    device_kind: ``jax.devices()[0].device_kind``, e.g. ``"NVIDIA H100 80GB HBM3"``.
    dtype: the compute dtype; bf16 and fp16 use the ``bf16`` column, anything else ``fp32``.
    override: ``--peak_tflops``; wins over the table when given.

  Returns:
    ``(peak, source)``; ``(None, why)`` where the table does not know the device.
  """
  column = "bf16" if jnp.dtype(dtype).itemsize == 2 else "fp32"
  if override:
    return float(override), "--peak_tflops"
  kind = device_kind.lower()
  for name, peaks in PEAK_TFLOPS.items():
    if name in kind:
      return float(peaks[column]), f"PEAK_TFLOPS[{name!r}][{column!r}]"
  return None, (f"no peak TFLOP/s known for device kind {device_kind!r} at {column}; "
                "pass --peak_tflops to get MFU")


def forward_flops_per_image(model, batch: int, canvas_size: int, channels: int, dtype) -> float:
  """XLA's FLOP count of the model's forward pass (inference mode) on one batch, per image.

  Only the model: canvases, the loss and the optimiser are left out, as MFU's convention wants.
  """
  x = jax.ShapeDtypeStruct((batch, canvas_size, canvas_size, channels), dtype)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  forward = jax.jit(lambda v, x: model.apply(v, x)[0])
  cost = forward.lower(variables, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per program
  return float(cost.get("flops", float("nan"))) / batch


def mfu(model_flops_per_sec: float, peak: float | None, devices: int) -> float | None:
  """Model FLOP/s over the peak of ``devices`` devices; None where the peak is unknown."""
  return None if peak is None else model_flops_per_sec / (peak * 1e12 * devices)


def _time(fn, repeats: int) -> float:
  """Seconds per call of ``fn`` in steady state; ``fn`` returns arrays or a ``SeedsRunner``."""
  block = lambda out: out.block() if isinstance(out, train.SeedsRunner) else (
      jax.block_until_ready(out))
  block(fn())  # compile and warm up
  start = time.perf_counter()
  out = None
  for _ in range(repeats):
    out = fn()
  block(out)
  return (time.perf_counter() - start) / repeats


VARIANTS = {
    "plain": {},
    "full_padding": {"padding": "full"},
    "blurpool": {"pooling": "blur", "blur_size": 3},
    "full_padding_blurpool": {"padding": "full", "pooling": "blur", "blur_size": 3},
}


def time_training(model_knobs: dict, args, items, mesh, dtype, seeds: int = 1,
                  seeds_mode: str = "sequential", batch: int | None = None,
                  count_flops: bool = False):
  """Seconds per training step of VGG16 with ``model_knobs``; also the state, model and render.

  Args:
    model_knobs: ``config.model`` values that differ from a plain VGG16.
    args: the parsed flags (sizes, ``--steps``).
    items: training items on the devices of ``mesh``.
    mesh: the device mesh the step runs on.
    dtype: the compute dtype.
    seeds: seeds trained side by side, each on its own batch.
    seeds_mode: how (``train.SEEDS_MODES``); a step is one step of every seed.
    batch: the global batch of one seed (default ``--batch``).
    count_flops: also compile one seed's step alone for XLA's FLOP count (a compile more).

  Returns:
    ``(seconds per step, final state [seeds, ...], model, render, XLA FLOPs of one seed's step
    or None)``.
  """
  batch = batch or args.batch
  config = models.default_config()
  config.update(width=args.width, dtype=args.dtype, **model_knobs)
  model = models.build_model(config, 10, jax.default_backend())
  mean, std = canvas.canvas_stats(items.images, args.canvas, 3)
  render = functools.partial(canvas.render, canvas_size=args.canvas, mean=mean, std=std,
                             channels=3, dtype=dtype)
  keys = jax.random.split(jax.random.key(0), (2, seeds))
  state = train.create_train_state(model, keys[0], (args.canvas, args.canvas, 3), 1e-4, mesh)
  step_kwargs = dict(render=render, batch_size=batch, mesh=mesh,
                     sampler=locations.make_sampler("fully_translated", args.canvas, args.item),
                     stop=train.StopRule(1.1, 0, 10**9))
  # XLA's own FLOP count of one seed's compiled step: variants that do more work (full padding
  # grows every map) are judged by the FLOP rate they reach, not only by images per second.
  flops = None
  if count_flops:
    one_seed = jax.tree.map(lambda x: x[0], state)
    flops = jax.jit(functools.partial(train.train_steps, num_steps=1, **step_kwargs)).lower(
        one_seed, items, keys[1, 0]).compile().cost_analysis().get("flops", float("nan"))
  runner = train.SeedsRunner(seeds_mode, state, items, keys[1], scan_steps=1, **step_kwargs)
  running = np.ones(seeds, bool)

  def train_once():
    runner.dispatch(running)
    return runner

  return _time(train_once, args.steps), runner.state, model, render, flops


def time_sweep(args, state, model, render, items, mesh):
  """Seconds for the 19x19 sweep of ``--sweep_items`` items in steady state; and its grid.

  The first sweep compiles the evaluation kernel (and the small programs around it); the second,
  timed, reuses them all.
  """
  axis = locations.paper_axis(args.canvas, args.item)
  centres = locations.grid_centres(axis, axis)
  test = jax.tree.map(lambda x: x[:args.sweep_items], items)
  sweep = functools.partial(
      evaluate.shift_sweep, kernel.Inference(model), {"params": state.params}, test, centres,
      render=render, mesh=mesh, items_per_batch=args.items_per_batch,
      centres_per_chunk=args.centres_per_chunk)
  sweep()  # compile
  start = time.perf_counter()
  sweep()
  return time.perf_counter() - start, axis, test, centres


def scaling_device_sets() -> list[list]:
  """The device sets ``--scaling`` measures: 1, 2, 4, ... devices, and all of them.

  With several processes every process must take part in every program, so each set takes the same
  number of devices from every process (then the smallest set holds one device per process).
  """
  by_process = {}
  for device in jax.devices():  # every process's devices
    by_process.setdefault(device.process_index, []).append(device)
  per_process = min(len(d) for d in by_process.values())
  counts = sorted({2**i for i in range(per_process.bit_length())} | {per_process})
  return [[d for devices in by_process.values() for d in devices[:k]] for k in counts]


def time_scaling(args, host_items: train.Items, dtype, forward_flops: float,
                 peak: float | None) -> dict:
  """Weak scaling of the training step: per-device batch ``--batch``, meshes of growing size.

  Efficiency is images/s on ``n`` devices over ``n / n0`` times images/s on the smallest set
  (``n0`` devices: 1 in a single process).
  """
  runs = []
  for devices in scaling_device_sets():
    mesh = sharding.make_mesh(devices)
    items = jax.device_put(host_items, sharding.replicated(mesh))
    batch = len(devices) * args.batch
    seconds = time_training({}, args, items, mesh, dtype, batch=batch)[0]
    runs.append({"devices": len(devices), "global_batch": batch,
                 "train_img_per_sec": batch / seconds, "train_ms_per_step": 1000 * seconds,
                 "mfu": mfu(3 * forward_flops * batch / seconds, peak, len(devices))})
  base = runs[0]
  for run in runs:
    run["efficiency"] = run["train_img_per_sec"] / (
        run["devices"] / base["devices"] * base["train_img_per_sec"])
  result = {"per_device_batch": args.batch, "runs": runs}
  if jax.default_backend() == "cpu":
    result["note"] = ("CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count) share the "
                      "same cores: this checks the mechanism and its overheads, not speed")
  return result


def run_torch_peer(flags: list[str]) -> dict:
  """Runs benchmarks/torch_peer.py with ``flags`` in a child process; its JSON, or why not."""
  if importlib.util.find_spec("torch") is None:
    return {"skipped": "torch is not installed"}
  command = [sys.executable, str(pathlib.Path(__file__).with_name("torch_peer.py")), *flags]
  proc = subprocess.run(command, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    return {"failed": proc.stderr[-2000:]}
  return json.loads(proc.stdout)


def run_peer(args) -> dict:
  """The peer's throughput workloads at the same sizes as ours."""
  return run_torch_peer([
      f"--width={args.width}", f"--canvas={args.canvas}", f"--item={args.item}",
      f"--batch={args.batch}", f"--steps={args.steps}", f"--workers={args.peer_workers}"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--canvas", type=int, default=224)
  parser.add_argument("--item", type=int, default=50)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20, help="timed training steps")
  parser.add_argument("--sweep_items", type=int, default=256, help="test items in the sweep")
  parser.add_argument("--items_per_batch", type=int, default=32)
  parser.add_argument("--centres_per_chunk", type=int, default=0,
                      help="centres per sweep call; 0 = as many as device memory holds")
  parser.add_argument("--dtype", default="auto")
  parser.add_argument("--profile", default="",
                      help="write jax.profiler traces of the timed training steps and sweep here "
                           "(open with TensorBoard's profile plugin or Perfetto)")
  parser.add_argument("--peer", action="store_true",
                      help="also run the PyTorch peer (benchmarks/torch_peer.py) at the same sizes")
  parser.add_argument("--peer_workers", type=int, default=4,
                      help="the peer's DataLoader workers making canvases on the CPU")
  parser.add_argument("--seeds", type=int, default=0,
                      help="also time this many seeds trained side by side, in each seeds mode "
                           "(train.SEEDS_MODES), against one seed per image")
  parser.add_argument("--variants", action="store_true",
                      help="also time full padding, BlurPool and both, beside the plain VGG16")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="dense peak TFLOP/s of one device for MFU (default: PEAK_TFLOPS by "
                           "device kind and compute dtype; none on CPU)")
  parser.add_argument("--scaling", action="store_true",
                      help="also time training on 1, 2, 4, ... devices and all of them, at "
                           "--batch per device (weak scaling), with each one's efficiency")
  args = parser.parse_args()

  mesh = sharding.make_mesh()
  platform = jax.default_backend()
  dtype = models.compute_dtype(args.dtype, platform)
  rng = np.random.default_rng(0)
  host_items = train.Items(images=rng.integers(0, 256, (1024, args.item, args.item, 1), np.uint8),
                           labels=rng.integers(0, 10, 1024).astype(np.int32))
  items = jax.device_put(host_items, sharding.replicated(mesh))
  profile = (jax.profiler.trace(args.profile) if args.profile else contextlib.nullcontext())
  with profile:
    seconds_per_step, state, model, render, flops = time_training({}, args, items, mesh, dtype,
                                                                   count_flops=True)
    sweep_seconds, axis, test, centres = time_sweep(args, state, model, render, items, mesh)

  kind = jax.devices()[0].device_kind
  peak, peak_source = peak_tflops(kind, dtype, args.peak_tflops)
  forward = forward_flops_per_image(model, args.batch, args.canvas, 3, dtype)
  # Model FLOP/s -> MFU over every device of the mesh.
  utilisation = lambda flops_per_sec: mfu(flops_per_sec, peak, jax.device_count())
  result = {
      "device": f"{jax.device_count()} x {kind}",
      "platform": platform,
      "jax": jax.__version__,
      "compute_dtype": jnp.dtype(dtype).name,
      "model": f"vgg16 width {args.width}",
      "canvas": args.canvas, "item": args.item, "batch": args.batch,
      "train_img_per_sec": args.batch / seconds_per_step,
      "train_ms_per_step": 1000 * seconds_per_step,
      "train_gflops_per_step": flops / 1e9,
      "sweep_grid": [len(axis), len(axis)],
      "sweep_canvases": int(test.num_items * len(centres)),
      "sweep_canvases_per_sec": test.num_items * len(centres) / sweep_seconds,
      "model_gflops_per_image_forward": forward / 1e9,
      "model_gflops_per_image_train": 3 * forward / 1e9,
      "peak_tflops": peak,
      "mfu_definition": MFU_DEFINITION,
  }
  result["mfu"] = {
      "train": utilisation(3 * forward * result["train_img_per_sec"]),
      "sweep": utilisation(forward * result["sweep_canvases_per_sec"]),
  }
  if peak is None:
    result["mfu_note"] = peak_source
  else:
    result["peak_tflops_source"] = peak_source
  if args.peer:
    result["peer"] = run_peer(args)
    if "train_img_per_sec" in result["peer"]:
      peer = result["peer"]
      result["ratio_to_peer"] = {
          "train": result["train_img_per_sec"] / peer["train_img_per_sec"],
          # Our sweep makes its canvases on the device; the peer's best is plain inference.
          "sweep_vs_peer_inference": result["sweep_canvases_per_sec"] / peer["infer_img_per_sec"],
          "train_vs_peer_with_cpu_canvases":
              result["train_img_per_sec"] / peer["train_img_per_sec_cpu_canvases"],
      }
  if args.seeds:
    result["seeds_together"], result["mfu"]["seeds_together"] = {}, {}
    for mode in train.SEEDS_MODES:
      seconds = time_training({}, args, items, mesh, dtype, seeds=args.seeds, seeds_mode=mode)[0]
      per_image = args.seeds * args.batch / seconds
      result["seeds_together"][mode] = {
          "seeds": args.seeds, "train_img_per_sec": per_image,
          # The target: >= 0.9 (training several seeds costs no per-image throughput).
          "img_per_sec_ratio_to_one_seed": per_image / result["train_img_per_sec"]}
      result["mfu"]["seeds_together"][mode] = utilisation(3 * forward * per_image)
  if args.variants:
    timings = {"plain": (seconds_per_step, flops, forward)}
    for name, knobs in VARIANTS.items():
      if knobs:
        seconds, _, variant, _, variant_flops = time_training(knobs, args, items, mesh, dtype,
                                                               count_flops=True)
        timings[name] = (seconds, variant_flops,
                         forward_flops_per_image(variant, args.batch, args.canvas, 3, dtype))
    result["variants"] = {
        name: {"train_img_per_sec": args.batch / t, "gflops_per_step": f / 1e9,
               "img_per_sec_ratio_to_plain": seconds_per_step / t,
               "flops_ratio_to_plain": f / flops,
               # < 1 means the variant runs its FLOPs slower than plain: off the fast path.
               "flop_rate_ratio_to_plain": (f / t) / (flops / seconds_per_step),
               "model_gflops_per_image_forward": m / 1e9,
               "mfu": utilisation(3 * m * args.batch / t)}
        for name, (t, f, m) in timings.items()}
    result["mfu"]["variants"] = {name: v["mfu"] for name, v in result["variants"].items()}
  if args.scaling:
    result["scaling"] = time_scaling(args, host_items, dtype, forward, peak)
  if (args.width, args.canvas, args.item, args.batch) == (1.0, 224, 50, 128):
    result["peers_h100_bf16"] = PEERS
    result["ratio_to_peers"] = {
        metric: {peer: result[metric] / value for peer, value in peers.items()}
        for metric, peers in PEERS.items()}
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
