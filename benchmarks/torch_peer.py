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


def vgg16(num_classes: int, width: float) -> nn.Module:
  """torchvision.models.vgg16 (at ``width`` 1, the same module tree); plain torch otherwise."""
  if width == 1.0:
    try:
      import torchvision  # pylint: disable=g-import-not-at-top
      return torchvision.models.vgg16(num_classes=num_classes)
    except ImportError:
      pass
  scaled = lambda n: max(1, int(round(n * width)))
  layers, channels = [], 3
  for stage in STAGES:
    for features in stage:
      layers += [nn.Conv2d(channels, scaled(features), 3, padding=1), nn.ReLU(inplace=True)]
      channels = scaled(features)
    layers.append(nn.MaxPool2d(2, 2))
  hidden = scaled(4096)
  model = nn.Sequential(
      nn.Sequential(*layers), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(),
      nn.Linear(channels * 49, hidden), nn.ReLU(True), nn.Dropout(),
      nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, num_classes))
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
  args = parser.parse_args()

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
