"""SSD's default boxes (Liu et al. 2016 §2.2), laid out as torchvision's `DefaultBoxGenerator`.

Feature map k (of L) with scale s_k gets, at every cell, the boxes

    (s_k, s_k), (s'_k, s'_k) with s'_k = sqrt(s_k · s_{k+1}),
    and for each aspect ratio a in aspect_ratios[k]: (s_k·√a, s_k/√a), (s_k/√a, s_k·√a)

as (width, height) pairs, clipped to [0, 1] when `clip`, centred on
((i + 0.5) / f_x, (j + 0.5) / f_y) with f = image_size / step (or the map's
own size when no steps are given). The order is map by map, then row (y),
column (x), then the pairs above: the order of the SSD head's outputs.

SSD300 (torchvision `ssd300_vgg16`): scales 0.07, 0.15, 0.33, 0.51, 0.69,
0.87, 1.05; ratios [2], [2, 3], [2, 3], [2, 3], [2], [2]; steps 8, 16, 32,
64, 100, 300; maps 38, 19, 10, 5, 3, 1 → 8,732 boxes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class AnchorSpec:
  """What fixes a model's default boxes (besides its feature map sizes).

  scales: L + 1 scales as fractions of the image side (the last only enters s'_{L-1}).
  aspect_ratios: per map, the ratios a > 1 (each adds a box and its transpose).
  steps: per map, the cell size in input pixels; None: image_size / map size.
  clip: clip widths and heights to [0, 1] (torchvision's default).
  """
  scales: tuple[float, ...]
  aspect_ratios: tuple[tuple[float, ...], ...]
  steps: tuple[float, ...] | None = None
  clip: bool = True

  def __post_init__(self):
    if len(self.scales) != len(self.aspect_ratios) + 1:
      raise ValueError(f'{len(self.aspect_ratios)} feature maps need '
                       f'{len(self.aspect_ratios) + 1} scales, got {len(self.scales)}')
    if self.steps is not None and len(self.steps) != len(self.aspect_ratios):
      raise ValueError(f'{len(self.aspect_ratios)} feature maps need as many steps, '
                       f'got {len(self.steps)}')

  @property
  def num_maps(self) -> int:
    return len(self.aspect_ratios)

  def boxes_per_location(self) -> list[int]:
    """Default boxes per cell of each map: 2 + 2·len(ratios)."""
    return [2 + 2 * len(r) for r in self.aspect_ratios]

  def sizes(self, k: int) -> np.ndarray:
    """f64[n, 2] (width, height) pairs of map k, normalised, clipped if `clip`."""
    s, s_next = self.scales[k], self.scales[k + 1]
    pairs = [(s, s), (math.sqrt(s * s_next),) * 2]
    for a in self.aspect_ratios[k]:
      r = math.sqrt(a)
      pairs += [(s * r, s / r), (s / r, s * r)]
    pairs = np.asarray(pairs, np.float64)
    return np.clip(pairs, 0.0, 1.0) if self.clip else pairs


def linear_scales(num_maps: int, s_min: float = 0.2, s_max: float = 0.9) -> tuple[float, ...]:
  """The paper's scales s_k = s_min + (s_max - s_min)(k - 1)/(m - 1), k = 1..m, plus 1.0
  as the extra scale of the last map (torchvision's rule when no scales are given)."""
  if num_maps == 1:
    return (s_min, s_max)
  return tuple(s_min + (s_max - s_min) * k / (num_maps - 1) for k in range(num_maps)) + (1.0,)


def default_boxes(spec: AnchorSpec, feature_sizes: Sequence[tuple[int, int]],
                  image_size: tuple[int, int]) -> np.ndarray:
  """All default boxes of a model: f32[A, 4] (ymin, xmin, ymax, xmax), normalised.

  Args:
    spec: the model's scales, ratios and steps.
    feature_sizes: (height, width) of each feature map, in head order.
    image_size: (height, width) of the model input, in pixels.
  """
  if len(feature_sizes) != spec.num_maps:
    raise ValueError(f'{len(feature_sizes)} feature maps but the anchor spec has '
                     f'{spec.num_maps}')
  out = []
  for k, (fh, fw) in enumerate(feature_sizes):
    if spec.steps is None:
      cells_y, cells_x = fh, fw
    else:
      cells_y, cells_x = image_size[0] / spec.steps[k], image_size[1] / spec.steps[k]
    cy = (np.arange(fh) + 0.5) / cells_y
    cx = (np.arange(fw) + 0.5) / cells_x
    wh = spec.sizes(k)                                      # [n, 2]
    cy, cx = np.meshgrid(cy, cx, indexing='ij')             # [fh, fw]
    cy = np.broadcast_to(cy[..., None], (fh, fw, len(wh)))
    cx = np.broadcast_to(cx[..., None], (fh, fw, len(wh)))
    w, h = np.broadcast_to(wh[:, 0], cy.shape), np.broadcast_to(wh[:, 1], cy.shape)
    boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)
    out.append(boxes.reshape(-1, 4))
  return np.concatenate(out).astype(np.float32)
