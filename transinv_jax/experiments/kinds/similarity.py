"""Cosine similarity of every layer's activations as the item moves along the leftmost-centred row
(Biscione & Bowers' ``CosSim``): any network's layers on any items, its classes need not be theirs.

Writes ``similarity.npz``.
"""

import pathlib

import ml_collections
import numpy as np

from transinv_jax import similarity
from transinv_jax import workdir as workdir_lib
from transinv_jax.data import inputs, locations
from transinv_jax.experiments import stages
from transinv_jax.experiments.kinds import context


def run(ctx: context.TestContext, name: str, entry: ml_collections.ConfigDict,
        flat: ml_collections.ConfigDict, trained: context.TrainedStage,
        directory: pathlib.Path) -> dict:
  """Measures each seed's network on its own draw of items per class.

  Args:
    ctx: the run's shared services.
    name: the test's name in ``config.tests``.
    entry: its ``config.tests`` entry.
    flat: its flat config (``stages.test_config``).
    trained: the stage it measures.
    directory: the test's folder.

  Returns:
    The layers, displacements, the penultimate layer's similarity per displacement (mean and
    std over seeds), the output layer's, the items drawn and the normalisation used.
  """
  # Any network's layers can be compared on any items: its classes need not be theirs.
  test_set, test_items = ctx.test_items(name, flat, trained, same_classes=False)
  d = flat.data
  base = locations.leftmost_centred_centre(d.canvas_size, d.item_size)
  axis = inputs.test_axes(flat)
  centres = np.stack([axis, np.full_like(axis, base[1])], -1).astype(np.int32)
  # Each seed's network on its own draw of items per class (the authors draw them at random).
  per_class = flat.eval.similarity_items_per_class
  index = np.stack([similarity.item_indices(test_set.labels, test_set.num_classes, per_class,
                                            seed=s) for s in ctx.seeds])         # [S, I]
  mean, std, normalisation = _similarity_normalisation(ctx, flat, trained)
  # Every conv and linear layer, the output layer last, as the authors hook them.
  result = similarity.cosine_similarity(
      ctx.net(flat, trained.num_classes), trained.variables, test_items,
      render=ctx.render(d, mean, std), base_centre=base, centres=centres,
      layers="all+logits", item_index=index)
  layers, means = result.layers, result.seed_mean                        # [S, L, D]
  if workdir_lib.is_writer():
    workdir_lib.write_npz_atomic(
        directory / "similarity.npz", layers=np.array(layers), centres=centres,
        displacements=result.displacements, seeds=np.array(ctx.seeds), seed_mean=means,
        mean=result.mean, std=result.std, per_item=result.per_item, item_index=index,
        item_labels=result.labels, canvas_mean=mean, canvas_std=std)
  # The penultimate layer (the main figure's): the one the output layer reads.
  penultimate = len(layers) - 2 if layers[-1] == "logits" and len(layers) > 1 else -1
  return {"layers": layers, "displacements": result.displacements.tolist(),
          "penultimate": layers[penultimate],
          "penultimate_similarity": means[:, penultimate].mean(0).tolist(),
          "penultimate_similarity_std": means[:, penultimate].std(0).tolist(),
          "mean_penultimate_similarity": float(means[:, penultimate].mean()),
          "mean_penultimate_similarity_std": float(means[:, penultimate].mean(1).std()),
          "output_similarity": (means[:, -1].mean(0).tolist()
                                if layers[-1] == "logits" else None),
          "items_per_class": int(per_class),
          "item_indices": {str(s): i.tolist() for s, i in zip(ctx.seeds, index)},
          "item_indices_of": f"the {stages.test_split(entry)} split of {d.dataset} as loaded "
                             "(config.data.classes applied)",
          "item_labels": result.labels.tolist(), "normalisation": normalisation}


def _similarity_normalisation(ctx: context.TestContext, flat: ml_collections.ConfigDict,
                              trained: context.TrainedStage) -> tuple[np.ndarray, np.ndarray, dict]:
  """The canvas normalisation of a similarity test: the statistics of the items' dataset (its
  training canvases), whatever network is measured.

  The authors' ``CosSim`` renders each canvas with the ``transform`` of the dataset it is given,
  the items' dataset, whose mean and std their generators estimate from that dataset itself. So
  the network pretrained on P and measured on F's items before fine-tuning sees F's
  normalisation, as it does after fine-tuning on F (the canvases differ only by the network);
  the untrained and ImageNet networks see their items' too (not ImageNet's statistics).

  Args:
    ctx: the run's shared services.
    flat: the test's flat config.
    trained: the stage it measures (its own normalisation, recorded beside).

  Returns:
    ``(mean, std, record)``: float32 [channels] each, and what the result record states.
  """
  d = flat.data
  _, train_items = ctx.items(d, "train", d.max_train_items)
  mean, std = inputs.canvas_normalisation(d, train_items.images)
  source = (f"{d.dataset} train canvases (the items' dataset, as the authors' CosSim "
            "normalises)" if d.get("normalise", True) else "none (config.data.normalise=False)")
  return mean, std, {
      "mean": np.asarray(mean).tolist(), "std": np.asarray(std).tolist(), "from": source,
      "stage_normalisation": {"mean": np.asarray(trained.mean).tolist(),
                              "std": np.asarray(trained.std).tolist()},
      "same_as_stage": bool(np.allclose(mean, trained.mean) and np.allclose(std, trained.std))}
