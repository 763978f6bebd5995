"""Model names → constructors and what each model is (`ModelInfo`), declared here.

The names are stable: configs, checkpoints and weight converters refer to them.
`register_model` adds one more: any flax module class (or a partial of one), whose
dataclass fields are its options; cvjax's own models inherit theirs from `base`.
"""
import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from cvjax import errors
from cvjax.models import appearance
from cvjax.models import (alexnet, cifar_resnet, conv_lowering, deep_cnn, lenet, localizer, resnet, ssd, vgg,
                          wide_resnet)
from cvjax.models.conv_lowering import CONV_IMPLS
from cvjax.models import (deeplab, densenet, efficientnet, fcn, inception, mobilenet, resnext,
                          senet, superres, vit, xception, yolo)
from cvjax.models import autoencoder, dcgan, unet, vae

_IMAGENET = (224, 224, 3)
_CIFAR = (32, 32, 3)
TASKS = ('classification', 'detection', 'segmentation', 'localization', 'superres',
         'autoencoder', 'vae', 'gan', 'diffusion')


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """What a registered model is, without building it.

  task: 'classification' (logits [B, N]), 'detection' (locations, logits),
    'segmentation' (per-pixel logits [B, H, W, N]), 'localization' (logits [B, N],
    one box [B, 4] in [0, 1]), 'superres' (an image [B, H·r, W·r, C] from [B, H, W, C]),
    'autoencoder' (reconstruction logits [B, H, W, C] from x in [0, 1]; `encode`,
    `decode`), 'vae' (a dict: 'x' the decoder's output [B, H, W, C], 'mean', 'logvar',
    'z' [B, L]; needs a 'dropout' rng in eval too), 'gan' (the discriminator's logits
    [B]; `generate(z, labels)` gives images [B, H, W, C] in [-1, 1]) or 'diffusion'
    (the predicted noise [B, H, W, C] from x_t and t [B]).
  input_shape: the natural input (H, W, C).
  num_classes: classes of the dataset it was designed for (detection: object
    classes, without the background logit; segmentation: with the background;
    superres: the image's channels, which the model ignores; the generative tasks:
    the dataset's, which only the conditional GAN uses).
  supports_remat: takes `remat=True` (recompute each residual block in the backward pass).
  batch_norm: has BatchNorm, so it takes `bn_axis_name` (cross-device statistics) if
    its class declares it; models without it do not accept that option.
  """
  task: str
  input_shape: tuple[int, int, int]
  num_classes: int
  supports_remat: bool = False
  batch_norm: bool = True


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  builder: Callable[..., nn.Module]
  info: ModelInfo


_MODELS: dict[str, ModelSpec] = {}


def _add(name: str, builder: Callable[..., nn.Module], input_shape: tuple[int, int, int],
         num_classes: int, *, task: str = 'classification', remat: bool = False,
         bn: bool = True) -> None:
  _MODELS[name] = ModelSpec(builder, ModelInfo(task, input_shape, num_classes, remat, bn))


_P = functools.partial

_add('lenet5', lenet.LeNet5, (32, 32, 1), 10, bn=False)
_add('deep_cnn', deep_cnn.DeepCNN, (28, 28, 1), 10)
_add('appearance_cnn', appearance.AppearanceCNN, (32, 32, 3), 36, bn=False)
_add('alexnet', alexnet.AlexNet, (227, 227, 3), 1000, bn=False)
_add('alexnet_torchvision', alexnet.AlexNetTorchvision, _IMAGENET, 1000, bn=False)
for _name, _resnet in [('resnet18', resnet.ResNet18), ('resnet34', resnet.ResNet34),
                       ('resnet50', resnet.ResNet50), ('resnet101', resnet.ResNet101),
                       ('resnet152', resnet.ResNet152), ('resnet50_keras', resnet.ResNet50Keras),
                       ('resnet101_keras', resnet.ResNet101Keras),
                       ('resnet152_keras', resnet.ResNet152Keras)]:
  _add(_name, _resnet, _IMAGENET, 1000, remat=True)
for _depth in (20, 32, 44, 56, 110):
  _add(f'resnet{_depth}', getattr(cifar_resnet, f'ResNet{_depth}'), _CIFAR, 10, remat=True)
_add('wide_resnet', wide_resnet.WideResNet, _CIFAR, 10, remat=True)  # any depth and widen_factor
for _name, _wrn in [('wrn16_4', wide_resnet.WRN16_4), ('wrn28_10', wide_resnet.WRN28_10),
                    ('wrn40_4', wide_resnet.WRN40_4)]:
  _add(_name, _wrn, _CIFAR, 10, remat=True)
