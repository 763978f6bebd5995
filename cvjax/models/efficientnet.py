"""EfficientNet B0-B7 (Tan & Le 2019): MBConv blocks scaled by one compound coefficient.

Baseline B0 (Table 1): MBConv = MobileNetV2's inverted residual with a
squeeze-and-excitation block (ratio 0.25 of the block's *input* channels, swish
inside) and swish activations; stochastic depth ("drop connect") on the
residual branches, its rate growing linearly from 0 to 0.2 over the blocks.

      stage  operator                 resolution   channels   layers
      1      conv 3×3/2                 224²           32         1
      2      MBConv1, k3×3              112²           16         1
      3      MBConv6, k3×3 (s2)         112²→56²       24         2
      4      MBConv6, k5×5 (s2)          56²→28²       40         2
      5      MBConv6, k3×3 (s2)          28²→14²       80         3
      6      MBConv6, k5×5               14²          112         3
      7      MBConv6, k5×5 (s2)          14²→7²       192         4
      8      MBConv6, k3×3                7²          320         1
      9      conv 1×1, pool, dropout, fc  7²          1280        1

Compound scaling (§3.3): depth d = α^φ, width w = β^φ, resolution r = γ^φ with
α = 1.2, β = 1.1, γ = 1.15 (α·β²·γ² ≈ 2: FLOPs double per step of φ). The
released models round these to (width, depth, resolution, top dropout):

      B0 1.0 1.0 224 0.2    B2 1.1 1.2 260 0.3    B4 1.4 1.8 380 0.4    B6 1.8 2.6 528 0.5
      B1 1.0 1.1 240 0.2    B3 1.2 1.4 300 0.3    B5 1.6 2.2 456 0.4    B7 2.0 3.1 600 0.5

Channels are rounded to multiples of 8 (`round_filters`), repeats up
(`⌈d · n⌉`). This is Keras' `keras.applications.EfficientNetB0…B7` layer for
layer. Params (1000 classes) B0 5,288,548 … B7 66,347,960: Keras' totals add
the BN moving statistics and the 7 numbers of its built-in `Normalization`
input layer (mean, variance of 3 channels and a count), e.g. B0 5,288,548 +
42,016 + 7 = 5,330,571. cvjax normalises in the data pipeline instead.

Keras exactness: names are Keras' with '/' (`stem_conv`, `stem_bn`,
`block2a/expand_conv`, `block2a/expand_bn`, `block2a/dwconv`, `block2a/bn`,
`block2a/se/reduce`, `block2a/se/expand`, `block2a/project_conv`,
`block2a/project_bn`, `top_conv`, `top_bn`, `predictions`; join with '_').
Stride-2 depthwise convs and the stem are padded as Keras' `correct_pad`
(= TF 'same': (0, 1) for k3 and (1, 2) for k5 on even sizes, (1, 1) / (2, 2)
on odd — B7 meets 75 → 38). BN eps 1e-3, momentum 0.99. SE convs are 1×1
convs with biases, as in Keras.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from cvjax.models.base import BNModel
from cvjax.models.blocks import SEBlock, StochasticDepth, conv_pads, depthwise_conv
from cvjax.models.layers import GlobalAvgPool, conv_general, he_normal

ModuleDef = Any

# (kernel, repeats, filters_in, filters_out, expand_ratio, strides) of B0, Table 1; SE 0.25.
B0_STAGES = ((3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2),
             (3, 3, 40, 80, 6, 2), (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2),
             (3, 1, 192, 320, 6, 1))
# name: (width, depth, resolution, top dropout)
COEFFICIENTS = {
    'b0': (1.0, 1.0, 224, 0.2), 'b1': (1.0, 1.1, 240, 0.2), 'b2': (1.1, 1.2, 260, 0.3),
    'b3': (1.2, 1.4, 300, 0.3), 'b4': (1.4, 1.8, 380, 0.4), 'b5': (1.6, 2.2, 456, 0.4),
    'b6': (1.8, 2.6, 528, 0.5), 'b7': (2.0, 3.1, 600, 0.5),
}
SE_RATIO = 0.25
# Keras' dense init (VarianceScaling(1/3, fan_out, uniform)).
dense_init = nn.initializers.variance_scaling(1 / 3, 'fan_out', 'uniform')


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Channels × width, to a multiple of `divisor`, at least 90% of the exact value."""
  filters *= width
  new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
  return int(new + divisor if new < 0.9 * filters else new)


