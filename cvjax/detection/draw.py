"""Drawing labelled boxes on images (PIL), for `python -m cvjax.detect` and the README."""
from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np


def colour(index: int) -> tuple[int, int, int]:
  """A distinct, bright RGB colour per class index (golden-ratio hues)."""
  r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.85, 1.0)
  return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, classes: Sequence[int],
               scores: Sequence[float] | None = None,
               class_names: Sequence[str] | None = None, width: int | None = None) -> np.ndarray:
  """Returns a copy of `image` with the boxes drawn and labelled.

  Args:
    image: uint8[H, W, 3] (or [H, W] / [H, W, 1], drawn in colour).
    boxes: f32[N, 4] (ymin, xmin, ymax, xmax) normalised to the image.
    classes: N class indices; scores: N scores in [0, 1] or None.
    class_names: index → name; None: the index is written.
    width: line width in pixels (default: about 1/150 of the image side).
  Returns:
    uint8[H, W, 3].
  """
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top
  array = np.asarray(image)
  if array.ndim == 2:
    array = array[..., None]
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  picture = Image.fromarray(array.astype(np.uint8))
  h, w = array.shape[:2]
  width = width or max(1, round(max(h, w) / 150))
  pen = ImageDraw.Draw(picture)
  try:
    font = ImageFont.load_default(size=max(10, round(max(h, w) / 40)))
  except TypeError:  # Pillow < 10.1: one fixed size
    font = ImageFont.load_default()
  for i, box in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4)):
    c = int(classes[i])
    y0, x0, y1, x1 = box[0] * h, box[1] * w, box[2] * h, box[3] * w
    fill = colour(c)
    pen.rectangle([x0, y0, x1, y1], outline=fill, width=width)
    text = class_names[c] if class_names is not None and c < len(class_names) else str(c)
    if scores is not None:
      text = f'{text} {float(scores[i]):.2f}'
    left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
    ty = y0 - (bottom - top) - 2 * width if y0 - (bottom - top) - 2 * width >= 0 else y0
    pen.rectangle([x0, ty, x0 + (right - left) + 2 * width, ty + (bottom - top) + 2 * width],
                  fill=fill)
    pen.text((x0 + width - left, ty + width - top), text, fill=(0, 0, 0), font=font)
  return np.asarray(picture)
