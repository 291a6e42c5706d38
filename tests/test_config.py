"""The experiment configs: every cell at the paper's sizes, cell selection, smoke variants,
typed command-line overrides."""

import importlib
import json

import pytest
from absl import flags
from ml_collections import config_flags

from conftest import REPO_ROOT
from transinv_jax import config_checks
from transinv_jax.data import inputs, sources
from transinv_jax.experiments import arguments, figures, spec
from transinv_jax.experiments import stages as stage_lib  # a test's parameter is `stages`

# experiment -> (tests, stages) of the whole experiment.
SIZES = {"exp1": (12, 12), "exp2": (36, 42), "exp3": (2, 2), "exp4": (12, 12),
         "exp5": (84, 54), "fcn": (4, 6)}


def get(experiment, arg=None):
  return importlib.import_module(experiment).get_config(arg)


@pytest.mark.parametrize("experiment", sorted(SIZES))
def test_whole_experiment_is_valid_at_the_papers_sizes(experiment):
  config = get(experiment)
  config.imagenet_weights = __file__  # exp1 and exp5 need a file; its contents are not read here
  assert (len(config.tests), len(stage_lib.stage_order(config))) == SIZES[experiment]
  assert (config.data.canvas_size, config.data.item_size, config.num_seeds) == (224, 50, 5)
  assert config.train.learning_rate == 1e-4 and config.train.batch_size == 32
  assert (config.train.stop_accuracy, config.train.stop_window, config.train.max_steps) == (
      0.75, 800, 5000)
  stage_lib.check(config, num_devices=1)
  for name in stage_lib.stage_order(config):
    flat = stage_lib.stage_config(config, name)
    assert flat.data.dataset in sources.DATASETS
    if config.stages[name].parent:  # every fine-tune is 1-location
      assert flat.data.train_location == "leftmost_centred"
  # Stage keys differ wherever stages differ, and only there.
  keys = [stage_lib.stage_key(config, n) for n in stage_lib.stage_order(config)]
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
  assert len(stage_lib.stage_order(config)) == stages == len(config.stages)


def test_a_pretrained_network_is_shared_by_its_fine_tunes():
  config = get("exp2", "emnist")
  parents = {config.stages[s].parent for s in stage_lib.stage_order(config)} - {""}
  assert parents == {"pretrain_emnist_letters"}
  # exp5 trains exactly exp2's networks: a shared stage_dir reuses them.
  exp5 = get("exp5", "emnist,mnist")
  assert (stage_lib.stage_key(exp5, "finetune_emnist_letters_mnist") ==
          stage_lib.stage_key(get("exp2", "emnist,mnist"), "finetune_emnist_letters_mnist"))


def test_smoke_variants_are_valid_on_cpu():
  for experiment, arg in (("exp1", "smoke"), ("exp2", "mnist,leek2,smoke"),
                          ("exp3", "smoke"), ("exp4", "3.1,smoke"), ("exp5", "vanilla,smoke"),
                          ("fcn", "mnist,leek2,smoke")):
    config = get(experiment, arg)
    assert config.data.canvas_size == 64 and config.num_seeds == 1
    stage_lib.check(config, num_devices=1)


