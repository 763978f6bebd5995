"""The one model factory: `TrainConfig` → flax module, for training, restore, transfer and convert.

Everything a run decides about the module is applied here and nowhere else: the
model's own options (`model_kwargs`), the compute dtype of `half_precision`, `remat`
for the models that declare it, the BatchNorm axis of data parallelism for the
models that have BatchNorm, and `conv_impl`.
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
  for training (one global batch), None for inference outside a mesh.

  Raises:
    UserError: unknown model or option, or remat for a model that does not declare it.
  """
  info = models.model_info(config.model)
  kwargs = dict(config.model_kwargs)
  if config.half_precision:
    kwargs['dtype'] = HALF_PRECISIONS[config.half_precision]  # param_dtype stays float32
  if config.remat:
    if not info.supports_remat:
      offered = [m for m in models.list_models(None) if models.model_info(m).supports_remat]
      raise UserError(f'model {config.model!r} has no remat option; --remat works for '
                      f'{", ".join(offered)}')
    kwargs['remat'] = True
  if info.batch_norm:
    kwargs['bn_axis_name'] = bn_axis_name
  return models.get_model(config.model, num_classes=num_classes, conv_impl=config.conv_impl,
                          **kwargs)


def input_shape(config: TrainConfig) -> tuple[int, int, int, int]:
  """(1, S, S, C): the init input of `config`'s model at its image size."""
  height, _, channels = models.model_input_shape(config.model)
  size = config.image_size or height
  return (1, size, size, channels)
