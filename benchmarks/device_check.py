r"""Device check (issue 12): every throughput figure of the paper-size path, in one run, one JSON.

  bash benchmarks/device_check.sh            # one GPU: ~5 min (estimated), always under 9
  bash benchmarks/device_check.sh --tiny     # CPU sizes: about 1 min on 2 cores

(``device_check.sh`` makes the imports work offline, then runs this file; see its usage text.)
Logs go to stderr; stdout gets one JSON object. Parts, in this order:

- ``reference_train_b128`` / ``reference_train_b32``: ``reference_vgg16.py``, a minimal Flax VGG16
  (plain linen, Adam, bf16 on GPU, canvases as ready arrays), timed in the same run.
- ``train_b128`` / ``train_b32``: the project's training step, one seed (``train.SeedsRunner`` in
  ``sequential`` mode over a ``[1]`` state), canvases sampled and rendered on the device.
- ``reference_inference_b512`` / ``inference_b512``: plain inference on ready canvases.
- ``sweep``: ``evaluate.shift_sweep`` over the 19x19 paper grid, steady state (a first call
  compiles, the second is timed; compiles in the timed call are counted and their time left out).
- ``seeds_sequential`` / ``seeds_lax_map`` / ``seeds_vmap``: 5 seeds at batch 32 in each of
  ``train.SEEDS_MODES``; img/s over all seeds and the ratio to ``train_b32``'s one seed.

Each part reports its figures and ``compile``: programs compiled (traced, lowered, compiled by XLA)
while it ran and their seconds, from JAX's own compile events. ``ratios`` holds the project's
figures over the reference's (same run, same device) and over the peers of DESIGN.md (one H100,
bf16: PyTorch eager, torch.compile, minimal Flax), plus the reference's over DESIGN's minimal Flax
(how far this device and this run are from that H100). With a known peak
(``throughput.PEAK_TFLOPS``) ``mfu`` gives model-FLOP utilisation.

Time is budgeted: a part starts only if the deadline leaves room for its compiles (estimated from
the slowest compile so far) and its timing; timed steps shrink when steps are slow; a part that
fails or is skipped becomes ``{"error": "..."}`` and the run goes on; at the hard deadline a
watchdog prints what is done and exits.
"""

import argparse
import datetime
import functools
import json
import os
import platform
import sys
import threading
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import reference_vgg16
from transinv_jax import evaluate, kernel, models, sharding, train
from transinv_jax.data import canvas, locations

try:  # MFU's peak table; the check runs without it
  import throughput
except Exception as e:  # pylint: disable=broad-except
  throughput = None
  _THROUGHPUT_ERROR = f"{type(e).__name__}: {e}"

# Sizes. ``timed_s``: seconds of timed steps per part, when the steps are fast enough;
# ``soft_s``: no part starts that would end after it; ``hard_s``: the watchdog prints and exits;
# ``compile_guess_s``: one big compile, until one is seen; ``timing_guess_s``: a part's time
# besides its compiles (warm-up, probe, timed windows, small programs).
FULL = dict(width=1.0, canvas=224, item=50, batch=128, small_batch=32, seeds=5, infer_batch=512,
            sweep_items=128, items_per_batch=32, centres_per_chunk=0, scan_steps=1,
            timed_s=3.0, min_windows=3, max_windows=200, soft_s=420, hard_s=480,
            compile_guess_s=60.0, timing_guess_s=20.0)
TINY = dict(width=1 / 32, canvas=32, item=12, batch=128, small_batch=32, seeds=5, infer_batch=512,
            sweep_items=32, items_per_batch=16, centres_per_chunk=0, scan_steps=1,
            timed_s=0.3, min_windows=2, max_windows=20, soft_s=150, hard_s=170,
            compile_guess_s=10.0, timing_guess_s=1.0)