def test_mini_variants_sit_between_smoke_and_the_paper():
  exp1 = get("exp1", "mini")
  assert sorted(exp1.tests) == ["vanilla_mnist"]
  exp2 = get("exp2", "fmnist,mnist,mini")
  for config in (exp1, exp2):
    assert (config.data.canvas_size, config.data.item_size, config.model.width) == (112, 25, 0.125)
    assert config.num_seeds == 1 and config.train.stop_block == 5
    stage_lib.check(config, num_devices=1)
  # The grid is the paper's 19x19, scaled by half.
  assert len(inputs.test_axes(stage_lib.test_config(exp1, "vanilla_mnist"))) == 19
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
    stage_lib.check(get("exp1", "mnist"), num_devices=1)
  config = get("exp1", "mnist")
  config.data.dataset = "kmnist"  # the stages set the dataset: a global one would be ignored
  with pytest.raises(config_checks.ConfigError, match="has no effect"):
    stage_lib.check(config, num_devices=1)
  config = get("exp2", "mnist,leek2")
  config.finetune = "frozen"
  with pytest.raises(config_checks.ConfigError, match="frozen_conv"):
    stage_lib.check(config, num_devices=1)


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
  flat = stage_lib.stage_config(config, "vanilla_kmnist")
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
      fitted = stage_lib.fit_to_devices(config, num_devices)
      stage_lib.check(fitted, num_devices)
      for name in stage_lib.stage_order(fitted):
        assert stage_lib.stage_config(fitted, name).train.batch_size % num_devices == 0
      for name in fitted.tests:
        assert stage_lib.test_config(fitted, name).eval.items_per_batch % num_devices == 0


def test_sizes_round_to_the_devices_unless_the_user_set_them():
  config = get("exp1", "smoke")
  assert config.eval.items_per_batch == 100
  with pytest.raises(config_checks.ConfigError, match="items_per_batch=100 must be a positive "
                     "multiple of the 8 devices it is split over: use 104"):
    stage_lib.check(config, num_devices=8)
  fitted = stage_lib.fit_to_devices(config, 8)
  assert fitted.eval.items_per_batch == 104 and config.eval.items_per_batch == 100  # a copy
  assert fitted.train.batch_size == config.train.batch_size == 32  # already a multiple
  # A size set on the command line is the user's: kept, and the check names a working value.
  config.train.batch_size = 30
  kept = stage_lib.fit_to_devices(config, 8, user_set={"train.batch_size"})
  assert kept.train.batch_size == 30 and kept.eval.items_per_batch == 104
  with pytest.raises(config_checks.ConfigError, match="batch_size=30 .* use 32"):
    stage_lib.check(kept, num_devices=8)
  # Per-stage and per-test sizes are fitted too.
  config = get("data_efficiency", "smoke")
  fitted = stage_lib.fit_to_devices(config, 8)
  for name in fitted.tests:
    assert stage_lib.test_config(fitted, name).eval.items_per_batch % 8 == 0


# -- the config-argument grammar (arguments.parse_args): keyed forms and their short forms

KEYED = [
    ("exp1", "mnist,vanilla", "dataset=mnist,arm=vanilla"),
    ("exp1", "smoke", "size=smoke"),
    ("exp1", "mini", "size=mini"),
    ("exp1", "kmnist", "dataset=kmnist"),
    ("exp1", "fmnist,pretrained", "dataset=fashion_mnist,arm=imagenet"),
    ("exp1", "mnist,kmnist,smoke", "dataset=mnist,dataset=kmnist,size=smoke"),
    ("exp2", "emnist,mnist", "pretrain=emnist,finetune=mnist"),
    ("exp2", "emnist,mnist,smoke", "pretrain=emnist_letters,finetune=mnist,size=smoke"),
    ("exp2", "leek2", "pretrain=leek2"),
    ("exp2", "fmnist,mnist,mini", "size=mini,finetune=mnist,pretrain=fashion_mnist"),
    ("exp3", "emnist18,smoke", "test=emnist18,size=smoke"),
    ("exp4", "3.2,mnist", "condition=3.2,test=mnist"),
    ("exp4", "1,2", "condition=1,condition=2"),
    ("exp4", "1,emnist,smoke", "condition=1,test=emnist,size=smoke"),
    ("exp5", "vanilla", "network=vanilla"),
    ("exp5", "fmnist,leek2", "pretrain=fmnist,finetune=leek2"),
    ("exp5", "emnist", "pretrain=emnist"),
    ("fcn", "leek10,leek2", "pretrain=leek10,finetune=leek2"),
    ("fcn", "mnist,smoke", "pretrain=mnist,size=smoke"),
    ("rook", "full,smoke", "padding=full,size=smoke"),
    ("quadrant", "scratch,64", "arm=scratch,border=64"),
    ("quadrant", "frozen_imagenet,0,smoke", "arm=frozen_imagenet,border=0,size=smoke"),
    ("data_efficiency", "zeros,100", "padding=zeros,train_items=100"),
    ("data_efficiency", "full,50,smoke", "padding=full,train_items=50,size=smoke"),
    ("azulay_weiss", "max,avg,smoke", "network=max,network=avg,size=smoke"),
    ("diagnose", "smoke", "size=smoke"),
]


