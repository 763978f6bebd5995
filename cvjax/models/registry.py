"""Model names → constructors, natural input shapes and class counts.

The names are stable: configs, checkpoints and weight converters refer to them.
"""
import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from cvjax import errors
from cvjax.models import alexnet, cifar_resnet, lenet, resnet, ssd, vgg
from cvjax.models import (densenet, efficientnet, fcn, inception, mobilenet, resnext,  # issue 7
                          senet, vit, xception)

_IMAGENET = (224, 224, 3)
_CIFAR = (32, 32, 3)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  builder: Callable[..., nn.Module]
  input_shape: tuple[int, int, int]  # natural (H, W, C)
  num_classes: int  # classes of the dataset it was designed for
  task: str = 'classification'  # detection models (issue 4) return (locations, logits)


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

# Detection (issue 4): SSD, num_classes = object classes (VOC's 20; +1 background logit).
_MODELS.update({
    'ssd300_vgg16': ModelSpec(ssd.SSD300VGG16, (300, 300, 3), 20, 'detection'),
    'ssd512_vgg16': ModelSpec(ssd.SSD512VGG16, (512, 512, 3), 20, 'detection'),
    'ssd300_resnet50': ModelSpec(ssd.SSD300ResNet50, (300, 300, 3), 20, 'detection'),
    'ssd128_resnet18_slim': ModelSpec(ssd.SSD128ResNet18Slim, (128, 128, 3), 20, 'detection'),
})

# Issue 7: the later families, one file each (references and counts in their docstrings).
_P = functools.partial
_MODELS.update({
    'googlenet': ModelSpec(inception.GoogLeNet, _IMAGENET, 1000),
    'googlenet_torchvision': ModelSpec(inception.GoogLeNetTorchvision, _IMAGENET, 1000),
    'googlenet_cifar': ModelSpec(_P(inception.GoogLeNetTorchvision, small_input=True), _CIFAR, 10),
    'inception_v3': ModelSpec(inception.InceptionV3, (299, 299, 3), 1000),
    'xception': ModelSpec(xception.Xception, (299, 299, 3), 1000),
    'se_resnet50': ModelSpec(senet.SEResNet50, _IMAGENET, 1000),
    'se_resnet20': ModelSpec(senet.SEResNet20, _CIFAR, 10),
    'resnext50_32x4d': ModelSpec(resnext.ResNeXt50_32x4d, _IMAGENET, 1000),
    'densenet121': ModelSpec(densenet.DenseNet121, _IMAGENET, 1000),
    'densenet169': ModelSpec(densenet.DenseNet169, _IMAGENET, 1000),
    'densenet201': ModelSpec(densenet.DenseNet201, _IMAGENET, 1000),
    'densenet_bc100_cifar': ModelSpec(densenet.DenseNetBC100, _CIFAR, 10),
    'mobilenet_v1': ModelSpec(mobilenet.MobileNetV1, _IMAGENET, 1000),
    'mobilenet_v1_cifar': ModelSpec(_P(mobilenet.MobileNetV1, small_input=True), _CIFAR, 10),
    'mobilenet_v2': ModelSpec(mobilenet.MobileNetV2, _IMAGENET, 1000),
    'mobilenet_v2_cifar': ModelSpec(_P(mobilenet.MobileNetV2, small_input=True), _CIFAR, 10),
    'efficientnet_b0': ModelSpec(efficientnet.EfficientNetB0, (224, 224, 3), 1000),
    'efficientnet_b1': ModelSpec(efficientnet.EfficientNetB1, (240, 240, 3), 1000),
    'efficientnet_b2': ModelSpec(efficientnet.EfficientNetB2, (260, 260, 3), 1000),
    'efficientnet_b3': ModelSpec(efficientnet.EfficientNetB3, (300, 300, 3), 1000),
    'efficientnet_b4': ModelSpec(efficientnet.EfficientNetB4, (380, 380, 3), 1000),
    'efficientnet_b5': ModelSpec(efficientnet.EfficientNetB5, (456, 456, 3), 1000),
    'efficientnet_b6': ModelSpec(efficientnet.EfficientNetB6, (528, 528, 3), 1000),
    'efficientnet_b7': ModelSpec(efficientnet.EfficientNetB7, (600, 600, 3), 1000),
    'efficientnet_b0_cifar': ModelSpec(_P(efficientnet.EfficientNetB0, small_input=True), _CIFAR, 10),
    'vit_b16': ModelSpec(vit.ViT_B16, _IMAGENET, 1000),
    'vit_ti16': ModelSpec(vit.ViT_Ti16, _IMAGENET, 1000),
    'vit_tiny_cifar': ModelSpec(vit.ViT_TinyCifar, _CIFAR, 10),
    # Segmentation: per-pixel logits [B, H, W, K], K includes the background.
    'fcn32s_vgg16': ModelSpec(fcn.FCN32sVGG16, _IMAGENET, 21, 'segmentation'),
    'fcn16s_vgg16': ModelSpec(fcn.FCN16sVGG16, _IMAGENET, 21, 'segmentation'),
    'fcn8s_vgg16': ModelSpec(fcn.FCN8sVGG16, _IMAGENET, 21, 'segmentation'),
    'fcn8s_resnet18': ModelSpec(fcn.FCN8sResNet18, _IMAGENET, 21, 'segmentation'),
    'fcn8s_resnet50': ModelSpec(fcn.FCN8sResNet50, _IMAGENET, 21, 'segmentation'),
    'fcn8s_tiny': ModelSpec(fcn.FCN8sTiny, (128, 128, 3), 7, 'segmentation'),
})


def list_models(task: str | None = 'classification') -> list[str]:
  """Registered model names of `task` ('classification', 'detection'; None: all), sorted."""
  return sorted(n for n, s in _MODELS.items() if task is None or s.task == task)


def model_task(name: str) -> str:
  """The task a model is built for: 'classification' or 'detection'."""
  return _spec(name).task


def _spec(name: str) -> ModelSpec:
  if name not in _MODELS:
    raise errors.unknown_choice('model', name, list_models(None))
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
