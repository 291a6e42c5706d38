"""A minimal Flax VGG16 train step and inference: the "minimal Flax" reference of DESIGN.md's table.

Written from scratch and on purpose with nothing of ``transinv_jax``: plain ``flax.linen`` VGG16
(torchvision's layout: 13 3x3 convs with "SAME" padding, ``nn.max_pool``, fc 4096-4096-classes with
dropout 0.5), Adam at 1e-4, bf16 compute on GPU/TPU (float32 params), softmax cross-entropy, one
jitted step per dispatch with the state donated. Canvases are ready arrays already on the device:
no sampling, placing or normalising inside the step. It is what a researcher writes in an
afternoon, so the project's ratio to it, timed in the same run on the same device, says what the
project's machinery (on-device canvases, the seeds axis, the stop rule) costs or gains.

``benchmarks/device_check.py`` times it; on its own:

  python benchmarks/reference_vgg16.py                  # VGG16, 224, batch 128 (a GPU: ~1 min)
  python benchmarks/reference_vgg16.py --width=0.0625 --canvas=32 --batch=32   # CPU: ~10 s

prints one JSON object with the train step's and inference's img/s.
"""

import argparse
import json
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16(nn.Module):
  """Plain VGG16 over ``[batch, height, width, 3]``; returns logits.

  Attributes:
    num_classes: size of the last layer.
    width: multiplier on every conv and hidden width (1.0 = VGG16; smaller for a CPU).
    dtype: compute dtype; params stay float32.
  """
  num_classes: int = 10
  width: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    scaled = lambda n: max(1, int(round(n * self.width)))
    x = x.astype(self.dtype)
    for stage in STAGES:
      for features in stage:
        x = nn.relu(nn.Conv(scaled(features), (3, 3), padding="SAME", dtype=self.dtype)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))  # 7x7x512 at 224
    for _ in range(2):
      x = nn.relu(nn.Dense(scaled(4096), dtype=self.dtype)(x))
      x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


def compute_dtype(platform: str) -> jnp.dtype:
  """bf16 where it is fast (GPU, TPU), float32 on CPU."""
  return jnp.float32 if platform == "cpu" else jnp.bfloat16


def create_state(model: VGG16, key: jax.Array, canvas: int,
                 learning_rate: float = 1e-4) -> train_state.TrainState:
  """Params initialised from ``key`` and Adam."""
  params = jax.jit(model.init)(key, jnp.zeros((1, canvas, canvas, 3), jnp.float32))["params"]
  return train_state.TrainState.create(apply_fn=model.apply, params=params,
                                       tx=optax.adam(learning_rate))


def train_step(state: train_state.TrainState, x: jax.Array, labels: jax.Array,
               key: jax.Array) -> tuple[train_state.TrainState, jax.Array]:
  """One Adam step on ready canvases ``x`` [batch, H, W, 3]; returns the state and the loss."""
  dropout = jax.random.fold_in(key, state.step)

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, x, train=True, rngs={"dropout": dropout})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads), loss


def jitted_train_step():
  """``train_step`` under jit with the state donated (updated in place)."""
  return jax.jit(train_step, donate_argnums=0)


def jitted_predict(model: VGG16):
  """Inference: ``(params, x) -> logits``."""
  return jax.jit(lambda params, x: model.apply({"params": params}, x))


def ready_canvases(key: jax.Array, batch: int, canvas: int, dtype,
                   num_classes: int = 10) -> tuple[jax.Array, jax.Array]:
  """Random normalised canvases and labels, on the device before any timing starts."""
  k_x, k_y = jax.random.split(key)
  x = jax.random.normal(k_x, (batch, canvas, canvas, 3), dtype)
  return x, jax.random.randint(k_y, (batch,), 0, num_classes)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--canvas", type=int, default=224)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--infer_batch", type=int, default=512)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  dtype = compute_dtype(jax.default_backend())
  model = VGG16(width=args.width, dtype=dtype)
  state = create_state(model, jax.random.key(0), args.canvas)
  x, labels = ready_canvases(jax.random.key(1), args.batch, args.canvas, dtype)
  step, key = jitted_train_step(), jax.random.key(2)
  state, loss = step(state, x, labels, key)  # compile and warm up
  jax.block_until_ready(loss)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, loss = step(state, x, labels, key)
  jax.block_until_ready(loss)
  train_seconds = (time.perf_counter() - start) / args.steps
  predict = jitted_predict(model)
  x, _ = ready_canvases(jax.random.key(3), args.infer_batch, args.canvas, dtype)
  jax.block_until_ready(predict(state.params, x))
  start = time.perf_counter()
  out = [predict(state.params, x) for _ in range(args.steps)]
  jax.block_until_ready(out)
  infer_seconds = (time.perf_counter() - start) / args.steps
  print(json.dumps({
      "device": jax.devices()[0].device_kind, "jax": jax.__version__,
      "compute_dtype": jnp.dtype(dtype).name, "model": f"vgg16 width {args.width}",
      "canvas": args.canvas, "batch": args.batch, "infer_batch": args.infer_batch,
      "train_img_per_sec": args.batch / train_seconds,
      "infer_img_per_sec": args.infer_batch / infer_seconds}, indent=2))


if __name__ == "__main__":
  main()
