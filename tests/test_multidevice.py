"""8 simulated CPU devices give the same training, sweep and invariance results as one device.

The device count must be set before JAX starts, so the comparison runs in a child process
(this file, run as a script) and the test checks what it reports.
"""

import json
import subprocess
import sys

from conftest import subprocess_env


def test_eight_devices_match_one(tmp_path):
  out = tmp_path / "report.json"
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["devices"] == 8
  assert report["param_devices"] == 8          # params replicated over all 8
  assert report["batch_shard_shape"] == [2, 32, 32, 3]  # a batch of 16 split 8 ways
  assert report["steps"] == [[10], [10]]
  assert report["max_param_diff"] < 1e-5, report
  assert report["losses_close"], report
  assert report["sweep_equal"], report
  assert report["invariance_probs_diff"] < 1e-5, report
  assert report["invariance_equivariance_diff"] < 1e-4, report
  assert report["consistency_equal"], report


def _compare(out_path):
  """Trains and sweeps on an 8-device mesh and on a 1-device mesh; writes what differs."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from transinv_jax import evaluate, invariance, kernel, sharding, train
  from transinv_jax.data import canvas, locations
  from transinv_jax.models import vgg

  jax.config.update("jax_threefry_partitionable", False)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, 3, 40), jnp.int32)
  model = vgg.VGG11(num_classes=3, width=1 / 32, hidden=32)
  render = canvas.Renderer(32, 0.1, 0.3, 3)
  centres = locations.grid_centres(locations.paper_axis(32, 8, 6), np.array([4, 16, 27]))

  def run(mesh):
    items = jax.device_put(train.Items(images=images, labels=labels), sharding.replicated(mesh))
    state = train.create_train_state(model, jax.random.key(0)[None], (32, 32, 3), 1e-3, mesh)
    records = []
    result = train.train_loop(
        state, items, jax.random.key(1)[None], log_every=5, scan_steps=1, on_metrics=records.append,
        on_checkpoint=lambda s: None, checkpoint_every=100, render=render, batch_size=16,
        mesh=mesh, sampler=locations.make_sampler("fully_translated", 32, 8),
        stop=train.StopRule(1.1, 0, 10))
    net, variables = kernel.Inference(model), {"params": result.state.params}
    sweep = evaluate.shift_sweep(net, variables, items, centres, render=render, mesh=mesh,
                                 items_per_batch=8, centres_per_chunk=4)
    x = sharding.constrain_batch  # the batch layout the step asks for
    shard = jax.jit(lambda a: x(a, mesh))(jnp.zeros((16, 32, 32, 3)))
    # 5 items x 3 shifts per call: the chunk grows to 8 shifts so that 40 canvases split 8 ways.
    responses = invariance.shift_responses(
        net, variables, train.Items(images[:5], labels[:5]), render=render,
        base_centre=(10, 10), shifts=invariance.path("diagonal", 9), shifts_per_chunk=3,
        mesh=mesh)
    pairs = invariance.consistency(
        net, variables, train.Items(images[:8], labels[:8]), jax.random.key(2), render=render,
        base_centre=(8, 8), max_offset=12, pairs_per_item=2, items_per_batch=8, mesh=mesh)
    return result, records, sweep, shard, responses, pairs

  many, one = run(sharding.make_mesh()), run(sharding.make_mesh(jax.devices()[:1]))
  diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(many[0].state.params),
                             jax.tree.leaves(one[0].state.params)))
  conv = many[0].state.params["conv1_1"]["kernel"]
  report = {
      "devices": jax.device_count(),
      "param_devices": len(conv.sharding.device_set),
      "batch_shard_shape": list(many[3].addressable_shards[0].data.shape),
      "steps": [many[0].steps, one[0].steps],
      "max_param_diff": diff,
      "losses_close": bool(np.allclose([r["loss"] for r in many[1]],
                                       [r["loss"] for r in one[1]], rtol=1e-5)),
      "sweep_equal": bool(np.array_equal(many[2].correct, one[2].correct)),
      "invariance_probs_diff": float(np.abs(many[4].probs - one[4].probs).max()),
      "invariance_equivariance_diff": max(
          float(np.nanmax(np.abs(many[4].equivariance[n] - one[4].equivariance[n])))
          for n in many[4].layers),
      "consistency_equal": bool(np.array_equal(many[5].predictions, one[5].predictions)),
  }
  with open(out_path, "w") as f:
    json.dump(report, f)


if __name__ == "__main__":
  _compare(sys.argv[1])
