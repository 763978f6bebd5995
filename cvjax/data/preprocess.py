"""Preprocessing and augmentation ops on example dicts: one registry for every task.

An op string is `|`-separated calls, e.g. `"pad_crop(4)|flip_lr|rotate(10)"`; each
name is looked up in `OPS` (or `PRESETS`) and called with the (Python literal)
arguments given. `build` composes them into `apply(example, seed) -> example`:

  image         float32[H, W, C], values in [0, 1] (standardised after `normalize`)
  segmentation  int32[H, W, 1] class per pixel, IGNORE where no pixel is labelled
  boxes         float32[M, 4] (ymin, xmin, ymax, xmax) normalised, with
  box_mask      bool[M], the real boxes
  target        float32[H, W, C] in [0, 1], the high-resolution image (`sr_pair` makes it)
  image_hw      int32[2], the true (H, W) of an image stored padded (`random_crop` reads it)
  anything else (label, labels, ...) passes through untouched.

Geometric ops move `segmentation` (nearest neighbour) and `boxes` (clipped to the
image; a box left empty gets box_mask False) exactly as the pixels; photometric ops
touch `image` only. Deterministic ops (`random=False`) also take a batch: a leading
axis on every key. `seed` is int32/int64[2], the stateless seed of the example; each
random op gets its own seed split from it, and draws only from `tf.random.stateless_*`
/ `tf.image.stateless_*` ops, so the output is a pure function of (example, seed).

`zoom_out`, `iou_crop` and `flip_lr` after them only move a pending view of the
image (`VIEW`, normalised coordinates, mirrored when xmin > xmax); the next `resize`
samples it once at the output size (SSD's expand-crop-flip-resize is one resample),
any other op first samples it at its own size. Ops with a `size` parameter default
it to the model's input size. `check` refuses an op that cannot apply to a task's
examples. Adding an op is one decorated function.

Super-resolution, EDSR's recipe: `random_crop(96)|dihedral|sr_pair(2)` cuts a
high-resolution patch (give its size: the default is the model's input size, the LR
side), applies one of the square's 8 symmetries (`flip_lr`, `flip_ud`, `dihedral`),
and makes the pair (image: its bicubic ×1/2 in 8-bit levels, target: the patch);
`to_y` before `sr_pair` for luma-only models.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import math
from typing import Callable

import tensorflow as tf

from cvjax.errors import UserError, unknown_choice

Apply = Callable[..., dict]
IGNORE = 255           # segmentation label of pixels that were padded in, not seen
VIEW = '_view'         # the pending view of `zoom_out` / `iou_crop`, float32[4]
IMAGE_HW = 'image_hw'  # int32[2]: true (H, W) of an image stored padded (see random_crop)
MEAN_FILL = (123.0 / 255, 117.0 / 255, 104.0 / 255)  # torchvision's zoom-out fill
PAD_LIMIT = 8          # `fit` pads images at most this many pixels smaller than the input
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # Keras' 'caffe' means, BGR order


@dataclasses.dataclass(frozen=True)
class OpDef:
  """A registered op: `factory(*args) -> Apply`; `random` if it uses the seed;
  `requires`: example keys it cannot work without; `lazy`: it understands `VIEW`."""
  factory: Callable[..., Apply]
  random: bool
  requires: frozenset = frozenset()
  lazy: bool = False


OPS: dict[str, OpDef] = {}
PRESETS = {'ssd': 'photometric|zoom_out|iou_crop|flip_lr', 'none': ''}
ALIASES = {'flip': 'flip_lr'}


def register(*, random: bool, requires=(), lazy: bool = False):
  """Decorator adding an op factory to `OPS` under its function name."""
  def add(factory):
    OPS[factory.__name__] = OpDef(factory, random, frozenset(requires), lazy)
    return factory
  return add


def image_only(fn: Callable) -> Apply:
  """An op touching only the image: `fn(image[, seed]) -> image`."""
  def apply(ex, seed=None):
    return {**ex, 'image': fn(ex['image'], seed)}
  return apply


# ---------------------------------------------------------------- geometry helpers


def _hw(image):
  """Height and width: Python ints where static, scalar tensors otherwise."""
  dynamic, rank = tf.shape(image), image.shape.rank
  return tuple(image.shape[i] if image.shape[i] is not None else dynamic[i]
               for i in (rank - 3, rank - 2))


def _spatial(ex, fn_image, fn_mask=None):
  """Applies `fn_image(image, nearest=False)` to the image and, nearest-neighbour with
  IGNORE fill, to the segmentation."""
  out = {**ex, 'image': fn_image(ex['image'], False)}
  if 'segmentation' in ex:
    mask = tf.cast(ex['segmentation'], tf.float32)
    out['segmentation'] = tf.cast(tf.round((fn_mask or fn_image)(mask, True)), tf.int32)
  return out


def move_boxes(ex, scale, offset, clip: bool = True):
  """boxes ↦ boxes · scale + offset per (y, x) coordinate (min/max re-ordered, so a
  negative scale mirrors), clipped to [0, 1]; boxes left empty lose their mask."""
  if 'boxes' not in ex:
    return ex
  scale = tf.tile(tf.cast(scale, tf.float32), [2])
  moved = ex['boxes'] * scale + tf.tile(tf.cast(offset, tf.float32), [2])
  lo, hi = tf.minimum(moved[..., :2], moved[..., 2:]), tf.maximum(moved[..., :2], moved[..., 2:])
  boxes = tf.concat([lo, hi], -1)
  if clip:
    boxes = tf.clip_by_value(boxes, 0.0, 1.0)
  keep = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
  return {**ex, 'boxes': boxes, 'box_mask': ex['box_mask'] & keep}


def _crop(ex, top, left, height, width):
  """Crops the pixel window (top, left, height, width) of a [H, W, C] example."""
  full_h, full_w = (tf.cast(v, tf.float32) for v in _hw(ex['image']))
  out = _spatial(ex, lambda x, _: tf.slice(x, [top, left, 0], [height, width, -1]))
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  return move_boxes(out, tf.stack([full_h / h, full_w / w]),
                    -tf.stack([tf.cast(top, tf.float32) / h, tf.cast(left, tf.float32) / w]))


def _resize(ex, size_hw, antialias=True):
  """Resizes image (bilinear) and segmentation (nearest); normalised boxes stay."""
  return _spatial(ex, lambda x, nearest: tf.image.resize(
      x, size_hw, method='nearest' if nearest else 'bilinear',
      antialias=antialias and not nearest))


def sample_view(ex, size_hw, fill=MEAN_FILL):
  """Samples the pending `VIEW` (normalised image coordinates, may reach past the
  image, mirrored when xmin > xmax) at `size_hw` with bilinear pixel centres as
  tf.image.resize; outside the image: `fill` (image) and IGNORE (segmentation)."""
  if VIEW not in ex:
    return ex
  view = ex[VIEW]
  out = {k: v for k, v in ex.items() if k != VIEW}
  size = tf.cast(tf.stack(size_hw), tf.float32)

  def sample(x, nearest):
    shape = tf.cast(tf.shape(x)[:2], tf.float32)
    lo, hi = view[:2], view[2:]
    # Output pixel i samples (lo + (i + 0.5)/n · (hi − lo))·H − 0.5; crop_and_resize
    # samples y1·(H − 1) + i·(y2 − y1)(H − 1)/(n − 1): solve for y1, y2.
    first = lo * shape + 0.5 * (hi - lo) * shape / size - 0.5
    last = lo * shape + (size - 0.5) * (hi - lo) * shape / size - 0.5
    box = tf.concat([first, last], 0) / tf.tile(tf.maximum(shape - 1, 1.0), [2])
    if nearest:
      base = float(IGNORE)
    else:
      base = sum(fill) / len(fill) if x.shape[-1] == 1 else tf.constant(fill, tf.float32)
    y = tf.image.crop_and_resize((x - base)[None], box[None], [0], tf.cast(size, tf.int32),
                                 method='nearest' if nearest else 'bilinear',
                                 extrapolation_value=0.0)
    return y[0] + base
  return _spatial(out, sample)


def _view_size(ex):
  """The pending view's size in pixels of the decoded image (at least 1)."""
  h, w = (tf.cast(v, tf.float32) for v in _hw(ex['image']))
  view = ex[VIEW]
  return [tf.maximum(1, tf.cast(tf.round(tf.abs(view[2] - view[0]) * h), tf.int32)),
          tf.maximum(1, tf.cast(tf.round(tf.abs(view[3] - view[1]) * w), tf.int32))]


