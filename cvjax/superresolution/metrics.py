"""Super-resolution metrics as the SR papers compute them, in JAX.

The field's protocol (SRCNN, EDSR, RCAN, SwinIR ... on Set5/Set14/BSD100/Urban100):
convert both images to the BT.601 luma Y of MATLAB's `rgb2ycbcr`, shave `scale`
pixels off every side, then PSNR and SSIM on Y:

  rgb_to_y(images)            f32[B, H, W, 3] → f32[B, H, W, 1], Y in [16/255, 235/255]
  shave(images, border)       f32[B, H, W, C] → f32[B, H - 2·border, W - 2·border, C]
  psnr(a, b, max_value)       f32[B], dB
  ssim(a, b, max_value)       f32[B], mean SSIM, unitless in [-1, 1]
  psnr_y(sr, hr, scale)       f32[B], dB, on shaved Y
  ssim_y(sr, hr, scale)       f32[B], on shaved Y

Images are float in [0, 1] (`max_value` = 1.0), channels last, batched. Every
function is jittable (`border`, `scale` and `max_value` are Python numbers; shapes
are static). The images are not quantised to uint8 before Y is taken; codes that
round Y to integers (MATLAB on uint8 input) differ from these by up to ~0.01 dB.

SSIM is Wang et al. (2004) with an 11 × 11 Gaussian window (σ = 1.5, normalised to
sum 1), K1 = 0.01, K2 = 0.03, population (not sample) covariances, averaged over
the 'valid' window positions and over channels: what scikit-image's
`structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=max_value, channel_axis=-1)` returns.

Hand-written, not `dm_pix.ssim`: dm_pix 0.4.5 agrees with scikit-image to ~4e-6
on photographs, but it would bring three runtime dependencies (dm-pix, chex,
toolz) for some thirty lines, and it clamps the variances at eps² where
scikit-image does not. This one agrees to ~1e-7 (SSIM) and ~3e-6 dB (PSNR) in
float32 on skimage's astronaut, chelsea and coffee. The Gaussian here is separable: two 1-D depthwise
convolutions (`jax.lax.conv_general_dilated`, precision HIGHEST so TPUs and GPUs
do not round to bf16/tf32).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# MATLAB rgb2ycbcr's Y row for R, G, B in [0, 1], output in [0, 255]: Y = 16 + row · rgb.
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0

_SSIM_SIZE = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def rgb_to_y(images: jax.Array) -> jax.Array:
  """BT.601 luma as MATLAB's `rgb2ycbcr` computes it, on the [0, 1] scale.

  Y = (16 + 65.481·R + 128.553·G + 24.966·B) / 255 for R, G, B in [0, 1], so Y lies
  in [16/255, 235/255]; Y · 255 is MATLAB's (and `skimage.color.rgb2ycbcr`'s) Y for
  the same float input, in [16, 235].

  Args:
    images: f32[..., H, W, 3] RGB in [0, 1], or f32[..., H, W, 1] (taken to be Y
      already and returned unchanged).

  Returns:
    f32[..., H, W, 1], Y in [0, 1] scale.
  """
  images = jnp.asarray(images)
  channels = images.shape[-1]
  if channels == 1:
    return images
  if channels != 3:
    raise ValueError(
        f'rgb_to_y takes RGB (3 channels) or Y (1 channel) last; got shape {images.shape}')
  weights = jnp.asarray(_Y_WEIGHTS, images.dtype)
  y = _Y_OFFSET + jnp.einsum('...c,c->...', images, weights,
                             precision=jax.lax.Precision.HIGHEST)
  return (y / 255.0)[..., None]


def shave(images: jax.Array, border: int) -> jax.Array:
  """Crop `border` pixels from each side (the SR protocol shaves `scale` pixels).

  Args:
    images: [..., H, W, C].
    border: pixels removed from the top, bottom, left and right; 0 keeps all.

  Returns:
    [..., H - 2·border, W - 2·border, C].
  """
  border = int(border)
  height, width = images.shape[-3], images.shape[-2]
  if border < 0 or 2 * border >= min(height, width):
    raise ValueError(
        f'shave border must be >= 0 and leave at least one pixel: border={border} '
        f'for images of height {height} and width {width}')
  if border == 0:
    return images
  return images[..., border:height - border, border:width - border, :]


def _check_pair(a: jax.Array, b: jax.Array, name: str) -> tuple[jax.Array, jax.Array]:
  a, b = jnp.asarray(a), jnp.asarray(b)
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(
        f'{name} takes two batches of the same shape [B, H, W, C]; got {a.shape} and {b.shape}')
  dtype = jnp.result_type(a.dtype, b.dtype, jnp.float32)
  return a.astype(dtype), b.astype(dtype)


def psnr(a: jax.Array, b: jax.Array, max_value: float = 1.0) -> jax.Array:
  """Per-image peak signal-to-noise ratio, 10·log10(max_value² / MSE).

  Args:
    a, b: f32[B, H, W, C] in [0, max_value].
    max_value: the peak value (data range); 1.0 for images in [0, 1].

  Returns:
    f32[B] in dB; +inf for an image pair that is identical (MSE = 0).
  """
  a, b = _check_pair(a, b, 'psnr')
  mse = jnp.mean(jnp.square(a - b), axis=(1, 2, 3))
  return 10.0 * jnp.log10(max_value ** 2 / mse)


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
  """f64[size], a sampled Gaussian centred on the middle tap, summing to 1."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  w = np.exp(-0.5 * (x / sigma) ** 2)
  return w / w.sum()


