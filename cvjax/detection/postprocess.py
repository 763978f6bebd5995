"""From head outputs to detections: decode, per-class threshold, NMS, top-k — batched and jittable.

torchvision's `SSD.postprocess_detections`, with fixed shapes:
  1. softmax over the K + 1 classes; decode the codes against the anchors; clip to the image
     (`detect`; other families decode their own outputs and start at 2 with `detect_boxes`);
  2. per class: keep scores > score_threshold, at most `candidates_per_class` of them
     (the highest);
  3. greedy NMS within each class (a box is dropped when its IoU with a kept,
     higher-scoring box of the same class is > nms_threshold);
  4. the `max_detections` highest-scoring survivors over all classes.
Instead of variable-length lists, every image returns `max_detections` rows and
a `valid` mask; rows past the detections found are zero with valid False.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from cvjax.detection import boxes as box_ops
from cvjax.models.ssd import PostprocessConfig  # noqa: F401  (re-exported: the model owns its settings)


def nms(boxes: jax.Array, valid: jax.Array, threshold: float) -> jax.Array:
  """Greedy non-maximum suppression of boxes already sorted by decreasing score.

  boxes f32[..., N, 4], valid bool[..., N] → keep bool[..., N]. Box i is kept
  when valid and no kept box j < i has IoU(i, j) > threshold. Leading axes are
  independent problems (e.g. classes), solved together.
  """
  n = boxes.shape[-2]
  overlaps = box_ops.iou(boxes, boxes)                                   # [..., N, N]
  later = jnp.arange(n)[None, :] > jnp.arange(n)[:, None]               # j > i
  suppresses = (overlaps > threshold) & later                            # i suppresses j

  def step(i, keep):
    row = jax.lax.dynamic_index_in_dim(suppresses, i, axis=-2, keepdims=False)  # [..., N]
    kept_i = jax.lax.dynamic_index_in_dim(keep, i, axis=-1, keepdims=True)      # [..., 1]
    return keep & ~(row & kept_i)

  return jax.lax.fori_loop(0, n, step, valid)


@dataclasses.dataclass(frozen=True)
class Detections:
  """Per-image detections, padded: boxes f32[B, D, 4] (normalised), scores f32[B, D],
  classes int32[B, D] (0..K-1), valid bool[B, D]; sorted by decreasing score."""
  boxes: jax.Array
  scores: jax.Array
  classes: jax.Array
  valid: jax.Array

  def as_dict(self) -> dict[str, jax.Array]:
    return dataclasses.asdict(self)


jax.tree_util.register_dataclass(Detections, data_fields=['boxes', 'scores', 'classes', 'valid'],
                                 meta_fields=[])


def _detect_one(boxes, probs, config: PostprocessConfig):
  """One image: boxes f32[A, 4] (decoded, clipped), probs f32[A, K] (background dropped)."""
  k = min(config.candidates_per_class, probs.shape[0])
  scores, index = jax.lax.top_k(probs.T, k)                              # [K, k], sorted
  candidates = boxes[index]                                              # [K, k, 4]
  valid = scores > config.score_threshold
  keep = nms(candidates, valid, config.nms_threshold)
  flat_scores = jnp.where(keep, scores, -jnp.inf).reshape(-1)
  d = min(config.max_detections, flat_scores.shape[0])
  top_scores, top = jax.lax.top_k(flat_scores, d)
  ok = top_scores > -jnp.inf
  classes = (top // k).astype(jnp.int32)
  out_boxes = candidates.reshape(-1, 4)[top]
  pad = config.max_detections - d
  fields = (jnp.where(ok[:, None], out_boxes, 0.0), jnp.where(ok, top_scores, 0.0),
            jnp.where(ok, classes, 0), ok)
  if pad:
    fields = tuple(jnp.concatenate([f, jnp.zeros((pad,) + f.shape[1:], f.dtype)]) for f in fields)
  return fields


def detect(locations: jax.Array, logits: jax.Array, anchors: jax.Array,
           config: PostprocessConfig = PostprocessConfig()) -> Detections:
  """Detections from raw SSD outputs.

  Args:
    locations: f32[B, A, 4] predicted codes (dx, dy, dw, dh).
    logits: f32[B, A, K + 1] class logits, column 0 background.
    anchors: f32[A, 4] default boxes, normalised.
    config: thresholds and sizes.

  Returns:
    `Detections` with D = config.max_detections rows per image.
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1:]
  boxes = box_ops.clip(box_ops.decode(locations.astype(jnp.float32), anchors))
  return detect_boxes(boxes, probs, config)


def detect_boxes(boxes: jax.Array, scores: jax.Array,
                 config: PostprocessConfig = PostprocessConfig()) -> Detections:
  """Detections from decoded boxes and per-class scores (steps 2-4 of the module doc).

  Args:
    boxes: f32[B, A, 4] (ymin, xmin, ymax, xmax), normalised, clipped to the image.
    scores: f32[B, A, K] score of each box for each object class (no background column).
    config: thresholds and sizes.

  Returns:
    `Detections` with D = config.max_detections rows per image.
  """
  boxes, scores, classes, valid = jax.vmap(lambda b, p: _detect_one(b, p, config))(
      boxes.astype(jnp.float32), scores.astype(jnp.float32))
  return Detections(boxes=boxes, scores=scores, classes=classes, valid=valid)