# DESIGN.md: one H100, bf16, VGG16 at 224x224 (inference at batch 128; ours runs at 512).
PEERS_H100 = {
    "train_b128": {"pytorch_eager": 3042, "pytorch_compile": 4614, "minimal_flax": 3728},
    "train_b32": {"pytorch_eager": 2053, "pytorch_compile": 3465, "minimal_flax": 2931},
    "inference": {"pytorch_eager": 7985, "pytorch_compile": 13682, "minimal_flax": 17486},
    "sweep": {"minimal_flax": 17398},
}
# Which part's figure each row of PEERS_H100 compares: (ours, the reference's). The sweep's
# ceiling is plain inference on ready canvases, so it is set against the reference's inference.
FIGURES = {
    "train_b128": (("train_b128", "img_per_sec"), ("reference_train_b128", "img_per_sec")),
    "train_b32": (("train_b32", "img_per_sec"), ("reference_train_b32", "img_per_sec")),
    "inference": (("inference_b512", "img_per_sec"), ("reference_inference_b512", "img_per_sec")),
    "sweep": (("sweep", "canvases_per_sec"), ("reference_inference_b512", "img_per_sec")),
}
# Packages a GPU machine lacks; importing one here means the offline path is broken.
NOT_ON_GPU_MACHINES = ("tensorflow", "tensorflow_datasets", "clu")


def log(message: str, *args) -> None:
  print(time.strftime("%H:%M:%S ") + message % args, file=sys.stderr, flush=True)


class CompileEvents:
  """JAX's compile events (trace, lower to MLIR, XLA compile), per program, since ``mark()``."""

  EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
            "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
            "/jax/core/compile/backend_compile_duration": "xla"}

  def __init__(self):
    self.records = []  # (fun_name, stage, seconds)
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event: str, duration: float, *args, **kwargs) -> None:
    del args
    if event in self.EVENTS:
      self.records.append((str(kwargs.get("fun_name", "?")), self.EVENTS[event], float(duration)))

  def mark(self) -> int:
    return len(self.records)

  def since(self, mark: int) -> dict:
    """Programs XLA compiled since ``mark`` and the seconds spent, in all and per program.

    ``by_program`` keeps programs of at least 0.05 s (trace + lower + XLA), by function name;
    the many tiny ones (eager ops, copies) are summed in ``seconds`` only.
    """
    records = self.records[mark:]
    by_program = {}
    for name, _, seconds in records:
      name = name[4:-1] if name.startswith("jit(") and name.endswith(")") else name
      by_program[name] = by_program.get(name, 0.0) + seconds
    xla = [s for _, stage, s in records if stage == "xla"]
    return {"programs": len(xla), "seconds": sum(s for *_, s in records),
            "max_xla_seconds": max(xla, default=0.0),
            "by_program": {k: v for k, v in by_program.items() if v >= 0.05}}


