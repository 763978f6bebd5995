"""Per-pixel class probabilities at each input image's own size, as torchvision predicts.

torchvision runs a segmenter on the photo as it is: `softmax(model(x)['out'])` with
x = (pixels / 255 − mean) / std at the photo's H×W, so the mask overlays the photo.
`probabilities` does the same for a cvjax segmenter, one batch of equally sized
images; `predict` takes a list of images of different sizes too.

Models that need H and W to be multiples of `size_multiple` (FCN: 32, see
`size_multiple`) get the normalised image padded at the bottom and the right with
zeros, i.e. with the mean colour, up to the next multiple; the probabilities of the
padded image are then cropped back to its top-left H×W. Padding, not resizing: every
output pixel is the prediction at that input pixel, no resampling blurs the mask or
shifts it by a fraction of a pixel, and the stride grid starts at the image's
top-left corner as in training. Zeros in normalised space are what torchvision's
detection transform pads its batches with (`GeneralizedRCNNTransform`, bottom-right,
to a multiple of 32) and what Caffe's FCN padded its input with. Pixels near the
bottom and right edges see some of that padding in their receptive field.

DeepLab (`cvjax.models.deeplab`) runs at any size (its final bilinear upsampling is
to the input's H×W, its convs use torch's explicit symmetric padding), so its
multiple is 1: no padding, and the numbers are torchvision's.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cvjax.errors import UserError
from cvjax.models import fcn
from cvjax.train.task import image_batches

ApplyFn = Callable[[Any, jax.Array], jax.Array]

FCN_MULTIPLE = 32  # five stride-2 stages, and the skips add H/16 and H/8 maps exactly


def size_multiple(model) -> int:
  """What H and W of `model`'s input must be a multiple of: 32 for `fcn.FCN` (it
  raises otherwise), 1 for models that run at any size (DeepLab)."""
  return FCN_MULTIPLE if isinstance(model, fcn.FCN) else 1


def padded_size(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` ≥ n (n itself for multiple 1)."""
  return -(-n // multiple) * multiple


@partial(jax.jit, static_argnames=('apply_fn', 'size_multiple', 'mean', 'std'))
def _probabilities(apply_fn, variables, images, *, size_multiple, mean, std):
  _, h, w, c = images.shape
  x = images.astype(jnp.float32)
  if c == 1:
    x = jnp.broadcast_to(x, (*x.shape[:3], 3))
  x = (x / 255 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  ph, pw = padded_size(h, size_multiple), padded_size(w, size_multiple)
  x = jnp.pad(x, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))
  logits = apply_fn(variables, x)[:, :h, :w]
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def probabilities(apply_fn: ApplyFn, variables, images, *, size_multiple: int,
                  mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """float32[B, H, W, K] per-pixel class probabilities (softmax over K) of uint8[B, H, W, C] images.

  Args:
    apply_fn: (variables, x float32[B, H', W', 3]) → logits float32[B, H', W', K], e.g.
      `functools.partial(model.apply, train=False)`. Build it once and pass the same
      object every call: it is a static argument of the jitted computation, so each
      (apply_fn, B, H, W, C) compiles once.
    variables: the model's variables ({'params', 'batch_stats'?}); an argument of the
      computation, not a constant compiled into it.
    images: uint8[B, H, W, C], C = 3 (RGB) or 1 (gray, repeated to RGB).
    size_multiple: H' and W' the model needs a multiple of (`size_multiple(model)`); the
      normalised images are zero-padded at the bottom and right up to it and the
      probabilities cropped back to the top-left H×W (see the module docstring).
    mean, std: per-channel RGB statistics of pixels in [0, 1]; x = (images / 255 − mean) / std.

  Returns:
    float32[B, H, W, K]: the probabilities at the input's own pixels.
  """
  if size_multiple < 1:
    raise UserError(f'size_multiple must be a positive int, got {size_multiple}')
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
    raise UserError(f'probabilities wants images uint8[B, H, W, 1 or 3], got {images.dtype}'
                    f'{list(images.shape)}')
  stats = tuple(float(m) for m in np.ravel(mean)), tuple(float(s) for s in np.ravel(std))
  if len(stats[0]) != 3 or len(stats[1]) != 3:
    raise UserError(f'mean and std must have 3 values (R, G, B), got mean {list(stats[0])} '
                    f'and std {list(stats[1])}')
  return np.asarray(_probabilities(apply_fn, variables, images, size_multiple=int(size_multiple),
                                   mean=stats[0], std=stats[1]))


def predict(apply_fn: ApplyFn, variables, images, *, size_multiple: int,
            mean: Sequence[float], std: Sequence[float]) -> np.ndarray | list[np.ndarray]:
  """Per-pixel class probabilities of images at their own sizes (`probabilities`).

  Args:
    images: uint8[B, H, W, C] or uint8[H, W, C] (one image, as [1, H, W, C]); or a list of
      images of any sizes, each uint8[H_i, W_i, C] or a batch uint8[n, H_i, W_i, C].
    apply_fn, variables, size_multiple, mean, std: as `probabilities`.

  Returns:
    for an array, float32[B, H, W, K]; for a list, a list with one float32[H_i, W_i, K]
    per image, in order (a batch of n in the list gives n of them). Consecutive images of
    one size run as one batch.

  Raises:
    UserError: images that are not uint8 with 1 or 3 channels last, or an empty list.
  """
  run = partial(probabilities, apply_fn, variables, size_multiple=size_multiple, mean=mean,
                std=std)
  batches = image_batches(images)
  if not isinstance(images, (list, tuple)):
    return run(batches[0])
  return [p for batch in batches for p in run(batch)]
