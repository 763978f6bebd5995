"""MOTChallenge text files: one object per line,

    frame, id, left, top, width, height, conf, x, y, z

frames counted from 1, boxes in pixels. Ground truth (gt/gt.txt) uses the last three
columns as class and visibility (MOT16+) and conf as a 0/1 "consider" flag; tracker
output and detections write -1 there (detections: id -1).
"""
from __future__ import annotations

import math
import os
from typing import Iterable

import numpy as np

from cvjax import cli
from cvjax.errors import UserError

COLUMNS = ('frame', 'id', 'left', 'top', 'width', 'height', 'conf', 'x', 'y', 'z')
# Frames past this are refused: the trackers step through every frame up to the last
# (a million frames is over nine hours of 30 fps video).
MAX_FRAME = 1_000_000
# Box coordinates past this are refused: the trackers compute in float32.
MAX_PIXELS = 1_000_000


def read(path: str) -> np.ndarray:
  """The rows of a MOTChallenge file as float64[N, 10] (missing trailing columns: -1),
  sorted by (frame, id). A UserError names the file and line of a bad row: not 6 to 10
  comma-separated finite numbers, a frame that is not an integer in [1, MAX_FRAME], an
  id that is not an integer below 2^31, a negative width or height, a box coordinate beyond
  MAX_PIXELS."""
  rows = []
  for number, line in enumerate(cli.read_text(path).split('\n'), 1):
    line = line.strip()
    if not line:
      continue
    try:
      values = [float(v) for v in line.replace(' ', '').split(',')]
    except ValueError:
      values = []
    if not 6 <= len(values) <= 10 or not all(math.isfinite(v) for v in values):
      raise UserError(f'{path}:{number}: expected "frame,id,left,top,width,height[,conf,'
                      f'x,y,z]" with finite numbers, got {line[:80]!r}')
    frame, track_id, _, _, width, height = values[:6]
    if frame != int(frame) or not 1 <= frame <= MAX_FRAME:
      raise UserError(f'{path}:{number}: the frame must be an integer from 1 to {MAX_FRAME:,}, '
                      f'got {line[:80]!r}')
    if track_id != int(track_id) or abs(track_id) >= 2**31:
      raise UserError(f'{path}:{number}: the id must be an integer below 2^31 (-1 for a '
                      f'detection), got {line[:80]!r}')
    if width < 0 or height < 0:
      raise UserError(f'{path}:{number}: width and height must be 0 or more, got {line[:80]!r}')
    if max(abs(v) for v in values[2:6]) > MAX_PIXELS:
      raise UserError(f'{path}:{number}: boxes are in pixels, at most {MAX_PIXELS:,} from the '
                      f'origin; got {line[:80]!r}')
    rows.append(values + [-1.0] * (10 - len(values)))
  array = np.asarray(rows, np.float64).reshape(-1, 10)
  return array[np.lexsort((array[:, 1], array[:, 0]))]


def write(path: str, rows: Iterable) -> None:
  """Writes rows (each at least frame, id, left, top, width, height; conf and the rest
  default to -1) as MOTChallenge text: ints for frame and id, 2 decimals for boxes."""
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  with open(path, 'w') as f:
    for row in rows:
      row = list(row) + [-1] * (10 - len(row))
      frame, track_id, left, top, w, h, conf, x, y, z = row
      f.write(f'{int(frame)},{int(track_id)},{left:.2f},{top:.2f},{w:.2f},{h:.2f},'
              f'{_number(conf)},{_number(x)},{_number(y)},{_number(z)}\n')


def _number(v) -> str:
  v = float(v)
  return str(int(v)) if v == int(v) else f'{v:.4g}'


def by_frame(rows: np.ndarray, num_frames: int | None = None) -> list[np.ndarray]:
  """rows f[N, 10] → one f[n_t, 10] array per frame 1..num_frames (default: the last)."""
  rows = np.asarray(rows).reshape(-1, 10)
  last = int(rows[:, 0].max()) if len(rows) else 0
  num_frames = last if num_frames is None else num_frames
  frames = rows[:, 0].astype(int)
  return [rows[frames == t] for t in range(1, num_frames + 1)]


def track_rows(frame: int, tracks, confirmed_only: bool = True) -> list[list[float]]:
  """Output rows of frame `frame` (from 1) for the tracks matched in it (boxes: the
  Kalman estimate; ids as ints, also from deep_sort_realtime)."""
  return [[frame, int(t.track_id), *t.to_ltwh().tolist(), -1, -1, -1, -1] for t in tracks
          if t.time_since_update == 0 and (t.is_confirmed() or not confirmed_only)]


def track_sequence(tracker, detections: np.ndarray, num_frames: int | None = None,
                   frames=None, embeds: list | None = None) -> np.ndarray:
  """Runs `tracker` (Sort/DeepSort or anything with update_tracks) over detection rows
  f[N, 10] (MOTChallenge det.txt); `frames[t]` is the image of frame t + 1 (DeepSort
  without embeds), `embeds[t]` f[n_t, D] the embeddings of frame t + 1's detections.
  Returns the confirmed tracks' rows f[M, 10]."""
  out = []
  for t, dets in enumerate(by_frame(detections, num_frames)):
    raw = [(row[2:6].tolist(), float(row[6]), 0) for row in dets]
    kwargs = {}
    if embeds is not None:
      kwargs['embeds'] = embeds[t]
    elif frames is not None:
      kwargs['frame'] = frames[t]
    out += track_rows(t + 1, tracker.update_tracks(raw, **kwargs))
  return np.asarray(out, np.float64).reshape(-1, 10)
