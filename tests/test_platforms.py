"""GPU and TPU programs checked without the hardware, and the suite in JAX's default PRNG mode.

Every program the paper's runs compile is exported (``jax.export``, platforms cuda and tpu) at
the paper's sizes: VGG16 at full width, 224x224x3 canvases of 50-px items, batch 32, 10 classes,
Adam state, bf16 compute (``compute_dtype("auto", "gpu")``), over an 8-device data-parallel mesh.
Only lowering runs (seconds each; shapes come from ``jax.eval_shape``, so no 8 GB of Adam state is
ever allocated): a primitive or custom call that GPU or TPU cannot take fails here. Asserted:

* the train step in every seeds mode exports, with the state donated (every state buffer aliased
  to an output), the batch split over the mesh, and bf16 convolutions; ``vmap`` turns every one
  of its 38 convolutions (13 forward, 12 input-gradient, 13 weight-gradient) into a grouped conv
  with ``feature_group_count = 5`` (one group per seed), while ``sequential`` and ``lax_map``
  keep plain ones: why sequential is the default (GPU backends run grouped weight gradients as
  slow forward convs; see ``train``'s docstring);
* a concrete CPU mesh (``sharding.make_mesh()``) exports for cuda and tpu too;
* the evaluation kernel exports with each reduction the runs use: the shift sweep and placed
  accuracy (counts), the base activations and cosine similarity of every layer, the invariance
  responses, consistency; each is 13 plain bf16 convs and returns the shapes the callers read;
* a program with a host callback fails to export (the check has teeth);
* a slice of the suite (a 3-seed exp1 run compared with one seed alone) passes with
  ``jax_threefry_partitionable`` at JAX's default (on), which the product and GPUs/TPUs use,
  not only with the faster setting conftest picks for the suite.
"""

import dataclasses
import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

from conftest import REPO_ROOT, subprocess_env
from transinv_jax import evaluate, invariance, kernel, models, sharding, similarity, train
from transinv_jax.data import canvas, locations

PLATFORMS = ("cuda", "tpu")
CANVAS, ITEM, CHANNELS, CLASSES, BATCH, SEEDS, DEVICES = 224, 50, 3, 10, 32, 5, 8
TRAIN_ITEMS = 60_000                   # MNIST's training set, 1 channel, resized to 50x50
SWEEP_ITEMS, CENTRES = 16, 19          # a sweep call: 16 items x one row of the 19x19 grid
PICKED = 10                            # similarity / invariance: one item per class
CONV_LAYERS = 13                       # VGG16


def abstract_mesh() -> AbstractMesh:
  """The product's mesh (``sharding.make_mesh``: one axis "batch", Auto) over 8 devices that
  this machine does not have: an 8-GPU node or a TPU slice. A concrete mesh needs the devices."""
  return AbstractMesh((DEVICES,), (sharding.BATCH,), axis_types=sharding.make_mesh().axis_types)


def spec(shape, dtype, mesh, *partition) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P(*partition)))


def placed(tree, mesh):
  """Abstract ``tree`` with every leaf replicated over ``mesh``."""
  return jax.tree.map(lambda s: spec(s.shape, s.dtype, mesh), tree)


def export(fn, *args, mesh, donate: bool = False) -> jax.export.Exported:
  """``jax.export`` of ``jax.jit(fn)`` for cuda and tpu, tracing under ``mesh`` when abstract."""
  jitted = fn if hasattr(fn, "trace") else jax.jit(fn, donate_argnums=0 if donate else ())
  if isinstance(mesh, AbstractMesh):
    with jax.sharding.use_abstract_mesh(mesh):
      return jax.export.export(jitted, platforms=PLATFORMS)(*args)
  return jax.export.export(jitted, platforms=PLATFORMS)(*args)


def convolutions(exported: jax.export.Exported) -> list[str]:
  """The module's convolutions, one entry per conv of the program.

  JAX lowers a convolution per platform, so a module for several platforms holds each conv once
  per platform, in a ``stablehlo.case`` on the platform index; every copy is checked by the
  callers, and each conv is counted once here.
  """
  lines = [l for l in exported.mlir_module().splitlines() if "stablehlo.convolution" in l]
  assert len(lines) % len(PLATFORMS) == 0, len(lines)
  return lines


def group_counts(convs: list[str]) -> set[int]:
  return {int(g) for l in convs for g in re.findall(r"feature_group_count = (\d+)", l)}


