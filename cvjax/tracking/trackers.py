"""SORT and DeepSORT with deep_sort_realtime's calls: `update_tracks(raw_detections,
embeds=None, frame=None, others=None)` → the live tracks.

raw_detections: a list of ([left, top, w, h], confidence, class) in pixels (class may
be omitted); boxes with w <= 0 or h <= 0 are dropped (with their embeds and others).
A new track is tentative; it is confirmed after `n_init` consecutive matched frames
and deleted on a miss while tentative, or after more than `max_age` missed frames.

Sort: each frame, every track is predicted by the Kalman filter and matched to the
detections by the Hungarian algorithm on 1 − IoU of predicted and detected boxes,
pairs under `iou_threshold` left unmatched (Bewley et al. 2016; this Kalman filter is
DeepSORT's (cx, cy, a, h) one).

DeepSort (Wojke et al. 2017): confirmed tracks are matched first on appearance — the
smallest cosine distance between a detection's embedding and the track's gallery of
its last `nn_budget` matched embeddings (all when None), pairs above
`max_cosine_distance` or outside the Kalman filter's 95% chi-square gate (Mahalanobis,
4 dof) excluded — in a cascade: tracks seen 1 frame ago first, then 2, ... up to
`max_age`. The tentative tracks and the confirmed ones missed only this frame then
compete for the rest by IoU (1 − IoU ≤ `max_iou_distance`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from cvjax.errors import UserError, unknown_choice
from cvjax.tracking import assignment
from cvjax.tracking.embedders import ColourHistogramEmbedder
from cvjax.tracking.kalman import CHI2_95, KalmanFilter

TENTATIVE, CONFIRMED, DELETED = 1, 2, 3
EMBEDDERS = {'histogram': ColourHistogramEmbedder}


@dataclasses.dataclass
class Detection:
  ltwh: np.ndarray            # f32[4] pixels
  confidence: float
  feature: np.ndarray | None  # f32[D] or None (SORT)
  class_name: Any = None
  others: Any = None

  def to_xyah(self) -> np.ndarray:
    left, top, w, h = self.ltwh.astype(np.float64)
    return np.array([left + w / 2, top + h / 2, w / h, h])


class Track:
  """One target. `mean` f64[8] / `covariance` f64[8, 8]: the Kalman state (cx, cy, a, h,
  velocities); `track_id` int from 1; `hits` matched frames; `age` frames since birth;
  `time_since_update` frames since the last match (0 when matched this frame);
  `det_class` the class of the last matched detection, `det_conf` / `original_ltwh` /
  `others` those of this frame's detection (None when unmatched this frame)."""

  def __init__(self, mean, covariance, track_id: int, n_init: int, max_age: int,
               detection: Detection):
    self.mean, self.covariance = mean, covariance
    self.track_id = track_id
    self.hits, self.age, self.time_since_update = 1, 1, 0
    self.state = TENTATIVE
    self.features = [] if detection.feature is None else [detection.feature]
    self.features_in_gallery = 0  # features[:this] are already in DeepSort's gallery
    self._n_init, self._max_age = n_init, max_age
    self.original_ltwh = detection.ltwh.copy()
    self.det_class = detection.class_name
    self.det_conf = detection.confidence
    self.others = detection.others

  def to_ltwh(self, orig: bool = False, orig_strict: bool = False) -> np.ndarray | None:
    """f64[4] (left, top, w, h): the Kalman estimate, or this frame's detection with
    `orig` (None with `orig_strict` when unmatched this frame)."""
    if orig:
      if self.original_ltwh is not None:
        return self.original_ltwh.copy()
      if orig_strict:
        return None
    cx, cy, a, h = self.mean[:4]
    return np.array([cx - a * h / 2, cy - h / 2, a * h, h])

  def to_ltrb(self, orig: bool = False, orig_strict: bool = False) -> np.ndarray | None:
    """f64[4] (left, top, right, bottom), as `to_ltwh`."""
    box = self.to_ltwh(orig, orig_strict)
    if box is not None:
      box[2:] += box[:2]
    return box

  to_tlwh, to_tlbr = to_ltwh, to_ltrb  # deep_sort_realtime's older names

  def get_det_class(self):
    return self.det_class

  def get_det_conf(self):
    return self.det_conf

  def get_det_supplementary(self):
    return self.others

  def get_feature(self):
    return self.features[-1]

  def is_tentative(self) -> bool:
    return self.state == TENTATIVE

  def is_confirmed(self) -> bool:
    return self.state == CONFIRMED

  def is_deleted(self) -> bool:
    return self.state == DELETED

  def predict(self, kf: KalmanFilter) -> None:
    self.mean, self.covariance = kf.predict(self.mean, self.covariance)
    self.age += 1
    self.time_since_update += 1
    self.original_ltwh = self.det_conf = self.others = None

  def update(self, kf: KalmanFilter, detection: Detection) -> None:
    self.mean, self.covariance = kf.update(self.mean, self.covariance, detection.to_xyah())
    if detection.feature is not None:
      self.features.append(detection.feature)
    self.original_ltwh = detection.ltwh.copy()
    self.det_conf, self.det_class = detection.confidence, detection.class_name
    self.others = detection.others
    self.hits += 1
    self.time_since_update = 0
    if self.state == TENTATIVE and self.hits >= self._n_init:
      self.state = CONFIRMED

  def mark_missed(self) -> None:
    if self.state == TENTATIVE or self.time_since_update > self._max_age:
      self.state = DELETED

  def __repr__(self):
    state = {TENTATIVE: 'tentative', CONFIRMED: 'confirmed', DELETED: 'deleted'}[self.state]
    return (f'Track(id={self.track_id}, {state}, ltwh={np.round(self.to_ltwh(), 1).tolist()}, '
            f'time_since_update={self.time_since_update})')


