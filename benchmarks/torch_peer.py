r"""The PyTorch peer: the same workloads as throughput.py, written as a researcher would write them.

  python benchmarks/torch_peer.py --batch=128                  # prints one JSON object

- Model: torchvision's VGG16 (or, where torchvision is not installed, the same architecture in
  plain torch: identical layers, shapes and initialisation).
- On a GPU: bf16 autocast, channels_last and ``torch.compile`` (``--compile``, the default there).
- Canvases, the papers' way: items pasted with PIL on black canvases by ``DataLoader`` workers
  on the CPU (``--workers``). Timed alone (``loader_canvases_per_sec``), and as the input of the
  training step (``train_img_per_sec_cpu_canvases``), next to the model fed canvases already on
  the device (``train_img_per_sec``), and inference (``infer_img_per_sec``).

Timings leave out warm-up and compilation. ``throughput.py --peer`` runs this file and prints both
sides with their ratios.

``--end_to_end=condition.npz`` instead runs one exp1 condition end to end, as ``end_to_end.py``
writes it (the items as loaded, before resizing, and the run's sizes and hyperparameters): for each
seed, one after another, a fresh VGG trained with Adam on canvases pasted with PIL at the trained
location until the stop rule fires (training batch accuracy >= the threshold for ``window``
consecutive steps, or the step cap), then the shift sweep (every test item at every grid centre,
canvases made with PIL in ``DataLoader`` workers). Timings include everything, compilation too.
This file stays standalone (numpy, PIL and torch only), as a researcher's script would be.
"""

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


VGG_STAGES = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": STAGES,
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def vgg16(num_classes: int, width: float, dropout: float = 0.5, name: str = "vgg16") -> nn.Module:
  """torchvision.models.vgg16 (at ``width`` 1, the same module tree); plain torch otherwise.

  Args:
    num_classes: size of the last layer.
    width: multiplier on every conv and hidden width.
    dropout: the classifier's dropout (torchvision: 0.5).
    name: ``vgg11``, ``vgg13``, ``vgg16`` or ``vgg19``.

  Returns:
    The model, initialised as torchvision initialises it.
  """
  if width == 1.0:
    try:
      import torchvision  # pylint: disable=g-import-not-at-top
      return getattr(torchvision.models, name)(num_classes=num_classes, dropout=dropout)
    except ImportError:
      pass
  scaled = lambda n: max(1, int(round(n * width)))
  layers, channels = [], 3
  for stage in VGG_STAGES[name]:
    for features in stage:
      layers += [nn.Conv2d(channels, scaled(features), 3, padding=1), nn.ReLU(inplace=True)]
      channels = scaled(features)
    layers.append(nn.MaxPool2d(2, 2))
  hidden = scaled(4096)
  model = nn.Sequential(
      nn.Sequential(*layers), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(),
      nn.Linear(channels * 49, hidden), nn.ReLU(True), nn.Dropout(dropout),
      nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(dropout),
      nn.Linear(hidden, num_classes))
  for m in model.modules():  # torchvision's initialisation
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
      nn.init.normal_(m.weight, 0, 0.01)
      nn.init.zeros_(m.bias)
  return model


class PastedCanvases(Dataset):
  """Items pasted whole with PIL at uniform random positions on black RGB canvases."""

  def __init__(self, items: np.ndarray, canvas: int, length: int):
    self.items = [Image.fromarray(i) for i in items]
    self.canvas, self.length = canvas, length

  def __len__(self):
    return self.length

  def __getitem__(self, index):
    rng = np.random.default_rng(index)
    item = self.items[index % len(self.items)]
    x, y = rng.integers(0, self.canvas - item.width + 1, 2)
    canvas = Image.new("RGB", (self.canvas, self.canvas))
    canvas.paste(item.convert("RGB"), (int(x), int(y)))
    array = torch.from_numpy(np.asarray(canvas, np.float32) / 255.0).permute(2, 0, 1)
    return (array - 0.1) / 0.3, index % 10


class PlacedCanvases(Dataset):
  """Items pasted with PIL at given centres on black RGB canvases, normalised: exp1's canvases.

  Canvas ``i`` holds item ``item_index[i]`` centred at ``centres[centre_index[i]]`` (x, y); an item
  of size s centred at c covers pixels [c - s // 2, c - s // 2 + s), as in the authors' code.
  """

  def __init__(self, items: list, labels: np.ndarray, canvas: int, centres: np.ndarray,
               item_index: np.ndarray, centre_index: np.ndarray, mean: np.ndarray,
               std: np.ndarray):
    self.items, self.labels, self.canvas = items, labels, canvas
    self.corners = np.asarray(centres) - items[0].width // 2
    self.item_index, self.centre_index = item_index, centre_index
    self.mean, self.std = mean.astype(np.float32), std.astype(np.float32)

  def __len__(self):
    return len(self.item_index)

  def __getitem__(self, index):
    item = self.item_index[index]
    canvas = Image.new("RGB", (self.canvas, self.canvas))
    canvas.paste(self.items[item], tuple(int(c) for c in self.corners[self.centre_index[index]]))
    array = (np.asarray(canvas, np.float32) / 255.0 - self.mean) / self.std
    return torch.from_numpy(array).permute(2, 0, 1), int(self.labels[item])