def assert_bf16(convs: list[str]) -> None:
  """Every conv takes and gives bf16 (the params stay f32 and are cast before the conv)."""
  for line in convs:
    types = line.rsplit(" : ", 1)[1]
    assert "f32>" not in types and types.count("bf16>") == 3, line


def main_signature(exported: jax.export.Exported) -> str:
  return next(l for l in exported.mlir_module().splitlines() if "func.func public @main" in l)


def donated(exported: jax.export.Exported) -> int:
  """Arguments whose buffers the program may reuse for outputs (an alias, or a donor whose
  output is matched when the mesh is concrete)."""
  signature = main_signature(exported)
  return signature.count("tf.aliasing_output") + signature.count("jax.buffer_donor = true")


@pytest.fixture(scope="module")
def paper():
  """The paper-size model, renderer and abstract states; nothing of their size is allocated."""
  config = models.default_config()  # VGG16, full width, dtype "auto"
  model = models.build_model(config, CLASSES, platform="gpu")
  assert model.dtype == jnp.bfloat16 == models.compute_dtype("auto", "tpu")
  keys = jax.random.split(jax.random.key(0), SEEDS)
  cpu_mesh = sharding.make_mesh()
  states = jax.eval_shape(
      lambda k: train.create_train_state(model, k, (CANVAS, CANVAS, CHANNELS), 1e-4, cpu_mesh),
      keys)
  render = canvas.Renderer(CANVAS, (0.1,), (0.3,), CHANNELS, models.compute_dtype("auto", "gpu"))
  sampler = locations.make_sampler("leftmost_centred", CANVAS, ITEM)  # exp1's location
  step_kwargs = dict(render=render, sampler=sampler, batch_size=BATCH,
                     stop=train.StopRule(0.75, 800, 5000))
  items = train.Items(images=jax.ShapeDtypeStruct((TRAIN_ITEMS, ITEM, ITEM, 1), jnp.uint8),
                      labels=jax.ShapeDtypeStruct((TRAIN_ITEMS,), jnp.int32))
  return dict(model=model, states=states, keys=jax.ShapeDtypeStruct(keys.shape, keys.dtype),
              render=render, step_kwargs=step_kwargs, items=items)


def train_program(paper, mode: str, mesh):
  """``(fn, args)`` of what ``SeedsRunner`` jits in ``mode``: one seed's state for sequential,
  the [5]-stacked states otherwise; the state is donated, as there."""
  states, keys = placed(paper["states"], mesh), placed(paper["keys"], mesh)
  items = placed(paper["items"], mesh)
  if mode == "sequential":
    one = jax.tree.map(lambda s: spec(s.shape[1:], s.dtype, mesh), states)
    fn = functools.partial(train.train_steps, num_steps=1, mesh=mesh, **paper["step_kwargs"])
    return fn, (one, items, spec((), keys.dtype, mesh))
  fn = functools.partial(train.seeds_together, mode=mode, num_steps=1, mesh=mesh,
                         **paper["step_kwargs"])
  return fn, (states, items, keys)


@pytest.mark.parametrize("mode", train.SEEDS_MODES)
def test_train_step_exports_for_gpu_and_tpu(paper, mode):
  mesh = abstract_mesh()
  fn, args = train_program(paper, mode, mesh)
  exported = export(fn, *args, mesh=mesh, donate=True)
  assert exported.platforms == PLATFORMS and exported.nr_devices == DEVICES
  # The state is donated: each of its buffers may be reused for the new state.
  state_leaves = len(jax.tree.leaves(args[0]))
  # 32 params, 64 Adam moments, Adam's count, step, and the stop rule's streak, block sum,
  # block mean and reason.
  assert state_leaves == 102
  assert donated(exported) == state_leaves
  # Each device renders and runs its own part of the batch (vmap leaves the seeds axis open).
  seeds = "{?}, " if mode == "vmap" else ""
  canvases = f"{SEEDS}x" if mode == "vmap" else ""
  assert (f'<@mesh, [{seeds}{{"batch"}}, {{}}, {{}}, {{}}]> : '
          f'tensor<{canvases}{BATCH}x{CANVAS}x{CANVAS}x{CHANNELS}xbf16>' in exported.mlir_module())
  convs = convolutions(exported)
  assert len(convs) == 38 * len(PLATFORMS)  # 13 forward, 12 input-gradient, 13 weight-gradient
  assert_bf16(convs)
  if mode == "vmap":  # one group per seed: every conv, weight gradients included
    assert group_counts(convs) == {SEEDS}
  else:
    assert group_counts(convs) == {1}
  new_state, metrics = jax.tree.unflatten(exported.out_tree, exported.out_avals)
  assert jax.tree.structure(new_state) == jax.tree.structure(args[0])
  assert metrics["accuracy"].shape == ((1,) if mode == "sequential" else (SEEDS, 1))


