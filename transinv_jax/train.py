"""Training: a pure jitted step over canvases made on the device, a stop rule, and the loop.

Each step draws its items and their locations from a key folded with the step number, renders the
canvases on the device (each device its own shard of the batch), and updates the replicated params.
Steps are dispatched asynchronously and the host syncs once per ``log_every`` steps, so there is
no host round trip per step. The stop rule runs on the device: once it fires, further steps leave
the state untouched, so the run stops at the exact step whatever the sync interval.
"""

import dataclasses
import functools
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from jax.sharding import Mesh

from transinv_jax import sharding
from transinv_jax.data import locations

RUNNING, STOP_ACCURACY, STOP_MAX_STEPS = 0, 1, 2
STOP_REASONS = {RUNNING: "running", STOP_ACCURACY: "accuracy", STOP_MAX_STEPS: "max_steps"}

# (images uint8 [batch, s, s, c], centres int32 [batch, 2]) -> model input [batch, H, W, C].
RenderFn = Callable[[jax.Array, jax.Array], jax.Array]
Metrics = dict[str, jax.Array]


class Diverged(RuntimeError):
  """The loss became NaN or infinite: training stopped before saving the bad state.

  Attributes:
    step: the first step whose loss was not finite.
    seed: the index of the first seed that diverged (0 without seeds).
    loss: that loss (nan, inf or -inf); None when the parameters went bad first.
  """

  def __init__(self, step: int, seed: int, loss: float | None = None):
    what = (f"the training loss is {loss} at step {step}" if loss is not None else
            f"the parameters are NaN or infinite after step {step}")
    super().__init__(what + (f" (seed index {seed})" if seed else ""))
    self.step, self.seed, self.loss = step, seed, loss


class StopRequested(Exception):
  """``train_loop``'s ``should_stop`` said stop; the state at ``step`` was checkpointed."""

  def __init__(self, step: int):
    super().__init__(f"stopped on request at step {step}")
    self.step = step


@flax.struct.dataclass
class Items:
  """A dataset's items on the device.

  Attributes:
    images: uint8 [num_items, size, size, channels], resized once to the item size.
    labels: int32 [num_items].
  """
  images: jax.Array
  labels: jax.Array

  @property
  def num_items(self) -> int:
    return self.labels.shape[0]


class TrainState(train_state.TrainState):
  """Flax's train state plus BatchNorm statistics and the stop rule's memory.

  Attributes:
    batch_stats: the model's ``batch_stats`` collection (running BatchNorm statistics); empty
      for models without BatchNorm.
    streak: consecutive steps whose training accuracy reached the threshold.
    stop_reason: ``RUNNING``, ``STOP_ACCURACY`` or ``STOP_MAX_STEPS``.
  """
  batch_stats: Any
  streak: jax.Array
  stop_reason: jax.Array

  @property
  def variables(self) -> dict:
    """What ``model.apply`` takes: params, and batch_stats where the model has them."""
    return model_variables(self.params, self.batch_stats)


def model_variables(params: Any, batch_stats: Any) -> dict:
  return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


@dataclasses.dataclass(frozen=True)
class StopRule:
  """Stop once accuracy >= ``threshold`` for ``window`` consecutive steps, or at ``max_steps``.

  The authors' code: 0.75 held for 800 iterations, at most 5000. ``window = 0`` disables the
  accuracy rule.
  """
  threshold: float
  window: int
  max_steps: int


def create_train_state(model: Any, key: jax.Array, input_shape: tuple[int, ...],
                       learning_rate: float, mesh: Mesh,
                       trainable: Callable[[Any], Any] | None = None) -> TrainState:
  """Initialises params (replicated over ``mesh``) and an Adam optimiser.

  Args:
    model: a Flax module called as ``model(x, train=...)``.
    key: PRNG key for the params; a ``[seeds]`` array of keys gives one state per seed, stacked
      on a leading axis, for ``train_steps(..., seeds=True)``.
    input_shape: one input's shape, ``[height, width, channels]``.
    learning_rate: Adam's fixed learning rate.
    mesh: the device mesh.
    trainable: maps one seed's params to a same-shaped tree of bools; parameters marked False
      are frozen (their updates are zero), e.g. ``finetune.trainable("frozen_conv")``. None
      trains everything.

  Returns:
    The initial state, step 0.
  """
  tx = optax.adam(learning_rate)
  if trainable is not None:
    labels = lambda params: jax.tree.map(lambda t: "train" if t else "frozen", trainable(params))
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)

  def init(key):
    variables = model.init({"params": key}, jnp.zeros((1, *input_shape), jnp.float32))
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                              batch_stats=variables.get("batch_stats", {}),
                              streak=jnp.int32(0), stop_reason=jnp.int32(RUNNING))
    # A strongly typed step keeps the state's signature fixed across calls (no recompiles).
    return state.replace(step=jnp.int32(0))

  init = jax.vmap(init) if key.ndim else init
  return jax.jit(init, out_shardings=sharding.replicated(mesh))(key)