def resized_items(images: np.ndarray, size: int) -> list:
  """uint8 [n, h, w, c] items -> RGB PIL images of ``size`` x ``size`` (PIL's bilinear).

  Resized once up front rather than per canvas: the cheaper way, in the peer's favour.
  """
  return [Image.fromarray(i[..., 0] if i.shape[-1] == 1 else i)
          .resize((size, size), Image.BILINEAR).convert("RGB") for i in images]


def canvas_stats(items: list, canvas: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of canvases in [0, 1] holding one of ``items`` each, on black.

  Every canvas holds one whole item on black, so its moments are the items' times the covered
  fraction, whatever the location (as our side computes them).
  """
  x = np.stack([np.asarray(i, np.float32) / 255.0 for i in items])
  covered = x.shape[1] * x.shape[2] / canvas**2
  mean = covered * x.mean((0, 1, 2))
  second = covered * np.square(x).mean((0, 1, 2))
  return mean, np.sqrt(np.maximum(second - np.square(mean), 1e-12))


def end_to_end(args):
  """One exp1 condition, its seeds one after another; prints one JSON object."""
  start = time.perf_counter()
  data = np.load(args.end_to_end)
  spec = json.loads(str(data["spec"]))
  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  compiled = args.compile == "yes" or (args.compile == "auto" and cuda)
  autocast = lambda: torch.autocast(device.type, torch.bfloat16, enabled=cuda)
  canvas, batch = spec["canvas"], spec["batch"]
  train_items = resized_items(data["train_images"], spec["item"])
  test_items = resized_items(data["test_images"], spec["item"])
  mean, std = canvas_stats(train_items, canvas)
  grid = np.asarray(spec["centres"], np.int64)
  n_test = len(test_items)
  # The sweep: every test item at every grid centre (the same canvases for every seed).
  sweep_set = PlacedCanvases(test_items, data["test_labels"], canvas, grid,
                             np.repeat(np.arange(n_test), len(grid)),
                             np.tile(np.arange(len(grid)), n_test), mean, std)
  loader = lambda dataset, size: DataLoader(dataset, batch_size=size, num_workers=args.workers,
                                            pin_memory=cuda)
  seeds = []
  for seed in spec["seeds"]:
    seed_start = time.perf_counter()
    torch.manual_seed(seed)
    model = vgg16(spec["num_classes"], spec["width"], spec["dropout"], spec["model"])
    model = model.to(device).to(memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(model.parameters(), spec["learning_rate"])
    forward = torch.compile(model) if compiled else model
    # Items drawn uniformly with replacement, all at the trained centre.
    draws = np.random.default_rng(seed).integers(0, len(train_items), spec["max_steps"] * batch)
    train_set = PlacedCanvases(train_items, data["train_labels"], canvas,
                               np.asarray([spec["trained_centre"]]), draws,
                               np.zeros_like(draws), mean, std)
    streak, steps, reason, accuracies = 0, 0, "max_steps", []
    block = spec.get("stop_block", 1)
    model.train()
    for images, labels in loader(train_set, batch):
      images = images.to(device, non_blocking=True).to(memory_format=torch.channels_last)
      labels = labels.to(device, non_blocking=True)
      with autocast():
        logits = forward(images)
        loss = nn.functional.cross_entropy(logits, labels)
      optimiser.zero_grad(set_to_none=True)
      loss.backward()
      optimiser.step()
      # The stop rule reads every step's batch accuracy on the host, as the authors' loop does,
      # and checks the mean of each block of steps (train.StopRule).
      accuracies.append((logits.argmax(1) == labels).float().mean().item())
      steps += 1
      if steps % block == 0:
        block_mean = sum(accuracies[-block:]) / block
        streak = streak + block if block_mean >= spec["stop_accuracy"] else 0
      if spec["stop_window"] > 0 and streak >= spec["stop_window"]:
        reason = "accuracy"
        break
      if steps >= spec["max_steps"]:
        break
    train_seconds = time.perf_counter() - seed_start

    sweep_start = time.perf_counter()
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
      for images, labels in loader(sweep_set, args.sweep_batch):
        images = images.to(device, non_blocking=True).to(memory_format=torch.channels_last)
        with autocast():
          logits = forward(images)
        correct += (logits.argmax(1) == labels.to(device, non_blocking=True)).sum()
    accuracy = correct.item() / len(sweep_set)
    now = time.perf_counter()
    seeds.append({"seed": seed, "seconds": now - seed_start, "train_seconds": train_seconds,
                  "sweep_seconds": now - sweep_start, "steps": steps, "stop_reason": reason,
                  "final_train_accuracy": float(np.mean(accuracies[-spec["log_every"]:])),
                  "sweep_accuracy": accuracy})

  print(json.dumps({
      "device": torch.cuda.get_device_name() if cuda else "cpu",
      "torch": torch.__version__, "compiled": compiled, "bf16_autocast": cuda,
      "model": f"{spec['model']} width {spec['width']}", "canvas": canvas, "item": spec["item"],
      "batch": batch, "workers": args.workers, "sweep_batch": args.sweep_batch,
      "seconds": time.perf_counter() - start,
      "sweep_canvases": len(sweep_set) * len(seeds),
      "steps": [s["steps"] for s in seeds], "stop_reason": [s["stop_reason"] for s in seeds],
      "sweep_accuracy_mean": float(np.mean([s["sweep_accuracy"] for s in seeds])),
      "per_seed": seeds,
  }, indent=2))


def timed(fn, repeats: int, sync) -> float:
  fn()
  fn()  # warm-up (and torch.compile's compilation)
  sync()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  sync()
  return (time.perf_counter() - start) / repeats


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--canvas", type=int, default=224)
  parser.add_argument("--item", type=int, default=50)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--workers", type=int, default=4)
  parser.add_argument("--compile", choices=("auto", "yes", "no"), default="auto",
                      help="torch.compile the model (auto: on a GPU only)")
  parser.add_argument("--end_to_end", default="",
                      help="run the exp1 condition in this .npz (written by end_to_end.py) end "
                           "to end instead of the throughput figures")
  parser.add_argument("--sweep_batch", type=int, default=256,
                      help="--end_to_end: canvases per inference batch in the sweep")
  args = parser.parse_args()
  if args.end_to_end:
    end_to_end(args)
    return

  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  compiled = args.compile == "yes" or (args.compile == "auto" and cuda)
  model = vgg16(10, args.width).to(device).to(memory_format=torch.channels_last)
  optimiser = torch.optim.Adam(model.parameters(), 1e-4)
  forward = torch.compile(model) if compiled else model
  autocast = lambda: torch.autocast(device.type, torch.bfloat16, enabled=cuda)

  def train_step(x, y):
    with autocast():
      loss = nn.functional.cross_entropy(forward(x), y)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()

  shape = (args.batch, 3, args.canvas, args.canvas)
  x = torch.randn(shape, device=device).to(memory_format=torch.channels_last)
  y = torch.randint(0, 10, (args.batch,), device=device)
  train_seconds = timed(lambda: train_step(x, y), args.steps, sync)

  model.eval()

  def infer():
    with torch.no_grad(), autocast():
      forward(x)

  infer_seconds = timed(infer, args.steps, sync)
  model.train()

  items = np.random.default_rng(0).integers(0, 256, (1024, args.item, args.item), np.uint8)
  loader = DataLoader(PastedCanvases(items, args.canvas, args.batch * (2 * args.steps + 4)),
                      batch_size=args.batch, num_workers=args.workers, pin_memory=cuda,
                      persistent_workers=args.workers > 0)
  batches = iter(loader)
  next(batches)
  start = time.perf_counter()
  for _ in range(args.steps):
    next(batches)
  loader_seconds = (time.perf_counter() - start) / args.steps

  def train_from_loader():
    images, labels = next(batches)
    train_step(images.to(device, non_blocking=True).to(memory_format=torch.channels_last),
               labels.to(device, non_blocking=True))

  loader_train_seconds = timed(train_from_loader, args.steps // 2, sync)

  print(json.dumps({
      "device": torch.cuda.get_device_name() if cuda else "cpu",
      "torch": torch.__version__, "compiled": compiled, "bf16_autocast": cuda,
      "model": f"vgg16 width {args.width}", "canvas": args.canvas, "batch": args.batch,
      "workers": args.workers,
      "train_img_per_sec": args.batch / train_seconds,
      "infer_img_per_sec": args.batch / infer_seconds,
      "loader_canvases_per_sec": args.batch / loader_seconds,
      "train_img_per_sec_cpu_canvases": args.batch / loader_train_seconds,
  }, indent=2))


if __name__ == "__main__":
  main()
