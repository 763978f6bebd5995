"""Upscaling whole images with a super-resolution model, as `cvjax.restore(w).predict` does.

  upscale(apply, variables, images, scale=r, channels=C)  uint8[B, h, w, K] → uint8[B, h·r, w·r, K]
  bicubic(images, scale)                                    the same size by bicubic upsampling

K (the images' channels) is 1 or 3; the output keeps it. RGB models (C = 3) see the
image in [0, 1]. Luma models (C = 1: SRCNN, ESPCN) see the Y of MATLAB's `rgb2ycbcr`,
and the chroma Cb, Cr is upscaled bicubically, then converted back to RGB: the papers'
protocol for colour results. Gray images are RGB with R = G = B. Outputs are clipped to
[0, 1] and rounded to 8 bits. Each new image size compiles the model once.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cvjax.models.superres import bicubic_upscale

# MATLAB rgb2ycbcr on [0, 1] RGB: ycbcr·255 = offset + matrix @ rgb.
_YCBCR_MATRIX = np.array([[65.481, 128.553, 24.966],
                          [-37.797, -74.203, 112.0],
                          [112.0, -93.786, -18.214]], np.float64)
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0], np.float64)


def rgb_to_ycbcr(rgb: jax.Array) -> jax.Array:
  """f32[..., 3] RGB in [0, 1] → YCbCr in [0, 1] (MATLAB's `rgb2ycbcr` / 255)."""
  m = jnp.asarray(_YCBCR_MATRIX.T / 255.0, jnp.float32)
  return jnp.dot(rgb, m, precision=jax.lax.Precision.HIGHEST) + jnp.asarray(
      _YCBCR_OFFSET / 255.0, jnp.float32)


def ycbcr_to_rgb(ycbcr: jax.Array) -> jax.Array:
  """The inverse of `rgb_to_ycbcr` (MATLAB's `ycbcr2rgb`), not clipped."""
  m = jnp.asarray(np.linalg.inv(_YCBCR_MATRIX / 255.0).T, jnp.float32)
  return jnp.dot(ycbcr - jnp.asarray(_YCBCR_OFFSET / 255.0, jnp.float32), m,
                 precision=jax.lax.Precision.HIGHEST)


def to_uint8(x: jax.Array) -> jax.Array:
  """f32 in [0, 1] (values outside are clipped) → uint8, rounded."""
  return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=('apply', 'scale', 'channels'))
def _upscale(apply: Callable, variables, images: jax.Array, *, scale: int,
             channels: int) -> jax.Array:
  rgb = images.astype(jnp.float32) / 255.0
  if rgb.shape[-1] == 1:
    rgb = jnp.repeat(rgb, 3, axis=-1)
  if channels == 3:
    out = apply(variables, rgb)
  else:
    ycbcr = rgb_to_ycbcr(rgb)
    y = apply(variables, jnp.round(ycbcr[..., :1] * 255.0) / 255.0)  # Y as 8 bits, as trained
    chroma = bicubic_upscale(ycbcr[..., 1:], scale)
    out = ycbcr_to_rgb(jnp.concatenate([y, chroma], axis=-1))
  out = to_uint8(out)
  return out[..., :1] if images.shape[-1] == 1 else out


def upscale(apply: Callable, variables, images: np.ndarray, *, scale: int,
            channels: int) -> np.ndarray:
  """uint8[B, h, w, K] → uint8[B, h·scale, w·scale, K] with `apply(variables, x)`, the
  model in inference mode on f32[B, h, w, channels] in [0, 1] (see the module doc)."""
  return np.asarray(_upscale(apply, variables, jnp.asarray(images), scale=scale,
                             channels=channels))


@functools.partial(jax.jit, static_argnames=('scale',))
def _bicubic(images: jax.Array, scale: int) -> jax.Array:
  return to_uint8(bicubic_upscale(images.astype(jnp.float32) / 255.0, scale))


def bicubic(images: np.ndarray, scale: int) -> np.ndarray:
  """uint8[B, h, w, K] → uint8[B, h·scale, w·scale, K], bicubic (the baseline every SR
  model is compared with; the resampler SRCNN starts from)."""
  return np.asarray(_bicubic(jnp.asarray(images), scale))