class _Tracker:
  """Track bookkeeping shared by Sort and DeepSort; `_match` is theirs."""

  def __init__(self, *, max_age: int, n_init: int, nms_max_overlap: float):
    if max_age < 0 or n_init < 1:
      raise UserError(f'max_age={max_age} and n_init={n_init}: need max_age >= 0, n_init >= 1')
    self.max_age, self.n_init, self.nms_max_overlap = max_age, n_init, nms_max_overlap
    self.kf = KalmanFilter()
    self.tracks: list[Track] = []
    self.del_tracks_ids: list[int] = []
    self._next_id = 1

  def update_tracks(self, raw_detections: Sequence, embeds: Sequence | None = None,
                    frame: np.ndarray | None = None, others: Sequence | None = None) -> list[Track]:
    """Advances one frame. raw_detections: [([left, top, w, h], confidence, class), ...]
    in pixels; embeds: f[N, D] appearance features (DeepSort; else computed from
    `frame` uint8[H, W, 3] by the embedder); others: anything per detection, kept on
    its track. Returns the live tracks (tentative and confirmed)."""
    keep = [i for i, d in enumerate(raw_detections) if d[0][2] > 0 and d[0][3] > 0]
    raw = [raw_detections[i] for i in keep]
    if embeds is not None and len(embeds) != len(raw_detections):
      raise UserError(f'update_tracks got {len(embeds)} embeds for {len(raw_detections)} '
                      'detections; pass one embedding per detection')
    features = self._features(raw, embeds, frame, keep)
    detections = [
        Detection(np.asarray(d[0], np.float32), float(d[1]), f,
                  d[2] if len(d) > 2 else None, None if others is None else others[i])
        for d, f, i in zip(raw, features, keep)]
    if detections and self.nms_max_overlap < 1.0:
      kept = assignment.nms(np.stack([d.ltwh for d in detections]),
                            [d.confidence for d in detections], self.nms_max_overlap)
      detections = [detections[i] for i in sorted(kept)]
    for track in self.tracks:
      track.predict(self.kf)
    matches, unmatched_tracks, unmatched_detections = self._match(detections)
    for t, d in matches:
      self.tracks[t].update(self.kf, detections[d])
    for t in unmatched_tracks:
      self.tracks[t].mark_missed()
    for d in unmatched_detections:
      mean, cov = self.kf.initiate(detections[d].to_xyah())
      self.tracks.append(Track(mean, cov, self._next_id, self.n_init, self.max_age,
                               detections[d]))
      self._next_id += 1
    self.del_tracks_ids = [t.track_id for t in self.tracks if t.is_deleted()]
    self.tracks = [t for t in self.tracks if not t.is_deleted()]
    self._after_update()
    return self.tracks

  def delete_all_tracks(self) -> None:
    self.tracks = []
    self._next_id = 1

  def _features(self, raw, embeds, frame, keep) -> list:
    del embeds, frame, keep
    return [None] * len(raw)

  def _match(self, detections: list[Detection]) -> tuple[list, list, list]:
    raise NotImplementedError

  def _after_update(self) -> None:
    pass

  def _iou_matching(self, detections, track_indices, detection_indices, max_distance,
                    lost_may_match: bool):
    """Hungarian on 1 − IoU between predicted track boxes and detections (indices
    into self.tracks / detections); returns (matches, unmatched tracks, unmatched dets)."""
    if not track_indices or not detection_indices:
      return [], list(track_indices), list(detection_indices)
    boxes = np.stack([self.tracks[t].to_ltwh() for t in track_indices])
    cost = 1.0 - assignment.iou(boxes, np.stack([detections[d].ltwh
                                                 for d in detection_indices]))
    if not lost_may_match:  # DeepSORT: tracks missed for more than a frame only by appearance
      cost[[self.tracks[t].time_since_update > 1 for t in track_indices]] = assignment.INFEASIBLE
    return _reindex(assignment.min_cost_matching(cost, max_distance), track_indices,
                    detection_indices)


