"""Classification + localisation (task 'localization'): one class and one box per image.

    python -m experiments.models --flagfile=experiments/configs/localizer_shapes.flags

The stage between classification and detection: the image holds exactly one
object, the model (`cvjax.models.localizer`) returns (class logits f32[B, K],
box f32[B, 4] in [0, 1]). Data: `cvjax.tasks.localization_data` ({'image',
'label', 'box'} batches of `cvjax_shapes/single`).

Loss, per image, mean over the batch:

    softmax cross-entropy (with the run's label smoothing)
      + BOX_WEIGHT · Σ over the 4 coordinates of smooth L1(predicted − true, β = BOX_BETA)

with smooth L1(d, β) = d² / (2β) for |d| < β, else |d| − β/2 (Fast R-CNN's
box loss; optax's Huber loss / β), on normalised coordinates. BOX_WEIGHT (λ)
and BOX_BETA are constants of this module, not config fields: λ = 5 makes a
box off by a tenth of the image side on every side cost 1.0, the
cross-entropy of a true class predicted at probability 1/e ≈ 0.37. Under data parallelism every device means over its
share of the batch and the step averages the gradients (`cvjax.train.steps`),
so the loss is the global batch's mean, as in `ClassificationTask`.

Evaluation sums, over the split, on the device:
  accuracy       top-1 class
  mean_iou       mean IoU of the predicted with the true box
  iou50          share of images whose predicted box has IoU ≥ 0.5
  loc_accuracy   share with the class right *and* IoU ≥ 0.5 — the main metric
                 (ILSVRC's top-1 localisation accuracy, 1 − its error)
  loss           the training loss without label smoothing, per image
  count          images
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cvjax.detection import boxes as box_lib
from cvjax.errors import UserError
from cvjax.models import registry
from cvjax.tasks.classification import cross_entropy
from cvjax.data import datasets
from cvjax.train.task import Task, image_batches


def _data():
  """`cvjax.tasks.localization_data`, imported on first use: it loads TensorFlow, which a
  run refused for a bad flag, config or workdir never needs."""
  from cvjax.tasks import localization_data  # pylint: disable=g-import-not-at-top
  return localization_data


# ImageNet mean/std, as `cvjax.data.preprocess` op string (`Task.preprocessing`).
_IMAGENET_NORMALIZE = f'normalize({datasets.IMAGENET_MEAN}, {datasets.IMAGENET_STD})'

BOX_WEIGHT = 5.0   # λ, the box loss's weight next to the cross-entropy
BOX_BETA = 0.1     # smooth L1's switch from quadratic to linear, in image sides
IOU_THRESHOLD = 0.5


def box_loss(predicted: jax.Array, true: jax.Array, beta: float = BOX_BETA) -> jax.Array:
  """Per-example smooth L1 summed over the 4 coordinates: f32[B, 4], f32[B, 4] → f32[B]."""
  d = predicted.astype(jnp.float32) - true
  return jnp.sum(optax.huber_loss(d, delta=beta) / beta, axis=-1)


def paired_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """IoU of a[i] with b[i]: f32[B, 4], f32[B, 4] (ymin, xmin, ymax, xmax) → f32[B];
  0 for an inverted or empty box."""
  return box_lib.iou(a[:, None, :], b[:, None, :])[:, 0, 0]


def per_example_loss(outputs, batch: dict, label_smoothing: float = 0.0) -> jax.Array:
  """The loss of the module doc, per image: f32[B]."""
  logits, box = outputs
  return (cross_entropy(logits, batch['label'], label_smoothing)
          + BOX_WEIGHT * box_loss(box, batch['box']))


class LocalizationEvaluator:
  """Sums of correct classes, IoUs, hits and losses over a split; shares at the end."""

  KEYS = ('loss_sum', 'correct', 'iou_sum', 'iou50', 'correct_loc', 'count')

  def __init__(self):
    self.totals = dict.fromkeys(self.KEYS, 0.0)

  def update(self, sums: dict, per_example: dict) -> None:
    del per_example
    for k in self.KEYS:
      self.totals[k] += float(sums[k])

  def result(self) -> dict[str, float]:
    t = self.totals
    n = max(t['count'], 1.0)
    return {'loss': t['loss_sum'] / n, 'accuracy': t['correct'] / n,
            'mean_iou': t['iou_sum'] / n, 'iou50': t['iou50'] / n,
            'loc_accuracy': t['correct_loc'] / n, 'count': int(t['count'])}


def eval_sums(outputs, batch: dict) -> dict[str, jax.Array]:
  """The evaluator's sums over the real examples (batch['mask']) of one batch."""
  logits, box = outputs
  mask = batch['mask'].astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
  iou = paired_iou(box.astype(jnp.float32), batch['box'])
  hit = (iou >= IOU_THRESHOLD).astype(jnp.float32)
  return {'loss_sum': jnp.sum(per_example_loss(outputs, batch) * mask),
          'correct': jnp.sum(correct * mask), 'iou_sum': jnp.sum(iou * mask),
          'iou50': jnp.sum(hit * mask), 'correct_loc': jnp.sum(correct * hit * mask),
          'count': jnp.sum(mask)}


