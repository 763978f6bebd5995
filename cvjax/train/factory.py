"""The one model factory: `TrainConfig` → flax module, for training, restore, transfer and convert.

Everything a run decides about the module is applied here and nowhere else: the
model's own options (`model_kwargs`), the compute dtype of `half_precision`, `remat`,
the BatchNorm axis of data parallelism, and `conv_impl`. Each goes only to a model
that declares it (`cvjax.models.model_options`: the fields of its class), so a plain
flax module registered with `cvjax.models.register_model` builds here too; a run
that asks a model for an option it lacks (`--remat`, `--half_precision`) is refused.
"""
from __future__ import annotations

from flax import linen as nn

from cvjax import models
from cvjax.errors import UserError
from cvjax.train.config import HALF_PRECISIONS, TrainConfig

DATA_AXIS = 'data'  # the mesh axis of data parallelism (cvjax.train.steps)


def build_model(config: TrainConfig, num_classes: int, *,
                bn_axis_name: str | None = DATA_AXIS) -> nn.Module:
  """The module `config` describes, with `num_classes` outputs.

  bn_axis_name: the axis BatchNorm averages batch statistics over; the data axis
  for training (one global batch), None for inference outside a mesh. Set on
  models that declare `bn_axis_name`; `conv_impl` likewise (a model without it
  computes its convolutions with XLA).

  Raises:
    UserError: unknown model or option; remat or half_precision for a model that
      does not declare `remat` or `dtype`.
  """
  options = set(models.model_options(config.model))
  kwargs = dict(config.model_kwargs)
  if config.half_precision:
    if 'dtype' not in options:
      raise UserError(f'model {config.model!r} has no dtype option; --half_precision needs '
                      'a model that declares a `dtype` field (or run without it)')
    kwargs['dtype'] = HALF_PRECISIONS[config.half_precision]  # param_dtype stays float32
  if config.remat:
    if 'remat' not in options:
      offered = [m for m in models.list_models(None) if 'remat' in models.model_options(m)]
      raise UserError(f'model {config.model!r} has no remat option; --remat works for '
                      f'{", ".join(offered)}')
    kwargs['remat'] = True
  if 'bn_axis_name' in options:
    kwargs['bn_axis_name'] = bn_axis_name
  return models.get_model(config.model, num_classes=num_classes, conv_impl=config.conv_impl,
                          **kwargs)


def input_shape(config: TrainConfig) -> tuple[int, int, int, int]:
  """(1, S, S, C): the init input of `config`'s model at its image size."""
  height, _, channels = models.model_input_shape(config.model)
  size = config.image_size or height
  return (1, size, size, channels)
