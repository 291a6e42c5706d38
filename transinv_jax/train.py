"""Training: a pure jitted step over canvases made on the device, a stop rule, and the loop.

Each step draws its items and their locations from a key folded with the step number, renders the
canvases on the device (each device its own shard of the batch), and updates the replicated params.
The stop rule runs on the device: once it fires, further steps leave the state untouched, so the
run stops at the exact step whatever the sync interval. It is Biscione & Bowers' rule as their
framework computes it: training accuracy averaged over blocks of consecutive steps (their
``StandardMetrics``), stopping once every block mean has stayed at the goal for a number of steps
(their ``TriggerActionWithPatience``); see ``StopRule``.

Every train state carries a leading ``[seeds]`` axis (one seed is ``S = 1``): the repetitions of
a condition are trained side by side, each with its own params, batches, dropout and stop rule.
``SeedsRunner`` runs them in one of ``SEEDS_MODES``:

  sequential  (default) every seed through the one compiled single-seed program, round-robin: a
              window of steps of seed 0, then of seed 1, ... Plain convolutions, one compilation
              whatever the number of seeds, and a seed that has stopped is no longer dispatched.
  vmap        all seeds in one program by ``jax.vmap``. Every conv becomes a grouped conv
              (``feature_group_count = seeds``), which XLA's GPU backend runs far slower (its
              weight gradients are not matched as backward-filter convs) and which is gathered
              onto every device when the batch is sharded; kept for comparison.
  lax_map     all seeds in one program by ``lax.map``: plain convs in a loop. One dispatch per
              window for all seeds; stopped seeds still compute (as no-ops), as in vmap.

Round-robin rather than one seed to the end and then the next: every checkpoint, progress record,
preemption stop and ETA then covers all seeds at once, and a resume restores one stacked state.

The host never idles the device: ``train_loop`` dispatches the next window of steps before it
fetches the previous window's metrics, writes them, and checkpoints.
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
from etils import epath
from flax.training import train_state
from jax.sharding import Mesh

from transinv_jax import sharding
from transinv_jax import workdir as workdir_lib
from transinv_jax.data import locations

RUNNING, STOP_ACCURACY, STOP_MAX_STEPS = 0, 1, 2
STOP_REASONS = {RUNNING: "running", STOP_ACCURACY: "accuracy", STOP_MAX_STEPS: "max_steps"}
SEEDS_MODES = ("sequential", "vmap", "lax_map")

# (images uint8 [batch, s, s, c], centres int32 [batch, 2]) -> model input [batch, H, W, C].
RenderFn = Callable[[jax.Array, jax.Array], jax.Array]
Metrics = dict[str, jax.Array]


class Diverged(RuntimeError):
  """The loss became NaN or infinite: training stopped before saving the bad state.

  Attributes:
    step: the first step whose loss was not finite.
    seed: the index of the first seed that diverged.
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
    streak: steps, in whole blocks of the stop rule, whose block means reached the threshold
      in a row.
    block_sum: float32, the sum of the training accuracies of the current (unfinished) block.
    block_mean: float32, the mean training accuracy of the last finished block (NaN before the
      first block ends).
    stop_reason: ``RUNNING``, ``STOP_ACCURACY`` or ``STOP_MAX_STEPS``.
  """
  batch_stats: Any
  streak: jax.Array
  block_sum: jax.Array
  block_mean: jax.Array
  stop_reason: jax.Array

  @property
  def variables(self) -> dict:
    """What ``model.apply`` takes: params, and batch_stats where the model has them."""
    return model_variables(self.params, self.batch_stats)

  @property
  def num_seeds(self) -> int:
    """The leading seeds axis (of a state from ``create_train_state``)."""
    return self.step.shape[0]


def model_variables(params: Any, batch_stats: Any) -> dict:
  return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


@dataclasses.dataclass(frozen=True)
class StopRule:
  """Stop once the training accuracy, averaged over blocks of ``block`` steps, has been >=
  ``threshold`` in every block of the last ``window`` steps; or at ``max_steps``.

  Biscione & Bowers' framework: ``StandardMetrics`` averages the accuracy of blocks of 5
  iterations (their logged runs' ``check_every``), and ``TriggerActionWithPatience`` fires once
  the block mean has stayed above the goal (0.75) for ``patience`` = 800 iterations, i.e. 160
  blocks in a row; at most 5000 iterations. The rule is checked at the end of each block (steps
  that are multiples of ``block``), so it fires at the first block end where the streak reaches
  ``window``. ``block = 1`` counts single batches (stricter: 800 batches of 32 in a row at
  >= 24/32 asks for about 93% true accuracy). ``window = 0`` disables the accuracy rule.
  Their trigger compares with ">", this rule with ">=": a block mean exactly at the goal counts.
  """
  threshold: float
  window: int
  max_steps: int
  block: int = 1


def create_train_state(model: Any, keys: jax.Array, input_shape: tuple[int, ...],
                       learning_rate: float, mesh: Mesh,
                       trainable: Callable[[Any], Any] | None = None) -> TrainState:
  """Initialises one state per seed, stacked on a leading axis and replicated over ``mesh``.

  Args:
    model: a Flax module called as ``model(x, train=...)``.
    keys: PRNG keys ``[seeds]`` for the params, one per seed (``jax.random.split(key, 1)`` for
      one seed).
    input_shape: one input's shape, ``[height, width, channels]``.
    learning_rate: Adam's fixed learning rate.
    mesh: the device mesh.
    trainable: maps one seed's params to a same-shaped tree of bools; parameters marked False
      are frozen (their updates are zero), e.g. ``finetune.trainable("frozen_conv")``. None
      trains everything.

  Returns:
    The initial state, step 0, every leaf ``[seeds, ...]``.
  """
  if keys.ndim != 1:
    raise ValueError(f"keys must be a [seeds] array of PRNG keys, got shape {keys.shape}")
  try:
    init = _init_program(model, tuple(input_shape), learning_rate, trainable, mesh)
  except TypeError:  # a module with unhashable attributes: compiled for this call only
    init = _init_program.__wrapped__(model, tuple(input_shape), learning_rate, trainable, mesh)
  return init(keys)


@functools.lru_cache(maxsize=16)
def _init_program(model: Any, input_shape: tuple[int, ...], learning_rate: float,
                  trainable: Callable[[Any], Any] | None, mesh: Mesh) -> Callable:
  """``create_train_state``'s jitted init, cached so that equal calls compile once."""
  tx = optax.adam(learning_rate)
  if trainable is not None:
    labels = lambda params: jax.tree.map(lambda t: "train" if t else "frozen", trainable(params))
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)

  def init(key):
    variables = model.init({"params": key}, jnp.zeros((1, *input_shape), jnp.float32))
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                              batch_stats=variables.get("batch_stats", {}),
                              streak=jnp.int32(0), block_sum=jnp.float32(0),
                              block_mean=jnp.float32(jnp.nan), stop_reason=jnp.int32(RUNNING))
    # A strongly typed step keeps the state's signature fixed across calls (no recompiles).
    return state.replace(step=jnp.int32(0))

  return jax.jit(jax.vmap(init), out_shardings=sharding.replicated(mesh))


