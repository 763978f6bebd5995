"""Runs a trained detector on an image file and draws the detections.

    python -m cvjax.detect --workdir=runs/ssd128_shapes --image=photo.jpg --out=boxes.png \\
        [--min_score=0.5] [--step=N] [--json]

Restores the run's newest good checkpoint (`cvjax.restore`), predicts boxes on the
image (resized to the model input like evaluation, boxes mapped back to the
original pixels), keeps those scoring at least --min_score, draws them with their
class names and scores into --out (PNG, JPEG, ... by extension) and prints one
line per detection: class, score, x1 y1 x2 y2 in pixels; with --json one JSON
object {"image", "detections": [{"class", "label", "score", "box": [x1, y1, x2, y2]}]}.
Bad input: one `error: ...` line on stderr, exit status 2.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow only resizes here

from absl import flags  # noqa: E402

from cvjax import cli  # noqa: E402
from cvjax.detection import draw  # noqa: E402
from cvjax.errors import UserError  # noqa: E402

FLAGS = flags.FlagValues()
cli.define_image_tool_flags(FLAGS, 'detection')
flags.DEFINE_float('min_score', 0.5, 'Lowest score shown, in [0, 1].', flag_values=FLAGS)


def detect(workdir: str, image_path: str, out: str | None, min_score: float = 0.5,
           step: int | None = None) -> dict:
  """Detections of the run in `workdir` on the image at `image_path`; draws them to `out`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from cvjax import restoring  # loads JAX, Flax and orbax
  image = cli.read_image_tool_inputs(image_path, out, min_score=min_score)
  restored = restoring.restore(workdir, step)
  if restored.config.task != 'detection':
    raise UserError(f'{workdir} is a {restored.config.task} run, not a detector')
  found = restored.predict(image)[0]
  keep = found['scores'] >= min_score
  boxes, classes, scores = found['boxes'][keep], found['classes'][keep], found['scores'][keep]
  names = restored.class_names
  h, w = image.shape[:2]
  rows = [{'class': int(c), 'label': names[c] if names else str(int(c)), 'score': float(s),
           'box': [round(float(b[1]) * w, 1), round(float(b[0]) * h, 1),
                   round(float(b[3]) * w, 1), round(float(b[2]) * h, 1)]}
          for b, c, s in zip(boxes, classes, scores)]
  if out is not None:
    picture = draw.draw_boxes(image, boxes, classes, scores, class_names=names)
    Image.fromarray(picture).save(out)
  return {'image': image_path, 'detections': rows}


def run(f: flags.FlagValues) -> int:
  result = detect(f.workdir, f.image, f.out, f.min_score, f.step)
  if f.json:
    print(json.dumps(result))
  else:
    for r in result['detections']:
      print(f'{r["label"]:<12} {r["score"]:.3f}  ' + ' '.join(f'{v:.1f}' for v in r['box']))
    if f.out:
      print(f'{len(result["detections"])} detections drawn to {f.out}')
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
