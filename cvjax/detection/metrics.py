"""Detection metrics: COCO AP/AR and PASCAL VOC AP, vectorised numpy.

Both take flat arrays (one row per box) so they can run inside a training loop
on a whole split in well under a second, and both are cvjax's own code:

  coco_metrics(gt, dt)  — pycocotools' COCOeval (iouType 'bbox') semantics:
      IoU thresholds .50:.05:.95, 101 recall points, max detections 1/10/100,
      area ranges all / small (< 32²) / medium (32²-96²) / large (> 96²) by the
      ground truth's `area`, crowd ground truth matched with IoU = ∩ / area(det)
      and ignored, unmatched detections outside an area range ignored, each
      (image, class) keeps its 100 highest-scoring detections. Same numbers as
      COCOeval.summarize() (tests check 1e-4 on random files).
  voc_metrics(gt, dt, use_07_metric) — the VOC devkit's per-class AP at IoU 0.5:
      detections sorted by score over the split, each matched to the ground truth
      of its image and class it overlaps most; IoU > 0.5 and that ground truth
      not yet detected → true positive; difficult ground truth → ignored; else
      false positive. VOC2007: 11-point interpolated AP; VOC2010+: area under
      the monotone precision envelope. IoU here is continuous (no "+1 pixel").

Ground truth: `Boxes` with image (int[N]), category (int[N]), boxes f64[N, 4]
(x1, y1, x2, y2) in pixels, and per box `area`, `crowd` (COCO iscrowd),
`ignore` (VOC difficult: ignored without crowd matching). Detections: `Boxes`
with image, category, boxes and `scores`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = {'all': (0.0, 1e10), 'small': (0.0, 32.0**2), 'medium': (32.0**2, 96.0**2),
               'large': (96.0**2, 1e10)}
MAX_DETECTIONS = (1, 10, 100)
COCO_KEYS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm',
             'ARl')


@dataclasses.dataclass
class Boxes:
  """Flat boxes of a whole split. boxes: (x1, y1, x2, y2) pixels."""
  image: np.ndarray
  category: np.ndarray
  boxes: np.ndarray
  scores: np.ndarray | None = None   # detections
  area: np.ndarray | None = None     # ground truth (default: box area)
  crowd: np.ndarray | None = None
  ignore: np.ndarray | None = None

  def __post_init__(self):
    self.image = np.asarray(self.image, np.int64).reshape(-1)
    self.category = np.asarray(self.category, np.int64).reshape(-1)
    self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
    n = len(self.image)
    if self.scores is not None:
      self.scores = np.asarray(self.scores, np.float64).reshape(-1)
    box_area = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
    self.area = box_area if self.area is None else np.asarray(self.area, np.float64).reshape(-1)
    self.crowd = np.zeros(n, bool) if self.crowd is None else np.asarray(self.crowd, bool)
    self.ignore = np.zeros(n, bool) if self.ignore is None else np.asarray(self.ignore, bool)
    for name in ('category', 'boxes', 'area', 'crowd', 'ignore'):
      if len(getattr(self, name)) != n:
        raise ValueError(f'{name} has {len(getattr(self, name))} rows, image has {n}')


def box_iou(a: np.ndarray, b: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
  """IoU of (x1, y1, x2, y2) boxes a f64[..., N, 4] and b f64[..., M, 4] → [..., N, M].

  Where crowd[..., m] (of b), the union is a's area alone (COCO's crowd rule).
  """
  a, b = a[..., :, None, :], b[..., None, :, :]
  w = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0)
  h = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0)
  inter = w * h
  area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
  area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  union = area_a + area_b - inter
  if crowd is not None:
    union = np.where(crowd[..., None, :], area_a, union)
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def coco_evaluate(gt: Boxes, dt: Boxes, image_ids=None, category_ids=None,
                  max_pairs_per_chunk: int = 4096) -> dict:
  """COCO bbox evaluation (see module doc).

  Args:
    gt, dt: ground truth and detections.
    image_ids / category_ids: the images and classes evaluated (default: those of
      the ground truth, as COCOeval takes them from the annotation file).
  Returns:
    {'precision': f64[T, R, K, A, M], 'recall': f64[T, K, A, M] (−1 where a class
    has no ground truth), 'stats': {AP, AP50, ..., ARl}, 'category_ids'}.
  """
  image_ids = np.unique(gt.image) if image_ids is None else np.unique(np.asarray(image_ids))
  category_ids = (np.unique(gt.category) if category_ids is None
                  else np.unique(np.asarray(category_ids)))
  g_keep = np.isin(gt.image, image_ids) & np.isin(gt.category, category_ids)
  d_keep = np.isin(dt.image, image_ids) & np.isin(dt.category, category_ids)
  num_cat = len(category_ids)
  cat_index = lambda c: np.searchsorted(category_ids, c)
  img_index = lambda i: np.searchsorted(image_ids, i)
  g_idx = np.flatnonzero(g_keep)
  d_idx = np.flatnonzero(d_keep)
  g_pair = img_index(gt.image[g_idx]) * num_cat + cat_index(gt.category[g_idx])
  d_pair = img_index(dt.image[d_idx]) * num_cat + cat_index(dt.category[d_idx])

  # Detections of each (image, class): by decreasing score (stable), the first 100.
  d_order = np.lexsort((-dt.scores[d_idx], d_pair))
  d_sorted_pair = d_pair[d_order]
  d_starts = np.searchsorted(d_sorted_pair, d_sorted_pair, side='left')
  d_rank = np.arange(len(d_order)) - d_starts
  top = d_rank < MAX_DETECTIONS[-1]
  d_order, d_rank, d_sorted_pair = d_order[top], d_rank[top], d_sorted_pair[top]
  g_order = np.argsort(g_pair, kind='stable')

  pairs = np.union1d(np.unique(g_pair), np.unique(d_sorted_pair))
  T, A = len(IOU_THRESHOLDS), len(AREA_RANGES)
  ranges = np.asarray(list(AREA_RANGES.values()))                       # [A, 2]
  # Per detection (rows of d_order): matched flag and ignore flag, per area range and threshold.
  det_matched = np.zeros((A, T, len(d_order)), bool)
  det_ignored = np.zeros((A, T, len(d_order)), bool)
  g_rows = g_idx[g_order]
  g_pairs_sorted = g_pair[g_order]
  d_rows = d_idx[d_order]

  # Chunks of pairs with similar numbers of detections and ground truth: little padding.
  count = lambda keys: (np.searchsorted(keys, pairs, side='right')
                        - np.searchsorted(keys, pairs, side='left'))
  pairs = pairs[np.lexsort((count(g_pairs_sorted), count(d_sorted_pair)))]
  if len(d_rows) == 0 or len(g_rows) == 0:
    pairs = pairs[:0]  # nothing to match: no detection is a true positive
  for lo in range(0, len(pairs), max_pairs_per_chunk):
    chunk = pairs[lo:lo + max_pairs_per_chunk]
    gi = _chunk_index(g_pairs_sorted, chunk)        # [P, G] positions into g_rows (−1 none)
    di = _chunk_index(d_sorted_pair, chunk)         # [P, D] positions into d_rows
    g_valid, d_valid = gi >= 0, di >= 0
    gb = gt.boxes[g_rows[np.maximum(gi, 0)]]
    db = dt.boxes[d_rows[np.maximum(di, 0)]]
    crowd = gt.crowd[g_rows[np.maximum(gi, 0)]] & g_valid
    # COCO boxes: IoU on (x, y, w, h) floats, identical to corner form.
    ious = box_iou(db, gb, crowd)                                          # [P, D, G]
    ious = np.where(g_valid[:, None, :] & d_valid[:, :, None], ious, -1.0)
    g_area = gt.area[g_rows[np.maximum(gi, 0)]]
    ignore = (gt.crowd | gt.ignore)[g_rows[np.maximum(gi, 0)]]
    g_ig = ignore[None] | (g_area[None] < ranges[:, None, None, 0]) | (
        g_area[None] > ranges[:, None, None, 1])                            # [A, P, G]
    d_box = dt.boxes[d_rows[np.maximum(di, 0)]]
    d_area = (d_box[..., 2] - d_box[..., 0]) * (d_box[..., 3] - d_box[..., 1])
    d_out = (d_area[None] < ranges[:, None, None, 0]) | (d_area[None] > ranges[:, None, None, 1])
    matched, ignored = _greedy_match(ious, g_valid, crowd, g_ig, d_valid, d_out)
    rows = di[d_valid]
    det_matched[:, :, rows] = matched[:, :, d_valid]
    det_ignored[:, :, rows] = ignored[:, :, d_valid]

  # Ground truth counted per class and area range (not ignored).
  g_cat = cat_index(gt.category[g_idx])
  g_ignore_all = (gt.crowd | gt.ignore)[g_idx]
  g_area_all = gt.area[g_idx]
  npig = np.zeros((num_cat, A), np.int64)
  for a, (lo_a, hi_a) in enumerate(ranges):
    counted = ~g_ignore_all & (g_area_all >= lo_a) & (g_area_all <= hi_a)
    npig[:, a] = np.bincount(g_cat[counted], minlength=num_cat)

  R, M = len(RECALL_THRESHOLDS), len(MAX_DETECTIONS)
  precision = -np.ones((T, R, num_cat, A, M))
  recall = -np.ones((T, num_cat, A, M))
  d_cat = d_sorted_pair % num_cat
  d_img = d_sorted_pair // num_cat
  d_score = dt.scores[d_rows]
  for k in range(num_cat):
    rows_k = np.flatnonzero(d_cat == k)
    # COCOeval concatenates images in id order, each image's detections by score,
    # then sorts by score with a stable mergesort.
    rows_k = rows_k[np.lexsort((d_rank[rows_k], d_img[rows_k]))]
    for m, max_det in enumerate(MAX_DETECTIONS):
      rows = rows_k[d_rank[rows_k] < max_det]
      rows = rows[np.argsort(-d_score[rows], kind='mergesort')]
      for a in range(A):
        if npig[k, a] == 0:
          continue
        dm = det_matched[a][:, rows]                                       # [T, n]
        di_ = det_ignored[a][:, rows]
        tp = np.cumsum(dm & ~di_, axis=1, dtype=np.float64)
        fp = np.cumsum(~dm & ~di_, axis=1, dtype=np.float64)
        n = len(rows)
        rc = tp / npig[k, a]
        pr = tp / (fp + tp + np.spacing(1))
        recall[:, k, a, m] = rc[:, -1] if n else 0.0
        if n == 0:
          precision[:, :, k, a, m] = 0.0
          continue
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        for t in range(T):
          idx = np.searchsorted(rc[t], RECALL_THRESHOLDS, side='left')
          q = np.zeros(R)
          ok = idx < n
          q[ok] = pr[t, idx[ok]]
          precision[t, :, k, a, m] = q
  return {'precision': precision, 'recall': recall, 'category_ids': category_ids,
          'stats': _summarize(precision, recall)}


def _chunk_index(sorted_pairs: np.ndarray, chunk: np.ndarray) -> np.ndarray:
  """[P, L] positions (into sorted_pairs) of the rows of each pair in `chunk`, −1 padded."""
  starts = np.searchsorted(sorted_pairs, chunk, side='left')
  ends = np.searchsorted(sorted_pairs, chunk, side='right')
  width = int((ends - starts).max()) if len(chunk) else 0
  offsets = np.arange(max(width, 1))
  index = starts[:, None] + offsets[None]
  return np.where(offsets[None] < (ends - starts)[:, None], index, -1)


def _greedy_match(ious, g_valid, crowd, g_ig, d_valid, d_out):
  """COCOeval.evaluateImg's matching for P (image, class) pairs at once.

  ious f64[P, D, G] (−1 for padding), g_valid bool[P, G], crowd bool[P, G],
  g_ig bool[A, P, G] ignored ground truth per area range, d_valid bool[P, D],
  d_out bool[A, P, D] detection area outside the range. Detections are in score
  order. Returns (matched, ignored), each bool[A, T, P, D].

  For each detection in turn and each threshold t: among ground truth not yet
  matched (crowd may match again) with IoU ≥ t, the best non-ignored one if any,
  else the best ignored one; on ties the later one (COCOeval walks the ground
  truth, non-ignored first, keeping the last with the highest IoU).
  """
  A, P, G = g_ig.shape
  D = ious.shape[1]
  T = len(IOU_THRESHOLDS)
  thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, :, None, None]  # [1, T, 1, 1]
  taken = np.zeros((A, T, P, G), bool)
  matched = np.zeros((A, T, P, D), bool)
  match_ig = np.zeros((A, T, P, D), bool)
  flip = np.arange(G)[::-1]
  for d in range(D):
    iou_d = ious[:, d, :][None, None]                                        # [1, 1, P, G]
    free = g_valid[None, None] & ~(taken & ~crowd[None, None])
    cand = free & (iou_d >= thresholds)                                      # [A, T, P, G]
    regular = cand & ~g_ig[:, None]
    use = np.where(np.any(regular, -1, keepdims=True), regular, cand & g_ig[:, None])
    best = np.max(np.where(use, iou_d, -np.inf), axis=-1, keepdims=True)
    last = (use & (iou_d == best))[..., flip]
    g = G - 1 - np.argmax(last, axis=-1)                                     # [A, T, P]
    hit = np.any(use, -1) & d_valid[None, None, :, d]
    np.put_along_axis(taken, g[..., None], np.take_along_axis(taken, g[..., None], -1)
                      | hit[..., None], axis=-1)
    matched[..., d] = hit
    match_ig[..., d] = hit & np.take_along_axis(np.broadcast_to(g_ig[:, None], (A, T, P, G)),
                                                g[..., None], -1)[..., 0]
  ignored = np.where(matched, match_ig, d_out[:, None])
  return matched, ignored


def _summarize(precision, recall) -> dict[str, float]:
  """COCOeval.summarize's 12 numbers (−1 where nothing is defined)."""
  def mean(x):
    x = x[x > -1]
    return float(np.mean(x)) if x.size else -1.0
  area = {name: i for i, name in enumerate(AREA_RANGES)}
  m100 = MAX_DETECTIONS.index(100)
  return {
      'AP': mean(precision[:, :, :, area['all'], m100]),
      'AP50': mean(precision[0, :, :, area['all'], m100]),
      'AP75': mean(precision[5, :, :, area['all'], m100]),
      'APs': mean(precision[:, :, :, area['small'], m100]),
      'APm': mean(precision[:, :, :, area['medium'], m100]),
      'APl': mean(precision[:, :, :, area['large'], m100]),
      'AR1': mean(recall[:, :, area['all'], 0]),
      'AR10': mean(recall[:, :, area['all'], 1]),
      'AR100': mean(recall[:, :, area['all'], m100]),
      'ARs': mean(recall[:, :, area['small'], m100]),
      'ARm': mean(recall[:, :, area['medium'], m100]),
      'ARl': mean(recall[:, :, area['large'], m100]),
  }


