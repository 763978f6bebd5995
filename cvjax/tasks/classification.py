"""Image classification: images → class logits; softmax cross-entropy; accuracy.

Batches: {'image': float32[B, H, W, C], 'label': int32[B]} (+ 'mask': bool[B] in eval,
False on the padding that completes the last batch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cvjax import data
from cvjax.train.task import Task


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy. logits f32[B, K], labels int[B] → f32[B]."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


class AccuracyEvaluator:
  """Mean loss and accuracy from summed counts."""

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


class ClassificationTask(Task):
  """Images → class logits; softmax cross-entropy (with the run's label smoothing); accuracy."""
  name = 'classification'
  main_metric = 'accuracy'
  main_metric_higher_is_better = True

  def __init__(self, config, meta):
    super().__init__(config, meta)
    self.label_smoothing = config.label_smoothing


  @classmethod
  def dataset_meta(cls, config):
    return data.dataset_meta(config.dataset, data_dir=config.data_dir,
                             raw_data_dir=config.raw_data_dir)

  def loss(self, logits, batch, axis_name):
    del axis_name
    loss = cross_entropy(logits, batch['label'], self.label_smoothing).mean()
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
    return AccuracyEvaluator()

  def data_spec(self):
    c = self.config
    return data.classification.data_spec(c.dataset, self.meta, image_size=self.image_size,
                                         channels=self.channels, preprocessing=c.preprocessing)
