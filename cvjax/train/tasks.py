"""What the one training loop needs to know about a task.

The loop (`cvjax.train.loop.fit`) is task-agnostic: a `Task` says how to turn
model outputs into a loss, what to measure on an eval batch, how to combine
those measurements over a whole split, and where its batches come from.
Classification lives here; detection adds its own `Task` next to its model.

Contract, with b the per-device batch:
  loss(outputs, batch, config) -> (scalar loss, {name: scalar}) — means over b.
  eval_outputs(outputs, batch) -> (sums, per_example): `sums` are summed over
      devices (e.g. correct-prediction counts); `per_example` arrays keep their
      leading batch axis and come back as global arrays (e.g. detections).
  evaluator() -> an object with update(sums, per_example) and result() -> dict
      of floats, which must contain `main_metric` and 'count'.
  dataset_meta(config) -> prepared dataset facts (num_classes, split_sizes).
  train_batches(run, start_step) / eval_batches(run, split) -> iterators of
      global batches (see cvjax.data).
"""
from __future__ import annotations

from typing import Any, Iterator, Protocol

import jax
import jax.numpy as jnp
import optax

from cvjax.errors import unknown_choice


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy. logits f32[B, K], labels int[B] → f32[B]."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


class Evaluator(Protocol):

  def update(self, sums: dict, per_example: dict) -> None:
    ...

  def result(self) -> dict[str, float]:
    ...


class Task(Protocol):
  name: str
  main_metric: str             # the metric "best checkpoint" and early stopping watch
  main_metric_higher_is_better: bool

  def loss(self, outputs: Any, batch: dict, label_smoothing: float) -> tuple[jax.Array, dict]:
    ...

  def eval_outputs(self, outputs: Any, batch: dict) -> tuple[dict, dict]:
    ...

  def evaluator(self) -> Evaluator:
    ...

  def dataset_meta(self, config) -> Any:
    """Prepares the dataset; returns an object with num_classes and split_sizes."""
    ...

  def train_batches(self, run, start_step: int) -> Iterator[dict]:
    ...

  def eval_batches(self, run, split: str) -> Iterator[dict]:
    ...


class _SumEvaluator:
  """Classification: mean loss and accuracy from summed counts."""

  def __init__(self):
    self.totals = {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}

  def update(self, sums: dict, per_example: dict) -> None:
    del per_example
    for k in self.totals:
      self.totals[k] += float(sums[k])

  def result(self) -> dict[str, float]:
    count = max(self.totals['count'], 1.0)
    return {'loss': self.totals['loss_sum'] / count, 'accuracy': self.totals['correct'] / count,
            'count': int(self.totals['count'])}


class ClassificationTask:
  """Images → class logits; softmax cross-entropy; accuracy.

  Batches: {'image': f32[B, H, W, C], 'label': int32[B]} (+ 'mask': bool[B] in eval).
  """
  name = 'classification'
  main_metric = 'accuracy'
  main_metric_higher_is_better = True

  def loss(self, logits, batch, label_smoothing=0.0):
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    return loss, {'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}

  def eval_outputs(self, logits, batch):
    mask = batch['mask'].astype(jnp.float32)
    sums = {
        'loss_sum': jnp.sum(cross_entropy(logits, batch['label']) * mask),
        'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask),
        'count': jnp.sum(mask),
    }
    return sums, {}

  def evaluator(self):
    return _SumEvaluator()

  def dataset_meta(self, config):
    from cvjax import data
    if config.augment:  # fail on a bad op string before anything is written
      data.preprocess.build(config.augment, image_size=config.image_size)
    return data.dataset_meta(config.dataset, data_dir=config.data_dir,
                             raw_data_dir=config.raw_data_dir)

  def train_batches(self, run, start_step):
    from cvjax import data
    from cvjax.train import steps
    c = run.config
    return data.train_batches(
        c.dataset, global_batch_size=c.batch_size, image_size=run.image_size,
        channels=run.channels, sharding=steps.batch_sharded(run.mesh), seed=c.seed,
        start_step=start_step, augment=c.augment, data_dir=c.data_dir,
        raw_data_dir=c.raw_data_dir, preprocessing=c.preprocessing)  # issue 5: preprocessing

  def eval_batches(self, run, split):
    from cvjax import data
    from cvjax.train import steps
    c = run.config
    return data.eval_batches(
        c.dataset, split=split, global_batch_size=c.eval_batch_size or c.batch_size,
        image_size=run.image_size, channels=run.channels,
        sharding=steps.batch_sharded(run.mesh), data_dir=c.data_dir,
        raw_data_dir=c.raw_data_dir, preprocessing=c.preprocessing)  # issue 5: preprocessing


_TASKS = {'classification': ClassificationTask}


def register_task(name: str, task_cls) -> None:
  """Adds a task (e.g. 'detection') that configs can name."""
  _TASKS[name] = task_cls


def get_task(name: str) -> Task:
  if name == 'segmentation' and name not in _TASKS:  # issue 7: registers itself on import
    import cvjax.segmentation.task  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  if name == 'detection' and name not in _TASKS:  # issue 4: registers itself on import
    import cvjax.detection.task  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  if name not in _TASKS:
    raise unknown_choice('task', name, _TASKS)
  return _TASKS[name]()