class LocalizationTask(Task):
  """Images → (class logits, one box); cross-entropy + λ·smooth L1; localisation accuracy."""
  name = 'localization'
  main_metric = 'loc_accuracy'
  main_metric_higher_is_better = True
  example_keys = ('image', 'label', 'boxes', 'box_mask')

  def __init__(self, config, meta):
    super().__init__(config, meta)
    self.label_smoothing = config.label_smoothing

  @classmethod
  def check(cls, config):
    if registry.model_task(config.model) != 'localization':
      raise UserError(f"task 'localization' needs a localization model, got {config.model!r}; "
                      f"choose one of {', '.join(registry.list_models('localization'))}")
    _data().check_dataset(config.dataset)
    super().check(config)

  @classmethod
  def dataset_meta(cls, config):
    return _data().dataset_meta(config.dataset, config.data_dir)

  def loss(self, outputs, batch, axis_name):
    del axis_name  # the step pmeans the gradients: a local mean is the global one
    logits, box = outputs
    iou = paired_iou(box, batch['box'])
    return per_example_loss(outputs, batch, self.label_smoothing).mean(), {
        'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
        'box_loss': jnp.mean(box_loss(box, batch['box'])),
        'mean_iou': jnp.mean(iou)}

  def eval_outputs(self, outputs, batch):
    return eval_sums(outputs, batch), {}

  def evaluator(self):
    return LocalizationEvaluator()

  def preprocessing(self):
    return _IMAGENET_NORMALIZE  # `segmentation.data.normalize`

  def data_spec(self):
    return _data().data_spec(self.config.dataset, image_size=self.image_size)

  def predictor(self, model, variables: dict):
    """predict(images) for `cvjax.restore`: uint8[B, H, W, C] (or a list of uint8[H, W, C]
    of any sizes, C = 1 or 3) → one dict per image: 'class' int, 'probabilities'
    f32[K] (softmax), 'box' f32[4] (ymin, xmin, ymax, xmax) normalised to that image."""
    image_size = self.image_size

    @jax.jit
    def apply(x):
      logits, box = model.apply(variables, x, train=False)
      return jax.nn.softmax(logits), box

    def predict(images: Any) -> list[dict[str, Any]]:
      seg_data, out = _data().segmentation_data, []
      for group in image_batches(images):
        x = seg_data.normalize(seg_data.resize_images(group, image_size))
        probabilities, box = jax.device_get(apply(x))
        out += [{'class': int(np.argmax(p)), 'probabilities': p, 'box': b}
                for p, b in zip(probabilities, box)]
      return out
    return predict
