"""Figures written by runs: accuracy heatmaps over the tested item centres, bars, matrices and
cosine-similarity curves (the experiments' figures are composed from these in reports.py)."""

import io
import textwrap
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and TPU VMs
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from etils import epath

from transinv_jax import workdir as workdir_lib


def savefig(fig, path: epath.PathLike, dpi: int = 120) -> None:
  """Writes ``fig`` to ``path`` (local or ``gs://``), atomically (``workdir.write_bytes_atomic``).

  Args:
    fig: a matplotlib figure.
    path: the file; its suffix names the format (``.png``, ``.pdf``, ...).
    dpi: resolution.
  """
  path = epath.Path(path)
  buffer = io.BytesIO()  # matplotlib writes local files only; the bytes go through epath
  fig.savefig(buffer, format=path.suffix[1:] or "png", dpi=dpi)
  workdir_lib.write_bytes_atomic(path, buffer.getvalue())


def fit_title(fig, title: str, fontsize: float = 10) -> str:
  """``title`` with each line wrapped to ``fig``'s width, so a figure of one cell or panel (a
  one-pair exp2 matrix, a one-class heatmap) never cuts its title off."""
  # About 0.6 em per character in matplotlib's default sans-serif; 72 points an inch.
  chars = max(12, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))
  return "\n".join(textwrap.fill(line, chars) for line in title.split("\n"))


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
  savefig(fig, path, dpi=120)
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
  fig, axes = plt.subplots(rows, cols, figsize=(max(4.0, 1.9 * cols + 1), 1.9 * rows + 0.9),
                           squeeze=False, layout="constrained")
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
  fig.suptitle(fit_title(fig, title, 12))
  fig.colorbar(image, ax=axes, fraction=0.02, pad=0.02, label="accuracy")
  savefig(fig, path, dpi=110)
  plt.close(fig)


# Exp5 (Biscione & Bowers figures 5, 10, 11, 12): cosine similarity against displacement.


def _save(fig, path: str, dpi: int = 120) -> None:
  fig.tight_layout()
  savefig(fig, path, dpi=dpi)
  plt.close(fig)


def _similarity_ylim(ax, values) -> None:
  # Post-ReLU similarities lie in [0, 1]; logits (no ReLU) may go below 0.
  low = min(0.0, float(np.nanmin([np.nanmin(v) for v in values]))) if values else 0.0
  ax.set_ylim(low - 0.02, 1.02)


def similarity_curves(displacements: Sequence[int], curves: dict[str, np.ndarray], path: str, *,
                      title: str, stds: dict[str, np.ndarray] | None = None,
                      ylabel: str = "cosine similarity") -> None:
  """Similarity against horizontal displacement, one line per network or condition (fig. 5A, 10).

  Args:
    displacements: [D] displacement of each tested centre from the base, in px.
    curves: {label: [D] similarity}, one line each, drawn in the dict's order.
    path: PNG file to write.
    title: figure title.
    stds: optional {label: [D]} spread (e.g. std across seeds), drawn as a band around the line.
    ylabel: y axis label.
  """
  x = np.asarray(displacements)
  order = np.argsort(x, kind="stable")
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for label, values in curves.items():
    values = np.asarray(values, np.float64)
    (line,) = ax.plot(x[order], values[order], marker="o", markersize=3, label=str(label))
    if stds is not None and label in stds:
      spread = np.asarray(stds[label], np.float64)[order]
      ax.fill_between(x[order], values[order] - spread, values[order] + spread,
                      color=line.get_color(), alpha=0.2, linewidth=0)
  _similarity_ylim(ax, [np.asarray(v) for v in curves.values()])
  ax.set_xlabel("horizontal displacement (px)")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if curves:
    ax.legend(fontsize=8, loc="best")
  _save(fig, path)


