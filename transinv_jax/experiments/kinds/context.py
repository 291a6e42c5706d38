"""What every test kind receives: the trained stage it measures and the run's shared services."""

from collections.abc import Callable
import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from transinv_jax import config_checks, kernel, train
from transinv_jax.data import canvas, sources
from transinv_jax.experiments import stages


@dataclasses.dataclass
class TrainedStage:
  """A finished stage.

  Attributes:
    variables: the network's variables, stacked over seeds when there are several.
    mean, std: the canvas normalisation the network was trained with.
    num_classes: its output size.
    summary: ``done.json``: steps, stop reasons and final training accuracy per seed.
  """
  variables: Any
  mean: np.ndarray
  std: np.ndarray
  num_classes: int
  summary: dict


@dataclasses.dataclass(frozen=True)
class TestContext:
  """What a test kind needs from the run that calls it (``pipeline.Pipeline``).

  Attributes:
    config: the experiment config (its ``stages`` and ``tests``); a kind reads its own test's
      entry and flat config, and ``experiment`` only as the prefix of figure titles.
    mesh: the device mesh that items and variables are replicated over.
    platform: the JAX backend (the compute dtype).
    seeds: the seeds, one network each (S of them).
    items: ``(data, split, max_items) -> (sources.ItemSet, train.Items)``: a split's items on the
      host and on the device, loaded and resized once per run.
    net: ``(flat, num_classes) -> kernel.Inference``: the network of ``flat.model`` in inference
      mode, one per architecture and run, so its compiled kernels are reused.
    render: ``(data, mean, std) -> canvas.Renderer``: canvases with this normalisation.
  """
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  platform: str
  seeds: list[int]
  items: Callable[[ml_collections.ConfigDict, str, int], tuple[sources.ItemSet, train.Items]]
  net: Callable[[ml_collections.ConfigDict, int], kernel.Inference]
  render: Callable[[ml_collections.ConfigDict, np.ndarray, np.ndarray], canvas.Renderer]

  def test_items(self, name: str, flat: ml_collections.ConfigDict, trained: TrainedStage,
                 same_classes: bool = True) -> tuple[sources.ItemSet, train.Items]:
    """The items a test measures on: its split, as many as its kind takes.

    Args:
      name: the test's name in ``config.tests``.
      flat: the test's flat config (``stages.test_config``).
      trained: the stage it measures.
      same_classes: whether the items' classes must be the network's outputs.

    Returns:
      ``(host ItemSet, device Items)``.

    Raises:
      config_checks.ConfigError: ``same_classes`` and the class counts differ.
    """
    item_set, items = self.items(flat.data, stages.test_split(self.config.tests[name]),
                                 stages.test_max_items(self.config, name, flat))
    if same_classes and item_set.num_classes != trained.num_classes:
      raise config_checks.ConfigError(
          f"test {name}: {flat.data.dataset} has {item_set.num_classes} classes but the network "
          f"of stage {self.config.tests[name].stage} has {trained.num_classes} outputs; test a "
          "stage trained (or fine-tuned) on this dataset")
    return item_set, items

  def title(self, name: str) -> str:
    """The prefix of a test's figure titles."""
    return f"{self.config.experiment} {name}"
