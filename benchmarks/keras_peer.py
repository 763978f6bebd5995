"""Keras 3 (JAX backend) peers for benchmarks.throughput: the same architectures, Keras' way.

`keras.applications` where it has the network, and LeNet-5, the CIFAR ResNets
(option-A shortcuts) and the lectures' deep CNN written here. Training is `train_on_batch` with
`jit_compile=True`, inference `predict_on_batch`; both return host values, so
each call is synchronous.
"""
from __future__ import annotations

import os
from typing import Callable

os.environ.setdefault('KERAS_BACKEND', 'jax')

# cvjax name → keras.applications class with the same layers (Keras' ResNets are v1, with
# conv biases: cvjax's resnet50_keras, not the torchvision-style resnet50).
APPLICATIONS = {'resnet50_keras': 'ResNet50', 'resnet101_keras': 'ResNet101',
                'resnet152_keras': 'ResNet152',
                'vgg16': 'VGG16', 'vgg19': 'VGG19', 'mobilenet_v2': 'MobileNetV2',
                'densenet121': 'DenseNet121', 'densenet169': 'DenseNet169',
                'densenet201': 'DenseNet201'}
CIFAR_RESNETS = {'resnet20': 3, 'resnet32': 5, 'resnet44': 7, 'resnet56': 9, 'resnet110': 18}
# The model_kwargs of cvjax's deep_cnn that shape its peers.
DEEP_CNN_OPTIONS = ('widths', 'convs_per_stage', 'hidden', 'dropout_rate', 'head_dropout_rate')


def _lenet5(image_size: int, num_classes: int, activation: str = 'tanh', pooling: str = 'avg'):
  import keras  # pylint: disable=g-import-not-at-top
  layers = keras.layers
  pool = {'avg': layers.AveragePooling2D, 'max': layers.MaxPooling2D}[pooling]
  return keras.Sequential([
      keras.Input((image_size, image_size, 1)),
      layers.Conv2D(6, 5, activation=activation), pool(2),
      layers.Conv2D(16, 5, activation=activation), pool(2),
      layers.Conv2D(120, 5, activation=activation), layers.Flatten(),
      layers.Dense(84, activation=activation), layers.Dense(num_classes)])


def _cifar_resnet(n: int, image_size: int, num_classes: int):
  import keras  # pylint: disable=g-import-not-at-top
  from keras import layers, ops  # pylint: disable=g-import-not-at-top

  def conv_bn(x, width, stride):
    x = layers.Conv2D(width, 3, stride, padding='same', use_bias=False)(x)
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)

  def shortcut(x, width, stride):  # option A: subsample, zero-pad the new channels
    extra = width - x.shape[-1]
    return layers.Lambda(lambda t: ops.pad(
        t[:, ::stride, ::stride, :], ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2))))(x)

  inputs = keras.Input((image_size, image_size, 3))
  x = layers.ReLU()(conv_bn(inputs, 16, 1))
  for i, width in enumerate((16, 32, 64)):
    for j in range(n):
      stride = 2 if i > 0 and j == 0 else 1
      y = conv_bn(layers.ReLU()(conv_bn(x, width, stride)), width, 1)
      if stride > 1 or x.shape[-1] != width:
        x = shortcut(x, width, stride)
      x = layers.ReLU()(layers.Add()([x, y]))
  x = layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, layers.Dense(num_classes)(x))


def _deep_cnn(image_size: int, num_classes: int, widths=(32, 64, 128), convs_per_stage: int = 2,
              hidden: int = 512, dropout_rate: float = 0.25, head_dropout_rate: float = 0.5):
  """cvjax's DeepCNN, its layers named as cvjax's parameters (conv1_1, bn1_1, ..., fc1, bn_fc1, fc2).

  BatchNorm as cvjax's BNModel default (momentum 0.9, epsilon 1e-5); Flatten of NHWC is
  cvjax's order, so cvjax's weights load one layer at a time.
  """
  import keras  # pylint: disable=g-import-not-at-top
  layers = keras.layers

  def bn(name):
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)

  stack = [keras.Input((image_size, image_size, 1))]
  for i, width in enumerate(widths):
    for j in range(convs_per_stage):
      stack += [layers.Conv2D(width, 3, padding='same', use_bias=False, name=f'conv{i + 1}_{j + 1}'),
                bn(f'bn{i + 1}_{j + 1}'), layers.ReLU()]
    stack += [layers.MaxPooling2D(2), layers.Dropout(dropout_rate)]
  stack += [layers.Flatten(), layers.Dense(hidden, use_bias=False, name='fc1'), bn('bn_fc1'),
            layers.ReLU(), layers.Dropout(head_dropout_rate), layers.Dense(num_classes, name='fc2')]
  return keras.Sequential(stack)


def build_model(model_name: str, image_size: int, num_classes: int, model_kwargs: dict,
                half_precision: str | None = None):
  """The Keras model for a cvjax model name, or None when there is no equivalent here.

  half_precision='bf16': built under Keras' 'mixed_bfloat16' policy (layers compute in
  bf16, variables stay float32); the global policy is restored afterwards.
  """
  import keras  # pylint: disable=g-import-not-at-top
  previous = keras.config.dtype_policy()
  if half_precision == 'bf16':
    keras.config.set_dtype_policy('mixed_bfloat16')
  try:
    return _build(model_name, image_size, num_classes, model_kwargs)
  finally:
    keras.config.set_dtype_policy(previous)


def _build(model_name: str, image_size: int, num_classes: int, model_kwargs: dict):
  import keras  # pylint: disable=g-import-not-at-top
  if model_name in APPLICATIONS:
    return getattr(keras.applications, APPLICATIONS[model_name])(
        weights=None, input_shape=(image_size, image_size, 3), classes=num_classes,
        classifier_activation=None)
  if model_name == 'lenet5':
    return _lenet5(image_size, num_classes, **{k: v for k, v in model_kwargs.items()
                                               if k in ('activation', 'pooling')})
  if model_name in CIFAR_RESNETS and model_kwargs.get('shortcut', 'A') == 'A':
    return _cifar_resnet(CIFAR_RESNETS[model_name], image_size, num_classes)
  if model_name == 'deep_cnn':
    return _deep_cnn(image_size, num_classes, **{k: v for k, v in model_kwargs.items()
                                                 if k in DEEP_CNN_OPTIONS})
  return None


def runners(model_name: str, image_size: int, channels: int, batch_size: int, num_classes: int,
            model_kwargs: dict, half_precision: str | None = None
            ) -> dict[str, Callable[[int], None]] | None:
  """{'train': run(n), 'infer': run(n)}, compiled and warmed up. ImportError without keras."""
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  model = build_model(model_name, image_size, num_classes, model_kwargs, half_precision)
  if model is None:
    return None
  model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=True)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch_size, image_size, image_size, channels)).astype(np.float32)
  y = rng.integers(0, num_classes, batch_size).astype(np.int32)

  def train(n: int) -> None:
    for _ in range(n):
      model.train_on_batch(x, y)

  def infer(n: int) -> None:
    for _ in range(n):
      model.predict_on_batch(x)

  train(1)
  infer(1)
  return {'train': train, 'infer': infer}