def similarity_layers(layers: Sequence[str], displacements: Sequence[int], values: np.ndarray,
                      path: str, *, title: str) -> None:
  """Heatmap of similarity per layer (x, network order) and displacement (y): figure 11.

  Args:
    layers: [L] layer names, network order.
    displacements: [D] displacement of each tested centre, in px.
    values: [L, D] similarity (e.g. ``SimilarityResult.mean``).
    path: PNG file to write.
    title: figure title.
  """
  values = np.asarray(values, np.float64)
  displacements = np.asarray(displacements)
  fig, ax = plt.subplots(figsize=(max(6.4, 0.35 * len(layers) + 2.5),
                                  max(4.0, 0.25 * len(displacements) + 1.8)))
  image = ax.imshow(values.T, vmin=min(0.0, float(np.nanmin(values))), vmax=1, cmap="viridis",
                    aspect="auto", interpolation="nearest")
  ax.set_xticks(np.arange(len(layers)))
  ax.set_xticklabels(layers, rotation=90, fontsize=8)
  keep = np.arange(0, len(displacements), max(1, len(displacements) // 20))
  ax.set_yticks(keep)
  ax.set_yticklabels(displacements[keep], fontsize=8)
  ax.set_xlabel("layer")
  ax.set_ylabel("horizontal displacement (px)")
  ax.set_title(title)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
  _save(fig, path)


def similarity_by_layer_lines(layers: Sequence[str], curves: dict[str, np.ndarray], path: str, *,
                              title: str, stds: dict[str, np.ndarray] | None = None,
                              ylabel: str = "cosine similarity", xlabel: str = "layer") -> None:
  """Similarity per layer at one displacement, one line per network or condition: figure 12.

  Also any categorical x axis: stages of an experiment (figure 10: before / after fine-tuning).

  Args:
    layers: [L] layer names, network order (the x axis).
    curves: {label: [L] similarity}, one line each.
    path: PNG file to write.
    title: figure title (say which displacement).
    stds: optional {label: [L]} spread, drawn as a band around the line.
    ylabel: y axis label.
    xlabel: x axis label.
  """
  x = np.arange(len(layers))
  fig, ax = plt.subplots(figsize=(max(6.4, 0.35 * len(layers) + 2.5), 4.6))
  for label, values in curves.items():
    values = np.asarray(values, np.float64)
    (line,) = ax.plot(x, values, marker="o", markersize=3, label=str(label))
    if stds is not None and label in stds:
      spread = np.asarray(stds[label], np.float64)
      ax.fill_between(x, values - spread, values + spread, color=line.get_color(), alpha=0.2,
                      linewidth=0)
  _similarity_ylim(ax, [np.asarray(v) for v in curves.values()])
  ax.set_xticks(x)
  short = max(len(str(name)) for name in layers) <= 20 if len(layers) else True
  ax.set_xticklabels(layers, rotation=0 if short and len(layers) <= 4 else 90, fontsize=8)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if curves:
    ax.legend(fontsize=8, loc="best")
  _save(fig, path)


def heatmap_panels(panels: Sequence[np.ndarray], xs: Sequence[int], ys: Sequence[int],
                   canvas_size: int | None, path: str, *, titles: Sequence[str], title: str,
                   trained: Sequence[Sequence[int] | None] | None = None) -> None:
  """Several accuracy maps side by side on one colour scale (figure 1C bottom, figures 3, 4, 9).

  Args:
    panels: each ``[len(ys), len(xs)]`` in [0, 1].
    xs: x centres of the columns.
    ys: y centres of the rows.
    canvas_size: interpolate over this canvas (the paper's display); None: the raw grid.
    path: PNG file to write.
    titles: one per panel.
    title: figure title.
    trained: per panel, the training centre to mark, or None.
  """
  xs, ys = np.asarray(xs), np.asarray(ys)
  count = len(panels)
  cols = min(count, 6)
  rows = int(np.ceil(count / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(max(4.5, 2.6 * cols + 1.2), 2.7 * rows + 0.9),
                           squeeze=False, layout="constrained")
  image = None
  for k, ax in enumerate(axes.flat):
    if k >= count:
      ax.axis("off")
      continue
    if canvas_size:
      dense = interpolate_grid(np.asarray(panels[k], np.float64), xs, ys)
      ax.set_facecolor("0.85")
      image = ax.imshow(dense, vmin=0, vmax=1, cmap="viridis", interpolation="nearest",
                        extent=(xs[0] - 0.5, xs[-1] + 0.5, ys[-1] + 0.5, ys[0] - 0.5))
      ax.set_xlim(0, canvas_size)
      ax.set_ylim(canvas_size, 0)
    else:
      image = ax.imshow(panels[k], vmin=0, vmax=1, cmap="viridis", interpolation="nearest",
                        extent=(xs[0], xs[-1], ys[-1], ys[0]))
    mark = trained[k] if trained else None
    if mark is not None:
      ax.plot(*mark, "rx", markersize=7)
    ax.set_title(titles[k], fontsize=8)
    ax.tick_params(labelsize=7)
  fig.suptitle(fit_title(fig, title), fontsize=10)
  fig.colorbar(image, ax=axes, fraction=0.02, pad=0.02, label="accuracy")
  savefig(fig, path, dpi=110)
  plt.close(fig)


def coverage_panels(maps: Sequence[np.ndarray], regions: Sequence[np.ndarray], path: str, *,
                    titles: Sequence[str], title: str) -> None:
  """Training pixel coverage per class group, each group's region outlined (exp3, exp4).

  Each panel outlines its own group's region in white and the other groups' regions dashed, so
  an item spilling out of its region shows as coverage beyond the white line. Each panel has its
  own colour scale: a group spread over three quadrants covers each pixel less often than one
  confined to a quadrant, and what matters is where its pixels go.

  Args:
    maps: per group, float [canvas, canvas] ([y, x]): how often a training item covers the
      pixel (``locations.coverage_map``).
    regions: per group, bool [canvas, canvas]: the region's pixels.
    path: PNG file to write.
    titles: one per panel.
    title: figure title.
  """
  count = len(maps)
  cols = min(count, 5)
  rows = int(np.ceil(count / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(max(5.0, 3.4 * cols + 0.6), 3.1 * rows + 1.1),
                           squeeze=False, layout="constrained")
  size = maps[0].shape[0]
  grid = np.arange(size) + 0.5  # pixel centres: the 0.5 contour runs along pixel edges
  for k, ax in enumerate(axes.flat):
    if k >= count:
      ax.axis("off")
      continue
    image = ax.imshow(maps[k], vmin=0, cmap="magma", interpolation="nearest",
                      extent=(0, size, size, 0))
    for j, region in enumerate(regions):
      if j != k and region.any() and not region.all():
        ax.contour(grid, grid, region.astype(float), levels=[0.5], colors="0.6",
                   linewidths=0.8, linestyles="--")
    if regions[k].any() and not regions[k].all():
      ax.contour(grid, grid, regions[k].astype(float), levels=[0.5], colors="w", linewidths=1.2)
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)
    ax.set_title(titles[k], fontsize=8)
    ax.tick_params(labelsize=7)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=7)
  fig.suptitle(f"{title}\ncolour: P(pixel covered by a training item of the group)",
               fontsize=10)
  savefig(fig, path, dpi=110)
  plt.close(fig)


def grouped_bars(means: np.ndarray, stds: np.ndarray, groups: Sequence[str],
                 series: Sequence[str], path: str, *, title: str, ylabel: str,
                 chance: Sequence[float] | None = None, legend_title: str = "") -> None:
  """Bars with error bars: one group per column of ``means``, one bar per row (figures 1C, 6).

  Args:
    means: [len(series), len(groups)].
    stds: the same shape: error bars (one std over seeds).
    groups: x-axis labels.
    series: legend labels.
    path: PNG file to write.
    title: figure title.
    ylabel: y-axis label.
    chance: per group, a dashed chance line.
    legend_title: the legend's title.
  """
  means, stds = np.asarray(means, np.float64), np.asarray(stds, np.float64)
  width = 0.8 / max(1, len(series))
  fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * len(groups) * max(1, len(series)) ** 0.5 + 2),
                                  4.4), layout="constrained")
  x = np.arange(len(groups))
  for i, name in enumerate(series):
    ax.bar(x + (i - (len(series) - 1) / 2) * width, means[i], width, yerr=stds[i], capsize=3,
           label=str(name))
  if chance is not None:
    for j, c in enumerate(chance):
      ax.hlines(c, j - 0.45, j + 0.45, colors="k", linestyles="--", linewidth=1,
                label="chance" if j == 0 else None)
  ax.set_xticks(x)
  ax.set_xticklabels(groups)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8, title=legend_title or None, title_fontsize=8)
  savefig(fig, path, dpi=120)
  plt.close(fig)


