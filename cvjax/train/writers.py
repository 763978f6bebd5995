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
    if self._tb is None:
      from flax.metrics import tensorboard  # imports TensorFlow: only when used
      self._tb = tensorboard.SummaryWriter(self._tb_dir)
    for name, value in scalars.items():
      self._tb.scalar(name, float(value), int(step))

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
