"""The segmentation view of `cvjax_shapes`: images and semantic masks.

`cvjax_shapes` (`cvjax.data.cvjax_shapes`) stores for every image `segmentation`:
uint8[S, S, 1], 0 background and label + 1 for its 6 shape classes; datasets and
classes: `cvjax.data.shapes_views`. Batches: {'image': float32[B, S, S, 3],
'segmentation': int32[B, S, S]} (+ 'mask': bool[B] in eval: False for padding).

Images are resized to the model's S when read (bilinear, antialiased, rounded;
masks by nearest neighbour) and held in memory, then augmented (default
'flip_lr'; any op of `cvjax.data.preprocess`), scaled to [0, 1] and normalised
with the ImageNet mean/std (the backgrounds are photographs). Pixels an op pads
in get label `preprocess.IGNORE`, left out of loss and metrics.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cvjax.data import datasets
from cvjax.data import pipeline
from cvjax.data.shapes_views import (SEGMENTATION_DATASETS as DATASETS,  # noqa: F401
                                     WEIGHTS_ONLY, check_segmentation_dataset as check_dataset,
                                     class_names, segmentation_meta as dataset_meta)


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
  """uint8[B, H, W, C] (C = 1 or 3) → uint8[B, S, S, 3], S = image_size, resized as
  `read_resized` resizes the dataset (bilinear, antialiased, rounded)."""
  datasets.tensorflow()
  x = tf.constant(images)
  if images.shape[-1] == 1:
    x = tf.image.grayscale_to_rgb(x)
  if images.shape[1:3] != (image_size, image_size):
    x = tf.image.resize(x, (image_size, image_size), antialias=True)
    x = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
  return x.numpy()


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8[..., 3] → float32, (x / 255 − ImageNet mean) / std."""
  return ((images.astype(np.float32) / 255 - np.asarray(datasets.IMAGENET_MEAN, np.float32))
          / np.asarray(datasets.IMAGENET_STD, np.float32))


def read_resized(image, size: int):
  """uint8[H, W, C] → uint8[size, size, C] (bilinear, antialiased, rounded), in tf."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  image = tf.image.resize(image, (size, size), antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


IMAGENET_NORMALIZE = f'normalize({datasets.IMAGENET_MEAN}, {datasets.IMAGENET_STD})'


def data_spec(name: str, *, image_size: int) -> pipeline.DataSpec:
  """The `DataSpec` of segmentation dataset `name` at input size S = image_size."""
  check_dataset(name)

  def read(ex, train):
    del train
    mask = tf.image.resize(ex['segmentation'], (image_size, image_size), method='nearest')
    return {'image': read_resized(ex['image'], image_size), 'segmentation': tf.cast(mask, tf.int32)}

  def last(ex):
    return {**ex, 'segmentation': ex['segmentation'][..., 0]}
  return pipeline.DataSpec(
      parts={s: ((name, s),) for s in ('train', 'validation', 'test')}, read=read,
      tail=IMAGENET_NORMALIZE, last=last, train_keys=('image', 'segmentation'),
      eval_keys=('image', 'segmentation'), default_augment='flip_lr', image_size=image_size,
      decoders={'instances': tfds.decode.SkipDecoding()})
