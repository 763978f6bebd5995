"""Detection datasets: TFDS voc/coco/cvjax_shapes as a `cvjax.data.pipeline.DataSpec`.

Datasets (logical splits → TFDS splits):
  voc/2007      train: voc/2007 train+validation (trainval), validation, test
  voc/2012      train: voc/2012 train, validation and test: voc/2012 validation (the
                TFDS test split has no boxes)
  voc/07+12     the paper's: train = voc/2007 trainval + voc/2012 trainval (16,551
                images), test = voc/2007 test (4,952); validation = voc/2007 validation
  coco/2017     train, validation; test = validation (test-dev has no boxes)
  cvjax_shapes  train, validation, test (and cvjax_shapes/tiny for tests)

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

import dataclasses
import functools
import os

import tensorflow as tf
import tensorflow_datasets as tfds

from cvjax.data import datasets
from cvjax.data import download as download_lib
from cvjax.data import local_files
from cvjax.data import pipeline
from cvjax.data import shapes  # noqa: F401  (registers the cvjax_shapes builder)
from cvjax.errors import UserError, unknown_choice

_STREAM_SHUFFLE_BUFFER = 2048   # encoded VOC/COCO images: ~100-200 KB each


@dataclasses.dataclass(frozen=True)
class DetectionDataSpec:
  """parts: logical split → ((TFDS name, TFDS split), ...) read one after the other.
  max_boxes: M, the padded number of boxes per image (more are cut).
  voc_metric: how `map50` is computed: 'voc07' (11-point) or 'voc12' (area).
  in_memory: the train split is held in RAM (encoded), else streamed.
  raw_files: basenames of the original archives, for --raw_data_dir."""
  parts: dict[str, tuple[tuple[str, str], ...]]
  max_boxes: int
  voc_metric: str = 'voc12'
  in_memory: bool = False
  raw_files: tuple[str, ...] = ()


def _voc07(split):
  return (('voc/2007', split),)


_VOC07_RAW = ('VOCtrainval_06-Nov-2007.tar', 'VOCtest_06-Nov-2007.tar')
_VOC12_RAW = ('VOCtrainval_11-May-2012.tar',)
_SHAPES_SPLITS = lambda name: {s: ((name, s),) for s in ('train', 'validation', 'test')}

SPECS: dict[str, DetectionDataSpec] = {
    'voc/2007': DetectionDataSpec(
        {'train': _voc07('train+validation'), 'validation': _voc07('validation'),
         'test': _voc07('test')}, max_boxes=64, voc_metric='voc07', raw_files=_VOC07_RAW),
    'voc/2012': DetectionDataSpec(
        {'train': (('voc/2012', 'train'),), 'validation': (('voc/2012', 'validation'),),
         'test': (('voc/2012', 'validation'),)}, max_boxes=64, raw_files=_VOC12_RAW),
    'voc/07+12': DetectionDataSpec(
        {'train': (('voc/2007', 'train+validation'), ('voc/2012', 'train+validation')),
         'validation': _voc07('validation'), 'test': _voc07('test')},
        max_boxes=64, voc_metric='voc07', raw_files=_VOC07_RAW + _VOC12_RAW),
    'coco/2017': DetectionDataSpec(
        {'train': (('coco/2017', 'train'),), 'validation': (('coco/2017', 'validation'),),
         'test': (('coco/2017', 'validation'),)}, max_boxes=100,
        raw_files=('train2017.zip', 'val2017.zip', 'test2017.zip',
                   'annotations_trainval2017.zip', 'image_info_test2017.zip')),
    'cvjax_shapes': DetectionDataSpec(_SHAPES_SPLITS('cvjax_shapes'), max_boxes=16,
                                      in_memory=True),
    'cvjax_shapes/tiny': DetectionDataSpec(_SHAPES_SPLITS('cvjax_shapes/tiny'), max_boxes=16,
                                           in_memory=True),
}
DATASETS = tuple(sorted(SPECS))

def is_detection_dataset(name: str) -> bool:
  return name in SPECS


def spec(name: str) -> DetectionDataSpec:
  if name not in SPECS:
    raise unknown_choice('detection dataset', name, SPECS)
  return SPECS[name]


def parts(name: str, split: str) -> tuple[tuple[str, str], ...]:
  splits = spec(name).parts
  if split not in splits:
    raise unknown_choice(f'split of {name}', split, splits)
  return splits[split]


# --------------------------------------------------------------------- preparing


@functools.lru_cache(maxsize=None)
def _prepared(tfds_name: str, data_dir, raw_data_dir, download):
  """A builder of `tfds_name` whose data is prepared in `data_dir` (see dataset_meta)."""
  datasets.tensorflow()
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  root = os.fspath(builder.data_dir_root)
  if tfds_name.startswith('cvjax_shapes'):  # generated, no network
    builder.download_and_prepare()
    return builder
  if raw_data_dir is not None:
    local_files.build_from_local_files(tfds_name, raw_data_dir, data_dir=data_dir)
    return tfds.builder(tfds_name, data_dir=data_dir)
  hosts = download_lib.download_hosts(tfds.builder_cls(tfds_name.split('/')[0]))
  why = None
  if download is False:
    why = 'download is disabled'
  elif download is None and any(not download_lib.reachable(h, p) for h, p in hosts.items()):
    why = f'{", ".join(hosts)} cannot be reached'
  if why is None:
    try:
      builder.download_and_prepare()
      return builder
    except Exception as e:  # pylint: disable=broad-except
      why = f'the TFDS download failed ({type(e).__name__})'
  raise UserError(
      f'dataset {tfds_name!r} is not prepared in {root} and {why}; prepare it where the '
      f'internet can be reached with `tfds build {tfds_name} --data_dir=DIR` and copy '
      f'DIR/{tfds_name.split("/")[0]} to {root}/, or pass --raw_data_dir=DIR with its '
      f'original archives in DIR')


def dataset_meta(name: str, *, data_dir=None, raw_data_dir=None, download=None):
  """Prepares detection dataset `name` (every TFDS dataset it reads) and returns a
  `cvjax.data.DatasetMeta`: num_classes (object classes, no background),
  class_names, split_sizes (logical splits), image_shape (None, None, 3).

  Not prepared: cvjax_shapes is generated (offline); VOC/COCO are built
  from `raw_data_dir` when given (the original archives, `spec(name).raw_files`),
  else downloaded by TFDS when its hosts answer (`download`: None probe first,
  True just try, False never), else a `UserError` says how to get them.
  """
  s = spec(name)
  names = sorted({t for p in s.parts.values() for t, _ in p})
  builders = {t: _prepared(t, data_dir, raw_data_dir, download) for t in names}
  label = builders[names[0]].info.features['objects']['label']
  sizes = {}
  for split, part in s.parts.items():
    try:
      sizes[split] = sum(builders[t].info.splits[expr].num_examples for t, expr in part)
    except (KeyError, ValueError):
      pass
  return datasets.DatasetMeta(name=name, num_classes=label.num_classes,
                              image_shape=(None, None, 3), split_sizes=sizes,
                              class_names=tuple(label.names))


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
