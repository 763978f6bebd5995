"""Assigning ground-truth boxes to default boxes: torchvision's `SSDMatcher`, jittable.

Liu et al. 2016 §2.2 "Matching strategy", as torchvision implements it:
  1. every anchor takes the ground truth it overlaps most, if that IoU ≥ threshold
     (0.5), else it is background;
  2. then every ground truth's best anchor (highest IoU, the first one on ties) is
     forced to that ground truth, whatever the IoU, so no object goes unmatched.
When two ground truths share a best anchor, the one with the higher index gets
it (what torchvision's in-place index assignment does on CPU), chosen explicitly
here so the result never depends on scatter order.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cvjax.detection import boxes as box_ops

BACKGROUND = -1


def match(gt_boxes: jax.Array, gt_mask: jax.Array, anchors: jax.Array,
          threshold: float = 0.5) -> jax.Array:
  """Matched ground truth of each anchor, for one image.

  Args:
    gt_boxes: f32[G, 4] ground truth (padded), normalised.
    gt_mask: bool[G], False for padding rows (never matched).
    anchors: f32[A, 4] default boxes.
    threshold: IoU at or above which an anchor is positive (step 1).

  Returns:
    int32[A]: index into gt_boxes, or BACKGROUND (-1).
  """
  overlaps = box_ops.iou(gt_boxes, anchors)                    # [G, A]
  overlaps = jnp.where(gt_mask[:, None], overlaps, -1.0)
  best_gt = jnp.argmax(overlaps, axis=0).astype(jnp.int32)     # [A], first max
  best_iou = jnp.max(overlaps, axis=0)
  matches = jnp.where(best_iou >= threshold, best_gt, BACKGROUND)
  # Forced matches: each real ground truth claims its best anchor.
  best_anchor = jnp.argmax(overlaps, axis=1)                   # [G]
  num_anchors = anchors.shape[0]
  gt_index = jnp.arange(gt_boxes.shape[0], dtype=jnp.int32)
  target = jnp.where(gt_mask, best_anchor, num_anchors)        # padding → dropped
  forced = jnp.full((num_anchors,), -1, jnp.int32).at[target].max(gt_index, mode='drop')
  return jnp.where(forced >= 0, forced, matches)


def batch_match(gt_boxes: jax.Array, gt_mask: jax.Array, anchors: jax.Array,
                threshold: float = 0.5) -> jax.Array:
  """`match` over a batch: f32[B, G, 4], bool[B, G], f32[A, 4] → int32[B, A]."""
  return jax.vmap(match, in_axes=(0, 0, None, None))(gt_boxes, gt_mask, anchors, threshold)
