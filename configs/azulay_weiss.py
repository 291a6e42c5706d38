r"""Azulay & Weiss: VGG16 with 2x2 max pooling against VGG16 with 6x6 average pooling.

Azulay & Weiss replace every 2x2 max pool of VGG16 by a 6x6 average pool (stride 2,
``model.pooling="avg"``): the low-pass pooling makes the feature maps nearly shiftable, so the
global sum of the last conv layer's maps stays nearly constant as the input moves (their figure 4).
Both networks are trained here on the same items anywhere on the canvas, then every invariance
measure of ``transinv_jax/invariance.py`` is taken on each (an ``invariance`` test): the global
sums of ``conv5_3``'s maps as the item moves down 1 px at a time (figure 4), P(top-1 changes),
jaggedness and MAD over that path, nonshiftability and equivariance error per layer, Zhang's
consistency and diagonal curve, and the cosine similarity per layer against displacement.
Outputs: ``tests/<net>/`` (invariance.npz, result.json, figures), ``results.csv``, and
``figures/feature_sums.png`` (figure 4: max pooling left, average pooling right) and
``figures/invariance_by_layer.png``.

The paper measured ImageNet networks; ``--config.imagenet_weights=vgg16-397923af.pth`` with the
argument ``imagenet`` adds torchvision's ImageNet VGG16 (max pooling), measured as it is: its
1000-way output layer is kept (no task head), so each item's reference class for top-1 change,
jaggedness, MAD and consistency is the network's own top-1 at the start of the path, as
``configs/diagnose.py`` measures a weights file.

  python -m transinv_jax.main --config=configs/azulay_weiss.py --workdir=runs/aw
  python -m transinv_jax.main --config=configs/azulay_weiss.py:smoke --workdir=runs/aw_smoke

Their items are ImageNet validation photos, downscaled and embedded in a larger image (their
figure 6: a photo resized to 100x100); ``--config.imagenet_folder`` reads them from a folder of
class folders (``<wnid>/*.JPEG``; ``transinv_jax/data/folders.py``): each photo's centre square
resized to 100 px on the 224 px black canvas (black, not their inpainting). With one folder,
every 5th image of each class is a test item, the rest train the networks. Sorted WordNet ids are
torchvision's class order, so the ImageNet network is scored against each photo's true class:

  python -m transinv_jax.main --config=configs/azulay_weiss.py:max,avg,imagenet \
      --workdir=runs/aw_imagenet --config.imagenet_folder=/data/imagenet/val \
      --config.imagenet_weights=vgg16-397923af.pth

Without it, 50 px Fashion-MNIST items stand in for the photos (``--config.data.dataset`` picks
another); the run logs a warning and records it in ``config.stand_in`` (config.json and
summary.json).

Config arguments (comma separated; ``configs/azulay_weiss.py:network=avg,size=smoke``):
``network=max|avg|imagenet`` (repeatable; default max and avg) and ``size=smoke|paper``; short
forms: each value alone (``max,avg,smoke``).

Expected cost: 2 trainings of 5 seeds (at most 5000 steps at batch 32) at 224x224, then per seed
200 items x 33 shifts x (path, diagonal) and 1000 consistency pairs: under an hour on one H100.
"""

from transinv_jax.experiments import arguments, spec

NETWORKS = ("max", "avg", "imagenet")
IMAGENET_ITEM = 100  # px: the photos' side on the 224 px canvas (their figure 6: 100x100)
SCHEMA = {"network": arguments.Key(NETWORKS, multi=True), "size": arguments.size_key("smoke")}


def get_config(arg: str | None = None):
  """azulay_weiss config; ``arg`` e.g. ``"avg"``, ``"max,avg,smoke"``, ``"imagenet"``."""
  args = arguments.parse_args(arg, SCHEMA, "configs/azulay_weiss.py")
  smoke = args.size == "smoke"
  config = spec.base_config("azulay_weiss")
  config.data.dataset = "fashion_mnist"
  config.data.train_location = "fully_translated"
  spec.imagenet_folder(config, "{dataset} items stand in for Azulay & Weiss's ImageNet "
                       "validation photos", data={} if smoke else {"item_size": IMAGENET_ITEM})
  config.stages.max = spec.stage(model={"pooling": "max"})
  config.stages.avg = spec.stage(model={"pooling": "avg", "avg_pool_size": 6})
  config.stages.imagenet = spec.stage(untrained=True, imagenet=True)
  for name in NETWORKS:
    config.tests[name] = spec.test(name, kind="invariance", labels={"network": name})
  spec.keep_tests(config, args.network or ["max", "avg"], args)
  if smoke:
    spec.shrink_for_smoke(config)
    config.train.max_steps = 1000       # the 1/16-width average-pool VGG16 learns slowly
    config.eval.invariance_items = 24
    config.eval.max_shift = 16
    config.eval.consistency_offset = 16
    config.eval.consistency_pairs = 2
  return config
