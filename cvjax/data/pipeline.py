"""The one tf.data input pipeline, for every task: TFDS → example dicts → global batches.

A task says only what differs in a small `DataSpec` (where its splits are, how a TFDS
example becomes its example dict, the ops that bring an example to the model's input,
its default augmentation, the keys of its batches). Everything else is here: read →
decode → the augmentation ops of `cvjax.data.preprocess` → tail → batch → pad the last
eval batch → `cvjax.data.batching.DevicePrefetch` (global jax.Arrays).

Train order. Each process yields `B / P` examples per step. Step k of an epoch of `S`
steps is in epoch `e = k // S`. A split held in memory (`in_memory`) is read once per
process, whole; epoch e visits it in a stateless permutation seeded by (seed, e)
(`tf.random.experimental.index_shuffle`) and each process takes its slice of each global
batch, so batch k is a pure function of k: a resumed run sees the same batches, for any
number of processes. Otherwise each process streams its share of the split with file
order and a shuffle buffer seeded by (seed, e); resuming mid-epoch re-reads the records
before the resume point. Augmentation randomness of an example comes from the stateless
seed [seed, e · 2³² + position in the epoch's global order], whatever the resume point.

Eval: every example of a split once, in file order; the last batches are padded with
zero examples ('mask' False) so that every process yields equally many batches.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable, Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cvjax.data import batching
from cvjax.data import preprocess
from cvjax.errors import UserError, unknown_choice

STREAM_SHUFFLE_BUFFER = 4096
READ_BATCH_BYTES = 64 << 20  # at most this much per batch read into memory


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What one task's input pipeline reads and yields.

  Attributes:
    parts: logical split → ((TFDS name, TFDS split expression), ...), read in order.
    read: (TFDS example, train: bool) → example dict: 'image' uint8[H, W, C] and the
      task's targets, all but the image fixed-shaped (`preprocess` lists the keys).
    tail: deterministic op string after the augmentation (channel conversion, fit or
      resize to the input size S, normalisation); must give every example one shape.
    last: example → example after the tail (e.g. boxes compacted); it gets a batch
      (a leading axis) when there is no augmentation and images are not `encoded`.
    train_keys, eval_keys: the keys of the yielded batches ('mask' is added in eval).
    default_augment: the op string used when a run gives none (None).
    in_memory: hold the train split in RAM (exact shuffle, O(1) resume) or stream it.
    encoded: hold images in memory encoded (decoded at each step) rather than decoded:
      for large or variable-size images; `read` must then leave 'image' untouched.
    decoders: TFDS decoders, e.g. to skip features the task never reads.
    image_size: S, the default of ops' `size` parameters.
    repeat: in-memory train splits only: each stored example is visited this many times
      per epoch, each time with its own augmentation seed (e.g. many random patches of
      one photograph); the split's size in `DatasetMeta` counts the visits.
  """
  parts: dict[str, tuple[tuple[str, str], ...]]
  read: Callable[[dict, bool], dict]
  tail: str
  train_keys: tuple[str, ...]
  eval_keys: tuple[str, ...]
  default_augment: str = ''
  last: Callable[[dict], dict] | None = None
  in_memory: bool = True
  encoded: bool = False
  decoders: dict | None = None
  image_size: int | None = None
  repeat: int = 1

  def split(self, split: str) -> tuple[tuple[str, str], ...]:
    if split not in self.parts:
      raise unknown_choice('split', split, self.parts)
    return self.parts[split]

  def augmentation(self, augment: str | None) -> preprocess.Chain:
    return preprocess.build(self.default_augment if augment is None else augment,
                            image_size=self.image_size)

  def finish(self, ex: dict, seed=None, *, augment=None, tail=None, decode=None) -> dict:
    """One example, decoded, to float, augmented (with `seed`) and through the tail, as
    one chain: a view the augmentation leaves pending is sampled once, by the tail."""
    image = ex['image'] if decode is None else decode(ex['image'])
    ex = {**ex, 'image': tf.image.convert_image_dtype(image, tf.float32)}
    ops = [*(augment.ops if augment is not None else ()), *(tail.ops if tail is not None else ())]
    ex = preprocess.Chain(ops)(ex, seed) if ops else ex
    return self.last(ex) if self.last is not None else ex


def train_batches(spec: DataSpec, *, global_batch_size: int, sharding, seed: int,
                  start_step: int = 0, augment: str | None = None, split: str = 'train',
                  data_dir=None, num_examples: int) -> Iterator[dict[str, jax.Array]]:
  """Infinite iterator of training batches from batch `start_step` on: global
  jax.Arrays with `sharding`, keys `spec.train_keys`. `num_examples`: the split's size
  (all processes)."""
  batching.local_batch_size(global_batch_size, sharding)
  source = local_train_batches(spec, global_batch_size=global_batch_size, seed=seed,
                               start_step=start_step, augment=augment, split=split,
                               data_dir=data_dir, num_examples=num_examples)
  return batching.DevicePrefetch(source, sharding, global_batch_size)


