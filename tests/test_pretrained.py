"""Pretrained weight import against PyTorch and Keras references.

The reference models are written here in plain torch.nn with torchvision's module names (and
Kayhan & van Gemert's / Zhang's for the ResNet variants), so their ``state_dict()`` keys are the
files' keys. Random weights (BatchNorm statistics included) go through ``torch.save``, our reader
and converter, and our model must give the reference's logits.
"""

import math

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transinv_jax import models
from transinv_jax.models import pretrained, vgg

VGG_SIZE = 224  # the 7x7 map on which torchvision's adaptive pool is the identity (and Keras')
RESNET_SIZE = 64
VGG16_CONVS = [f"conv{s}_{i}" for s, stage in enumerate(vgg.STAGES["vgg16"], 1)
               for i in range(1, len(stage) + 1)]


def scaler(width: float):
  return lambda n: max(1, int(round(n * width)))


def config_for(name: str, width: float = 1.0, **knobs):
  config = models.default_config()
  config.name, config.width, config.dropout = name, width, 0.0
  config.update(knobs)
  return config


def normal(seed: int, shape) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
  """He-scaled weights, random biases and BatchNorm affine and running stats; eval mode."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        m.weight.normal_(0, math.sqrt(2 / m.weight[0].numel()), generator=g)
        if m.bias is not None:
          m.bias.normal_(0, 0.1, generator=g)
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0, 0.1, generator=g)
        m.running_mean.normal_(0, 0.1, generator=g)
        m.running_var.uniform_(0.5, 1.5, generator=g)
  return module.eval()


# ---------------------------------------------------------------------------------------------
# Reference models.


class TorchVGG(nn.Module):
  """torchvision.models.VGG at a width multiplier."""

  def __init__(self, name: str, width: float, num_classes: int, batch_norm: bool):
    super().__init__()
    scaled, layers, c = scaler(width), [], 3
    for stage in vgg.STAGES[name]:
      for n in map(scaled, stage):
        layers += [nn.Conv2d(c, n, 3, padding=1)]
        layers += [nn.BatchNorm2d(n)] if batch_norm else []
        layers += [nn.ReLU(inplace=True)]
        c = n
      layers.append(nn.MaxPool2d(2, 2))
    hidden = scaled(4096)
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
        nn.Linear(c * 49, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, hidden),
        nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, num_classes))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class BlurPool(nn.Module):
  """Zhang's BlurPool: reflect pad, depthwise binomial filter (a ``filt`` buffer), stride."""

  def __init__(self, channels: int, size: int, stride: int = 2):
    super().__init__()
    row = torch.tensor([math.comb(size - 1, i) for i in range(size)], dtype=torch.float32)
    filt = row[:, None] * row[None, :]
    self.register_buffer("filt", (filt / filt.sum())[None, None].repeat(channels, 1, 1, 1))
    self.pad = nn.ReflectionPad2d([(size - 1) // 2, math.ceil((size - 1) / 2)] * 2)
    self.stride = stride

  def forward(self, x):
    return F.conv2d(self.pad(x), self.filt, stride=self.stride, groups=x.shape[1])


def conv3x3(cin: int, cout: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, stride, padding, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
  """torchvision's; variant "full" (Kayhan & van Gemert) or "aa" (Zhang, blur filter ``blur``)."""
  expansion = 1

  def __init__(self, cin, planes, stride, downsample, variant, blur):
    super().__init__()
    aa = variant == "aa" and stride > 1
    pad = 2 if variant == "full" else 1
    self.conv1 = conv3x3(cin, planes, 1 if aa else stride, pad)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = (nn.Sequential(BlurPool(planes, blur, stride), conv3x3(planes, planes)) if aa
                  else conv3x3(planes, planes, 1, pad))
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample
    # Full convolution grows the main branch by 4: pad the identity, or x before the 1x1 conv.
    self.pad = (nn.ZeroPad2d(3 if downsample is not None else 2) if variant == "full"
                else nn.Identity())

  def forward(self, x):
    out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
    identity = self.pad(x)
    if self.downsample is not None:
      identity = self.downsample(identity)
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  """torchvision's v1.5 (stride on the 3x3); "full" pads by 1, "aa" blurs before conv3."""
  expansion = 4

  def __init__(self, cin, planes, stride, downsample, variant, blur):
    super().__init__()
    aa = variant == "aa" and stride > 1
    self.conv1 = conv1x1(cin, planes)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = conv3x3(planes, planes, 1 if aa else stride, 2 if variant == "full" else 1)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = (nn.Sequential(BlurPool(planes, blur, stride), conv1x1(planes, planes * 4)) if aa
                  else conv1x1(planes, planes * 4))
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample
    self.pad = nn.ZeroPad2d(1) if variant == "full" else nn.Identity()

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = self.pad(x)
    if self.downsample is not None:
      identity = self.downsample(identity)
    return self.relu(out + identity)


class TorchResNet(nn.Module):
  """torchvision's ResNet, Kayhan & van Gemert's full-convolution one or Zhang's anti-aliased one.

  Full: 7x7 stem padded by 6, 2x2/2 max pool, every 3x3 padded by 2. Anti-aliased: MaxPool2d(2, 1)
  then BlurPool after the stem, and a BlurPool before every strided conv (stride moved to it).
  """

  def __init__(self, block, sizes, width: float, num_classes: int, variant: str = "torchvision",
               blur: int = 0):
    super().__init__()
    scaled, self.variant, self.blur = scaler(width), variant, blur
    self.inplanes = scaled(64)
    self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 6 if variant == "full" else 3, bias=False)
    self.bn1 = nn.BatchNorm2d(self.inplanes)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = {"torchvision": nn.MaxPool2d(3, 2, 1), "full": nn.MaxPool2d(2, 2),
                    "aa": nn.Sequential(nn.MaxPool2d(2, 1), BlurPool(self.inplanes, blur or 1))
                    }[variant]
    for i, blocks in enumerate(sizes):
      setattr(self, f"layer{i + 1}", self._make_layer(block, scaled(64 * 2**i), blocks,
                                                      1 if i == 0 else 2))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(self.inplanes, num_classes)

  def _make_layer(self, block, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      cout = planes * block.expansion
      if self.variant == "aa" and stride > 1:
        downsample = nn.Sequential(BlurPool(self.inplanes, self.blur, stride),
                                   conv1x1(self.inplanes, cout), nn.BatchNorm2d(cout))
      else:
        downsample = nn.Sequential(conv1x1(self.inplanes, cout, stride), nn.BatchNorm2d(cout))
    layers = [block(self.inplanes, planes, stride, downsample, self.variant, self.blur)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes, 1, None, self.variant, self.blur)
               for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(1, 5):
      x = getattr(self, f"layer{i}")(x)
    return self.fc(torch.flatten(self.avgpool(x), 1))


def torch_fcn(inputs: int, width: float, num_classes: int) -> nn.Module:
  """Biscione & Bowers' FCN: flatten (NCHW order), Linear/ReLU x 5, Linear."""
  sizes = [inputs] + [scaler(width)(n) for n in (2500, 2000, 1500, 1000, 500)]
  layers = [nn.Flatten()]
  for cin, cout in zip(sizes, sizes[1:]):
    layers += [nn.Linear(cin, cout), nn.ReLU()]
  return nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))


class TorchRookNet(nn.Module):
  """Kayhan & van Gemert's rook network: 5x5 conv, ReLU, global max pool, Linear."""

  def __init__(self, cin: int, features: int, num_classes: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, features, 5, padding=2)
    self.pool = nn.AdaptiveMaxPool2d(1)
    self.fc = nn.Linear(features, num_classes)

  def forward(self, x):
    return self.fc(torch.flatten(self.pool(F.relu(self.conv1(x))), 1))


# ---------------------------------------------------------------------------------------------
# Parity.


def dense(sd, key):
  return {"kernel": sd[f"{key}.weight"].T, "bias": sd[f"{key}.bias"]}


def fcn_variables(sd):
  """Our FCN's names for the Sequential's Linear layers (indices 1, 3, ..., 11)."""
  names = [f"fc{i}" for i in range(1, 6)] + ["logits"]
  return {"params": {n: dense(sd, str(2 * i + 1)) for i, n in enumerate(names)}}


def rook_variables(sd):
  return {"params": {"conv1": {"kernel": sd["conv1.weight"].transpose(2, 3, 1, 0),
                               "bias": sd["conv1.bias"]},
                     "logits": dense(sd, "fc")}}


def torchvision(name):
  return lambda sd: pretrained.from_torchvision(sd, name)


RESNET18, RESNET50 = (BasicBlock, (2, 2, 2, 2)), (Bottleneck, (3, 4, 6, 3))
# id -> (config, torch reference, input NCHW shape, converter)
CASES = {
    "vgg16": (config_for("vgg16", 1 / 16), lambda: TorchVGG("vgg16", 1 / 16, 10, False),
              (2, 3, VGG_SIZE, VGG_SIZE), torchvision("vgg16")),
    # Smaller inputs: the adaptive pool spreads a 2x2 / 3x3 map over fc6's 7x7.
    "vgg16_bn": (config_for("vgg16", 1 / 16, batch_norm=True),
                 lambda: TorchVGG("vgg16", 1 / 16, 10, True), (2, 3, 64, 64),
                 torchvision("vgg16")),
    "vgg11": (config_for("vgg11", 1 / 16), lambda: TorchVGG("vgg11", 1 / 16, 10, False),
              (2, 3, 96, 96), torchvision("vgg11")),
    "resnet18": (config_for("resnet18", 1 / 8), lambda: TorchResNet(*RESNET18, 1 / 8, 10),
                 (2, 3, RESNET_SIZE, RESNET_SIZE), torchvision("resnet18")),
    "resnet50": (config_for("resnet50", 1 / 8), lambda: TorchResNet(*RESNET50, 1 / 8, 10),
                 (2, 3, RESNET_SIZE, RESNET_SIZE), torchvision("resnet50")),
    "resnet18_full": (config_for("resnet18", 1 / 8, padding="full"),
                      lambda: TorchResNet(*RESNET18, 1 / 8, 10, "full"),
                      (2, 3, RESNET_SIZE, RESNET_SIZE), torchvision("resnet18")),
    "resnet18_blur3": (config_for("resnet18", 1 / 8, pooling="blur", blur_size=3),
                       lambda: TorchResNet(*RESNET18, 1 / 8, 10, "aa", 3),
                       (2, 3, RESNET_SIZE, RESNET_SIZE), torchvision("resnet18")),
    "resnet50_blur4": (config_for("resnet50", 1 / 8, pooling="blur", blur_size=4),
                       lambda: TorchResNet(*RESNET50, 1 / 8, 10, "aa", 4),
                       (2, 3, RESNET_SIZE, RESNET_SIZE), torchvision("resnet50")),
    # One channel: NCHW and NHWC flattens agree, as the FCN is used on gray canvases.
    "fcn": (config_for("fcn", 1 / 50), lambda: torch_fcn(20 * 20, 1 / 50, 10), (2, 1, 20, 20),
            fcn_variables),
    "rook": (config_for("rook"), lambda: TorchRookNet(1, 16, 2), (2, 1, 24, 24), rook_variables),
}


def saved_and_read(module: nn.Module, tmp_path) -> dict[str, np.ndarray]:
  """torch.save of the state_dict, read back without torch; checked equal to the tensors."""
  sd = module.state_dict()
  torch.save(sd, tmp_path / "weights.pth")
  read = pretrained.read_torch_state_dict(tmp_path / "weights.pth")
  assert list(read) == list(sd)
  for k, v in sd.items():
    assert read[k].dtype == v.numpy().dtype and read[k].shape == tuple(v.shape), k
    np.testing.assert_array_equal(read[k], v.numpy(), err_msg=k)
  return read


def assert_logits_close(ours, ref) -> None:
  scale = float(np.abs(ref).max())
  assert scale > 1e-3  # not a degenerate net
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=0, atol=1e-4 * max(scale, 1.0))


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_torch_reference(case, tmp_path):
  config, make_reference, shape, convert = CASES[case]
  reference = randomise(make_reference())
  variables = convert(saved_and_read(reference, tmp_path))
  x = normal(1, shape)
  with torch.no_grad():
    ref = reference(torch.from_numpy(x)).numpy()
  model = models.build_model(config, ref.shape[-1])
  x = x.transpose(0, 2, 3, 1)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, abstract)
  logits, _ = model.apply(variables, x, train=False)
  assert_logits_close(logits, ref)


