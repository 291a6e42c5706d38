r"""One exp1 condition with all its seeds, end to end, against the PyTorch peer; prints one JSON.

  python benchmarks/end_to_end.py                    # MNIST, vanilla arm, paper's sizes, 5 seeds
  python benchmarks/end_to_end.py --config_arg=mnist,vanilla,smoke   # CPU-sized (canvas 64)

Issue 4's end-to-end target: one exp1 condition with its 5 seeds, each trained to the stop rule at
the authors' batch 32 and then swept over the 19x19 grid, at least 3x faster than the peer running
the seeds one after another with CPU canvases (on one H100).

- **Ours:** ``transinv_jax.experiments.pipeline.run`` on ``configs/exp1.py:<--config_arg>``, which
  must select one cell (a network trained from scratch and its sweep), with ``config.num_seeds =
  --seeds`` (the seeds trained together in one program, then swept), in a fresh workdir with a
  fresh stage cache. Its wall clock includes everything the run does: loading the data,
  compilation, training, the sweeps, checkpoints, the export, heatmaps and tables.
- **The peer:** ``torch_peer.py --end_to_end`` in a child process, given the same items (as loaded,
  before resizing), sizes, trained centre, test grid, model and hyperparameters: for each seed in
  turn a fresh VGG trained with Adam on PIL canvases made in ``DataLoader`` workers until the same
  stop rule fires, then the sweep with PIL canvases. Its wall clock starts when it reads the items.
  Skipped, saying so, without torch.

The stop rule ends each seed at its own step, and the two sides draw different batches, so the
JSON also gives a steps-normalised ratio: seconds per seed-step (all of a side's seconds, the sweep
included, over the sum of its seeds' training steps), the peer's over ours.

MFU (``throughput.py``'s definition) is over the useful model FLOPs: 3x the forward pass for every
training image of every seed up to its stop step, plus one forward pass per swept canvas, over our
whole wall clock; null where the device's peak is unknown (CPU) unless ``--peak_tflops`` is given.
"""

import argparse
import importlib.util
import json
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

from transinv_jax import models
from transinv_jax.data import inputs, locations
from transinv_jax.experiments import pipeline, stages

BENCHMARKS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
import throughput  # pylint: disable=g-import-not-at-top,wrong-import-position


