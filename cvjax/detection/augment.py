"""SSD's training augmentation in tf.data, boxes moved with the pixels.

torchvision's `--data-augmentation ssd` preset (references/detection/presets.py),
itself the Caffe SSD recipe (Liu et al. 2016 §3.6):
  1. photometric distortion (`RandomPhotometricDistort`): each with probability 1/2,
     brightness ×[0.875, 1.125], contrast [0.5, 1.5] (before or after the next two),
     saturation [0.5, 1.5], hue ±0.05, a random channel permutation;
  2. zoom out (`RandomZoomOut`), probability 1/2: the image is placed at a random
     spot of a canvas r× its size, r ∈ [1, 4], filled with the mean colour;
  3. IoU-constrained crop (`RandomIoUCrop`): pick a minimum IoU from {0, .1, .3, .5,
     .7, .9, keep the whole image}; try up to 40 crops of [0.3, 1] of each side with
     aspect ratio in [1/2, 2]; a crop is accepted when some box's centre lies inside
     it and that box's IoU with the crop reaches the minimum; boxes whose centres
     fall outside are dropped, the rest clipped to the crop;
  4. horizontal flip, probability 1/2;
  5. resize to size × size (bilinear, the aspect ratio is not kept).
Differences, all for fixed shapes and speed: crops are continuous (no rounding to
whole pixels); torchvision retries step 3 forever, here after `OUTER_TRIES` minimum
IoU draws without an accepted crop the image is kept whole; steps 2, 3 and 5 are
one `crop_and_resize` of the original image (the canvas is never materialised).

Randomness comes only from the example's stateless seed: the output is a pure
function of (image, boxes, seed).
"""
from __future__ import annotations

import tensorflow as tf

MEAN_FILL = (123.0 / 255, 117.0 / 255, 104.0 / 255)  # torchvision's zoom-out fill
IOU_OPTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)    # 1.0: keep the whole image
CROP_TRIALS = 40
OUTER_TRIES = 8


def _blend(image, other, factor):
  return tf.clip_by_value(factor * image + (1 - factor) * other, 0.0, 1.0)


def _gray(image):
  return tf.image.rgb_to_grayscale(image)


