"""Where metrics go: `metrics.jsonl`, TensorBoard and the console.

Only process 0 writes; other processes get a writer that does nothing.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time

from absl import logging


class MetricWriter:
  """Appends one JSON object per logged step and mirrors scalars to TensorBoard.

  `truncate_after(step)` drops lines past a resumed checkpoint's step, so a run
  killed and resumed has the same `metrics.jsonl` as one never interrupted.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    self._tb_dir = os.path.join(workdir, 'tensorboard')

  def truncate_after(self, step: int) -> None:
    """Keeps the records of steps <= `step`, in order; rewrites the file atomically.

    A `kill -9` in the middle of a write leaves a torn last line: it (like any
    line that is not a JSON record) is dropped, so the file stays valid JSON Lines.
    """
    if not self.enabled or not os.path.exists(self.path):
      return
    kept = []
    with open(self.path, errors='replace') as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if isinstance(record, dict) and isinstance(record.get('step'), int) and \
            record['step'] <= step:
          kept.append(line.rstrip('\n') + '\n')
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for name, value in scalars.items():
      self._summary_writer().scalar(name, float(value), int(step))

  def _summary_writer(self):
    if self._tb is None:
      from flax.metrics import tensorboard  # imports TensorFlow: only when used
      self._tb = tensorboard.SummaryWriter(self._tb_dir)
    return self._tb

  # --- Images: TensorBoard pictures; not written to metrics.jsonl. ---------------------
  def images(self, step: int, tag: str, images, max_images: int = 16) -> None:
    """Logs up to `max_images` images as one grid picture under `tag` in TensorBoard.

    images: [N, H, W, C] with C = 1 or 3, numpy or jax (a global batch is fine;
    with several processes only this process's first shard is shown). uint8 is
    shown as is; float images (e.g. normalised model inputs) are min-max scaled
    to [0, 1] one by one. The loop logs 'augmented_inputs' once per run (the
    first batch it trains on). Detection hook: draw the boxes first, e.g.
    `writer.images(step, 'detections', np.stack([cvjax.detection.draw.draw_boxes(
    image, d['boxes'], d['classes'], d['scores'], class_names=names) for image, d
    in zip(images, detections)]))`.
    """
    if not self.enabled:
      return
    import numpy as np
    if not getattr(images, 'is_fully_addressable', True):
      images = images.addressable_data(0)
    x = np.asarray(images[:max_images])
    if x.dtype != np.uint8:
      x = x.astype(np.float32)
      lo = x.min(axis=(1, 2, 3), keepdims=True)
      span = x.max(axis=(1, 2, 3), keepdims=True) - lo
      x = np.round(255 * (x - lo) / np.where(span > 0, span, 1)).astype(np.uint8)
    n, h, w, c = x.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
    for i in range(n):
      r, q = divmod(i, cols)
      grid[1 + r * (h + 1):(r + 1) * (h + 1), 1 + q * (w + 1):(q + 1) * (w + 1)] = x[i]
    self._summary_writer().image(tag, grid, int(step), max_outputs=1)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


_FIRST = 'compiling the train step'


class Progress:
  """Step/total, rate and ETA of training on the console.

  A tqdm bar when `stream` (stderr, where it draws) is a terminal. Otherwise absl
  log lines: one at the start, one when the first step is done (its time
  includes compiling the train step), one every `every` steps or whenever the
  loop passes scalars, and one after `heartbeat_seconds` without a line. The
  rate (steps/s) counts from the end of the first step, so compilation is left
  out; evaluations and checkpoints in between are in it, as in the ETA.
  """

  def __init__(self, total: int, initial: int, every: int, enabled: bool = True, *,
               stream=None, clock=time.monotonic, heartbeat_seconds: float = 60.0):
    self.total, self.every, self.enabled = total, max(every, 1), enabled
    self._clock, self._heartbeat = clock, heartbeat_seconds
    self._step = initial
    self._started = self._last_line = clock()
    self._first = None  # (step, time) at the end of the first step
    self._bar = None
    if not enabled or initial >= total:
      return
    stream = sys.stderr if stream is None else stream
    if stream.isatty():
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self._bar = tqdm(total=total, initial=initial, unit='step', dynamic_ncols=True,
                       file=stream, desc=_FIRST)
    else:
      logging.info('step %d/%d: %s...', initial, total, _FIRST)

  def update(self, step: int, scalars: dict[str, float] | None = None) -> None:
    """Called after every optimizer step; `scalars` on the steps the loop logs."""
    if not self.enabled:
      return
    now = self._clock()
    first = self._first is None
    if first:
      self._first = (step, now)
    self._step = step
    if self._bar is not None:
      if first:
        self._bar.set_description_str('', refresh=False)
      if scalars:
        self._bar.set_postfix({k: f'{v:.4g}' for k, v in scalars.items()}, refresh=False)
      self._bar.update(step - self._bar.n)
      return
    if not (first or scalars is not None or step % self.every == 0 or step == self.total
            or now - self._last_line >= self._heartbeat):
      return
    self._last_line = now
    if first:
      pace = f'first step took {now - self._started:.1f} s (with compiling)'
    else:
      rate = (step - self._first[0]) / max(now - self._first[1], 1e-9)
      pace = f'{_rate(rate)} steps/s, ETA {_duration((self.total - step) / rate)}'
    shown = ' | ' + ' '.join(f'{k}={v:.4g}' for k, v in scalars.items()) if scalars else ''
    logging.info('step %d/%d (%d%%): %s%s', step, self.total, 100 * step // self.total,
                 pace, shown)

  @contextlib.contextmanager
  def phase(self, what: str):
    """Names a pause in training while it lasts: `with progress.phase('evaluating on test'):`."""
    if self._bar is not None:
      self._bar.set_description_str(what)
    elif self.enabled:
      self._last_line = self._clock()
      logging.info('step %d/%d: %s...', self._step, self.total, what)
    try:
      yield
    finally:
      if self._bar is not None:
        self._bar.set_description_str('')

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None


def _rate(rate: float) -> str:
  return f'{rate:.0f}' if rate >= 100 else f'{rate:.3g}'


def _duration(seconds: float) -> str:
  """h:mm:ss."""
  s = int(round(seconds))
  return f'{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}'
