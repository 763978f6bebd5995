"""YOLO anchors for a detection dataset: k-means (1 − IoU) over its training boxes.

    python -m cvjax.anchors --dataset=cvjax_shapes --k=9 [--seed=0] [--data_dir=DIR]

Reads every training box's (w, h), normalised to its image (what a square model input
sees after the resize), clusters them with `cvjax.detection.yolo.kmeans_anchors`, and
prints the anchors smallest first, their average best IoU with the boxes, and the line
to put into a flagfile:

    --model_kwargs=anchors=(w0,h0,w1,h1,...)

k is 9 for yolov3/yolov3_shapes (three per map), 6 for yolov3_tiny. Bad input ends with one
`error: ...` line and exit status 2.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from cvjax import cli  # noqa: E402
from cvjax.detection import yolo  # noqa: E402
from cvjax.errors import UserError  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_string('dataset', None, 'A detection dataset (cvjax_shapes, cvjax_shapes/tiny, '
                    'voc/07+12, coco/2017, ...).', flag_values=FLAGS)
flags.DEFINE_integer('k', 9, 'Number of anchors (yolov3: 9, yolov3_tiny: 6).', flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'Seed of the k-means++ initialisation.', flag_values=FLAGS)
flags.DEFINE_string('data_dir', None, "TFDS data_dir (default: TFDS's).", flag_values=FLAGS)
flags.DEFINE_string('raw_data_dir', None, "Directory with the dataset's original archives.",
                    flag_values=FLAGS)
flags.mark_flags_as_required(['dataset'], flag_values=FLAGS)


def train_box_sizes(dataset: str, data_dir: str | None = None,
                    raw_data_dir: str | None = None) -> np.ndarray:
  """float32[N, 2] (w, h) of every real box of `dataset`'s train split (no crowd boxes),
  normalised to the image; images are not decoded."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from cvjax.detection import data  # loads TensorFlow
  data.dataset_meta(dataset, data_dir=data_dir, raw_data_dir=raw_data_dir)
  max_boxes = data.spec(dataset).max_boxes
  sizes = []
  for tfds_name, split in data.parts(dataset, 'train'):
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    keys = [k for k in ('image', 'instances', 'segmentation') if k in builder.info.features]
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={k: tfds.decode.SkipDecoding() for k in keys})
    ds = ds.map(lambda ex: data.parse(ex, max_boxes, drop_crowd=True))
    for ex in ds.as_numpy_iterator():
      b = ex['boxes'][ex['box_mask']]
      sizes.append(np.stack([b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], -1))
  return np.concatenate(sizes).astype(np.float32) if sizes else np.zeros((0, 2), np.float32)


def model_kwargs_value(anchors: np.ndarray) -> str:
  """'anchors=(w0,h0,...)' with 4 decimals, for --model_kwargs."""
  return 'anchors=(' + ','.join(f'{v:.4f}' for v in np.asarray(anchors).reshape(-1)) + ')'


def run(f: flags.FlagValues) -> int:
  if f.k < 1:
    raise UserError(f'--k must be a positive integer, got {f.k}')
  wh = train_box_sizes(f.dataset, f.data_dir, f.raw_data_dir)
  anchors = yolo.kmeans_anchors(wh, f.k, f.seed)
  print(f'{len(wh)} training boxes of {f.dataset}; {f.k} anchors (w, h), normalised, '
        f'smallest first; average best IoU {yolo.mean_best_iou(wh, anchors):.3f}')
  for w, h in anchors:
    print(f'  {w:.4f} {h:.4f}')
  print(f'--model_kwargs={model_kwargs_value(anchors)}')
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
