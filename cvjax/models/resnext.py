"""ResNeXt (Xie et al. 2017): aggregated residual transformations via grouped convolutions.

A ResNeXt bottleneck splits its 3×3 conv into `cardinality` groups, each seeing
width / cardinality channels: "32×4d" is 32 groups of 4 channels at the first
stage (width = f · base_width / 64 · cardinality = 2f), doubling per stage:

      stage    ResNet-50 bottleneck            ResNeXt-50 32×4d bottleneck       output at 224²
      layer1   1×1 64, 3×3 64, 1×1 256         1×1 128, 3×3 128 g32, 1×1 256      56×56
      layer2   1×1 128, 3×3 128, 1×1 512       1×1 256, 3×3 256 g32, 1×1 512      28×28
      layer3   1×1 256, 3×3 256, 1×1 1024      1×1 512, 3×3 512 g32, 1×1 1024     14×14
      layer4   1×1 512, 3×3 512, 1×1 2048      1×1 1024, 3×3 1024 g32, 1×1 2048    7×7

Same stem, stage sizes (3, 4, 6, 3), v1.5 strides and names as `resnet.ResNet`:
25,028,904 params (torchvision `resnext50_32x4d`); 101 32×8d: 88,791,336.
"""
from __future__ import annotations

from functools import partial

import flax.linen as nn

from cvjax.models import resnet

# The ResNet blocks' shared pieces (same package).
_shortcut = resnet._shortcut  # pylint: disable=protected-access
_last_scale_init = resnet._last_scale_init  # pylint: disable=protected-access


class ResNeXtBottleneck(resnet.Bottleneck):
  """1×1 width → grouped 3×3 width (stride) → 1×1 4f: [B,H,W,C] → [B,H/s,W/s,4f]."""
  cardinality: int = 32
  base_width: int = 4

  @nn.compact
  def __call__(self, x):
    width = self.features * self.base_width // 64 * self.cardinality
    s1, s3 = (self.strides, 1) if self.stride_on_1x1 else (1, self.strides)
    y = self.act(self.norm(name='bn1')(self.conv(width, 1, s1, name='conv1')(x)))
    y = self.conv(width, 3, s3, feature_group_count=self.cardinality, name='conv2')(y)
    y = self.act(self.norm(name='bn2')(y))
    y = self.conv(4 * self.features, 1, name='conv3')(y)
    y = self.norm(name='bn3', scale_init=_last_scale_init(self))(y)
    return self.act(y + _shortcut(self, x, y, self.shortcut))


ResNeXt50_32x4d = partial(resnet.ResNet, stage_sizes=(3, 4, 6, 3),
                          block_cls=partial(ResNeXtBottleneck, cardinality=32, base_width=4))
ResNeXt101_32x8d = partial(resnet.ResNet, stage_sizes=(3, 4, 23, 3),
                           block_cls=partial(ResNeXtBottleneck, cardinality=32, base_width=8))
