"""tf.data input pipelines delivering global `jax.Array` batches.

Train order. Each process yields `global_batch_size // process_count` examples per
step. Step k of an epoch of `S = steps_per_epoch` steps is in epoch `e = k // S`.
For datasets that fit in memory (all but imagenet2012) every process decodes the
whole split once into RAM; epoch e visits it in the order of a stateless permutation
seeded by (seed, e) (`tf.random.experimental.index_shuffle`) and each process takes
its slice of each global batch, so batch k is computed directly from k (starting at
`start_step` skips nothing and resumes exactly) and the global batches are the same
for any number of processes. For imagenet2012 each process streams only its share
of the split (`tfds.split_for_jax_process`) from disk with file order and a 10,000-example
shuffle buffer both seeded by (seed, e); resuming mid-epoch re-reads (without
decoding) the records before the resume point of that epoch.

Augmentation randomness of an example comes from the stateless seed
[seed, e * 2**32 + position], `position` being the example's index in the global
batch order of its epoch (step_in_epoch * global_batch + process_index *
local_batch + i), so it does not depend on where a run was resumed.

Images reach the model as float32[B, S, S, C]: pixel / 255, the train augmentation
(native size and channels), channel conversion, `fit` to S x S, and per-dataset
`normalize` (see `datasets`). Eval skips the augmentation; `preprocess_for_eval`
applies the same eval ops to a numpy batch.

Each process builds its rows of every global batch as numpy arrays
(`local_train_batches`, `local_eval_batches`); `cvjax.data.batching` turns them
into global jax.Arrays on the caller's sharding.
"""
from __future__ import annotations

import itertools
import math
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cvjax.data import batching
from cvjax.data import datasets
from cvjax.data import prepare
from cvjax.data import preprocess
from cvjax.errors import UserError

_STREAM_SHUFFLE_BUFFER = 10_000
_LUMA = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale weights


def train_batches(name: str, *, global_batch_size: int, image_size: int,
                  sharding: jax.sharding.NamedSharding, seed: int, start_step: int = 0,
                  augment: str | None = None, channels: int | None = None,
                  data_dir=None, raw_data_dir=None, split: str = 'train',
                  preprocessing: str | None = None) -> Iterator[dict[str, jax.Array]]:
  """Infinite iterator of training batches, starting at batch `start_step`.

  Args:
    name: TFDS dataset name (`datasets.DATASETS`).
    global_batch_size: examples per step over all processes.
    image_size: the model's input size S.
    sharding: sharding of the yielded arrays (batch axis over mesh axis 'data').
    seed: data order and augmentation seed.
    start_step: index of the first batch to yield.
    augment: op string (see `preprocess`); None: the dataset's default; '': none.
    channels: the model's input channels, if different from the dataset's.
    data_dir, raw_data_dir: see `prepare.dataset_meta`.
    split: logical split to train on (e.g. 'train_minus_validation').
    preprocessing: the model's input convention instead of the dataset's mean/std
      (`PREPROCESSING`, for imported weights).

  Yields:
    {'image': float32[B, S, S, C], 'label': int32[B]}: global jax.Arrays with `sharding`.
  """
  batching.local_batch_size(global_batch_size, sharding)
  source = local_train_batches(
      name, global_batch_size=global_batch_size, image_size=image_size, seed=seed,
      start_step=start_step, augment=augment, channels=channels, data_dir=data_dir,
      raw_data_dir=raw_data_dir, split=split, preprocessing=preprocessing)
  return batching.DevicePrefetch(source, sharding, global_batch_size)


def eval_batches(name: str, *, split: str = 'test', global_batch_size: int, image_size: int,
                 sharding, channels: int | None = None, data_dir=None,
                 raw_data_dir=None, preprocessing: str | None = None
                 ) -> Iterator[dict[str, jax.Array]]:
  """One deterministic pass over `split`: every example exactly once, in file order.

  Yields {'image': float32[B, S, S, C], 'label': int32[B], 'mask': bool[B]}; the
  last batches are padded with zero images (mask False) to the full global batch,
  so that every process yields the same number of equally shaped batches.
  """
  batching.local_batch_size(global_batch_size, sharding)
  source = local_eval_batches(name, split=split, global_batch_size=global_batch_size,
                              image_size=image_size, channels=channels, data_dir=data_dir,
                              raw_data_dir=raw_data_dir, preprocessing=preprocessing)
  return batching.DevicePrefetch(source, sharding, global_batch_size)


