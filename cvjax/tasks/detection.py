"""`DetectionTask`: detector training and mAP evaluation in the one loop (`cvjax.train.fit`).

Task 'detection' of `cvjax.tasks` (`TrainConfig(task='detection', model='ssd300_vgg16',
dataset='voc/07+12')`). What the model's outputs mean — the loss terms and the decoding
to boxes — comes from its family (`cvjax.detection.families`: SSD's MultiBox loss against
default boxes, YOLOv3's loss against anchors); everything else here is shared.

Loss normalisation. torchvision divides the batch's summed MultiBox loss by
N = max(1, positives in the batch); YOLOv3 by the number of images (a per-image
mean). Under data parallelism each device sees b images and the step averages
(pmean) the devices' gradients, so each device returns

    loss_d = n_devices · Σ_{its images} (loss terms) / max(1, N_global)

with N_global the normaliser (positives, or images) of the whole global batch (a psum).
The mean over devices is then exactly the single-device loss Σ / max(1, N) of the global
batch, and so are the averaged gradients: 1 and 8 devices train alike.
Outside a mapped axis (`axis_name=None`, a plain single-device step) n_devices = 1
and N is local.
`label_smoothing` is not used by the detection losses.

Evaluation. `eval_outputs` runs decode + NMS on the device and passes each
image's detections and ground truth back; the evaluator computes, on the host,
  map50  VOC AP@0.5 (difficult boxes ignored; 11-point for VOC2007 test sets,
         area under the curve otherwise) — the main metric,
  map    COCO AP@[.5:.95] (crowd and difficult ignored), map75 COCO AP@0.75,
  loss   the training loss over the split, normalised as above (crowd boxes left out).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cvjax.models import registry
from cvjax.data import datasets
from cvjax.detection import families, metrics
from cvjax.errors import UserError
from cvjax.train.task import Task


# The input pipeline loads TensorFlow, which a run refused for a bad flag, config or
# workdir never needs: imported on first use.
def _data():
  from cvjax.detection import data  # pylint: disable=g-import-not-at-top
  return data


def _global_sum(x, axis_name: str | None):
  """(sum of x over the data axis, number of devices); (x, 1) on a single device."""
  if axis_name is None:
    return x, 1
  return jax.lax.psum(x, axis_name), jax.lax.psum(1, axis_name)


class DetectionEvaluator:
  """Collects per-image detections and ground truth; computes VOC and COCO mAP."""

  def __init__(self, num_classes: int, voc_metric: str = 'voc12'):
    self.num_classes = num_classes
    self.use_07 = voc_metric == 'voc07'
    self.gt, self.dt = [], []
    self.images = 0
    self.loss_sum = 0.0
    self.normaliser = 0.0

  def update(self, sums: dict, per_example: dict) -> None:
    self.loss_sum += float(sums['loss_sum'])
    self.normaliser += float(sums['normaliser'])
    p = {k: np.asarray(v) for k, v in per_example.items()}
    real = np.flatnonzero(p['mask'])
    for i in real:
      image = self.images
      self.images += 1
      h, w = p['image_size'][i].astype(np.float64)
      scale = np.array([w, h, w, h])
      to_xy = lambda b: b[:, [1, 0, 3, 2]] * scale          # (ymin, xmin, ...) → pixels x1 y1 x2 y2
      g = p['gt_mask'][i]
      self.gt.append((np.full(g.sum(), image), p['gt_labels'][i][g], to_xy(p['gt_boxes'][i][g]),
                      p['gt_crowd'][i][g], p['gt_difficult'][i][g]))
      d = p['det_valid'][i]
      self.dt.append((np.full(d.sum(), image), p['det_classes'][i][d],
                      to_xy(p['det_boxes'][i][d]), p['det_scores'][i][d]))

  def result(self) -> dict[str, float]:
    cat = lambda rows, j, shape=(0,): (np.concatenate([r[j] for r in rows]) if rows
                                       else np.zeros(shape))
    gt_boxes, dt_boxes = cat(self.gt, 2, (0, 4)), cat(self.dt, 2, (0, 4))
    crowd, difficult = cat(self.gt, 3).astype(bool), cat(self.gt, 4).astype(bool)
    categories = np.arange(self.num_classes)
    dt = metrics.Boxes(image=cat(self.dt, 0), category=cat(self.dt, 1), boxes=dt_boxes,
                       scores=cat(self.dt, 3))
    coco = metrics.coco_metrics(
        metrics.Boxes(image=cat(self.gt, 0), category=cat(self.gt, 1), boxes=gt_boxes,
                      crowd=crowd, ignore=difficult), dt,
        image_ids=np.arange(self.images), category_ids=categories)
    voc = metrics.voc_metrics(
        metrics.Boxes(image=cat(self.gt, 0), category=cat(self.gt, 1), boxes=gt_boxes,
                      ignore=difficult | crowd), dt, use_07_metric=self.use_07,
        category_ids=categories)
    return {'map50': voc['mAP'], 'map': coco['AP'], 'map75': coco['AP75'],
            'loss': self.loss_sum / max(self.normaliser, 1.0), 'count': self.images}


class DetectionTask(Task):
  """Images → detector outputs; the family's loss (`families`); VOC/COCO mAP.

  Batches: see `cvjax.detection.data` ('image', 'boxes', 'labels', 'box_mask'; in
  eval also 'difficult', 'crowd', 'image_size', 'mask').
  """
  name = 'detection'
  main_metric = 'map50'
  main_metric_higher_is_better = True
  example_keys = ('image', 'boxes', 'labels', 'box_mask')

  def __init__(self, config, meta, *, head=None):
    """head: the family's loss and decoding (`families`); default: `families.family_for` the
    model `config` describes at the task's input size (its default boxes or anchors).
    Tests of the jitted hooks pass the head of their own module."""
    super().__init__(config, meta)
    self.head = head if head is not None else families.family_for(self.build_model(), self.image_size)

  def loss(self, outputs, batch, axis_name):
    """Per-device loss, normalised as in the module doc (label smoothing is not used).
    outputs: the model's (see `families`); batch: 'boxes' f32[b, M, 4], 'labels' int32[b, M],
    'box_mask' bool[b, M]. Metrics: each loss term (SSD 'loc_loss', 'conf_loss'; YOLO
    'box_loss', 'obj_loss', 'cls_loss') and 'positives' per image."""
    parts = self.head.loss(outputs, batch['boxes'], batch['labels'], batch['box_mask'])
    normaliser, devices = _global_sum(jnp.sum(parts.normaliser), axis_name)
    scale = devices / jnp.maximum(normaliser, 1.0)
    terms = {k: jnp.sum(v) * scale for k, v in parts.terms.items()}
    return sum(terms.values()), {**terms, 'positives': jnp.mean(parts.positives)}

  def eval_outputs(self, outputs, batch):
    head = self.head
    mask = batch['mask']
    gt_mask = batch['box_mask'] & mask[:, None]
    parts = head.loss(outputs, batch['boxes'], batch['labels'], gt_mask & ~batch['crowd'])
    sums = {'loss_sum': jnp.sum(sum(parts.terms.values()) * mask),
            'normaliser': jnp.sum(parts.normaliser * mask)}
    det = head.detect(outputs)
    per_example = {'det_boxes': det.boxes, 'det_scores': det.scores, 'det_classes': det.classes,
                   'det_valid': det.valid & mask[:, None],
                   'gt_boxes': batch['boxes'], 'gt_labels': batch['labels'], 'gt_mask': gt_mask,
                   'gt_difficult': batch['difficult'], 'gt_crowd': batch['crowd'],
                   'image_size': batch['image_size'], 'mask': mask}
    return sums, per_example

  def evaluator(self):
    return DetectionEvaluator(self.meta.num_classes, _data().spec(self.config.dataset).voc_metric)

  def preprocessing(self):
    return ''  # images in [0, 1]: the models normalise internally

  @classmethod
  def check(cls, config):
    if registry.model_task(config.model) != 'detection':
      raise UserError(f"task 'detection' needs a detection model, got {config.model!r}; "
                      f"choose one of {', '.join(registry.list_models('detection'))}")
    _data().spec(config.dataset)  # unknown dataset: fail before anything is prepared
    super().check(config)

  @classmethod
  def dataset_meta(cls, config):
    return _data().dataset_meta(config.dataset, data_dir=config.data_dir,
                                raw_data_dir=config.raw_data_dir)

  def data_spec(self):
    return _data().data_spec(self.config.dataset, image_size=self.image_size,
                             data_dir=self.config.data_dir)

  def predictor(self, model, variables: dict):
    """predict(images) for `cvjax.restore`: uint8[B, H, W, 3] (or a list of uint8[H, W, 3]
    of any sizes) → one dict per image: 'boxes' f32[n, 4] (ymin, xmin, ymax, xmax)
    normalised to that image, 'classes' int32[n], 'scores' f32[n], best first."""
    image_size = self.image_size
    head = families.family_for(model, image_size)  # the model `cvjax.restore` built

    @jax.jit
    def detect(x):
      return head.detect(model.apply(variables, x, train=False))

    def predict(images: Any) -> list[dict[str, np.ndarray]]:
      tf = datasets.tensorflow()
      if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
      batch = []
      for image in images:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
          raise UserError(f'predict wants uint8[H, W, 3] images, got {image.dtype}{list(image.shape)}')
        x = tf.image.convert_image_dtype(tf.constant(image), tf.float32)
        if image.shape[-1] == 1:
          x = tf.image.grayscale_to_rgb(x)
        batch.append(tf.image.resize(x, [image_size] * 2, antialias=False).numpy())
      det = jax.device_get(detect(np.stack(batch)))
      return [{'boxes': det.boxes[i][det.valid[i]], 'classes': det.classes[i][det.valid[i]],
               'scores': det.scores[i][det.valid[i]]} for i in range(len(batch))]
    return predict

