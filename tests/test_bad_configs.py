"""A corpus of bad configs and damaged inputs: each stops before any work with an error that names
the key (or file) and the fix, and leaves no run directory behind."""

import pathlib

import pytest

import exp2
from conftest import tiny_config
from transinv_jax import checkpoints, config_checks, main, workdir
from transinv_jax.experiments import pipeline, spec, stages

USER_ERRORS = main.USER_ERRORS + (pipeline.TrainingDiverged,)


def _set(section, **values):
  def change(config):
    getattr(config, section).update(values)
  return change


def _stage(**values):
  def change(config):
    for section, overrides in values.items():
      config.stages.vanilla_mnist[section].update(overrides)
  return change


def _top(**values):
  def change(config):
    config.update(values)
  return change


def _tests(**values):
  def change(config):
    config.tests.vanilla_mnist.update(values)
  return change


def _invariance(**values):
  def change(config):
    config.tests.vanilla_mnist.kind = "invariance"
    config.eval.update(values)
  return change


def _imagenet_stage(config):
  config.stages.vanilla_mnist.imagenet = True


CORPUS = [
    # data
    ("unknown dataset", _stage(data={"dataset": "cifar10"}), r"config\.data\.dataset='cifar10'"),
    ("item bigger than canvas", _set("data", item_size=40),
     r"config\.data\.item_size=40 is larger than config\.data\.canvas_size=32"),
    ("fixed centre off the canvas", _set("data", train_location="fixed", fixed_centre=(30, 16)),
     r"config\.data\.fixed_centre=\(30, 16\) puts the item \(partly\) off the canvas"),
    ("unknown sampler", _stage(data={"train_location": "everywhere"}),
     r"config\.data\.train_location='everywhere'"),
    ("regions without a layout", _stage(data={"train_location": "regions"}),
     r"train_location='regions' needs config\.data\.layout"),
    ("a layout naming a missing region", _stage(data={"train_location": "regions",
                                                      "layout": "0-9:middle_earth"}),
     r"layout='0-9:middle_earth'"),
    ("a layout that leaves classes out", _stage(data={"train_location": "regions",
                                                      "layout": "0-3:upper_left"}),
     r"layout='0-3:upper_left'"),
    ("unknown source", _set("data", source="hdf5"), r"config\.data\.source='hdf5'"),
    ("missing data folder", _set("data", data_dir="/dev/null/data"), r"/dev/null/data"),
    ("channels 2", _set("data", channels=2), r"config\.data\.channels=2"),
    ("more classes than the dataset", _stage(data={"classes": 12}),
     r"config\.data\.classes=12, but mnist has only 10"),
    ("negative canvas", _set("data", canvas_size=-4), r"config\.data\.canvas_size"),
    ("unknown fit", _stage(data={"fit": "snug"}), r"config\.data\.fit='snug'"),
    ("location labels without corners", _stage(data={"labels": "location"}),
     r"location labels go with the 'corners' sampler"),
    ("unknown labels", _stage(data={"labels": "colour"}), r"config\.data\.labels='colour'"),
    ("a border with no room", _stage(data={"labels": "location", "train_location": "corners",
                                          "border": 20}),
     r"config\.data\.border=20: border 20 leaves no room"),
    ("negative held-out items", _set("data", val_items=-5), r"config\.data\.val_items=-5"),
    ("holding out the whole split", _stage(data={"val_items": 60000}),
     r"config\.data\.val_items=60000 leaves no training items"),
    # model
    ("unknown model", _set("model", name="alexnet"), r"config\.model\.name='alexnet'"),
    ("unknown padding", _set("model", padding="mirror"), r"config\.model\.padding='mirror'"),
    ("unknown pooling", _set("model", pooling="median"), r"config\.model\.pooling='median'"),
    ("a ResNet with average pooling", _set("model", name="resnet18", pooling="avg"),
     r"config\.model\.pooling='avg': resnet18 takes max, blur"),
    ("blur size 9", _set("model", blur_size=9), r"config\.model\.blur_size=9: use 1\.\.7"),
    ("odd average pool", _set("model", avg_pool_size=5), r"config\.model\.avg_pool_size=5"),
    ("zero width", _set("model", width=0.0), r"config\.model\.width=0\.0"),
    ("dropout 1", _set("model", dropout=1.0), r"config\.model\.dropout=1\.0"),
    ("unknown dtype", _set("model", dtype="float8"), r"config\.model\.dtype='float8'"),
    ("unknown head", _set("model", head="attention"), r"config\.model\.head='attention'"),
    ("override of a missing layer", _set("model", padding_overrides="conv9_1=full"),
     r"padding_overrides names 'conv9_1'"),
    ("malformed overrides", _set("model", padding_overrides="conv1_1:full"),
     r"config\.model\.padding_overrides"),
    ("canvas too small for the poolings", _set("data", canvas_size=16, item_size=8),
     r"does not fit config\.data\.canvas_size=16"),
    ("missing pretrained file", _set("model", pretrained="/nonexistent/vgg16.pth"),
     r"config\.model\.pretrained='/nonexistent/vgg16\.pth' is not a file"),
    # training
    ("negative learning rate", _set("train", learning_rate=-1e-3),
     r"config\.train\.learning_rate=-0\.001"),
    ("zero batch", _set("train", batch_size=0), r"config\.train\.batch_size=0"),
    ("no steps", _set("train", max_steps=0), r"config\.train\.max_steps=0"),
    ("stop accuracy above 1", _set("train", stop_accuracy=1.5),
     r"config\.train\.stop_accuracy=1\.5"),
    ("negative stop window", _set("train", stop_window=-1), r"config\.train\.stop_window"),
    ("log_every not a multiple of scan_steps", _set("train", log_every=10, scan_steps=3),
     r"config\.train\.log_every=10 must be a positive multiple of config\.train\.scan_steps=3"),
    ("no checkpoints", _set("train", checkpoint_every=0), r"config\.train\.checkpoint_every"),
    ("no seeds", _top(num_seeds=0), r"config\.num_seeds=0"),
    ("unknown fine-tuning policy", _top(finetune="half"), r"config\.finetune='half'"),
    # evaluation and tests
    ("unknown grid", _set("eval", grid="coarse"), r"config\.eval\.grid='coarse'"),
    ("negative test items", _set("eval", max_items=-1), r"config\.eval\.max_items"),
    ("zero items per batch", _set("eval", items_per_batch=0), r"config\.eval\.items_per_batch=0"),
    ("unknown test kind", _tests(kind="sweeps"), r"config\.tests\.vanilla_mnist\.kind='sweeps'"),
    ("unknown split", _tests(split="valid"), r"config\.tests\.vanilla_mnist\.split='valid'"),
    ("val split without held-out items", _tests(split="val"), r"val_items > 0"),
    ("a test of a missing stage", _tests(stage="pretrain"), r"stage 'pretrain'.*defined: "
     r"vanilla_mnist"),
    ("an invariance path too long", _invariance(max_shift=64), r"config\.eval\.max_shift=64"),
    ("an invariance mode", _invariance(max_shift=8, consistency_mode="roll"),
     r"config\.eval\.consistency_mode='roll'"),
    ("a global dataset the stages ignore", _set("data", dataset="kmnist"),
     r"config\.data\.dataset='kmnist' has no effect"),
    ("an ImageNet stage without weights", _imagenet_stage, r"config\.imagenet_weights is empty"),
]


