"""The segmentation view of `cvjax_shapes`: images and semantic masks as global batches.

`cvjax_shapes` (built by `cvjax.data.shapes`, no network needed) already
stores, for every image, `segmentation`: uint8[S, S, 1], 0 background and
label + 1 for the 6 shape classes — the masks of the very shapes its boxes
describe. Here that becomes a K = 7 class segmentation dataset:

  names:   'cvjax_shapes' (256², 6,000 train / 500 validation / 1,000 test) and
           'cvjax_shapes/tiny' (96², 64 / 16 / 32, for tests)
  classes: background, circle, square, triangle, star, cross, ring
  batches: {'image': float32[B, S, S, 3], 'segmentation': int32[B, S, S]}
           (+ 'mask': bool[B] in eval: False for padding examples)

Images are resized to the model's S (bilinear, antialiased; masks by nearest
neighbour), scaled to [0, 1] and normalised with the ImageNet mean/std (the
backgrounds are photographs). A split is decoded into memory once per process
(6,000 × 128² × 4 bytes ≈ 0.4 GB at S = 128). Train batch k of epoch e is the
slice k of a permutation seeded by (seed, e), flipped left-right per example
(augment 'flip_lr', the default; '' for none) by a coin seeded by (seed, e, k):
a pure function of the step, so a resumed run sees the same batches. Each
process builds its rows of every batch in numpy (`local_train_batches`,
`local_eval_batches`); `cvjax.data.batching` makes the global jax.Arrays.
"""
from __future__ import annotations

import functools
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cvjax.data import batching
from cvjax.data import datasets
from cvjax.data import shapes
from cvjax.errors import UserError

DATASETS = ('cvjax_shapes', 'cvjax_shapes/tiny')
AUGMENTS = ('', 'flip_lr')
# Label sets of imported weights, which restore and predict but do not train here:
# name → class names, background first.
WEIGHTS_ONLY = {
    'voc': ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
            'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person',
            'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor'),
}


def class_names(name: str = 'cvjax_shapes') -> tuple[str, ...]:
  """Class names of dataset `name` (one of DATASETS or WEIGHTS_ONLY), background first."""
  if name in WEIGHTS_ONLY:
    return WEIGHTS_ONLY[name]
  return ('background',) + tuple(shapes.CLASSES)


def check_dataset(name: str) -> None:
  if name not in DATASETS:
    raise UserError(f'the segmentation task trains on {" or ".join(DATASETS)}, got dataset '
                    f'{name!r}; use --dataset=cvjax_shapes')


def check_augment(augment: str | None, task: str = 'segmentation') -> str:
  """The augmentation to use: None → 'flip_lr'; else one of AUGMENTS ('' or 'flip_lr')."""
  augment = 'flip_lr' if augment is None else augment.strip()
  if augment not in AUGMENTS:
    raise UserError(f'{task} augment {augment!r} is not supported; use "flip_lr" or ""')
  return augment


def generated_builder(name: str, data_dir: str | None = None):
  """The TFDS builder of a generated dataset (`cvjax_shapes/...`), generated offline on
  first use."""
  datasets.tensorflow()  # hides accelerators from TF before its first op
  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare()  # a no-op when prepared; generates offline otherwise
  return builder


def prepared_builder(name: str, data_dir: str | None = None):
  """The TFDS builder of segmentation dataset `name`, generated offline on first use."""
  check_dataset(name)
  return generated_builder(name, data_dir)


def dataset_meta(name: str, data_dir: str | None = None) -> datasets.DatasetMeta:
  """`cvjax.data.DatasetMeta` of the segmentation dataset (num_classes = 7, background included)."""
  builder = prepared_builder(name, data_dir)
  info = builder.info
  names = class_names()
  return datasets.DatasetMeta(name=name, num_classes=len(names),
                              image_shape=tuple(info.features['image'].shape),
                              split_sizes={s: info.splits[s].num_examples for s in info.splits},
                              class_names=names)


@functools.lru_cache(maxsize=4)
def load_split(name: str, split: str, image_size: int,
               data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(uint8[N, S, S, 3] images, uint8[N, S, S] masks) of `split`, resized to S = image_size."""
  builder = prepared_builder(name, data_dir)
  if split not in builder.info.splits:
    raise UserError(f'{name} has no split {split!r}; it has {", ".join(builder.info.splits)}')
  native = builder.info.features['image'].shape[0]

  def resize(ex):
    image, mask = ex['image'], ex['segmentation']
    if image_size != native:
      image = tf.image.resize(image, (image_size, image_size), antialias=True)
      image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
      mask = tf.image.resize(mask, (image_size, image_size), method='nearest')
    return image, mask[..., 0]

  ds = builder.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(resize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(512)
  parts = list(ds.as_numpy_iterator())
  return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
  """uint8[B, H, W, C] (C = 1 or 3) → uint8[B, S, S, 3], S = image_size, resized as
  `load_split` resizes the dataset (bilinear, antialiased, rounded)."""
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


def train_batches(name: str, *, global_batch_size: int, image_size: int, sharding, seed: int,
                  start_step: int = 0, augment: str | None = None,
                  data_dir: str | None = None) -> Iterator[dict[str, jax.Array]]:
  """Infinite iterator of train batches from step `start_step` (see the module docstring):
  global jax.Arrays with `sharding`."""
  batching.local_batch_size(global_batch_size, sharding)
  source = local_train_batches(name, global_batch_size=global_batch_size,
                               image_size=image_size, seed=seed, start_step=start_step,
                               augment=augment, data_dir=data_dir)
  return batching.DevicePrefetch(source, sharding, global_batch_size)


def local_train_batches(name: str, *, global_batch_size: int, image_size: int, seed: int,
                        start_step: int = 0, augment: str | None = None,
                        data_dir: str | None = None) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of `train_batches`, as numpy arrays."""
  augment = check_augment(augment)
  images, masks = load_split(name, 'train', image_size, data_dir)
  steps = batching.shuffled_steps(len(images), global_batch_size, seed=seed,
                                  start_step=start_step, name=name)

  def generate():
    for index, flip in steps:
      x, y = normalize(images[index]), masks[index].astype(np.int32)
      if augment == 'flip_lr':
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        y = np.where(flip[:, None, None], y[:, :, ::-1], y)
      yield {'image': x, 'segmentation': y}
  return generate()


def eval_batches(name: str, *, split: str, global_batch_size: int, image_size: int, sharding,
                 data_dir: str | None = None) -> Iterator[dict[str, jax.Array]]:
  """Every example of `split` once, in order; the last batch padded (mask False, zero
  images): global jax.Arrays with `sharding`."""
  batching.local_batch_size(global_batch_size, sharding)
  source = local_eval_batches(name, split=split, global_batch_size=global_batch_size,
                              image_size=image_size, data_dir=data_dir)
  return batching.DevicePrefetch(source, sharding, global_batch_size)


def local_eval_batches(name: str, *, split: str, global_batch_size: int, image_size: int,
                       data_dir: str | None = None) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of `eval_batches`, as numpy arrays."""
  images, masks = load_split(name, split, image_size, data_dir)
  steps = batching.padded_steps(len(images), global_batch_size)

  def generate():
    for index, valid in steps:
      x = np.where(valid[:, None, None, None], normalize(images[index]), 0.0).astype(np.float32)
      y = np.where(valid[:, None, None], masks[index], 0).astype(np.int32)
      yield {'image': x, 'segmentation': y, 'mask': valid}
  return generate()
