"""Fine-tuning: what a network takes over from the stage it starts from, and which layers train.

Every model of the zoo names its output layer ``logits`` (ResNets: ``fc``, torchvision's name). A
fine-tune starts from its parent's
variables with a fresh ``logits`` layer (the new dataset's classes), and trains per ``POLICIES``:

  all          every layer (the paper's fine-tuning)
  classifier   only the output layer (a linear probe of the parent's features)
  frozen_conv  the fully connected layers (fc6, fc7, logits); convolutions and norms stay frozen
"""

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp

POLICIES = ("all", "classifier", "frozen_conv")
HEADS = ("logits", "fc")  # the output layer: VGG, FCN, RookNet / ResNet


def num_outputs(params: Mapping) -> int:
  """The class count of a network's params (its output layer's width)."""
  for name in HEADS:
    if name in params:
      return int(params[name]["kernel"].shape[-1])
  raise ValueError(f"no output layer ({' or '.join(HEADS)}) among {sorted(params)}")


def _is_conv_part(module: Mapping) -> bool:
  """A top-level module of the feature extractor: a conv (4-D kernel) or a norm (no kernel)."""
  flat = flax.traverse_util.flatten_dict(dict(module))
  kernels = [v for k, v in flat.items() if k[-1] == "kernel"]
  return not kernels or any(len(k.shape) >= 4 for k in kernels)


def trainable(policy: str) -> Callable[[Any], Any] | None:
  """The ``trainable`` argument of ``train.create_train_state`` for a fine-tuning policy.

  Args:
    policy: one of ``POLICIES``.

  Returns:
    None for ``"all"``; else a function from one seed's params to a tree of bools.
  """
  if policy == "all":
    return None
  if policy not in POLICIES:
    raise ValueError(f"unknown fine-tuning policy {policy!r}; use one of {POLICIES}")

  def labels(params):
    out = {}
    for name, module in params.items():
      train = name in HEADS if policy == "classifier" else not _is_conv_part(module)
      out[name] = jax.tree.map(lambda _, t=train: t, module)
    return type(params)(out) if isinstance(params, dict) else out

  return labels


def transfer(parent: Mapping, child: Mapping) -> dict:
  """The child's variables filled with the parent's, except the fresh output layer.

  Args:
    parent: the trained variables (``{"params": ..., "batch_stats": ...}``), possibly stacked
      over seeds.
    child: the freshly initialised variables of the fine-tuned model, stacked the same way.

  Returns:
    ``child``'s tree holding the parent's values everywhere but the output layer.

  Raises:
    ValueError: a layer missing from the parent or of another shape (the two stages' models
      differ).
  """
  old = flax.traverse_util.flatten_dict(dict(parent))
  new = flax.traverse_util.flatten_dict(dict(child))
  out = {}
  for key, fresh in new.items():
    if key[1] in HEADS:
      out[key] = fresh
      continue
    value = old.get(key)
    if value is None or jnp.shape(value) != jnp.shape(fresh):
      got = "missing" if value is None else f"of shape {jnp.shape(value)}"
      raise ValueError(f"layer {'/'.join(key)} is {got} in the parent stage but "
                       f"{jnp.shape(fresh)} in the fine-tuned model: a fine-tune must use its "
                       "parent's model (only the class count may differ)")
    # A copy: training donates its state, and the parent's arrays serve other fine-tunes too.
    out[key] = jnp.array(value, fresh.dtype, copy=True)
  return flax.traverse_util.unflatten_dict(out)
