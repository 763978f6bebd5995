"""SORT and DeepSORT side by side on generated videos: cvjax against deep-sort-realtime.

  python -m benchmarks.tracking [--sequences=4] [--seed=0] [--config=default] \\
      [--peers=deep_sort_realtime] [--embedder=runs/appearance_cnn_shapes_crops] \\
      [--detector=runs/ssd128_shapes_cpu --min_score=0.5] [--json]

Each of --sequences `cvjax_shapes_video` sequences (`cvjax.data.shapes_video`, index
0.., --seed) is tracked from the same simulated detections (`noisy_detections`:
10% misses, objects under 40% visible missed, 5% box jitter, 0.3 false positives per
frame), or with --detector=WORKDIR from that cvjax detection run's boxes on every frame
(`cvjax.track.frame_detections`). DeepSORT's appearance embeddings are colour histograms
of the detected boxes (`ColourHistogramEmbedder`), computed once and handed to both
DeepSORTs (`embeds=`),
so frames/s is the trackers' own time (association, Kalman filter, bookkeeping).
With --embedder=WORKDIR (a cvjax classification run, `cvjax.track.workdir_embedder`)
both DeepSORTs run once more on its L2-normalised penultimate features. "centre gate":
DeepSORT with `gating_only_position=True` (the Mahalanobis gate on (cx, cy), 2 dof). The
metrics (motmetrics, IoU ≥ 0.5) pool all sequences: confirmed tracks matched in each
frame against every ground-truth box.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from typing import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
if __name__ == '__main__':  # before NumPy/SciPy load BLAS; not when imported (tests)
  # The trackers solve 4×4 systems: BLAS threads only contend for the cores
  # (deep_sort_realtime's scipy solve_triangular suffers most).
  os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from cvjax import cli, track  # noqa: E402
from cvjax.data import shapes_video  # noqa: E402
from cvjax.errors import UserError, unknown_choice  # noqa: E402
from cvjax.tracking import ColourHistogramEmbedder, DeepSort, Sort, metrics, mot  # noqa: E402

CONFIGS = {'default': shapes_video.VideoConfig(), 'tiny': shapes_video.TINY}
PEERS = ('deep_sort_realtime',)

FLAGS = flags.FlagValues()
flags.DEFINE_integer('sequences', 4, 'Generated sequences (index 0..).', flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'Seed of the sequences and of their detections.',
                     flag_values=FLAGS)
flags.DEFINE_string('config', 'default', 'Sequence size: default (320x240, 60 frames) or tiny.',
                    flag_values=FLAGS)
flags.DEFINE_string('peers', 'deep_sort_realtime', "Comma-separated: 'deep_sort_realtime' or ''.",
                    flag_values=FLAGS)
flags.DEFINE_string('embedder', None, 'A cvjax classification workdir: DeepSORT also with its '
                    'features.', flag_values=FLAGS)
flags.DEFINE_string('detector', None, 'A cvjax detection workdir: track its detections on the '
                    'frames instead of the simulated ones.', flag_values=FLAGS)
flags.DEFINE_float('min_score', 0.5, '--detector: lowest score kept, in [0, 1].',
                   flag_values=FLAGS)
flags.DEFINE_bool('json', False, 'Print one JSON object.', flag_values=FLAGS)


def trackers(peers: list[str], embedders: list[str]) -> dict:
  """name → (factory of a fresh tracker, the embedder whose embeds it takes, or None)."""
  found = {
      'cvjax sort': (lambda: Sort(), None),
      'cvjax sort max_age=30': (lambda: Sort(max_age=30), None),
  }
  reference = None
  if 'deep_sort_realtime' in peers:
    if importlib.util.find_spec('deep_sort_realtime') is None:
      raise UserError('--peers=deep_sort_realtime: it is not installed '
                      '(pip install deep-sort-realtime), or pass --peers=')
    from deep_sort_realtime.deepsort_tracker import DeepSort as reference  # pylint: disable=g-import-not-at-top
  for embedder in embedders:
    suffix = '' if embedder == 'histogram' else f' ({embedder})'
    found[f'cvjax deepsort{suffix}'] = (lambda: DeepSort(embedder=None), embedder)
    if reference is not None:
      found[f'deep-sort-realtime{suffix}'] = (lambda: reference(embedder=None), embedder)
    found[f'cvjax deepsort, centre gate{suffix}'] = (
        lambda: DeepSort(embedder=None, gating_only_position=True), embedder)
  return found


def compare(num_sequences: int, seed: int, config, peers: list[str],
            embedder_workdir: str | None = None, detector_workdir: str | None = None,
            min_score: float = 0.5) -> dict[str, dict]:
  """{tracker name: metrics.evaluate(...) + frames_per_s} over the pooled sequences; the
  detections are simulated, or those of the detection run `detector_workdir`."""
  embedders = {'histogram': ColourHistogramEmbedder()}
  if embedder_workdir:
    embedders['learned'] = track.workdir_embedder(embedder_workdir)
  detector = track.load_detector(detector_workdir) if detector_workdir else None
  candidates = trackers(peers, list(embedders))
  gt_all, out_all = [], {name: [] for name in candidates}
  seconds = dict.fromkeys(candidates, 0.0)
  frames_total = 0
  for index in range(num_sequences):
    seq = shapes_video.generate_sequence(index, seed, config)
    det = (track.frame_detections(detector, seq['frames'], min_score) if detector else
           shapes_video.noisy_detections(seq['gt'], seed=seed * 1000 + index))
    per_frame = mot.by_frame(det, config.num_frames)
    crops = [[frame[max(int(r[3]), 0):max(int(r[3]) + int(r[5]), 0),
                    max(int(r[2]), 0):max(int(r[2]) + int(r[4]), 0)] for r in rows]
             for frame, rows in zip(seq['frames'], per_frame)]
    embeds = {name: [embed(c) for c in crops] for name, embed in embedders.items()}
    offset = frames_total  # pool sequences: consecutive frames, ids kept apart
    gt = seq['gt'].copy()
    gt[:, 0] += offset
    gt[:, 1] += 100_000 * index
    gt_all.append(gt)
    for name, (make, embedder) in candidates.items():
      tracker = make()
      start = time.perf_counter()
      rows = mot.track_sequence(tracker, det, config.num_frames,
                                embeds=embeds[embedder] if embedder else None)
      seconds[name] += time.perf_counter() - start
      rows[:, 0] += offset
      rows[:, 1] += 100_000 * index
      out_all[name].append(rows)
    frames_total += config.num_frames
  gt = np.concatenate(gt_all)
  table = {}
  for name in candidates:
    result = metrics.evaluate(gt, np.concatenate(out_all[name]))
    table[name] = {k: result[k] for k in ('mota', 'idf1', 'id_switches', 'precision', 'recall',
                                          'motp')}
    table[name]['frames_per_s'] = frames_total / max(seconds[name], 1e-9)
  return table


def run(f: flags.FlagValues) -> int:
  if f.sequences < 1:
    raise UserError(f'--sequences must be at least 1, got {f.sequences}')
  if f.config not in CONFIGS:
    raise unknown_choice('--config', f.config, CONFIGS)
  peers = [p for p in f.peers.split(',') if p]
  for p in peers:
    if p not in PEERS:
      raise unknown_choice('peer', p, PEERS)
  cli.check_unit_interval('min_score', f.min_score)
  table = compare(f.sequences, f.seed, CONFIGS[f.config], peers, f.embedder, f.detector,
                  f.min_score)
  if f.json:
    print(json.dumps(table))
  else:
    config = CONFIGS[f.config]
    print(f'{f.sequences} sequences x {config.num_frames} frames ({config.width}x{config.height}), '
          f'seed {f.seed}; detections: '
          + (f'{f.detector} (score >= {f.min_score})' if f.detector else 'simulated'))
    print(metrics.format_table(table))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