class Check:
  """The result being built, the clock, and the watchdog that prints it at the hard deadline."""

  def __init__(self, sizes: dict, tiny: bool, out: str):
    self.sizes, self.out = sizes, out
    self.start = time.monotonic()
    self.compiles = CompileEvents()
    self.compile_estimate, self.slowest_compile = sizes["compile_guess_s"], 0.0
    self.current, self.planned = None, []
    self.lock = threading.Lock()
    self.printed = False
    backend = jax.default_backend()
    self.dtype = models.compute_dtype("auto", backend)
    kind = jax.devices()[0].device_kind
    self.result = {
        "check": "tiny" if tiny else "full",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"{jax.device_count()} x {kind}", "device_kind": kind, "platform": backend,
        "jax": jax.__version__, "jaxlib": _version("jaxlib"), "flax": _version("flax"),
        "optax": _version("optax"), "python": platform.python_version(),
        "compute_dtype": jnp.dtype(self.dtype).name,
        "sizes": {k: v for k, v in sizes.items() if not k.endswith("_guess_s")},
        "compilation_cache": jax.config.jax_compilation_cache_dir or None,
        "parts": {},
    }
    self.watchdog = threading.Timer(sizes["hard_s"], self._hard_deadline)
    self.watchdog.daemon = True
    self.watchdog.start()

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def part(self, name: str, fn, programs: int = 1):
    """Runs ``fn() -> dict`` as part ``name``; records its figures, compiles, or its error.

    Args:
      name: the part's key in ``parts``.
      fn: returns the part's figures.
      programs: big (model-sized) programs it compiles, for the time it needs.

    Returns:
      The part's dict, or None when it failed or was skipped.
    """
    needs = programs * 1.5 * self.compile_estimate + self.sizes["timing_guess_s"]
    left = self.sizes["soft_s"] - self.elapsed()
    if needs > left:
      self.result["parts"][name] = {
          "error": f"skipped: {left:.0f} s left before the {self.sizes['soft_s']} s deadline, "
                   f"needs about {needs:.0f} s ({programs} compiles of ~"
                   f"{self.compile_estimate:.0f} s, then timing)"}
      log("%s: skipped (%.0f s left, needs ~%.0f s)", name, left, needs)
      return None
    log("%s: starting at %.0f s", name, self.elapsed())
    self.current, start, mark = name, time.monotonic(), self.compiles.mark()
    try:
      figures = fn()
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc(file=sys.stderr)
      figures = {"error": f"{type(e).__name__}: {e}"[:1500]}
    compiles = self.compiles.since(mark)
    # The slowest compile seen so far replaces the first guess.
    self.slowest_compile = max(self.slowest_compile, compiles["max_xla_seconds"])
    self.compile_estimate = self.slowest_compile or self.sizes["compile_guess_s"]
    with self.lock:
      figures.update(compile=compiles, part_seconds=time.monotonic() - start)
      self.result["parts"][name] = figures
      self.current = None
    log("%s: %s", name, json.dumps(rounded({k: v for k, v in figures.items() if k != "compile"})))
    return None if "error" in figures else figures

  def finish(self, killed: bool = False) -> None:
    """Adds the ratios, MFU and errors, prints the JSON (once) and writes ``--out``."""
    with self.lock:
      if self.printed:
        return
      self.printed = True
      if not killed:
        self.watchdog.cancel()
      result = self.result
      if killed:
        if self.current:
          result["parts"][self.current] = {
              "error": f"killed: still running at the {self.sizes['hard_s']} s hard deadline"}
        for name in self.planned:
          result["parts"].setdefault(name, {"error": "not run: the hard deadline came first"})
      result["wall_s"] = self.elapsed()
      result["errors"] = {name: p["error"] for name, p in result["parts"].items() if "error" in p}
      result["ratios"] = ratios(result["parts"])
      result["peers_h100_bf16"] = PEERS_H100
      result.update(mfu_figures(result["parts"], result["device_kind"], self.dtype))
      result["compile_seconds"] = {name: p["compile"]["seconds"]
                                   for name, p in result["parts"].items() if "compile" in p}
      result["imported_but_missing_on_gpu_machines"] = sorted(
          m for m in NOT_ON_GPU_MACHINES if m in sys.modules)
      text = json.dumps(rounded(result))
      print(text, flush=True)
      if self.out:
        with open(self.out, "w") as f:
          f.write(text + "\n")

  def _hard_deadline(self) -> None:
    log("hard deadline (%s s): printing what is done and exiting", self.sizes["hard_s"])
    self.finish(killed=True)
    os._exit(0)  # pylint: disable=protected-access


def _version(package: str) -> str | None:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version(package)
  except Exception:  # pylint: disable=broad-except
    return None


def _get(parts: dict, where: tuple[str, str]) -> float | None:
  part = parts.get(where[0]) or {}
  value = part.get(where[1])
  return value if isinstance(value, (int, float)) and value > 0 else None


