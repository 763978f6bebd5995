"""Tracks objects through a video with SORT or DeepSORT and scores tracks against ground truth.

    python -m cvjax.track --detections=det.txt --tracker=sort --out=tracks.txt
    python -m cvjax.track --detections=det.txt --frames=seq/img1 --tracker=deepsort \\
        --out=tracks.txt [--embedder=WORKDIR] [--picture=tracks.png] [--gif=tracks.gif]
    python -m cvjax.track --detector=runs/ssd_shapes --frames=seq/img1 --out=tracks.txt
    python -m cvjax.track --evaluate --ground_truth=seq/gt/gt.txt --tracks=tracks.txt

Detections come from a MOTChallenge det.txt (`frame,-1,left,top,w,h,conf,...`, frames
from 1), or from a cvjax detection run (`--detector`) applied to every image of
`--frames` (sorted by name; a MOTChallenge sequence directory means its img1/),
keeping boxes scoring at least --min_score. Tracks are written as MOTChallenge text
(`frame,id,left,top,w,h,-1,-1,-1,-1`, confirmed tracks matched in the frame).
DeepSORT needs `--frames` to embed the detected boxes: with `--embedder=WORKDIR`, a
cvjax classification run whose penultimate features (L2-normalised) embed the crops;
without it, colour histograms (`cvjax.tracking.ColourHistogramEmbedder`).
`--ground_truth` (while tracking, or with `--evaluate --tracks`) prints MOTA, IDF1, ID
switches, precision, recall and MOTP (motmetrics, `pip install "cvjax[track]"`).
`--picture` draws every track's path over the last frame, `--gif` an animation of
the boxes. Bad input: one `error: ...` line on stderr, exit status 2.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable, Sequence

from absl import flags
import numpy as np

from cvjax import cli
from cvjax.errors import UserError
from cvjax.tracking import DeepSort, Sort, metrics, mot

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp')

FLAGS = flags.FlagValues()
flags.DEFINE_string('detections', None, 'MOTChallenge det.txt to track.', flag_values=FLAGS)
flags.DEFINE_string('detector', None, 'A cvjax detection workdir to run on --frames instead.',
                    flag_values=FLAGS)
flags.DEFINE_string('frames', None, 'Directory of the frame images (sorted by name) or a '
                    'MOTChallenge sequence directory (its img1/).', flag_values=FLAGS)
flags.DEFINE_float('min_score', 0.5, '--detector: lowest score kept, in [0, 1].',
                   flag_values=FLAGS)
flags.DEFINE_enum('tracker', 'sort', ['sort', 'deepsort'], 'The tracker.', flag_values=FLAGS)
flags.DEFINE_integer('max_age', None, 'Frames a track may go unmatched (default: SORT 1, '
                     'DeepSORT 30).', flag_values=FLAGS)
flags.DEFINE_integer('n_init', 3, 'Matched frames before a track is confirmed.',
                     flag_values=FLAGS)
flags.DEFINE_string('embedder', None, 'DeepSORT: a cvjax classification workdir whose '
                    'penultimate features embed the crops (default: colour histograms).',
                    flag_values=FLAGS)
flags.DEFINE_bool('gating_only_position', False, 'DeepSORT: gate matches on the box centre '
                  'only (2 dof) instead of (cx, cy, aspect, height).', flag_values=FLAGS)
flags.DEFINE_string('out', None, 'Where to write the tracks (MOTChallenge text).',
                    flag_values=FLAGS)
flags.DEFINE_string('picture', None, 'Draw the tracks over the last frame into this image.',
                    flag_values=FLAGS)
flags.DEFINE_string('gif', None, 'Write an animated GIF of the tracked boxes.', flag_values=FLAGS)
flags.DEFINE_bool('evaluate', False, 'Score --tracks against --ground_truth (no tracking).',
                  flag_values=FLAGS)
flags.DEFINE_string('ground_truth', None, 'MOTChallenge gt.txt to score against.',
                    flag_values=FLAGS)
flags.DEFINE_string('tracks', None, '--evaluate: the tracks file to score.', flag_values=FLAGS)
flags.DEFINE_float('iou_threshold', 0.5, 'Evaluation: smallest IoU of a match.',
                   flag_values=FLAGS)


def frame_paths(directory: str) -> list[str]:
  """The image files of `directory` (or of its img1/), sorted by name."""
  if not os.path.isdir(directory):
    raise UserError(f'--frames={directory} is not a directory')
  if os.path.isdir(os.path.join(directory, 'img1')):
    directory = os.path.join(directory, 'img1')
  paths = sorted(os.path.join(directory, n) for n in os.listdir(directory)
                 if n.lower().endswith(IMAGE_EXTENSIONS))
  if not paths:
    raise UserError(f'--frames={directory} holds no images ({", ".join(IMAGE_EXTENSIONS)})')
  return paths


def load_detector(workdir: str):
  """`cvjax.restore(workdir)` of a detection run; a `UserError` for a run of another task."""
  from cvjax import restoring  # loads JAX, Flax and orbax
  restored = restoring.restore(workdir)
  if restored.config.task != 'detection':
    raise UserError(f'--detector={workdir} is a {restored.config.task} run, not a detector')
  return restored


def frame_detections(restored, frames: Iterable[np.ndarray], min_score: float) -> np.ndarray:
  """MOTChallenge det rows f[N, 10] of a restored detector on each uint8[H, W, 3] frame:
  frame numbers from 1, boxes in pixels, those scoring at least `min_score` (in [0, 1]);
  column 8 (`x`) holds the class."""
  rows = []
  for t, image in enumerate(frames):
    h, w = image.shape[:2]
    found = restored.predict(image)[0]
    for box, cls, score in zip(found['boxes'], found['classes'], found['scores']):
      if score >= min_score:
        y0, x0, y1, x1 = (float(v) for v in box)
        rows.append([t + 1, -1, x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h, float(score),
                     int(cls), -1, -1])
  return np.asarray(rows, np.float64).reshape(-1, 10)


def workdir_embedder(workdir: str) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
  """An embedder (RGB crops → float32[N, D]) from a cvjax classification run: each crop
  resized to the run's input size, its eval preprocessing, then the input of the
  classifier head, L2-normalised."""
  import jax  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from cvjax import data, models, restoring  # pylint: disable=g-import-not-at-top
  from cvjax.tasks.features import feature_fn  # pylint: disable=g-import-not-at-top
  from cvjax.train import freeze  # pylint: disable=g-import-not-at-top
  restored = restoring.restore(workdir)
  config = restored.config
  if config.task != 'classification':
    raise UserError(f'--embedder={workdir} is a {config.task} run; give a classification run')
  height, _, channels = models.model_input_shape(config.model)
  size = config.image_size or height
  head = freeze.head_modules(restored.model, (1, size, size, channels))
  features = jax.jit(feature_fn(restored.model, head[0]))

  def embed(crops: Sequence[np.ndarray]) -> np.ndarray:
    if not crops:
      return np.zeros((0, 1), np.float32)
    batch = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((size, size)))
                      if c.size else np.zeros((size, size, 3), np.uint8) for c in crops])
    if channels == 1:
      batch = batch.mean(axis=-1, keepdims=True).astype(np.uint8)
    n = len(batch)  # padded to a power of two: a few compiled shapes, not one per count
    batch = np.concatenate([batch, np.zeros((2 ** int(np.ceil(np.log2(n))) - n,
                                              *batch.shape[1:]), np.uint8)])
    x = data.preprocess_for_eval(batch, dataset=config.dataset, image_size=size,
                                 channels=channels, preprocessing=config.preprocessing)
    f = np.asarray(features(restored.variables, x), np.float32)[:n]
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
  return embed


def draw_tracks(frames: list[np.ndarray], rows: np.ndarray, picture: str | None,
                gif: str | None) -> None:
  """The picture (paths over the last frame) and the GIF (boxes and ids per frame)."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  import colorsys  # pylint: disable=g-import-not-at-top

  def colour(track_id: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((track_id * 0.618034) % 1.0, 0.9, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)

  per_frame = mot.by_frame(rows, len(frames))
  if picture:
    image = Image.fromarray(frames[-1])
    pen = ImageDraw.Draw(image)
    for track_id in np.unique(rows[:, 1]).astype(int):
      mine = rows[rows[:, 1] == track_id]
      centres = list(zip(mine[:, 2] + mine[:, 4] / 2, mine[:, 3] + mine[:, 5] / 2))
      if len(centres) > 1:
        pen.line(centres, fill=colour(track_id), width=2)
      x, y = centres[-1]
      pen.text((x + 3, y - 10), str(track_id), fill=colour(track_id))
    for row in per_frame[-1]:
      x, y, w, h = row[2:6]
      pen.rectangle([x, y, x + w, y + h], outline=colour(int(row[1])), width=2)
    image.save(picture)
  if gif:
    images = []
    for frame, found in zip(frames, per_frame):
      image = Image.fromarray(frame)
      pen = ImageDraw.Draw(image)
      for row in found:
        x, y, w, h = row[2:6]
        pen.rectangle([x, y, x + w, y + h], outline=colour(int(row[1])), width=2)
        pen.text((x + 2, y + 1), str(int(row[1])), fill=colour(int(row[1])))
      images.append(image)
    images[0].save(gif, save_all=True, append_images=images[1:], duration=100, loop=0)


def _check_out(path: str | None, flag: str, extensions: tuple[str, ...]) -> None:
  if path is None:
    return
  if not path.lower().endswith(extensions):
    raise UserError(f'--{flag}={path}: use one of the extensions {", ".join(extensions)}')
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise UserError(f'--{flag}={path}: directory {parent} does not exist')


def evaluate(ground_truth: str, tracks: str, iou_threshold: float) -> dict:
  result = metrics.evaluate(mot.read(ground_truth), mot.read(tracks), iou_threshold)
  print(metrics.format_table({os.path.basename(tracks): result}))
  return result


def run(f: flags.FlagValues) -> int:
  cli.check_unit_interval('iou_threshold', f.iou_threshold)
  if f.evaluate:
    if not f.ground_truth or not f.tracks:
      raise UserError('--evaluate needs --ground_truth=gt.txt and --tracks=tracks.txt')
    evaluate(f.ground_truth, f.tracks, f.iou_threshold)
    return 0
  if f.tracks:
    raise UserError('--tracks is the file --evaluate scores; to write tracks use --out')
  if bool(f.detections) == bool(f.detector):
    raise UserError('give either --detections=det.txt or --detector=WORKDIR --frames=DIR')
  if f.detector and not f.frames:
    raise UserError('--detector needs --frames=DIR, the images to detect in')
  if f.tracker == 'deepsort' and not f.frames:
    raise UserError('--tracker=deepsort needs --frames=DIR: it embeds the detected boxes '
                    'cut from the frames')
  if f.embedder and f.tracker != 'deepsort':
    raise UserError('--embedder is for --tracker=deepsort')
  if (f.picture or f.gif) and not f.frames:
    raise UserError('--picture and --gif need --frames=DIR, the images to draw on')
  _check_out(f.out, 'out', ('.txt',))
  _check_out(f.picture, 'picture', ('.png', '.jpg', '.jpeg'))
  _check_out(f.gif, 'gif', ('.gif',))
  if f.ground_truth and not os.path.isfile(f.ground_truth):
    raise UserError(f'--ground_truth={f.ground_truth} does not exist')
  cli.check_unit_interval('min_score', f.min_score)
  paths = frame_paths(f.frames) if f.frames else None
  detector = load_detector(f.detector) if f.detector else None
  frames = [cli.read_image(p, flag=None) for p in paths] if paths else None
  detections = (mot.read(f.detections) if f.detections
                else frame_detections(detector, frames, f.min_score))
  num_frames = len(paths) if paths else int(detections[:, 0].max(initial=0))
  if paths and len(detections) and detections[:, 0].max() > len(paths):
    raise UserError(f'--detections has frame {int(detections[:, 0].max())} but --frames holds '
                    f'{len(paths)} images')
  kwargs = {'n_init': f.n_init} | ({} if f.max_age is None else {'max_age': f.max_age})
  if f.tracker == 'sort':
    tracker = Sort(**kwargs)
  else:
    embedder = workdir_embedder(f.embedder) if f.embedder else 'histogram'
    tracker = DeepSort(embedder=embedder, bgr=False,
                       gating_only_position=f.gating_only_position, **kwargs)
  start = time.perf_counter()
  rows = mot.track_sequence(tracker, detections, num_frames, frames=frames)
  seconds = time.perf_counter() - start
  print(f'{f.tracker}: {len(np.unique(rows[:, 1]))} tracks over {num_frames} frames '
        f'({num_frames / max(seconds, 1e-9):.0f} frames/s)')
  if f.out:
    mot.write(f.out, rows)
    print(f'wrote {f.out}')
  if f.picture or f.gif:
    draw_tracks(frames, rows, f.picture, f.gif)
  if f.ground_truth:
    print(metrics.format_table({f.tracker: metrics.evaluate(mot.read(f.ground_truth), rows,
                                                            f.iou_threshold)}))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before --detector/--embedder load TF
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
