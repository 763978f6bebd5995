"""The super-resolution view of whole photographs: low/high-resolution pairs made on the fly.

Dataset: `cvjax_sr_photos` (`cvjax.data.sr_photos`), whole photographs split by image,
sides multiples of 12. Batches, for a model of scale r and input (LR) patch size s:

  train  {'image': f32[B, s, s, C] LR, 'target': f32[B, s·r, s·r, C] HR}
  eval   {'image': f32[B, E/r, E/r, C], 'target': f32[B, E, E, C], 'mask': bool[B]}

with values in [0, 1] and C = 3 (RGB) or 1 (the BT.601 luma Y, for SRCNN and ESPCN).
A train example is a random s·r × s·r window of a photograph (`random_crop`), then the
run's augmentation (default `dihedral`: flips and transposition), then the pair: the
window is the target, its bicubic antialiased downscale rounded to 8 bits the input
(`sr_pair`, whose docstring compares it with MATLAB's `imresize`). An epoch visits every
training photograph `PATCHES_PER_IMAGE` times, a fresh window each time; that is the
split size `dataset_meta` reports. The training photographs are held in memory decoded,
padded to the longest side (`max_train_side`) with their true size beside them. Eval examples are the central E × E window of each
photograph (E = `EVAL_CROP`, the largest multiple of 12 inside every eval photograph)
so that they batch; whole photographs are scored by `cvjax.superres --evaluate`.
"""
from __future__ import annotations

import functools

import tensorflow as tf
import tensorflow_datasets as tfds

from cvjax.data import datasets
from cvjax.data import pipeline
from cvjax.data import preprocess
from cvjax.errors import UserError

DATASETS = ('cvjax_sr_photos',)
PATCHES_PER_IMAGE = 64   # train windows per photograph per epoch
EVAL_CROP = 288          # central window of the eval photographs, pixels (HR)
DEFAULT_AUGMENT = 'dihedral'


def check_dataset(name: str) -> None:
  if name not in DATASETS:
    raise UserError(f'the superres task trains on whole photographs, {" or ".join(DATASETS)}; '
                    f'got dataset {name!r}: use --dataset=cvjax_sr_photos')


def builder(name: str, data_dir: str | None = None):
  """The prepared TFDS builder of `name` (built offline from installed files on first use)."""
  check_dataset(name)
  datasets.tensorflow()  # hides accelerators from TF before its first op
  import cvjax.data.sr_photos  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  b = tfds.builder(name, data_dir=data_dir)
  b.download_and_prepare()  # a no-op when prepared; reads installed photographs otherwise
  return b


def dataset_meta(name: str, data_dir: str | None = None) -> datasets.DatasetMeta:
  """`DatasetMeta` with 'train' counted in windows (photographs × PATCHES_PER_IMAGE) and
  'validation'/'test' in photographs; num_classes is 3, the stored channels."""
  splits = builder(name, data_dir).info.splits
  sizes = {s: splits[s].num_examples for s in ('train', 'validation', 'test')}
  sizes['train'] *= PATCHES_PER_IMAGE
  return datasets.DatasetMeta(name=name, num_classes=3, image_shape=(None, None, 3),
                              split_sizes=sizes)


def check_scale(scale: int) -> None:
  if EVAL_CROP % scale:
    raise UserError(f'superres scales must divide the {EVAL_CROP}-pixel eval window, got '
                    f'scale {scale}; use 2, 3, 4, 6, 8, ...')


def crop_size(input_size: int, scale: int) -> int:
  """The HR window side of a train example: the model's input size × scale."""
  return input_size * scale


def train_augment(augment: str | None, *, input_size: int, scale: int) -> str:
  """The train op string: the random window, then `augment` (None: DEFAULT_AUGMENT)."""
  augment = DEFAULT_AUGMENT if augment is None else augment
  window = f'random_crop({crop_size(input_size, scale)})'
  return f'{window}|{augment}' if augment else window


@functools.cache
def train_sides(name: str, data_dir: str | None = None) -> tuple[int, int]:
  """The shortest and the longest side among `name`'s training photographs, pixels."""
  ds = builder(name, data_dir).as_dataset(split='train')
  sides = [ex['image'].shape[:2] for ex in ds]
  return int(min(min(s) for s in sides)), int(max(max(s) for s in sides))


def max_train_side(name: str, data_dir: str | None = None) -> int:
  """The longest side of `name`'s training photographs, pixels."""
  return train_sides(name, data_dir)[1]


def check_window(name: str, *, input_size: int, scale: int, data_dir: str | None = None) -> None:
  """UserError unless every training photograph holds the train window (`random_crop`
  would otherwise stop the run with a TensorFlow error when it first draws the photograph)."""
  crop, shortest = crop_size(input_size, scale), train_sides(name, data_dir)[0]
  if crop > shortest:
    raise UserError(f'--image_size={input_size} at scale {scale} takes {crop} x {crop} windows '
                    f'of the training photographs, but the smallest of {name} has a side of '
                    f'{shortest} pixels; use --image_size={shortest // scale} or less')


def data_spec(name: str, *, scale: int, channels: int,
              data_dir: str | None = None) -> pipeline.DataSpec:
  """The `DataSpec` of `name` for a model of `scale` on `channels` (1: Y, 3: RGB).
  Its default augmentation is the window alone: the task passes `train_augment`."""
  check_dataset(name)
  check_scale(scale)

  side = max_train_side(name, data_dir)

  def read(ex, train):
    image = ex['image']
    if train:  # held decoded, padded to one size; random_crop reads the true size
      hw = tf.shape(image)[:2]
      return {'image': tf.image.pad_to_bounding_box(image, 0, 0, side, side),
              preprocess.IMAGE_HW: tf.cast(hw, tf.int32)}
    return {'image': tf.image.resize_with_crop_or_pad(image, EVAL_CROP, EVAL_CROP)}

  tail = f'sr_pair({scale})' if channels == 3 else f'to_y|sr_pair({scale})'
  return pipeline.DataSpec(
      parts={s: ((name, s),) for s in ('train', 'validation', 'test')}, read=read, tail=tail,
      train_keys=('image', 'target'), eval_keys=('image', 'target'), in_memory=True,
      repeat=PATCHES_PER_IMAGE)