def _narrow_view(ex, sub):
  """Narrows the current view to `sub` (normalised in the current view, (ymin, xmin,
  ymax, xmax); xmin > xmax mirrors) and moves the boxes into it (no clipping)."""
  view = ex.get(VIEW, tf.constant([0.0, 0.0, 1.0, 1.0]))
  lo, extent = view[:2], view[2:] - view[:2]
  out = {**ex, VIEW: tf.concat([lo + sub[:2] * extent, lo + sub[2:] * extent], 0)}
  sub_extent = sub[2:] - sub[:2]
  return move_boxes(out, 1.0 / sub_extent, -sub[:2] / sub_extent)


# --------------------------------------------------------------------- random ops


@register(random=True, lazy=True)
def flip_lr() -> Apply:
  """Mirrors the example left-right with probability 1/2 (boxes: x ↦ 1 − x)."""
  def apply(ex, seed):
    flip = tf.random.stateless_uniform([], seed) < 0.5
    if VIEW in ex:
      return tf.cond(flip, lambda: _narrow_view(ex, tf.constant([0.0, 1.0, 1.0, 0.0])),
                     lambda: ex)
    return tf.cond(flip, lambda: _flip_lr(ex), lambda: ex)
  return apply


def _flip_ud(ex):
  """The example mirrored top-bottom (boxes: y ↦ 1 − y)."""
  return move_boxes(_spatial(ex, lambda x, _: x[..., ::-1, :, :]), [-1.0, 1.0], [1.0, 0.0])


