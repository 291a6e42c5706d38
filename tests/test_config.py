"""configs/exp1.py: every dataset cell, the smoke variant, typed command-line overrides."""

import pytest
from absl import flags
from ml_collections import config_flags

import exp1
from conftest import REPO_ROOT
from transinv_jax import config_checks
from transinv_jax.data import sources


@pytest.mark.parametrize("dataset", exp1.DATASETS)
def test_each_dataset_cell_is_valid_at_the_papers_sizes(dataset):
  config = exp1.get_config(dataset)
  assert config.data.dataset == dataset and dataset in sources.DATASETS
  assert (config.data.canvas_size, config.data.item_size) == (224, 50)
  assert config.model.name == "vgg16" and config.model.width == 1.0
  assert config.train.learning_rate == 1e-4 and config.train.batch_size == 32
  assert (config.train.stop_accuracy, config.train.stop_window, config.train.max_steps) == (
      0.75, 800, 5000)
  config_checks.check_config(config, num_devices=1)


def test_smoke_and_default():
  assert exp1.get_config().data.dataset == "mnist"
  smoke = exp1.get_config("fashion_mnist,smoke")
  assert smoke.data.dataset == "fashion_mnist" and smoke.data.canvas_size == 64
  config_checks.check_config(smoke, num_devices=1)
  with pytest.raises(ValueError, match="unknown argument"):
    exp1.get_config("mnsit")
  with pytest.raises(ValueError, match="one dataset per run"):
    exp1.get_config("mnist,kmnist")


def test_command_line_overrides_are_typed():
  def parse(*overrides):
    argv = ["prog", f"--config={REPO_ROOT / 'configs/exp1.py'}:kmnist", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return values.config

  config = parse("--config.train.learning_rate=1e-3", "--config.data.canvas_size=128",
                 "--config.data.fixed_centre=(30,64)", "--config.seed=3")
  assert config.data.dataset == "kmnist"
  assert config.train.learning_rate == 1e-3 and config.data.canvas_size == 128
  assert tuple(config.data.fixed_centre) == (30, 64) and config.seed == 3
  with pytest.raises(flags.IllegalFlagValueError):
    parse("--config.train.batch_size=many")
  with pytest.raises(AttributeError, match='Did you mean "learning_rate"'):
    parse("--config.train.learnin_rate=1e-3")