def coco_metrics(gt: Boxes, dt: Boxes, **kwargs) -> dict[str, float]:
  """The 12 COCO summary numbers: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl."""
  return coco_evaluate(gt, dt, **kwargs)['stats']


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
  """AP of one class from its cumulative recall/precision curves (devkit's voc_ap)."""
  if use_07_metric:
    ap = 0.0
    for t in np.linspace(0, 1, 11):
      p = precision[recall >= t]
      ap += (np.max(p) if p.size else 0.0) / 11
    return float(ap)
  mrec = np.concatenate([[0.0], recall, [1.0]])
  mpre = np.concatenate([[0.0], precision, [0.0]])
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]
  i = np.flatnonzero(mrec[1:] != mrec[:-1])
  return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc_metrics(gt: Boxes, dt: Boxes, use_07_metric: bool = False,
                iou_threshold: float = 0.5, category_ids=None) -> dict:
  """VOC AP per class and its mean (see module doc); `gt.ignore` marks difficult boxes.

  Returns {'mAP': mean over classes with at least one non-difficult box,
  'per_class': {category id: AP (nan when the class has no such box)}}.
  """
  categories = np.unique(gt.category) if category_ids is None else np.asarray(category_ids)
  per_class = {}
  for c in categories:
    g = np.flatnonzero(gt.category == c)
    d = np.flatnonzero(dt.category == c)
    npos = int(np.sum(~gt.ignore[g]))
    if npos == 0:
      per_class[int(c)] = float('nan')
      continue
    d = d[np.argsort(-dt.scores[d], kind='stable')]
    if len(d) == 0:
      per_class[int(c)] = 0.0
      continue
    # Per detection: the ground truth of its image (this class) it overlaps most.
    g_images = gt.image[g]
    g_sort = np.argsort(g_images, kind='stable')
    g, g_images = g[g_sort], g_images[g_sort]
    index = _chunk_index(g_images, dt.image[d])                              # [n, L]
    ious = box_iou(dt.boxes[d][:, None, :], gt.boxes[g[np.maximum(index, 0)]])[:, 0, :]
    ious = np.where(index >= 0, ious, -np.inf)
    j = np.argmax(ious, axis=1)
    best = ious[np.arange(len(d)), j] if ious.shape[1] else np.full(len(d), -np.inf)
    target = np.where(index[np.arange(len(d)), j] >= 0, g[np.maximum(index[np.arange(len(d)), j], 0)], -1)
    hit = (best > iou_threshold) & (target >= 0)
    difficult = hit & gt.ignore[np.maximum(target, 0)]
    candidate = hit & ~difficult
    # The first (highest-scoring) candidate for each ground truth is the true positive.
    first = np.zeros(len(d), bool)
    rows = np.flatnonzero(candidate)
    _, first_rows = np.unique(target[rows], return_index=True)
    first[rows[first_rows]] = True
    tp = np.cumsum(first, dtype=np.float64)
    fp = np.cumsum(~hit, dtype=np.float64) + np.cumsum(candidate & ~first, dtype=np.float64)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    per_class[int(c)] = voc_ap(rec, prec, use_07_metric)
  values = [v for v in per_class.values() if not np.isnan(v)]
  return {'mAP': float(np.mean(values)) if values else float('nan'), 'per_class': per_class}