def _blur_valid(x: jax.Array, window: np.ndarray) -> jax.Array:
  """Separable Gaussian, 'valid' positions only.

  Args:
    x: [N, H, W, C].
    window: [k] 1-D weights.

  Returns:
    [N, H - k + 1, W - k + 1, C], each channel filtered on its own.
  """
  channels, k = x.shape[-1], window.shape[0]
  w = jnp.asarray(window, x.dtype)
  dims = ('NHWC', 'HWIO', 'NHWC')
  for kernel in (jnp.tile(w.reshape(k, 1, 1, 1), (1, 1, 1, channels)),
                 jnp.tile(w.reshape(1, k, 1, 1), (1, 1, 1, channels))):
    x = jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding='VALID', dimension_numbers=dims,
        feature_group_count=channels, precision=jax.lax.Precision.HIGHEST)
  return x


def ssim(a: jax.Array, b: jax.Array, max_value: float = 1.0) -> jax.Array:
  """Per-image mean SSIM (Wang et al. 2004), Gaussian window σ = 1.5, 11 × 11.

  S = (2·μa·μb + C1)(2·σab + C2) / ((μa² + μb² + C1)(σa² + σb² + C2)) with
  C1 = (0.01·max_value)², C2 = (0.03·max_value)², local moments from the
  Gaussian-weighted window (population covariances), averaged over the window
  positions that lie wholly inside the image and over channels.

  Args:
    a, b: f32[B, H, W, C] in [0, max_value], H and W >= 11.
    max_value: the data range; 1.0 for images in [0, 1].

  Returns:
    f32[B], unitless; 1 for identical images.
  """
  a, b = _check_pair(a, b, 'ssim')
  if min(a.shape[1], a.shape[2]) < _SSIM_SIZE:
    raise ValueError(
        f'ssim needs images of at least {_SSIM_SIZE}x{_SSIM_SIZE} pixels for its '
        f'Gaussian window; got height {a.shape[1]} and width {a.shape[2]}')
  window = _gaussian_window(_SSIM_SIZE, _SSIM_SIGMA)
  c1 = (_SSIM_K1 * max_value) ** 2
  c2 = (_SSIM_K2 * max_value) ** 2
  batch = a.shape[0]
  # One convolution over the five moment images, stacked on the batch axis.
  moments = _blur_valid(jnp.concatenate([a, b, a * a, b * b, a * b]), window)
  mu_a, mu_b, aa, bb, ab = (moments[i * batch:(i + 1) * batch] for i in range(5))
  var_a = aa - mu_a * mu_a
  var_b = bb - mu_b * mu_b
  cov = ab - mu_a * mu_b
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
       / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)))
  return jnp.mean(s, axis=(1, 2, 3))


def psnr_y(sr: jax.Array, hr: jax.Array, scale: int) -> jax.Array:
  """PSNR on the luma Y with `scale` pixels shaved from each side, as SR papers report.

  Args:
    sr, hr: f32[B, H, W, 3] RGB (or [B, H, W, 1] Y) in [0, 1].
    scale: the upscaling factor, which is also the border shaved.

  Returns:
    f32[B] in dB (peak 1.0 on the [0, 1] Y scale, i.e. 255 on MATLAB's); +inf if equal.
  """
  return psnr(shave(rgb_to_y(sr), scale), shave(rgb_to_y(hr), scale), max_value=1.0)


def ssim_y(sr: jax.Array, hr: jax.Array, scale: int) -> jax.Array:
  """SSIM on the luma Y with `scale` pixels shaved from each side, as SR papers report.

  Args:
    sr, hr: f32[B, H, W, 3] RGB (or [B, H, W, 1] Y) in [0, 1].
    scale: the upscaling factor, which is also the border shaved.

  Returns:
    f32[B], unitless.
  """
  return ssim(shave(rgb_to_y(sr), scale), shave(rgb_to_y(hr), scale), max_value=1.0)
