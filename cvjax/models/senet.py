"""Squeeze-and-excitation networks (Hu et al. 2018): SE-ResNet-50 and SE-ResNet-20.

An SE block (`blocks.SEBlock`) recalibrates the channels of each residual
branch before the addition: s = σ(W2 ReLU(W1 GAP(y))), y ← y · s, with
W1: C → C/16 and W2: C/16 → C. In a bottleneck of output width C = 4·f:

      conv1 1×1 f → conv2 3×3 f (stride) → conv3 1×1 4f → SE(4f, r=16) → + shortcut → ReLU

SE-ResNet-50 is ResNet-50 (v1.5, torchvision layout and names; the stride on the
3×3) plus one SE block per bottleneck (`layer{i}_{j}/se/reduce`, `.../expand`):
25,557,032 + 2,530,992 = 28,088,024 params (Hu et al. Table 2: 28.09M; timm's
`seresnet50` has the same count).

SE-ResNet-20 is the CIFAR ResNet-20 (`cifar_resnet`, option-A shortcuts) with an
SE block in each basic block (r = 16, so 1, 2 and 4 squeeze units in the three
stages): 269,722 + 2,373 = 272,095 params at 10 classes.
"""
from __future__ import annotations

from functools import partial

import flax.linen as nn

from cvjax.models import cifar_resnet, resnet
from cvjax.models.blocks import SEBlock

# The ResNet blocks' shared pieces (same package).
_shortcut = resnet._shortcut  # pylint: disable=protected-access
_last_scale_init = resnet._last_scale_init  # pylint: disable=protected-access


class SEBottleneck(resnet.Bottleneck):
  """`resnet.Bottleneck` with an SE block on the residual branch: [B,H,W,C] → [B,H/s,W/s,4f]."""
  reduction: int = 16

  @nn.compact
  def __call__(self, x):
    s1, s3 = (self.strides, 1) if self.stride_on_1x1 else (1, self.strides)
    y = self.act(self.norm(name='bn1')(self.conv(self.features, 1, s1, name='conv1')(x)))
    y = self.act(self.norm(name='bn2')(self.conv(self.features, 3, s3, name='conv2')(y)))
    y = self.conv(4 * self.features, 1, name='conv3')(y)
    y = self.norm(name='bn3', scale_init=_last_scale_init(self))(y)
    y = SEBlock(self.reduction, dtype=y.dtype, name='se')(y)
    return self.act(y + _shortcut(self, x, y, self.shortcut))


class SEBasicBlock(resnet.BasicBlock):
  """`resnet.BasicBlock` with an SE block on the residual branch: [B,H,W,C] → [B,H/s,W/s,f]."""
  reduction: int = 16

  @nn.compact
  def __call__(self, x):
    y = self.act(self.norm(name='bn1')(self.conv(self.features, 3, self.strides, name='conv1')(x)))
    y = self.conv(self.features, 3, name='conv2')(y)
    y = self.norm(name='bn2', scale_init=_last_scale_init(self))(y)
    y = SEBlock(self.reduction, dtype=y.dtype, name='se')(y)
    return self.act(y + _shortcut(self, x, y, self.shortcut))


class SECifarResNet(cifar_resnet.CifarResNet):
  """`cifar_resnet.CifarResNet` (6n + 2 layers, 16-32-64 filters) with SE basic blocks."""
  reduction: int = 16

  def block(self):
    return partial(SEBasicBlock, reduction=self.reduction)


SEResNet50 = partial(resnet.ResNet, stage_sizes=(3, 4, 6, 3), block_cls=SEBottleneck)
SEResNet101 = partial(resnet.ResNet, stage_sizes=(3, 4, 23, 3), block_cls=SEBottleneck)
SEResNet20 = partial(SECifarResNet, depth=20)
