"""Pretrained weights (``config.model.pretrained``): torchvision and Keras files -> our variables.

Biscione & Bowers fine-tune an ImageNet-pretrained VGG16; this module reads such weights without
PyTorch or Keras installed and maps them onto our parameter trees:

* ``read_torch_state_dict``: a ``torch.save`` zip file (a state_dict, or a checkpoint dict holding
  one under ``state_dict`` / ``model``), parsed by a restricted unpickler: tensors only, no code.
* ``read_keras_vgg16_h5``: Keras' VGG16 ``.h5`` (full model or weights only, with or without top).
* ``from_torchvision`` / ``to_torchvision``: torchvision VGG11-19 (with or without BatchNorm) and
  ResNet18/34/50 state_dicts <-> ``{"params": ..., "batch_stats": ...}``. Kayhan & van Gemert's
  full-convolution ResNets share torchvision's names; Zhang's anti-aliased ones are renamed to them.
* ``adapt``: fits imported variables to the model being trained (class count, grayscale input).
* ``load_pretrained``: all of the above for a file.

Layouts: torch convs are OIHW and Linear weights [out, in]; ours HWIO and [in, out]. torchvision
flattens VGG's 7x7 map as (c, h, w) before fc6, we as (h, w, c), so fc6's rows are permuted.
"""

import collections
import math
import pathlib
import pickle
import re
import zipfile
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from transinv_jax.models import resnet, vgg

PathLike = str | pathlib.Path

TORCHVISION_MODELS = tuple(vgg.STAGES) + tuple(resnet.RESNETS)
# Layers whose pretrained weights may give way to the task's: the last (class count) and the first
# conv (input channels).
_LAST_LAYERS = ("logits", "fc")
_FIRST_CONVS = ("conv1_1", "conv1")
_NDIM = {"conv": 4, "bn": 1, "dense": 2, "dense_chw": 2}
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_KERAS_CONVS = tuple(f"block{s}_conv{i}" for s, stage in enumerate(vgg.STAGES["vgg16"], 1)
                     for i in range(1, len(stage) + 1))
_KERAS_TOP = {"fc1": "fc6", "fc2": "fc7", "predictions": "logits"}

# (torch module prefix, our layer path, kind): kind is conv, bn, dense, or dense_chw (a Linear
# over the (c, h, w) flatten of the previous conv's output).
Layer = tuple[str, tuple[str, ...], str]


class PretrainedError(ValueError):
  """Pretrained weights that cannot be read or do not fit the model.

  Attributes:
    detail: what is wrong, without the file.
  """

  def __init__(self, detail: str, path: PathLike | None = None):
    where = "config.model.pretrained" + (f"={str(path)!r}" if path is not None else "")
    super().__init__(f"{where}: {detail}")
    self.detail = detail


# ---------------------------------------------------------------------------------------------
# Reading files.


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], *unused: Any) -> np.ndarray:
  """``torch._utils._rebuild_tensor_v2`` on a NumPy storage: a strided view, copied."""
  del unused  # requires_grad, backward hooks, metadata
  if any(n == 0 for n in size):
    return np.empty(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
    raise pickle.UnpicklingError(f"tensor of size {size} reads past its storage")
  view = np.lib.stride_tricks.as_strided(storage[offset:], size,
                                         [s * storage.itemsize for s in stride])
  return np.array(view, storage.dtype.newbyteorder("="))


class _TensorUnpickler(pickle.Unpickler):
  """Unpickles a ``torch.save`` zip archive's ``data.pkl`` into NumPy arrays; nothing else runs."""

  def __init__(self, archive: zipfile.ZipFile, prefix: str, byteorder: str, file: Any):
    super().__init__(file)
    self._archive, self._prefix = archive, prefix
    self._byteorder = "<" if byteorder == "little" else ">"
    self._storages = {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return lambda data, requires_grad, hooks: data
    if module == "torch" and name in _STORAGE_DTYPES:
      return np.dtype(_STORAGE_DTYPES[name]).newbyteorder(self._byteorder)
    raise pickle.UnpicklingError(f"{module}.{name} is not a tensor or a state_dict")

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], np.dtype)):
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
    _, dtype, key, _, numel = pid
    if key not in self._storages:
      data = self._archive.read(f"{self._prefix}/data/{key}")
      self._storages[key] = np.frombuffer(data, dtype, count=numel)
    return self._storages[key]


