"""Fine-tuning policies: which layers train, and what a fine-tune takes over from its parent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transinv_jax import finetune, models, sharding, train


def _model(name="vgg11", num_classes=10, **knobs):
  config = models.default_config()
  config.update(name=name, width=1 / 16, dropout=0.0, batch_norm=knobs.pop("batch_norm", False))
  return models.build_model(config, num_classes)


def _labels(policy, model):
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  labels = finetune.trainable(policy)(variables["params"])
  return {name: set(jax.tree.leaves(tree)) for name, tree in labels.items()}


def test_policies_mark_the_right_layers():
  assert finetune.trainable("all") is None
  frozen = _labels("frozen_conv", _model(batch_norm=True))
  assert frozen["conv1_1"] == frozen["bn1_1"] == {False}
  assert frozen["fc6"] == frozen["fc7"] == frozen["logits"] == {True}
  head = _labels("classifier", _model())
  assert head["logits"] == {True} and head["fc7"] == head["conv1_1"] == {False}
  # A network without convolutions trains every layer under frozen_conv.
  assert set().union(*_labels("frozen_conv", _model("fcn")).values()) == {True}
  with pytest.raises(ValueError, match="frozen_conv"):
    finetune.trainable("frozen")


@pytest.mark.parametrize("policy,changed", [
    ("frozen_conv", {"fc6", "fc7", "logits"}),
    ("classifier", {"logits"}),
    ("all", {"conv1_1", "fc6", "fc7", "logits"}),
])
def test_frozen_layers_do_not_move_in_training(policy, changed):
  model, mesh = _model(), sharding.make_mesh()
  state = train.create_train_state(model, jax.random.key(0)[None], (32, 32, 3), 1e-2, mesh,
                                   trainable=finetune.trainable(policy))
  state = jax.tree.map(lambda x: x[0], state)  # one seed, as train_steps takes it
  before = jax.device_get(state.params)
  rng = np.random.default_rng(0)
  items = train.Items(images=jnp.asarray(rng.integers(0, 256, (64, 8, 8, 1), np.uint8)),
                      labels=jnp.asarray(rng.integers(0, 10, 64), jnp.int32))
  render = lambda images, centres: jnp.broadcast_to(
      jnp.pad(images, ((0, 0), (12, 12), (12, 12), (0, 0))).astype(jnp.float32) / 255,
      (images.shape[0], 32, 32, 3))
  for _ in range(2):
    state, _ = train.train_steps(
        state, items, jax.random.key(1), num_steps=1, render=render,
        sampler=lambda key, labels: jnp.zeros((labels.shape[0], 2), jnp.int32), batch_size=8,
        stop=train.StopRule(1.1, 0, 100), mesh=mesh)
  after = jax.device_get(state.params)
  moved = {name for name in ("conv1_1", "fc6", "fc7", "logits")
           if not np.array_equal(before[name]["kernel"], after[name]["kernel"])}
  assert moved == changed


def test_transfer_keeps_everything_but_a_fresh_output_layer():
  parent = jax.jit(_model(num_classes=26).init)(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
  child = jax.jit(_model(num_classes=10).init)(jax.random.key(2), jnp.zeros((1, 32, 32, 3)))
  out = finetune.transfer(parent, child)
  np.testing.assert_array_equal(out["params"]["conv1_1"]["kernel"],
                                parent["params"]["conv1_1"]["kernel"])
  np.testing.assert_array_equal(out["params"]["fc7"]["bias"], parent["params"]["fc7"]["bias"])
  np.testing.assert_array_equal(out["params"]["logits"]["kernel"],
                                child["params"]["logits"]["kernel"])
  # Stacked over seeds works the same way.
  stack = lambda v: jax.tree.map(lambda *x: jnp.stack(x), v, v)
  assert finetune.transfer(stack(parent), stack(child))["params"]["fc6"]["kernel"].shape[0] == 2
  other = jax.jit(_model("vgg13").init)(jax.random.key(2), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="conv1_2"):
    finetune.transfer(parent, other)
