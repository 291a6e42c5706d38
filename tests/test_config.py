"""The experiment configs: every cell at the paper's sizes, cell selection, smoke variants,
typed command-line overrides."""

import importlib

import pytest
from absl import flags
from ml_collections import config_flags

from conftest import REPO_ROOT
from transinv_jax import config_checks
from transinv_jax.data import sources
from transinv_jax.experiments import pipeline, spec

# experiment -> (tests, stages) of the whole experiment.
SIZES = {"exp1": (12, 12), "exp2": (36, 42), "exp3": (2, 2), "exp4": (12, 12),
         "exp5": (84, 54), "fcn": (4, 6)}


def get(experiment, arg=None):
  return importlib.import_module(experiment).get_config(arg)


@pytest.mark.parametrize("experiment", sorted(SIZES))
def test_whole_experiment_is_valid_at_the_papers_sizes(experiment):
  config = get(experiment)
  config.imagenet_weights = __file__  # exp1 and exp5 need a file; its contents are not read here
  assert (len(config.tests), len(pipeline.stage_order(config))) == SIZES[experiment]
  assert (config.data.canvas_size, config.data.item_size, config.num_seeds) == (224, 50, 5)
  assert config.train.learning_rate == 1e-4 and config.train.batch_size == 32
  assert (config.train.stop_accuracy, config.train.stop_window, config.train.max_steps) == (
      0.75, 800, 5000)
  pipeline.check(config, num_devices=1)
  for name in pipeline.stage_order(config):
    flat = pipeline.stage_config(config, name)
    assert flat.data.dataset in sources.DATASETS
    if config.stages[name].parent:  # every fine-tune is 1-location
      assert flat.data.train_location == "leftmost_centred"
  # Stage keys differ wherever stages differ, and only there.
  keys = [pipeline.stage_key(config, n) for n in pipeline.stage_order(config)]
  assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("experiment,arg,tests,stages", [
    ("exp1", "mnist,vanilla", ["vanilla_mnist"], 1),
    ("exp1", "kmnist", ["vanilla_kmnist", "imagenet_kmnist"], 2),
    ("exp1", "smoke", ["vanilla_mnist"], 1),
    ("exp2", "emnist,mnist", ["emnist_letters_mnist"], 2),
    ("exp2", "leek2", [f"leek2_{d}" for d in spec.DATASETS], 7),
    ("exp3", "emnist18", ["emnist18"], 1),
    ("exp3", "finetune", ["finetune"], 2),
    ("exp4", "3.2,mnist", ["c3_2_mnist"], 2),
    ("exp4", "1,2", ["c1", "c1_mnist", "c2", "c2_mnist"], 4),
    ("exp5", "vanilla", [f"vanilla_{d}" for d in spec.DATASETS], 6),
    ("exp5", "fmnist,leek2", ["before_fashion_mnist_leek2", "after_fashion_mnist_leek2"], 2),
    ("fcn", "leek10,leek2", ["leek10_leek2"], 2),
])
def test_a_config_argument_selects_one_cell(experiment, arg, tests, stages):
  config = get(experiment, arg)
  assert sorted(config.tests) == sorted(tests)
  assert len(pipeline.stage_order(config)) == stages == len(config.stages)


def test_a_pretrained_network_is_shared_by_its_fine_tunes():
  config = get("exp2", "emnist")
  parents = {config.stages[s].parent for s in pipeline.stage_order(config)} - {""}
  assert parents == {"pretrain_emnist_letters"}
  # exp5 trains exactly exp2's networks: a shared stage_dir reuses them.
  exp5 = get("exp5", "emnist,mnist")
  assert (pipeline.stage_key(exp5, "finetune_emnist_letters_mnist") ==
          pipeline.stage_key(get("exp2", "emnist,mnist"), "finetune_emnist_letters_mnist"))


def test_smoke_variants_are_valid_on_cpu():
  for experiment, arg in (("exp1", "smoke"), ("exp2", "mnist,leek2,smoke"),
                          ("exp3", "smoke"), ("exp4", "3.1,smoke"), ("exp5", "vanilla,smoke"),
                          ("fcn", "mnist,leek2,smoke")):
    config = get(experiment, arg)
    assert config.data.canvas_size == 64 and config.num_seeds == 1
    pipeline.check(config, num_devices=1)


def test_mini_variants_sit_between_smoke_and_the_paper():
  exp1 = get("exp1", "mini")
  assert sorted(exp1.tests) == ["vanilla_mnist"]
  exp2 = get("exp2", "fmnist,mnist,mini")
  for config in (exp1, exp2):
    assert (config.data.canvas_size, config.data.item_size, config.model.width) == (112, 25, 0.125)
    assert config.num_seeds == 1 and config.train.stop_block == 5
    pipeline.check(config, num_devices=1)
  # The grid is the paper's 19x19, scaled by half.
  assert len(pipeline.test_axes(pipeline.test_config(exp1, "vanilla_mnist"))) == 19
  assert exp2.stages.pretrain_fashion_mnist.train.max_steps == 3000
  with pytest.raises(ValueError, match="exp1.py and configs/exp2.py only"):
    get("exp5", "mnist,mini")


