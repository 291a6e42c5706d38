r"""How long a checkpoint holds up the training thread; prints one JSON object.

  python benchmarks/checkpoint_pause.py                 # the paper's size: VGG16, 5 seeds, Adam
  python benchmarks/checkpoint_pause.py --width=0.0625 --seeds=2 --interval=1   # seconds, a test

Saves a train state of ``--seeds`` VGG16s with their Adam moments twice, ``--interval`` seconds
apart (the training between two checkpoints), through ``checkpoints.Checkpoints`` as training
does, and times what each ``save`` call blocks: the first (orbax's copy of the arrays to the
host), the second (that plus whatever of the first save's write and seal had not finished in the
interval), and ``close`` (the last write and seal). Run it from an older checkout's
``PYTHONPATH`` to compare against that version (see benchmarks/README.md). At the paper's size
the state is 8.3 GB: it needs about 18 GB of memory and as much free disk for two checkpoints.
"""

import argparse
import datetime
import json
import pathlib
import tempfile
import time

import jax
import numpy as np

from transinv_jax import checkpoints, models, sharding, train


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--width", type=float, default=1.0, help="VGG16 width multiplier")
  parser.add_argument("--canvas", type=int, default=224)
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--interval", type=float, default=30.0,
                      help="seconds of (simulated) training between the two saves")
  parser.add_argument("--dir", default="", help="where to write (default: a temporary folder)")
  args = parser.parse_args()

  config = models.default_config()
  config.width = args.width
  model = models.build_model(config, 10, jax.default_backend())
  mesh = sharding.make_mesh(jax.devices()[:1])
  keys = jax.random.split(jax.random.key(0), args.seeds)
  state = train.create_train_state(model, keys, (args.canvas, args.canvas, 3), 1e-4, mesh)
  # Adam's moments start at zero, which some writers compress; random values do not.
  state = state.replace(opt_state=jax.tree.map(
      lambda x: jax.random.normal(jax.random.key(1), x.shape, x.dtype)
      if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x, state.opt_state))
  jax.block_until_ready(state)
  size = sum(x.nbytes for x in jax.tree.leaves(state))

  with tempfile.TemporaryDirectory(dir=args.dir or None) as tmp:
    ckpts = checkpoints.Checkpoints(pathlib.Path(tmp) / "checkpoints")
    start = time.perf_counter()
    ckpts.save(state.replace(step=state.step + 1))
    first = time.perf_counter() - start
    time.sleep(args.interval)
    start = time.perf_counter()
    ckpts.save(state.replace(step=state.step + 2))
    second = time.perf_counter() - start
    start = time.perf_counter()
    ckpts.close()
    close = time.perf_counter() - start
    sealed = sorted(p.name for p in (pathlib.Path(tmp) / "checkpoints_digests").glob("*.json"))
  print(json.dumps({
      "date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
      "model": f"vgg16 width {args.width}", "canvas": args.canvas, "seeds": args.seeds,
      "state_gb": round(size / 1e9, 3), "interval_s": args.interval,
      "pause_first_save_s": round(first, 3), "pause_next_save_s": round(second, 3),
      "close_s": round(close, 3), "sealed": sealed}))


if __name__ == "__main__":
  main()
