"""Exp5's cosine similarity: a numpy reference, analytic cases, conventions, item picking, plots."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transinv_jax import kernel, models, plots, similarity
from transinv_jax.data import canvas, locations
from transinv_jax.train import Items

CANVAS, SIZE, NUM_CLASSES = 32, 8, 3
BASE = locations.leftmost_centred_centre(CANVAS, SIZE)            # (4, 16)
XS = locations.paper_axis(CANVAS, SIZE)                           # 4, 6, 16, 26, 27
CENTRES = similarity.displaced_centres(BASE, XS)


def _render(mean=0.1, std=0.3, channels=3):
  return canvas.Renderer(CANVAS, mean, std, channels)


def _items(num=NUM_CLASSES, seed=0):
  rng = np.random.default_rng(seed)
  # Values >= 1 so that no item (and no raw canvas) is all zero.
  images = rng.integers(1, 256, (num, SIZE, SIZE, 1), dtype=np.uint8)
  return Items(images=jnp.asarray(images), labels=jnp.arange(num, dtype=jnp.int32) % NUM_CLASSES)


@pytest.fixture(scope="module")
def tiny_vgg():
  """The model, its network and two seeds' variables, stacked: every leaf [2, ...]."""
  config = models.default_config()
  config.name, config.width, config.dtype = "vgg11", 1 / 32, "float32"
  model = models.build_model(config, NUM_CLASSES)
  x = jnp.zeros((1, CANVAS, CANVAS, 3))
  init = jax.jit(model.init)
  variables = jax.tree.map(lambda *v: jnp.stack(v), *[init(jax.random.key(s), x) for s in (0, 1)])
  return model, kernel.Inference(model), variables


def _seed(variables, i):
  """Seed i alone, still stacked: every leaf [1, ...]."""
  return jax.tree.map(lambda v: v[i:i + 1], variables)


def _np_cosine(a, b):
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  na, nb = np.linalg.norm(a), np.linalg.norm(b)
  if na == 0 or nb == 0:
    return float(na == nb)
  return a @ b / (na * nb)