def matrix(values: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: str, *,
           title: str, xlabel: str, ylabel: str, vmin: float, vmax: float) -> None:
  """An annotated matrix of values (figure 2B: pretrain x fine-tune normalised accuracy).

  Args:
    values: [len(rows), len(cols)]; NaN cells stay blank.
    rows: row labels (y axis).
    cols: column labels (x axis).
    path: PNG file to write.
    title: figure title.
    xlabel: x-axis label.
    ylabel: y-axis label.
    vmin: the colour scale's lower end.
    vmax: its upper end.
  """
  values = np.asarray(values, np.float64)
  fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * len(cols) + 3), 0.8 * len(rows) + 2.4),
                         layout="constrained")
  image = ax.imshow(values, vmin=vmin, vmax=vmax, cmap="viridis")
  for i in range(values.shape[0]):
    for j in range(values.shape[1]):
      if np.isfinite(values[i, j]):
        shade = (values[i, j] - vmin) / (vmax - vmin)
        ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=9,
                color="k" if shade > 0.6 else "w")
  ax.set_xticks(range(len(cols)))
  ax.set_xticklabels(cols, rotation=30, ha="right")
  ax.set_yticks(range(len(rows)))
  ax.set_yticklabels(rows)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  fig.suptitle(fit_title(fig, title), fontsize=10)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  savefig(fig, path, dpi=120)
  plt.close(fig)