def _flip_lr(ex):
  """The example mirrored left-right (boxes: x ↦ 1 − x)."""
  return move_boxes(_spatial(ex, lambda x, _: x[..., ::-1, :]), [1.0, -1.0], [0.0, 1.0])


def _transpose(ex):
  """The example transposed, [H, W, C] → [W, H, C] (boxes: y and x swap)."""
  out = _spatial(ex, lambda x, _: tf.transpose(x, [1, 0, 2]))
  if 'boxes' in ex:
    out['boxes'] = tf.gather(ex['boxes'], [1, 0, 3, 2], axis=-1)
  return out


@register(random=True)
def flip_ud() -> Apply:
  """Mirrors the example top-bottom with probability 1/2 (boxes: y ↦ 1 − y)."""
  def apply(ex, seed):
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: _flip_ud(ex), lambda: ex)
  return apply


@register(random=True)
def dihedral() -> Apply:
  """One of the 8 symmetries of the square, uniformly: as EDSR's training
  augmentation, a left-right flip, then a top-bottom flip, then a transposition
  ([H, W, C] → [W, H, C]; boxes: y and x swap), each with probability 1/2,
  independently. Non-square images come out W × H when transposed."""
  def apply(ex, seed):
    draw = tf.random.stateless_uniform([3], seed) < 0.5
    ex = tf.cond(draw[0], lambda: _flip_lr(ex), lambda: ex)
    ex = tf.cond(draw[1], lambda: _flip_ud(ex), lambda: ex)
    return tf.cond(draw[2], lambda: _transpose(ex), lambda: ex)
  return apply


@register(random=True)
def random_crop(size: int) -> Apply:
  """A size x size window at a uniformly random whole-pixel position (the top-left
  offset uniform in [0, H − size] × [0, W − size]), e.g. EDSR's training patches; the
  image must be at least size x size. An example with `IMAGE_HW` holds its image padded
  at the bottom and right: H, W are then IMAGE_HW's, the true size, and the key is dropped."""
  def apply(ex, seed):
    height, width = _hw(ex['image'])
    if IMAGE_HW in ex:
      height, width = ex[IMAGE_HW][0], ex[IMAGE_HW][1]
      ex = {k: v for k, v in ex.items() if k != IMAGE_HW}
    big_enough = tf.debugging.assert_greater_equal(
        tf.stack([height, width]), size,
        message=f'random_crop({size}) needs images of at least {size} x {size} pixels')
    with tf.control_dependencies([big_enough]):
      where = tf.random.stateless_uniform([2], seed)
    top = tf.cast(where[0] * tf.cast(height - size + 1, tf.float32), tf.int32)
    left = tf.cast(where[1] * tf.cast(width - size + 1, tf.float32), tf.int32)
    return _crop(ex, top, left, size, size)
  return apply


@register(random=True)
def pad_crop(pad: int = 4) -> Apply:
  """Zero-pads `pad` pixels on every side, then crops back to the input size at a
  random offset: a shift by up to `pad` pixels in each direction (CIFAR-style)."""
  def apply(ex, seed):
    height, width = _hw(ex['image'])
    offset = tf.random.stateless_uniform([2], seed, 0, 2 * pad + 1, tf.int32)
    padded = _spatial(ex, lambda x, nearest: tf.pad(
        x, [[pad, pad], [pad, pad], [0, 0]], constant_values=IGNORE if nearest else 0))
    padded = move_boxes(padded, tf.stack([height / (height + 2 * pad), width / (width + 2 * pad)]),
                        tf.stack([pad / (height + 2 * pad), pad / (width + 2 * pad)]))
    out = _crop(padded, offset[0], offset[1], height, width)
    return {**out, 'image': tf.ensure_shape(out['image'], ex['image'].shape)}
  return apply