def test_matches_numpy_reference(tiny_vgg):
  model, net, variables = tiny_vgg
  items, render = _items(), _render()
  result = similarity.cosine_similarity(net, _seed(variables, 0), items, render=render,
                                        base_centre=BASE, centres=CENTRES, layers="all+logits",
                                        centres_per_chunk=2)
  convs = ["conv1_1", "conv2_1", "conv3_1", "conv3_2", "conv4_1", "conv4_2", "conv5_1", "conv5_2"]
  assert result.layers == convs + ["fc6", "fc7", "logits"]
  assert result.per_item.shape == (1, 11, len(XS), NUM_CLASSES)
  assert result.per_item.dtype == np.float32 and result.mean.shape == (11, len(XS))
  np.testing.assert_array_equal(result.displacements, XS - BASE[0])
  np.testing.assert_array_equal(result.centres, CENTRES)
  np.testing.assert_array_equal(result.labels, np.arange(NUM_CLASSES))

  n = items.num_items
  first = jax.tree.map(lambda v: v[0], variables)
  _, base = model.apply(first, render(items.images, jnp.tile(jnp.array(BASE), (n, 1))))
  expected = np.zeros(result.per_item.shape[1:])
  for d, c in enumerate(CENTRES):
    _, moved = model.apply(first, render(items.images, jnp.tile(jnp.asarray(c), (n, 1))))
    for l, name in enumerate(result.layers):
      for i in range(n):
        expected[l, d, i] = _np_cosine(base[name][i], moved[name][i])
  np.testing.assert_allclose(result.per_item[0], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(result.layer("fc7"), expected[9].mean(-1), rtol=1e-5, atol=1e-6)
  # The network is not invariant: some similarity is well below 1 (the test is not vacuous).
  assert result.per_item.min() < 0.9

  # Chunking (with padding) and the automatic chunk give the same numbers.
  auto = similarity.cosine_similarity(net, _seed(variables, 0), items, render=render,
                                      base_centre=BASE, centres=CENTRES, layers="all+logits",
                                      centres_per_chunk=0)
  np.testing.assert_allclose(auto.per_item, result.per_item, rtol=1e-6, atol=1e-6)


def test_zero_displacement_is_one_for_every_layer(tiny_vgg):
  _, net, variables = tiny_vgg
  result = similarity.cosine_similarity(net, _seed(variables, 1), _items(), render=_render(),
                                        base_centre=BASE, centres=np.array([BASE, BASE]))
  assert result.layers[0] == "conv1_1" and result.layers[-1] == "fc7"
  # The base maps and the displaced ones come from two compiled programs, whose convolutions
  # round differently: 1 - 4.6e-6 seen on an AVX2 CPU (within 1e-6 on the earlier machines).
  np.testing.assert_allclose(result.per_item, 1.0, atol=1e-5)


def test_stacked_seeds_give_each_seed_alone(tiny_vgg):
  _, net, variables = tiny_vgg
  items = _items()
  kwargs = dict(render=_render(), base_centre=BASE, centres=CENTRES, layers="penultimate")
  seeds = similarity.cosine_similarity(net, variables, items, **kwargs)
  single = [similarity.cosine_similarity(net, _seed(variables, s), items, **kwargs)
            for s in range(2)]
  assert seeds.layers == ["pre_logits"] and seeds.per_item.shape == (2, 1, len(XS), 3)
  for s in range(2):
    np.testing.assert_allclose(seeds.per_item[s], single[s].per_item[0], rtol=1e-6)
  means = np.stack([r.mean for r in single])
  np.testing.assert_allclose(seeds.seed_mean, means, rtol=1e-6)
  np.testing.assert_allclose(seeds.mean, means.mean(0), rtol=1e-6)
  np.testing.assert_allclose(seeds.std, means.std(0), rtol=1e-5, atol=1e-7)
  assert (seeds.std > 0).any()  # two different networks
  # The same variables twice: no spread across seeds.
  twice = jax.tree.map(lambda v: jnp.concatenate([v[:1], v[:1]]), variables)
  same = similarity.cosine_similarity(net, twice, items, **kwargs)
  np.testing.assert_allclose(same.std, 0.0, atol=1e-7)


def test_each_seed_on_its_own_items(tiny_vgg):
  """``item_index``: seed s compares its own items, as if it ran alone on them."""
  _, net, variables = tiny_vgg
  items = _items(num=2 * NUM_CLASSES)                      # labels 0, 1, 2, 0, 1, 2
  index = np.array([[0, 1, 2], [3, 4, 5]])
  kwargs = dict(render=_render(), base_centre=BASE, centres=CENTRES, layers="all+logits")
  both = similarity.cosine_similarity(net, variables, items, item_index=index, **kwargs)
  assert both.per_item.shape == (2, 11, len(XS), NUM_CLASSES) and both.layers[-1] == "logits"
  np.testing.assert_array_equal(both.item_index, index)
  np.testing.assert_array_equal(both.labels, np.arange(NUM_CLASSES))
  for s in range(2):
    alone = similarity.cosine_similarity(
        net, _seed(variables, s), Items(images=items.images[index[s]],
                                        labels=items.labels[index[s]]), **kwargs)
    np.testing.assert_allclose(both.per_item[s], alone.per_item[0], rtol=1e-6)
  with pytest.raises(ValueError, match="same classes"):
    similarity.cosine_similarity(net, variables, items, item_index=[[0, 1, 2], [4, 3, 5]],
                                 **kwargs)


def test_translation_invariant_layer_is_one_everywhere():
  # Global sum pooling of the canvas: the same for every whole placement of an item.
  apply_fn = lambda v, x: (x[:, 0, 0], {"gap": x.sum(axis=(1, 2)), "logits": x[:, 0, 0]})
  result = similarity.cosine_similarity(apply_fn, {}, _items(), render=_render(),
                                        base_centre=BASE, centres=CENTRES)
  assert result.layers == ["gap"]
  np.testing.assert_allclose(result.per_item, 1.0, atol=1e-6)


def test_raw_canvas_layer_matches_analytic_overlap():
  # The "layer" is the raw canvas (mean 0, std 1: pixel values / 255). Moving an item by dx
  # overlaps it with itself in SIZE - |dx| columns: cos = sum_c <col_c, col_{c+dx}> / |item|^2,
  # so 0 once the item has moved beyond its own width.
  items = _items()
  apply_fn = lambda v, x: (x[:, 0, 0], {"conv1": x})
  xs = np.arange(BASE[0], BASE[0] + SIZE + 3)
  result = similarity.cosine_similarity(apply_fn, None, items, render=_render(0.0, 1.0, 1),
                                        base_centre=BASE, centres=similarity.displaced_centres(
                                            BASE, xs), centres_per_chunk=4)
  images = np.asarray(items.images, np.float64)[..., 0]
  for d, dx in enumerate(xs - BASE[0]):
    for i, item in enumerate(images):
      overlap = (item[:, dx:] * item[:, :SIZE - dx]).sum() if dx < SIZE else 0.0
      np.testing.assert_allclose(result.per_item[0, 0, d, i], overlap / (item**2).sum(),
                                 rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(result.per_item[0, 0, xs - BASE[0] >= SIZE], 0.0)


def test_zero_vector_conventions():
  zeros, ones = jnp.zeros((2, 5)), jnp.ones((2, 5))
  np.testing.assert_array_equal(similarity.cosine(zeros, zeros), 1.0)
  np.testing.assert_array_equal(similarity.cosine(zeros, ones), 0.0)
  np.testing.assert_array_equal(similarity.cosine(ones, zeros), 0.0)
  # No overflow or underflow at extreme activation scales; low-precision inputs go to float32.
  big = jnp.array([3e30, 4e30], jnp.float32)
  np.testing.assert_allclose(similarity.cosine(big, big), 1.0, atol=1e-6)
  np.testing.assert_allclose(similarity.cosine(big * 1e-60, big * 1e-60), 1.0, atol=1e-6)
  np.testing.assert_allclose(similarity.cosine(jnp.array([1.0, 0.0]), jnp.array([-1.0, 0.0])),
                             -1.0)
  assert similarity.cosine(ones.astype(jnp.bfloat16), ones).dtype == jnp.float32

  # Through the pipeline: a layer that is zero while the item is in the left half of the canvas.
  def apply_fn(v, x):
    right = x * (jnp.arange(CANVAS) >= CANVAS // 2)[None, None, :, None]
    return x[:, 0, 0], {"fc1": right}

  result = similarity.cosine_similarity(apply_fn, None, _items(), render=_render(0.0, 1.0, 1),
                                        base_centre=BASE, centres=CENTRES)
  # x = 4, 6 (both zero): 1; x = 16, 26, 27 (zero only at the base): 0.
  np.testing.assert_array_equal(result.mean[0], [1, 1, 0, 0, 0])


def test_layer_names_selection_and_network_order(tiny_vgg):
  model, net, variables = tiny_vgg
  _, inter = jax.eval_shape(model.apply, jax.tree.map(lambda v: v[0], variables),
                            jnp.zeros((1, CANVAS, CANVAS, 3)))
  names = similarity.layer_names(inter)
  assert names[:2] == ["conv1_1", "conv2_1"] and names[-2:] == ["fc6", "fc7"]
  assert not any(n.startswith("pool") or n in ("pre_logits", "logits") for n in names)
  assert similarity.layer_names(inter, "all+logits") == names + ["logits"]
  assert similarity.layer_names(inter, "penultimate") == ["pre_logits"]
  # Key order does not matter (jitted functions return sorted dicts).
  assert similarity.layer_names(dict(reversed(list(inter.items())))) == names
  resnet = dict.fromkeys(["pre_logits", "logits", "stem", "layer2_0", "layer2", "layer1_1",
                          "layer1_0", "layer1", "layer10_0"])
  assert similarity.layer_names(resnet) == ["stem", "layer1_0", "layer1_1", "layer2_0",
                                            "layer10_0"]
  fcn = dict.fromkeys(["logits", "pre_logits"] + [f"fc{i}" for i in range(5, 0, -1)])
  assert similarity.layer_names(fcn) == ["fc1", "fc2", "fc3", "fc4", "fc5"]
  with pytest.raises(ValueError, match="unknown layer selection"):
    similarity.layer_names(inter, "some")
  with pytest.raises(ValueError, match="nope"):
    similarity.cosine_similarity(net, variables, _items(), render=_render(), base_centre=BASE,
                                 centres=CENTRES, layers=["fc7", "nope"])


def test_pick_items_first_of_each_class_in_order():
  labels = np.array([2, 0, 1, 0, 2, 1, 1], np.int32)
  images = np.arange(7, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  items = Items(images=jnp.asarray(images), labels=jnp.asarray(labels))
  picked = similarity.pick_items(items, 3)
  np.testing.assert_array_equal(picked.labels, [0, 1, 2])
  np.testing.assert_array_equal(picked.images[:, 0, 0, 0], [1, 2, 0])
  two = similarity.pick_items(items, 3, per_class=2)
  np.testing.assert_array_equal(two.labels, [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(two.images[:, 0, 0, 0], [1, 3, 2, 5, 0, 4])
  with pytest.raises(ValueError, match="class 3 has 0 item"):
    similarity.pick_items(items, 4)
  with pytest.raises(ValueError, match="class 0 has 2 item"):
    similarity.pick_items(items, 3, per_class=3)


def test_item_indices_drawn_by_the_seed():
  """One item per class drawn by the seed: reproducible, different for another seed, in class
  order; no seed takes the first of each class."""
  labels = np.arange(1000) % 10
  first = similarity.item_indices(labels, 10)
  np.testing.assert_array_equal(first, np.arange(10))
  draws = {s: similarity.item_indices(labels, 10, seed=s) for s in range(3)}
  for s, index in draws.items():
    np.testing.assert_array_equal(labels[index], np.arange(10))
    np.testing.assert_array_equal(index, similarity.item_indices(labels, 10, seed=s))
  assert len({tuple(i) for i in draws.values()}) == 3
  assert not np.array_equal(draws[0], first)
  two = similarity.item_indices(labels, 10, per_class=2, seed=4)
  np.testing.assert_array_equal(labels[two], np.repeat(np.arange(10), 2))
  assert len(set(two.tolist())) == 20
  images = (np.arange(1000) % 251).astype(np.uint8)[:, None, None, None]
  items = Items(images=jnp.asarray(images), labels=jnp.asarray(labels, jnp.int32))
  np.testing.assert_array_equal(similarity.pick_items(items, 10, seed=1).images[:, 0, 0, 0],
                                draws[1] % 251)


def test_plots_write_png(tmp_path):
  displacements = np.array([0, 7, 17, 27, 173])
  rng = np.random.default_rng(0)
  curves = {"VGG16 trained at 1 location": rng.random(5), "fully translated": rng.random(5)}
  layers = ["conv1_1", "conv1_2", "conv2_1", "fc6", "fc7"]
  paths = [tmp_path / "curves.png", tmp_path / "sub" / "layers.png", tmp_path / "by_layer.png"]
  plots.similarity_curves(displacements, curves, str(paths[0]), title="penultimate",
                          stds={"fully translated": 0.1 * rng.random(5)})
  plots.similarity_layers(layers, displacements, rng.random((5, 5)), str(paths[1]),
                          title="every layer")
  plots.similarity_by_layer_lines(layers, {"a": rng.random(5), "b": rng.random(5) - 0.5},
                                  str(paths[2]), title="at 173 px")
  for path in paths:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_titles_fit_figures_of_one_cell(tmp_path):
  """A one-pair exp2 matrix or a one-class heatmap is narrow: its title wraps to fit."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  title = ("exp2: normalised accuracy, fully translated test, every pretraining row by every "
           "fine-tuning column\n(0 = chance, 100 = perfect)")
  for width in (3.0, 6.0, 12.0):
    fig = plt.figure(figsize=(width, 3))
    text = fig.suptitle(plots.fit_title(fig, title), fontsize=10)
    extent = text.get_window_extent(fig.canvas.get_renderer())
    assert extent.x0 >= 0 and extent.x1 <= fig.bbox.width, (width, extent)
    plt.close(fig)
  plots.matrix(np.array([[34.7]]), ["Fashion-MNIST"], ["MNIST"], tmp_path / "m.png", title=title,
               xlabel="fine-tuned on", ylabel="pretrained on", vmin=0, vmax=100)
  assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