def read_torch_state_dict(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a ``torch.save`` file without PyTorch.

  Args:
    path: a zip-format ``torch.save`` file (PyTorch >= 1.6) of a state_dict, or of a checkpoint
      dict holding it under ``"state_dict"`` or ``"model"`` (e.g. Zhang's ``.pth.tar``). A
      ``module.`` prefix on every key (``nn.DataParallel``) is dropped.

  Returns:
    Key -> array, in the file's order, with the tensors' dtypes (bfloat16 as ``ml_dtypes``').

  Raises:
    PretrainedError: not a zip-format torch.save file, or it holds anything but tensors.
  """
  if not zipfile.is_zipfile(path):
    raise PretrainedError("not a zip-format torch.save file; the legacy format is not read: "
                          "re-save it with torch.save(torch.load(old), new)", path)
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
      if len(pickles) != 1:
        raise pickle.UnpicklingError("no <name>/data.pkl in the archive")
      prefix = pickles[0].split("/")[0]
      names = set(archive.namelist())
      byteorder = (archive.read(f"{prefix}/byteorder").decode().strip()
                   if f"{prefix}/byteorder" in names else "little")
      with archive.open(pickles[0]) as f:
        obj = _TensorUnpickler(archive, prefix, byteorder, f).load()
  except Exception as e:  # pylint: disable=broad-except: a malformed pickle raises anything
    raise PretrainedError(f"cannot read it as a torch state_dict: {e}", path) from e
  if isinstance(obj, dict):
    obj = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), obj)
  if not (isinstance(obj, dict) and obj and
          all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())):
    raise PretrainedError("holds no state_dict (a dict of tensors)", path)
  if all(k.startswith("module.") for k in obj):
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
  return dict(obj)


def read_keras_vgg16_h5(path: PathLike) -> dict[str, np.ndarray]:
  """Reads Keras' VGG16 weights from a legacy ``.h5`` file (needs h5py).

  Args:
    path: a full model saved by ``model.save("x.h5")`` (weights under ``model_weights``) or a
      weights-only file such as ``vgg16_weights_tf_dim_ordering_tf_kernels(_notop).h5``.

  Returns:
    ``"{layer}/kernel"`` and ``"{layer}/bias"`` for ``block1_conv1`` ... ``block5_conv3`` and,
    when the file has the top, ``fc1``, ``fc2`` and ``predictions``.

  Raises:
    PretrainedError: not HDF5, or no VGG16 layers in it.
  """
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading Keras .h5 weights needs h5py: pip install h5py") from e
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise PretrainedError(f"cannot open it as HDF5: {e}", path) from e
  with f:
    root = f["model_weights"] if "model_weights" in f else f
    if any(name not in root for name in _KERAS_CONVS):
      raise PretrainedError(
          "not Keras VGG16 weights: no block1_conv1 ... block5_conv3 groups (save the model "
          "with model.save('x.h5'), not as .weights.h5)", path)
    weights = {}
    for layer in _KERAS_CONVS + tuple(n for n in _KERAS_TOP if n in root):
      group = root[layer]
      names = [n.decode() if isinstance(n, bytes) else n
               for n in group.attrs.get("weight_names", [])]
      if len(names) != 2:
        raise PretrainedError(f"layer {layer} has weights {names}, not a kernel and a bias", path)
      weights[f"{layer}/kernel"], weights[f"{layer}/bias"] = (np.asarray(group[n]) for n in names)
  return weights


# ---------------------------------------------------------------------------------------------
# Layouts and conversion.


def _vgg_layout(name: str, batch_norm: bool) -> list[Layer]:
  """torchvision's ``features`` indices follow nn.Sequential: [conv, (bn), relu]* then a pool."""
  layout, index = [], 0
  for s, stage in enumerate(vgg.STAGES[name], 1):
    for i in range(1, len(stage) + 1):
      layout.append((f"features.{index}", (f"conv{s}_{i}",), "conv"))
      if batch_norm:
        layout.append((f"features.{index + 1}", (f"bn{s}_{i}",), "bn"))
      index += 3 if batch_norm else 2
    index += 1
  return layout + [("classifier.0", ("fc6",), "dense_chw"), ("classifier.3", ("fc7",), "dense"),
                   ("classifier.6", ("logits",), "dense")]


def _resnet_layout(name: str) -> list[Layer]:
  """torchvision's ResNet names; the first block of a stage downsamples (bottlenecks: all four)."""
  stage_sizes, bottleneck = (resnet.RESNETS[name].keywords[k]
                             for k in ("stage_sizes", "bottleneck"))
  layout = [("conv1", ("conv1",), "conv"), ("bn1", ("bn1",), "bn")]
  for i, blocks in enumerate(stage_sizes, 1):
    for j in range(blocks):
      torch_block, block = f"layer{i}.{j}", f"layer{i}_{j}"
      for k in range(1, 4 if bottleneck else 3):
        layout += [(f"{torch_block}.conv{k}", (block, f"conv{k}"), "conv"),
                   (f"{torch_block}.bn{k}", (block, f"bn{k}"), "bn")]
      if j == 0 and (i > 1 or bottleneck):
        layout += [(f"{torch_block}.downsample.0", (block, "downsample_conv"), "conv"),
                   (f"{torch_block}.downsample.1", (block, "downsample_bn"), "bn")]
  return layout + [("fc", ("fc",), "dense")]


def _layout(name: str, batch_norm: bool) -> list[Layer]:
  if name in vgg.STAGES:
    return _vgg_layout(name, batch_norm)
  if name in resnet.RESNETS:
    return _resnet_layout(name)
  raise PretrainedError(f"no torchvision weights for model {name!r}; "
                        f"use one of {TORCHVISION_MODELS}")


def _from_antialiased(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Zhang's anti-aliased ResNet names -> torchvision's.

  His strided blocks wrap ``conv2`` (basic) / ``conv3`` (bottleneck) as ``Sequential(BlurPool,
  conv)`` and prepend a BlurPool to ``downsample``; the BlurPools' ``filt`` buffers are fixed
  binomial filters, not weights (``config.model.blur_size`` sets them).
  """
  renamed = {}
  for key, value in state_dict.items():
    if key.endswith(".filt"):
      continue
    key = re.sub(r"\.conv([23])\.1\.", r".conv\1.", key)
    m = re.fullmatch(r"(layer\d+\.\d+\.downsample)\.(\d)\.(.+)", key)
    if m and f"{m[1]}.2.weight" in state_dict:
      key = f"{m[1]}.{int(m[2]) - 1}.{m[3]}"
    renamed[key] = value
  return renamed


def _set(tree: dict, path: tuple[str, ...], leaves: dict) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = leaves


def _get(tree: Mapping, path: tuple[str, ...]) -> Mapping:
  for name in path:
    tree = tree[name]
  return tree


def _chw_side(inputs: int, channels: int) -> int:
  """The side of the square map that a (c, h, w) flatten of ``inputs`` values came from."""
  side = math.isqrt(inputs // channels)
  if side * side * channels != inputs:
    raise PretrainedError(f"{inputs} inputs are not a square map of {channels} channels")
  return side


def from_torchvision(state_dict: Mapping[str, Any], name: str) -> dict:
  """Converts a torchvision state_dict to our model's variables.

  Args:
    state_dict: torchvision's keys (``read_torch_state_dict``'s output, or tensors). VGG with
      BatchNorm is detected from the keys; Zhang's anti-aliased ResNet keys are accepted too.
    name: ``vgg11`` | ``vgg13`` | ``vgg16`` | ``vgg19`` | ``resnet18`` | ``resnet34`` |
      ``resnet50``.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` (no ``batch_stats`` without BatchNorm), float32 NumPy.

  Raises:
    PretrainedError: a key is missing or left over, or a tensor has the wrong rank.
  """
  state = {k: v for k, v in _from_antialiased(state_dict).items()
           if not k.endswith(".num_batches_tracked")}
  used = set()

  def take(key: str, ndim: int) -> np.ndarray:
    if key not in state:
      raise PretrainedError(f"{key} is missing: not torchvision's {name}")
    used.add(key)
    value = np.asarray(state[key], np.float32)
    if value.ndim != ndim:
      raise PretrainedError(f"{key} has shape {value.shape}, expected {ndim} dimensions")
    return value

  params, stats, channels = {}, {}, 0
  # features.1 is VGG-BN's first BatchNorm (weight and bias even without running statistics).
  for prefix, path, kind in _layout(name, "features.1.weight" in state):
    w = take(f"{prefix}.weight", _NDIM[kind])
    if kind == "bn":
      _set(params, path, {"scale": w, "bias": take(f"{prefix}.bias", 1)})
      if f"{prefix}.running_mean" in state:  # absent with track_running_stats=False
        _set(stats, path, {"mean": take(f"{prefix}.running_mean", 1),
                           "var": take(f"{prefix}.running_var", 1)})
      continue
    if kind == "conv":
      leaves, channels = {"kernel": w.transpose(2, 3, 1, 0)}, w.shape[0]
    elif kind == "dense":
      leaves = {"kernel": w.T}
    else:
      side = _chw_side(w.shape[1], channels)
      leaves = {"kernel": w.reshape(-1, channels, side, side).transpose(2, 3, 1, 0)
                .reshape(w.shape[1], -1)}
    if f"{prefix}.bias" in state:
      leaves["bias"] = take(f"{prefix}.bias", 1)
    _set(params, path, leaves)
  if extra := sorted(set(state) - used):
    raise PretrainedError(f"keys {extra[:4]}{'...' if len(extra) > 4 else ''} are not "
                          f"torchvision's {name}")
  return {"params": params, **({"batch_stats": stats} if stats else {})}


def to_torchvision(variables: Mapping, name: str) -> dict[str, np.ndarray]:
  """The inverse of ``from_torchvision``: our variables -> torchvision's state_dict.

  Args:
    variables: ``{"params": ..., "batch_stats": ...}`` of a model built with ``name`` (e.g. a
      train state's ``variables``).
    name: as ``from_torchvision``.

  Returns:
    torchvision's keys in its order, float32 arrays, ``num_batches_tracked`` as int64 zeros.
    A model without ``batch_stats`` (``batch_norm_stats="batch"``) gives its BatchNorms'
    ``weight`` and ``bias`` only, as ``BatchNorm2d(track_running_stats=False)``'s state_dict.

  Raises:
    PretrainedError: the variables are not that model's (a layer missing or left over).
  """
  params, stats = variables["params"], variables.get("batch_stats", {})
  out, used, channels = {}, set(), 0
  for prefix, path, kind in _layout(name, "bn1_1" in params):
    try:
      leaves = {k: np.array(v, np.float32) for k, v in _get(params, path).items()}
      if kind == "bn" and stats:
        leaves.update({k: np.array(v, np.float32) for k, v in _get(stats, path).items()})
    except KeyError as e:
      raise PretrainedError(f"layer {'/'.join(path)} is missing: not our {name}") from e
    used.add(path)
    if kind == "bn":
      out.update({f"{prefix}.weight": leaves["scale"], f"{prefix}.bias": leaves["bias"]})
      if stats:
        out.update({f"{prefix}.running_mean": leaves["mean"],
                    f"{prefix}.running_var": leaves["var"],
                    f"{prefix}.num_batches_tracked": np.zeros((), np.int64)})
      continue
    kernel = leaves["kernel"]
    if kind == "conv":
      out[f"{prefix}.weight"], channels = kernel.transpose(3, 2, 0, 1), kernel.shape[-1]
    elif kind == "dense":
      out[f"{prefix}.weight"] = kernel.T
    else:
      side = _chw_side(kernel.shape[0], channels)
      out[f"{prefix}.weight"] = (kernel.reshape(side, side, channels, -1).transpose(3, 2, 0, 1)
                                 .reshape(kernel.shape[1], -1))
    if "bias" in leaves:
      out[f"{prefix}.bias"] = leaves["bias"]
  ours = {k[:-1] for k in flax.traverse_util.flatten_dict(dict(params))}
  if extra := sorted("/".join(p) for p in ours - used):
    raise PretrainedError(f"layers {extra[:4]} have no place in torchvision's {name}")
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_torchvision(variables: Mapping, name: str, path: PathLike) -> None:
  """Saves ``to_torchvision(variables, name)`` with ``torch.save``, for PyTorch users.

  Args:
    variables: as ``to_torchvision``.
    name: as ``to_torchvision``.
    path: the file to write; ``torchvision.models.<name>().load_state_dict(torch.load(path))``.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("save_torchvision needs PyTorch: pip install torch") from e
  torch.save({k: torch.from_numpy(v) for k, v in to_torchvision(variables, name).items()}, path)


def from_keras_vgg16(weights: Mapping[str, np.ndarray]) -> dict:
  """Converts ``read_keras_vgg16_h5``'s output to our VGG16's variables.

  Keras kernels are already HWIO / [in, out] and Keras flattens (h, w, c) as we do.

  Args:
    weights: ``"{keras layer}/kernel"`` and ``"/bias"``; the top (``fc1``, ``fc2``,
      ``predictions``) is optional.

  Returns:
    ``{"params": ...}`` with ``conv1_1`` ... ``conv5_3`` and, if present, ``fc6``, ``fc7``,
    ``logits``.

  Raises:
    PretrainedError: a conv layer is missing.
  """
  convs = [path[0] for _, path, kind in _vgg_layout("vgg16", False) if kind == "conv"]
  mapping = {**dict(zip(_KERAS_CONVS, convs)), **_KERAS_TOP}
  params = {}
  for keras_name, name in mapping.items():
    if f"{keras_name}/kernel" not in weights:
      if keras_name in _KERAS_TOP:
        continue
      raise PretrainedError(f"Keras layer {keras_name} is missing: not VGG16 weights")
    params[name] = {k: np.asarray(weights[f"{keras_name}/{k}"], np.float32)
                    for k in ("kernel", "bias")}
  return {"params": params}


# ---------------------------------------------------------------------------------------------
# Fitting to the model.


def abstract_target(model, input_shape: tuple[int, ...]) -> dict:
  """A model's variables as zero-strided numpy views: the shapes and dtypes ``adapt`` checks,
  without computing or holding the real arrays.

  Args:
    model: an unbound Flax module.
    input_shape: ``(1, height, width, channels)``.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(input_shape))
  return jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), shapes)


def adapt(pretrained: Mapping, target: Mapping) -> dict:
  """Fits imported variables to the model being trained.

  Every layer keeps its pretrained weights except: the last layer (``logits`` / ``fc``) takes the
  target's fresh initialisation where its shape differs only in the class count, or where the
  file has no top; the first conv (``conv1_1`` / ``conv1``) of a 1-channel model gets the
  pretrained kernel summed over its input channels, so a gray image gives what its 3-channel
  replica gave.

  Args:
    pretrained: ``from_torchvision`` / ``from_keras_vgg16`` output.
    target: the freshly initialised variables of the model to train (``model.init(...)``).

  Returns:
    ``target``'s tree (and dtypes) as JAX arrays, filled with the pretrained values.

  Raises:
    PretrainedError: a layer missing on either side or of another shape (a width multiplier
      other than 1, another architecture or head).
  """
  flat_old = flax.traverse_util.flatten_dict(dict(pretrained))
  flat_new = flax.traverse_util.flatten_dict(dict(target))
  if extra := sorted({"/".join(k[1:-1]) for k in set(flat_old) - set(flat_new)}):
    raise PretrainedError(f"pretrained layers {extra[:4]} are not in the model (another "
                          "architecture or head?)")
  out = {}
  # Kernels first, so that a mismatch names a conv or dense layer rather than a BatchNorm.
  for key in sorted(flat_new, key=lambda k: k[-1] != "kernel"):
    fresh, old, layer = flat_new[key], flat_old.get(key), "/".join(key[1:-1])
    last = key[1] in _LAST_LAYERS
    if old is None and not last:
      raise PretrainedError(f"layer {layer} has no pretrained {key[-1]}")
    if old is None or (last and old.shape != fresh.shape
                       and old.shape[:-1] == fresh.shape[:-1]):
      out[key] = jnp.asarray(fresh)
      continue
    if (key[1:] in [(c, "kernel") for c in _FIRST_CONVS] and fresh.shape[2] == 1
        and old.shape[:2] + old.shape[3:] == fresh.shape[:2] + fresh.shape[3:]):
      old = np.sum(old, axis=2, keepdims=True)
    if old.shape != fresh.shape:
      raise PretrainedError(
          f"layer {layer} {key[-1]}: pretrained shape {tuple(old.shape)} does not fit the model's "
          f"{tuple(fresh.shape)} (config.model.width must be 1 and the architecture the file's)")
    out[key] = jnp.asarray(old, fresh.dtype)
  return flax.traverse_util.unflatten_dict({k: out[k] for k in flat_new})


def read_converted(path: PathLike, name: str) -> dict:
  """A weights file as this zoo's variables (``from_torchvision`` / ``from_keras_vgg16``).

  Args:
    path: a ``.h5`` file of Keras VGG16 weights (``name == "vgg16"``), or any other suffix: a
      torchvision-layout ``torch.save`` file.
    name: ``config.model.name``.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` of numpy arrays, with the file's own class count.

  Raises:
    PretrainedError: the file is missing, unreadable or not of that architecture.
  """
  if not pathlib.Path(path).is_file():
    raise PretrainedError("no such file", path)
  if pathlib.Path(path).suffix == ".h5":
    if name != "vgg16":
      raise PretrainedError(f"Keras .h5 weights are read for vgg16 only, not {name}", path)
    weights, convert = read_keras_vgg16_h5(path), from_keras_vgg16
  else:
    weights, convert = read_torch_state_dict(path), lambda sd: from_torchvision(sd, name)
  try:
    return convert(weights)
  except PretrainedError as e:
    raise PretrainedError(e.detail, path) from e


def load_pretrained(path: PathLike, name: str, target: Mapping) -> dict:
  """Reads, converts and adapts pretrained weights for every seed of a model.

  The file is read once and adapted to each seed (``adapt``), so each keeps its own fresh last
  layer where the class count differs.

  Args:
    path: a ``.h5`` file of Keras VGG16 weights (``name == "vgg16"``), or any other suffix: a
      torchvision-layout ``torch.save`` file.
    name: ``config.model.name``.
    target: the model's freshly initialised variables, every leaf ``[seeds, ...]`` (a train
      state's ``variables``).

  Returns:
    Variables for ``model.apply`` of each seed, ``target``'s tree, stacked ``[seeds, ...]``.

  Raises:
    PretrainedError: the file is missing, unreadable or does not fit the model.
  """
  converted = read_converted(path, name)
  num_seeds = len(jax.tree.leaves(target)[0])
  try:
    per_seed = [adapt(converted, jax.tree.map(lambda x, i=i: np.asarray(x)[i], target))
                for i in range(num_seeds)]
  except PretrainedError as e:
    raise PretrainedError(e.detail, path) from e
  return jax.tree.map(lambda *xs: np.stack(xs), *per_seed)