def test_train_step_on_the_cpu_mesh_exports_for_gpu_and_tpu(paper):
  """A concrete mesh of this machine's CPU devices lowers for cuda and tpu as well."""
  mesh = sharding.make_mesh()
  fn, args = train_program(paper, "sequential", mesh)
  exported = export(fn, *args, mesh=mesh, donate=True)
  assert exported.platforms == PLATFORMS and exported.nr_devices == mesh.size
  assert donated(exported) == len(jax.tree.leaves(args[0]))
  convs = convolutions(exported)
  assert len(convs) == 38 * len(PLATFORMS) and group_counts(convs) == {1}
  assert_bf16(convs)


def one_seed_variables(paper, mesh):
  return placed({"params": jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype),
                                        paper["states"].params)}, mesh)


def export_kernel(run: kernel.Kernel, variables, images, centres, operands, mesh):
  """``kernel.evaluation_kernel`` (the one jitted evaluation program) for cuda and tpu."""
  exported = export(kernel.evaluation_kernel, run, variables, images, centres, operands,
                    mesh=mesh)
  assert exported.platforms == PLATFORMS and exported.nr_devices == DEVICES
  convs = convolutions(exported)
  assert len(convs) == CONV_LAYERS * len(PLATFORMS) and group_counts(convs) == {1}
  assert_bf16(convs)
  # The canvases of the call are split over the devices.
  canvases = images.shape[0] * centres.shape[1]
  assert (f'[{{"batch"}}, {{}}, {{}}, {{}}]> : tensor<{canvases}x{CANVAS}x{CANVAS}x{CHANNELS}xbf16>'
          in exported.mlir_module())
  return jax.tree.unflatten(exported.out_tree, exported.out_avals)


@pytest.fixture(scope="module")
def evaluation(paper):
  """What every evaluation call takes, at the paper's sizes, over the 8-device mesh."""
  mesh = abstract_mesh()
  net = kernel.Inference(paper["model"])
  variables = one_seed_variables(paper, mesh)
  picked = spec((PICKED, ITEM, ITEM, 1), jnp.uint8, mesh)
  layers, shapes = similarity.resolve_layers(
      net, jax.tree.map(lambda s: jax.ShapeDtypeStruct((1, *s.shape), s.dtype), variables),
      picked, paper["render"], "all")
  return dict(mesh=mesh, net=net, variables=variables, picked=picked, layers=layers,
              shapes=shapes, render=paper["render"])


def test_sweep_and_placed_accuracy_kernel_exports(evaluation):
  e, mesh = evaluation, evaluation["mesh"]
  run = kernel.Kernel(e["net"], e["render"], evaluate.count_correct, mesh)
  images = spec((SWEEP_ITEMS, ITEM, ITEM, 1), jnp.uint8, mesh, sharding.BATCH)
  operands = (spec((SWEEP_ITEMS,), jnp.int32, mesh, sharding.BATCH),
              spec((SWEEP_ITEMS,), jnp.bool_, mesh, sharding.BATCH))
  # The sweep: every item at a chunk of centres, the same for all items.
  counts = export_kernel(run, e["variables"], images, spec((1, CENTRES, 2), jnp.int32, mesh),
                         operands, mesh)
  assert (counts.shape, counts.dtype) == ((CENTRES, CLASSES), jnp.int32)
  # Placed accuracy: each item at its own centre.
  counts = export_kernel(run, e["variables"], images,
                         spec((SWEEP_ITEMS, 1, 2), jnp.int32, mesh, sharding.BATCH), operands, mesh)
  assert counts.shape == (1, CLASSES)


