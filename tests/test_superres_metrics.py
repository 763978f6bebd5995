"""cvjax.superresolution.metrics against scikit-image on real photographs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import color, data, metrics, transform

from cvjax.superresolution import metrics as sr_metrics

SCALE = 4
CROP = 240  # divisible by SCALE; fits every image below


@functools.lru_cache(maxsize=None)
def _pairs() -> tuple[np.ndarray, np.ndarray]:
  """HR crops and their degraded versions: f32[3, 240, 240, 3] in [0, 1] each.

  Degraded = bicubic ×1/4 then ×4 (the SR benchmarks' input, upsampled back), plus
  Gaussian noise σ = 0.02, clipped to [0, 1].
  """
  rng = np.random.default_rng(0)
  hr = np.stack([im[:CROP, :CROP].astype(np.float64) / 255
                 for im in (data.astronaut(), data.chelsea(), data.coffee())])
  lr = np.stack([transform.rescale(transform.rescale(h, 1 / SCALE, order=3, channel_axis=-1),
                                   SCALE, order=3, channel_axis=-1) for h in hr])
  degraded = np.clip(lr + rng.normal(0.0, 0.02, lr.shape), 0.0, 1.0)
  return hr.astype(np.float32), degraded.astype(np.float32)


def _sk_ssim(a, b, channel_axis=None):
  return metrics.structural_similarity(
      a.astype(np.float64), b.astype(np.float64), gaussian_weights=True, sigma=1.5,
      use_sample_covariance=False, data_range=1.0, channel_axis=channel_axis)


def _sk_y(rgb):
  """skimage's Y on the [0, 1] scale (its rgb2ycbcr gives [16, 235])."""
  return color.rgb2ycbcr(rgb.astype(np.float64))[..., :1] / 255


def test_rgb_to_y_times_255_is_skimage_rgb2ycbcr_y():
  hr, degraded = _pairs()
  for images in (hr, degraded):
    y = np.asarray(sr_metrics.rgb_to_y(jnp.asarray(images)))
    assert y.shape == images.shape[:3] + (1,)
    expected = np.stack([color.rgb2ycbcr(im.astype(np.float64))[..., 0] for im in images])
    np.testing.assert_allclose(y[..., 0] * 255, expected, atol=1e-4, rtol=0)
  # The range ends: black is 16, white is 235 on MATLAB's scale.
  ends = sr_metrics.rgb_to_y(jnp.asarray([[[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]]]))
  np.testing.assert_allclose(np.asarray(ends)[0, 0, :, 0] * 255, [16.0, 235.0], atol=1e-4)


def test_rgb_to_y_returns_one_channel_input_unchanged():
  y = jnp.linspace(0.0, 1.0, 2 * 5 * 7).reshape(2, 5, 7, 1)
  np.testing.assert_array_equal(sr_metrics.rgb_to_y(y), y)
  with pytest.raises(ValueError, match='3 channels'):
    sr_metrics.rgb_to_y(jnp.zeros((1, 4, 4, 2)))


def test_psnr_matches_skimage_to_1e_4_db_batched():
  hr, degraded = _pairs()
  got = np.asarray(sr_metrics.psnr(jnp.asarray(degraded), jnp.asarray(hr)))
  expected = [metrics.peak_signal_noise_ratio(h.astype(np.float64), d.astype(np.float64),
                                              data_range=1.0) for h, d in zip(hr, degraded)]
  assert got.shape == (3,)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
  assert 20.0 < min(expected) and max(expected) < 35.0  # a real degradation, not a no-op


def test_ssim_matches_skimage_gaussian_to_1e_5_batched():
  hr, degraded = _pairs()
  got = np.asarray(sr_metrics.ssim(jnp.asarray(degraded), jnp.asarray(hr)))
  expected = [_sk_ssim(d, h, channel_axis=-1) for h, d in zip(hr, degraded)]
  assert got.shape == (3,)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
  assert 0.3 < min(expected) and max(expected) < 0.95


def test_psnr_y_and_ssim_y_match_skimage_on_shaved_y():
  hr, degraded = _pairs()
  y_hr = [_sk_y(h)[SCALE:-SCALE, SCALE:-SCALE, 0] for h in hr]
  y_sr = [_sk_y(d)[SCALE:-SCALE, SCALE:-SCALE, 0] for d in degraded]
  psnr_expected = [metrics.peak_signal_noise_ratio(h, s, data_range=1.0) for h, s in zip(y_hr, y_sr)]
  ssim_expected = [_sk_ssim(s, h) for h, s in zip(y_hr, y_sr)]
  sr, hr_j = jnp.asarray(degraded), jnp.asarray(hr)
  np.testing.assert_allclose(np.asarray(sr_metrics.psnr_y(sr, hr_j, SCALE)), psnr_expected,
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(sr_metrics.ssim_y(sr, hr_j, SCALE)), ssim_expected,
                             atol=1e-5, rtol=0)


def test_identical_images_give_infinite_psnr_and_ssim_one():
  hr, _ = _pairs()
  images = jnp.asarray(hr)
  psnr = np.asarray(sr_metrics.psnr(images, images))
  assert np.all(np.isposinf(psnr))
  np.testing.assert_allclose(np.asarray(sr_metrics.ssim(images, images)), 1.0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(sr_metrics.ssim_y(images, images, SCALE)), 1.0, atol=1e-6)


def test_shave_removes_exactly_border_pixels_from_each_side():
  images = jnp.arange(2 * 10 * 12 * 3).reshape(2, 10, 12, 3)
  shaved = sr_metrics.shave(images, 3)
  assert shaved.shape == (2, 4, 6, 3)
  np.testing.assert_array_equal(shaved, np.asarray(images)[:, 3:7, 3:9, :])
  assert sr_metrics.shave(images, 0).shape == images.shape
  with pytest.raises(ValueError, match='border=5'):
    sr_metrics.shave(images, 5)  # would leave no rows


def test_ssim_rejects_images_smaller_than_its_window():
  with pytest.raises(ValueError, match='at least 11x11'):
    sr_metrics.ssim(jnp.zeros((1, 10, 20, 1)), jnp.zeros((1, 10, 20, 1)))


def test_jitted_metrics_equal_eager():
  hr, degraded = _pairs()
  sr, hr_j = jnp.asarray(degraded), jnp.asarray(hr)
  for fn in (sr_metrics.psnr_y, sr_metrics.ssim_y):
    jitted = jax.jit(fn, static_argnums=2)
    np.testing.assert_allclose(np.asarray(jitted(sr, hr_j, SCALE)), np.asarray(fn(sr, hr_j, SCALE)),
                               rtol=1e-6, atol=1e-7)