@pytest.mark.parametrize("experiment,arg,message", [
    ("exp1", "mnsit", "unknown dataset"),
    ("exp2", "mnist,kmnist,leek2", "pretrain,finetune"),
    ("exp3", "areas", "unknown argument"),
    ("exp4", "5", "unknown argument"),
    ("exp5", "a,b,c", "vanilla, imagenet"),
    ("fcn", "kmnist", "fcn.py"),
])
def test_bad_config_arguments_are_refused(experiment, arg, message):
  with pytest.raises(ValueError, match=message):
    get(experiment, arg)


def test_imagenet_arm_needs_the_weights_file():
  with pytest.raises(config_checks.ConfigError, match="config.imagenet_weights"):
    pipeline.check(get("exp1", "mnist"), num_devices=1)
  config = get("exp1", "mnist")
  config.data.dataset = "kmnist"  # the stages set the dataset: a global one would be ignored
  with pytest.raises(config_checks.ConfigError, match="has no effect"):
    pipeline.check(config, num_devices=1)
  config = get("exp2", "mnist,leek2")
  config.finetune = "frozen"
  with pytest.raises(config_checks.ConfigError, match="frozen_conv"):
    pipeline.check(config, num_devices=1)


def test_command_line_overrides_are_typed():
  def parse(*overrides):
    argv = ["prog", f"--config={REPO_ROOT / 'configs/exp1.py'}:kmnist,vanilla", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return values.config

  config = parse("--config.train.learning_rate=1e-3", "--config.data.canvas_size=128",
                 "--config.data.fixed_centre=(30,64)", "--config.seed=3",
                 "--config.stages.vanilla_kmnist.train.max_steps=7")
  assert list(config.tests) == ["vanilla_kmnist"]
  assert config.train.learning_rate == 1e-3 and config.data.canvas_size == 128
  assert tuple(config.data.fixed_centre) == (30, 64) and config.seed == 3
  flat = pipeline.stage_config(config, "vanilla_kmnist")
  assert flat.data.dataset == "kmnist" and flat.train.max_steps == 7
  assert flat.train.learning_rate == 1e-3
  with pytest.raises(flags.IllegalFlagValueError):
    parse("--config.train.batch_size=many")
  with pytest.raises(AttributeError, match='Did you mean "learning_rate"'):
    parse("--config.train.learnin_rate=1e-3")


ALL_CONFIGS = ("exp1", "exp2", "exp3", "exp4", "exp5", "fcn", "rook", "quadrant",
               "data_efficiency", "azulay_weiss")


@pytest.mark.parametrize("experiment", ALL_CONFIGS)
def test_every_config_fits_any_number_of_devices(experiment):
  """Smoke variants on 2, 4 and 8 devices (1 is above), the whole experiment on 8: the sizes a
  config file sets are rounded to the devices, and every check then passes."""
  for arg, counts in (("smoke", (2, 4, 8)), (None, (8,))):
    config = get(experiment, arg)
    if "imagenet_weights" in config:
      config.imagenet_weights = __file__
    for num_devices in counts:
      fitted = pipeline.fit_to_devices(config, num_devices)
      pipeline.check(fitted, num_devices)
      for name in pipeline.stage_order(fitted):
        assert pipeline.stage_config(fitted, name).train.batch_size % num_devices == 0
      for name in fitted.tests:
        assert pipeline.test_config(fitted, name).eval.items_per_batch % num_devices == 0


def test_sizes_round_to_the_devices_unless_the_user_set_them():
  config = get("exp1", "smoke")
  assert config.eval.items_per_batch == 100
  with pytest.raises(config_checks.ConfigError, match="items_per_batch=100 must be a positive "
                     "multiple of the 8 devices it is split over: use 104"):
    pipeline.check(config, num_devices=8)
  fitted = pipeline.fit_to_devices(config, 8)
  assert fitted.eval.items_per_batch == 104 and config.eval.items_per_batch == 100  # a copy
  assert fitted.train.batch_size == config.train.batch_size == 32  # already a multiple
  # A size set on the command line is the user's: kept, and the check names a working value.
  config.train.batch_size = 30
  kept = pipeline.fit_to_devices(config, 8, user_set={"train.batch_size"})
  assert kept.train.batch_size == 30 and kept.eval.items_per_batch == 104
  with pytest.raises(config_checks.ConfigError, match="batch_size=30 .* use 32"):
    pipeline.check(kept, num_devices=8)
  # Per-stage and per-test sizes are fitted too.
  config = get("data_efficiency", "smoke")
  fitted = pipeline.fit_to_devices(config, 8)
  for name in fitted.tests:
    assert pipeline.test_config(fitted, name).eval.items_per_batch % 8 == 0