@pytest.mark.parametrize("experiment,short,keyed", KEYED)
def test_keyed_forms_equal_their_short_forms(experiment, short, keyed):
  expected = get(experiment, short).to_json()
  assert get(experiment, keyed).to_json() == expected
  # Case and spaces do not matter; a short form rewritten in keys gives the same config.
  assert get(experiment, keyed.upper().replace(",", ", ")).to_json() == expected
  module = importlib.import_module(experiment)
  rewritten = arguments.keyed(short, module.SCHEMA, f"configs/{experiment}.py")
  assert "=" in rewritten and get(experiment, rewritten).to_json() == expected


def test_keyed_forms_select_what_short_forms_cannot():
  # exp2, exp5 and fcn: every pretraining dataset fine-tuned on one.
  assert sorted(get("exp2", "finetune=mnist").tests) == sorted(f"{d}_mnist"
                                                               for d in spec.DATASETS)
  assert len(get("exp5", "finetune=leek2").tests) == 2 * len(spec.DATASETS)
  assert sorted(get("fcn", "finetune=leek2").tests) == ["leek10_leek2", "mnist_leek2"]


def test_a_keyed_argument_works_on_the_command_line():
  argv = ["prog", f"--config={REPO_ROOT / 'configs/exp2.py'}:pretrain=emnist,finetune=mnist,"
          "size=smoke"]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  assert list(values.config.tests) == ["emnist_letters_mnist"]
  assert values.config.data.canvas_size == 64


@pytest.mark.parametrize("experiment", ALL_CONFIGS + ("diagnose",))
@pytest.mark.parametrize("arg,token,reason", [
    ("sise=smoke", "sise=smoke", "unknown key 'sise'"),
    ("size=huge", "size=huge", "unknown value 'huge' for size"),
    ("smoke,size=paper", "size=paper", "size given twice"),
    ("bogus", "bogus", "unknown"),
])
def test_bad_arguments_give_one_error_format(experiment, arg, token, reason):
  """The config file, the token, why, then every key and its values."""
  with pytest.raises(ValueError) as error:
    get(experiment, arg)
  message = str(error.value)
  assert message.startswith(f"configs/{experiment}.py: {token!r}: {reason}")
  schema = importlib.import_module(experiment).SCHEMA
  assert "; keys: " in message
  for name, key in schema.items():
    assert f"{name}={key.describe()}" in message
  if any(key.kind == "dataset" for key in schema.values()):
    assert "datasets: emnist_letters (emnist), fashion_mnist (fmnist" in message


