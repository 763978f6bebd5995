"""SSD's MultiBox loss (Liu et al. 2016 §2.2) with 3:1 hard negative mining, jittable.

For one image with P matched (positive) anchors:
  localisation   Σ_{positives} smooth_L1(pred codes − target codes)   (β = 1, summed
                 over the 4 codes, as torchvision's `smooth_l1_loss(reduction='sum')`)
  confidence     Σ_{positives} CE(logits, label + 1)
               + Σ_{3P negatives with the largest CE(logits, background)} CE
Everything is fixed-shape: padding boxes are masked, negatives are chosen by
rank (a double argsort) rather than by gathering a variable number of them.
Both sums are returned per image, together with P, so the caller chooses the
normalisation (torchvision: divide both by max(1, P summed over the batch)).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from cvjax.detection import boxes as box_ops
from cvjax.detection import matching


@dataclasses.dataclass(frozen=True)
class MultiBoxTargets:
  """Per-anchor training targets of a batch.

  labels: int32[B, A] logit column: 0 background, l + 1 for object class l.
  codes:  f32[B, A, 4] box codes of the matched ground truth (zero for background).
  positive: bool[B, A].
  """
  labels: jax.Array
  codes: jax.Array
  positive: jax.Array


def targets(anchors: jax.Array, gt_boxes: jax.Array, gt_labels: jax.Array,
            gt_mask: jax.Array, iou_threshold: float = 0.5) -> MultiBoxTargets:
  """Matches a batch's ground truth to the anchors (`matching.match`) and codes it.

  anchors f32[A, 4]; gt_boxes f32[B, G, 4]; gt_labels int32[B, G] (0..K-1);
  gt_mask bool[B, G].
  """
  matches = matching.batch_match(gt_boxes, gt_mask, anchors, iou_threshold)  # [B, A]
  positive = matches >= 0
  index = jnp.maximum(matches, 0)
  matched_boxes = jnp.take_along_axis(gt_boxes, index[..., None], axis=1)   # [B, A, 4]
  matched_labels = jnp.take_along_axis(gt_labels, index, axis=1)           # [B, A]
  safe = jnp.where(positive[..., None], matched_boxes, anchors[None])      # no log(0)
  codes = jnp.where(positive[..., None], box_ops.encode(safe, anchors[None]), 0.0)
  labels = jnp.where(positive, matched_labels + 1, 0).astype(jnp.int32)
  return MultiBoxTargets(labels=labels, codes=codes, positive=positive)


def smooth_l1(x: jax.Array, beta: float = 1.0) -> jax.Array:
  """Elementwise Huber-like loss: 0.5 x²/β for |x| < β, |x| − 0.5 β beyond."""
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * ax**2 / beta, ax - 0.5 * beta)


def hard_negatives(ce: jax.Array, positive: jax.Array, neg_pos_ratio: float = 3.0) -> jax.Array:
  """The negatives that count: per image the `neg_pos_ratio`·P non-positive anchors
  with the largest loss (ties: the lower anchor index first).

  ce f32[B, A] (background cross-entropy of each anchor), positive bool[B, A] → bool[B, A].
  An image without positives gets no negatives (torchvision's rule).
  """
  num_neg = neg_pos_ratio * jnp.sum(positive, axis=1, keepdims=True)        # [B, 1]
  loss = jnp.where(positive, -jnp.inf, jax.lax.stop_gradient(ce))
  order = jnp.argsort(-loss, axis=1, stable=True)
  rank = jnp.argsort(order, axis=1, stable=True)
  return (rank < num_neg) & ~positive


def multibox_loss(locations: jax.Array, logits: jax.Array, anchors: jax.Array,
                  gt_boxes: jax.Array, gt_labels: jax.Array, gt_mask: jax.Array, *,
                  iou_threshold: float = 0.5, neg_pos_ratio: float = 3.0) -> dict[str, jax.Array]:
  """Per-image MultiBox loss sums.

  Args:
    locations: f32[B, A, 4] predicted codes (dx, dy, dw, dh).
    logits: f32[B, A, K + 1] class logits, column 0 background.
    anchors: f32[A, 4] default boxes, normalised.
    gt_boxes: f32[B, G, 4], gt_labels int32[B, G], gt_mask bool[B, G]: padded ground truth.

  Returns:
    {'localization': f32[B] smooth-L1 sum over positives,
     'confidence': f32[B] cross-entropy sum over positives and hard negatives,
     'num_positive': f32[B] P, 'num_negative': f32[B] negatives used}.
  """
  dtype = jnp.promote_types(locations.dtype, jnp.float32)  # float32, or float64 under x64
  t = targets(anchors, gt_boxes, gt_labels, gt_mask, iou_threshold)
  loc = jnp.sum(smooth_l1(locations.astype(dtype) - t.codes), axis=-1)
  loc = jnp.sum(jnp.where(t.positive, loc, 0.0), axis=1)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(dtype), t.labels)
  negative = hard_negatives(ce, t.positive, neg_pos_ratio)
  conf = jnp.sum(jnp.where(t.positive | negative, ce, 0.0), axis=1)
  return {'localization': loc, 'confidence': conf,
          'num_positive': jnp.sum(t.positive, axis=1).astype(dtype),
          'num_negative': jnp.sum(negative, axis=1).astype(dtype)}
