"""YOLOv3's loss, decoding and anchors (Redmon & Farhadi 2018), jittable.

The model (`cvjax.models.yolo`) returns per map (coarsest first) raw f32[B, H, W, A, 5 + C]:
(tx, ty, tw, th, objectness logit, C class logits) of anchor a in cell (i, j). Decoded,

    centre x = (j + sigmoid(tx)) / W     width  = anchor_w · exp(tw)
    centre y = (i + sigmoid(ty)) / H     height = anchor_h · exp(th)

normalised to the image; score of class c = sigmoid(objectness) · sigmoid(class c).

Loss (`yolo_loss`), per image, summed over every map, cell and anchor:
  responsibility  each ground-truth box belongs to one prediction: the anchor (of all
                  maps) whose (w, h) has the best IoU with the box's (w, h), both
                  aligned at a corner, in the cell of that anchor's map holding the box
                  centre. Two boxes on the same prediction: the later box's coordinates
                  win (Darknet's order), the class targets of both are set.
  box             for responsible predictions, weighted by (2 − w·h) of the box
                  (Darknet's scale, small boxes count more):
                  BCE(sigmoid(tx), x offset in the cell) + same for y
                  + ½ (tw − log(w / anchor_w))² + ½ (th − log(h / anchor_h))²
                  — the loss whose gradient is Darknet's delta (Darknet applies
                  t* − sigmoid(t) to x, y without the sigmoid's derivative).
  objectness      BCE(objectness, 1) for responsible predictions; BCE(objectness, 0)
                  for the others, except those whose decoded box overlaps some
                  ground-truth box by IoU > ignore_threshold (0.5 in the paper): ignored.
  class           Σ_c BCE(class c, target c) for responsible predictions (independent
                  logistic classifiers, no softmax).
The sums are per image; `cvjax.tasks.detection` divides the batch's sum by the number of
images of the global batch (the per-image mean Darknet's learning rate / batch gives).

Anchors: `kmeans_anchors` clusters training boxes' (w, h) with d = 1 − IoU (YOLOv2 §2).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cvjax.detection import boxes as box_ops
from cvjax.detection import postprocess
from cvjax.errors import UserError


def decode_map(raw: jax.Array, anchors: jax.Array) -> jax.Array:
  """Boxes of one map: raw f32[B, H, W, A, 5 + C], anchors f32[A, 2] (w, h) →
  f32[B, H, W, A, 4] (ymin, xmin, ymax, xmax) normalised, not clipped.
  exp(tw) is capped at 1000 / 16 (torchvision's cap on box growth)."""
  _, h, w, _, _ = raw.shape
  raw = raw.astype(jnp.promote_types(raw.dtype, jnp.float32))
  cx = (jnp.arange(w, dtype=raw.dtype)[None, :, None] + jax.nn.sigmoid(raw[..., 0])) / w
  cy = (jnp.arange(h, dtype=raw.dtype)[:, None, None] + jax.nn.sigmoid(raw[..., 1])) / h
  bw = anchors[:, 0] * jnp.exp(jnp.minimum(raw[..., 2], box_ops.SIZE_CLIP))
  bh = anchors[:, 1] * jnp.exp(jnp.minimum(raw[..., 3], box_ops.SIZE_CLIP))
  return box_ops.from_center(cx, cy, bw, bh)


def decode(maps: Sequence[jax.Array], anchors: Sequence[np.ndarray]) -> tuple[jax.Array, jax.Array]:
  """All maps' predictions: (boxes f32[B, N, 4] clipped to the image, scores f32[B, N, C]
  = sigmoid(objectness) · sigmoid(class)), N = Σ H·W·A in map order."""
  boxes, scores = [], []
  for raw, wh in zip(maps, anchors):
    b = raw.shape[0]
    raw = raw.astype(jnp.promote_types(raw.dtype, jnp.float32))
    boxes.append(decode_map(raw, jnp.asarray(wh, raw.dtype)).reshape(b, -1, 4))
    score = jax.nn.sigmoid(raw[..., 4:5]) * jax.nn.sigmoid(raw[..., 5:])
    scores.append(score.reshape(b, -1, raw.shape[-1] - 5))
  return box_ops.clip(jnp.concatenate(boxes, 1)), jnp.concatenate(scores, 1)


def detect(maps: Sequence[jax.Array], anchors: Sequence[np.ndarray],
           config: postprocess.PostprocessConfig = postprocess.PostprocessConfig()
           ) -> postprocess.Detections:
  """Detections from raw YOLO maps: `decode`, then per-class threshold, NMS, top-k
  (`postprocess.detect_boxes`)."""
  boxes, scores = decode(maps, anchors)
  return postprocess.detect_boxes(boxes, scores, config)


def shape_iou(wh_a: jax.Array, wh_b: jax.Array) -> jax.Array:
  """IoU of (w, h) pairs aligned at a corner: f32[..., N, 2], f32[..., K, 2] → f32[..., N, K]."""
  a, b = wh_a[..., :, None, :], wh_b[..., None, :, :]
  inter = jnp.minimum(a[..., 0], b[..., 0]) * jnp.minimum(a[..., 1], b[..., 1])
  union = a[..., 0] * a[..., 1] + b[..., 0] * b[..., 1] - inter
  return inter / jnp.maximum(union, 1e-12)


def yolo_loss(maps: Sequence[jax.Array], anchors: Sequence[np.ndarray], gt_boxes: jax.Array,
              gt_labels: jax.Array, gt_mask: jax.Array, *,
              ignore_threshold: float = 0.5) -> dict[str, jax.Array]:
  """Per-image YOLOv3 loss sums (see the module doc).

  Args:
    maps: per map raw f32[B, H, W, A, 5 + C], in the order of `anchors`.
    anchors: per map f32[A, 2] (w, h) normalised, numpy (static: the assignment of
      boxes to maps is laid out from them).
    gt_boxes: f32[B, M, 4] (ymin, xmin, ymax, xmax) normalised; gt_labels int32[B, M]
      in 0..C-1; gt_mask bool[B, M] real boxes.
    ignore_threshold: IoU above which a prediction's no-object term is dropped.

  Returns:
    {'box': f32[B], 'objectness': f32[B], 'class': f32[B], 'num_positive': f32[B]
     (responsible predictions)}.
  """
  dtype = jnp.promote_types(maps[0].dtype, jnp.float32)
  gt_boxes = gt_boxes.astype(dtype)
  num_classes = maps[0].shape[-1] - 5
  gx, gy, gw, gh = box_ops.to_center(gt_boxes)                          # each [B, M]
  gt_wh = jnp.stack([gw, gh], -1)
  all_anchors = jnp.asarray(np.concatenate(anchors), dtype)              # [T, 2]
  which_map = np.concatenate([np.full(len(a), k) for k, a in enumerate(anchors)])
  which_anchor = np.concatenate([np.arange(len(a)) for a in anchors])
  best = jnp.argmax(shape_iou(gt_wh, all_anchors), axis=-1)             # [B, M]
  best_map = jnp.asarray(which_map)[best]
  best_wh = all_anchors[best]                                            # [B, M, 2]
  onehot = jax.nn.one_hot(gt_labels, num_classes, dtype=dtype)           # [B, M, C]
  safe_wh = jnp.where(gt_mask[..., None], gt_wh, best_wh)                # no log(0) on padding
  t_wh = jnp.log(jnp.maximum(safe_wh, 1e-12) / best_wh)                  # [B, M, 2]
  weight = 2.0 - gw * gh
  bce = optax.sigmoid_binary_cross_entropy

  out = {'box': 0.0, 'objectness': 0.0, 'class': 0.0, 'num_positive': 0.0}
  for k, raw in enumerate(maps):
    b, h, w, a, _ = raw.shape
    raw = raw.astype(dtype)
    i = jnp.clip(jnp.floor(gy * h), 0, h - 1).astype(jnp.int32)
    j = jnp.clip(jnp.floor(gx * w), 0, w - 1).astype(jnp.int32)
    slot = (i * w + j) * a + jnp.asarray(which_anchor)[best]             # [B, M]
    mine = gt_mask & (best_map == k)
    match = (jnp.arange(h * w * a)[None, :, None] == slot[:, None, :]) & mine[:, None, :]
    positive = jnp.any(match, axis=-1)                                   # [B, P]
    last = jnp.argmax(jnp.where(match, jnp.arange(match.shape[-1]) + 1, 0), axis=-1)
    take = lambda x: jnp.take_along_axis(x, last[..., None], axis=1)     # [B, M, n] → [B, P, n]
    t_xy = take(jnp.stack([gx * w - j, gy * h - i], -1))
    t_size = take(t_wh)
    box_weight = take(weight[..., None])[..., 0]
    cls_target = jnp.minimum(jnp.einsum('bpm,bmc->bpc', match.astype(dtype), onehot), 1.0)
    pred = raw.reshape(b, h * w * a, -1)
    box = (jnp.sum(bce(pred[..., :2], t_xy), -1)
           + 0.5 * jnp.sum(jnp.square(pred[..., 2:4] - t_size), -1)) * box_weight
    decoded = jax.lax.stop_gradient(
        decode_map(raw, jnp.asarray(anchors[k], dtype)).reshape(b, h * w * a, 4))
    overlap = jnp.where(gt_mask[:, None, :], box_ops.iou(decoded, gt_boxes), 0.0)
    ignored = (jnp.max(overlap, axis=-1) > ignore_threshold) & ~positive
    obj = bce(pred[..., 4], positive.astype(dtype))
    cls = jnp.sum(bce(pred[..., 5:], cls_target), -1)
    out['box'] = out['box'] + jnp.sum(jnp.where(positive, box, 0.0), 1)
    out['objectness'] = out['objectness'] + jnp.sum(jnp.where(ignored, 0.0, obj), 1)
    out['class'] = out['class'] + jnp.sum(jnp.where(positive, cls, 0.0), 1)
    out['num_positive'] = out['num_positive'] + jnp.sum(positive, 1).astype(dtype)
  return out


def kmeans_anchors(wh: np.ndarray, k: int, seed: int = 0, max_iter: int = 300) -> np.ndarray:
  """k anchor shapes from box sizes by k-means with distance 1 − IoU of (w, h) aligned at
  a corner (YOLOv2 §2): k-means++ seeding under that distance, then Lloyd iterations
  (assign each box to the centroid of highest IoU, centroid = mean of its boxes) until
  the assignment stops changing.

  Args:
    wh: float[N, 2] box widths and heights (normalised or pixels; the result has the
      same unit); boxes with a non-positive side are dropped.
    k: number of anchors.
    seed: the seeding's random generator seed.

  Returns:
    float32[k, 2] (w, h), by increasing area (Darknet's anchor order).

  Raises:
    UserError: k < 1 or fewer than k distinct boxes.
  """
  wh = np.asarray(wh, np.float64).reshape(-1, 2)
  wh = wh[(wh > 0).all(1)]
  if k < 1:
    raise UserError(f'k must be at least 1, got {k}')
  if len(np.unique(wh, axis=0)) < k:
    raise UserError(f'k={k} anchors need at least {k} distinct box shapes, got '
                    f'{len(np.unique(wh, axis=0))}; use a smaller --k or more data')

  rng = np.random.default_rng(seed)
  centroids = wh[rng.integers(len(wh))][None]
  while len(centroids) < k:
    d = 1.0 - _shape_iou_np(wh, centroids).max(1)
    p = d / d.sum() if d.sum() > 0 else None
    centroids = np.concatenate([centroids, wh[rng.choice(len(wh), p=p)][None]])
  assign = None
  for _ in range(max_iter):
    new = _shape_iou_np(wh, centroids).argmax(1)
    if assign is not None and (new == assign).all():
      break
    assign = new
    for c in range(k):
      if (assign == c).any():
        centroids[c] = wh[assign == c].mean(0)
  return centroids[np.argsort(centroids.prod(1), kind='stable')].astype(np.float32)


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
  """Average over boxes float[N, 2] of the best shape IoU with any anchor float[k, 2]
  (YOLOv2's 'Avg IOU' of a set of anchors)."""
  wh = np.asarray(wh, np.float64).reshape(-1, 2)
  return float(_shape_iou_np(wh[(wh > 0).all(1)], np.asarray(anchors, np.float64)).max(1).mean())


def _shape_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """`shape_iou` in numpy float64: [N, 2], [K, 2] → [N, K]."""
  inter = np.minimum(a[:, None, 0], b[None, :, 0]) * np.minimum(a[:, None, 1], b[None, :, 1])
  return inter / (a[:, None].prod(-1) + b[None].prod(-1) - inter)
