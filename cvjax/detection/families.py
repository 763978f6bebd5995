"""What a detector family's outputs mean: its loss terms and its decoding to detections.

    head = family_for(model, image_size)
    parts = head.loss(outputs, boxes, labels, box_mask)     # per-image sums, `LossParts`
    detections = head.detect(outputs)                       # `postprocess.Detections`

The family is the model class's `family` attribute ('ssd': `cvjax.models.ssd`, locations
and logits against default boxes, MultiBox loss; 'yolo': `cvjax.models.yolo`, per-scale
raw maps, YOLOv3 loss). `DetectionTask`, `cvjax.restore(...).predict` and the benchmarks
go through here, so one loop and one evaluator serve every family.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from cvjax.detection import multibox
from cvjax.detection import postprocess, yolo
from cvjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class LossParts:
  """A batch's loss, per image.

  terms: {metric name: f32[B]} loss sums whose total is the loss.
  normaliser: f32[B]; the task divides the summed terms by the normaliser summed over the
    global batch (SSD: matched default boxes; YOLO: 1 per image, a per-image mean).
  positives: f32[B] predictions with an object target (reported as 'positives').
  """
  terms: dict[str, jax.Array]
  normaliser: jax.Array
  positives: jax.Array


class SSDFamily:
  """SSD: outputs (locations f32[B, A, 4], logits f32[B, A, K + 1]); MultiBox loss."""

  def __init__(self, model, image_size: int | None = None):
    self.anchors = jnp.asarray(model.default_boxes(image_size))
    self.config = model.postprocess_config()

  def loss(self, outputs, boxes, labels, mask) -> LossParts:
    locations, logits = outputs
    parts = multibox.multibox_loss(locations, logits, self.anchors, boxes, labels, mask)
    return LossParts({'loc_loss': parts['localization'], 'conf_loss': parts['confidence']},
                     parts['num_positive'], parts['num_positive'])

  def detect(self, outputs) -> postprocess.Detections:
    locations, logits = outputs
    return postprocess.detect(locations, logits, self.anchors, self.config)


class YOLOFamily:
  """YOLOv3: outputs per-map raw f32[B, H, W, A, 5 + C], coarsest first; `yolo.yolo_loss`."""

  def __init__(self, model, image_size: int | None = None):
    del image_size  # the maps' sizes come with them; the anchors are normalised
    self.anchors = model.scale_anchors()
    self.ignore_threshold = model.ignore_threshold
    self.config = model.postprocess_config()

  def loss(self, outputs, boxes, labels, mask) -> LossParts:
    parts = yolo.yolo_loss(outputs, self.anchors, boxes, labels, mask,
                           ignore_threshold=self.ignore_threshold)
    return LossParts({'box_loss': parts['box'], 'obj_loss': parts['objectness'],
                      'cls_loss': parts['class']},
                     jnp.ones_like(parts['num_positive']), parts['num_positive'])

  def detect(self, outputs) -> postprocess.Detections:
    return yolo.detect(outputs, self.anchors, self.config)


HEADS = {'ssd': SSDFamily, 'yolo': YOLOFamily}


def family_for(model, image_size: int | None = None):
  """The head strategy of `model`'s family, for inputs of `image_size`² (default: the model's)."""
  family = getattr(type(model), 'family', None)
  if family not in HEADS:
    raise UserError(f'{type(model).__name__} is not a detector cvjax.detection knows '
                    f'(family {family!r}; known: {", ".join(HEADS)})')
  return HEADS[family](model, image_size)