for _depth, _vgg in [(11, vgg.VGG11), (13, vgg.VGG13), (16, vgg.VGG16), (19, vgg.VGG19)]:
  _add(f'vgg{_depth}', _P(_vgg, batch_norm=False), _IMAGENET, 1000, bn=False)
  _add(f'vgg{_depth}_bn', _P(_vgg, batch_norm=True), _IMAGENET, 1000)
  _add(f'vgg{_depth}_cifar', _P(_vgg, head='gap', batch_norm=False), _CIFAR, 10, bn=False)
  _add(f'vgg{_depth}_bn_cifar', _P(_vgg, head='gap', batch_norm=True), _CIFAR, 10)

# Detection: SSD, num_classes = object classes (VOC's 20; +1 background logit).
_add('ssd300_vgg16', ssd.SSD300VGG16, (300, 300, 3), 20, task='detection', bn=False)
_add('ssd512_vgg16', ssd.SSD512VGG16, (512, 512, 3), 20, task='detection', bn=False)
_add('ssd300_resnet50', ssd.SSD300ResNet50, (300, 300, 3), 20, task='detection')
_add('ssd128_resnet18_slim', ssd.SSD128ResNet18Slim, (128, 128, 3), 20, task='detection')
# YOLOv3: num_classes = object classes (COCO's 80), no background; outputs per-scale maps.
_add('yolov3', yolo.YOLOv3, (416, 416, 3), 80, task='detection')
_add('yolov3_tiny', yolo.YOLOv3Tiny, (416, 416, 3), 80, task='detection')
_add('yolov3_shapes', yolo.YOLOv3Shapes, (128, 128, 3), 6, task='detection')

# The later families, one file each (references and counts in their docstrings).
_add('googlenet', _P(inception.GoogLeNet, batch_norm=False), _IMAGENET, 1000, bn=False)
_add('googlenet_torchvision', inception.GoogLeNetTorchvision, _IMAGENET, 1000)
_add('googlenet_cifar', _P(inception.GoogLeNetTorchvision, small_input=True), _CIFAR, 10)
_add('inception_v3', inception.InceptionV3, (299, 299, 3), 1000)
_add('xception', xception.Xception, (299, 299, 3), 1000)
_add('se_resnet50', senet.SEResNet50, _IMAGENET, 1000, remat=True)
_add('se_resnet20', senet.SEResNet20, _CIFAR, 10, remat=True)
_add('resnext50_32x4d', resnext.ResNeXt50_32x4d, _IMAGENET, 1000, remat=True)
_add('densenet121', densenet.DenseNet121, _IMAGENET, 1000)
_add('densenet169', densenet.DenseNet169, _IMAGENET, 1000)
_add('densenet201', densenet.DenseNet201, _IMAGENET, 1000)
_add('densenet_bc100_cifar', densenet.DenseNetBC100, _CIFAR, 10)
_add('mobilenet_v1', mobilenet.MobileNetV1, _IMAGENET, 1000)
_add('mobilenet_v1_cifar', _P(mobilenet.MobileNetV1, small_input=True), _CIFAR, 10)
_add('mobilenet_v2', mobilenet.MobileNetV2, _IMAGENET, 1000)
_add('mobilenet_v2_cifar', _P(mobilenet.MobileNetV2, small_input=True), _CIFAR, 10)
for _variant, _size in zip('01234567', (224, 240, 260, 300, 380, 456, 528, 600)):
  _add(f'efficientnet_b{_variant}', getattr(efficientnet, f'EfficientNetB{_variant}'),
       (_size, _size, 3), 1000)
_add('efficientnet_b0_cifar', _P(efficientnet.EfficientNetB0, small_input=True), _CIFAR, 10)
_add('vit_b16', vit.ViT_B16, _IMAGENET, 1000, bn=False)
_add('vit_ti16', vit.ViT_Ti16, _IMAGENET, 1000, bn=False)
_add('vit_tiny_cifar', vit.ViT_TinyCifar, _CIFAR, 10, bn=False)
# Segmentation: per-pixel logits [B, H, W, K], K includes the background.
for _name, _fcn, _shape, _classes, _bn in [
    ('fcn32s_vgg16', fcn.FCN32sVGG16, _IMAGENET, 21, False),
    ('fcn16s_vgg16', fcn.FCN16sVGG16, _IMAGENET, 21, False),
    ('fcn8s_vgg16', fcn.FCN8sVGG16, _IMAGENET, 21, False),
    ('fcn8s_resnet18', fcn.FCN8sResNet18, _IMAGENET, 21, True),
    ('fcn8s_resnet50', fcn.FCN8sResNet50, _IMAGENET, 21, True),
    ('fcn8s_tiny', fcn.FCN8sTiny, (128, 128, 3), 7, True)]:
  _add(_name, _fcn, _shape, _classes, task='segmentation', bn=_bn)
