"""Model names → constructors, natural input shapes and class counts.

The names are stable: configs, checkpoints and weight converters refer to them.
"""
import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from cvjax import errors
from cvjax.models import alexnet, cifar_resnet, lenet, resnet, vgg

_IMAGENET = (224, 224, 3)
_CIFAR = (32, 32, 3)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  builder: Callable[..., nn.Module]
  input_shape: tuple[int, int, int]  # natural (H, W, C)
  num_classes: int  # classes of the dataset it was designed for


_MODELS: dict[str, ModelSpec] = {
    'lenet5': ModelSpec(lenet.LeNet5, (32, 32, 1), 10),
    'alexnet': ModelSpec(alexnet.AlexNet, (227, 227, 3), 1000),
    'alexnet_torchvision': ModelSpec(alexnet.AlexNetTorchvision, _IMAGENET, 1000),
    'resnet18': ModelSpec(resnet.ResNet18, _IMAGENET, 1000),
    'resnet34': ModelSpec(resnet.ResNet34, _IMAGENET, 1000),
    'resnet50': ModelSpec(resnet.ResNet50, _IMAGENET, 1000),
    'resnet101': ModelSpec(resnet.ResNet101, _IMAGENET, 1000),
    'resnet152': ModelSpec(resnet.ResNet152, _IMAGENET, 1000),
    'resnet50_keras': ModelSpec(resnet.ResNet50Keras, _IMAGENET, 1000),
    'resnet101_keras': ModelSpec(resnet.ResNet101Keras, _IMAGENET, 1000),
    'resnet152_keras': ModelSpec(resnet.ResNet152Keras, _IMAGENET, 1000),
    'resnet20': ModelSpec(cifar_resnet.ResNet20, _CIFAR, 10),
    'resnet32': ModelSpec(cifar_resnet.ResNet32, _CIFAR, 10),
    'resnet44': ModelSpec(cifar_resnet.ResNet44, _CIFAR, 10),
    'resnet56': ModelSpec(cifar_resnet.ResNet56, _CIFAR, 10),
    'resnet110': ModelSpec(cifar_resnet.ResNet110, _CIFAR, 10),
}
for _depth, _vgg in [(11, vgg.VGG11), (13, vgg.VGG13), (16, vgg.VGG16), (19, vgg.VGG19)]:
  _MODELS[f'vgg{_depth}'] = ModelSpec(_vgg, _IMAGENET, 1000)
  _MODELS[f'vgg{_depth}_bn'] = ModelSpec(functools.partial(_vgg, batch_norm=True), _IMAGENET, 1000)
  _MODELS[f'vgg{_depth}_cifar'] = ModelSpec(functools.partial(_vgg, head='gap'), _CIFAR, 10)
  _MODELS[f'vgg{_depth}_bn_cifar'] = ModelSpec(
      functools.partial(_vgg, head='gap', batch_norm=True), _CIFAR, 10)


def list_models() -> list[str]:
  """All registered model names, sorted."""
  return sorted(_MODELS)


def _spec(name: str) -> ModelSpec:
  if name not in _MODELS:
    raise errors.unknown_choice('model', name, list_models())
  return _MODELS[name]


def model_options(name: str) -> list[str]:
  """The keyword arguments `get_model(name, ...)` accepts besides num_classes."""
  builder = _spec(name).builder
  cls, fixed = builder, {}
  if isinstance(builder, functools.partial):
    cls, fixed = builder.func, builder.keywords
  fields = {f.name for f in dataclasses.fields(cls)}
  return sorted(fields - {'parent', 'name', 'num_classes'} - set(fixed))


def get_model(name: str, num_classes: int = 1000, **kwargs) -> nn.Module:
  """The module called `name`, unbound: use it as `model.init` / `model.apply`.

  Called as `model.apply(variables, x, train=False)` with x float32[B, H, W, C]
  (see `model_input_shape`), it returns logits float32[B, num_classes].
  kwargs are the model's options (`model_options(name)`): every model takes
  `dtype`, `param_dtype` (a dtype or its name, e.g. 'bfloat16') and
  `bn_axis_name` (ignored by models without BatchNorm).

  Raises:
    UserError: unknown name, unknown option or unknown dtype.
  """
  options = model_options(name)
  unknown = sorted(set(kwargs) - set(options))
  if unknown:
    raise errors.UserError(
        f'model {name!r} has no option {", ".join(map(repr, unknown))}; '
        f'valid options: {", ".join(options)}')
  for key in ('dtype', 'param_dtype'):
    if isinstance(kwargs.get(key), str):
      try:
        kwargs[key] = jnp.dtype(kwargs[key])
      except TypeError:
        raise errors.UserError(
            f'unknown {key} {kwargs[key]!r}; use e.g. float32, bfloat16, float16') from None
  return _spec(name).builder(num_classes=num_classes, **kwargs)


def model_input_shape(name: str) -> tuple[int, int, int]:
  """The model's natural input (H, W, C), e.g. (224, 224, 3) for resnet50."""
  return _spec(name).input_shape


def model_num_classes(name: str) -> int:
  """Classes of the dataset the model was designed for (10 or 1000)."""
  return _spec(name).num_classes
