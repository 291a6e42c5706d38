r"""Exports a finished run's model as a torchvision state_dict, for PyTorch users.

  python -m transinv_jax.export --workdir=runs/exp1 --stage=vanilla_mnist --seed=0 \
      --out=runs/exp1/vgg16.pth

Reads a trained stage's ``export/seed<s>`` folder (``<stage_dir>/<stage>-<key>/export/seed<s>``,
written when the stage finishes; ``--stage`` may be left out where the run has one stage, and
``--workdir`` may also name an export folder itself) and writes a ``torch.save`` file whose
keys are torchvision's (``features.0.weight`` ..., ``layer1.0.conv1.weight`` ...): load it with
``torchvision.models.vgg16(num_classes=...).load_state_dict(torch.load(path))``. VGG and ResNet
models only; needs PyTorch.
"""

import io
import sys

from absl import app, flags
from etils import epath

from transinv_jax import checkpoints
from transinv_jax import workdir as workdir_lib
from transinv_jax.models import pretrained

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's directory (local or gs://).")
_STAGE = flags.DEFINE_string("stage", "", "The stage to export (its name, as in the config).")
_SEED = flags.DEFINE_integer("seed", None, "Which seed's network (default: the first).")
_OUT = flags.DEFINE_string("out", None, "The .pth file to write (local or gs://).")
flags.mark_flags_as_required(["workdir", "out"])


def find_export(workdir: str, stage: str = "", seed: int | None = None) -> epath.Path:
  """The export folder of ``stage`` (and ``seed``) in a run, or ``workdir`` if it is one.

  Args:
    workdir: a run folder or an export folder, local or gs:// (read through epath).
    stage: the stage's name; may be empty where the run has one finished stage.
    seed: which seed's export (default: the first).

  Returns:
    The export folder (``variables.npz`` and ``config.json``).
  """
  workdir = epath.Path(workdir)
  if (workdir / checkpoints.VARIABLES_FILE).is_file():
    return workdir
  stages = sorted((workdir / "stages").glob(f"{stage or '*'}-*/export"))
  if len(stages) != 1:
    names = sorted(p.parent.name.rsplit("-", 1)[0] for p in
                   (workdir / "stages").glob("*-*/export"))
    raise checkpoints.CheckpointError(
        f"{workdir}: {'no' if not stages else 'more than one'} finished stage"
        f"{' named ' + repr(stage) if stage else ''} found; pass --stage= one of "
        f"{names or 'none (run the experiment first)'}")
  seeds = sorted(stages[0].glob("seed*"), key=lambda p: int(p.name[4:]))
  chosen = [p for p in seeds if seed is None or p.name == f"seed{seed}"][:1]
  if not chosen:
    raise checkpoints.CheckpointError(
        f"{stages[0]} has no seed {seed}; it has {[int(p.name[4:]) for p in seeds]}")
  return chosen[0]


def export_torchvision(workdir: str, out: str, stage: str = "", seed: int | None = None) -> str:
  """Writes a stage's variables as a torchvision state_dict; returns the model name."""
  variables, config = checkpoints.load_exported(find_export(workdir, stage, seed))
  name = config["model"]["name"]
  if name not in pretrained.TORCHVISION_MODELS:
    raise ValueError(f"{name} has no torchvision counterpart; export supports "
                     f"{', '.join(pretrained.TORCHVISION_MODELS)}")
  buffer = io.BytesIO()  # torch.save writes a local file or a buffer; the bytes go through epath
  pretrained.save_torchvision(variables, name, buffer)
  workdir_lib.write_bytes_atomic(out, buffer.getvalue())
  return name


def main(argv):
  del argv
  try:
    name = export_torchvision(_WORKDIR.value, _OUT.value, _STAGE.value, _SEED.value)
  except (checkpoints.CheckpointError, ValueError, ImportError) as e:
    sys.exit(f"error: {e}")
  print(f"wrote {name} as a torchvision state_dict to {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