@pytest.mark.parametrize("experiment,arg,message", [
    ("exp2", "kmnist,leek2,mnist", "configs/exp2.py: 'kmnist,leek2,mnist': too many datasets: "
     "give pretrain or pretrain,finetune; keys: pretrain=<dataset>, finetune=<dataset>, "
     "size=smoke|mini|paper; datasets: "),
    ("exp2", "pretrain=mnsit", "configs/exp2.py: 'pretrain=mnsit': unknown dataset 'mnsit' for "
     "pretrain; keys: "),
    ("exp1", "arm=pretrianed", "configs/exp1.py: 'arm=pretrianed': unknown value 'pretrianed' "
     "for arm; keys: dataset=<dataset> (repeatable), arm=vanilla|imagenet (repeatable), "
     "size=smoke|mini|paper; datasets: "),
    ("exp5", "vanilla,mnist", "configs/exp5.py: 'vanilla,mnist': network goes without pretrain"),
    ("fcn", "leek2", "configs/fcn.py: 'leek2': finetune comes after pretrain; keys: "
     "pretrain=mnist|leek10, finetune=mnist|leek10|leek2"),
    ("fcn", "leek10,leek10", "configs/fcn.py: 'leek10,leek10': selects no test; keys: "),
    ("quadrant", "border=8", "configs/quadrant.py: '8': not one of the borders at size paper; "
     "keys: "),
    ("data_efficiency", "100,smoke", "configs/data_efficiency.py: '100': not one of the "
     "training set sizes at size smoke; keys: "),
    ("exp3", "mini", "configs/exp3.py: 'mini': the mini size is defined for configs/exp1.py "
     "and configs/exp2.py only"),
])
def test_bad_values_name_the_token_and_the_allowed_values(experiment, arg, message):
  with pytest.raises(ValueError) as error:
    get(experiment, arg)
  assert str(error.value).startswith(message)


# -- the resolved config and the figures


@pytest.mark.parametrize("experiment", ALL_CONFIGS)
def test_resolved_config_gives_the_values_each_stage_and_test_runs_with(experiment):
  config = get(experiment, "smoke")
  config.imagenet_weights = "vgg16.pth"
  before = config.to_json()
  resolved = spec.resolved(config)
  json.dumps(resolved)  # what resolved_config.json stores
  assert config.to_json() == before  # config.json stores the config as given
  assert resolved["run"]["experiment"] == experiment and "stages" not in resolved["run"]
  assert sorted(resolved["stages"]) == sorted(config.stages)
  assert sorted(resolved["tests"]) == sorted(config.tests)

  def no_none(value):
    if isinstance(value, dict):
      return all(no_none(v) for v in value.values())
    return value is not None

  assert no_none(resolved)
  for name, entry in resolved["stages"].items():
    flat = stage_lib.stage_config(config, name)
    for section in ("data", "model", "train"):
      assert entry[section] == json.loads(json.dumps(flat[section].to_dict())), (name, section)
    assert entry["finetune"] == (stage_lib.finetune_policy(config, name)
                                 if config.stages[name].parent else "")
  for name, entry in resolved["tests"].items():
    flat = stage_lib.test_config(config, name)
    assert entry["data"] == json.loads(json.dumps(flat.data.to_dict()))
    assert entry["eval"] == json.loads(json.dumps(flat.eval.to_dict()))
    assert entry["kind"] == config.tests[name].kind


def test_resolved_config_of_a_config_without_stages():
  resolved = spec.resolved(get("diagnose", "smoke"))
  assert resolved["experiment"] == "diagnose" and resolved["eval"]["invariance_items"] == 24


# Each experiment's own figures, besides every test kind's (drawn when it has tests of that
# kind): the figures each drew when reports chose them by the experiment's name.
OWN_FIGURES = {"exp1": ("accuracy_bars",), "exp2": ("transfer",), "fcn": ("transfer",),
               "exp4": ("class_groups",)}


@pytest.mark.parametrize("experiment", ALL_CONFIGS)
def test_figures_follow_from_the_config(experiment):
  config = get(experiment)
  assert tuple(config.figures) == spec.FIGURES + OWN_FIGURES.get(experiment, ())
  assert set(config.figures) <= set(figures.FIGURES)
  figures.check_figures(config)


def test_an_unknown_figure_is_refused():
  config = get("exp1", "smoke")
  config.figures = ("heatmaps", "heatmpas")
  with pytest.raises(config_checks.ConfigError, match=r"no figure \['heatmpas'\]"):
    figures.check_figures(config)
  with pytest.raises(config_checks.ConfigError, match=r"no figure \['heatmpas'\]"):
    stage_lib.check(config, 1)  # before any work
