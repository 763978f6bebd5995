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
import numbers
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


def read_coco(ground_truth: dict, detections: list, *, ground_truth_name: str = '--ground_truth',
              detections_name: str = '--detections'):
  """COCO-format dicts → (gt Boxes, dt Boxes, image ids, {category id: name}).

  Every record is checked: ids are integers, each annotation's image and category and
  each detection's image exist, a bbox is [x, y, width, height] of finite numbers with
  width, height ≥ 0, scores and areas are finite numbers. Anything else is a `UserError`
  naming the input (`*_name`, e.g. '--ground_truth=gt.json'), the record
  ('annotations[3].bbox') and what was expected.
  """
  g, d = ground_truth_name, detections_name
  if not isinstance(ground_truth, dict) or not all(
      k in ground_truth for k in ('images', 'annotations', 'categories')):
    raise UserError(f'{g} must be a COCO annotation file with "images", '
                    '"annotations" and "categories"')
  if not isinstance(detections, list):
    raise UserError(f'{d} must be a COCO results list: [{{"image_id", "category_id", '
                    '"bbox", "score"}, ...]')
  for key in ('images', 'annotations', 'categories'):
    if not isinstance(ground_truth[key], list):
      raise UserError(f'{g}: "{key}" must be a list of objects, got {_shown(ground_truth[key])}')
  image_ids = _unique_ids(ground_truth['images'], f'{g}: images')
  categories = {}
  for i, c in zip(_unique_ids(ground_truth['categories'], f'{g}: categories'),
                  ground_truth['categories']):
    name = c.get('name', str(i))
    if not isinstance(name, str):
      raise UserError(f'{g}: the category with id {i} has a name that is not a string: '
                      f'{_shown(name)}')
    categories[i] = name
  known_images = set(image_ids)
  gt = dict(image=[], category=[], boxes=[], area=[], crowd=[], ignore=[])
  for n, a in enumerate(ground_truth['annotations']):
    where = f'{g}: annotations[{n}]'
    image, category = _id(a, 'image_id', where), _id(a, 'category_id', where)
    if image not in known_images:
      raise UserError(f'{where}.image_id {image} is not the id of an entry of "images"')
    if category not in categories:
      raise UserError(f'{where}.category_id {category} is not the id of an entry of '
                      '"categories"')
    box = _xyxy(a.get('bbox'), f'{where}.bbox')
    area = a.get('area', (box[2] - box[0]) * (box[3] - box[1]))
    if not _finite_number(area) or area < 0:
      raise UserError(f'{where}.area must be a finite number >= 0, got {_shown(area)}')
    marks = [a.get(k, 0) for k in ('iscrowd', 'difficult', 'ignore')]
    for key, value in zip(('iscrowd', 'difficult', 'ignore'), marks):
      if not (isinstance(value, bool) or _finite_number(value)):
        raise UserError(f'{where}.{key} must be 0 or 1 (or true/false), got {_shown(value)}')
    for key, value in zip(gt, (image, category, box, area, bool(marks[0]),
                               bool(marks[1] or marks[2]))):
      gt[key].append(value)
  dt = dict(image=[], category=[], boxes=[], scores=[])
  for n, r in enumerate(detections):
    where = f'{d}: [{n}]'
    image, category = _id(r, 'image_id', where), _id(r, 'category_id', where)
    box = _xyxy(r.get('bbox'), f'{where}.bbox')
    score = r.get('score')
    if not _finite_number(score):
      raise UserError(f'{where}.score must be a finite number, got {_shown(score)}')
    for key, value in zip(dt, (image, category, box, score)):
      dt[key].append(value)
  unknown = set(dt['image']) - known_images
  if unknown:
    raise UserError(f'{d}: {sum(i in unknown for i in dt["image"])} detections refer to images '
                    f'not in the ground truth (e.g. image_id {sorted(unknown)[0]})')
  return (Boxes(**{k: (np.asarray(v, np.float64).reshape(-1, 4) if k == 'boxes' else v)
                   for k, v in gt.items()}),
          Boxes(**{k: (np.asarray(v, np.float64).reshape(-1, 4) if k == 'boxes' else v)
                   for k, v in dt.items()}),
          image_ids, categories)


def _shown(value, limit: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + '...'


def _finite_number(value) -> bool:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's too
    return False
  try:
    return math.isfinite(value)
  except OverflowError:  # an int beyond float's range
    return False


def _id(record, key: str, where: str) -> int:
  """record[key], an integer id (COCO's); a `UserError` naming `where` otherwise."""
  if not isinstance(record, dict):
    raise UserError(f'{where} must be an object, got {_shown(record)}')
  if key not in record:
    raise UserError(f'{where} has no "{key}"')
  value = record[key]
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or not -2**63 <= value < 2**63):
    raise UserError(f'{where}.{key} must be an integer, got {_shown(value)}')
  return int(value)


def _unique_ids(records: list, where: str) -> list[int]:
  ids = [_id(r, 'id', f'{where}[{n}]') for n, r in enumerate(records)]
  if len(set(ids)) < len(ids):
    seen = set()
    repeated = next(i for i in ids if i in seen or seen.add(i))
    raise UserError(f'{where}: id {repeated} appears twice; ids must be unique')
  return ids


def _xyxy(bbox, where: str) -> list[float]:
  """COCO [x, y, width, height] → [x1, y1, x2, y2]; a `UserError` naming `where` unless
  four finite numbers with width, height ≥ 0."""
  if isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_finite_number(v) for v in bbox):
    x, y, w, h = (float(v) for v in bbox)
    if w >= 0 and h >= 0 and all(math.isfinite(v) for v in (x + w, y + h, w * h)):
      return [x, y, x + w, y + h]
  raise UserError(f'{where} must be [x, y, width, height]: finite numbers, width and '
                  f'height >= 0; got {_shown(bbox)}')


def evaluate(ground_truth: dict, detections: list, metric: str, **names) -> dict:
  """The numbers `main` prints, as a dict (see module doc); `names` name the inputs in
  errors (`read_coco`'s ground_truth_name, detections_name)."""
  if metric not in METRICS:
    raise UserError(f'unknown metric {metric!r}; valid choices: {", ".join(METRICS)}')
  gt, dt, image_ids, categories = read_coco(ground_truth, detections, **names)
  if metric == 'coco':
    return metrics.coco_metrics(gt, dt, image_ids=image_ids, category_ids=list(categories))
  gt.ignore = gt.ignore | gt.crowd
  voc = metrics.voc_metrics(gt, dt, use_07_metric=metric == 'voc07',
                            category_ids=sorted(categories))
  return {'mAP': voc['mAP'],
          'per_class': {categories[c]: ap for c, ap in voc['per_class'].items()}}


def evaluate_files(ground_truth: str, detections: str, metric: str) -> dict:
  """`evaluate` of a COCO annotation file and a COCO results file. A missing, unreadable,
  empty, non-JSON or malformed file is a `UserError` naming it as --ground_truth=PATH or
  --detections=PATH, with the record and what was expected."""
  return evaluate(cli.read_json(ground_truth, 'ground_truth', 'a COCO annotation file'),
                  cli.read_json(detections, 'detections', 'a COCO results list'), metric,
                  ground_truth_name=f'--ground_truth={ground_truth}',
                  detections_name=f'--detections={detections}')


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
  result = evaluate_files(f.ground_truth, f.detections, f.metric)
  print(json.dumps(_json_safe(result)) if f.json else format_table(result, f.metric))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
