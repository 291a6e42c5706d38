"""Building blocks that models take as injected callables: convolutions and pooling.

Blocks never pick their own conv or pool: a model receives ``conv`` (a Flax module class, usually a
``functools.partial`` of ``nn.Conv``) and ``pool`` (a function of ``x``), so padding modes and
anti-aliased downsampling plug in without touching the model definitions.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any
PoolFn = Callable[[jax.Array], jax.Array]

# torchvision's VGG/ResNet initialisation: Kaiming normal, fan_out, ReLU gain; zero bias.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

Conv3x3 = functools.partial(nn.Conv, kernel_size=(3, 3), padding="SAME",
                            kernel_init=kaiming_normal_fan_out)


def max_pool(x: jax.Array, window: int = 2, stride: int = 2) -> jax.Array:
  """Max pooling over ``[batch, height, width, channels]``, no padding (floor, as PyTorch).

  A non-overlapping pool is written as a reshape and a max: XLA's ``select_and_scatter`` backward
  of ``reduce_window`` is a known slow path on GPU.
  """
  if window != stride:
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding="VALID")
  b, h, w, c = x.shape
  h, w = h // window * window, w // window * window
  x = x[:, :h, :w, :].reshape(b, h // window, window, w // window, window, c)
  return x.max(axis=(2, 4))
