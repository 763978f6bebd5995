"""Image classification: images → class logits; softmax cross-entropy; accuracy.

Batches: {'image': float32[B, H, W, C], 'label': int32[B]} (+ 'mask': bool[B] in eval,
False on the padding that completes the last batch). A train batch mixed by mixup or
CutMix (timm's `Mixup` in batch mode) adds 'label_mix': int32[B], the labels of the
reversed batch, and 'mix_weight': float32[], the weight lambda of 'label'.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from cvjax import data
from cvjax.train.task import Task


# timm's switch_prob: with both mixup and CutMix on, the chance that a batch uses CutMix.
CUTMIX_SWITCH_PROB = 0.5


def targets(labels: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
  """One-hot targets, smoothed as `optax.smooth_labels`. labels int[B] → f32[B, K]."""
  onehot = jax.nn.one_hot(labels, num_classes)
  return optax.smooth_labels(onehot, label_smoothing) if label_smoothing else onehot


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy. logits f32[B, K], labels int[B] → f32[B]."""
  return optax.softmax_cross_entropy(logits.astype(jnp.float32),
                                     targets(labels, logits.shape[-1], label_smoothing))


def mixup(images: jax.Array, lam: jax.Array) -> jax.Array:
  """lam · images + (1 - lam) · images reversed along the batch. f32[B, H, W, C], lam f32[]."""
  return (lam * images + (1 - lam) * images[::-1]).astype(images.dtype)


def rand_bbox(height: int, width: int, lam: jax.Array, key: jax.Array) -> tuple[jax.Array, ...]:
  """timm's `rand_bbox`: a box of sides ⌊H·√(1-lam)⌋, ⌊W·√(1-lam)⌋ (each rounded down to
  an even number) centred on (cy, cx) ~ randint[0, H) × randint[0, W), clipped to the
  image. key: split into the keys of cy and cx. Returns int32[] (y0, y1, x0, x1), the box
  rows y0 ≤ y < y1 and columns x0 ≤ x < x1."""
  cut_rat = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * cut_rat).astype(jnp.int32)
  cut_w = jnp.floor(width * cut_rat).astype(jnp.int32)
  y_key, x_key = jax.random.split(key)
  cy = jax.random.randint(y_key, (), 0, height)
  cx = jax.random.randint(x_key, (), 0, width)
  return (jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height),
          jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width))


def cutmix(images: jax.Array, lam: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """CutMix: the reversed batch pasted into `rand_bbox(lam, key)`; lambda corrected to the
  share of the image outside the box (timm's correct_lam). images f32[B, H, W, C], lam f32[]
  → (images f32[B, H, W, C], lam f32[])."""
  _, height, width, _ = images.shape
  y0, y1, x0, x1 = rand_bbox(height, width, lam, key)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  mixed = jnp.where(inside[None, :, :, None], images[::-1], images)
  return mixed, 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)


def mirrored_log_probs(apply: Callable[[jax.Array], jax.Array], images: jax.Array) -> jax.Array:
  """log of the mean of softmax(apply(images)) and softmax(apply(mirrored images)), the
  mirror flipping the width axis. images f32[B, H, W, C] → f32[B, K]. Summed in log space
  (logsumexp) so that a probability underflowing to 0 gives no -inf."""
  log_probs = jnp.stack([jax.nn.log_softmax(apply(x).astype(jnp.float32))
                         for x in (images, images[:, :, ::-1, :])])
  return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(2.0)


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

  def mix_batch(self, batch, rng):
    """Mixup or CutMix of the batch with its reverse, as timm's `Mixup` (mode 'batch',
    correct_lam): with probability mix_prob the batch is mixed (else lambda = 1); with both
    alphas set CutMix is chosen with probability 1/2, else the one set is used; lambda ~
    Beta(alpha, alpha). `rng` is split into four keys, drawing in turn whether to mix,
    which of the two (drawn only with both set), lambda, and CutMix's box (`rand_bbox`).
    Adds 'label_mix' int32[b] and 'mix_weight' f32[] (see the module doc). With both
    alphas 0: the batch as it is, nothing drawn."""
    c = self.config
    if not (c.mixup_alpha or c.cutmix_alpha):
      return batch
    apply_key, kind_key, lam_key, box_key = jax.random.split(rng, 4)
    mixed = jax.random.uniform(apply_key) < c.mix_prob
    if c.mixup_alpha and c.cutmix_alpha:
      use_cutmix = jax.random.uniform(kind_key) < CUTMIX_SWITCH_PROB
    else:
      use_cutmix = jnp.asarray(c.cutmix_alpha > 0)
    alpha = jnp.where(use_cutmix, c.cutmix_alpha, c.mixup_alpha)
    lam = jax.random.beta(lam_key, alpha, alpha)
    images = batch['image']
    out, out_lam = mixup(images, lam), lam
    if c.cutmix_alpha:
      cut, cut_lam = cutmix(images, lam, box_key)
      out = jnp.where(use_cutmix, cut, out)
      out_lam = jnp.where(use_cutmix, cut_lam, out_lam)
    return {**batch, 'image': jnp.where(mixed, out, images), 'label_mix': batch['label'][::-1],
            'mix_weight': jnp.where(mixed, out_lam, 1.0).astype(jnp.float32)}

  def loss(self, logits, batch, axis_name):
    """Mean cross-entropy and accuracy; for a mixed batch, against timm's `mixup_target`
    (the lambda-weighted smoothed targets of 'label' and 'label_mix'), the accuracy
    weighted likewise."""
    del axis_name
    if 'mix_weight' not in batch:
      loss = cross_entropy(logits, batch['label'], self.label_smoothing).mean()
      return loss, {'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}
    lam, num_classes = batch['mix_weight'], logits.shape[-1]
    soft = (lam * targets(batch['label'], num_classes, self.label_smoothing)
            + (1 - lam) * targets(batch['label_mix'], num_classes, self.label_smoothing))
    loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), soft).mean()
    predicted = jnp.argmax(logits, -1)
    accuracy = (lam * jnp.mean(predicted == batch['label'])
                + (1 - lam) * jnp.mean(predicted == batch['label_mix']))
    return loss, {'accuracy': accuracy}

  def eval_apply(self, apply_fn, variables, batch):
    """The logits; with tta='flip', log of the mean probabilities of each image and its
    mirror (`mirrored_log_probs`), which `eval_outputs` scores as logits."""
    if self.config.tta != 'flip':
      return super().eval_apply(apply_fn, variables, batch)
    return mirrored_log_probs(lambda x: apply_fn(variables, x, train=False),
                              self.model_input(batch))

  def predictor(self, model, variables, probabilities=None):
    """`Task.predictor`; with tta='flip', the mean probabilities of each image and its
    mirror."""
    def mirrored(v, x):
      return jnp.exp(mirrored_log_probs(lambda im: model.apply(v, im, train=False), x))
    if self.config.tta == 'flip' and probabilities is None:
      probabilities = mirrored
    return super().predictor(model, variables, probabilities)

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
