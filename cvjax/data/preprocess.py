"""Preprocessing and augmentation ops: one registry, composed from a string.

An op string is `|`-separated calls, e.g. `"pad_crop(4)|flip_lr|rotate(10)"`; each
name is looked up in `OPS` and called with the (Python literal) arguments given,
giving a function `apply(image, seed) -> image`:

  image: float32[H, W, C] with values in [0, 1] (after `normalize`: standardised).
         Deterministic ops (`random=False`) also take a batch float32[B, H, W, C].
  seed:  int32/int64[2], the stateless seed of this example and op; deterministic
         ops ignore it. Random ops draw only from `tf.random.stateless_*` /
         `tf.image.stateless_*` ops, so the output is a pure function of
         (image, seed).

Ops with a `size` parameter default it to the model's input size (`image_size`
given to `build`). Adding an op is one decorated function below.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import math
from typing import Callable

import tensorflow as tf

from cvjax.errors import UserError, unknown_choice

Apply = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


@dataclasses.dataclass(frozen=True)
class OpDef:
  """A registered op: `factory(*args) -> Apply`; `random` if it uses the seed."""
  factory: Callable[..., Apply]
  random: bool


OPS: dict[str, OpDef] = {}


def register(*, random: bool):
  """Decorator adding an op factory to `OPS` under its function name."""
  def add(factory):
    OPS[factory.__name__] = OpDef(factory, random)
    return factory
  return add


# --------------------------------------------------------------------- random ops


@register(random=True)
def pad_crop(pad: int = 4) -> Apply:
  """Zero-pads `pad` pixels on every side, then crops back to the input size at a
  random offset: a shift by up to `pad` pixels in each direction (CIFAR-style)."""
  def apply(image, seed):
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.ensure_shape(tf.image.stateless_random_crop(padded, tf.shape(image), seed),
                           image.shape)
  return apply


@register(random=True)
def flip_lr() -> Apply:
  """Mirrors the image left-right with probability 1/2."""
  return lambda image, seed: tf.image.stateless_random_flip_left_right(image, seed)


@register(random=True)
def rotate(degrees: float = 10.0) -> Apply:
  """Rotates about the image centre by an angle uniform in [-degrees, degrees];
  bilinear, borders reflected (like Keras' RandomRotation)."""
  def apply(image, seed):
    angle = tf.random.stateless_uniform([], seed, -degrees, degrees) * (math.pi / 180)
    return _affine(image, angle=angle, scale=tf.constant(1.0))
  return apply


@register(random=True)
def zoom(fraction: float = 0.1) -> Apply:
  """Zooms in or out about the centre by a factor uniform in [1 - fraction,
  1 + fraction], keeping the size; bilinear, borders reflected."""
  def apply(image, seed):
    scale = tf.random.stateless_uniform([], seed, 1 - fraction, 1 + fraction)
    return _affine(image, angle=tf.constant(0.0), scale=scale)
  return apply


@register(random=True)
def brightness(delta: float = 0.2) -> Apply:
  """Adds a random offset in [-delta, delta] to every pixel, then clips to [0, 1]."""
  def apply(image, seed):
    return tf.clip_by_value(tf.image.stateless_random_brightness(image, delta, seed), 0, 1)
  return apply


@register(random=True)
def contrast(delta: float = 0.2) -> Apply:
  """Scales each channel's deviation from its mean by a factor in [1 - delta,
  1 + delta], then clips to [0, 1]."""
  def apply(image, seed):
    out = tf.image.stateless_random_contrast(image, 1 - delta, 1 + delta, seed)
    return tf.clip_by_value(out, 0, 1)
  return apply


@register(random=True)
def inception_crop(size: int, area_min: float = 0.08, area_max: float = 1.0) -> Apply:
  """Inception-style random crop (Szegedy et al. 2015): a box covering a fraction in
  [area_min, area_max] of the image with aspect ratio in [3/4, 4/3], resized to
  size x size."""
  def apply(image, seed):
    begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([1, 0, 4]), seed, min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(area_min, area_max),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, box_size)
    return tf.image.resize(crop, [size, size])
  return apply


def _affine(image, *, angle, scale):
  """Rotation by `angle` (radians) and zoom by `scale` about the image centre."""
  height = tf.cast(tf.shape(image)[0], tf.float32)
  width = tf.cast(tf.shape(image)[1], tf.float32)
  cy, cx = (height - 1) / 2, (width - 1) / 2
  # The op maps each output pixel (x, y) to the input point M (x - c) + c.
  a0, a1 = tf.cos(angle) / scale, -tf.sin(angle) / scale
  b0, b1 = tf.sin(angle) / scale, tf.cos(angle) / scale
  transform = tf.stack([a0, a1, cx - a0 * cx - a1 * cy,
                        b0, b1, cy - b0 * cx - b1 * cy, 0.0, 0.0])
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform[None], output_shape=tf.shape(image)[:2],
      fill_value=0.0, interpolation='BILINEAR', fill_mode='REFLECT')
  return tf.ensure_shape(out[0], image.shape)


# -------------------------------------------------------------- deterministic ops


