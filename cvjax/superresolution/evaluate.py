"""Scoring a super-resolution model on whole photographs: the protocol of `cvjax.superres`.

A photograph is the high-resolution (HR) original; its low-resolution (LR) input is made
as training makes it, and the upscaled LR is compared with the HR:

  modcrop(image, scale)        uint8[H, W, K] → uint8[H − H mod scale, W − W mod scale, K]
  downscale(hr, scale)         uint8[H, W, K] → uint8[H/scale, W/scale, K]: the bicubic,
                               antialiased ×1/scale of `cvjax.data.preprocess.sr_pair`,
                               rounded to 8 bits (MATLAB's `imresize`, as SR papers make LR)
  pair(image, scale)           (lr, hr): modcrop, then downscale
  scores(sr, hr, scale)        {'psnr_y', 'ssim_y'} of uint8 images, on the Y of /255 values
                               with `scale` pixels shaved (`cvjax.superresolution.metrics`)
  score(predict, image, scale) the pair, its bicubic and model upscales and the four scores
  photographs(name, split)     (name, uint8[H, W, 3]) of a dataset split, whole
  evaluate(predict, photos, scale)  one row of scores per photograph and their means

K is 1 (gray) or 3 (RGB). Gray images are scored as RGB with R = G = B, so a gray image
and its RGB copy score the same (the Y of MATLAB's `rgb2ycbcr` is not the gray level).
The downscale is of the RGB photograph for every model; luma models (SRCNN, ESPCN)
upscale its Y and bicubic chroma (`cvjax.superresolution.predict`), the papers' protocol.
Training downscales the Y of the window instead: the two LR Y differ by the 8-bit
rounding of RGB before Y is taken.

TensorFlow (for the downscale and the dataset) is imported on first use.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from cvjax.errors import unknown_choice
from cvjax.superresolution import metrics

SCORE_KEYS = ('bicubic_psnr_y', 'psnr_y', 'bicubic_ssim_y', 'ssim_y')


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
  """`image` [H, W, K] without its bottom H mod scale rows and right W mod scale columns."""
  h, w = image.shape[:2]
  return image[:h - h % scale, :w - w % scale]


def downscale(hr: np.ndarray, scale: int) -> np.ndarray:
  """uint8[H, W, K] (H, W multiples of `scale`) → uint8[H/scale, W/scale, K], the LR input
  training makes: `sr_pair(scale)`'s bicubic antialiased resize, rounded to 8 bits."""
  from cvjax.data import datasets  # pylint: disable=g-import-not-at-top
  tf = datasets.tensorflow()  # accelerators hidden before the first TF op
  from cvjax.data import preprocess  # pylint: disable=g-import-not-at-top  # loads TensorFlow
  hr = np.asarray(hr)
  if hr.shape[0] % scale or hr.shape[1] % scale:
    raise ValueError(f'downscale needs sides that are multiples of {scale}, got {hr.shape}; '
                     'modcrop first')
  image = tf.constant(hr.astype(np.float32) / 255.0)
  lr = preprocess.sr_pair(scale)({'image': image})['image']
  return np.round(lr.numpy() * 255.0).astype(np.uint8)  # already on the 8-bit levels


def pair(image: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
  """(lr, hr) uint8 of a photograph uint8[H, W, K]: hr is it modcropped to `scale`, lr
  its `downscale`."""
  hr = modcrop(np.asarray(image, np.uint8), scale)
  return downscale(hr, scale), hr


def _rgb(images: np.ndarray) -> np.ndarray:
  x = np.asarray(images, np.float32) / 255.0
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def scores(sr: np.ndarray, hr: np.ndarray, scale: int) -> dict[str, float]:
  """{'psnr_y' (dB), 'ssim_y'} of uint8[H, W, K] `sr` against `hr`, on the luma Y of the
  values /255 with `scale` pixels shaved from every side (gray: as RGB with R = G = B).
  Sides must leave at least 11 pixels after shaving (SSIM's window)."""
  a, b = _rgb(sr)[None], _rgb(hr)[None]
  return {'psnr_y': float(metrics.psnr_y(a, b, scale)[0]),
          'ssim_y': float(metrics.ssim_y(a, b, scale)[0])}


def score(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray,
          scale: int) -> dict:
  """The protocol on one photograph uint8[H, W, K]: `pair`, then bicubic and
  `predict` (uint8[1, h, w, K] → uint8[1, h·scale, w·scale, K], a restored run's) upscale
  the LR. Returns {'lr', 'hr', 'bicubic', 'sr'} (uint8 images) and the scores
  `SCORE_KEYS` of bicubic and the model against hr."""
  from cvjax.superresolution import predict as sr_predict  # pylint: disable=g-import-not-at-top
  lr, hr = pair(image, scale)
  bicubic = sr_predict.bicubic(lr[None], scale)[0]
  sr = np.asarray(predict(lr[None]))[0]
  if sr.shape != hr.shape:
    raise ValueError(f'the model upscaled {lr.shape} to {sr.shape}, not to {hr.shape}')
  b, m = scores(bicubic, hr, scale), scores(sr, hr, scale)
  return {'lr': lr, 'hr': hr, 'bicubic': bicubic, 'sr': sr,
          'bicubic_psnr_y': b['psnr_y'], 'psnr_y': m['psnr_y'],
          'bicubic_ssim_y': b['ssim_y'], 'ssim_y': m['ssim_y']}


def photographs(dataset: str, split: str, data_dir: str | None = None
                ) -> Iterator[tuple[str, np.ndarray]]:
  """(name, uint8[H, W, 3]) of every photograph of `dataset`'s `split`, whole, in the
  stored order (`cvjax.superresolution.data.builder`: prepared offline on first use)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from cvjax.superresolution import data  # pylint: disable=g-import-not-at-top  # TensorFlow
  builder = data.builder(dataset, data_dir)
  if split not in builder.info.splits:
    raise unknown_choice(f'split of {dataset}', split, list(builder.info.splits))
  for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
    name = ex['name']
    yield (name.decode() if isinstance(name, bytes) else str(name)), ex['image']


def evaluate(predict: Callable[[np.ndarray], np.ndarray],
             photos: Iterable[tuple[str, np.ndarray]], scale: int) -> dict:
  """`score` of every (name, photograph): {'images': [{'name', *SCORE_KEYS}] sorted by
  name, 'mean': {key: the mean over the images}}."""
  rows = []
  for name, image in photos:
    s = score(predict, image, scale)
    rows.append({'name': name, **{k: s[k] for k in SCORE_KEYS}})
  rows.sort(key=lambda r: r['name'])
  mean = {k: float(np.mean([r[k] for r in rows])) if rows else float('nan') for k in SCORE_KEYS}
  return {'images': rows, 'mean': mean}
