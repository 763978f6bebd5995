"""The classification + localisation view of `cvjax_shapes`: one class and one box per image.

`cvjax_shapes/single` (built by `cvjax.data.cvjax_shapes`, no network needed) has
exactly one shape per image; its label and visible extent become the targets:

  names:   'cvjax_shapes/single' (96², 4,000 train / 500 validation / 500 test) and
           'cvjax_shapes/single_tiny' (64², 48 / 16 / 16, for tests)
  classes: circle, square, triangle, star, cross, ring (K = 6)
  batches: {'image': float32[B, S, S, 3], 'label': int32[B],
            'box': float32[B, 4] (ymin, xmin, ymax, xmax) normalised}
           (+ 'mask': bool[B] in eval: False for padding examples)

Labels and boxes are read with `cvjax.detection.data.parse`; images are read as
the segmentation view reads them (`cvjax.segmentation.data.read_resized`), then
augmented (default 'flip_lr'; geometric ops move the box with the pixels) and
normalised with the ImageNet mean/std.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_datasets as tfds

from cvjax.data import pipeline
from cvjax.data.shapes_views import (LOCALIZATION_DATASETS as DATASETS,  # noqa: F401
                                     check_localization_dataset as check_dataset,
                                     localization_meta as dataset_meta)
from cvjax.detection import data as detection_data
from cvjax.segmentation import data as segmentation_data

def data_spec(name: str, *, image_size: int) -> pipeline.DataSpec:
  """The `DataSpec` of `name` at input size S = image_size. Reading an example that
  does not hold exactly one object fails (tf.errors.InvalidArgumentError)."""
  check_dataset(name)

  def read(ex, train):
    del train
    target = detection_data.parse(ex, max_boxes=2)
    count = tf.reduce_sum(tf.cast(target['box_mask'], tf.int32))
    with tf.control_dependencies([tf.debugging.assert_equal(
        count, 1, message=f'the localization task needs exactly one object per {name} image')]):
      label = tf.identity(target['labels'][0])
    return {'image': segmentation_data.read_resized(ex['image'], image_size), 'label': label,
            'boxes': target['boxes'][:1], 'box_mask': target['box_mask'][:1]}

  def last(ex):
    return {'image': ex['image'], 'label': ex['label'], 'box': ex['boxes'][..., 0, :]}
  return pipeline.DataSpec(
      parts={s: ((name, s),) for s in ('train', 'validation', 'test')}, read=read,
      tail=segmentation_data.IMAGENET_NORMALIZE, last=last,
      train_keys=('image', 'label', 'box'), eval_keys=('image', 'label', 'box'),
      default_augment='flip_lr', image_size=image_size,
      decoders={k: tfds.decode.SkipDecoding() for k in ('instances', 'segmentation')})