def preprocess_for_eval(images: np.ndarray, *, dataset: str, image_size: int,
                        channels: int | None = None,
                        preprocessing: str | None = None) -> np.ndarray:
  """The eval preprocessing of `eval_batches`, for a numpy batch (e.g. `predict`).

  Args:
    images: uint8[B, H, W, C] with the dataset's channels (or `channels`).
    dataset: whose normalisation and fit to use.
    image_size: the model's input size S.
    channels: the model's input channels; None: those of `images`.
    preprocessing: the model's input convention (`PREPROCESSING`); None: the
      dataset's mean/std.

  Returns:
    float32[B, S, S, channels].
  """
  spec = datasets.spec(dataset)
  datasets.tensorflow()
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise UserError(f'preprocess_for_eval wants uint8[B, H, W, C] images, got '
                    f'{images.dtype}{list(images.shape)}')
  tail = _eval_ops(spec, images.shape[-1], image_size, channels, preprocessing)
  return tail(_to_float(tf.constant(images))).numpy()


# ------------------------------------------------------------------ op strings


def _normalize_stats(spec: datasets.DatasetSpec, channels: int):
  """Dataset mean/std for `channels` output channels (converted from the native ones).

  RGB -> gray uses the luma weights on mean and std (exact for the mean; for the std
  it assumes fully correlated channels). Gray -> RGB repeats the numbers.
  """
  mean, std = spec.mean, spec.std
  if len(mean) == channels:
    return mean, std
  if channels == 1:
    return ((round(float(np.dot(_LUMA, mean)), 4),), (round(float(np.dot(_LUMA, std)), 4),))
  return mean * channels, std * channels


# Input conventions of imported weights (TrainConfig.preprocessing): they replace
# the dataset's normalize. Images arrive in [0, 1], RGB.
PREPROCESSING = {
    'caffe': 'caffe',  # Keras VGG16/19, ResNet50/101/152: BGR, 0-255, minus ImageNet means
    'torch': f'normalize({datasets.IMAGENET_MEAN}, {datasets.IMAGENET_STD})',  # torchvision
    'tf': 'normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))',  # Keras MobileNet*: [-1, 1]
}


def _eval_ops(spec, native_channels: int, image_size: int, channels: int | None,
              preprocessing: str | None = None):
  """Deterministic ops after augmentation: channel conversion, fit, normalise (the
  dataset's mean/std, or the `preprocessing` convention of imported weights)."""
  channels = channels or native_channels
  if channels not in (1, 3) or native_channels not in (1, 3):
    raise UserError(f'channels must be 1 or 3, got {channels} (images have {native_channels})')
  convert = '' if channels == native_channels else ('to_rgb' if channels == 3 else 'to_grayscale')
  mean, std = _normalize_stats(spec, channels)
  normalize = f'normalize({mean}, {std})'
  if preprocessing is not None:
    if preprocessing not in PREPROCESSING:
      raise UserError(f'unknown preprocessing {preprocessing!r}; valid choices: '
                      f'{", ".join(sorted(PREPROCESSING))}')
    if channels != 3:
      raise UserError(f'preprocessing {preprocessing!r} is for RGB models; this one has '
                      f'{channels} input channel(s)')
    normalize = PREPROCESSING[preprocessing]
  ops = [convert, f'fit({image_size}, {spec.crop_fraction})', normalize]
  return preprocess.build('|'.join(o for o in ops if o), image_size=image_size)


def _to_float(images):
  """uint8 -> float32 in [0, 1]."""
  return tf.image.convert_image_dtype(images, tf.float32)


# ------------------------------------------------------------------ train source


