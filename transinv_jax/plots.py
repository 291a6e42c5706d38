"""Figures written by runs: accuracy heatmaps over the tested item centres."""

import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and TPU VMs
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def interpolate_grid(values: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
  """Bilinear interpolation of a grid of values onto every pixel between its extremes.

  Args:
    values: [len(ys), len(xs)], one value per tested centre (rows = y).
    xs: increasing x centres of the columns.
    ys: increasing y centres of the rows.

  Returns:
    [ys[-1] - ys[0] + 1, xs[-1] - xs[0] + 1], the value at every integer centre in between.
  """
  px = np.arange(xs[0], xs[-1] + 1)
  py = np.arange(ys[0], ys[-1] + 1)
  rows = np.stack([np.interp(px, xs, row) for row in values])          # [len(ys), len(px)]
  return np.stack([np.interp(py, ys, col) for col in rows.T], axis=1)  # [len(py), len(px)]


def _finish(fig, ax, image, path, title, chance):
  ax.set_title(title)
  bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  bar.set_label("accuracy")
  if chance is not None:
    bar.ax.axhline(chance, color="white", linestyle="--", linewidth=1)
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def grid_heatmap(accuracy: np.ndarray, xs: Sequence[int], ys: Sequence[int], path: str, *,
                 title: str, trained: Sequence[int] | None = None,
                 chance: float | None = None) -> None:
  """The raw grid: one cell per tested centre, labelled with the centres' pixel coordinates.

  Args:
    accuracy: [len(ys), len(xs)] in [0, 1].
    xs: x centres of the columns.
    ys: y centres of the rows.
    path: PNG file to write.
    title: figure title.
    trained: the training centre (x, y) to mark, if any.
    chance: chance accuracy, marked on the colour bar.
  """
  xs, ys = np.asarray(xs), np.asarray(ys)
  fig, ax = plt.subplots(figsize=(6.4, 5.6))
  image = ax.imshow(accuracy, vmin=0, vmax=1, cmap="viridis")
  for name, ticks, set_ticks, set_labels in (("x", xs, ax.set_xticks, ax.set_xticklabels),
                                             ("y", ys, ax.set_yticks, ax.set_yticklabels)):
    keep = np.arange(0, len(ticks), max(1, len(ticks) // 10))
    set_ticks(keep)
    set_labels(ticks[keep], rotation=90 if name == "x" else 0)
  ax.set_xlabel("item centre x (px)")
  ax.set_ylabel("item centre y (px)")
  if trained is not None and trained[0] in xs and trained[1] in ys:
    ax.plot(np.searchsorted(xs, trained[0]), np.searchsorted(ys, trained[1]), "rx",
            markersize=10, label="trained location")
    ax.legend(loc="upper right", fontsize=8)
  _finish(fig, ax, image, path, title, chance)


def canvas_heatmap(accuracy: np.ndarray, xs: Sequence[int], ys: Sequence[int],
                   canvas_size: int, path: str, *, title: str,
                   trained: Sequence[int] | None = None, chance: float | None = None) -> None:
  """Accuracy interpolated over the canvas, as the paper's figure 1C draws it.

  Arguments as ``grid_heatmap``, plus ``canvas_size``; the area no centre reaches stays blank.
  """
  xs, ys = np.asarray(xs), np.asarray(ys)
  dense = interpolate_grid(np.asarray(accuracy, np.float64), xs, ys)
  fig, ax = plt.subplots(figsize=(6.4, 5.6))
  ax.set_facecolor("0.85")
  image = ax.imshow(dense, vmin=0, vmax=1, cmap="viridis", interpolation="nearest",
                    extent=(xs[0] - 0.5, xs[-1] + 0.5, ys[-1] + 0.5, ys[0] - 0.5))
  ax.set_xlim(0, canvas_size)
  ax.set_ylim(canvas_size, 0)
  ax.set_xlabel("item centre x (px)")
  ax.set_ylabel("item centre y (px)")
  if trained is not None:
    ax.plot(*trained, "rx", markersize=10, label="trained location")
    ax.legend(loc="upper right", fontsize=8)
  _finish(fig, ax, image, path, title, chance)


def class_heatmaps(class_accuracy: np.ndarray, xs: Sequence[int], ys: Sequence[int],
                   class_names: Sequence[str], path: str, *, title: str,
                   trained: Sequence[int] | None = None) -> None:
  """One small accuracy map per class, on the raw grid (the paper's per-class heatmaps).

  Args:
    class_accuracy: [len(ys), len(xs), num_classes] in [0, 1].
    xs: x centres of the columns.
    ys: y centres of the rows.
    class_names: [num_classes] panel titles.
    path: PNG file to write.
    title: figure title.
    trained: the training centre (x, y) to mark, if any.
  """
  xs, ys = np.asarray(xs), np.asarray(ys)
  num_classes = class_accuracy.shape[-1]
  cols = int(np.ceil(np.sqrt(num_classes)))
  rows = int(np.ceil(num_classes / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols + 1, 1.9 * rows + 0.6), squeeze=False)
  extent = (xs[0], xs[-1], ys[-1], ys[0])
  image = None
  for k, ax in enumerate(axes.flat):
    ax.set_xticks([])
    ax.set_yticks([])
    if k >= num_classes:
      ax.axis("off")
      continue
    image = ax.imshow(class_accuracy[..., k], vmin=0, vmax=1, cmap="viridis", extent=extent,
                      interpolation="nearest")
    ax.set_title(str(class_names[k]), fontsize=9)
    if trained is not None:
      ax.plot(*trained, "rx", markersize=5)
  fig.suptitle(title)
  fig.colorbar(image, ax=axes, fraction=0.02, pad=0.02, label="accuracy")
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
