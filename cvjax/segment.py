"""Runs a trained segmenter on an image file and draws the predicted mask over it.

    python -m cvjax.segment --workdir=runs/deeplabv3_tiny_shapes --image=photo.png \\
        --out=mask.png [--alpha=0.5] [--step=N] [--json]

Restores the run's newest good checkpoint (`cvjax.restore`), predicts per-pixel class
probabilities on the image (resized to the model input like evaluation), takes the
most likely class per pixel, scales that mask back to the image's own size (nearest
neighbour) and paints every non-background class in its colour over the photo, with
opacity --alpha, into --out (PNG, JPEG, ... by extension). Prints one line per class
present: its name and the share of the image's pixels; with --json one JSON object
{"image", "classes": [{"class", "label", "fraction"}]}. Bad input: one `error: ...`
line on stderr, exit status 2.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow only resizes here

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from cvjax import cli  # noqa: E402
from cvjax.detection import draw  # noqa: E402
from cvjax.errors import UserError  # noqa: E402

FLAGS = flags.FlagValues()
cli.define_image_tool_flags(FLAGS, 'segmentation')
flags.DEFINE_float('alpha', 0.5, 'Opacity of the mask colours, in [0, 1].', flag_values=FLAGS)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """uint8[H, W, 3] with class k > 0 of int[H, W] `mask` blended in `draw.colour(k)` at
  opacity `alpha`; background (0) pixels unchanged."""
  palette = np.array([draw.colour(k) for k in range(int(mask.max()) + 1)], np.float32)
  blended = (1 - alpha) * image.astype(np.float32) + alpha * palette[mask]
  out = np.where((mask > 0)[..., None], np.round(blended), image)
  return out.astype(np.uint8)


def segment(workdir: str, image_path: str, out: str | None, alpha: float = 0.5,
            step: int | None = None) -> dict:
  """The class shares of the run in `workdir` on the image at `image_path`; draws the
  mask over it to `out`. Returns {'image', 'mask': int32[H, W], 'classes': [...]}."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from cvjax import restoring  # loads JAX, Flax and orbax
  from cvjax.segmentation import data  # loads TensorFlow
  image = cli.read_image_tool_inputs(image_path, out, alpha=alpha)
  restored = restoring.restore(workdir, step)
  if restored.config.task != 'segmentation':
    raise UserError(f'{workdir} is a {restored.config.task} run, not a segmenter')
  probs = restored.predict(image)[0]  # [S, S, K]
  h, w = image.shape[:2]
  small = Image.fromarray(np.argmax(probs, -1).astype(np.uint8))
  mask = np.asarray(small.resize((w, h), Image.NEAREST), np.int32)
  names = restored.class_names or data.class_names(restored.config.dataset)
  if len(names) != probs.shape[-1]:
    names = [str(k) for k in range(probs.shape[-1])]
  counts = np.bincount(mask.ravel(), minlength=probs.shape[-1])
  rows = [{'class': k, 'label': names[k], 'fraction': round(float(c) / mask.size, 4)}
          for k, c in enumerate(counts) if c]
  if out is not None:
    Image.fromarray(overlay(image, mask, alpha)).save(out)
  return {'image': image_path, 'mask': mask, 'classes': rows}


def run(f: flags.FlagValues) -> int:
  result = segment(f.workdir, f.image, f.out, f.alpha, f.step)
  if f.json:
    print(json.dumps({'image': result['image'], 'classes': result['classes']}))
  else:
    for r in result['classes']:
      print(f'{r["label"]:<12} {r["fraction"]:.4f}')
    if f.out:
      print(f'mask of {len(result["classes"])} classes drawn to {f.out}')
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