@register(random=False)
def pad_to(size: int) -> Apply:
  """Zero-pads symmetrically to size x size (LeNet's 28 -> 32); odd margins put the
  extra pixel at the bottom/right."""
  def apply(image, seed=None):
    del seed
    height, width = _hw(image)
    return tf.image.pad_to_bounding_box(image, (size - height) // 2, (size - width) // 2,
                                        size, size)
  return apply


@register(random=False)
def resize(size: int) -> Apply:
  """Resizes to size x size, ignoring the aspect ratio (bilinear, antialiased)."""
  return lambda image, seed=None: tf.image.resize(image, [size, size], antialias=True)


@register(random=False)
def resize_small(size: int) -> Apply:
  """Resizes so that the shorter side is `size`, keeping the aspect ratio."""
  def apply(image, seed=None):
    del seed
    height, width = _hw(image)
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    factor = size / tf.minimum(height, width)
    new = tf.cast(tf.round(tf.stack([height * factor, width * factor])), tf.int32)
    return tf.image.resize(image, tf.maximum(new, size), antialias=True)
  return apply


@register(random=False)
def central_crop(size: int) -> Apply:
  """Crops the central size x size window (the image must be at least that big)."""
  def apply(image, seed=None):
    del seed
    height, width = _hw(image)
    return tf.image.crop_to_bounding_box(image, (height - size) // 2, (width - size) // 2,
                                         size, size)
  return apply


PAD_LIMIT = 8  # `fit` pads images at most this many pixels smaller than the input size.


@register(random=False)
def fit(size: int, crop_fraction: float = 1.0) -> Apply:
  """Brings an image to the model's size x size input, deterministically:
  unchanged if it already is; zero-padded symmetrically if it is smaller by at most
  PAD_LIMIT pixels (28 -> 32); otherwise the shorter side is resized to
  size / crop_fraction and the centre size x size cropped (ImageNet eval: 0.875,
  256 -> 224). Variable-size images (unknown static shape) always take the resize
  path."""
  pad, resize_crop = pad_to(size), chain([resize_small(round(size / crop_fraction)),
                                           central_crop(size)])

  def apply(image, seed=None):
    height, width = image.shape[-3], image.shape[-2]
    if height == width == size:
      return image
    if (height is not None and width is not None
        and size - PAD_LIMIT <= min(height, width) and max(height, width) <= size):
      return pad(image)
    return resize_crop(image)
  return apply


@register(random=False)
def normalize(mean, std) -> Apply:
  """(image - mean) / std, per channel (`mean`, `std`: one number per channel)."""
  mean_t, std_t = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)
  return lambda image, seed=None: (image - mean_t) / std_t


# Keras' 'caffe' mode means, BGR order (keras.applications.imagenet_utils).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@register(random=False)
def caffe() -> Apply:
  """Keras' 'caffe' input convention (keras.applications VGG16/19, ResNet50/101/152):
  RGB -> BGR, scaled to [0, 255], minus the ImageNet BGR means `CAFFE_BGR_MEAN`, not
  divided by a std. Needs 3 channels."""
  mean = tf.constant(CAFFE_BGR_MEAN, tf.float32)
  return lambda image, seed=None: image[..., ::-1] * 255.0 - mean


@register(random=False)
def to_rgb() -> Apply:
  """Grayscale -> RGB by repeating the channel."""
  return lambda image, seed=None: tf.image.grayscale_to_rgb(image)


@register(random=False)
def to_grayscale() -> Apply:
  """RGB -> grayscale (ITU-R 601 luma weights, tf.image.rgb_to_grayscale)."""
  return lambda image, seed=None: tf.image.rgb_to_grayscale(image)


def _hw(image):
  """Height and width: Python ints where static, scalar tensors otherwise."""
  dynamic = tf.shape(image)
  rank = image.shape.rank
  return tuple(image.shape[i] if image.shape[i] is not None else dynamic[i]
               for i in (rank - 3, rank - 2))


# --------------------------------------------------------------------- composing


class Chain:
  """Ops applied in order; each random op gets its own seed split from the example's."""

  def __init__(self, ops: list[tuple[str, Apply]]):
    self.ops = ops

  @property
  def random(self) -> bool:
    return any(OPS[name].random for name, _ in self.ops)

  def __call__(self, image, seed=None):
    if self.random and seed is None:
      raise ValueError('a chain with random ops needs a seed')
    seeds = tf.random.experimental.stateless_split(seed, len(self.ops)) if self.random else None
    for i, (_, apply) in enumerate(self.ops):
      image = apply(image, None if seeds is None else seeds[i])
    return image


def chain(applies: list[Apply]) -> Apply:
  """Composes deterministic op functions."""
  def apply(image, seed=None):
    del seed
    for f in applies:
      image = f(image)
    return image
  return apply


def parse(spec: str) -> list[tuple[str, tuple, dict]]:
  """Splits an op string into (name, args, kwargs); `UserError` if malformed/unknown."""
  calls = []
  for item in (s.strip() for s in spec.split('|')):
    if not item:
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
    if name not in OPS:
      raise unknown_choice('augmentation op', name, OPS)
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