def round_repeats(repeats: int, depth: float) -> int:
  return int(math.ceil(depth * repeats))


class MBConv(nn.Module):
  """[B, H, W, C_in] → [B, H/s, W/s, C_out]: expand 1×1 → depthwise k×k → SE → project 1×1 (+ x).

  The residual (with stochastic depth at `drop_rate`) joins when s = 1 and C_in = C_out.
  conv, depthwise: how convs are built (a model hands in its own).
  """
  filters_out: int
  kernel_size: int
  strides: int
  expand_ratio: int
  drop_rate: float
  norm: ModuleDef
  act: Callable = nn.swish
  conv: ModuleDef = conv_general
  depthwise: Callable[..., Any] = depthwise_conv

  @nn.compact
  def __call__(self, x, train: bool):
    conv = partial(self.conv, use_bias=False, kernel_init=he_normal)
    c_in = x.shape[-1]
    y = x
    if self.expand_ratio != 1:
      y = conv(c_in * self.expand_ratio, 1, name='expand_conv')(y)
      y = self.act(self.norm(name='expand_bn')(y))
    y = self.depthwise(y, self.kernel_size, self.strides, 'same', name='dwconv')
    y = self.act(self.norm(name='bn')(y))
    y = SEBlock(squeeze_features=max(1, int(c_in * SE_RATIO)), act=self.act, conv=self.conv,
                kernel_init=he_normal, name='se')(y)
    y = conv(self.filters_out, 1, name='project_conv')(y)
    y = self.norm(name='project_bn')(y)
    if self.strides == 1 and c_in == self.filters_out:
      y = StochasticDepth(self.drop_rate, name='drop')(y, deterministic=not train)
      y = y + x
    return y


class EfficientNet(BNModel):
  """EfficientNet: x float32[B, H, W, 3] → logits float32[B, num_classes].

  width/depth_coefficient scale B0's channels and repeats; the resolution is
  the input's (the registry's natural size per variant). small_input: stride 1
  in the stem and in stage 3's first block (a 32² image ends at 4²).
  """
  width_coefficient: float = 1.0
  depth_coefficient: float = 1.0
  dropout_rate: float = 0.2
  drop_connect_rate: float = 0.2
  small_input: bool = False
  bn_momentum: float = 0.99  # Keras'
  bn_epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = self.norm(train)
    conv = partial(self.conv_general, use_bias=False, kernel_init=he_normal)
    width = partial(round_filters, width=self.width_coefficient)
    depth = partial(round_repeats, depth=self.depth_coefficient)

    s = 1 if self.small_input else 2
    x = conv(width(32), 3, s, padding=conv_pads(x, 3, s, 'same'), name='stem_conv')(x)
    x = nn.swish(norm(name='stem_bn')(x))
    total = sum(depth(n) for _, n, *_ in B0_STAGES)
    b = 0
    for stage, (k, n, _, f_out, t, s) in enumerate(B0_STAGES):
      if self.small_input and stage == 1:
        s = 1
      for j in range(depth(n)):
        x = MBConv(width(f_out), k, s if j == 0 else 1, t, self.drop_connect_rate * b / total,
                   norm, conv=self.conv_general, depthwise=self.depthwise_conv,
                   name=f'block{stage + 1}{chr(ord("a") + j)}')(x, train)
        b += 1
    x = conv(width(1280), 1, name='top_conv')(x)
    x = nn.swish(norm(name='top_bn')(x))
    x = GlobalAvgPool(name='avg_pool')(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='top_dropout')(x)
    x = self.dense(self.num_classes, kernel_init=dense_init, name='predictions')(x)
    return jnp.asarray(x, jnp.float32)


def _variant(name: str):
  w, d, _, dropout = COEFFICIENTS[name]
  return partial(EfficientNet, width_coefficient=w, depth_coefficient=d, dropout_rate=dropout)


EfficientNetB0 = _variant('b0')
EfficientNetB1 = _variant('b1')
EfficientNetB2 = _variant('b2')
EfficientNetB3 = _variant('b3')
EfficientNetB4 = _variant('b4')
EfficientNetB5 = _variant('b5')
EfficientNetB6 = _variant('b6')
EfficientNetB7 = _variant('b7')
