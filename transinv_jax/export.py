r"""Exports a finished run's model as a torchvision state_dict, for PyTorch users.

  python -m transinv_jax.export --workdir=runs/exp1 --out=runs/exp1/vgg16.pth

Reads ``<workdir>/export`` (written at the end of every run) and writes a ``torch.save`` file whose
keys are torchvision's (``features.0.weight`` ..., ``layer1.0.conv1.weight`` ...): load it with
``torchvision.models.vgg16(num_classes=...).load_state_dict(torch.load(path))``. VGG and ResNet
models only; needs PyTorch.
"""

import pathlib
import sys

from absl import app, flags

from transinv_jax import checkpoints
from transinv_jax.models import pretrained

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's directory.")
_OUT = flags.DEFINE_string("out", None, "The .pth file to write.")
flags.mark_flags_as_required(["workdir", "out"])


def export_torchvision(workdir: str, out: str) -> str:
  """Writes the run's variables as a torchvision state_dict; returns the model name."""
  variables, config = checkpoints.load_exported(pathlib.Path(workdir) / "export")
  name = config["model"]["name"]
  if name not in pretrained.TORCHVISION_MODELS:
    raise ValueError(f"{name} has no torchvision counterpart; export supports "
                     f"{', '.join(pretrained.TORCHVISION_MODELS)}")
  pretrained.save_torchvision(variables, name, out)
  return name


def main(argv):
  del argv
  try:
    name = export_torchvision(_WORKDIR.value, _OUT.value)
  except (checkpoints.CheckpointError, ValueError, ImportError) as e:
    sys.exit(f"error: {e}")
  print(f"wrote {name} as a torchvision state_dict to {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