def local_train_batches(name: str, *, global_batch_size: int, image_size: int, seed: int,
                        start_step: int = 0, augment: str | None = None,
                        channels: int | None = None, data_dir=None, raw_data_dir=None,
                        split: str = 'train',
                        preprocessing: str | None = None) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of `train_batches`, as numpy arrays (no device transfer)."""
  if start_step < 0:
    raise UserError(f'start_step must be >= 0, got {start_step}')
  spec = datasets.spec(name)
  local = batching.process_share(global_batch_size)
  augment = spec.default_augment if augment is None else augment
  per_example = preprocess.build(augment, image_size=image_size)  # bad ops fail fast
  meta = prepare.dataset_meta(name, data_dir=data_dir, raw_data_dir=raw_data_dir)
  tail = _eval_ops(spec, meta.image_shape[-1], image_size, channels, preprocessing)
  builder = tfds.builder(name, data_dir=data_dir)
  shard = tfds.split_for_jax_process(datasets.tfds_split(name, split))
  steps = datasets.steps_per_epoch(meta, global_batch_size, split)
  context = _TrainContext(seed=seed, local=local, global_batch=global_batch_size,
                          per_example=per_example, tail=tail)
  if spec.in_memory:
    # The whole split, not this process's shard, so that N processes build exactly
    # the global batches one process would (tests/test_launch.py).
    return _in_memory_train(builder, datasets.tfds_split(name, split), steps, start_step,
                            context)
  return _streaming_train(builder, shard, steps, start_step, context)


class _TrainContext:
  """What both train sources need to turn examples into batches."""

  def __init__(self, *, seed, local, global_batch, per_example, tail):
    self.seed, self.local, self.global_batch = seed, local, global_batch
    self.per_example, self.tail = per_example, tail

  def example_seed(self, epoch, position):
    """int64[..., 2] augmentation seed of example `position` of `epoch`."""
    low = tf.cast(epoch, tf.int64) * (2**32) + tf.cast(position, tf.int64)
    return tf.stack([tf.broadcast_to(tf.constant(self.seed, tf.int64), tf.shape(low)), low], -1)

  def position(self, step_in_epoch, offset):
    """Global position in the epoch of this process's example `offset` of a step."""
    return (tf.cast(step_in_epoch, tf.int64) * self.global_batch
            + jax.process_index() * self.local + tf.cast(offset, tf.int64))

  def finish(self, examples: tf.data.Dataset, *, decode=None,
             batch_tail: bool) -> tf.data.Dataset:
    """{'image', 'label', 'seed'} examples -> batches of {'image', 'label'}.

    The deterministic tail runs on whole batches when `batch_tail` (fixed-size
    images), else per example before batching (variable sizes).
    """
    def one(ex):
      image = ex['image'] if decode is None else decode(ex['image'])
      image = self.per_example(_to_float(image), ex['seed'])
      if not batch_tail:
        image = self.tail(image)
      return {'image': image, 'label': ex['label']}
    ds = examples.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(self.local, drop_remainder=True)
    if batch_tail:
      ds = ds.map(lambda b: {'image': self.tail(b['image']), 'label': b['label']},
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _read_into_memory(builder, shard, decode: bool):
  """All examples of `shard`: (uint8[n, H, W, C] or encoded string[n], int32[n])."""
  decoders = None if decode else {'image': tfds.decode.SkipDecoding()}
  ds = builder.as_dataset(split=shard, shuffle_files=False, decoders=decoders,
                          read_config=_read_config())
  ds = ds.map(lambda ex: (ex['image'], tf.cast(ex['label'], tf.int32)),
              num_parallel_calls=tf.data.AUTOTUNE).batch(8192).prefetch(2)
  parts = list(ds.as_numpy_iterator())
  if not parts:
    return np.zeros([0], np.uint8), np.zeros([0], np.int32)
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _in_memory_train(builder, split, steps, start_step, ctx: _TrainContext):
  feature = builder.info.features['image']
  fixed = feature.shape is not None and None not in feature.shape
  images, labels = _read_into_memory(builder, split, decode=fixed)
  n = len(labels)
  steps = min(steps, n // ctx.global_batch)  # equal unless the data disagrees with its metadata
  if steps == 0:
    raise UserError(f'{builder.name} has {n} training examples, fewer than the '
                    f'{ctx.global_batch} per step; use a smaller --batch_size')
  images, labels = tf.constant(images), tf.constant(labels)
  seed, local = ctx.seed, ctx.local

  def step_examples(step):
    epoch, step_in_epoch = step // steps, step % steps
    offset = tf.range(local, dtype=tf.int64)
    # This process's slice of the global batch, at its position in the epoch's order.
    index = tf.random.experimental.index_shuffle(
        ctx.position(step_in_epoch, offset), tf.stack([tf.constant(seed, tf.int64), epoch]),
        tf.constant(n - 1, tf.int64))
    return {'index': index,
            'seed': ctx.example_seed(epoch, ctx.position(step_in_epoch, offset))}

  steps_ds = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
  if fixed:
    # Whole batches: gather, augment each example (tf.map_fn), then the tail at once.
    def batch(step):
      ex = step_examples(step)
      batch_images = _to_float(tf.gather(images, ex['index']))
      if ctx.per_example.ops:
        batch_images = tf.map_fn(lambda a: ctx.per_example(a[0], a[1]),
                                 (batch_images, ex['seed']), fn_output_signature=tf.float32)
      return {'image': ctx.tail(batch_images), 'label': tf.gather(labels, ex['index'])}
    ds = steps_ds.map(batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
  else:
    def example(ex):
      return {'image': tf.gather(images, ex['index']), 'label': tf.gather(labels, ex['index']),
              'seed': ex['seed']}
    examples = steps_ds.map(step_examples).unbatch().map(example)
    ds = ctx.finish(examples, decode=feature.decode_example, batch_tail=False)
  return ds.with_options(_options()).as_numpy_iterator()


def _streaming_train(builder, shard, steps, start_step, ctx: _TrainContext):
  """Epochs streamed from disk; the first one skips records of steps already done."""
  feature = builder.info.features['image']
  per_epoch = steps * ctx.local
  first_epoch, skip = divmod(start_step, steps)

  def epoch_batches(epoch: int, skip_steps: int):
    epoch_seed = batching.epoch_seed(ctx.seed, epoch)
    ds = builder.as_dataset(split=shard, shuffle_files=True,
                            decoders={'image': tfds.decode.SkipDecoding()},
                            read_config=_read_config(shuffle_seed=epoch_seed))
    ds = ds.shuffle(_STREAM_SHUFFLE_BUFFER, seed=epoch_seed, reshuffle_each_iteration=False)
    ds = ds.take(per_epoch).enumerate().skip(skip_steps * ctx.local)

    def label(j, ex):
      position = ctx.position(j // ctx.local, j % ctx.local)
      return {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int32),
              'seed': ctx.example_seed(epoch, position)}
    ds = ctx.finish(ds.map(label), decode=feature.decode_example,
                    batch_tail=None not in feature.shape)
    return ds.with_options(_options()).as_numpy_iterator()

  def generate():
    for epoch in itertools.count(first_epoch):
      yield from epoch_batches(epoch, skip if epoch == first_epoch else 0)
  return generate()


# ------------------------------------------------------------------- eval source


def local_eval_batches(name: str, *, split: str = 'test', global_batch_size: int,
                       image_size: int, channels: int | None = None, data_dir=None,
                       raw_data_dir=None,
                       preprocessing: str | None = None) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of `eval_batches`, as numpy arrays."""
  meta = prepare.dataset_meta(name, data_dir=data_dir, raw_data_dir=raw_data_dir)
  spec = datasets.spec(name)
  local = batching.process_share(global_batch_size)
  tail = _eval_ops(spec, meta.image_shape[-1], image_size, channels, preprocessing)
  builder = tfds.builder(name, data_dir=data_dir)
  logical = datasets.tfds_split(name, split)
  shard = tfds.split_for_jax_process(logical)
  ds = builder.as_dataset(split=shard, shuffle_files=False, read_config=_read_config())

  count_here = int(ds.cardinality())
  if jax.process_count() == 1 and count_here >= 0:
    counts = [count_here]
  else:  # Every process must agree on the number of batches: use the metadata.
    counts = [builder.info.splits[s].num_examples
              for s in tfds.even_splits(logical, n=jax.process_count())]
    count_here = counts[jax.process_index()]
  num_batches = max(1, math.ceil(max(counts) / local))

  def one(ex):
    image = _to_float(ex['image'])
    if not image.shape.is_fully_defined():
      image = tail(image)
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32), 'mask': tf.constant(True)}
  ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  already_fit = not meta.image_shape[0]
  pad = {k: tf.zeros(v.shape, v.dtype) for k, v in ds.element_spec.items()}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(num_batches * local - count_here))
  ds = ds.batch(local, drop_remainder=True)
  if not already_fit:  # Padding rows stay exactly zero (not normalised zeros).
    ds = ds.map(lambda b: {**b, 'image': tf.where(b['mask'][:, None, None, None],
                                                  tail(b['image']), 0.0)},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options()).as_numpy_iterator()


# --------------------------------------------------------------------- plumbing


def _read_config(shuffle_seed=None):
  return tfds.ReadConfig(shuffle_seed=shuffle_seed, options=_options())


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options