def photometric(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """torchvision's `RandomPhotometricDistort` on float32[H, W, 3] in [0, 1]."""
  r = tf.random.stateless_uniform([7], seed)
  f = tf.random.stateless_uniform([5], tf.random.experimental.stateless_fold_in(seed, 1))
  brightness = 0.875 + 0.25 * f[0]
  contrast = 0.5 + f[1]
  saturation = 0.5 + f[2]
  hue = -0.05 + 0.1 * f[3]

  def maybe(p, fn, x):
    return tf.cond(p < 0.5, lambda: fn(x), lambda: x)

  def adjust_contrast(x):
    return _blend(x, tf.reduce_mean(_gray(x)), contrast)

  image = maybe(r[0], lambda x: tf.clip_by_value(x * brightness, 0.0, 1.0), image)
  contrast_first = r[1] < 0.5
  image = tf.cond(contrast_first, lambda: maybe(r[2], adjust_contrast, image), lambda: image)
  image = maybe(r[3], lambda x: _blend(x, _gray(x), saturation), image)
  image = maybe(r[4], lambda x: tf.clip_by_value(tf.image.adjust_hue(x, hue), 0.0, 1.0), image)
  image = tf.cond(contrast_first, lambda: image, lambda: maybe(r[5], adjust_contrast, image))
  permutation = tf.argsort(tf.random.stateless_uniform([3], tf.random.experimental.stateless_fold_in(seed, 2)))
  return maybe(r[6], lambda x: tf.gather(x, permutation, axis=-1), image)


def _iou_with(boxes, window):
  """IoU of boxes f32[..., M, 4] with windows f32[..., 4] → f32[..., M]."""
  window = window[..., None, :]
  top_left = tf.maximum(boxes[..., :2], window[..., :2])
  bottom_right = tf.minimum(boxes[..., 2:], window[..., 2:])
  inter = tf.reduce_prod(tf.maximum(bottom_right - top_left, 0.0), axis=-1)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  union = area(boxes) + area(window) - inter
  return tf.math.divide_no_nan(inter, union)


def iou_crop(boxes: tf.Tensor, mask: tf.Tensor, aspect: tf.Tensor, seed: tf.Tensor):
  """torchvision's `RandomIoUCrop` search, vectorised over all trials.

  Args:
    boxes: f32[M, 4] normalised; mask: bool[M] real boxes; aspect: scalar width /
      height of the image in pixels; seed: int[2].
  Returns:
    (window f32[4] normalised (ymin, xmin, ymax, xmax), keep bool[M]): the whole
    image and `mask` when the whole image is kept.
  """
  n, t = OUTER_TRIES, CROP_TRIALS
  seeds = tf.random.experimental.stateless_split(seed, 3)
  option = tf.gather(tf.constant(IOU_OPTIONS),
                     tf.random.stateless_uniform([n], seeds[0], 0, len(IOU_OPTIONS), tf.int32))
  u = tf.random.stateless_uniform([n, t, 4], seeds[1])
  w = 0.3 + 0.7 * u[..., 0]
  h = 0.3 + 0.7 * u[..., 1]
  left, top = (1 - w) * u[..., 2], (1 - h) * u[..., 3]
  window = tf.stack([top, left, top + h, left + w], axis=-1)               # [n, t, 4]
  crop_aspect = w / h * aspect
  cy = (boxes[:, 0] + boxes[:, 2]) / 2
  cx = (boxes[:, 1] + boxes[:, 3]) / 2
  inside = ((window[..., 1:2] < cx) & (cx < window[..., 3:4]) & (window[..., 0:1] < cy)
            & (cy < window[..., 2:3]) & mask)                                # [n, t, M]
  iou = tf.where(inside, _iou_with(boxes, window), -1.0)
  accepted = ((crop_aspect >= 0.5) & (crop_aspect <= 2.0) & tf.reduce_any(inside, -1)
              & (tf.reduce_max(iou, -1) >= option[:, None]))                 # [n, t]
  whole = option >= 1.0
  done = whole | tf.reduce_any(accepted, -1)                                 # [n]
  first = tf.argmax(tf.cast(done, tf.int32))                                 # first decisive try
  trial = tf.argmax(tf.cast(accepted[first], tf.int32))
  use_crop = tf.reduce_any(done) & ~whole[first]
  full = tf.constant([0.0, 0.0, 1.0, 1.0])
  return (tf.where(use_crop, window[first, trial], full),
          tf.where(use_crop, inside[first, trial], mask))


def _sample_image(image, window, size, fill):
  """Bilinear resample of `window` (normalised image coordinates, may extend past the
  image) to size × size, pixel centres as tf.image.resize; outside → fill."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  lo, hi = window[:2], window[2:]
  # Output pixel i samples source (lo + (i + 0.5)/size · (hi − lo))·H − 0.5; crop_and_resize
  # samples y1·(H − 1) + i·(y2 − y1)(H − 1)/(size − 1): solve for y1, y2.
  first = lo * shape + 0.5 * (hi - lo) * shape / size - 0.5
  last = lo * shape + (size - 0.5) * (hi - lo) * shape / size - 0.5
  scale = tf.maximum(shape - 1, 1.0)
  box = tf.concat([first / scale, last / scale], 0)[None]
  fill = tf.constant(fill, tf.float32)
  out = tf.image.crop_and_resize((image - fill)[None], box, [0], [size, size],
                                 extrapolation_value=0.0)
  return out[0] + fill


def ssd_augment(image: tf.Tensor, boxes: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, *,
                size: int, photometric_distort: bool = True, zoom_out: bool = True,
                crop: bool = True, flip: bool = True, fill=MEAN_FILL):
  """The SSD augmentation of one example.

  Args:
    image: float32[H, W, 3] in [0, 1], any size.
    boxes: f32[M, 4] (ymin, xmin, ymax, xmax) normalised; mask: bool[M] real rows.
    seed: int32/int64[2] stateless seed.
    size: output side S.
  Returns:
    (image f32[S, S, 3], boxes f32[M, 4], mask bool[M]): rows keep their positions;
    dropped boxes get mask False (their coordinates are meaningless).
  """
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5)
  if photometric_distort:
    image = photometric(image, seeds[0])
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  # Zoom out: the image sits at offset (oy, ox) (in image sizes) of a canvas r× as big.
  z = tf.random.stateless_uniform([4], seeds[1])
  r = tf.where(z[0] < 0.5, 1.0 + 3.0 * z[1], 1.0) if zoom_out else tf.constant(1.0)
  offset = (r - 1.0) * z[2:4]                                                # (oy, ox)
  offset4 = tf.concat([offset, offset], 0)
  canvas_boxes = (boxes + offset4) / r
  if crop:
    window, mask = iou_crop(canvas_boxes, mask, shape[1] / shape[0], seeds[2])
  else:
    window = tf.constant([0.0, 0.0, 1.0, 1.0])
  extent = tf.concat([window[2:] - window[:2]] * 2, 0)
  boxes = tf.clip_by_value((canvas_boxes - tf.concat([window[:2]] * 2, 0)) / extent, 0.0, 1.0)
  image = _sample_image(image, window * r - offset4, size, fill)            # canvas → image coords
  if flip:
    flipped = tf.random.stateless_uniform([], seeds[3]) < 0.5
    image = tf.cond(flipped, lambda: image[:, ::-1], lambda: image)
    boxes = tf.cond(flipped, lambda: tf.stack([boxes[:, 0], 1 - boxes[:, 3], boxes[:, 2],
                                               1 - boxes[:, 1]], -1), lambda: boxes)
  mask = mask & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  return tf.ensure_shape(image, [size, size, 3]), boxes, mask


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Eval: float32[H, W, 3] → [size, size, 3], bilinear without antialiasing (as
  torchvision's SSD transform), aspect ratio not kept; boxes are unchanged."""
  return tf.image.resize(image, [size, size], method='bilinear', antialias=False)
