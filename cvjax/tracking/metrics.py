"""CLEAR MOT and identity metrics of tracker output against ground truth, by motmetrics."""
from __future__ import annotations

import numpy as np

from cvjax.errors import UserError
from cvjax.tracking import mot

# name in the result → (motmetrics metric, what it is)
METRICS = {
    'mota': ('mota', 'multiple object tracking accuracy: 1 − (misses + false positives + '
             'id switches) / ground-truth boxes'),
    'idf1': ('idf1', 'identity F1: matched identities over ground truth and tracks'),
    'id_switches': ('num_switches', 'ground-truth objects whose track id changed'),
    'precision': ('precision', 'matched / tracker boxes'),
    'recall': ('recall', 'matched / ground-truth boxes'),
    'motp': ('motp', "MOTChallenge's MOTP: mean IoU of the matched pairs"),
    'mostly_tracked': ('mostly_tracked', 'objects tracked over at least 80% of their life'),
    'false_positives': ('num_false_positives', 'tracker boxes matching nothing'),
    'misses': ('num_misses', 'ground-truth boxes matched by nothing'),
    'num_objects': ('num_objects', 'ground-truth boxes'),
}


def motmetrics():
  """The motmetrics module, or a UserError saying how to install it."""
  try:
    import motmetrics as mm  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError('tracking metrics need motmetrics: pip install "cvjax[track]" '
                    '(or pip install motmetrics)') from None
  # motmetrics 1.4.0 still calls np.asfarray, which NumPy 2 removed.
  if not hasattr(np, 'asfarray'):
    np.asfarray = lambda a, dtype=np.float64: np.asarray(a, dtype=dtype)
  return mm


def evaluate(ground_truth: np.ndarray, tracks: np.ndarray, iou_threshold: float = 0.5) -> dict:
  """Metrics (see METRICS) of tracker rows against ground-truth rows, both f[N, 10]
  MOTChallenge arrays (`mot.read`). Ground-truth rows with conf 0 ("do not consider")
  are left out. A pair matches when its IoU is at least `iou_threshold`.
  Returns {name: float (rates in [0, 1]) or int (counts)}."""
  mm = motmetrics()
  ground_truth = np.asarray(ground_truth).reshape(-1, 10)
  ground_truth = ground_truth[ground_truth[:, 6] != 0]
  tracks = np.asarray(tracks).reshape(-1, 10)
  last = int(max(ground_truth[:, 0].max(initial=0), tracks[:, 0].max(initial=0)))
  accumulator = mm.MOTAccumulator(auto_id=True)
  for gt, hyp in zip(mot.by_frame(ground_truth, last), mot.by_frame(tracks, last)):
    distances = mm.distances.iou_matrix(gt[:, 2:6], hyp[:, 2:6], max_iou=1 - iou_threshold)
    accumulator.update(gt[:, 1].astype(int).tolist(), hyp[:, 1].astype(int).tolist(), distances)
  names = [m for m, _ in METRICS.values()]
  summary = mm.metrics.create().compute(accumulator, metrics=names, name='all')
  result = {}
  for key, (name, _) in METRICS.items():
    value = summary[name].iloc[0]
    if key == 'motp':  # motmetrics reports the mean distance 1 − IoU
      value = 1 - value
    result[key] = int(value) if name.startswith(('num_', 'mostly')) else float(value)
  return result


def format_table(rows: dict[str, dict], columns=('mota', 'idf1', 'id_switches', 'precision',
                                                 'recall', 'motp')) -> str:
  """A plain-text table: one line per name in `rows` ({name: evaluate(...) + extras})."""
  extra = [c for c in next(iter(rows.values()), {}) if c not in columns and c not in METRICS]
  columns = list(columns) + extra
  width = max([len(n) for n in rows] + [8])
  widths = [max(12, len(c) + 2) for c in columns]
  lines = [f'{"":<{width}}' + ''.join(f'{c:>{w}}' for c, w in zip(columns, widths))]
  for name, values in rows.items():
    cells = []
    for c, w in zip(columns, widths):
      v = values.get(c, float('nan'))
      cells.append(f'{v:>{w}d}' if isinstance(v, (int, np.integer)) else f'{v:>{w}.3f}')
    lines.append(f'{name:<{width}}' + ''.join(cells))
  return '\n'.join(lines)
