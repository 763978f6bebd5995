"""`DetectionTask`: SSD training and mAP evaluation in the one loop (`cvjax.train.fit`).

Registered as task 'detection' (`TrainConfig(task='detection', model='ssd300_vgg16',
dataset='voc/07+12')`); `cvjax.train.tasks.get_task` imports this module when a
config names it.

Loss normalisation. torchvision divides the batch's summed MultiBox loss by
N = max(1, positives in the batch). Under data parallelism each device sees b
images and the step averages (pmean) the devices' gradients, so each device
returns

    loss_d = n_devices · Σ_{its images} (localisation + confidence) / max(1, N_global)

with N_global the positives of the whole global batch (a psum). The mean over
devices is then exactly the single-device loss Σ / max(1, N) of the global
batch, and so are the averaged gradients: 1 and 8 devices train alike.
Outside a mapped axis (a plain single-device step) n_devices = 1 and N is local.
`label_smoothing` is not used by the MultiBox loss.

Evaluation. `eval_outputs` runs decode + NMS on the device and passes each
image's detections and ground truth back; the evaluator computes, on the host,
  map50  VOC AP@0.5 (difficult boxes ignored; 11-point for VOC2007 test sets,
         area under the curve otherwise) — the main metric,
  map    COCO AP@[.5:.95] (crowd and difficult ignored), map75 COCO AP@0.75,
  loss   the MultiBox loss over the split (crowd boxes left out).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cvjax.detection import loss as multibox
from cvjax.detection import metrics, postprocess
from cvjax.errors import UserError

AXIS = 'data'  # the mesh axis of cvjax.train.steps


def _global_sum(x):
  """(psum of x over the data axis, number of devices); (x, 1) when not mapped."""
  try:
    return jax.lax.psum(x, AXIS), jax.lax.psum(1, AXIS)
  except NameError:  # traced outside shard_map: a plain single-device step
    return x, 1


class DetectionEvaluator:
  """Collects per-image detections and ground truth; computes VOC and COCO mAP."""

  def __init__(self, num_classes: int, voc_metric: str = 'voc12'):
    self.num_classes = num_classes
    self.use_07 = voc_metric == 'voc07'
    self.gt, self.dt = [], []
    self.images = 0
    self.loss_sum = 0.0
    self.positives = 0.0

  def update(self, sums: dict, per_example: dict) -> None:
    self.loss_sum += float(sums['loss_sum'])
    self.positives += float(sums['positives'])
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
            'loss': self.loss_sum / max(self.positives, 1.0), 'count': self.images}


class DetectionTask:
  """Images → SSD head outputs; MultiBox loss; VOC/COCO mAP.

  Batches: see `cvjax.detection.data` ('image', 'boxes', 'labels', 'box_mask'; in
  eval also 'difficult', 'crowd', 'image_size', 'mask'). `dataset_meta(config)`
  also fixes the anchors and post-processing of the configured model.
  """
  name = 'detection'
  main_metric = 'map50'
  main_metric_higher_is_better = True

  def __init__(self):
    self.anchors = None
    self.postprocess = postprocess.PostprocessConfig()
    self.num_classes = None
    self.voc_metric = 'voc12'
    self.class_names = None

  def _anchors(self) -> jax.Array:
    if self.anchors is None:
      raise RuntimeError('DetectionTask.dataset_meta(config) must run first (it fixes the anchors)')
    return jnp.asarray(self.anchors)

  def loss(self, outputs, batch, label_smoothing: float = 0.0):
    """Per-device loss, normalised as in the module doc. outputs: (locations f32[b, A, 4],
    logits f32[b, A, K+1]); batch: 'boxes' f32[b, M, 4], 'labels' int32[b, M], 'box_mask' bool[b, M]."""
    del label_smoothing
    locations, logits = outputs
    parts = multibox.multibox_loss(locations, logits, self._anchors(), batch['boxes'],
                                   batch['labels'], batch['box_mask'])
    positives, devices = _global_sum(jnp.sum(parts['num_positive']))
    scale = devices / jnp.maximum(positives, 1.0)
    loc = jnp.sum(parts['localization']) * scale
    conf = jnp.sum(parts['confidence']) * scale
    return loc + conf, {'loc_loss': loc, 'conf_loss': conf,
                        'positives': jnp.mean(parts['num_positive'])}

  def eval_outputs(self, outputs, batch):
    locations, logits = outputs
    anchors = self._anchors()
    mask = batch['mask']
    gt_mask = batch['box_mask'] & mask[:, None]
    parts = multibox.multibox_loss(locations, logits, anchors, batch['boxes'], batch['labels'],
                                   gt_mask & ~batch['crowd'])
    sums = {'loss_sum': jnp.sum((parts['localization'] + parts['confidence']) * mask),
            'positives': jnp.sum(parts['num_positive'] * mask)}
    det = postprocess.detect(locations, logits, anchors, self.postprocess)
    per_example = {'det_boxes': det.boxes, 'det_scores': det.scores, 'det_classes': det.classes,
                   'det_valid': det.valid & mask[:, None],
                   'gt_boxes': batch['boxes'], 'gt_labels': batch['labels'], 'gt_mask': gt_mask,
                   'gt_difficult': batch['difficult'], 'gt_crowd': batch['crowd'],
                   'image_size': batch['image_size'], 'mask': mask}
    return sums, per_example

  def evaluator(self):
    return DetectionEvaluator(self.num_classes, self.voc_metric)

  def dataset_meta(self, config):
    from cvjax import models  # pylint: disable=g-import-not-at-top
    from cvjax.models import registry  # pylint: disable=g-import-not-at-top
    from cvjax.detection import data  # pylint: disable=g-import-not-at-top
    if registry.model_task(config.model) != 'detection':
      raise UserError(f"task 'detection' needs a detection model, got {config.model!r}; "
                      f"choose one of {', '.join(registry.list_models('detection'))}")
    data.spec(config.dataset)  # unknown dataset: fail before anything is prepared
    data.parse_augment(config.augment)
    meta = data.dataset_meta(config.dataset, data_dir=config.data_dir,
                             raw_data_dir=config.raw_data_dir)
    model = models.get_model(config.model, num_classes=meta.num_classes, **config.model_kwargs)
    size = config.image_size or models.model_input_shape(config.model)[0]
    self.anchors = model.default_boxes(size)
    self.postprocess = model.postprocess_config()
    self.num_classes = meta.num_classes
    self.voc_metric = data.spec(config.dataset).voc_metric
    self.class_names = meta.class_names
    return meta

  def train_batches(self, run, start_step):
    from cvjax.detection import data  # pylint: disable=g-import-not-at-top
    from cvjax.train import steps  # pylint: disable=g-import-not-at-top
    c = run.config
    return data.train_batches(
        c.dataset, global_batch_size=c.batch_size, image_size=run.image_size,
        sharding=steps.batch_sharded(run.mesh), seed=c.seed, start_step=start_step,
        augment=c.augment, data_dir=c.data_dir, raw_data_dir=c.raw_data_dir)

  def eval_batches(self, run, split):
    from cvjax.detection import data  # pylint: disable=g-import-not-at-top
    from cvjax.train import steps  # pylint: disable=g-import-not-at-top
    c = run.config
    return data.eval_batches(
        c.dataset, split=split, global_batch_size=c.eval_batch_size or c.batch_size,
        image_size=run.image_size, sharding=steps.batch_sharded(run.mesh),
        data_dir=c.data_dir, raw_data_dir=c.raw_data_dir)

  def predictor(self, model, variables: dict, image_size: int):
    """predict(images) for `cvjax.restore`: uint8[B, H, W, 3] (or a list of uint8[H, W, 3]
    of any sizes) → one dict per image: 'boxes' f32[n, 4] (ymin, xmin, ymax, xmax)
    normalised to that image, 'classes' int32[n], 'scores' f32[n], best first."""
    from cvjax.detection import augment  # pylint: disable=g-import-not-at-top
    from cvjax.data import datasets  # pylint: disable=g-import-not-at-top
    anchors = jnp.asarray(model.default_boxes(image_size))  # no dataset needed (converted runs)
    config = model.postprocess_config()

    @jax.jit
    def run(x):
      locations, logits = model.apply(variables, x, train=False)
      return postprocess.detect(locations, logits, anchors, config)

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
        batch.append(augment.resize(x, image_size).numpy())
      det = jax.device_get(run(np.stack(batch)))
      return [{'boxes': det.boxes[i][det.valid[i]], 'classes': det.classes[i][det.valid[i]],
               'scores': det.scores[i][det.valid[i]]} for i in range(len(batch))]
    return predict


def register() -> None:
  from cvjax.train.tasks import register_task  # pylint: disable=g-import-not-at-top
  register_task('detection', DetectionTask)


register()
