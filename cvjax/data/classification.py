"""The classification datasets of `cvjax.data.datasets` as `pipeline.DataSpec`s.

Images reach the model as float32[B, S, S, C]: pixel / 255, the train augmentation
(native size and channels), channel conversion, `fit` to S × S and the dataset's
`normalize` (or the input convention of imported weights, `PREPROCESSING`). Eval skips
the augmentation; `preprocess_for_eval` applies the same ops to a numpy batch.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from cvjax.data import datasets
from cvjax.data import pipeline
from cvjax.data import preprocess
from cvjax.errors import UserError

_LUMA = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale weights

# Input conventions of imported weights (TrainConfig.preprocessing): they replace
# the dataset's normalize. Images arrive in [0, 1], RGB.
PREPROCESSING = {
    'caffe': 'caffe',  # Keras VGG16/19, ResNet50/101/152: BGR, 0-255, minus ImageNet means
    'torch': f'normalize({datasets.IMAGENET_MEAN}, {datasets.IMAGENET_STD})',  # torchvision
    'tf': 'normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))',  # Keras MobileNet*: [-1, 1]
}


def normalize_stats(spec: datasets.DatasetSpec, channels: int):
  """Dataset mean/std for `channels` output channels (converted from the native ones).

  RGB -> gray uses the luma weights on mean and std (exact for the mean; for the std
  it assumes fully correlated channels). Gray -> RGB repeats the numbers.
  """
  mean, std = spec.mean, spec.std
  if len(mean) == channels:
    return mean, std
  if channels == 1:
    return ((round(float(np.dot(_LUMA, mean)), 4),), (round(float(np.dot(_LUMA, std)), 4),))
  return mean * channels, std * channels


def tail_ops(dataset: str, native_channels: int, image_size: int, channels: int | None,
             preprocessing: str | None = None) -> str:
  """The deterministic ops after augmentation: channel conversion, fit, normalise."""
  spec = datasets.spec(dataset)
  channels = channels or native_channels
  if channels not in (1, 3) or native_channels not in (1, 3):
    raise UserError(f'channels must be 1 or 3, got {channels} (images have {native_channels})')
  convert = '' if channels == native_channels else ('to_rgb' if channels == 3 else 'to_grayscale')
  mean, std = normalize_stats(spec, channels)
  normalize = f'normalize({mean}, {std})'
  if preprocessing is not None:
    if preprocessing not in PREPROCESSING:
      raise UserError(f'unknown preprocessing {preprocessing!r}; valid choices: '
                      f'{", ".join(sorted(PREPROCESSING))}')
    if channels != 3:
      raise UserError(f'preprocessing {preprocessing!r} is for RGB models; this one has '
                      f'{channels} input channel(s)')
    normalize = PREPROCESSING[preprocessing]
  ops = [convert, f'fit({image_size}, {spec.crop_fraction})', normalize]
  return '|'.join(o for o in ops if o)


def data_spec(dataset: str, meta: datasets.DatasetMeta, *, image_size: int,
              channels: int | None = None, preprocessing: str | None = None) -> pipeline.DataSpec:
  """Batches {'image': float32[B, S, S, C], 'label': int32[B]} of a dataset in
  `datasets.DATASETS`; `meta` from `cvjax.data.dataset_meta`."""
  spec = datasets.spec(dataset)
  parts = {split: ((dataset, expr),) for split, expr in spec.splits.items()}
  fixed = None not in meta.image_shape[:2]

  def read(ex, train):
    del train
    return {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int32)}
  return pipeline.DataSpec(
      parts=parts, read=read, image_size=image_size,
      tail=tail_ops(dataset, meta.image_shape[-1], image_size, channels, preprocessing),
      train_keys=('image', 'label'), eval_keys=('image', 'label'),
      default_augment=spec.default_augment, in_memory=spec.in_memory, encoded=not fixed)


def preprocess_for_eval(images: np.ndarray, *, dataset: str, image_size: int,
                        channels: int | None = None,
                        preprocessing: str | None = None) -> np.ndarray:
  """The eval preprocessing of `data_spec`, for a numpy batch (e.g. `predict`).

  Args:
    images: uint8[B, H, W, C] with the dataset's channels (or `channels`).
    dataset: whose normalisation and fit to use.
    image_size: the model's input size S.
    channels: the model's input channels; None: those of `images`.
    preprocessing: the model's input convention (`PREPROCESSING`); None: the
      dataset's mean/std.

  Returns:
    float32[B, S, S, channels].
  """
  datasets.tensorflow()
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise UserError(f'preprocess_for_eval wants uint8[B, H, W, C] images, got '
                    f'{images.dtype}{list(images.shape)}')
  tail = preprocess.build(tail_ops(dataset, images.shape[-1], image_size, channels,
                                   preprocessing), image_size=image_size)
  return tail(tf.image.convert_image_dtype(tf.constant(images), tf.float32)).numpy()