def train_step(state: TrainState, items: Items, key: jax.Array, *, render: RenderFn,
               sampler: locations.Sampler, batch_size: int, stop: StopRule,
               mesh: Mesh) -> tuple[TrainState, Metrics]:
  """One Adam step on a batch drawn, placed and rendered on the device; a no-op once stopped.

  Items are drawn uniformly with replacement, so a step's batch depends only on ``key`` and the
  step number: a resumed run sees exactly the batches an uninterrupted one would.

  Once the stop rule has fired, the step still computes but keeps the old state (a select, not
  ``lax.cond``: control flow around the model takes XLA:CPU off its fast path, 10x slower), so the
  host can dispatch many steps between syncs and still stop at the exact step.

  Args:
    state: the train state.
    items: the training items on the device.
    key: the run's data key; each step folds in its step number.
    render: composes model input from items and centres.
    sampler: where the items go.
    batch_size: global batch size (split over the mesh).
    stop: the stop rule.
    mesh: the device mesh.

  Returns:
    ``(new_state, {"loss", "accuracy", "active"})``; ``active`` is False for a no-op step.
  """
  k_items, k_where, k_dropout = jax.random.split(jax.random.fold_in(key, state.step), 3)
  idx = jax.random.randint(k_items, (batch_size,), 0, items.num_items)
  idx = sharding.constrain_batch(idx, mesh)
  labels = items.labels[idx]
  x = render(items.images[idx], sampler(k_where, labels))
  x = sharding.constrain_batch(x, mesh)

  def loss_fn(params):
    variables = model_variables(params, state.batch_stats)
    (logits, _), updates = state.apply_fn(variables, x, train=True, rngs={"dropout": k_dropout},
                                          mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, updates.get("batch_stats", {}))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  new = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  streak = jnp.where(accuracy >= stop.threshold, state.streak + 1, 0).astype(jnp.int32)
  reason = jnp.where((stop.window > 0) & (streak >= stop.window), STOP_ACCURACY,
                     jnp.where(new.step >= stop.max_steps, STOP_MAX_STEPS, RUNNING))
  new = new.replace(streak=streak, stop_reason=reason.astype(jnp.int32))
  active = state.stop_reason == RUNNING
  new = jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state)
  return new, {"loss": loss, "accuracy": accuracy, "active": active}


def train_steps(state: TrainState, items: Items, key: jax.Array, *, num_steps: int,
                seeds: bool = False, **step_kwargs) -> tuple[TrainState, Metrics]:
  """``num_steps`` calls of ``train_step`` in one compiled call (``lax.scan`` when > 1).

  With ``seeds=True`` the state and ``key`` carry a leading ``[seeds]`` axis and every seed is
  trained at once by ``vmap`` (the items are shared): one program, each seed with its own params,
  batches, locations, dropout and stop rule.

  Scanning saves dispatches for small batches on GPU/TPU; on CPU keep ``num_steps = 1``, since
  XLA:CPU runs the model about 10x slower inside a loop.

  Returns:
    ``(state, metrics)``, each metric ``[num_steps]`` (``[num_steps, seeds]`` with seeds).
  """
  def one(state, key):
    return train_step(state, items, key, **step_kwargs)

  step = functools.partial(jax.vmap(one) if seeds else one, key=key)
  if num_steps == 1:
    state, metrics = step(state)
    return state, jax.tree.map(lambda m: m[None], metrics)
  return jax.lax.scan(lambda s, _: step(s), state, None, length=num_steps)


@functools.partial(jax.jit, static_argnums=1)
def _finite_params(params: Any, seeds: bool) -> jax.Array:
  """bool [] (or [seeds] with ``seeds``): whether every parameter (of each seed) is finite."""
  finite = jnp.stack([jnp.isfinite(x).reshape((x.shape[0] if seeds else 1, -1)).all(-1)
                      for x in jax.tree.leaves(params)]).all(0)
  return finite if seeds else finite[0]


def _save_if_finite(save: Callable[[TrainState], None], seeds: bool, state: TrainState) -> None:
  """Checkpoints ``state`` unless a parameter is NaN or inf (then raises ``Diverged``).

  The loss check sees each step's loss before its update; an update that overflows shows in the
  params first, so they are checked before anything is saved.
  """
  finite = np.atleast_1d(jax.device_get(_finite_params(state.params, seeds)))
  if not finite.all():
    seed = int(np.flatnonzero(~finite)[0])
    raise Diverged(int(np.atleast_1d(jax.device_get(state.step))[seed]), seed)
  save(state)


@dataclasses.dataclass
class TrainResult:
  """What ``train_loop`` ends with.

  Attributes:
    state: the final train state.
    stop_reason: ``"accuracy"`` or ``"max_steps"`` (a list, one per seed, with seeds).
    steps: steps taken in all, including those before a resume (a list with seeds).
    final_train_accuracy: mean training accuracy over the last log window (None if this call
      took no step, e.g. a resumed run that had already stopped; a list with seeds).
    seconds: wall time of this call's steps.
  """
  state: TrainState
  stop_reason: str | list[str]
  steps: int | list[int]
  final_train_accuracy: float | None | list[float | None]
  seconds: float


