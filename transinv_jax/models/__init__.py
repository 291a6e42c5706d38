"""Model zoo: every model is a Flax linen module returning ``(logits, intermediates)``.

``build_model(config.model, num_classes)`` turns the config's knobs into one of them:

  name        vgg11 | vgg13 | vgg16 | vgg19 | resnet18 | resnet34 | resnet50 | fcn | rook
  padding     zeros | valid | full | circular | reflect | replicate   (every conv)
  padding_overrides  "conv1_1=full,conv5_3=valid"   (VGG: per layer)
  pooling     max | avg | blur | aps        (VGG: every 2x2 max pool; ResNet: max | blur)
  blur_size   1..7, the binomial filter of BlurPool / MaxBlurPool / APS (1 = no blur)
  avg_pool_size  the average pool's window (Azulay & Weiss: 6)
  batch_norm  VGG with BatchNorm (ResNets always have it)
  batch_norm_stats  running | batch   (what every BatchNorm normalises with at test time)
  head        default | classifier | gap | gmp
"""

import functools
import json

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from transinv_jax.models import layers, resnet, small, vgg

MODELS = ("vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "fcn", "rook")
POOLINGS = ("max", "avg", "blur", "aps")
RESNETS = resnet.RESNETS
# "running": running averages at test time (torch's model.eval()); "batch": the batch's own
# statistics in training and testing alike, no running averages (BatchNorm2d(
# track_running_stats=False), the authors' framework).
BATCH_NORM_STATS = ("running", "batch")


def default_config() -> ml_collections.ConfigDict:
  """The ``config.model`` section with every knob at its default (a plain VGG16)."""
  config = ml_collections.ConfigDict()
  config.name = "vgg16"
  config.width = 1.0              # multiplier on every conv and hidden width
  config.dropout = 0.5            # VGG classifier dropout (torchvision's)
  config.dtype = "auto"           # bfloat16 on GPU/TPU, float32 on CPU
  config.padding = "zeros"        # zeros | valid | full | circular | reflect | replicate
  config.padding_overrides = ""   # VGG, per layer: "conv1_1=full,conv5_3=valid"
  config.pooling = "max"          # max | avg | blur | aps   (ResNets: max | blur)
  config.blur_size = 3            # binomial filter size for blur / aps, 1..7 (1 = none)
  config.avg_pool_size = 6        # pooling="avg": Azulay & Weiss' 6x6 average pool
  config.batch_norm = False       # VGG-BN (ResNets always use BatchNorm)
  config.batch_norm_stats = "running"  # running | batch: BatchNorm's statistics at test time
  config.head = "default"         # default | classifier | gap | gmp
  config.pretrained = ""          # torchvision .pth / Keras VGG16 .h5 to start from ("" = none)
  return config


def compute_dtype(name: str, platform: str) -> jnp.dtype:
  """``"auto"`` is bfloat16 on GPU/TPU and float32 on CPU (where bf16 convs are slow)."""
  if name == "auto":
    return jnp.float32 if platform == "cpu" else jnp.bfloat16
  return jnp.dtype(name)


def parse_overrides(spec: str) -> dict[str, str]:
  """``"conv1_1=full, conv5_3=valid"`` -> ``{"conv1_1": "full", "conv5_3": "valid"}``."""
  pairs = [p.strip() for p in spec.split(",") if p.strip()]
  if any(p.count("=") != 1 for p in pairs):
    raise ValueError(f"padding overrides {spec!r}: write layer=mode pairs, comma separated")
  return dict(tuple(s.strip() for s in p.split("=")) for p in pairs)


def vgg_pool(config: ml_collections.ConfigDict) -> layers.PoolFn:
  """The downsampling that ends each VGG stage.

  ``avg`` is Azulay & Weiss' replacement of each 2x2 max pool by a k x k average pool: stride 2 and
  padding (k - 2) / 2 keep every feature map exactly half the size (so VGG16's classifier sees
  7x7 at 224), and padded cells are left out of the average, as TF/Keras "same" pooling does.
  """
  if config.pooling == "max":
    return layers.max_pool
  if config.pooling == "avg":
    k = config.avg_pool_size
    return functools.partial(layers.avg_pool, window=k, stride=2, padding=(k - 2) // 2,
                             count_include_pad=False)
  if config.pooling == "blur":
    return functools.partial(layers.max_blur_pool, size=config.blur_size)
  if config.pooling == "aps":
    return functools.partial(layers.aps_max_pool, blur_size=config.blur_size)
  raise ValueError(f"unknown pooling {config.pooling!r}; use one of {POOLINGS}")


def has_batch_norm(config: ml_collections.ConfigDict) -> bool:
  """Whether the model ``config`` describes has BatchNorm layers (VGG-BN and the ResNets)."""
  return config.name in RESNETS or (config.name in vgg.STAGES and config.batch_norm)


def batch_norm(config: ml_collections.ConfigDict) -> layers.ModuleDef:
  """The BatchNorm module class of ``config.batch_norm_stats``.

  ``running`` is Flax's BatchNorm with torch's momentum and epsilon: batch statistics in
  training, running averages (the ``batch_stats`` collection) at test time. ``batch`` is
  ``layers.BatchStatisticsNorm``: the batch's statistics always, no ``batch_stats`` at all.

  Raises:
    ValueError: an unknown value, or ``batch`` for a model without BatchNorm.
  """
  stats = config.get("batch_norm_stats", "running")  # configs saved before the key existed
  if stats not in BATCH_NORM_STATS:
    raise ValueError(f"config.model.batch_norm_stats={stats!r}: use one of "
                     f"{', '.join(BATCH_NORM_STATS)}")
  if stats == "batch" and not has_batch_norm(config):
    fix = ("set config.model.batch_norm=True" if config.name in vgg.STAGES
           else "use a VGG with config.model.batch_norm=True or a ResNet")
    raise ValueError(f"config.model.batch_norm_stats='batch' needs BatchNorm layers, which "
                     f"{config.name} does not have: {fix}, or keep 'running'")
  return resnet.BatchNorm if stats == "running" else layers.BatchStatisticsNorm


def uses_batch_statistics(model: nn.Module) -> bool:
  """Whether ``model`` normalises by its input batch's statistics at test time too.

  Such a model's answer for an item depends on the batch it comes in; ``kernel.Inference``
  reads this to run evaluations on the items at one placement at a time.
  """
  norm = getattr(model, "norm", None)
  return getattr(norm, "func", norm) is layers.BatchStatisticsNorm


def architecture_key(config: ml_collections.ConfigDict) -> str:
  """What ``config`` (a ``config.model`` section) builds, as a string: every key but
  ``pretrained``, which says where weights come from, not what the network is."""
  architecture = {k: v for k, v in config.to_dict().items() if k != "pretrained"}
  return json.dumps(architecture, sort_keys=True, default=str)


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                platform: str = "cpu") -> nn.Module:
  """The module that ``config`` (a ``config.model`` section) describes.

  Args:
    config: the ``config.model`` section (see the module docstring).
    num_classes: size of the last layer.
    platform: ``jax.default_backend()``, to resolve ``dtype="auto"``.

  Returns:
    An unbound Flax module; ``init``/``apply`` it with ``x`` and ``train=``.
  """
  dtype = compute_dtype(config.dtype, platform)
  norm = batch_norm(config)  # validates batch_norm_stats for every model
  conv = functools.partial(layers.Conv, padding=config.padding)
  head = None if config.head == "default" else config.head
  if config.name in vgg.STAGES:
    return vgg.VGG(
        stages=vgg.STAGES[config.name], num_classes=num_classes, width=config.width,
        dropout_rate=config.dropout, head=head or "classifier",
        conv=functools.partial(conv, kernel_size=3),
        # Pairs, not a dict: a hashable module can key caches of compiled programs.
        padding_overrides=tuple(sorted(parse_overrides(config.padding_overrides).items())),
        norm=norm if config.batch_norm else None, pool=vgg_pool(config),
        dtype=dtype)
  if config.name in RESNETS:
    if config.pooling not in ("max", "blur"):
      raise ValueError(f"ResNets take pooling max or blur, not {config.pooling!r}")
    return RESNETS[config.name](
        num_classes=num_classes, width=config.width, conv=conv, norm=norm, head=head or "gap",
        blur_size=config.blur_size if config.pooling == "blur" else 0, dtype=dtype)
  if config.name == "fcn":
    return small.FCN(num_classes=num_classes, width=config.width, dtype=dtype)
  if config.name == "rook":
    return small.RookNet(num_classes=num_classes, width=config.width,
                         conv=functools.partial(conv, kernel_size=5), dtype=dtype)
  raise ValueError(f"unknown model {config.name!r}; use one of {MODELS}")