# DeepLabv3 at torchvision's eval size (520: its weights' `resize_size`; any size works).
_add('deeplabv3_resnet50', deeplab.DeepLabV3ResNet50, (520, 520, 3), 21, task='segmentation',
     remat=True)
_add('deeplabv3_resnet101', deeplab.DeepLabV3ResNet101, (520, 520, 3), 21, task='segmentation',
     remat=True)
_add('deeplabv3_tiny', deeplab.DeepLabV3Tiny, (128, 128, 3), 7, task='segmentation', remat=True)
# Classification + localisation: (logits [B, N], one box [B, 4]).
_add('localizer_shapes', localizer.LocalizerShapes, (96, 96, 3), 6, task='localization')
_add('localizer_resnet18', localizer.LocalizerResNet18, _IMAGENET, 1000, task='localization')

# Super-resolution: an image in, an image out; num_classes is the channels and is ignored.
_add('srcnn_915', superres.SRCNN, (11, 11, 1), 1, task='superres', bn=False)
_add('srcnn_955', _P(superres.SRCNN, kernel_sizes=(9, 5, 5)), (11, 11, 1), 1, task='superres',
     bn=False)
for _scale in (2, 3, 4):
  _add(f'espcn_x{_scale}', _P(superres.ESPCN, scale=_scale), (17, 17, 1), 1, task='superres',
       bn=False)
  _add(f'edsr_baseline_x{_scale}', _P(superres.EDSR, scale=_scale), (48, 48, 3), 3,
       task='superres', bn=False)

# Generative models at 28×28×1 (MNIST, Fashion-MNIST); only dcgan_conditional uses the labels.
_MNIST = (28, 28, 1)
_add('conv_autoencoder', autoencoder.ConvAutoencoder, _MNIST, 10, task='autoencoder', bn=False)
_add('denoising_autoencoder', _P(autoencoder.ConvAutoencoder, noise_std=0.3), _MNIST, 10,
     task='autoencoder', bn=False)
_add('conv_vae', vae.ConvVAE, _MNIST, 10, task='vae', bn=False)
_add('mlp_vae', vae.MLPVAE, _MNIST, 10, task='vae', bn=False)
_add('dcgan', dcgan.DCGAN, _MNIST, 10, task='gan')
_add('dcgan_conditional', _P(dcgan.DCGAN, conditional=True), _MNIST, 10, task='gan')
_add('ddpm_unet', unet.DiffusionUNet, _MNIST, 10, task='diffusion', bn=False)


def register_model(name: str, builder: Callable[..., nn.Module], info: ModelInfo) -> None:
  """Makes `builder` the model called `name`, for `get_model` and the training factory.

  builder: a `flax.linen.Module` class, or a `functools.partial` of one. Its dataclass
  fields are its options: `num_classes` if it has one (else `info.num_classes` is
  the only count it builds for), and only what it declares of `conv_impl`, `dtype`,
  `param_dtype`, `bn_axis_name` and `remat` is set by a run (`model_options`).

  Raises:
    UserError: `name` is taken, `info.task` is not one of `TASKS`, `builder` is not
      a module class, or `info.supports_remat` and the class has no `remat` field.
  """
  if name in _MODELS:
    raise errors.UserError(f'model name {name!r} is taken; register the model under another name')
  if info.task not in TASKS:
    raise errors.unknown_choice('task', info.task, TASKS)
  cls = _module_class(builder)
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise errors.UserError(f'model {name!r}: {builder!r} is not a flax.linen.Module class '
                           '(or a functools.partial of one)')
  if info.supports_remat and 'remat' not in _field_names(cls):
    raise errors.UserError(f'model {name!r} says it supports remat, but {cls.__name__} has no '
                           '`remat` field; declare one or pass supports_remat=False')
  _MODELS[name] = ModelSpec(builder, info)


def list_models(task: str | None = 'classification') -> list[str]:
  """Registered model names of `task` (one of `TASKS`; None: all), sorted."""
  return sorted(n for n, s in _MODELS.items() if task is None or s.info.task == task)