def train_loop(state: TrainState, items: Items, key: jax.Array, *, stop: StopRule,
               log_every: int, scan_steps: int, on_metrics: Callable[[dict], None],
               on_checkpoint: Callable[[TrainState], None], checkpoint_every: int,
               seeds: bool = False, should_stop: Callable[[], bool] = lambda: False,
               **step_kwargs) -> TrainResult:
  """Dispatches steps until the stop rule fires, syncing with the device once per ``log_every``.

  Args:
    state: the (possibly restored) train state; returned at once if it has already stopped.
    items: training items on the device.
    key: the run's data key (``[seeds]`` keys with ``seeds``).
    stop: the stop rule.
    log_every: steps between host syncs (and metrics records); a multiple of ``scan_steps``.
    scan_steps: steps per compiled call.
    on_metrics: receives one record per sync: step, loss, train_accuracy, streak, steps_per_sec,
      eta_seconds (to the step cap); with seeds, step/loss/train_accuracy/streak are per-seed lists.
    on_checkpoint: saves a state; called every ``checkpoint_every`` steps and at the end.
    checkpoint_every: steps between checkpoints.
    seeds: the state and key carry a leading seeds axis; train every seed until all have stopped.
    should_stop: asked at every host sync (e.g. ``preemption.requested``); True checkpoints the
      state and raises ``StopRequested``.
    **step_kwargs: the other keyword-only arguments of ``train_step``.

  Returns:
    The final state and what stopped it.

  Raises:
    Diverged: a loss or a parameter that is not finite (NaN or inf); that state is not
      checkpointed, so the last checkpoint is the last good one.
    StopRequested: ``should_stop()`` was True; the state was checkpointed first.
  """
  run = jax.jit(functools.partial(train_steps, num_steps=scan_steps, stop=stop, seeds=seeds,
                                  **step_kwargs), donate_argnums=0)
  on_checkpoint = functools.partial(_save_if_finite, on_checkpoint, seeds)
  # Host-side bookkeeping works on [seeds] arrays either way.
  as_list = (lambda a: a.tolist()) if seeds else (lambda a: a.item())
  steps = np.atleast_1d(jax.device_get(state.step))
  last_checkpoint, seconds = steps.max(), 0.0
  accuracy = np.full(steps.shape, np.nan)
  while (np.atleast_1d(jax.device_get(state.stop_reason)) == RUNNING).any():
    start = time.perf_counter()
    window = []
    for _ in range(log_every // scan_steps):  # asynchronous dispatches, no sync
      state, metrics = run(state, items, key)
      window.append(metrics)
    window, steps, streak = jax.device_get((window, state.step, state.streak))
    elapsed = time.perf_counter() - start
    seconds += elapsed
    metrics = {k: np.concatenate([m[k] for m in window]).reshape(-1, np.size(steps))
               for k in window[0]}  # [steps, seeds]
    active = metrics["active"]
    bad = active & ~np.isfinite(metrics["loss"])
    if bad.any():  # checked before any checkpoint of this window's state
      first, seed = np.argwhere(bad)[0]
      step = int(np.max(steps)) - (len(active) - 1 - first)
      raise Diverged(step, int(seed), float(metrics["loss"][first, seed]))
    ran = active.sum(0)
    with np.errstate(invalid="ignore"):  # a seed that had stopped ran no step: NaN
      accuracy = np.where(ran > 0, (metrics["accuracy"] * active).sum(0) / ran, accuracy)
      loss = (metrics["loss"] * active).sum(0) / ran
    # Program steps: those where any seed was still training (seeds advance together).
    steps_per_sec = int(active.any(1).sum()) / elapsed
    on_metrics({"step": as_list(np.asarray(steps)), "loss": as_list(loss),
                "train_accuracy": as_list(accuracy), "streak": as_list(np.asarray(streak)),
                "steps_per_sec": steps_per_sec,
                # An upper bound: the accuracy rule may stop the run before the step cap.
                # Stopped seeds stay behind; the running ones, all at the furthest step, set it.
                "eta_seconds": (stop.max_steps - int(np.max(steps))) / steps_per_sec})
    steps = np.atleast_1d(steps)
    if should_stop():
      on_checkpoint(state)
      raise StopRequested(int(steps.max()))
    if steps.max() - last_checkpoint >= checkpoint_every:
      on_checkpoint(state)
      last_checkpoint = steps.max()
  on_checkpoint(state)
  reasons = [STOP_REASONS[int(r)] for r in np.atleast_1d(jax.device_get(state.stop_reason))]
  final = [None if np.isnan(a) else float(a) for a in np.atleast_1d(accuracy)]
  logging.info("training stopped at step %s (%s)", as_list(steps), ", ".join(reasons))
  if seeds:
    return TrainResult(state=state, stop_reason=reasons, steps=steps.tolist(),
                       final_train_accuracy=final, seconds=seconds)
  return TrainResult(state=state, stop_reason=reasons[0], steps=int(steps[0]),
                     final_train_accuracy=final[0], seconds=seconds)
