r"""Biscione & Bowers, experiment 5: cosine similarity of internal representations.

For one test item per class at the leftmost-centred location and the same item moved along x to
every grid column (displacements up to 173 px on 224 / 50), the cosine similarity of the
activations of every conv and linear layer (after ReLU; the output layer, the logits, last: the
authors hook every Conv2d and Linear), per seed; the penultimate layer (fc7) gives figures 5 and
10, every layer figures 11 and 12. Each seed's network is measured on its own items, one per class
drawn by its seed (the authors draw them at random; ``item_indices`` in each result.json). Every
network sees the canvases normalised with the statistics of the items' dataset (its training
canvases), as the authors' CosSim does: before fine-tuning too (F's, not P's), and for the ImageNet
network (not ImageNet's statistics); result.json states it under ``normalisation``. Networks:

  vanilla     untrained (Kaiming initialisation), on each dataset's items       (figure 5A, 11)
  imagenet    torchvision's ImageNet VGG16 as it is, its 1000-way output layer
              kept (needs --config.imagenet_weights)                            (figure 5A, 11)
  pretrained  exp2's network pretrained fully translated on P, on F's items (before fine-tuning)
  finetuned   that network fine-tuned on 1-location F, on F's items (after)      (figures 5B, 10)

  python -m transinv_jax.main --config=configs/exp5.py --workdir=runs/exp5 \
      --config.imagenet_weights=/path/to/vgg16-397923af.pth --config.stage_dir=runs/stages

With ``--config.stage_dir`` shared with exp2, the 6 pretrained and 36 fine-tuned networks that
exp2 trained are reused, not trained again.

Config arguments (comma separated; ``configs/exp5.py:pretrain=fmnist,finetune=leek2,size=smoke``;
default everything):

  network=vanilla|imagenet  that network on each dataset's items
  pretrain=<dataset>  exp2's network pretrained on it, before and after fine-tuning (on each of
                      the six, or on ``finetune``)
  finetune=<dataset>  the pretrained networks before and after fine-tuning on it
  size=smoke|paper    ``smoke``: CPU sizes

Short forms: ``vanilla``, ``imagenet``, ``P`` (``pretrain=P``), ``P,F`` (one pair), ``smoke``.

Expected cost at the paper's sizes: exp2's trainings (none if shared) and 6 + 6 + 72 similarity
tests of 5 seeds (seconds each on one H100).
"""

from transinv_jax.experiments import arguments, spec

NETWORKS = ("vanilla", "imagenet")
SCHEMA = {"network": arguments.Key(NETWORKS), "pretrain": arguments.dataset_key(),
          "finetune": arguments.dataset_key(after="pretrain"), "size": arguments.size_key("smoke")}


def get_config(arg: str | None = None):
  """exp5 config; ``arg`` e.g. ``"vanilla"``, ``"emnist"``, ``"leek2,mnist,smoke"``."""
  args = arguments.parse_args(arg, SCHEMA, "configs/exp5.py")
  if args.network and (args.pretrain or args.finetune):
    raise args.error(args.arg, "network goes without pretrain and finetune (the untrained and "
                     "ImageNet networks are not fine-tuned)")
  config = spec.base_config("exp5")
  groups = {"vanilla": [], "imagenet": []}
  pairs = []  # (pretrain, finetune, its two tests)
  for dataset in spec.DATASETS:
    config.stages[f"untrained_{dataset}"] = spec.stage(untrained=True, data={"dataset": dataset})
    config.stages[f"imagenet_{dataset}"] = spec.stage(untrained=True, imagenet=True,
                                                      data={"dataset": dataset})
    config.stages[f"pretrain_{dataset}"] = spec.stage(
        data={"dataset": dataset, "train_location": "fully_translated"})
    for network, stage in (("vanilla", f"untrained_{dataset}"),
                           ("imagenet", f"imagenet_{dataset}")):
      config.tests[f"{network}_{dataset}"] = spec.test(
          stage, kind="similarity", labels={"network": network, "items": dataset})
      groups[network].append(f"{network}_{dataset}")
  for pretrain in spec.DATASETS:
    for finetune in spec.DATASETS:
      pair = f"{pretrain}_{finetune}"
      config.stages[f"finetune_{pair}"] = spec.stage(parent=f"pretrain_{pretrain}",
                                                     data={"dataset": finetune})
      labels = {"pretrain": pretrain, "finetune": finetune, "items": finetune}
      config.tests[f"before_{pair}"] = spec.test(
          f"pretrain_{pretrain}", kind="similarity", data={"dataset": finetune},
          labels={**labels, "network": "pretrained"})
      config.tests[f"after_{pair}"] = spec.test(
          f"finetune_{pair}", kind="similarity", labels={**labels, "network": "finetuned"})
      pairs.append((pretrain, finetune, [f"before_{pair}", f"after_{pair}"]))
  if args.network:
    names = groups[args.network]
  elif args.pretrain or args.finetune:
    names = [n for p, f, tests in pairs for n in tests
             if args.pretrain in (None, p) and args.finetune in (None, f)]
  else:
    names = list(config.tests)
  spec.keep_tests(config, names, args)
  if args.size == "smoke":
    spec.shrink_for_smoke(config)
  return config
