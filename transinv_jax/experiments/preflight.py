"""Checks that a run's inputs exist and fit before any file is written: every split it needs,
every sampler, every pretrained file against its model."""

import jax

from transinv_jax import config_checks, models
from transinv_jax.data import inputs
from transinv_jax.experiments import stages
from transinv_jax.models import pretrained


def check_inputs(pipeline) -> None:
  """Loads every split the run needs, builds every sampler, and fits every pretrained file to its
  model, so that a missing file or a bad layout stops the run before anything is written.

  Args:
    pipeline: the run's ``pipeline.Pipeline`` (its config, stage order and item cache).
  """
  config = pipeline.config
  for name in pipeline.order:
    flat = stages.stage_config(config, name)
    train_set, _ = pipeline.items(flat.data, "train", flat.data.max_train_items)
    try:
      inputs.make_sampler(flat.data, train_set.num_classes)
    except ValueError as e:
      raise config_checks.ConfigError(
          f"stage {name}: config.data.train_location={flat.data.train_location!r}, "
          f"layout={flat.data.layout!r}: {e}") from None
    d = flat.data
    if stages.keeps_file_head(config.stages[name]):
      try:
        stages.imported_network(flat.model.pretrained, flat.model,
                                (1, d.canvas_size, d.canvas_size, d.channels), pipeline.platform)
      except pretrained.PretrainedError as e:
        raise pretrained.PretrainedError(e.detail, flat.model.pretrained) from None
      except ValueError as e:
        raise config_checks.ConfigError(
            f"stage {name} measures the network of {flat.model.pretrained} as it is, which "
            f"needs its output layer: {e}") from None
    elif flat.model.pretrained:
      model = models.build_model(flat.model, train_set.num_classes, pipeline.platform)
      target = pretrained.abstract_target(model, (1, d.canvas_size, d.canvas_size, d.channels))
      pretrained.load_pretrained(flat.model.pretrained, flat.model.name,
                                 jax.tree.map(lambda x: x[None], target))  # one seed shows the fit
  for name in config.tests:
    flat = stages.test_config(config, name)
    pipeline.items(flat.data, stages.test_split(config.tests[name]),
                   stages.test_max_items(config, name, flat))
    if config.tests[name].kind == "similarity":  # its normalisation: the items' training canvases
      pipeline.items(flat.data, "train", flat.data.max_train_items)
