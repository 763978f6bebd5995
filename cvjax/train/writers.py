"""Where metrics go: `metrics.jsonl`, TensorBoard and the console.

Only process 0 writes; other processes get a writer that does nothing.
"""
from __future__ import annotations

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
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
    with open(self.path, 'w') as f:
      f.writelines(kept)

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

  # --- Images (issue 8): TensorBoard pictures; not written to metrics.jsonl. -------------
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


class Progress:
  """A tqdm bar on a terminal; plain log lines every `every` steps otherwise."""

  def __init__(self, total: int, initial: int, every: int, enabled: bool = True):
    self.every = max(every, 1)
    self.enabled = enabled
    self._bar = None
    self._t0 = time.time()
    if enabled and sys.stderr.isatty():
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=initial, unit='step', dynamic_ncols=True)
    self.total = total

  def update(self, step: int, scalars: dict[str, float] | None = None) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      if scalars:
        self._bar.set_postfix({k: f'{v:.4g}' for k, v in scalars.items()}, refresh=False)
    elif scalars is not None:
      shown = ' '.join(f'{k}={v:.4g}' for k, v in scalars.items())
      logging.info('step %d/%d %s (%.0f s)', step, self.total, shown, time.time() - self._t0)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