def _spec(name: str) -> ModelSpec:
  if name not in _MODELS:
    raise errors.unknown_choice('model', name, list_models(None),
                                listing='cvjax.models.list_models(None) lists them')
  return _MODELS[name]


def model_info(name: str) -> ModelInfo:
  """What model `name` is (task, natural input, classes, remat, BatchNorm); builds nothing.

  Raises:
    UserError: unknown name.
  """
  return _spec(name).info


def model_task(name: str) -> str:
  """The task a model is built for: one of `TASKS`."""
  return model_info(name).task


def model_input_shape(name: str) -> tuple[int, int, int]:
  """The model's natural input (H, W, C), e.g. (224, 224, 3) for resnet50."""
  return model_info(name).input_shape


def model_num_classes(name: str) -> int:
  """Classes of the dataset the model was designed for (e.g. 10 or 1000)."""
  return model_info(name).num_classes


def _module_class(builder: Callable[..., nn.Module]) -> Any:
  while isinstance(builder, functools.partial):
    builder = builder.func
  return builder


def _field_names(cls: Any) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}


def model_options(name: str) -> list[str]:
  """The keyword arguments `get_model(name, ...)` accepts besides num_classes, sorted:
  the fields of the model's class that its registration does not fix.

  Every cvjax model takes `conv_impl`, `dtype` and `param_dtype`; `bn_axis_name`
  (and `bn_momentum`, `bn_epsilon`) only models with BatchNorm
  (`model_info(name).batch_norm`); `remat` only those with `supports_remat`.
  A model registered with `register_model` takes the fields it declares.
  """
  spec = _spec(name)
  builder, fixed = spec.builder, {}
  while isinstance(builder, functools.partial):
    builder, fixed = builder.func, {**builder.keywords, **fixed}
  hidden = {'num_classes'} | set(fixed)
  if not spec.info.batch_norm:  # a class shared with BN variants (VGG, FCN, SSD, GoogLeNet)
    hidden |= {'bn_axis_name', 'bn_momentum', 'bn_epsilon'}
  return sorted(_field_names(builder) - hidden)


def get_model(name: str, num_classes: int = 1000, conv_impl: str = 'xla', **kwargs) -> nn.Module:
  """The module called `name`, unbound: use it as `model.init` / `model.apply`.

  Called as `model.apply(variables, x, train=False)` with x float32[B, H, W, C]
  (see `model_input_shape`), a classifier returns logits float32[B, num_classes].
  conv_impl: one of `CONV_IMPLS`, resolved here, once ('auto' → the CPU
  lowerings when `jax.default_backend()` is 'cpu' now, else 'xla'); the model
  holds the result as its `conv_impl` field. Parameters do not depend on it.
  A model without that field computes its convolutions with XLA, which is what
  'auto' and 'xla' then mean.
  kwargs are the model's options (`model_options(name)`): every cvjax model takes
  `dtype` and `param_dtype` (a dtype or its name, e.g. 'bfloat16'); models with
  BatchNorm take `bn_axis_name`.

  Raises:
    UserError: unknown name, option, conv impl or dtype; a class count other than
      `model_num_classes(name)` for a model without a `num_classes` field.
  """
  options = model_options(name)
  unknown = sorted(set(kwargs) - set(options))
  if unknown:
    raise errors.UserError(
        f'model {name!r} has no option {", ".join(map(repr, unknown))}; '
        f'valid options: {", ".join(options) or "none"}')
  for key in ('dtype', 'param_dtype'):
    if isinstance(kwargs.get(key), str):
      try:
        kwargs[key] = jnp.dtype(kwargs[key])
      except TypeError:
        raise errors.UserError(
            f'unknown {key} {kwargs[key]!r}; use e.g. float32, bfloat16, float16') from None
  spec = _spec(name)
  fields = _field_names(_module_class(spec.builder))
  impl = conv_lowering.resolve(conv_impl)
  if 'conv_impl' in fields:
    kwargs['conv_impl'] = impl
  elif conv_impl not in CONV_IMPLS:
    raise errors.UserError(f'model {name!r} has no conv_impl option (XLA computes its '
                           f'convolutions); use conv_impl auto or xla, not {conv_impl!r}')
  if 'num_classes' in fields:
    kwargs['num_classes'] = num_classes
  elif num_classes != spec.info.num_classes:
    raise errors.UserError(f'model {name!r} has no num_classes option: it has '
                           f'{spec.info.num_classes} classes, not {num_classes}')
  return spec.builder(**kwargs)