def load_config(arg: str):
  """``configs/exp1.py``'s ``get_config(arg)``, loaded by path as ``--config`` would load it."""
  spec = importlib.util.spec_from_file_location("exp1_config",
                                                BENCHMARKS.parent / "configs" / "exp1.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def build_config(args):
  """The exp1 config with this benchmark's overrides applied to its shared sections."""
  config = load_config(args.config_arg)
  config.num_seeds = args.seeds
  config.stage_dir = ""  # the fresh workdir's own stage cache: the network is trained, not loaded
  for flag, section, field in (("max_steps", "train", "max_steps"),
                               ("max_items", "eval", "max_items"),
                               ("max_train_items", "data", "max_train_items"),
                               ("canvas", "data", "canvas_size"), ("item", "data", "item_size"),
                               ("width", "model", "width")):
    value = getattr(args, flag)
    if value:
      setattr(config[section], field, value)
  return config


def the_cell(config) -> tuple[str, str]:
  """The one sweep test that ``config`` keeps and the stage it tests; ValueError otherwise."""
  if len(config.tests) != 1:
    raise ValueError(f"the config selects {len(config.tests)} tests ({', '.join(config.tests)}); "
                     "select one cell, e.g. --config_arg=mnist,vanilla")
  name = next(iter(config.tests))
  test = config.tests[name]
  stage = config.stages[test.stage]
  if test.kind != "sweep" or stage.parent or stage.untrained or stage.imagenet:
    raise ValueError(f"test {name}: the benchmark times a sweep of a network trained from "
                     "scratch (no parent, no ImageNet weights)")
  return name, test.stage


def peer_condition(config, stage_name: str, test_name: str, path: pathlib.Path) -> None:
  """Writes what the peer needs to run the same cell: items (before resizing) and a spec.

  Args:
    config: the exp1 config.
    stage_name: the stage the cell trains.
    test_name: the cell's sweep.
    path: the .npz to write.
  """
  trained, tested = stages.stage_config(config, stage_name), stages.test_config(config,
                                                                                    test_name)
  m, d, t = trained.model, trained.data, trained.train
  plain_vgg = (m.name in ("vgg11", "vgg13", "vgg16", "vgg19") and not m.batch_norm
               and m.padding == "zeros" and m.pooling == "max" and m.head == "default"
               and not m.padding_overrides and not m.pretrained)
  if not plain_vgg:
    raise ValueError("the peer mirrors a plain VGG (zeros padding, max pooling, no BatchNorm, "
                     f"classifier head, no pretrained weights), not {m}")
  centre = inputs.trained_centre(d)
  if centre is None:
    raise ValueError(f"the peer trains at one location, not config.data.train_location="
                     f"{d.train_location!r}")
  if d.channels != 3 or (tested.data.canvas_size, tested.data.item_size) != (d.canvas_size,
                                                                             d.item_size):
    raise ValueError("the peer makes RGB canvases of one size for training and the sweep")
  train_set = inputs.load_items(d, "train", d.max_train_items)
  test_set = inputs.load_items(tested.data, "test", tested.eval.max_items)
  axis = inputs.test_axes(tested)
  spec = {"seeds": [config.seed + i for i in range(config.num_seeds)],
          "num_classes": train_set.num_classes, "model": m.name, "width": m.width,
          "dropout": m.dropout, "canvas": d.canvas_size, "item": d.item_size,
          "trained_centre": [int(c) for c in centre],
          "centres": locations.grid_centres(axis, axis).tolist(),
          "learning_rate": t.learning_rate, "batch": t.batch_size, "max_steps": t.max_steps,
          "stop_accuracy": t.stop_accuracy, "stop_window": t.stop_window,
          "stop_block": t.stop_block,
          "log_every": t.log_every}
  np.savez(path, spec=np.array(json.dumps(spec)), train_images=train_set.images,
           train_labels=train_set.labels, test_images=test_set.images,
           test_labels=test_set.labels)


def run_ours(config, stage_name: str, test_name: str, workdir: pathlib.Path) -> dict:
  """The pipeline's wall clock on the cell, and what each seed did (from the run's files)."""
  start = time.perf_counter()
  pipeline.run(config, str(workdir))
  seconds = time.perf_counter() - start
  stage_dir = workdir / "stages" / stages.stage_key(config, stage_name)
  trained = json.loads((stage_dir / "done.json").read_text())
  tested = json.loads((workdir / "tests" / test_name / "result.json").read_text())
  return {
      "seconds": seconds,
      "train_seconds": trained["train_seconds"],
      "test_seconds": tested["seconds"],  # the sweeps of every seed, and their heatmaps
      # Checks, loading, initialisation, resizing, checkpoints, export, tables and figures.
      "other_seconds": seconds - trained["train_seconds"] - tested["seconds"],
      "steps": trained["steps"], "stop_reason": trained["stop_reason"],
      "final_train_accuracy": trained["final_train_accuracy"],
      "sweep_accuracy": tested["mean_accuracy_per_seed"],
      "sweep_accuracy_mean": tested["mean_accuracy"],
      "grid": tested["grid"], "test_items": tested["test_items"],
      "num_classes": tested["num_classes"],
  }


def run_peer(args, condition: pathlib.Path) -> dict:
  """torch_peer.py --end_to_end in a child process; its JSON, or why there is none."""
  return throughput.run_torch_peer([
      f"--end_to_end={condition}", f"--workers={args.peer_workers}",
      f"--compile={args.peer_compile}", f"--sweep_batch={args.peer_sweep_batch}"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config_arg", default="mnist,vanilla",
                      help="configs/exp1.py's argument selecting one cell, e.g. mnist,vanilla "
                           "or mnist,vanilla,smoke (CPU-sized)")
  parser.add_argument("--seeds", type=int, default=5, help="config.num_seeds")
  parser.add_argument("--max_steps", type=int, default=0, help="config.train.max_steps (0: keep)")
  parser.add_argument("--max_items", type=int, default=0,
                      help="config.eval.max_items, the swept test items (0: keep)")
  parser.add_argument("--max_train_items", type=int, default=0,
                      help="config.data.max_train_items (0: keep)")
  parser.add_argument("--canvas", type=int, default=0, help="config.data.canvas_size (0: keep)")
  parser.add_argument("--item", type=int, default=0, help="config.data.item_size (0: keep)")
  parser.add_argument("--width", type=float, default=0.0, help="config.model.width (0: keep)")
  parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                      help="run the PyTorch peer too (--no-peer: ours only)")
  parser.add_argument("--peer_workers", type=int, default=4,
                      help="the peer's DataLoader workers making canvases on the CPU")
  parser.add_argument("--peer_compile", choices=("auto", "yes", "no"), default="auto",
                      help="torch.compile the peer's model (auto: on a GPU only)")
  parser.add_argument("--peer_sweep_batch", type=int, default=256,
                      help="the peer's canvases per inference batch in the sweep")
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="dense peak TFLOP/s of one device for MFU (default: by device kind)")
  args = parser.parse_args()

  config = build_config(args)
  test_name, stage_name = the_cell(config)
  trained = stages.stage_config(config, stage_name)
  platform = jax.default_backend()
  dtype = models.compute_dtype(trained.model.dtype, platform)
  kind = jax.devices()[0].device_kind
  result = {"config_arg": args.config_arg, "cell": test_name, "seeds": args.seeds,
            "device": f"{jax.device_count()} x {kind}", "platform": platform,
            "jax": jax.__version__, "compute_dtype": np.dtype(dtype).name,
            "model": f"{trained.model.name} width {trained.model.width}",
            "canvas": trained.data.canvas_size, "item": trained.data.item_size,
            "batch": trained.train.batch_size, "max_steps": trained.train.max_steps,
            "stop_rule": {"accuracy": trained.train.stop_accuracy,
                          "window": trained.train.stop_window,
                          "block": trained.train.stop_block}}
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    if args.peer:  # written before either side runs; not timed
      peer_condition(config, stage_name, test_name, tmp / "condition.npz")
    ours = run_ours(config, stage_name, test_name, tmp / "workdir")
    result["ours"] = ours
    result["peer"] = (run_peer(args, tmp / "condition.npz") if args.peer
                      else {"skipped": "--no-peer"})

  # Useful model FLOPs: training images up to each seed's stop step, and every swept canvas.
  batch = trained.train.batch_size
  model = models.build_model(trained.model, ours.pop("num_classes"), platform)
  forward = throughput.forward_flops_per_image(model, batch, trained.data.canvas_size,
                                               trained.data.channels, dtype)
  sweep_canvases = ours["test_items"] * ours["grid"][0] * ours["grid"][1] * args.seeds
  model_flops = 3 * forward * batch * sum(ours["steps"]) + forward * sweep_canvases
  peak, source = throughput.peak_tflops(kind, dtype, args.peak_tflops)
  ours["sweep_canvases"] = sweep_canvases
  ours["seconds_per_seed_step"] = ours["seconds"] / sum(ours["steps"])
  ours["model_tflops"] = model_flops / 1e12
  ours["mfu"] = throughput.mfu(model_flops / ours["seconds"], peak, jax.device_count())
  result["peak_tflops"] = peak
  result["mfu_definition"] = ("useful model FLOPs (3x forward per training image up to each "
                              "seed's stop step, 1x per swept canvas) / seconds / "
                              "(peak_tflops * 1e12 * devices)")
  result["mfu_note" if peak is None else "peak_tflops_source"] = source

  peer = result["peer"]
  if "seconds" in peer:
    peer["seconds_per_seed_step"] = peer["seconds"] / sum(peer["steps"])
    result["ratio"] = peer["seconds"] / ours["seconds"]  # issue 4's target: >= 3 on one H100
    result["ratio_per_seed_step"] = peer["seconds_per_seed_step"] / ours["seconds_per_seed_step"]
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
