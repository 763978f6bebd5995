"""The classification + localisation view of `cvjax_shapes`: one class and one box per image.

`cvjax_shapes/single` (built by `cvjax.data.shapes`, no network needed) has
exactly one shape per image; its label and visible extent become the targets:

  names:   'cvjax_shapes/single' (96², 4,000 train / 500 validation / 500 test) and
           'cvjax_shapes/single_tiny' (64², 48 / 16 / 16, for tests)
  classes: circle, square, triangle, star, cross, ring (K = 6)
  batches: {'image': float32[B, S, S, 3], 'label': int32[B],
            'box': float32[B, 4] (ymin, xmin, ymax, xmax) normalised}
           (+ 'mask': bool[B] in eval: False for padding examples)

Labels and boxes are read with `cvjax.detection.data.parse` (one box per
example). Images are resized to the model's S (bilinear, antialiased; a
normalised box does not change), scaled to [0, 1] and normalised with the
ImageNet mean/std (the backgrounds are photographs). A split is decoded into
memory once per process (4,000 × 96² × 3 bytes ≈ 0.1 GB). Train batch k of
epoch e is the slice k of a permutation seeded by (seed, e), flipped
left-right per example (augment 'flip_lr', the default; '' for none; the box
flips with the image, `flip_lr`) by a coin seeded by (seed, e, k): a pure
function of the step, so a resumed run sees the same batches. Each process
builds its rows of every batch in numpy; `cvjax.data.batching` makes the
global jax.Arrays.
"""
from __future__ import annotations

import functools
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cvjax.data import batching, datasets
from cvjax.data import shapes
from cvjax.detection import data as detection_data
from cvjax.errors import UserError
from cvjax.segmentation import data as segmentation_data
from cvjax.segmentation.data import normalize  # noqa: F401  (the predictor's too)
from cvjax.segmentation.data import resize_images as resize

DATASETS = ('cvjax_shapes/single', 'cvjax_shapes/single_tiny')


def check_dataset(name: str) -> None:
  if name not in DATASETS:
    raise UserError(f'the localization task trains on one object per image, '
                    f'{" or ".join(DATASETS)}; got dataset {name!r}: use '
                    f'--dataset=cvjax_shapes/single')


def check_augment(augment: str | None) -> str:
  """The augmentation to use: None → 'flip_lr'; else '' or 'flip_lr'."""
  return segmentation_data.check_augment(augment, task='localization')


def prepared_builder(name: str, data_dir: str | None = None):
  """The TFDS builder of `name`, generated offline on first use."""
  check_dataset(name)
  return segmentation_data.generated_builder(name, data_dir)


def dataset_meta(name: str, data_dir: str | None = None) -> datasets.DatasetMeta:
  """`cvjax.data.DatasetMeta` of the dataset (num_classes = 6 shape classes)."""
  info = prepared_builder(name, data_dir).info
  return datasets.DatasetMeta(name=name, num_classes=len(shapes.CLASSES),
                              image_shape=tuple(info.features['image'].shape),
                              split_sizes={s: info.splits[s].num_examples for s in info.splits},
                              class_names=tuple(shapes.CLASSES))


def flip_lr(images: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mirrors images [..., H, W, C] left-right and their boxes f32[..., 4] (ymin, xmin,
  ymax, xmax) normalised with them: x ↦ 1 − x, so xmin' = 1 − xmax, xmax' = 1 − xmin."""
  boxes = np.asarray(boxes)
  flipped = np.stack([boxes[..., 0], 1 - boxes[..., 3], boxes[..., 2], 1 - boxes[..., 1]], -1)
  return np.asarray(images)[..., :, ::-1, :], flipped.astype(boxes.dtype)


@functools.lru_cache(maxsize=4)
def load_split(name: str, split: str, image_size: int, data_dir: str | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(uint8[N, S, S, 3] images, int32[N] labels, float32[N, 4] boxes) of `split`, S = image_size.

  Raises UserError for an unknown split or an example without exactly one object.
  """
  builder = prepared_builder(name, data_dir)
  if split not in builder.info.splits:
    raise UserError(f'{name} has no split {split!r}; it has {", ".join(builder.info.splits)}')

  def one(ex):
    target = detection_data.parse(ex, max_boxes=2)
    return ex['image'], target['labels'], target['boxes'], target['box_mask']

  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={k: tfds.decode.SkipDecoding()
                                    for k in ('instances', 'segmentation')})
  ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(512)
  parts = list(ds.as_numpy_iterator())
  images, labels, boxes, real = (np.concatenate([p[i] for p in parts]) for i in range(4))
  bad = np.flatnonzero(real.sum(1) != 1)
  if len(bad):
    raise UserError(f'{name} {split} example {bad[0]} has {real[bad[0]].sum()} objects; the '
                    'localization task needs exactly one per image')
  return resize(images, image_size), labels[:, 0].astype(np.int32), boxes[:, 0]


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
  images, labels, boxes = load_split(name, 'train', image_size, data_dir)
  steps = batching.shuffled_steps(len(images), global_batch_size, seed=seed,
                                  start_step=start_step, name=name)

  def generate():
    for index, flip in steps:
      x, b = normalize(images[index]), boxes[index]
      if augment == 'flip_lr':
        fx, fb = flip_lr(x, b)
        x, b = np.where(flip[:, None, None, None], fx, x), np.where(flip[:, None], fb, b)
      yield {'image': x, 'label': labels[index], 'box': b.astype(np.float32)}
  return generate()


def eval_batches(name: str, *, split: str, global_batch_size: int, image_size: int, sharding,
                 data_dir: str | None = None) -> Iterator[dict[str, jax.Array]]:
  """Every example of `split` once, in order; the last batch padded (mask False, zero
  images, label 0, box 0): global jax.Arrays with `sharding`."""
  batching.local_batch_size(global_batch_size, sharding)
  source = local_eval_batches(name, split=split, global_batch_size=global_batch_size,
                              image_size=image_size, data_dir=data_dir)
  return batching.DevicePrefetch(source, sharding, global_batch_size)


def local_eval_batches(name: str, *, split: str, global_batch_size: int, image_size: int,
                       data_dir: str | None = None) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of `eval_batches`, as numpy arrays."""
  images, labels, boxes = load_split(name, split, image_size, data_dir)
  steps = batching.padded_steps(len(images), global_batch_size)

  def generate():
    for index, valid in steps:
      x = np.where(valid[:, None, None, None], normalize(images[index]), 0.0).astype(np.float32)
      yield {'image': x, 'label': np.where(valid, labels[index], 0).astype(np.int32),
             'box': np.where(valid[:, None], boxes[index], 0.0).astype(np.float32),
             'mask': valid}
  return generate()