def curves(x: Sequence[float], lines: dict[str, np.ndarray], path: str, *, title: str,
           xlabel: str, ylabel: str, stds: dict[str, np.ndarray] | None = None,
           log_x: bool = False, chance: float | None = None,
           ylim: tuple[float, float] | None = None) -> None:
  """Lines against a common x (accuracy by border or training size, probability by offset).

  Args:
    x: [N] x values.
    lines: {label: [N] values}; NaN points are skipped.
    path: PNG file to write.
    title: figure title.
    xlabel: x-axis label.
    ylabel: y-axis label.
    stds: optional {label: [N]} spread drawn as error bars.
    log_x: a logarithmic x axis (training set sizes).
    chance: a dashed chance line.
    ylim: y-axis limits.
  """
  x = np.asarray(x, np.float64)
  fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
  for label, values in lines.items():
    values = np.asarray(values, np.float64)
    spread = None if stds is None or label not in stds else np.asarray(stds[label], np.float64)
    ax.errorbar(x, values, yerr=spread, marker="o", markersize=3, capsize=3, label=str(label))
  if chance is not None:
    ax.axhline(chance, color="k", linestyle="--", linewidth=1, label="chance")
  if log_x:
    ax.set_xscale("log")
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  if lines:
    ax.legend(fontsize=8, loc="best")
  savefig(fig, path, dpi=120)
  plt.close(fig)


def shift_rows(values: np.ndarray, shifts: Sequence[int], path: str, *, title: str,
               label: str = "probability of the correct class") -> None:
  """One row per item, one column per shift (Azulay & Weiss, figure 2): rows sorted by their sum.

  Args:
    values: [items, shifts] values in [0, 1].
    shifts: [shifts] shift of each column in px.
    path: PNG file to write.
    title: figure title.
    label: the colour bar's label.
  """
  values = np.asarray(values, np.float64)
  order = np.argsort(-np.nansum(values, axis=1), kind="stable")
  fig, ax = plt.subplots(figsize=(6.4, 4.8), layout="constrained")
  shifts = np.asarray(shifts)
  image = ax.imshow(values[order], aspect="auto", vmin=0, vmax=1, cmap="viridis",
                    extent=(shifts[0] - 0.5, shifts[-1] + 0.5, len(order) - 0.5, -0.5),
                    interpolation="nearest")
  ax.set_xlabel("shift (px)")
  ax.set_ylabel("item (sorted by sum)")
  ax.set_title(title, fontsize=10)
  fig.colorbar(image, ax=ax, label=label)
  savefig(fig, path, dpi=120)
  plt.close(fig)


def feature_sums(panels: dict[str, np.ndarray], shifts: Sequence[int], path: str, *, title: str,
                 max_maps: int = 12) -> None:
  """Global sum of each feature map as the input shifts (Azulay & Weiss, figure 4).

  Each map's sum is divided by its mean over the shifts, so a flat line at 1 is a shiftable map
  (its global sum invariant to the shift); one panel per network, side by side.

  Args:
    panels: {network: [shifts, maps] global sums}; the ``max_maps`` maps with the largest mean
      sum are drawn.
    shifts: [shifts] shift in px.
    path: PNG file to write.
    title: figure title.
    max_maps: maps drawn per panel.
  """
  fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.0 * max(1, len(panels)), 4.0),
                           sharey=True, layout="constrained", squeeze=False)
  for ax, (name, sums) in zip(axes[0], panels.items()):
    sums = np.asarray(sums, np.float64)
    mean = sums.mean(0)
    for c in np.argsort(-mean, kind="stable")[:max_maps]:
      if mean[c] > 0:
        ax.plot(shifts, sums[:, c] / mean[c], linewidth=1)
    ax.axhline(1.0, color="k", linewidth=0.8, linestyle=":")
    ax.set_title(str(name), fontsize=10)
    ax.set_xlabel("shift (px)")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("global sum / its mean")
  fig.suptitle(title, fontsize=10)
  savefig(fig, path, dpi=120)
  plt.close(fig)


def layer_panels(layers: Sequence[str], metrics: dict[str, dict[str, np.ndarray]], path: str, *,
                 title: str) -> None:
  """Per-layer bars, one panel per metric, one bar per network (nonshiftability, equivariance).

  Args:
    layers: [L] layer names in network order.
    metrics: {metric: {network: [L] values}} (NaN bars are left out).
    path: PNG file to write.
    title: figure title.
  """
  fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.4, 0.45 * len(layers) + 2),
                                                     2.6 * max(1, len(metrics))),
                           layout="constrained", squeeze=False)
  x = np.arange(len(layers))
  for ax, (metric, networks) in zip(axes[:, 0], metrics.items()):
    width = 0.8 / max(1, len(networks))
    for i, (name, values) in enumerate(networks.items()):
      ax.bar(x + (i - (len(networks) - 1) / 2) * width, np.asarray(values, np.float64), width,
             label=str(name))
    ax.set_ylabel(metric, fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    if len(networks) > 1:
      ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  savefig(fig, path, dpi=120)
  plt.close(fig)