def ratios(parts: dict) -> dict:
  """Ours over the reference and over the peers; None where a figure is missing."""
  div = lambda a, b: None if a is None or b is None else a / b
  to_reference, to_peers, reference_to_design = {}, {}, {}
  for row, (ours, ref) in FIGURES.items():
    mine, theirs = _get(parts, ours), _get(parts, ref)
    key = "sweep_vs_reference_inference" if row == "sweep" else row
    to_reference[key] = div(mine, theirs)
    to_peers[row] = {peer: div(mine, value) for peer, value in PEERS_H100[row].items()}
    if row != "sweep":
      reference_to_design[row] = div(theirs, PEERS_H100[row]["minimal_flax"])
  one_seed = _get(parts, ("train_b32", "img_per_sec"))
  seeds = {mode: div(_get(parts, (f"seeds_{mode}", "img_per_sec")), one_seed)
           for mode in train.SEEDS_MODES}
  return {"to_reference": to_reference, "to_peers_h100": to_peers,
          "reference_to_design_minimal_flax_h100": reference_to_design,
          "seeds_to_one_seed_b32": seeds,
          "note": "peer ratios compare with one H100 in bf16 at 224 px (DESIGN.md): meaningful "
                  "only in a full check on an H100-class GPU"}


def mfu_figures(parts: dict, device_kind: str, dtype) -> dict:
  """Model-FLOP utilisation of every figure, from the inference compile's FLOPs per image."""
  if throughput is None:
    return {"mfu": None, "mfu_note": f"benchmarks/throughput.py: {_THROUGHPUT_ERROR}"}
  peak, source = throughput.peak_tflops(device_kind, dtype)
  flops = {"project": _get(parts, ("inference_b512", "gflops_per_image")),
           "reference": _get(parts, ("reference_inference_b512", "gflops_per_image"))}
  if peak is None or flops["project"] is None:
    return {"mfu": None, "mfu_note": source if peak is None else "no inference FLOP count"}
  devices = jax.device_count()
  mfu = {}
  for name, part in parts.items():
    rate = part.get("img_per_sec") or part.get("canvases_per_sec")
    per_image = flops["reference" if name.startswith("reference") else "project"]
    if rate is None or per_image is None:
      continue
    training = "train" in name or name.startswith("seeds")  # forward + backward = 3x
    mfu[name] = rate * per_image * 1e9 * (3 if training else 1) / (peak * 1e12 * devices)
  return {"mfu": mfu, "peak_tflops": peak, "peak_tflops_source": source}


def time_windows(dispatch, block, sizes: dict, images_per_window: int) -> dict:
  """Compiles and warms up with one window, then times as many as ``timed_s`` allows.

  Returns:
    ``img_per_sec``, ``ms_per_window``, ``windows`` timed and ``first_call_s`` (the compile
    plus one window).
  """
  start = time.perf_counter()
  dispatch()
  block()
  first = time.perf_counter() - start
  start = time.perf_counter()
  dispatch()
  block()
  probe = time.perf_counter() - start
  if probe >= sizes["timed_s"]:  # slow steps: the probe is the measurement
    windows, seconds = 1, probe
  else:
    windows = int(np.clip(sizes["timed_s"] / probe, sizes["min_windows"], sizes["max_windows"]))
    start = time.perf_counter()
    for _ in range(windows):
      dispatch()
    block()
    seconds = (time.perf_counter() - start) / windows
  return {"img_per_sec": images_per_window / seconds, "ms_per_window": 1000 * seconds,
          "windows": windows, "first_call_s": first}


@jax.jit
def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


