"""`SegmentationTask`: the training loop's view of semantic segmentation (task 'segmentation').

    python -m experiments.fcn --flagfile=experiments/configs/fcn8s_tiny_shapes.flags

Batches: {'image': float32[B, S, S, 3], 'segmentation': int32[B, S, S]} (+ 'mask':
bool[B] in eval); model outputs: logits float32[B, S, S, K] (`cvjax.models.fcn`,
`cvjax.models.deeplab`). `predict` of a restored run: per-pixel probabilities at the input's size.
Loss: per-pixel softmax cross-entropy, mean over the labelled pixels of the
batch (`metrics.pixel_loss`). Eval sums the confusion matrix over the split
and reports `miou` (the main metric), `accuracy` (pixel accuracy), `loss`
(per pixel) and `count` (images). Data: `cvjax.segmentation.data`.

Task 'segmentation' of `cvjax.tasks`.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from cvjax.data import datasets
from cvjax.errors import UserError
from cvjax.segmentation import metrics
from cvjax.train.task import Task

# ImageNet mean/std, as a `cvjax.data.preprocess` op string (`Task.preprocessing`).
_IMAGENET_NORMALIZE = f'normalize({datasets.IMAGENET_MEAN}, {datasets.IMAGENET_STD})'


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
  example_keys = ('image', 'segmentation')

  def __init__(self, config, meta):
    super().__init__(config, meta)
    self.label_smoothing = config.label_smoothing

  def loss(self, logits, batch, axis_name):
    del axis_name
    labels = batch['segmentation']
    loss = metrics.pixel_loss(logits, labels, self.label_smoothing)
    valid = metrics.valid_pixels(labels, logits.shape[-1])
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) & valid)
    return loss, {'accuracy': correct / jnp.maximum(jnp.sum(valid), 1)}

  def eval_outputs(self, logits, batch):
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

  def evaluator(self):
    return _ConfusionEvaluator()

  def preprocessing(self):
    return _IMAGENET_NORMALIZE  # `data.normalize`

  @classmethod
  def check(cls, config):
    if config.dataset not in _data().WEIGHTS_ONLY:  # imported weights: restore and predict only
      _data().check_dataset(config.dataset)
    super().check(config)
    if config.preprocessing not in (None, 'torch'):
      raise UserError(f'segmentation inputs are normalised with the ImageNet mean/std '
                      f'(preprocessing torch), got preprocessing {config.preprocessing!r}; '
                      'leave --preprocessing unset')

  def predictor(self, model, variables):
    """predict(uint8[B, H, W, C] images; or a list of images of any sizes) → float32[B,
    H, W, K] per-pixel class probabilities at each input's own size (softmax over the K
    classes; a list gives one [H_i, W_i, K] per image), ImageNet mean/std
    (`cvjax.segmentation.predict`)."""
    from cvjax.segmentation import predict as seg  # pylint: disable=g-import-not-at-top
    return functools.partial(seg.predict, functools.partial(model.apply, train=False), variables,
                             size_multiple=seg.size_multiple(model), mean=datasets.IMAGENET_MEAN,
                             std=datasets.IMAGENET_STD)

  @classmethod
  def dataset_meta(cls, config):
    return _data().dataset_meta(config.dataset, config.data_dir)

  def data_spec(self):
    return _data().data_spec(self.config.dataset, image_size=self.image_size)
