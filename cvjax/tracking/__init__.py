"""Multi-object tracking by detection: SORT (Bewley et al. 2016) and DeepSORT (Wojke et al. 2017).

    tracker = cvjax.tracking.DeepSort(max_age=30)        # or Sort(max_age=30)
    for frame in frames:                                  # uint8[H, W, 3]
      tracks = tracker.update_tracks([([left, top, w, h], confidence, cls), ...], frame=frame)
      for t in tracks:
        if t.is_confirmed():
          draw(t.track_id, t.to_ltrb())

The calls and the track objects follow deep_sort_realtime's (`update_tracks`, `embeds=`,
`track_id`, `is_confirmed()`, `to_ltrb()`, `to_ltwh()`, `det_class`, `time_since_update`),
except that track ids are ints (deep_sort_realtime's are strings of ints).

Units: boxes in pixels; (left, top, width, height) — "ltwh" — at the API, the Kalman
state is (cx, cy, aspect w/h, height) and their velocities per frame.

Modules: `kalman` (the constant-velocity filter), `assignment` (IoU, Hungarian matching
with a threshold, Mahalanobis gating, the matching cascade), `trackers` (`Track`,
`Sort`, `DeepSort`), `embedders` (the colour-histogram appearance embedder), `mot`
(MOTChallenge text files), `metrics` (MOTA, IDF1, ... through motmetrics).
Imports only numpy and scipy (motmetrics on first use of `metrics.evaluate`).
"""
from cvjax.tracking.embedders import ColourHistogramEmbedder
from cvjax.tracking.kalman import KalmanFilter
from cvjax.tracking.trackers import DeepSort, Sort, Track

__all__ = ['ColourHistogramEmbedder', 'DeepSort', 'KalmanFilter', 'Sort', 'Track']
