"""Box geometry: IoU and SSD's centre-size box coding, as jittable JAX functions.

Boxes are f32[..., 4] (ymin, xmin, ymax, xmax), normalised (see
`cvjax.detection`). Codes are f32[..., 4] (dx, dy, dw, dh) in torchvision's
order and scale (`BoxCoder(weights=(10, 10, 5, 5))`, i.e. SSD's variances
0.1 for the centre and 0.2 for the size), so a head trained by torchvision
predicts the same numbers here:

    dx = (gx - ax) / aw / 0.1     dw = log(gw / aw) / 0.2
    dy = (gy - ay) / ah / 0.1     dh = log(gh / ah) / 0.2

with (ax, ay, aw, ah) the anchor's centre and size and (gx, gy, gw, gh) the box's.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

VARIANCES = (0.1, 0.1, 0.2, 0.2)  # (x, y, w, h): torchvision's weights are 1 / these
# torchvision's bbox_xform_clip: exp(dw) is capped at 1000 / 16 before decoding.
SIZE_CLIP = math.log(1000.0 / 16)


def area(boxes: jax.Array) -> jax.Array:
  """f32[..., 4] → f32[...]; zero for empty boxes."""
  return (jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
          * jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0))


def iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """Pairwise intersection over union: a f32[..., N, 4], b f32[..., M, 4] → f32[..., N, M].

  Pairs whose union is empty get 0.
  """
  a, b = a[..., :, None, :], b[..., None, :, :]
  top_left = jnp.maximum(a[..., :2], b[..., :2])
  bottom_right = jnp.minimum(a[..., 2:], b[..., 2:])
  inter = jnp.prod(jnp.maximum(bottom_right - top_left, 0.0), axis=-1)
  union = area(a) + area(b) - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def to_center(boxes: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(ymin, xmin, ymax, xmax) → (cx, cy, w, h), each f32[...]."""
  w = boxes[..., 3] - boxes[..., 1]
  h = boxes[..., 2] - boxes[..., 0]
  return boxes[..., 1] + 0.5 * w, boxes[..., 0] + 0.5 * h, w, h


def from_center(cx, cy, w, h) -> jax.Array:
  """(cx, cy, w, h), each f32[...] → f32[..., 4] (ymin, xmin, ymax, xmax)."""
  return jnp.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def encode(boxes: jax.Array, anchors: jax.Array,
           variances: tuple[float, ...] = VARIANCES) -> jax.Array:
  """Codes of `boxes` relative to `anchors`: both f32[..., 4] → f32[..., 4] (dx, dy, dw, dh).

  Boxes must have positive width and height (the log of the size ratio);
  callers mask out padding boxes.
  """
  gx, gy, gw, gh = to_center(boxes)
  ax, ay, aw, ah = to_center(anchors)
  vx, vy, vw, vh = variances
  return jnp.stack([(gx - ax) / aw / vx, (gy - ay) / ah / vy,
                    jnp.log(gw / aw) / vw, jnp.log(gh / ah) / vh], axis=-1)


def decode(codes: jax.Array, anchors: jax.Array,
           variances: tuple[float, ...] = VARIANCES) -> jax.Array:
  """Inverse of `encode`: codes f32[..., 4] (dx, dy, dw, dh), anchors f32[..., 4] → boxes f32[..., 4].

  dw and dh are capped at log(1000/16) / variance first, as torchvision does.
  """
  ax, ay, aw, ah = to_center(anchors)
  vx, vy, vw, vh = variances
  dw = jnp.minimum(codes[..., 2] * vw, SIZE_CLIP)
  dh = jnp.minimum(codes[..., 3] * vh, SIZE_CLIP)
  cx = codes[..., 0] * vx * aw + ax
  cy = codes[..., 1] * vy * ah + ay
  return from_center(cx, cy, jnp.exp(dw) * aw, jnp.exp(dh) * ah)


def clip(boxes: jax.Array) -> jax.Array:
  """Clips normalised boxes f32[..., 4] to the image, [0, 1]."""
  return jnp.clip(boxes, 0.0, 1.0)