@pytest.mark.parametrize("change,expected", [c[1:] for c in CORPUS],
                         ids=[c[0] for c in CORPUS])
def test_bad_config(tmp_path, shared_data_dir, change, expected):
  del shared_data_dir
  config = tiny_config()
  change(config)
  with pytest.raises(USER_ERRORS, match=expected):
    pipeline.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_the_corpus_is_large():
  assert len(CORPUS) + len(DAMAGED) >= 30


def test_stage_cycles_and_missing_parents():
  config = exp2.get_config("mnist,leek2,smoke")
  config.stages.pretrain_mnist.parent = "finetune_mnist_leek2"
  with pytest.raises(config_checks.ConfigError, match="is a cycle"):
    stages.check(config, 1)
  config = exp2.get_config("mnist,leek2,smoke")
  config.stages.finetune_mnist_leek2.parent = "pretrain_svhn"
  with pytest.raises(config_checks.ConfigError, match="needs stage 'pretrain_svhn'"):
    stages.check(config, 1)


def test_unknown_stage_keys_are_refused():
  with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rat'\]"):
    spec.stage(train={"learning_rat": 1e-3})


# -- damaged workdirs and checkpoints


def _damaged_config(run: pathlib.Path):
  run.mkdir()
  (run / "config.json").write_text("{")


def _other_config(run: pathlib.Path):
  run.mkdir()
  (run / "config.json").write_text('{"seed": 99}')


DAMAGED = [
    ("damaged config.json", _damaged_config, workdir.WorkdirError,
     r"config\.json is damaged .*--on_config_change=restart"),
    ("another config", _other_config, workdir.WorkdirError,
     r"holds a run with a different config .*--on_config_change=resume"),
]


@pytest.mark.parametrize("damage,error,expected", [d[1:] for d in DAMAGED],
                         ids=[d[0] for d in DAMAGED])
def test_damaged_workdir(tmp_path, damage, error, expected):
  damage(tmp_path / "run")
  before = sorted(p.name for p in (tmp_path / "run").iterdir())
  with pytest.raises(error, match=expected):
    pipeline.run(tiny_config(), str(tmp_path / "run"))
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before   # untouched


def test_a_missing_or_damaged_export(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match="not found: pass the 'export' folder"):
    checkpoints.load_exported(tmp_path)
  (tmp_path / "variables.npz").write_bytes(b"PK\x03\x04 not a zip")
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(checkpoints.CheckpointError, match="cannot read export"):
    checkpoints.load_exported(tmp_path)
