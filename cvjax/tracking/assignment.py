"""Association: IoU and cosine costs, Hungarian matching with a threshold, greedy NMS.

Boxes here are f[N, 4] (left, top, width, height) in pixels.
"""
from __future__ import annotations

import numpy as np
import scipy.optimize

INFEASIBLE = 1e5  # the cost of a pair that must not be matched


def ltwh_to_ltrb(boxes: np.ndarray) -> np.ndarray:
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection over union f64[N, M] of ltwh boxes a f[N, 4] and b f[M, 4]."""
  a, b = ltwh_to_ltrb(a), ltwh_to_ltrb(b)
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
  area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
  union = area_a[:, None] + area_b[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """1 − cos(a_i, b_j) f64[N, M] for feature rows a f[N, D], b f[M, D] (any length)."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
  return 1.0 - a @ b.T


def min_cost_matching(cost: np.ndarray, max_cost: float) -> tuple[list, list, list]:
  """Hungarian assignment (`scipy.optimize.linear_sum_assignment`) on cost f[N, M];
  pairs costing more than `max_cost` are left unmatched.

  Returns (matches [(row, col)] in row order, unmatched rows, unmatched cols). The
  unmatched come in deep_sort's and SORT's order: first those the solver left out,
  ascending, then those of the pairs it rejected, in row order. New tracks are born,
  and numbered, in the order of the unmatched detections.
  """
  n, m = cost.shape
  if n == 0 or m == 0:
    return [], list(range(n)), list(range(m))
  # Everything above the threshold costs the same, so the solver does not trade a
  # good pair for a cheaper impossible one.
  cost = np.where(cost > max_cost, max_cost + 1e-5, cost)
  rows, cols = scipy.optimize.linear_sum_assignment(cost)
  pairs = [(int(r), int(c)) for r, c in zip(rows, cols)]
  matches = [(r, c) for r, c in pairs if cost[r, c] <= max_cost]
  rejected = [(r, c) for r, c in pairs if cost[r, c] > max_cost]
  assigned_rows, assigned_cols = set(rows.tolist()), set(cols.tolist())
  return (matches,
          [r for r in range(n) if r not in assigned_rows] + [r for r, _ in rejected],
          [c for c in range(m) if c not in assigned_cols] + [c for _, c in rejected])


def nms(boxes: np.ndarray, scores: np.ndarray, max_overlap: float) -> list[int]:
  """Greedy non-maximum suppression: indices kept, best score first; a box overlapping
  a kept one by IoU > max_overlap is dropped."""
  order = list(np.argsort(-np.asarray(scores), kind='stable'))
  overlaps = iou(boxes, boxes)
  keep = []
  while order:
    i = order.pop(0)
    keep.append(int(i))
    order = [j for j in order if overlaps[i, j] <= max_overlap]
  return keep
