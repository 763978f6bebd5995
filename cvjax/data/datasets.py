"""The datasets cvjax knows: names, logical splits, statistics, `DatasetMeta`.

A pure catalogue: importing it does no I/O and loads neither TensorFlow nor TFDS.
Getting a dataset prepared (and its `DatasetMeta`) is `cvjax.data.prepare`.
Every dataset is the stock TFDS dataset of the same name.

Logical splits. mnist, fashion_mnist, cifar10, cifar100: 'train' (the full TFDS
train split), 'test', 'validation' (the last 10% of train) and
'train_minus_validation' (the first 90%): asking for 'validation' does not shrink
'train'; train on 'train_minus_validation' to keep them disjoint. tf_flowers (one
TFDS split): 'train' = train[:70%], 'validation' = train[70%:85%],
'test' = train[85%:]. imagenet2012: 'train', 'validation', and 'test' = validation
(the TFDS test split has no labels).

Normalisation: images are scaled to [0, 1], then `(x - mean) / std` per channel with
the numbers in `_SPECS` (train-split statistics; sources beside each entry).
"""
from __future__ import annotations

import dataclasses
import functools

from absl import logging

from cvjax.errors import UserError, unknown_choice

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision / Keras "torch" mode: ImageNet-1k train set.
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What cvjax needs to know about one TFDS dataset beyond its `DatasetInfo`.

  Attributes:
    splits: logical split name -> TFDS split expression.
    mean, std: per-channel statistics of pixel / 255 (the normalisation).
    default_augment: train augmentation when `augment=None` (op string, see preprocess).
    crop_fraction: eval fit for images larger than the input: resize the shorter
      side to `image_size / crop_fraction`, then centre-crop (0.875: 256 -> 224).
    raw_files: basenames the builder expects in `raw_data_dir`.
    default_raw_dir: where an OS package puts the raw files, if one does.
    in_memory: a whole split fits in each process's RAM (exact per-epoch shuffle
      and O(1) resume); False streams from disk (shuffle buffer, resume re-reads).
    generated: cvjax's own builder makes it (no raw files, no network).
  """
  splits: dict[str, str]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  default_augment: str
  crop_fraction: float
  raw_files: tuple[str, ...]
  default_raw_dir: str | None = None
  in_memory: bool = True
  generated: bool = False


def _small_splits() -> dict[str, str]:
  return {'train': 'train', 'validation': 'train[90%:]',
          'train_minus_validation': 'train[:90%]', 'test': 'test'}


_IDX_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
              't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')

_SPECS: dict[str, DatasetSpec] = {
    # The classic MNIST numbers (train set, as in PyTorch's MNIST example).
    'mnist': DatasetSpec(_small_splits(), (0.1307,), (0.3081,), '', 1.0, _IDX_FILES),
    # Computed here over the 60,000 real train images (Debian's IDX files):
    # mean 0.28604, std 0.35302; tests/test_data.py re-checks them when the files exist.
    'fashion_mnist': DatasetSpec(_small_splits(), (0.2860,), (0.3530,), '', 1.0, _IDX_FILES,
                                 default_raw_dir='/usr/share/datasets/fashion-mnist'),
    # Per-channel mean/std over all pixels of the 50,000 train images (the often-quoted
    # std (0.2023, 0.1994, 0.2010) is a mean of per-image stds, not the pixel std).
    'cifar10': DatasetSpec(_small_splits(), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           'pad_crop(4)|flip_lr', 1.0, ('cifar-10-binary.tar.gz',)),
    'cifar100': DatasetSpec(_small_splits(), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            'pad_crop(4)|flip_lr', 1.0, ('cifar-100-binary.tar.gz',)),
    # Flowers are used with ImageNet-pretrained networks: ImageNet statistics.
    'tf_flowers': DatasetSpec(
        {'train': 'train[:70%]', 'validation': 'train[70%:85%]', 'test': 'train[85%:]'},
        IMAGENET_MEAN, IMAGENET_STD, 'inception_crop|flip_lr', 0.875, ('flower_photos.tgz',)),
    'imagenet2012': DatasetSpec(
        {'train': 'train', 'validation': 'validation', 'test': 'validation'},
        IMAGENET_MEAN, IMAGENET_STD, 'inception_crop|flip_lr', 0.875,
        ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar'), in_memory=False),
    # Object crops of generated shape videos (cvjax.data.shapes_video), shape × hue classes:
    # what DeepSORT's appearance embedder trains on. Statistics over the 10,111 train crops.
    'cvjax_shapes_crops': DatasetSpec(
        {'train': 'train', 'validation': 'validation', 'test': 'test'},
        (0.4607, 0.4275, 0.4115), (0.2549, 0.2438, 0.2438), 'flip_lr', 1.0, (), generated=True),
}

DATASETS = tuple(sorted(_SPECS))


def spec(name: str) -> DatasetSpec:
  """The `DatasetSpec` of a dataset; `UserError` for an unknown name."""
  if name not in _SPECS:
    raise unknown_choice('dataset', name, _SPECS)
  return _SPECS[name]


def tfds_split(name: str, split: str) -> str:
  """The TFDS split expression of logical split `split` of dataset `name`."""
  splits = spec(name).splits
  if split not in splits:
    raise unknown_choice(f'split of {name}', split, splits)
  return splits[split]


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """Facts about a prepared dataset that a trainer needs.

  Attributes:
    name: the TFDS name.
    num_classes: number of labels.
    image_shape: native (H, W, C); H and W are None for variable-size datasets
      (tf_flowers, imagenet2012), C is always known.
    split_sizes: logical split -> number of examples (whole split, all processes).
    class_names: label index -> name, from the TFDS `ClassLabel`.
  """
  name: str
  num_classes: int
  image_shape: tuple[int | None, int | None, int]
  split_sizes: dict[str, int]
  class_names: tuple[str, ...] | None = None


def tensorflow():
  """Returns the `tensorflow` module with accelerators hidden from it.

  TensorFlow is only TFDS's engine here: if it saw a GPU it would reserve its memory
  for itself. Called by every public entry point before any TF op.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  _hide_accelerators()
  return tf


@functools.cache
def _hide_accelerators() -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF's runtime already started (someone ran a TF op first).
    if tf.config.get_visible_devices('GPU'):
      logging.warning('TensorFlow was initialised before cvjax.data could hide the GPUs '
                      'from it; it may hold accelerator memory.')


def steps_per_epoch(meta: DatasetMeta, global_batch_size: int, split: str = 'train') -> int:
  """Number of full global batches in one pass over `split` (the remainder is dropped)."""
  if split not in meta.split_sizes:
    raise unknown_choice(f'split of {meta.name}', split, meta.split_sizes)
  steps = meta.split_sizes[split] // global_batch_size
  if steps == 0:
    raise UserError(f'global batch size {global_batch_size} is larger than the '
                    f'{meta.split_sizes[split]} examples of {meta.name} {split!r}; use a '
                    'smaller --batch_size')
  return steps
