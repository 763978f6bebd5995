"""Xception (Chollet 2017): Inception taken to the limit — depthwise-separable convolutions.

Keras' `keras.applications.Xception`, layer for layer, at 299×299×3:

      flow    block    layers                                          output at 299²
      entry   block1   conv 3×3/2 32 valid, conv 3×3 64 valid            147×147×64
              block2   sep 128, sep 128, maxpool 3×3/2 + 1×1/2 shortcut   74×74×128
              block3   ReLU-sep 256, ReLU-sep 256, maxpool + shortcut      37×37×256
              block4   ReLU-sep 728, ReLU-sep 728, maxpool + shortcut      19×19×728
      middle  block5-12  3 × (ReLU-sep 728), identity shortcut             19×19×728
      exit    block13  ReLU-sep 728, ReLU-sep 1024, maxpool + shortcut     10×10×1024
              block14  sep 1536 ReLU, sep 2048 ReLU                        10×10×2048
              avg_pool, predictions N                                            N

"sep" is a 3×3 depthwise-separable conv (no bias) followed by BN; shortcuts of
blocks 2, 3, 4 and 13 are a 1×1/s2 conv + BN. 22,855,952 params + 54,528 BN
statistics = Keras' 22,910,480. BN: Keras defaults, eps 1e-3, momentum 0.99.

Names are Keras' (`block2_sepconv1`, `block2_sepconv1_bn`, ..., `predictions`;
a separable conv holds `depthwise` and `pointwise`). Keras leaves the four
shortcut convs unnamed (`conv2d`, `conv2d_1`, ... and `batch_normalization`,
... in the order of blocks 2, 3, 4, 13); here they are `block{2,3,4,13}_residual`
and `..._residual_bn`. The max-pools are Keras 'same' pools: at 147 → 74 the
window is padded (1, 1), at 74 → 37 (0, 1) (see `blocks.keras_same`).
"""
from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax.numpy as jnp

from cvjax.models.base import BNModel
from cvjax.models.blocks import MaxPoolSame, SeparableConv
from cvjax.models.layers import GlobalAvgPool

# (block, filters of its two separable convs): the downsampling blocks of the entry flow.
ENTRY_FLOW = ((2, (128, 128)), (3, (256, 256)), (4, (728, 728)))
MIDDLE_BLOCKS = range(5, 13)  # 8 blocks of 3 × sep 728


class Xception(BNModel):
  """Xception: x float32[B, H, W, 3] → logits float32[B, num_classes] (smallest input 71²)."""
  bn_momentum: float = 0.99  # Keras'
  bn_epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm, conv = self.norm(train), partial(self.conv, use_bias=False)
    sep = partial(SeparableConv, depthwise=self.depthwise_conv, conv=self.conv_general)

    def sep_bn(x, f, name):
      return norm(name=f'{name}_bn')(sep(f, name=name)(x))

    def downsample(x, filters, block, relu_first):
      residual = conv(filters[-1], 1, 2, padding=0, name=f'block{block}_residual')(x)
      residual = norm(name=f'block{block}_residual_bn')(residual)
      for i, f in enumerate(filters, start=1):
        if relu_first or i > 1:
          x = nn.relu(x)
        x = sep_bn(x, f, f'block{block}_sepconv{i}')
      x = MaxPoolSame(3, 2, name=f'block{block}_pool')(x)
      return x + residual

    # entry flow
    x = nn.relu(norm(name='block1_conv1_bn')(conv(32, 3, 2, padding=0, name='block1_conv1')(x)))
    x = nn.relu(norm(name='block1_conv2_bn')(conv(64, 3, padding=0, name='block1_conv2')(x)))
    for block, filters in ENTRY_FLOW:
      x = downsample(x, filters, block, relu_first=block > 2)
    # middle flow
    for block in MIDDLE_BLOCKS:
      y = x
      for i in (1, 2, 3):
        y = sep_bn(nn.relu(y), 728, f'block{block}_sepconv{i}')
      x = x + y
    # exit flow
    x = downsample(x, (728, 1024), 13, relu_first=True)
    x = nn.relu(sep_bn(x, 1536, 'block14_sepconv1'))
    x = nn.relu(sep_bn(x, 2048, 'block14_sepconv2'))
    x = GlobalAvgPool(name='avg_pool')(x)
    x = self.dense(self.num_classes, name='predictions')(x)
    return jnp.asarray(x, jnp.float32)