def train_step(state: TrainState, items: Items, key: jax.Array, *, render: RenderFn,
               sampler: locations.Sampler, batch_size: int, stop: StopRule,
               mesh: Mesh) -> tuple[TrainState, Metrics]:
  """One Adam step of one seed on a batch drawn, placed and rendered on the device; a no-op once
  stopped.

  Items are drawn uniformly with replacement, so a step's batch depends only on ``key`` and the
  step number: a resumed run sees exactly the batches an uninterrupted one would.

  Once the stop rule has fired, the step still computes but keeps the old state (a select, not
  ``lax.cond``: control flow around the model takes XLA:CPU off its fast path, 10x slower), so the
  host can dispatch many steps between syncs and still stop at the exact step.

  Args:
    state: one seed's train state (no seeds axis).
    items: the training items on the device.
    key: the seed's data key; each step folds in its step number.
    render: composes model input from items and centres.
    sampler: where the items go.
    batch_size: global batch size (split over the mesh).
    stop: the stop rule.
    mesh: the device mesh.

  Returns:
    ``(new_state, metrics)``: ``loss``, ``accuracy``, ``active`` (False for a no-op step), and
    the new state's ``step``, ``streak``, ``block_mean`` and ``stop_reason``, so the host learns
    them without touching the state (whose buffers the next call takes over).
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
  new = new.replace(**_stop_rule(state, new.step, accuracy, stop))
  active = state.stop_reason == RUNNING
  new = jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state)
  return new, {"loss": loss, "accuracy": accuracy, "active": active, "step": new.step,
               "streak": new.streak, "block_mean": new.block_mean,
               "stop_reason": new.stop_reason}


def _stop_rule(state: TrainState, step: jax.Array, accuracy: jax.Array,
               stop: StopRule) -> dict[str, jax.Array]:
  """The stop rule's memory after a step of ``accuracy`` that brought the count to ``step``.

  Blocks are aligned to the step count (steps 1..block, block+1..2 block, ...), as the authors'
  ``tot_iter % check_every``, so a resumed run checks the same blocks.
  """
  block_sum = state.block_sum + accuracy.astype(jnp.float32)
  ends = step % stop.block == 0
  mean = block_sum / stop.block
  block_mean = jnp.where(ends, mean, state.block_mean)
  streak = jnp.where(ends, jnp.where(mean >= stop.threshold, state.streak + stop.block, 0),
                     state.streak).astype(jnp.int32)
  reason = jnp.where((stop.window > 0) & (streak >= stop.window), STOP_ACCURACY,
                     jnp.where(step >= stop.max_steps, STOP_MAX_STEPS, RUNNING))
  return {"streak": streak, "block_sum": jnp.where(ends, 0.0, block_sum).astype(jnp.float32),
          "block_mean": block_mean.astype(jnp.float32), "stop_reason": reason.astype(jnp.int32)}


def train_steps(state: TrainState, items: Items, key: jax.Array, *, num_steps: int,
                **step_kwargs) -> tuple[TrainState, Metrics]:
  """``num_steps`` calls of ``train_step`` for one seed (``lax.scan`` when > 1).

  Scanning saves dispatches for small batches on GPU/TPU; on CPU keep ``num_steps = 1``, since
  XLA:CPU runs the model about 10x slower inside a loop.

  Returns:
    ``(state, metrics)``, each metric ``[num_steps]``.
  """
  step = functools.partial(train_step, items=items, key=key, **step_kwargs)
  if num_steps == 1:
    state, metrics = step(state)
    return state, jax.tree.map(lambda m: m[None], metrics)
  return jax.lax.scan(lambda s, _: step(s), state, None, length=num_steps)


def seeds_together(state: TrainState, items: Items, keys: jax.Array, *, mode: str,
                   num_steps: int, **step_kwargs) -> tuple[TrainState, Metrics]:
  """``train_steps`` for every seed in one program: ``mode`` is ``"vmap"`` or ``"lax_map"``.

  Args:
    state: the states, every leaf ``[seeds, ...]``.
    items: the training items (shared by the seeds).
    keys: ``[seeds]`` data keys.
    mode: ``"vmap"`` (grouped convs) or ``"lax_map"`` (a loop over seeds of plain convs).
    num_steps: steps per seed.
    **step_kwargs: the keyword-only arguments of ``train_step``.

  Returns:
    ``(state, metrics)``, each metric ``[seeds, num_steps]``.
  """
  one = lambda s, k: train_steps(s, items, k, num_steps=num_steps, **step_kwargs)
  if mode == "vmap":
    return jax.vmap(one)(state, keys)
  return jax.lax.map(lambda args: one(*args), (state, keys))


@functools.partial(jax.jit, static_argnums=1)
def _unstack(state: TrainState, num_seeds: int) -> list[TrainState]:
  return [jax.tree.map(lambda x, i=i: x[i], state) for i in range(num_seeds)]


@jax.jit
def _stack(states: list[TrainState]) -> TrainState:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


@jax.jit
def _copy(state: TrainState) -> TrainState:
  return jax.tree.map(jnp.copy, state)


@functools.lru_cache(maxsize=16)
def _program(mode: str, scan_steps: int, step_kwargs: frozenset) -> Callable:
  """The jitted program of ``mode`` (state donated), one per distinct step arguments: runners
  with equal ``render``, ``sampler``, ``stop``, ``batch_size`` and ``mesh`` share its
  compilation."""
  if mode == "sequential":
    fn = functools.partial(train_steps, num_steps=scan_steps, **dict(step_kwargs))
  else:
    fn = functools.partial(seeds_together, mode=mode, num_steps=scan_steps, **dict(step_kwargs))
  return jax.jit(fn, donate_argnums=0)


class SeedsRunner:
  """Dispatches steps of every seed of a stacked state, in one of ``SEEDS_MODES``.

  The runner owns the state from then on: each call donates its input buffers, so read the
  state through ``state`` or ``snapshot()``, never through the array passed in.
  """

  def __init__(self, mode: str, state: TrainState, items: Items, keys: jax.Array, *,
               scan_steps: int, **step_kwargs):
    """
    Args:
      mode: one of ``SEEDS_MODES``.
      state: the states, every leaf ``[seeds, ...]``.
      items: the training items on the device.
      keys: ``[seeds]`` data keys.
      scan_steps: steps per dispatch of each seed.
      **step_kwargs: the keyword-only arguments of ``train_step``.
    """
    if mode not in SEEDS_MODES:
      raise ValueError(f"unknown seeds mode {mode!r}; use one of {', '.join(SEEDS_MODES)}")
    self.mode, self.num_seeds, self._items = mode, state.num_seeds, items
    # In sequential mode one single-seed program serves every seed: plain convs, compiled once.
    self._run = _program(mode, scan_steps, frozenset(step_kwargs.items()))
    if mode == "sequential":
      self._states = _unstack(state, self.num_seeds)
      self._keys = list(keys)
    else:
      self._stacked, self._keys = state, keys

  def dispatch(self, running: np.ndarray) -> list[Metrics | None] | Metrics:
    """Dispatches one call for every seed (asynchronously); returns what ``fetch`` takes.

    Args:
      running: bool [seeds]; in sequential mode, seeds marked False are not dispatched (their
        state stays as it is). The other modes step every seed (a stopped one as a no-op).
    """
    if self.mode != "sequential":
      self._stacked, metrics = self._run(self._stacked, self._items, self._keys)
      return metrics
    out = []
    for i, go in enumerate(running):
      metrics = None
      if go:
        self._states[i], metrics = self._run(self._states[i], self._items, self._keys[i])
      out.append(metrics)
    return out

  def fetch(self, parts: list) -> dict[str, np.ndarray]:
    """The metrics of ``dispatch`` results on the host, ``[steps, seeds]`` each.

    Waits for those calls only. A seed that was not dispatched gets ``active`` False, NaN loss
    accuracy and block mean, and -1 for ``step``, ``streak`` and ``stop_reason`` (unknown: keep
    the last).
    """
    parts = jax.device_get(parts)
    if self.mode != "sequential":  # [seeds, steps] per call
      return {k: np.concatenate([p[k] for p in parts], axis=1).T for k in parts[0]}
    steps = len(next(m for m in parts[0] if m is not None)["loss"])
    absent = {"loss": np.nan, "accuracy": np.nan, "active": False, "step": -1, "streak": -1,
              "block_mean": np.nan, "stop_reason": -1}
    columns = {k: [] for k in absent}
    for k, fill in absent.items():
      for call in parts:
        columns[k].append(np.stack([m[k] if m is not None else np.full(steps, fill)
                                    for m in call], axis=1))
    return {k: np.concatenate(v) for k, v in columns.items()}

  @property
  def state(self) -> TrainState:
    """The current states, stacked ``[seeds, ...]`` (in sequential mode a new array)."""
    return _stack(self._states) if self.mode == "sequential" else self._stacked

  def snapshot(self) -> TrainState:
    """A copy of the current states that later dispatches leave intact (for a checkpoint)."""
    return _stack(self._states) if self.mode == "sequential" else _copy(self._stacked)

  def block(self) -> None:
    """Waits until every dispatched call has finished."""
    jax.block_until_ready(self._states if self.mode == "sequential" else self._stacked)


@jax.jit
def _finite_params(params: Any) -> jax.Array:
  """bool [seeds]: whether every parameter of each seed is finite."""
  return jnp.stack([jnp.isfinite(x).reshape((x.shape[0], -1)).all(-1)
                    for x in jax.tree.leaves(params)]).all(0)


def _save_if_finite(save: Callable[[TrainState], None], state: TrainState) -> None:
  """Checkpoints ``state`` unless a parameter is NaN or inf (then raises ``Diverged``).

  The loss check sees each step's loss before its update; an update that overflows shows in the
  params first, so they are checked before anything is saved.
  """
  finite = np.asarray(jax.device_get(_finite_params(state.params)))
  if not finite.all():
    seed = int(np.flatnonzero(~finite)[0])
    raise Diverged(int(jax.device_get(state.step)[seed]), seed)
  save(state)


@dataclasses.dataclass
class TrainResult:
  """What ``train_loop`` ends with; every list has one entry per seed.

  Attributes:
    state: the final train state ``[seeds, ...]``.
    stop_reason: ``"accuracy"`` or ``"max_steps"``.
    steps: steps taken in all, including those before a resume.
    final_train_accuracy: mean training accuracy over the seed's last log window (None if this
      call took no step of that seed, e.g. a resumed run that had already stopped).
    seconds: wall time of this call's steps.
    block_mean: the stop rule's block mean at the stop (the last finished block; None before
      the first block ends).
  """
  state: TrainState
  stop_reason: list[str]
  steps: list[int]
  final_train_accuracy: list[float | None]
  seconds: float
  block_mean: list[float | None] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Window:
  """One window of dispatched calls whose metrics the host has not read yet."""
  parts: list
  snapshot: TrainState | None  # the state at the window's end, when it is to be checkpointed


def train_loop(state: TrainState, items: Items, keys: jax.Array, *, stop: StopRule,
               log_every: int, scan_steps: int, on_metrics: Callable[[dict], None],
               on_checkpoint: Callable[[TrainState], None], checkpoint_every: int,
               seeds_mode: str = "sequential", should_stop: Callable[[], bool] = lambda: False,
               **step_kwargs) -> TrainResult:
  """Trains every seed until its stop rule fires, syncing with the device once per window.

  A window is ``log_every`` steps of every running seed. The next window is dispatched before the
  host reads the last one's metrics, writes them and checkpoints, so the device never waits for
  the host. The step cap is foreseen (no seed is dispatched past it), but a stop by the accuracy
  rule is seen one window late: that seed gets at most one more window of no-op steps, which leave
  its state unchanged (in sequential mode it is not dispatched after that).

  Args:
    state: the (possibly restored) train state ``[seeds, ...]``; returned at once if every seed
      has already stopped.
    items: training items on the device.
    keys: ``[seeds]`` data keys.
    stop: the stop rule.
    log_every: steps between host syncs (and metrics records); a multiple of ``scan_steps``.
    scan_steps: steps per compiled call.
    on_metrics: receives one record per window: per-seed lists ``step``, ``loss``,
      ``train_accuracy``, ``streak``, ``block_mean`` (the stop rule's last block); and ``steps_per_sec`` (program steps: those where any seed
      ran), ``eta_seconds`` (to the step cap).
    on_checkpoint: saves a state; called every ``checkpoint_every`` steps and at the end.
    checkpoint_every: steps between checkpoints.
    seeds_mode: how the seeds run, one of ``SEEDS_MODES`` (see the module docstring).
    should_stop: asked after every window (e.g. ``preemption.requested``); True checkpoints the
      newest state and raises ``StopRequested``.
    **step_kwargs: the other keyword-only arguments of ``train_step``.

  Returns:
    The final state and what stopped each seed.

  Raises:
    Diverged: a loss or a parameter that is not finite (NaN or inf); that state is not
      checkpointed, so the last checkpoint is the last good one.
    StopRequested: ``should_stop()`` was True; the state was checkpointed first.
  """
  runner = SeedsRunner(seeds_mode, state, items, keys, scan_steps=scan_steps, stop=stop,
                       **step_kwargs)
  save = functools.partial(_save_if_finite, on_checkpoint)
  steps, streak, block_mean, reason = (np.asarray(a) for a in jax.device_get(
      (state.step, state.streak, state.block_mean, state.stop_reason)))
  del state  # the runner owns (and donates) its buffers now
  running = reason == RUNNING
  accuracy = np.full(steps.shape, np.nan)
  # Steps dispatched to each seed: an upper bound of its step, so that a seed is not dispatched
  # past the step cap (a stop the host can foresee) while the last window is still unread.
  planned = steps.copy()
  last_checkpoint = int(steps.max())
  seconds, clock = 0.0, time.perf_counter()

  def read(window: _Window) -> None:
    """Fetches a window's metrics (waiting for it), checks them, records them, checkpoints."""
    nonlocal steps, streak, block_mean, running, accuracy, seconds, clock
    metrics = runner.fetch(window.parts)  # [steps, seeds]
    now = time.perf_counter()
    elapsed, clock = now - clock, now
    seconds += elapsed
    active = metrics["active"]
    bad = active & ~np.isfinite(metrics["loss"])
    if bad.any():  # checked before any checkpoint of this window's state
      first, seed = np.argwhere(bad)[0]
      raise Diverged(int(metrics["step"][first, seed]), int(seed),
                     float(metrics["loss"][first, seed]))
    known = metrics["step"][-1] >= 0  # seeds dispatched in this window
    steps = np.where(known, metrics["step"][-1], steps)
    streak = np.where(known, metrics["streak"][-1], streak)
    block_mean = np.where(known, metrics["block_mean"][-1], block_mean)
    running = np.where(known, metrics["stop_reason"][-1] == RUNNING, running)
    ran = active.sum(0)
    with np.errstate(invalid="ignore"):  # a seed that ran no step: NaN
      accuracy = np.where(ran > 0, np.where(active, metrics["accuracy"], 0).sum(0) / ran,
                          accuracy)
      loss = np.where(active, metrics["loss"], 0).sum(0) / ran
    if not active.any():  # dispatched before the host saw every seed stop: nothing ran
      return
    steps_per_sec = int(active.any(1).sum()) / elapsed
    on_metrics({"step": steps.tolist(), "loss": loss.tolist(),
                "train_accuracy": accuracy.tolist(), "streak": streak.tolist(),
                "block_mean": block_mean.tolist(),
                "steps_per_sec": steps_per_sec,
                # An upper bound: the accuracy rule may stop the run before the step cap.
                "eta_seconds": (stop.max_steps - int(steps.max())) / max(steps_per_sec, 1e-9)})
    if window.snapshot is not None:
      save(window.snapshot)

  pending = None
  while True:
    go = running & (planned < stop.max_steps)
    window = None
    if go.any():  # the next window goes to the device before the host reads the last
      window = _Window([runner.dispatch(go) for _ in range(log_every // scan_steps)], None)
      planned = np.where(go, planned + log_every, planned)
      if planned.max() - last_checkpoint >= checkpoint_every:
        window.snapshot, last_checkpoint = runner.snapshot(), int(planned.max())
    elif pending is None:
      break
    if pending is not None:
      read(pending)
      if should_stop():
        if window is not None:
          read(window)
        save(runner.state)
        raise StopRequested(int(steps.max()))
    pending = window
  final = runner.state
  save(final)
  reason, steps, block_mean = jax.device_get((final.stop_reason, final.step, final.block_mean))
  reasons = [STOP_REASONS[int(r)] for r in reason]
  steps = [int(s) for s in steps]
  logging.info("training stopped at step %s (%s)", steps, ", ".join(reasons))
  return TrainResult(state=final, stop_reason=reasons, steps=steps,
                     final_train_accuracy=[None if np.isnan(a) else float(a) for a in accuracy],
                     seconds=seconds,
                     block_mean=[None if np.isnan(b) else float(b) for b in block_mean])


def last_accuracies(accuracy: list[float | None], metrics: epath.PathLike) -> list[float | None]:
  """``accuracy`` (``TrainResult.final_train_accuracy``) with each seed's None filled from the
  last record in ``metrics`` (``metrics.jsonl``) that holds it: a run resumed after training had
  ended (killed during its export) takes no step, but its records say how training ended."""
  if all(a is not None for a in accuracy) or not epath.Path(metrics).exists():
    return accuracy
  filled = list(accuracy)
  for record in workdir_lib.read_metrics(metrics):
    for i, value in enumerate(record.get("train_accuracy", ())[:len(filled)]):
      if accuracy[i] is None and value is not None and np.isfinite(value):
        filled[i] = float(value)
  return filled