def _affine(ex, angle, scale):
  """Rotation by `angle` (radians) and zoom by `scale` about the image centre; pixels
  bilinear (mask nearest), borders reflected; boxes: the box around the moved corners."""
  height, width = (tf.cast(v, tf.float32) for v in _hw(ex['image']))
  cy, cx = (height - 1) / 2, (width - 1) / 2
  # Each output pixel o samples the input point M (o − c) + c.
  a0, a1 = tf.cos(angle) / scale, -tf.sin(angle) / scale
  b0, b1 = tf.sin(angle) / scale, tf.cos(angle) / scale
  transform = tf.stack([a0, a1, cx - a0 * cx - a1 * cy, b0, b1, cy - b0 * cx - b1 * cy, 0.0, 0.0])

  def warp(x, nearest):
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=transform[None], output_shape=tf.shape(x)[:2],
        fill_value=0.0, interpolation='NEAREST' if nearest else 'BILINEAR', fill_mode='REFLECT')
    return tf.ensure_shape(out[0], x.shape)
  out = _spatial(ex, warp)
  if 'boxes' not in ex:
    return out
  # Input point p goes to o = M⁻¹ (p − c) + c, M⁻¹ = scale · [[cos, sin], [−sin, cos]].
  b = ex['boxes'] * tf.stack([height, width, height, width]) - tf.stack([cy, cx, cy, cx])
  ys, xs = tf.stack([b[..., 0], b[..., 0], b[..., 2], b[..., 2]], -1), \
      tf.stack([b[..., 1], b[..., 3], b[..., 1], b[..., 3]], -1)
  ox = scale * (tf.cos(angle) * xs + tf.sin(angle) * ys) + cx
  oy = scale * (-tf.sin(angle) * xs + tf.cos(angle) * ys) + cy
  corners = tf.stack([tf.reduce_min(oy, -1) / height, tf.reduce_min(ox, -1) / width,
                      tf.reduce_max(oy, -1) / height, tf.reduce_max(ox, -1) / width], -1)
  return move_boxes({**out, 'boxes': corners}, [1.0, 1.0], [0.0, 0.0])


@register(random=True)
def rotate(degrees: float = 10.0) -> Apply:
  """Rotates about the image centre by an angle uniform in [-degrees, degrees];
  bilinear, borders reflected (like Keras' RandomRotation)."""
  def apply(ex, seed):
    angle = tf.random.stateless_uniform([], seed, -degrees, degrees) * (math.pi / 180)
    return _affine(ex, angle, tf.constant(1.0))
  return apply


@register(random=True)
def zoom(fraction: float = 0.1) -> Apply:
  """Zooms in or out about the centre by a factor uniform in [1 - fraction,
  1 + fraction], keeping the size; bilinear, borders reflected."""
  def apply(ex, seed):
    return _affine(ex, tf.constant(0.0),
                   tf.random.stateless_uniform([], seed, 1 - fraction, 1 + fraction))
  return apply


@register(random=True)
def brightness(delta: float = 0.2) -> Apply:
  """Adds a random offset in [-delta, delta] to every pixel, then clips to [0, 1]."""
  return image_only(lambda x, seed: tf.clip_by_value(
      tf.image.stateless_random_brightness(x, delta, seed), 0, 1))


@register(random=True)
def contrast(delta: float = 0.2) -> Apply:
  """Scales each channel's deviation from its mean by a factor in [1 - delta,
  1 + delta], then clips to [0, 1]."""
  return image_only(lambda x, seed: tf.clip_by_value(
      tf.image.stateless_random_contrast(x, 1 - delta, 1 + delta, seed), 0, 1))


ERASE_TRIES = 10  # torchvision's RandomErasing attempts before it gives up


def _fill_box(image, top, left, height, width, values):
  """image with rows [top, top+height) × cols [left, left+width) replaced by `values`
  (broadcast to the image)."""
  rows, cols = _hw(image)
  inside_r = tf.logical_and(tf.range(rows) >= top, tf.range(rows) < top + height)
  inside_c = tf.logical_and(tf.range(cols) >= left, tf.range(cols) < left + width)
  inside = tf.logical_and(inside_r[:, None, None], inside_c[None, :, None])
  return tf.where(inside, tf.broadcast_to(tf.cast(values, image.dtype), tf.shape(image)), image)


@register(random=True)
def random_erasing(p: float = 0.5, area_min: float = 0.02, area_max: float = 0.4,
                   aspect_min: float = 0.3) -> Apply:
  """Random Erasing (Zhong et al. 2017, Alg. 1): with probability p, a rectangle of
  area uniform in [area_min, area_max] of the image and aspect ratio h/w log-uniform
  in [aspect_min, 1/aspect_min], at a uniform position, gets uniform random values in
  [0, 1) per pixel and channel (the paper's random values in [0, 255]). As
  torchvision's `RandomErasing`, up to 10 draws of (area, aspect); the first whose
  h = round(√(area·aspect)) and w = round(√(area/aspect)) fit (h < H, w < W) is used,
  and the image is left as it is if none does. Image only."""
  def erase(image, seed):
    rows, cols = _hw(image)
    area = tf.cast(rows * cols, tf.float32)
    draw = tf.random.stateless_uniform([3, ERASE_TRIES], seed)
    target = area * (area_min + (area_max - area_min) * draw[0])
    aspect = tf.exp(math.log(aspect_min) + (-2 * math.log(aspect_min)) * draw[1])
    heights = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    widths = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = tf.logical_and(heights < rows, widths < cols)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    height, width = heights[first], widths[first]
    where = tf.random.stateless_uniform([2], tf.random.experimental.stateless_fold_in(seed, 1))
    top = tf.cast(where[0] * tf.cast(rows - height + 1, tf.float32), tf.int32)
    left = tf.cast(where[1] * tf.cast(cols - width + 1, tf.float32), tf.int32)
    noise = tf.random.stateless_uniform(tf.shape(image),
                                        tf.random.experimental.stateless_fold_in(seed, 2))
    apply = tf.logical_and(draw[2, 0] < p, tf.reduce_any(fits))
    return tf.cond(apply, lambda: _fill_box(image, top, left, height, width, noise),
                   lambda: image)
  return image_only(erase)