# ---------------------------------------------------------------------------------------------
# Reading torch files.


def test_read_torch_dtypes_views_and_checkpoints(tmp_path):
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  sd = {"view": base.t()[1:, ::2], "shared": base[1], "half": torch.randn(3).half(),
        "bf16": torch.randn(2, 2).bfloat16(), "count": torch.tensor(7), "empty": torch.zeros(0, 3),
        "mask": torch.tensor([True, False])}
  torch.save({"epoch": 3, "arch": "resnet18", "best_acc1": torch.tensor(70.0),
              "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ck.pth.tar")
  read = pretrained.read_torch_state_dict(tmp_path / "ck.pth.tar")
  assert list(read) == list(sd)
  for k, v in sd.items():
    expected = v.float().numpy().astype(read[k].dtype) if k == "bf16" else v.numpy()
    assert read[k].dtype == expected.dtype and read[k].shape == expected.shape, k
    np.testing.assert_array_equal(read[k], expected)
  assert read["bf16"].dtype.name == "bfloat16"


def test_unreadable_files_name_the_config_field(tmp_path):
  (tmp_path / "text.pth").write_text("not a checkpoint")
  torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
  torch.save(nn.Linear(2, 2), tmp_path / "module.pth")  # pickled code, not a state_dict
  torch.save({"epoch": 3}, tmp_path / "nothing.pth")
  for name in ("text.pth", "legacy.pth", "module.pth", "nothing.pth"):
    with pytest.raises(pretrained.PretrainedError, match=rf"config\.model\.pretrained.*{name}"):
      pretrained.read_torch_state_dict(tmp_path / name)
  with pytest.raises(pretrained.PretrainedError, match="config.model.pretrained.*HDF5"):
    pretrained.read_keras_vgg16_h5(tmp_path / "text.pth")
  target = {"params": {}}
  with pytest.raises(pretrained.PretrainedError, match="config.model.pretrained.*no such file"):
    pretrained.load_pretrained(tmp_path / "missing.pth", "vgg16", target)
  (tmp_path / "weights.h5").write_bytes(b"")
  with pytest.raises(pretrained.PretrainedError, match="vgg16 only"):
    pretrained.load_pretrained(tmp_path / "weights.h5", "resnet18", target)
  with pytest.raises(pretrained.PretrainedError, match="no torchvision weights for model 'fcn'"):
    pretrained.from_torchvision({}, "fcn")


# ---------------------------------------------------------------------------------------------
# Export.


@pytest.mark.parametrize("name, make, size", [
    ("vgg16", lambda: TorchVGG("vgg16", 1 / 16, 10, True), 64),
    ("resnet50", lambda: TorchResNet(*RESNET50, 1 / 8, 10), RESNET_SIZE),
])
def test_to_torchvision_inverts_from_torchvision(name, make, size, tmp_path):
  reference = randomise(make())
  sd = {k: v.numpy() for k, v in reference.state_dict().items()}
  back = pretrained.to_torchvision(pretrained.from_torchvision(sd, name), name)
  assert list(back) == list(sd)
  for k, v in sd.items():
    assert back[k].dtype == v.dtype, k
    np.testing.assert_array_equal(back[k], v, err_msg=k)

  pretrained.save_torchvision(pretrained.from_torchvision(sd, name), name, tmp_path / "out.pth")
  fresh = make().eval()
  fresh.load_state_dict(torch.load(tmp_path / "out.pth"), strict=True)
  x = torch.from_numpy(normal(2, (1, 3, size, size)))
  with torch.no_grad():
    np.testing.assert_array_equal(fresh(x).numpy(), reference(x).numpy())


# ---------------------------------------------------------------------------------------------
# Keras.


def keras_vgg16_like(width: float, size: int, num_classes: int):
  """keras.applications.VGG16's layer names at a width multiplier, top included (linear)."""
  keras = pytest.importorskip("keras")
  scaled = scaler(width)
  x = inputs = keras.Input((size, size, 3))
  for s, stage in enumerate(vgg.STAGES["vgg16"], 1):
    for i, n in enumerate(stage, 1):
      x = keras.layers.Conv2D(scaled(n), 3, padding="same", activation="relu",
                              name=f"block{s}_conv{i}")(x)
    x = keras.layers.MaxPooling2D(2, 2, name=f"block{s}_pool")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(scaled(4096), activation="relu", name="fc1")(x)
  x = keras.layers.Dense(scaled(4096), activation="relu", name="fc2")(x)
  return keras.Model(inputs, keras.layers.Dense(num_classes, name="predictions")(x))


def randomise_keras(model, seed: int = 0):
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if layer.get_weights():
      kernel, bias = layer.get_weights()
      fan_in = np.prod(kernel.shape[:-1])
      layer.set_weights([rng.normal(0, np.sqrt(2 / fan_in), kernel.shape).astype(np.float32),
                         rng.normal(0, 0.1, bias.shape).astype(np.float32)])
  return model


def write_weights_only_h5(path, weights) -> None:
  """The layout of ``vgg16_weights_tf_dim_ordering_tf_kernels.h5`` (Keras 1 weight names)."""
  h5py = pytest.importorskip("h5py")
  layers = list(dict.fromkeys(k.split("/")[0] for k in weights))
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [n.encode() for n in layers]
    for layer in layers:
      names = [f"{layer}_W_1:0", f"{layer}_b_1:0"]
      group = f.create_group(layer)
      group.attrs["weight_names"] = [n.encode() for n in names]
      group[names[0]], group[names[1]] = weights[f"{layer}/kernel"], weights[f"{layer}/bias"]


def test_keras_applications_vgg16_features(tmp_path):
  keras = pytest.importorskip("keras")
  reference = randomise_keras(keras.applications.VGG16(weights=None, include_top=False,
                                                       input_shape=(64, 64, 3)))
  reference.save(tmp_path / "vgg16_notop.h5")
  variables = pretrained.from_keras_vgg16(
      pretrained.read_keras_vgg16_h5(tmp_path / "vgg16_notop.h5"))
  assert set(variables["params"]) == set(VGG16_CONVS)
  # A global-pooling head: our classifier at full width would be 100M parameters.
  model = models.build_model(config_for("vgg16", head="gap"), 2)
  variables["params"]["logits"] = {"kernel": np.zeros((512, 2), np.float32),
                                   "bias": np.zeros(2, np.float32)}
  x = normal(3, (2, 64, 64, 3))
  _, out = model.apply(variables, x, train=False)
  expected = reference.predict(x, verbose=0)
  np.testing.assert_allclose(out["pool5"], expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_keras_vgg16_with_top_both_file_layouts(tmp_path):
  reference = randomise_keras(keras_vgg16_like(1 / 16, VGG_SIZE, 10))
  reference.save(tmp_path / "model.h5")
  weights = pretrained.read_keras_vgg16_h5(tmp_path / "model.h5")
  write_weights_only_h5(tmp_path / "weights.h5", weights)
  again = pretrained.read_keras_vgg16_h5(tmp_path / "weights.h5")
  assert list(again) == list(weights)
  assert all(np.array_equal(again[k], weights[k]) for k in weights)

  model = models.build_model(config_for("vgg16", 1 / 16), 10)
  x = normal(4, (2, VGG_SIZE, VGG_SIZE, 3))
  logits, _ = model.apply(pretrained.from_keras_vgg16(weights), x, train=False)
  assert_logits_close(logits, reference.predict(x, verbose=0))
  target = jax.jit(model.init)(jax.random.key(0), x[:1])
  seeds = lambda tree: jax.tree.map(lambda x: np.stack([x, x]), tree)  # two seeds
  loaded = pretrained.load_pretrained(tmp_path / "weights.h5", "vgg16", seeds(target))
  for seed in (0, 1):
    np.testing.assert_array_equal(loaded["params"]["fc6"]["kernel"][seed], weights["fc1/kernel"])


# ---------------------------------------------------------------------------------------------
# Fitting to the task's model.


@pytest.fixture(scope="module")
def resnet18_sd():
  """A randomised torch ResNet18 at width 1/8 with 10 classes, and its state_dict in NumPy."""
  reference = randomise(TorchResNet(*RESNET18, 1 / 8, 10))
  return reference, {k: v.numpy() for k, v in reference.state_dict().items()}


def init(config, num_classes: int, shape):
  model = models.build_model(config, num_classes)
  return model, jax.jit(model.init)(jax.random.key(5), np.zeros(shape, np.float32))


def test_load_pretrained_new_class_count_keeps_features(resnet18_sd, tmp_path):
  reference, sd = resnet18_sd
  torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
  _, target = init(config_for("resnet18", 1 / 8), 3, (1, 32, 32, 3))
  loaded = pretrained.load_pretrained(tmp_path / "resnet18.pth", "resnet18",
                                      jax.tree.map(lambda x: x[None], target))
  loaded = jax.tree.map(lambda x: x[0], loaded)
  imported = pretrained.from_torchvision(sd, "resnet18")
  assert jax.tree.structure(loaded) == jax.tree.structure(target)
  flat = lambda tree: {jax.tree_util.keystr(k): v
                       for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  ours, theirs, fresh = flat(loaded), flat(imported), flat(target)
  for key, value in ours.items():
    np.testing.assert_array_equal(value, fresh[key] if "'fc'" in key else theirs[key],
                                  err_msg=key)

  _, same_classes = init(config_for("resnet18", 1 / 8), 10, (1, 32, 32, 3))
  kept = pretrained.adapt(imported, same_classes)
  np.testing.assert_array_equal(kept["params"]["fc"]["kernel"], sd["fc.weight"].T)


def test_adapt_gray_input_sums_the_first_conv(resnet18_sd):
  _, sd = resnet18_sd
  imported = pretrained.from_torchvision(sd, "resnet18")
  model, target = init(config_for("resnet18", 1 / 8), 10, (1, 32, 32, 1))
  gray = pretrained.adapt(imported, target)
  np.testing.assert_allclose(gray["params"]["conv1"]["kernel"],
                             imported["params"]["conv1"]["kernel"].sum(axis=2, keepdims=True))
  x = normal(6, (2, 32, 32, 1))
  logits, _ = model.apply(gray, x, train=False)
  expected, _ = model.apply(imported, np.repeat(x, 3, axis=-1), train=False)
  assert_logits_close(logits, np.asarray(expected))


def test_adapt_rejects_another_width_or_architecture(resnet18_sd):
  _, sd = resnet18_sd
  imported = pretrained.from_torchvision(sd, "resnet18")
  _, wider = init(config_for("resnet18", 1 / 4), 10, (1, 32, 32, 3))
  with pytest.raises(pretrained.PretrainedError,
                     match=r"config\.model\.pretrained: layer conv1 kernel: pretrained shape "
                           r"\(7, 7, 3, 8\) does not fit the model's \(7, 7, 3, 16\)"):
    pretrained.adapt(imported, wider)
  with pytest.raises(pretrained.PretrainedError, match="layer1.2.conv1.weight is missing"):
    pretrained.from_torchvision(sd, "resnet34")
  with pytest.raises(pretrained.PretrainedError, match=r"pretrained layers \['bn1_1'"):
    pretrained.adapt({"params": {}, "batch_stats": {"bn1_1": {"mean": np.zeros(4)}}},
                     {"params": {}})


def test_adapt_last_layer_takes_the_task_head():
  kernel = lambda *shape: np.full(shape, 1.0, np.float32)
  target = {"params": {"conv1_1": {"kernel": kernel(3, 3, 3, 4) * 0},
                       "logits": {"kernel": kernel(4, 2) * 0, "bias": kernel(2) * 0}}}
  no_top = {"params": {"conv1_1": {"kernel": kernel(3, 3, 3, 4)}}}
  other_classes = {"params": {**no_top["params"],
                              "logits": {"kernel": kernel(4, 5), "bias": kernel(5)}}}
  for imported in (no_top, other_classes):
    adapted = pretrained.adapt(imported, target)
    np.testing.assert_array_equal(adapted["params"]["conv1_1"]["kernel"], kernel(3, 3, 3, 4))
    assert not np.any(adapted["params"]["logits"]["kernel"])
  with pytest.raises(pretrained.PretrainedError, match=r"layer logits kernel.*\(3, 5\)"):
    pretrained.adapt({"params": {**no_top["params"],
                                 "logits": {"kernel": kernel(3, 5), "bias": kernel(5)}}}, target)
