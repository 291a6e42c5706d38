"""Model zoo: every model is a Flax linen module returning ``(logits, intermediates)``."""

import jax.numpy as jnp
import ml_collections

from transinv_jax.models import vgg

MODELS = {
    "vgg11": vgg.VGG11,
    "vgg13": vgg.VGG13,
    "vgg16": vgg.VGG16,
    "vgg19": vgg.VGG19,
}


def compute_dtype(name: str, platform: str) -> jnp.dtype:
  """``"auto"`` is bfloat16 on GPU/TPU and float32 on CPU (where bf16 convs are slow)."""
  if name == "auto":
    return jnp.float32 if platform == "cpu" else jnp.bfloat16
  return jnp.dtype(name)


def build_model(config: ml_collections.ConfigDict, num_classes: int, platform: str = "cpu"):
  """The module that ``config`` (a ``config.model`` section) describes.

  Args:
    config: ``name`` (one of ``MODELS``), ``width``, ``dropout``, ``dtype``.
    num_classes: size of the last layer.
    platform: ``jax.default_backend()``, to resolve ``dtype="auto"``.

  Returns:
    An unbound Flax module; ``init``/``apply`` it with ``x`` and ``train=``.
  """
  return MODELS[config.name](
      num_classes=num_classes,
      width=config.width,
      dropout_rate=config.dropout,
      dtype=compute_dtype(config.dtype, platform),
  )