def base_operands(evaluation):
  """``kernel.against_base``'s operands: every layer's activations at the base centre."""
  e = evaluation
  base = kernel.Kernel(e["net"], e["render"], kernel.Activations(tuple(e["layers"])))
  base_act = export(kernel.evaluation_kernel, base, e["variables"], e["picked"],
                    spec((1, 1, 2), jnp.int32, e["mesh"]), None, mesh=e["mesh"])
  assert group_counts(convolutions(base_act)) == {1}
  return (jax.tree.unflatten(base_act.out_tree, base_act.out_avals),
          spec((2,), jnp.int32, e["mesh"]))


def test_similarity_kernel_exports_for_every_layer(evaluation):
  e = evaluation
  assert len(e["layers"]) == CONV_LAYERS + 2  # conv1_1 .. conv5_3, fc6, fc7
  operands = base_operands(e)
  assert operands[0]["conv1_1"].shape == (PICKED, 1, CANVAS, CANVAS, 64)
  run = kernel.Kernel(e["net"], e["render"], similarity.similarity_to_base, e["mesh"])
  cosines = export_kernel(run, e["variables"], e["picked"],
                          spec((1, CENTRES, 2), jnp.int32, e["mesh"]), operands, e["mesh"])
  assert sorted(cosines) == sorted(e["layers"])
  assert all((c.shape, c.dtype) == ((PICKED, CENTRES), jnp.float32) for c in cosines.values())


def test_invariance_responses_kernel_exports(evaluation):
  e = evaluation
  strides = tuple(invariance.layer_stride(CANVAS, e["shapes"][n].shape[1])
                  if len(e["shapes"][n].shape) == 4 else None for n in e["layers"])
  assert strides[:2] == (1, 1) and strides[-3:] == (16, None, None)
  run = kernel.Kernel(e["net"], e["render"], invariance.Responses(tuple(e["layers"]), strides),
                      e["mesh"])
  # Azulay & Weiss' 1-px vertical path, a chunk of 19 shifts.
  responses = export_kernel(run, e["variables"], e["picked"],
                            spec((1, CENTRES, 2), jnp.int32, e["mesh"]), base_operands(e),
                            e["mesh"])
  assert responses["probs"].shape == (PICKED, CENTRES, CLASSES)
  assert responses["sums"]["conv5_3"].shape == (PICKED, CENTRES, 512)
  assert responses["equivariance"]["fc7"].shape == (PICKED, CENTRES)


def test_consistency_kernel_exports(evaluation):
  e, mesh = evaluation, evaluation["mesh"]
  render = dataclasses.replace(e["render"], wrap=True)  # the circular mode: the harder lowering
  run = kernel.Kernel(e["net"], render, invariance.top_class, mesh)
  tops = export_kernel(run, e["variables"], spec((SWEEP_ITEMS, ITEM, ITEM, 1), jnp.uint8, mesh),
                       spec((SWEEP_ITEMS, 2, 2), jnp.int32, mesh), None, mesh)
  assert (tops.shape, tops.dtype) == ((SWEEP_ITEMS, 2), jnp.int32)


def test_a_program_gpus_and_tpus_cannot_run_fails_to_export():
  """The check has teeth: e.g. a host callback left in a step does not lower for cuda and tpu."""
  with_callback = lambda x: jax.pure_callback(np.sin, jax.ShapeDtypeStruct((3,), jnp.float32), x)
  with pytest.raises(NotImplementedError, match="callback"):
    export(with_callback, jax.ShapeDtypeStruct((3,), jnp.float32), mesh=sharding.make_mesh())


@pytest.mark.skipif(os.environ.get("TRANSINV_JAX_DEFAULT_PRNG") != "1",
                    reason="runs only in the default-PRNG child of the test below")
def test_default_prng_mode_is_on():
  assert jax.config.jax_threefry_partitionable


def test_suite_slice_passes_in_default_prng_mode(shared_data_dir):
  """Seeds side by side equal a seed alone, through the whole exp1 pipeline, in the PRNG mode
  the product runs (conftest switches it off for speed: random values differ between modes)."""
  del shared_data_dir  # skips without the real data; subprocess_env passes its path on
  env = subprocess_env(TRANSINV_JAX_DEFAULT_PRNG="1")
  del env["JAX_THREEFRY_PARTITIONABLE"]
  tests = ["tests/test_seeds.py::test_exp1_with_repetitions",
           "tests/test_platforms.py::test_default_prng_mode_is_on"]
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert re.search(r"\b2 passed\b", proc.stdout) and "skipped" not in proc.stdout, proc.stdout
