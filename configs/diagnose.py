r"""Every invariance measure of one trained network: this package's checkpoints or imported weights.

  python -m transinv_jax.main --config=configs/diagnose.py --workdir=runs/diag \
      --config.checkpoint=runs/exp1/stages/vanilla_mnist-<key>
  python -m transinv_jax.main --config=configs/diagnose.py --workdir=runs/diag_in \
      --config.checkpoint=vgg16-397923af.pth --config.data.dataset=fashion_mnist

``config.checkpoint``: an export folder (``export/seed<s>``), a stage folder (every seed), a run
directory (with ``--config.stage`` when it has several stages), or a torchvision ``.pth`` / Keras
VGG16 ``.h5`` file read as ``config.model`` describes (``--config.model.name=resnet18``). For this
package's checkpoints the model, canvas and items come from the checkpoint; set
``--config.data.<key>`` to change what it is measured on. The measures and their settings are in
``config.eval`` (see ``transinv_jax/experiments/diagnostics.py``): Azulay & Weiss' top-1 change,
jaggedness, MAD and nonshiftability along a 1 px path, equivariance error per layer, Zhang's
consistency and diagonal curve, the cosine similarity per layer. Writes ``report.json`` and the
figures under ``tests/invariance/``.

Config arguments: ``size=smoke|paper`` (short form ``smoke``): ``smoke`` measures fewer items on
shorter paths.

Expected cost: 200 items x (33 + 33 shifts + 10 consistency canvases) plus the similarity of one
item per class over 19 positions, per seed: under a minute per seed for VGG16 at 224 on one GPU;
a few minutes on a CPU at the smoke sizes.
"""

import ml_collections

from transinv_jax.experiments import arguments, spec

SCHEMA = {"size": arguments.size_key("smoke")}


def get_config(arg: str | None = None):
  """diagnose config; ``arg`` is ``None`` or ``"smoke"``."""
  smoke = arguments.parse_args(arg, SCHEMA, "configs/diagnose.py").size == "smoke"
  base = spec.base_config("diagnose")
  config = ml_collections.ConfigDict()
  config.experiment = "diagnose"
  config.checkpoint = ""                # export / stage folder, run directory, .pth or .h5
  config.stage = ""                     # a run directory with several stages: which one
  config.split = "test"                 # the items measured: test | train | val
  config.seed = 0                       # the consistency draws
  # Unset keys (None) come from the checkpoint (weights files: the defaults of spec.base_config
  # and models.default_config); set ones replace them.
  config.data = spec.placeholders(base.data)
  config.model = spec.placeholders(base.model)
  config.eval = base.eval
  if smoke:
    config.eval.invariance_items = 24
    config.eval.max_shift = 16
    config.eval.consistency_offset = 16
    config.eval.consistency_pairs = 2
  return config