class Project:
  """What the project's parts share: the model, items on the device, the render and sampler.

  Initial states are made once per number of seeds and copied for each part (the runner donates
  its state), so the init compiles once, not once per part.
  """

  def __init__(self, sizes: dict, dtype, events: CompileEvents):
    self.sizes, self.dtype, self.events = sizes, dtype, events
    self.mesh = sharding.make_mesh()
    config = models.default_config()
    config.update(width=sizes["width"])
    self.model = models.build_model(config, 10, jax.default_backend())
    rng = np.random.default_rng(0)
    s = sizes["item"]
    host = train.Items(images=rng.integers(0, 256, (1024, s, s, 1), np.uint8),
                       labels=rng.integers(0, 10, 1024).astype(np.int32))
    self.items = jax.device_put(host, sharding.replicated(self.mesh))
    mean, std = canvas.canvas_stats(self.items.images, sizes["canvas"], 3)
    self.render = canvas.Renderer(sizes["canvas"], mean, std, channels=3, dtype=dtype)
    self.sampler = locations.make_sampler("fully_translated", sizes["canvas"], sizes["item"])
    self._states = {}

  def state(self, seeds: int) -> train.TrainState:
    """A fresh copy of the initial ``[seeds]`` state."""
    if seeds not in self._states:
      c = self.sizes["canvas"]
      self._states[seeds] = train.create_train_state(
          self.model, jax.random.split(jax.random.key(0), seeds), (c, c, 3), 1e-4, self.mesh)
    return _copy(self._states[seeds])

  def variables(self) -> dict:
    """One seed's variables, stacked ``[1, ...]`` as every evaluation takes them."""
    return self.state(1).variables

  def train(self, mode: str, seeds: int, batch: int) -> dict:
    """``seeds`` seeds at ``batch`` through ``train.SeedsRunner`` in ``mode``."""
    runner = train.SeedsRunner(
        mode, self.state(seeds), self.items, jax.random.split(jax.random.key(1), seeds),
        scan_steps=self.sizes["scan_steps"], render=self.render, sampler=self.sampler,
        batch_size=batch, stop=train.StopRule(1.1, 0, 10**9), mesh=self.mesh)
    running = np.ones(seeds, bool)
    figures = time_windows(lambda: runner.dispatch(running), runner.block, self.sizes,
                           seeds * batch * self.sizes["scan_steps"])
    return {"mode": mode, "seeds": seeds, "batch": batch, **figures}

  def inference(self) -> dict:
    batch, c = self.sizes["infer_batch"], self.sizes["canvas"]
    x = jax.random.normal(jax.random.key(3), (batch, c, c, 3), self.dtype)
    variables = jax.tree.map(lambda v: v[0], self.variables())
    return time_inference(lambda v, x: self.model.apply(v, x)[0], variables, x, self.sizes)

  def sweep(self) -> dict:
    """The 19x19 sweep of ``sweep_items`` items; the first call compiles, the second is timed."""
    axis = locations.paper_axis(self.sizes["canvas"], self.sizes["item"])
    centres = locations.grid_centres(axis, axis)
    test = jax.tree.map(lambda x: x[:self.sizes["sweep_items"]], self.items)
    # One network object for both calls: the compiled kernel is cached on it.
    sweep = functools.partial(
        evaluate.shift_sweep, kernel.Inference(self.model), self.variables(), centres=centres,
        render=self.render, mesh=self.mesh, items_per_batch=self.sizes["items_per_batch"],
        centres_per_chunk=self.sizes["centres_per_chunk"])
    start = time.perf_counter()
    sweep(items=test)  # compile and warm up
    first = time.perf_counter() - start
    mark = self.events.mark()
    start = time.perf_counter()
    sweep(items=test)
    seconds = time.perf_counter() - start
    again = self.events.since(mark)
    canvases = test.num_items * len(centres)
    figures = {"grid": [len(axis), len(axis)], "items": test.num_items, "canvases": canvases,
               "first_call_s": first, "compiles_in_timed_call": again["programs"]}
    if again["programs"]:  # the kernel was not reused: leave its compile out, and say so
      seconds -= again["seconds"]
      figures["note"] = (f"the timed call compiled again: its compile time ({again['seconds']:.1f} "
                         "s) is subtracted")
    figures["canvases_per_sec"] = canvases / seconds
    return figures