@register(random=True)
def cutout(size: int = 16, fill: float = 0.0) -> Apply:
  """Cutout (DeVries & Taylor 2017): a size × size square centred on a uniformly
  random pixel, clipped at the borders (so near them less is cut), set to `fill`
  (0: black, before the tail's normalisation). Always applied. Image only."""
  def cut(image, seed):
    rows, cols = _hw(image)
    centre = tf.random.stateless_uniform([2], seed)
    cy = tf.cast(centre[0] * tf.cast(rows, tf.float32), tf.int32)
    cx = tf.cast(centre[1] * tf.cast(cols, tf.float32), tf.int32)
    top, left = tf.maximum(cy - size // 2, 0), tf.maximum(cx - size // 2, 0)
    bottom, right = tf.minimum(cy - size // 2 + size, rows), tf.minimum(cx - size // 2 + size, cols)
    return _fill_box(image, top, left, bottom - top, right - left, fill)
  return image_only(cut)


@register(random=True)
def inception_crop(size: int, area_min: float = 0.08, area_max: float = 1.0) -> Apply:
  """Inception-style random crop (Szegedy et al. 2015): a box covering a fraction in
  [area_min, area_max] of the image with aspect ratio in [3/4, 4/3], resized to
  size x size."""
  def apply(ex, seed):
    begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(ex['image']), tf.zeros([1, 0, 4]), seed, min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(area_min, area_max),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    crop = _crop(ex, begin[0], begin[1], box_size[0], box_size[1])
    return _resize(crop, [size, size], antialias=False)
  return apply


# -------------------------------------------------------------- deterministic ops


@register(random=False)
def pad_to(size: int) -> Apply:
  """Zero-pads symmetrically to size x size (LeNet's 28 -> 32); odd margins put the
  extra pixel at the bottom/right."""
  def apply(ex, seed=None):
    height, width = _hw(ex['image'])
    top, left = (size - height) // 2, (size - width) // 2
    out = _spatial(ex, lambda x, nearest: (
        tf.image.pad_to_bounding_box(x - IGNORE, top, left, size, size) + IGNORE if nearest
        else tf.image.pad_to_bounding_box(x, top, left, size, size)))
    return move_boxes(out, tf.stack([height / size, width / size]),
                      tf.stack([top / size, left / size]), clip=False)
  return apply


@register(random=False, lazy=True)
def resize(size: int, antialias: bool = True) -> Apply:
  """Resizes to size x size, ignoring the aspect ratio (bilinear, antialiased unless
  antialias=False); samples a pending view once."""
  def apply(ex, seed=None):
    if VIEW in ex:
      return sample_view(ex, [size, size])
    return _resize(ex, [size, size], antialias)
  return apply


@register(random=False)
def resize_small(size: int) -> Apply:
  """Resizes so that the shorter side is `size`, keeping the aspect ratio."""
  def apply(ex, seed=None):
    height, width = (tf.cast(v, tf.float32) for v in _hw(ex['image']))
    factor = size / tf.minimum(height, width)
    new = tf.cast(tf.round(tf.stack([height * factor, width * factor])), tf.int32)
    return _resize(ex, tf.maximum(new, size))
  return apply


@register(random=False)
def central_crop(size: int) -> Apply:
  """Crops the central size x size window (the image must be at least that big)."""
  def apply(ex, seed=None):
    height, width = _hw(ex['image'])
    top, left = (height - size) // 2, (width - size) // 2
    out = _spatial(ex, lambda x, _: tf.image.crop_to_bounding_box(x, top, left, size, size))
    h, w = (tf.cast(v, tf.float32) for v in (height, width))
    return move_boxes(out, tf.stack([h / size, w / size]),
                      -tf.stack([tf.cast(top, tf.float32) / size, tf.cast(left, tf.float32) / size]))
  return apply


@register(random=False)
def fit(size: int, crop_fraction: float = 1.0) -> Apply:
  """Brings an image to the model's size x size input, deterministically:
  unchanged if it already is; zero-padded symmetrically if it is smaller by at most
  PAD_LIMIT pixels (28 -> 32); otherwise the shorter side is resized to
  size / crop_fraction and the centre size x size cropped (ImageNet eval: 0.875,
  256 -> 224). Variable-size images (unknown static shape) always take the resize
  path."""
  pad = pad_to(size)
  small, centre = resize_small(round(size / crop_fraction)), central_crop(size)

  def apply(ex, seed=None):
    height, width = ex['image'].shape[-3], ex['image'].shape[-2]
    if height == width == size:
      return ex
    if (height is not None and width is not None
        and size - PAD_LIMIT <= min(height, width) and max(height, width) <= size):
      return pad(ex)
    return centre(small(ex))
  return apply


@register(random=False)
def normalize(mean, std) -> Apply:
  """(image - mean) / std, per channel (`mean`, `std`: one number per channel)."""
  mean_t, std_t = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)
  return image_only(lambda x, seed=None: (x - mean_t) / std_t)


@register(random=False)
def caffe() -> Apply:
  """Keras' 'caffe' input convention (keras.applications VGG16/19, ResNet50/101/152):
  RGB -> BGR, scaled to [0, 255], minus the ImageNet BGR means `CAFFE_BGR_MEAN`, not
  divided by a std. Needs 3 channels."""
  mean = tf.constant(CAFFE_BGR_MEAN, tf.float32)
  return image_only(lambda x, seed=None: x[..., ::-1] * 255.0 - mean)


@register(random=False)
def to_rgb() -> Apply:
  """Grayscale -> RGB by repeating the channel."""
  return image_only(lambda x, seed=None: tf.image.grayscale_to_rgb(x))


@register(random=False)
def to_grayscale() -> Apply:
  """RGB -> grayscale (ITU-R 601 luma weights, tf.image.rgb_to_grayscale)."""
  return image_only(lambda x, seed=None: tf.image.rgb_to_grayscale(x))


# MATLAB rgb2ycbcr's Y row for R, G, B in [0, 1], output in [0, 255]: Y = 16 + row · rgb
# (as cvjax.superresolution.metrics, which the data layer may not import).
Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0


@register(random=False)
def to_y() -> Apply:
  """RGB float32[..., H, W, 3] in [0, 1] → float32[..., H, W, 1], the BT.601 luma of
  MATLAB's `rgb2ycbcr` on the [0, 1] scale: Y = (16 + 65.481·R + 128.553·G +
  24.966·B) / 255, in [16/255, 235/255] (the Y that SR papers' PSNR and SSIM are
  measured on). A 1-channel image is returned unchanged."""
  weights = tf.constant(Y_WEIGHTS, tf.float32)

  def luma(x, seed=None):
    if x.shape[-1] == 1:
      return x
    if x.shape[-1] != 3:
      raise ValueError(f'to_y takes RGB (3 channels) or Y (1 channel) last; got shape {x.shape}')
    return (Y_OFFSET + tf.reduce_sum(x * weights, -1, keepdims=True)) / 255.0
  return image_only(luma)


@register(random=False)
def sr_pair(scale: int) -> Apply:
  """A super-resolution training pair from image float32[H, W, C] (H and W multiples
  of `scale`): 'target' = the image unchanged (high resolution), 'image' = its
  bicubic ×1/scale, float32[H/scale, W/scale, C], clipped to [0, 1] and rounded to
  the 8-bit levels round(255·x)/255, as a saved PNG would be.

  The resampler is `tf.image.resize(method='bicubic', antialias=True)`: Keys' cubic
  (a = −0.5) stretched by `scale`, half-pixel centres, the kernel and grid of
  MATLAB's `imresize(x, 1/scale, 'bicubic')` (antialiasing on when shrinking), which
  SR papers use to make their LR images. Against `resize_right` (MATLAB-consistent,
  numpy, float64) on skimage's astronaut and chelsea, modcropped to 12, before
  rounding, at ×2, ×3, ×4: beyond 2 LR pixels of the border the two agree to
  ≤ 3.5e-7 (float32 rounding). Within those 2 pixels the kernel reaches past the
  image: TF drops those taps and renormalises the rest, MATLAB mirrors the image
  (symmetric padding): up to 0.048 apart, whole-image PSNR 58–74 dB (resize_right's
  default zero padding: up to 0.11, 41–47 dB).
  """
  def apply(ex, seed=None):
    hr = ex['image']
    height, width = _hw(hr)
    divisible = tf.debugging.assert_equal(
        tf.stack([height % scale, width % scale]), 0,
        message=f'sr_pair({scale}) needs height and width multiples of {scale}; '
                f'modcrop the images first')
    with tf.control_dependencies([divisible]):
      lr = tf.image.resize(hr, [height // scale, width // scale], method='bicubic',
                           antialias=True)
    lr = tf.round(tf.clip_by_value(lr, 0.0, 1.0) * 255.0) / 255.0
    return {**ex, 'image': lr, 'target': hr}
  return apply



# ------------------------------------------------------------- SSD's augmentation
# torchvision's `--data-augmentation ssd` preset (references/detection/presets.py), the
# Caffe SSD recipe (Liu et al. 2016 §3.6): `PRESETS['ssd']`. Differences, for fixed
# shapes and speed: crops are continuous (not whole pixels); torchvision retries the
# IoU crop forever, here after `OUTER_TRIES` draws of the minimum IoU the view is kept;
# expand, crop, flip and the final resize are one resample (`VIEW`).

IOU_OPTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)    # 1.0: keep the whole image
CROP_TRIALS = 40
OUTER_TRIES = 8


def _blend(image, other, factor):
  return tf.clip_by_value(factor * image + (1 - factor) * other, 0.0, 1.0)


@register(random=True)
def photometric() -> Apply:
  """torchvision's `RandomPhotometricDistort` (RGB): each with probability 1/2,
  brightness ×[0.875, 1.125], contrast [0.5, 1.5] (before or after the next two),
  saturation [0.5, 1.5], hue ±0.05, a random channel permutation."""
  def distort(image, seed):
    r = tf.random.stateless_uniform([7], seed)
    f = tf.random.stateless_uniform([5], tf.random.experimental.stateless_fold_in(seed, 1))
    brightness, contrast, saturation = 0.875 + 0.25 * f[0], 0.5 + f[1], 0.5 + f[2]
    hue = -0.05 + 0.1 * f[3]
    gray = tf.image.rgb_to_grayscale

    def maybe(p, fn, x):
      return tf.cond(p < 0.5, lambda: fn(x), lambda: x)

    def adjust_contrast(x):
      return _blend(x, tf.reduce_mean(gray(x)), contrast)

    image = maybe(r[0], lambda x: tf.clip_by_value(x * brightness, 0.0, 1.0), image)
    contrast_first = r[1] < 0.5
    image = tf.cond(contrast_first, lambda: maybe(r[2], adjust_contrast, image), lambda: image)
    image = maybe(r[3], lambda x: _blend(x, gray(x), saturation), image)
    image = maybe(r[4], lambda x: tf.clip_by_value(tf.image.adjust_hue(x, hue), 0.0, 1.0), image)
    image = tf.cond(contrast_first, lambda: image, lambda: maybe(r[5], adjust_contrast, image))
    permutation = tf.argsort(tf.random.stateless_uniform(
        [3], tf.random.experimental.stateless_fold_in(seed, 2)))
    return maybe(r[6], lambda x: tf.gather(x, permutation, axis=-1), image)
  return image_only(distort)


@register(random=True, lazy=True)
def zoom_out(max_scale: float = 4.0, p: float = 0.5) -> Apply:
  """torchvision's `RandomZoomOut`: with probability p the image is placed at a random
  spot of a canvas r× its size, r ∈ [1, max_scale], filled with `MEAN_FILL`
  (segmentation: IGNORE)."""
  def apply(ex, seed):
    z = tf.random.stateless_uniform([4], seed)
    r = tf.where(z[0] < p, 1.0 + (max_scale - 1.0) * z[1], 1.0)
    offset = (r - 1.0) * z[2:4]                                    # (oy, ox) in image sizes
    return _narrow_view(ex, tf.concat([-offset, r - offset], 0))
  return apply


def _iou_with(boxes, window):
  """IoU of boxes f32[..., M, 4] with windows f32[..., 4] → f32[..., M]."""
  window = window[..., None, :]
  top_left = tf.maximum(boxes[..., :2], window[..., :2])
  bottom_right = tf.minimum(boxes[..., 2:], window[..., 2:])
  inter = tf.reduce_prod(tf.maximum(bottom_right - top_left, 0.0), axis=-1)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return tf.math.divide_no_nan(inter, area(boxes) + area(window) - inter)


def iou_crop_window(boxes, mask, aspect, seed):
  """torchvision's `RandomIoUCrop` search, vectorised over all trials: a minimum IoU
  from `IOU_OPTIONS`; up to `CROP_TRIALS` crops of [0.3, 1] of each side with aspect
  ratio in [1/2, 2]; accepted when some box's centre lies inside and that box's IoU
  with the crop reaches the minimum.

  Args: boxes f32[M, 4] normalised; mask bool[M]; aspect: width / height in pixels.
  Returns: (window f32[4] normalised, keep bool[M] boxes whose centres are inside);
    the whole image and `mask` when the whole image is kept.
  """
  n, t = OUTER_TRIES, CROP_TRIALS
  seeds = tf.random.experimental.stateless_split(seed, 3)
  option = tf.gather(tf.constant(IOU_OPTIONS),
                     tf.random.stateless_uniform([n], seeds[0], 0, len(IOU_OPTIONS), tf.int32))
  u = tf.random.stateless_uniform([n, t, 4], seeds[1])
  w, h = 0.3 + 0.7 * u[..., 0], 0.3 + 0.7 * u[..., 1]
  left, top = (1 - w) * u[..., 2], (1 - h) * u[..., 3]
  window = tf.stack([top, left, top + h, left + w], axis=-1)               # [n, t, 4]
  cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
  inside = ((window[..., 1:2] < cx) & (cx < window[..., 3:4]) & (window[..., 0:1] < cy)
            & (cy < window[..., 2:3]) & mask)                                # [n, t, M]
  iou = tf.where(inside, _iou_with(boxes, window), -1.0)
  crop_aspect = w / h * aspect
  accepted = ((crop_aspect >= 0.5) & (crop_aspect <= 2.0) & tf.reduce_any(inside, -1)
              & (tf.reduce_max(iou, -1) >= option[:, None]))                 # [n, t]
  whole = option >= 1.0
  done = whole | tf.reduce_any(accepted, -1)                                 # [n]
  first = tf.argmax(tf.cast(done, tf.int32))                                 # first decisive try
  trial = tf.argmax(tf.cast(accepted[first], tf.int32))
  use_crop = tf.reduce_any(done) & ~whole[first]
  return (tf.where(use_crop, window[first, trial], tf.constant([0.0, 0.0, 1.0, 1.0])),
          tf.where(use_crop, inside[first, trial], mask))


@register(random=True, requires=('boxes',), lazy=True)
def iou_crop() -> Apply:
  """torchvision's `RandomIoUCrop` (`iou_crop_window`): boxes whose centres fall outside
  the crop are dropped (box_mask False), the rest clipped to it."""
  def apply(ex, seed):
    view = ex.get(VIEW, tf.constant([0.0, 0.0, 1.0, 1.0]))
    height, width = (tf.cast(v, tf.float32) for v in _hw(ex['image']))
    aspect = tf.abs(view[3] - view[1]) * width / (tf.abs(view[2] - view[0]) * height)
    window, keep = iou_crop_window(ex['boxes'], ex['box_mask'], aspect, seed)
    out = _narrow_view(ex, window)
    return {**out, 'box_mask': out['box_mask'] & keep}
  return apply

# --------------------------------------------------------------------- composing


class Chain:
  """Ops applied in order; each random op gets its own seed split from the example's.

  Called with an example dict it returns the example; called with an image tensor
  (float32[H, W, C], or a batch for deterministic chains) it returns the image.
  """

  def __init__(self, ops: list[tuple[str, Apply]]):
    self.ops = ops

  @property
  def random(self) -> bool:
    return any(OPS[name].random for name, _ in self.ops)

  def __call__(self, example, seed=None):
    if not isinstance(example, dict):
      return self({'image': example}, seed)['image']
    if self.random and seed is None:
      raise ValueError('a chain with random ops needs a seed')
    seeds = tf.random.experimental.stateless_split(seed, len(self.ops)) if self.random else None
    for i, (name, apply) in enumerate(self.ops):
      if VIEW in example and not OPS[name].lazy:
        example = sample_view(example, _view_size(example))
      example = apply(example, None if seeds is None else seeds[i])
    if VIEW in example:
      example = sample_view(example, _view_size(example))
    return example


def parse(spec: str) -> list[tuple[str, tuple, dict]]:
  """Splits an op string into (name, args, kwargs), presets expanded and aliases
  resolved; `UserError` if malformed or unknown."""
  calls = []
  for item in (s.strip() for s in spec.split('|')):
    if not item:
      continue
    if item in PRESETS:
      calls += parse(PRESETS[item])
      continue
    try:
      node = ast.parse(item, mode='eval').body
      if isinstance(node, ast.Name):
        name, args, kwargs = node.id, (), {}
      elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
      else:
        raise ValueError
    except (SyntaxError, ValueError):
      raise UserError(f'cannot parse op {item!r} in {spec!r}; write name or name(args), '
                      'e.g. "pad_crop(4)|flip_lr"') from None
    name = ALIASES.get(name, name)
    if name not in OPS:
      raise unknown_choice('augmentation op', name, {**OPS, **PRESETS})
    calls.append((name, args, kwargs))
  return calls


def build(spec: str, *, image_size: int | None = None) -> Chain:
  """The `Chain` for op string `spec`; `size` parameters default to `image_size`."""
  ops = []
  for name, args, kwargs in parse(spec):
    factory = OPS[name].factory
    params = inspect.signature(factory).parameters
    if ('size' in params and image_size is not None and 'size' not in kwargs
        and list(params).index('size') >= len(args)):
      kwargs = {**kwargs, 'size': image_size}
    try:
      inspect.signature(factory).bind(*args, **kwargs)
    except TypeError as e:
      raise UserError(f'bad arguments for op {name}{inspect.signature(factory)}: {e}') from None
    ops.append((name, factory(*args, **kwargs)))
  return Chain(ops)


def check(spec: str | None, keys, task: str, *, image_size: int | None = None) -> None:
  """Raises one-line `UserError` if `spec` is malformed or has an op that cannot apply
  to examples with `keys` (e.g. iou_crop without boxes)."""
  if not spec:
    return
  build(spec, image_size=image_size or 32)
  for name, _, _ in parse(spec):
    missing = OPS[name].requires - set(keys)
    if missing:
      raise UserError(f'augmentation op {name} needs {", ".join(sorted(missing))}, which '
                      f'the {task} task\'s examples ({", ".join(sorted(keys))}) do not have; '
                      'drop it from --augment')

