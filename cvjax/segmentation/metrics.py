"""Per-pixel loss and the confusion-matrix metrics of semantic segmentation, jittable.

  pixel_loss        softmax cross-entropy per pixel, mean over the valid (labelled) pixels
  confusion_matrix  int32[K, K] counts: row = true class, column = predicted class
  iou_per_class     TP / (TP + FP + FN) per class; NaN for a class absent from both
  mean_iou          the mean over classes present in prediction or truth (VOC's mIoU)

The confusion matrix is summed over batches and devices and the IoU taken at the
end, so mIoU is over the whole split (not a mean of per-image IoUs).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def valid_pixels(labels: jax.Array, num_classes: int) -> jax.Array:
  """bool[...]: pixels with a label in 0..K-1 (VOC marks borders 255: ignored)."""
  return (labels >= 0) & (labels < num_classes)


def pixel_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0,
               weights: jax.Array | None = None) -> jax.Array:
  """Mean per-pixel softmax cross-entropy over valid pixels.

  logits f32[B, H, W, K]; labels int[B, H, W]; weights f32[B] per example (e.g.
  the eval padding mask) or None. Returns a scalar; 0 if no pixel is valid.
  """
  k = logits.shape[-1]
  valid = valid_pixels(labels, k).astype(jnp.float32)
  if weights is not None:
    valid = valid * weights[:, None, None]
  targets = jax.nn.one_hot(jnp.where(valid > 0, labels, 0), k)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  ce = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def confusion_matrix(predictions: jax.Array, labels: jax.Array, num_classes: int,
                     weights: jax.Array | None = None) -> jax.Array:
  """int32[K, K]: entry (t, p) counts valid pixels of true class t predicted as p.

  predictions, labels int[B, H, W]; weights bool/0-1[B] drops whole examples.
  """
  valid = valid_pixels(labels, num_classes)
  if weights is not None:
    valid = valid & (weights[:, None, None] > 0)
  index = jnp.where(valid, labels * num_classes + predictions, num_classes * num_classes)
  counts = jnp.bincount(index.ravel(), length=num_classes * num_classes + 1)
  return counts[:-1].reshape(num_classes, num_classes).astype(jnp.int32)


def iou_per_class(confusion) -> np.ndarray:
  """float64[K]: TP / (TP + FP + FN) per class; NaN where the class is in neither."""
  c = np.asarray(confusion, np.float64)
  tp = np.diag(c)
  union = c.sum(0) + c.sum(1) - tp
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, tp / union, np.nan)


def mean_iou(confusion) -> float:
  """Mean of `iou_per_class` over the classes present (NaNs skipped); 0 if none."""
  iou = iou_per_class(confusion)
  return float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0


def pixel_accuracy(confusion) -> float:
  """Correct valid pixels / valid pixels."""
  c = np.asarray(confusion, np.float64)
  return float(np.trace(c) / max(c.sum(), 1.0))
