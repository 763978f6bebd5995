"""`SegmentationTask`: the training loop's view of semantic segmentation (task 'segmentation').

    python -m experiments.fcn --flagfile=experiments/configs/fcn8s_tiny_shapes.flags

Batches: {'image': float32[B, S, S, 3], 'segmentation': int32[B, S, S]} (+ 'mask':
bool[B] in eval); model outputs: logits float32[B, S, S, K] (`cvjax.models.fcn`,
`cvjax.models.deeplab`). `predict` of a restored run: per-pixel probabilities.
Loss: per-pixel softmax cross-entropy, mean over the labelled pixels of the
batch (`metrics.pixel_loss`). Eval sums the confusion matrix over the split
and reports `miou` (the main metric), `accuracy` (pixel accuracy), `loss`
(per pixel) and `count` (images). Data: `cvjax.segmentation.data`.

Task 'segmentation' of `cvjax.tasks`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cvjax.errors import UserError
from cvjax.segmentation import metrics
from cvjax.train import steps
from cvjax.train.task import Task, image_batches


def _data():
  """`cvjax.segmentation.data`, imported on first use: it loads TensorFlow, which a
  run refused for a bad flag, config or workdir never needs."""
  from cvjax.segmentation import data  # pylint: disable=g-import-not-at-top
  return data


class _ConfusionEvaluator:
  """Sums confusion matrices, pixel losses and counts; IoU at the end."""

  def __init__(self):
    self.confusion = None
    self.loss_sum = self.pixels = self.count = 0.0

  def update(self, sums: dict, per_example: dict) -> None:
    del per_example
    c = np.asarray(sums['confusion'], np.int64)
    self.confusion = c if self.confusion is None else self.confusion + c
    self.loss_sum += float(sums['loss_sum'])
    self.pixels += float(sums['pixels'])
    self.count += float(sums['count'])

  def result(self) -> dict[str, float]:
    confusion = self.confusion if self.confusion is not None else np.zeros((1, 1))
    return {'loss': self.loss_sum / max(self.pixels, 1.0),
            'miou': metrics.mean_iou(confusion),
            'accuracy': metrics.pixel_accuracy(confusion),
            'count': int(self.count)}


class SegmentationTask(Task):
  """Images → per-pixel class logits; per-pixel cross-entropy; mIoU."""
  name = 'segmentation'
  main_metric = 'miou'
  main_metric_higher_is_better = True

  def loss(self, logits, batch, run, axis_name):
    del axis_name
    labels = batch['segmentation']
    smoothing = run.config.label_smoothing if run is not None else 0.0
    loss = metrics.pixel_loss(logits, labels, smoothing)
    valid = metrics.valid_pixels(labels, logits.shape[-1])
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) & valid)
    return loss, {'accuracy': correct / jnp.maximum(jnp.sum(valid), 1)}

  def eval_outputs(self, logits, batch, run):
    del run
    labels, weights = batch['segmentation'], batch['mask'].astype(jnp.float32)
    k = logits.shape[-1]
    valid = metrics.valid_pixels(labels, k) & (weights[:, None, None] > 0)
    pixels = jnp.sum(valid)
    sums = {
        'confusion': metrics.confusion_matrix(jnp.argmax(logits, -1), labels, k, weights),
        'loss_sum': metrics.pixel_loss(logits, labels, weights=weights) * pixels,
        'pixels': pixels.astype(jnp.float32),
        'count': jnp.sum(weights),
    }
    return sums, {}

  def evaluator(self, run):
    del run
    return _ConfusionEvaluator()

  def check(self, config):
    if config.dataset not in _data().WEIGHTS_ONLY:  # imported weights: restore and predict only
      _data().check_dataset(config.dataset)
    _data().check_augment(config.augment)  # fail on a bad op before anything is written
    if config.preprocessing not in (None, 'torch'):
      raise UserError(f'segmentation inputs are normalised with the ImageNet mean/std '
                      f'(preprocessing torch), got preprocessing {config.preprocessing!r}; '
                      'leave --preprocessing unset')

  def predictor(self, run, model, variables):
    """predict(uint8[B, H, W, C] images, any size; or a list) → float32[B, S, S, K]
    per-pixel class probabilities at the model input S (softmax over the K classes),
    with the eval preprocessing: resized to S² as the dataset is, ImageNet mean/std."""
    apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False)))
    size = run.image_size

    def predict(images) -> np.ndarray:
      return np.concatenate([
          np.asarray(apply(variables, _data().normalize(_data().resize_images(batch, size))))
          for batch in image_batches(images)])
    return predict

  def dataset_meta(self, config):
    return _data().dataset_meta(config.dataset, config.data_dir)

  def train_batches(self, run, start_step):
    c = run.config
    return _data().train_batches(c.dataset, global_batch_size=c.batch_size,
                                  image_size=run.image_size, sharding=steps.batch_sharded(run.mesh),
                                  seed=c.seed, start_step=start_step, augment=c.augment,
                                  data_dir=c.data_dir)

  def eval_batches(self, run, split):
    c = run.config
    return _data().eval_batches(c.dataset, split=split,
                                 global_batch_size=c.eval_batch_size or c.batch_size,
                                 image_size=run.image_size, sharding=steps.batch_sharded(run.mesh),
                                 data_dir=c.data_dir)

