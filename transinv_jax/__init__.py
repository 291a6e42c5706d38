"""transinv_jax: translation invariance of CNNs, reproduced and extended in JAX/Flax."""

__version__ = "0.1.0"
