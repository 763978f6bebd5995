"""Appearance embedders for DeepSORT: crops → float32[N, D] unit rows.

An embedder is any callable taking a list of uint8[h, w, 3] RGB crops (sizes differ;
a box outside the frame gives an empty crop) and returning float32[N, D].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class ColourHistogramEmbedder:
  """The joint RGB histogram of a crop's central part as an appearance feature.

  Each channel is quantised into `bins` levels; the histogram of the central
  `centre` fraction of the crop (less background around the object) is normalised to
  sum 1 and square-rooted, so rows have unit length and their cosine distance is
  1 − the Bhattacharyya coefficient of the two histograms. Empty crops embed as the
  uniform histogram. Output: float32[N, bins³].
  """

  def __init__(self, bins: int = 6, centre: float = 0.8):
    self.bins = bins
    self.centre = centre

  @property
  def dim(self) -> int:
    return self.bins ** 3

  def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
    out = np.empty((len(crops), self.dim), np.float32)
    for i, crop in enumerate(crops):
      crop = np.asarray(crop)
      h, w = crop.shape[:2]
      dy, dx = int(h * (1 - self.centre) / 2), int(w * (1 - self.centre) / 2)
      pixels = crop[dy:h - dy, dx:w - dx, :3].reshape(-1, 3).astype(np.int64)
      if len(pixels) == 0:
        out[i] = 1 / np.sqrt(self.dim)
        continue
      q = pixels * self.bins // 256
      counts = np.bincount((q[:, 0] * self.bins + q[:, 1]) * self.bins + q[:, 2],
                           minlength=self.dim)
      out[i] = np.sqrt(counts / counts.sum())
    return out
