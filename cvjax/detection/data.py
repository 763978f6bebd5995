"""Detection datasets: TFDS voc/coco/cvjax_shapes as a `cvjax.data.pipeline.DataSpec`.

Datasets, their splits and preparation: `cvjax.data.detection_datasets` (re-exported here).

Batches (B = global batch, M = the dataset's `max_boxes`, S = image_size):
  image      f32[B, S, S, 3] in [0, 1] (the SSD models normalise internally)
  boxes      f32[B, M, 4] (ymin, xmin, ymax, xmax) normalised, real ones first
  labels     int32[B, M] object classes 0..K-1
  box_mask   bool[B, M] real boxes
  eval only: difficult bool[B, M] (VOC), crowd bool[B, M] (COCO iscrowd),
             image_size int32[B, 2] original (height, width) in pixels,
             mask bool[B] (False for the padding examples of the last batch).

Reading TFDS examples (`parse`). Boxes are re-ordered (min/max of each coordinate pair)
and clipped to [0, 1], degenerate ones masked out; when the `objects` fields disagree
in length (`tfds.testing.mock_data` gives each its own random length) all are cut
to the shortest; more than M objects are cut to M. Training drops COCO crowd
boxes (torchvision does) and keeps VOC difficult ones (Caffe SSD does);
evaluation keeps both, flagged. The default augmentation is SSD's
(`cvjax.data.preprocess.PRESETS['ssd']`); eval resizes to S×S, bilinear without
antialiasing, as torchvision's SSD transform. Images are held encoded (cvjax_shapes
in memory; VOC and COCO streamed).
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_datasets as tfds

from cvjax.data import datasets
from cvjax.data import pipeline
from cvjax.data.detection_datasets import (DATASETS, SPECS, dataset_meta,  # noqa: F401
                                           is_detection_dataset, parts, spec)

# ----------------------------------------------------------------------- parsing


def parse(example: dict, max_boxes: int, *, drop_crowd: bool = False) -> dict:
  """A TFDS detection example → fixed-shape fields (tf, one example).

  Returns {'boxes' f32[M, 4], 'labels' int32[M], 'box_mask' bool[M],
  'difficult' bool[M], 'crowd' bool[M]} with M = max_boxes (see module doc for the
  clean-up). `drop_crowd` masks out crowd boxes.
  """
  datasets.tensorflow()
  objects = example['objects']
  n = tf.shape(objects['bbox'])[0]
  for value in objects.values():  # every field: the common length
    n = tf.minimum(n, tf.shape(value)[0])
  n = tf.minimum(n, max_boxes)

  def take(key, dtype, default=False):
    if key not in objects:
      return tf.zeros([max_boxes], dtype)
    value = tf.cast(objects[key][:n], dtype)
    return tf.pad(value, [[0, max_boxes - n]])

  raw = tf.reshape(tf.cast(objects['bbox'][:n], tf.float32), [-1, 4])
  y0, y1 = tf.minimum(raw[:, 0], raw[:, 2]), tf.maximum(raw[:, 0], raw[:, 2])
  x0, x1 = tf.minimum(raw[:, 1], raw[:, 3]), tf.maximum(raw[:, 1], raw[:, 3])
  boxes = tf.clip_by_value(tf.stack([y0, x0, y1, x1], -1), 0.0, 1.0)
  boxes = tf.pad(boxes, [[0, max_boxes - n], [0, 0]])
  mask = ((tf.range(max_boxes) < n) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
  crowd = take('is_crowd', tf.bool)
  if drop_crowd:
    mask &= ~crowd
  return {'boxes': boxes, 'labels': take('label', tf.int32), 'box_mask': mask,
          'difficult': take('is_difficult', tf.bool), 'crowd': crowd}


def compact(example: dict, keys=('boxes', 'labels', 'box_mask', 'difficult', 'crowd')) -> dict:
  """Moves the masked-in boxes (and their fields) to the front, keeping their order;
  padding rows become zero."""
  datasets.tensorflow()
  mask = example['box_mask']
  order = tf.argsort(tf.cast(~mask, tf.int32), stable=True)
  out = dict(example)
  keep = tf.gather(mask, order)
  for k in keys:
    if k in example:
      value = tf.gather(example[k], order)
      shaped = tf.reshape(keep, [-1] + [1] * (len(value.shape) - 1))
      out[k] = tf.where(shaped, value, tf.zeros_like(value))
  return out


def _unused_decoders(builder):
  """TFDS decoders that skip decoding what detection never reads (cvjax_shapes' masks).
  None when there is nothing to skip (tfds.testing.mock_data rejects decoders)."""
  keys = [k for k in ('instances', 'segmentation') if k in builder.info.features]
  return {k: tfds.decode.SkipDecoding() for k in keys} or None


def data_spec(name: str, *, image_size: int, data_dir=None) -> pipeline.DataSpec:
  """The `DataSpec` of detection dataset `name` (prepared) at input size S = image_size."""
  s = spec(name)

  def read(ex, train):
    fields = parse(ex, s.max_boxes, drop_crowd=train)
    if train:
      return {'image': ex['image'], **{k: fields[k] for k in ('boxes', 'labels', 'box_mask')}}
    return {'image': ex['image'], 'image_size': tf.shape(ex['image'])[:2], **fields}

  train_keys = ('image', 'boxes', 'labels', 'box_mask')
  return pipeline.DataSpec(
      parts=s.parts, read=read, tail=f'resize({image_size}, antialias=False)',
      last=compact, train_keys=train_keys,
      eval_keys=train_keys + ('difficult', 'crowd', 'image_size'), default_augment='ssd',
      in_memory=s.in_memory, encoded=True, image_size=image_size,
      decoders=_unused_decoders(tfds.builder(s.parts['train'][0][0], data_dir=data_dir)))


def load_split(name: str, split: str, *, data_dir=None):
  """tf.data of parsed, decoded examples of logical `split` (file order, every
  process): {'image' uint8[H, W, 3], 'image_size' int32[2], + `parse`'s fields}."""
  datasets.tensorflow()
  read = data_spec(name, image_size=1, data_dir=data_dir).read
  out = None
  for tfds_name, expr in parts(name, split):
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    ds = builder.as_dataset(split=expr, shuffle_files=False, decoders=_unused_decoders(builder))
    out = ds if out is None else out.concatenate(ds)
  return out.map(lambda ex: read(ex, False), num_parallel_calls=tf.data.AUTOTUNE,
                 deterministic=True)
