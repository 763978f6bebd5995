"""The task views of `cvjax_shapes` (`cvjax.data.cvjax_shapes`): which configs each task reads,
their classes and `DatasetMeta`; generated offline on first use.

  segmentation  'cvjax_shapes', 'cvjax_shapes/tiny': K = 7 classes, background first
  localization  'cvjax_shapes/single', 'cvjax_shapes/single_tiny': one shape per image, K = 6

Reading them is `cvjax.segmentation.data` and `cvjax.tasks.localization_data`.
"""
from __future__ import annotations

import tensorflow_datasets as tfds

from cvjax.data import datasets
from cvjax.data import cvjax_shapes as shapes
from cvjax.errors import UserError

SEGMENTATION_DATASETS = ('cvjax_shapes', 'cvjax_shapes/tiny')
# Label sets of imported weights, which restore and predict but do not train here:
# name → class names, background first.
WEIGHTS_ONLY = {
    'voc': ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
            'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person',
            'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor'),
}


def class_names(name: str = 'cvjax_shapes') -> tuple[str, ...]:
  """Class names of segmentation dataset `name` (or of WEIGHTS_ONLY), background first."""
  if name in WEIGHTS_ONLY:
    return WEIGHTS_ONLY[name]
  return ('background',) + tuple(shapes.CLASSES)


def check_segmentation_dataset(name: str) -> None:
  if name not in SEGMENTATION_DATASETS:
    raise UserError(f'the segmentation task trains on {" or ".join(SEGMENTATION_DATASETS)}, '
                    f'got dataset {name!r}; use --dataset=cvjax_shapes')


def generated_builder(name: str, data_dir: str | None = None):
  """The TFDS builder of a generated dataset (`cvjax_shapes/...`), generated offline on
  first use."""
  datasets.tensorflow()  # hides accelerators from TF before its first op
  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare()  # a no-op when prepared; generates offline otherwise
  return builder


def segmentation_meta(name: str, data_dir: str | None = None) -> datasets.DatasetMeta:
  """`cvjax.data.DatasetMeta` of the segmentation view (num_classes = 7, background
  included), generated offline on first use."""
  check_segmentation_dataset(name)
  return _meta(name, data_dir, class_names())


LOCALIZATION_DATASETS = ('cvjax_shapes/single', 'cvjax_shapes/single_tiny')


def check_localization_dataset(name: str) -> None:
  if name not in LOCALIZATION_DATASETS:
    raise UserError(f'the localization task trains on one object per image, '
                    f'{" or ".join(LOCALIZATION_DATASETS)}; got dataset {name!r}: use '
                    f'--dataset=cvjax_shapes/single')


def localization_meta(name: str, data_dir: str | None = None) -> datasets.DatasetMeta:
  """`cvjax.data.DatasetMeta` of the localization view (num_classes = 6 shape classes)."""
  check_localization_dataset(name)
  return _meta(name, data_dir, tuple(shapes.CLASSES))


def _meta(name, data_dir, names) -> datasets.DatasetMeta:
  info = generated_builder(name, data_dir).info
  return datasets.DatasetMeta(name=name, num_classes=len(names),
                              image_shape=tuple(info.features['image'].shape),
                              split_sizes={s: info.splits[s].num_examples for s in info.splits},
                              class_names=names)
