"""Host batches -> global `jax.Array`s: the per-process share of a batch, device prefetch, seeds.

The input pipeline (`cvjax.data.pipeline`) builds its batches on the host as numpy
arrays and hands them to `DevicePrefetch`. The conventions:

  B   global batch size: examples per step over all processes.
  P   `jax.process_count()`; process p holds rows [p * B / P, (p + 1) * B / P)
      of each global batch, B / P of them (`process_share`).
  host batch    {name: np.ndarray[B / P, ...]}, this process's rows.
  global batch  {name: jax.Array[B, ...]} laid out by a `NamedSharding` whose
                batch axis is split over the devices (mesh axis 'data').

Importing this module loads neither TensorFlow nor TFDS.
"""
from __future__ import annotations

import queue
import threading
import weakref
from typing import Iterable, Iterator

import jax
import numpy as np

from cvjax.errors import UserError

PREFETCH_TO_DEVICE = 2  # global batches made ahead of the consumer


def process_share(global_batch_size: int) -> int:
  """B / P, the rows of each global batch this process holds.

  Raises `UserError` unless B is a positive multiple of P.
  """
  processes = jax.process_count()
  if global_batch_size <= 0 or global_batch_size % processes:
    raise UserError(f'global batch size {global_batch_size} must be a positive multiple of '
                    f'the {processes} processes')
  return global_batch_size // processes


def local_batch_size(global_batch_size: int, sharding: jax.sharding.Sharding) -> int:
  """B / P, after checking that B also splits evenly over the devices of `sharding`.

  Call it before building a pipeline so that a bad batch size fails before any data
  is read. Raises `UserError` naming the process or device count B must divide into.
  """
  local = process_share(global_batch_size)
  try:
    sharding.shard_shape((global_batch_size,))
  except ValueError:
    devices = sharding.mesh.shape.get('data', sharding.mesh.size)
    raise UserError(f'global batch size {global_batch_size} is not divisible by the '
                    f'{devices} devices of mesh axis \'data\'; use a multiple of '
                    f'{devices}') from None
  return local


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding,
              global_batch_size: int) -> dict[str, jax.Array]:
  """Host batch {k: [B / P, ...]} -> global batch {k: jax.Array[B, ...]} with `sharding`.

  Every process calls it with its own rows of the same step (a collective in
  multi-process runs).
  """
  return {k: jax.make_array_from_process_local_data(sharding, v,
                                                    (global_batch_size,) + v.shape[1:])
          for k, v in batch.items()}


def epoch_seed(seed: int, epoch: int) -> int:
  """A 63-bit seed mixed from (seed, epoch), for shuffles that take one int (TFDS, tf.data)."""
  return int(np.random.SeedSequence([seed % 2**63, epoch]).generate_state(1, np.uint64)[0]
             % 2**63)


_END = object()


class _Raised:

  def __init__(self, error):
    self.error = error


class DevicePrefetch:
  """Iterator of global batches, converted from host batches by a background thread.

  Args:
    source: iterable of host batches {k: np.ndarray[B / P, ...]}, in step order.
    sharding: the sharding of every yielded array.
    global_batch_size: B.

  Yields {k: jax.Array[B, ...]} (`to_global`), the same batches in the same order.
  The thread stays `PREFETCH_TO_DEVICE` batches ahead; it ends when `source` ends,
  when `source` raises (the error is re-raised by `__next__`), or when this iterator
  is closed or garbage-collected.
  """

  def __init__(self, source: Iterable[dict[str, np.ndarray]], sharding: jax.sharding.Sharding,
               global_batch_size: int):
    self._queue = queue.Queue(maxsize=PREFETCH_TO_DEVICE)
    self._stop = threading.Event()
    self._done = False
    self._thread = threading.Thread(
        target=_prefetch_worker, daemon=True, name='cvjax-data-prefetch',
        args=(source, sharding, global_batch_size, self._queue, self._stop))
    self._thread.start()
    # Stop the thread when this iterator is collected or the interpreter exits (a
    # daemon thread killed inside TensorFlow at exit aborts the process).
    self._finalizer = weakref.finalize(self, _stop_worker, self._stop, self._thread)

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    if self._done:
      raise StopIteration
    item = self._queue.get()
    if item is _END:
      self._done = True
      raise StopIteration
    if isinstance(item, _Raised):
      self._done = True
      raise item.error
    return item

  def close(self) -> None:
    """Stops the thread; later `__next__` calls raise StopIteration."""
    self._done = True
    self._finalizer()


def _stop_worker(stop: threading.Event, thread: threading.Thread):
  stop.set()
  if thread is not threading.current_thread():
    thread.join(timeout=10)


def _prefetch_worker(source, sharding, global_batch_size, out: queue.Queue, stop):
  def put(item):
    while not stop.is_set():
      try:
        out.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  try:
    for batch in source:
      if not put(to_global(batch, sharding, global_batch_size)):
        return
    put(_END)
  except BaseException as e:  # pylint: disable=broad-except
    put(_Raised(e))