def eval_batches(spec: DataSpec, *, split: str, global_batch_size: int, sharding,
                 data_dir=None) -> Iterator[dict[str, jax.Array]]:
  """One deterministic pass over `split`, every example once, keys `spec.eval_keys`
  and 'mask' bool[B] (False on the padding)."""
  batching.local_batch_size(global_batch_size, sharding)
  source = local_eval_batches(spec, split=split, global_batch_size=global_batch_size,
                              data_dir=data_dir)
  return batching.DevicePrefetch(source, sharding, global_batch_size)


# ------------------------------------------------------------------ train source


class _Order:
  """Where an example sits in the global order of its epoch, and its augmentation seed."""

  def __init__(self, seed: int, global_batch: int, local: int):
    self.seed, self.global_batch, self.local = seed, global_batch, local

  def position(self, step_in_epoch, offset):
    return (tf.cast(step_in_epoch, tf.int64) * self.global_batch
            + jax.process_index() * self.local + tf.cast(offset, tf.int64))

  def example_seed(self, epoch, position):
    """int64[..., 2] augmentation seed of example `position` of `epoch`."""
    low = tf.cast(epoch, tf.int64) * (2**32) + tf.cast(position, tf.int64)
    return tf.stack([tf.fill(tf.shape(low), tf.constant(self.seed, tf.int64)), low], -1)


