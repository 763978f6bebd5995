"""Detection datasets: TFDS voc/coco/cvjax_shapes → padded, fixed-shape global batches.

    meta = dataset_meta('voc/07+12')                # 20 classes, split sizes
    it = train_batches('voc/07+12', global_batch_size=32, image_size=300,
                       sharding=sharding, seed=0, start_step=step)
    batch = next(it)

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

Reading TFDS examples. Boxes are re-ordered (min/max of each coordinate pair) and
clipped to [0, 1], degenerate ones masked out; when the `objects` fields disagree
in length (`tfds.testing.mock_data` gives each its own random length) all are cut
to the shortest; more than M objects are cut to M. Training drops COCO crowd
boxes (torchvision does) and keeps VOC difficult ones (Caffe SSD does);
evaluation keeps both, flagged.

Order and resumption, as in `cvjax.data.pipeline`: batch k is a pure function of
(seed, k). cvjax_shapes is read into memory once (encoded JPEGs) and epoch e is
a stateless permutation seeded by (seed, e); VOC and COCO are streamed, file
order and a shuffle buffer seeded by (seed, e), and a resumed run re-reads (and
decodes) the examples of its epoch before the resume point. Augmentation of an
example is seeded by (seed, epoch, position in the epoch). Each process builds
its rows of every batch with tf.data; `cvjax.data.batching` makes the global
jax.Arrays.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cvjax.data import batching
from cvjax.data import datasets
from cvjax.data import download as download_lib
from cvjax.data import local_files
from cvjax.data import shapes  # noqa: F401  (registers the cvjax_shapes builder)
from cvjax.detection import augment as aug
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

AUGMENT_OPS = ('photometric', 'zoom_out', 'iou_crop', 'flip')


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


def parse_augment(augment: str | None) -> dict[str, bool]:
  """The SSD augmentation steps an `augment` string turns on.

  None or 'ssd': all of `AUGMENT_OPS`; '' or 'none': none (resize only); else
  '|'-separated names from `AUGMENT_OPS`, e.g. 'iou_crop|flip'.
  """
  if augment is None or augment.strip() == 'ssd':
    return {op: True for op in AUGMENT_OPS}
  names = [s.strip() for s in augment.split('|') if s.strip() and s.strip() != 'none']
  for n in names:
    if n not in AUGMENT_OPS:
      raise unknown_choice('detection augmentation', n, AUGMENT_OPS + ('ssd', 'none'))
  return {op: op in names for op in AUGMENT_OPS}


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


def _image(example):
  image = example['image']
  if image.shape.rank == 3 and image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  return tf.image.convert_image_dtype(image, tf.float32)


def _unused_decoders(builder, skip_image: bool = False):
  """TFDS decoders that skip decoding what detection never reads (cvjax_shapes' masks).
  None when there is nothing to skip (tfds.testing.mock_data rejects decoders)."""
  keys = [k for k in ('instances', 'segmentation') if k in builder.info.features]
  if skip_image:
    keys.append('image')
  return {k: tfds.decode.SkipDecoding() for k in keys} or None


def load_split(name: str, split: str, *, data_dir=None, shard_for_process: bool = True,
               drop_crowd: bool = False):
  """tf.data of parsed, decoded examples of logical `split` (file order):
  {'image' uint8[H, W, 3], 'image_size' int32[2], + `parse`'s fields}."""
  datasets.tensorflow()
  s = spec(name)
  out = None
  for tfds_name, expr in parts(name, split):
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if shard_for_process:
      expr = tfds.split_for_jax_process(expr)
    ds = builder.as_dataset(split=expr, shuffle_files=False, read_config=_read_config(),
                            decoders=_unused_decoders(builder))
    out = ds if out is None else out.concatenate(ds)

  def one(ex):
    return {'image': ex['image'], 'image_size': tf.shape(ex['image'])[:2],
            **parse(ex, s.max_boxes, drop_crowd=drop_crowd)}
  return out.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ----------------------------------------------------------------- train source


def train_batches(name: str, *, global_batch_size: int, image_size: int, sharding,
                  seed: int, start_step: int = 0, augment: str | None = None,
                  data_dir=None, raw_data_dir=None,
                  split: str = 'train') -> Iterator[dict[str, jax.Array]]:
  """Infinite iterator of augmented training batches from batch `start_step` on,
  as global jax.Arrays with `sharding` (see module doc for the fields)."""
  batching.local_batch_size(global_batch_size, sharding)
  source = local_train_batches(name, global_batch_size=global_batch_size,
                               image_size=image_size, seed=seed, start_step=start_step,
                               augment=augment, data_dir=data_dir,
                               raw_data_dir=raw_data_dir, split=split)
  return batching.DevicePrefetch(source, sharding, global_batch_size)


def local_train_batches(name: str, *, global_batch_size: int, image_size: int, seed: int,
                        start_step: int = 0, augment: str | None = None, data_dir=None,
                        raw_data_dir=None, split: str = 'train') -> Iterator[dict]:
  """This process's share of `train_batches`, as numpy arrays."""
  datasets.tensorflow()
  if start_step < 0:
    raise UserError(f'start_step must be >= 0, got {start_step}')
  s = spec(name)
  steps_on = parse_augment(augment)
  meta = dataset_meta(name, data_dir=data_dir, raw_data_dir=raw_data_dir)
  local = batching.process_share(global_batch_size)
  steps = datasets.steps_per_epoch(meta, global_batch_size, split)

  def example_seed(epoch, position):
    """int64[..., 2] augmentation seed of the example at `position` of `epoch`."""
    low = tf.cast(epoch, tf.int64) * 2**32 + tf.cast(position, tf.int64)
    return tf.stack([tf.fill(tf.shape(low), tf.constant(seed, tf.int64)), low], -1)

  def position(step_in_epoch, offset):
    return (tf.cast(step_in_epoch, tf.int64) * global_batch_size
            + jax.process_index() * local + tf.cast(offset, tf.int64))

  def finish(ex):
    image, boxes, mask = aug.ssd_augment(
        _image(ex), ex['boxes'], ex['box_mask'], ex['seed'], size=image_size,
        photometric_distort=steps_on['photometric'], zoom_out=steps_on['zoom_out'],
        crop=steps_on['iou_crop'], flip=steps_on['flip'])
    out = compact({'boxes': boxes, 'labels': ex['labels'], 'box_mask': mask},
                  keys=('boxes', 'labels', 'box_mask'))
    return {'image': image, **out}

  def batches(examples):
    ds = examples.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options()).as_numpy_iterator()

  if s.in_memory:
    return batches(_in_memory_examples(name, split, data_dir, global_batch_size, steps,
                                       start_step, seed, local, example_seed, position))
  first_epoch, skip = divmod(start_step, steps)

  def generate():
    for epoch in itertools.count(first_epoch):
      yield from batches(_streamed_epoch(name, split, data_dir, local, steps, epoch,
                                         skip if epoch == first_epoch else 0, seed,
                                         example_seed, position))
  return generate()


def _read_encoded(name: str, split: str, data_dir) -> dict[str, np.ndarray]:
  """The whole of `split`, images still encoded: {'image' bytes[n], 'boxes', 'labels',
  'box_mask' ([n, M, ...])} (training: crowd boxes dropped)."""
  s = spec(name)
  arrays = []
  for tfds_name, expr in parts(name, split):
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    ds = builder.as_dataset(split=expr, shuffle_files=False, read_config=_read_config(),
                            decoders=_unused_decoders(builder, skip_image=True))

    def one(ex):
      p = parse(ex, s.max_boxes, drop_crowd=True)
      return {'image': ex['image'], 'boxes': p['boxes'], 'labels': p['labels'],
              'box_mask': p['box_mask']}
    for part in ds.map(one, num_parallel_calls=tf.data.AUTOTUNE).batch(4096).as_numpy_iterator():
      arrays.append(part)
  return {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}


def _in_memory_examples(name, split, data_dir, global_batch, steps, start_step, seed, local,
                        example_seed, position):
  """Examples of step k ≥ start_step: epoch e = k // steps visits the whole split (every
  process holds it) in a stateless permutation seeded by (seed, e)."""
  data = _read_encoded(name, split, data_dir)
  n = len(data['image'])
  steps = min(steps, n // global_batch)
  tensors = {k: tf.constant(v) for k, v in data.items()}
  tfds_name = parts(name, split)[0][0]
  decode = tfds.builder(tfds_name, data_dir=data_dir).info.features['image'].decode_example

  def step_examples(step):
    epoch, step_in_epoch = step // steps, step % steps
    offset = tf.range(local, dtype=tf.int64)
    where = position(step_in_epoch, offset)
    index = tf.random.experimental.index_shuffle(
        where, tf.stack([tf.constant(seed, tf.int64), epoch]), tf.constant(n - 1, tf.int64))
    return {'index': index, 'seed': example_seed(epoch, where)}

  def example(ex):
    row = {k: tf.gather(v, ex['index']) for k, v in tensors.items()}
    row['image'] = decode(row['image'])
    row['seed'] = ex['seed']
    return row

  steps_ds = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
  return steps_ds.map(step_examples).unbatch().map(
      example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _streamed_epoch(name, split, data_dir, local, steps, epoch: int, skip_steps: int, seed,
                   example_seed, position):
  """Epoch `epoch` of a streamed split: this process's share of each TFDS part, file
  order and a shuffle buffer seeded by (seed, epoch), parts interleaved at random in
  proportion to their sizes; the examples of the first `skip_steps` steps skipped."""
  s = spec(name)
  epoch_seed = batching.epoch_seed(seed, epoch)
  sources, sizes = [], []
  for tfds_name, expr in parts(name, split):
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    ds = builder.as_dataset(split=tfds.split_for_jax_process(expr), shuffle_files=True,
                            read_config=_read_config(shuffle_seed=epoch_seed),
                            decoders=_unused_decoders(builder))
    sources.append(ds.shuffle(_STREAM_SHUFFLE_BUFFER, seed=epoch_seed,
                              reshuffle_each_iteration=False))
    sizes.append(builder.info.splits[expr].num_examples)
  ds = sources[0] if len(sources) == 1 else tf.data.Dataset.sample_from_datasets(
      sources, weights=[z / sum(sizes) for z in sizes], seed=epoch_seed)
  ds = ds.take(steps * local).enumerate().skip(skip_steps * local)

  def one(j, ex):
    p = parse(ex, s.max_boxes, drop_crowd=True)
    return {'image': ex['image'], 'boxes': p['boxes'], 'labels': p['labels'],
            'box_mask': p['box_mask'],
            'seed': example_seed(epoch, position(j // local, j % local))}
  return ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# --------------------------------------------------------------------- eval source


def eval_batches(name: str, *, split: str = 'test', global_batch_size: int, image_size: int,
                 sharding, data_dir=None, raw_data_dir=None) -> Iterator[dict[str, jax.Array]]:
  """One pass over `split` in file order, every example exactly once, resized to S×S
  (no augmentation), the last batch padded with mask False."""
  batching.local_batch_size(global_batch_size, sharding)
  source = local_eval_batches(name, split=split, global_batch_size=global_batch_size,
                              image_size=image_size, data_dir=data_dir,
                              raw_data_dir=raw_data_dir)
  return batching.DevicePrefetch(source, sharding, global_batch_size)


def local_eval_batches(name: str, *, split: str = 'test', global_batch_size: int,
                       image_size: int, data_dir=None, raw_data_dir=None) -> Iterator[dict]:
  """This process's share of `eval_batches`, as numpy arrays."""
  datasets.tensorflow()
  dataset_meta(name, data_dir=data_dir, raw_data_dir=raw_data_dir)
  local = batching.process_share(global_batch_size)
  ds = load_split(name, split, data_dir=data_dir)
  counts = [0] * jax.process_count()
  for tfds_name, expr in parts(name, split):
    info = tfds.builder(tfds_name, data_dir=data_dir).info
    for i, sub in enumerate(tfds.even_splits(expr, n=jax.process_count())):
      counts[i] += info.splits[sub].num_examples
  count_here = counts[jax.process_index()]
  num_batches = max(1, math.ceil(max(counts) / local))

  def one(ex):
    out = compact({k: ex[k] for k in ('boxes', 'labels', 'box_mask', 'difficult', 'crowd')})
    return {'image': aug.resize(_image(ex), image_size), 'image_size': ex['image_size'],
            **out, 'mask': tf.constant(True)}
  ds = ds.take(count_here).map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  pad = {k: tf.zeros(v.shape, v.dtype) for k, v in ds.element_spec.items()}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(num_batches * local - count_here))
  ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options()).as_numpy_iterator()


def _read_config(shuffle_seed=None):
  return tfds.ReadConfig(shuffle_seed=shuffle_seed, options=_options())


def _options():
  options = tf.data.Options()
  options.deterministic = True
  return options