class Sort(_Tracker):
  """SORT: Kalman prediction and Hungarian matching on IoU (module docstring).

  Args:
    max_age: frames a track may go unmatched before it is deleted.
    n_init: consecutive matched frames before a track is confirmed.
    iou_threshold: the smallest IoU of a match.
    nms_max_overlap: non-maximum suppression of the detections at this IoU (1: none).
  """

  def __init__(self, max_age: int = 1, n_init: int = 3, iou_threshold: float = 0.3,
               nms_max_overlap: float = 1.0):
    super().__init__(max_age=max_age, n_init=n_init, nms_max_overlap=nms_max_overlap)
    self.iou_threshold = iou_threshold

  def _match(self, detections):
    return self._iou_matching(detections, list(range(len(self.tracks))),
                              list(range(len(detections))), 1.0 - self.iou_threshold,
                              lost_may_match=True)


class DeepSort(_Tracker):
  """DeepSORT: appearance matching cascade, Mahalanobis gate, then IoU (module docstring).

  Args (names and defaults as deep_sort_realtime's):
    max_iou_distance: the largest 1 − IoU of a match in the IoU stage.
    max_age: frames a track may go unmatched before it is deleted (also the cascade depth).
    n_init: consecutive matched frames before a track is confirmed.
    nms_max_overlap: non-maximum suppression of the detections at this IoU (1: none).
    max_cosine_distance: the largest appearance distance of a match.
    nn_budget: embeddings kept per track (None: all since it was confirmed).
    gating_only_position: gate on the centre only (2 dof) instead of (cx, cy, a, h).
    embedder: 'histogram' (ColourHistogramEmbedder), a callable (RGB crops →
      float32[N, D]) or None (then every update_tracks call passes embeds=).
    bgr: frames are BGR (OpenCV's order); crops are flipped to RGB for the embedder.
  """

  def __init__(self, max_iou_distance: float = 0.7, max_age: int = 30, n_init: int = 3,
               nms_max_overlap: float = 1.0, max_cosine_distance: float = 0.2,
               nn_budget: int | None = None, gating_only_position: bool = False,
               embedder: str | Callable | None = 'histogram', bgr: bool = True):
    super().__init__(max_age=max_age, n_init=n_init, nms_max_overlap=nms_max_overlap)
    self.max_iou_distance, self.max_cosine_distance = max_iou_distance, max_cosine_distance
    self.nn_budget, self.gating_only_position, self.bgr = nn_budget, gating_only_position, bgr
    if isinstance(embedder, str):
      if embedder not in EMBEDDERS:
        raise unknown_choice('embedder', embedder, EMBEDDERS)
      embedder = EMBEDDERS[embedder]()
    self.embedder = embedder
    self.gallery: dict[int, list[np.ndarray]] = {}  # confirmed track id → its embeddings

  def _features(self, raw, embeds, frame, keep):
    if embeds is not None:
      return [np.asarray(embeds[i], np.float32) for i in keep]
    if not raw:
      return []
    if self.embedder is None:
      raise UserError('DeepSort(embedder=None) needs embeds= in update_tracks; pass the '
                      'appearance features or construct it with an embedder')
    if frame is None:
      raise UserError('update_tracks needs frame= (the image) to embed the detections, or embeds=')
    frame = np.asarray(frame)
    crops = []
    for d in raw:
      left, top, w, h = (int(v) for v in d[0])
      crop = frame[max(top, 0):max(top + h, 0), max(left, 0):max(left + w, 0)]
      crops.append(crop[..., ::-1] if self.bgr else crop)
    return list(np.asarray(self.embedder(crops), np.float32))

  def _match(self, detections):
    confirmed = [i for i, t in enumerate(self.tracks) if t.is_confirmed()]
    unconfirmed = [i for i, t in enumerate(self.tracks) if not t.is_confirmed()]
    matches_a, unmatched_detections = [], list(range(len(detections)))
    for level in range(self.max_age):  # the matching cascade: most recently seen first
      if not unmatched_detections:
        break
      level_tracks = [i for i in confirmed if self.tracks[i].time_since_update == 1 + level]
      if not level_tracks:
        continue
      cost = self._gated_appearance_cost(detections, level_tracks, unmatched_detections)
      m, _, unmatched_detections = _reindex(
          assignment.min_cost_matching(cost, self.max_cosine_distance), level_tracks,
          unmatched_detections)
      matches_a += m
    matched = {t for t, _ in matches_a}
    unmatched_a = [i for i in confirmed if i not in matched]
    candidates = unconfirmed + [i for i in unmatched_a if self.tracks[i].time_since_update == 1]
    unmatched_a = [i for i in unmatched_a if self.tracks[i].time_since_update != 1]
    matches_b, unmatched_b, unmatched_detections = self._iou_matching(
        detections, candidates, unmatched_detections, self.max_iou_distance,
        lost_may_match=False)
    return matches_a + matches_b, sorted(set(unmatched_a + unmatched_b)), unmatched_detections

  def _gated_appearance_cost(self, detections, track_indices, detection_indices):
    features = np.stack([detections[d].feature for d in detection_indices])
    cost = np.stack([assignment.cosine_distance(
        np.stack(self.gallery[self.tracks[t].track_id]), features).min(axis=0)
        for t in track_indices])
    dof = 2 if self.gating_only_position else 4
    measurements = np.stack([detections[d].to_xyah() for d in detection_indices])
    for row, t in enumerate(track_indices):
      track = self.tracks[t]
      far = self.kf.gating_distance(track.mean, track.covariance, measurements,
                                    self.gating_only_position) > CHI2_95[dof]
      cost[row, far] = assignment.INFEASIBLE
    return cost

  def _after_update(self):
    """Moves the confirmed tracks' new embeddings into the gallery (last `nn_budget`
    kept); forgets tracks that are no longer confirmed."""
    active = {t.track_id for t in self.tracks if t.is_confirmed()}
    for track in self.tracks:
      if not track.is_confirmed():
        continue
      samples = self.gallery.setdefault(track.track_id, [])
      samples += track.features[track.features_in_gallery:]
      if self.nn_budget is not None:
        del samples[:-self.nn_budget]
      track.features = track.features[-1:]  # the latest stays for get_feature()
      track.features_in_gallery = len(track.features)
    self.gallery = {k: v for k, v in self.gallery.items() if k in active}


def _reindex(result, rows: list[int], cols: list[int]):
  """min_cost_matching's (matches, rows, cols) in submatrix positions → the given indices."""
  matches, unmatched_rows, unmatched_cols = result
  return ([(rows[r], cols[c]) for r, c in matches], [rows[r] for r in unmatched_rows],
          [cols[c] for c in unmatched_cols])