def local_train_batches(spec: DataSpec, *, global_batch_size: int, seed: int,
                        start_step: int = 0, augment: str | None = None,
                        split: str = 'train', data_dir=None,
                        num_examples: int) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of `train_batches`, as numpy arrays (no device transfer)."""
  if start_step < 0:
    raise UserError(f'start_step must be >= 0, got {start_step}')
  local = batching.process_share(global_batch_size)
  chain = spec.augmentation(augment)  # a bad op fails before any data is read
  tail = preprocess.build(spec.tail, image_size=spec.image_size)
  parts = spec.split(split)
  held_encoded = spec.encoded and spec.in_memory  # streamed images are decoded when read
  decode = (tfds.builder(parts[0][0], data_dir=data_dir).info.features['image'].decode_example
            if held_encoded else None)
  order = _Order(seed, global_batch_size, local)
  keys = spec.train_keys

  def one(ex, example_seed):
    out = spec.finish(ex, example_seed, augment=chain, tail=tail, decode=decode)
    return {k: out[k] for k in keys}

  rows = _read_into_memory(spec, parts, data_dir) if spec.in_memory else None
  n = len(rows['image']) * spec.repeat if rows is not None else num_examples
  steps = min(num_examples, n) // global_batch_size
  if steps == 0:
    raise UserError(f'{parts[0][0]} has {n} {split} examples, fewer than the '
                    f'{global_batch_size} per step; use a smaller --batch_size')
  if rows is None:
    return _streamed_train(spec, parts, data_dir, steps, start_step, order, one)
  ds = _in_memory_train(rows, n, steps, start_step, order, one, tail=tail, keys=keys, spec=spec,
                        batched=not (chain.ops or spec.encoded))
  return ds.with_options(_options()).as_numpy_iterator()


def _read_into_memory(spec: DataSpec, parts, data_dir) -> dict[str, np.ndarray]:
  """The whole split through `spec.read`: {key: np.ndarray[n, ...]} (images encoded
  when `spec.encoded`)."""
  arrays = []
  for tfds_name, expr in parts:
    ds = _as_dataset(spec, tfds_name, expr, data_dir, skip_image=spec.encoded)
    ds = ds.map(lambda ex: spec.read(ex, True), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    arrays += list(ds.batch(read_batch_size(ds.element_spec)).prefetch(2).as_numpy_iterator())
  if not arrays:
    raise UserError(f'{parts[0][0]} {parts[0][1]} has no examples')
  return {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}


def read_batch_size(element_spec, limit_bytes: int = READ_BATCH_BYTES) -> int:
  """Examples per batch when a split is read into memory: 1024, fewer when fixed-size
  examples are large. tf.data's fused map-and-batch allocates a whole batch up front:
  1024 photographs padded to 1404² (the superres train split) asked for 6 GB to hold 9."""
  size = 0
  for s in tf.nest.flatten(element_spec):
    if s.dtype == tf.string or not s.shape.is_fully_defined():
      continue  # encoded or variable-sized: nothing large is allocated ahead
    size += s.shape.num_elements() * s.dtype.size
  return int(max(1, min(1024, limit_bytes // max(size, 1))))


def _in_memory_train(rows, n, steps, start_step, order: _Order, one, *, batched, tail,
                     keys, spec):
  """Batch k gathers its examples by a stateless permutation of epoch k // steps; the
  per-example work runs in `tf.map_fn` (whole batches when there is none)."""
  tensors = {k: tf.constant(v) for k, v in rows.items()}
  stored = tf.constant(len(rows['image']), tf.int64)  # n / spec.repeat
  signature = tf.function(one).get_concrete_function(
      {k: tf.TensorSpec(v.shape[1:], v.dtype) for k, v in tensors.items()},
      tf.TensorSpec([2], tf.int64)).structured_outputs
  signature = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in signature.items()}

  def batch(step):
    epoch, step_in_epoch = step // steps, step % steps
    position = order.position(step_in_epoch, tf.range(order.local, dtype=tf.int64))
    index = tf.random.experimental.index_shuffle(
        position, tf.stack([tf.constant(order.seed, tf.int64), epoch]),
        tf.constant(n - 1, tf.int64)) % stored
    picked = {k: tf.gather(v, index) for k, v in tensors.items()}
    if batched:  # no augmentation: the deterministic ops on the whole batch
      out = spec.finish(picked, tail=tail)
      return {k: out[k] for k in keys}
    return tf.map_fn(lambda a: one(a[0], a[1]), (picked, order.example_seed(epoch, position)),
                     fn_output_signature=signature)

  ds = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
  return ds.map(batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
      tf.data.AUTOTUNE)


def _streamed_train(spec, parts, data_dir, steps, start_step, order: _Order, one):
  """Epochs streamed from disk: this process's share of each TFDS part, file order and
  a shuffle buffer seeded by (seed, epoch), parts interleaved at random in proportion
  to their sizes; the first epoch skips the records of the steps already done."""
  first_epoch, skip = divmod(start_step, steps)

  def epoch_batches(epoch: int, skip_steps: int):
    epoch_seed = batching.epoch_seed(order.seed, epoch)
    sources, sizes = [], []
    for tfds_name, expr in parts:
      shard = tfds.split_for_jax_process(expr)
      ds = _as_dataset(spec, tfds_name, shard, data_dir, shuffle_seed=epoch_seed)
      sources.append(ds.shuffle(STREAM_SHUFFLE_BUFFER, seed=epoch_seed,
                                reshuffle_each_iteration=False))
      sizes.append(tfds.builder(tfds_name, data_dir=data_dir).info.splits[shard].num_examples)
    ds = sources[0] if len(sources) == 1 else tf.data.Dataset.sample_from_datasets(
        sources, weights=[z / sum(sizes) for z in sizes], seed=epoch_seed)
    ds = ds.take(steps * order.local).enumerate().skip(skip_steps * order.local)

    def example(j, ex):
      position = order.position(j // order.local, j % order.local)
      return one(spec.read(ex, True), order.example_seed(epoch, position))
    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(order.local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options()).as_numpy_iterator()

  def generate():
    for epoch in itertools.count(first_epoch):
      yield from epoch_batches(epoch, skip if epoch == first_epoch else 0)
  return generate()


# ------------------------------------------------------------------- eval source


def local_eval_batches(spec: DataSpec, *, split: str, global_batch_size: int,
                       data_dir=None) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of `eval_batches`, as numpy arrays."""
  local = batching.process_share(global_batch_size)
  tail = preprocess.build(spec.tail, image_size=spec.image_size)
  processes = jax.process_count()
  counts = [0] * processes
  ds = None
  for tfds_name, expr in spec.split(split):
    info = tfds.builder(tfds_name, data_dir=data_dir).info
    for i, sub in enumerate(tfds.even_splits(expr, n=processes)):
      counts[i] += info.splits[sub].num_examples
    part = _as_dataset(spec, tfds_name, tfds.split_for_jax_process(expr), data_dir)
    ds = part if ds is None else ds.concatenate(part)
  count_here = counts[jax.process_index()]
  num_batches = max(1, math.ceil(max(counts) / local))

  def one(ex):
    out = spec.finish(spec.read(ex, False), tail=tail)
    return {**{k: out[k] for k in spec.eval_keys}, 'mask': tf.constant(True)}
  ds = ds.take(count_here).map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  pad = {k: tf.zeros(v.shape, v.dtype) for k, v in ds.element_spec.items()}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(num_batches * local - count_here))
  ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options()).as_numpy_iterator()


# --------------------------------------------------------------------- plumbing


def _as_dataset(spec: DataSpec, tfds_name: str, split: str, data_dir, *, skip_image=False,
                shuffle_seed=None) -> tf.data.Dataset:
  decoders = dict(spec.decoders or {})
  if skip_image:
    decoders['image'] = tfds.decode.SkipDecoding()
  return tfds.builder(tfds_name, data_dir=data_dir).as_dataset(
      split=split, shuffle_files=shuffle_seed is not None, decoders=decoders or None,
      read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed, options=_options()))


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options
