"""Scores detections in COCO format: COCO AP/AR or PASCAL VOC mAP.

    python -m cvjax.evaluate --ground_truth=GT.json --detections=DETS.json \\
        --metric=coco|voc07|voc12 [--json]

GT.json is a COCO annotation file ('images', 'annotations' with image_id,
category_id, bbox [x, y, w, h] in pixels, area, iscrowd; 'categories'); DETS.json a
COCO results list ([{image_id, category_id, bbox, score}, ...]). The numbers are
cvjax's own (`cvjax.detection.metrics`), equal to pycocotools' COCOeval for
--metric=coco. For VOC metrics an annotation is "difficult" (ignored) when it has
`difficult`, `ignore` or `iscrowd` set; AP uses IoU > 0.5, 11-point (voc07) or
area (voc12) interpolation.

Prints a table, or with --json one JSON object: AP, AP50, AP75, APs, APm, APl,
AR1, AR10, AR100, ARs, ARm, ARl (coco); mAP and per_class {name: AP} (voc).
Bad input: one `error: ...` line on stderr, exit status 2.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Sequence

from absl import flags
import numpy as np

from cvjax import cli
from cvjax.detection import metrics
from cvjax.detection.metrics import Boxes
from cvjax.errors import UserError

METRICS = ('coco', 'voc07', 'voc12')

FLAGS = flags.FlagValues()
flags.DEFINE_string('ground_truth', None, 'COCO annotation JSON.', flag_values=FLAGS)
flags.DEFINE_string('detections', None, 'COCO results JSON list.', flag_values=FLAGS)
flags.DEFINE_string('metric', 'coco', 'coco, voc07 or voc12.', flag_values=FLAGS)
flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.', flag_values=FLAGS)
flags.mark_flags_as_required(['ground_truth', 'detections'], flag_values=FLAGS)

_COCO_LABELS = {
    'AP': 'AP @[IoU=0.50:0.95 | area=   all | maxDets=100]',
    'AP50': 'AP @[IoU=0.50      | area=   all | maxDets=100]',
    'AP75': 'AP @[IoU=0.75      | area=   all | maxDets=100]',
    'APs': 'AP @[IoU=0.50:0.95 | area= small | maxDets=100]',
    'APm': 'AP @[IoU=0.50:0.95 | area=medium | maxDets=100]',
    'APl': 'AP @[IoU=0.50:0.95 | area= large | maxDets=100]',
    'AR1': 'AR @[IoU=0.50:0.95 | area=   all | maxDets=  1]',
    'AR10': 'AR @[IoU=0.50:0.95 | area=   all | maxDets= 10]',
    'AR100': 'AR @[IoU=0.50:0.95 | area=   all | maxDets=100]',
    'ARs': 'AR @[IoU=0.50:0.95 | area= small | maxDets=100]',
    'ARm': 'AR @[IoU=0.50:0.95 | area=medium | maxDets=100]',
    'ARl': 'AR @[IoU=0.50:0.95 | area= large | maxDets=100]',
}


def _load(path: str, what: str):
  if not os.path.exists(path):
    raise UserError(f'--{what}={path} does not exist')
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f'--{what}={path} is not JSON ({e.msg} at line {e.lineno})') from None


def _xyxy(bbox, where: str):
  try:
    x, y, w, h = (float(v) for v in bbox)
  except (TypeError, ValueError):
    raise UserError(f'{where}: bbox must be [x, y, width, height], got {bbox!r}') from None
  return [x, y, x + w, y + h]


def read_coco(ground_truth: dict, detections: list):
  """COCO-format dicts → (gt Boxes, dt Boxes, image ids, {category id: name})."""
  if not isinstance(ground_truth, dict) or not all(
      k in ground_truth for k in ('images', 'annotations', 'categories')):
    raise UserError('--ground_truth must be a COCO annotation file with "images", '
                    '"annotations" and "categories"')
  if not isinstance(detections, list):
    raise UserError('--detections must be a COCO results list: [{"image_id", "category_id", '
                    '"bbox", "score"}, ...]')
  image_ids = [im['id'] for im in ground_truth['images']]
  categories = {c['id']: c.get('name', str(c['id'])) for c in ground_truth['categories']}
  anns = ground_truth['annotations']
  try:
    gt_boxes = [_xyxy(a['bbox'], f'annotation {a.get("id")}') for a in anns]
    gt = Boxes(image=[a['image_id'] for a in anns], category=[a['category_id'] for a in anns],
               boxes=np.asarray(gt_boxes).reshape(-1, 4),
               area=[a.get('area', (b[2] - b[0]) * (b[3] - b[1])) for a, b in zip(anns, gt_boxes)],
               crowd=[bool(a.get('iscrowd', 0)) for a in anns],
               ignore=[bool(a.get('difficult', 0) or a.get('ignore', 0)) for a in anns])
    dt = Boxes(image=[d['image_id'] for d in detections],
               category=[d['category_id'] for d in detections],
               boxes=np.asarray([_xyxy(d['bbox'], 'detection') for d in detections]).reshape(-1, 4),
               scores=[float(d['score']) for d in detections])
  except KeyError as e:
    raise UserError(f'a record lacks the field {e.args[0]!r}') from None
  unknown = set(dt.image.tolist()) - set(image_ids)
  if unknown:
    raise UserError(f'{len(unknown)} detections refer to images not in the ground truth '
                    f'(e.g. image_id {sorted(unknown)[0]})')
  return gt, dt, image_ids, categories


def evaluate(ground_truth: dict, detections: list, metric: str) -> dict:
  """The numbers `main` prints, as a dict (see module doc)."""
  if metric not in METRICS:
    raise UserError(f'unknown metric {metric!r}; valid choices: {", ".join(METRICS)}')
  gt, dt, image_ids, categories = read_coco(ground_truth, detections)
  if metric == 'coco':
    return metrics.coco_metrics(gt, dt, image_ids=image_ids, category_ids=list(categories))
  gt.ignore = gt.ignore | gt.crowd
  voc = metrics.voc_metrics(gt, dt, use_07_metric=metric == 'voc07',
                            category_ids=sorted(categories))
  return {'mAP': voc['mAP'],
          'per_class': {categories[c]: ap for c, ap in voc['per_class'].items()}}


def format_table(result: dict, metric: str) -> str:
  if metric == 'coco':
    return '\n'.join(f' {_COCO_LABELS[k]} = {v:.4f}' for k, v in result.items())
  width = max([len(n) for n in result['per_class']] + [3])
  lines = [f'{name:<{width}}  {"n/a" if math.isnan(ap) else f"{ap:.4f}"}'
           for name, ap in result['per_class'].items()]
  return '\n'.join(lines + [f'{"mAP":<{width}}  {result["mAP"]:.4f}'])


def _json_safe(value):
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  return None if isinstance(value, float) and math.isnan(value) else value


def run(f: flags.FlagValues) -> int:
  if f.metric not in METRICS:
    raise UserError(f'unknown metric {f.metric!r}; valid choices: {", ".join(METRICS)}')
  result = evaluate(_load(f.ground_truth, 'ground_truth'), _load(f.detections, 'detections'),
                    f.metric)
  print(json.dumps(_json_safe(result)) if f.json else format_table(result, f.metric))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