def time_inference(apply, variables, x, sizes: dict) -> dict:
  """img/s of jitted ``apply(variables, x)`` (compiled ahead), and XLA's FLOPs per image."""
  compiled = jax.jit(apply).lower(variables, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one per program
  out = [None]

  def dispatch():
    out[0] = compiled(variables, x)

  figures = time_windows(dispatch, lambda: jax.block_until_ready(out[0]), sizes, x.shape[0])
  flops = (cost or {}).get("flops")
  return {"batch": x.shape[0], **figures,
          "gflops_per_image": flops / x.shape[0] / 1e9 if flops else None}


class Reference:
  """The minimal Flax VGG16 (``reference_vgg16.py``); params initialised once for its parts."""

  def __init__(self, sizes: dict, dtype):
    self.sizes, self.dtype = sizes, dtype
    self.model = reference_vgg16.VGG16(width=sizes["width"], dtype=dtype)
    self.params = reference_vgg16.create_state(self.model, jax.random.key(0),
                                               sizes["canvas"]).params

  def train(self, batch: int) -> dict:
    state = [train_state.TrainState.create(apply_fn=self.model.apply, params=_copy(self.params),
                                           tx=optax.adam(1e-4))]
    x, labels = reference_vgg16.ready_canvases(jax.random.key(1), batch, self.sizes["canvas"],
                                               self.dtype)
    step, key, loss = reference_vgg16.jitted_train_step(), jax.random.key(2), [None]

    def dispatch():
      state[0], loss[0] = step(state[0], x, labels, key)

    figures = time_windows(dispatch, lambda: jax.block_until_ready(loss[0]), self.sizes, batch)
    return {"batch": batch, **figures}

  def inference(self) -> dict:
    x, _ = reference_vgg16.ready_canvases(jax.random.key(3), self.sizes["infer_batch"],
                                          self.sizes["canvas"], self.dtype)
    return time_inference(lambda p, x: self.model.apply({"params": p}, x), self.params, x,
                          self.sizes)


def rounded(value):
  """Floats to 4 significant digits, so the JSON stays short enough to read in a log tail."""
  if isinstance(value, float):
    return float(f"{value:.4g}")
  if isinstance(value, dict):
    return {k: rounded(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [rounded(v) for v in value]
  return value


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tiny", action="store_true", help="CPU sizes (about 1 min on 2 cores)")
  parser.add_argument("--deadline", type=float, default=0,
                      help="seconds after which no part starts (default 420, tiny 150); the "
                           "watchdog prints and exits 60 s later (tiny 20 s)")
  parser.add_argument("--only", default="",
                      help="comma-separated part names to run (default: all)")
  parser.add_argument("--out", default="", help="also write the JSON to this file")
  args = parser.parse_args()
  sizes = dict(TINY if args.tiny else FULL)
  if args.deadline:
    sizes["hard_s"] = args.deadline + sizes["hard_s"] - sizes["soft_s"]
    sizes["soft_s"] = args.deadline
  check = Check(sizes, args.tiny, args.out)
  log("device check (%s) on %s, jax %s", check.result["check"], check.result["device"],
      jax.__version__)
  dtype, b, b_small, seeds = check.dtype, sizes["batch"], sizes["small_batch"], sizes["seeds"]
  shared = {}

  def ours() -> Project:  # built inside the first part that needs it, so its failure is recorded
    if "project" not in shared:
      shared["project"] = Project(sizes, dtype, check.compiles)
    return shared["project"]

  def reference() -> Reference:
    if "reference" not in shared:
      shared["reference"] = Reference(sizes, dtype)
    return shared["reference"]

  parts = [
      ("reference_train_b128", lambda: reference().train(b), 1),
      ("train_b128", lambda: ours().train("sequential", 1, b), 1),
      ("reference_train_b32", lambda: reference().train(b_small), 1),
      ("train_b32", lambda: ours().train("sequential", 1, b_small), 1),
      ("reference_inference_b512", lambda: reference().inference(), 1),
      ("inference_b512", lambda: ours().inference(), 1),
      ("sweep", lambda: ours().sweep(), 2),
      # vmap last: its grouped convs are the known slow path.
      *[(f"seeds_{mode}", functools.partial(lambda m: ours().train(m, seeds, b_small), mode), 1)
        for mode in sorted(train.SEEDS_MODES, key=lambda m: m == "vmap")],
  ]
  only = {p for p in args.only.split(",") if p}
  unknown = only - {name for name, *_ in parts}
  if unknown:
    parser.error(f"unknown parts {sorted(unknown)}")
  parts = [p for p in parts if not only or p[0] in only]
  check.planned = [name for name, *_ in parts]
  for name, fn, programs in parts:
    check.part(name, fn, programs)
  check.finish()


if __name__ == "__main__":
  main()
