"""DenseNet (Huang et al. 2017): every layer sees the feature maps of all layers before it.

A dense block of n layers, growth rate k: layer i gets the concatenation of the
block's input (C0 channels) and the i − 1 previous layers' outputs and adds k
channels ("BN-ReLU-Conv" order, bottleneck "B" version):

      BN → ReLU → conv 1×1 4k → BN → ReLU → conv 3×3 k → concatenate    C0 + i·k channels

Transitions between blocks halve channels and resolution ("C", compression 0.5):
BN → ReLU → conv 1×1 → 2×2/2 average pool. ImageNet layout (Table 1), k = 32:

      layer                    output at 224²   DenseNet-121   -169   -201
      conv1 7×7/2 64, pool 3×3/2   56×56
      dense block 1 (conv2)        56×56        6              6      6
      transition 1 (pool2)         28×28
      dense block 2 (conv3)        28×28        12             12     12
      transition 2 (pool3)         14×14
      dense block 3 (conv4)        14×14        24             32     48
      transition 3 (pool4)          7×7
      dense block 4 (conv5)         7×7         16             32     32
      bn, ReLU, avg_pool, predictions N

Params (1000 classes; = torchvision's `densenet121/169/201`): 7,978,856 /
14,149,480 / 20,013,928; Keras' `DenseNet121/169/201` report 8,062,504 /
14,307,880 / 20,242,984 because they add the BN moving mean and variance
(83,648 / 158,400 / 229,056). BN eps 1.001e-5, momentum 0.99 (Keras).

Names are Keras' with '/' for '_': `conv1_conv`, `conv1_bn`, `conv2_block1/0_bn`,
`conv2_block1/1_conv`, `conv2_block1/1_bn`, `conv2_block1/2_conv`, `pool2/bn`,
`pool2/conv`, ..., `bn`, `predictions`. (torchvision: denseblock{b}.denselayer{i}.norm1,
conv1, norm2, conv2; transition{b}.norm, conv; norm5; classifier.)

`stem='cifar'` is Huang et al.'s small-image stem (§3): one 3×3 conv of 2k
channels, no pool; with three blocks of 16 layers, k = 12 it is DenseNet-BC-100
(0.8M params in the paper's Table 2; 769,162 here at 10 classes).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cvjax.models.base import BNModel
from cvjax.models.layers import AvgPool, GlobalAvgPool, MaxPool, choose

ModuleDef = Any


class DenseLayer(nn.Module):
  """BN-ReLU-1×1 (bn_size·k)-BN-ReLU-3×3 k, concatenated to the input: [B,H,W,C] → [B,H,W,C+k]."""
  growth_rate: int
  bn_size: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm(name='0_bn')(x))
    y = self.conv(self.bn_size * self.growth_rate, 1, name='1_conv')(y)
    y = nn.relu(self.norm(name='1_bn')(y))
    y = self.conv(self.growth_rate, 3, name='2_conv')(y)
    return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
  """BN-ReLU-1×1 conv (⌊C·compression⌋)-2×2/2 average pool: [B,H,W,C] → [B,H/2,W/2,C/2]."""
  compression: float
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    x = nn.relu(self.norm(name='bn')(x))
    x = self.conv(int(x.shape[-1] * self.compression), 1, name='conv')(x)
    return AvgPool(2, 2, name='pool')(x)


class DenseNet(BNModel):
  """DenseNet-BC: x float32[B, H, W, 3] → logits float32[B, num_classes]."""
  blocks: Sequence[int]
  growth_rate: int = 32
  bn_size: int = 4
  compression: float = 0.5
  stem: str = 'imagenet'  # 'imagenet': 7×7/2 conv + 3×3/2 pool; 'cifar': 3×3 conv 2k
  bn_momentum: float = 0.99  # Keras'
  bn_epsilon: float = 1.001e-5

  @nn.compact
  def __call__(self, x, train: bool = False):
    choose('DenseNet stem', self.stem, {'imagenet': 0, 'cifar': 0})
    norm, conv = self.norm(train), partial(self.conv, use_bias=False)

    if self.stem == 'imagenet':
      x = nn.relu(norm(name='conv1_bn')(conv(64, 7, 2, name='conv1_conv')(x)))
      x = MaxPool(3, 2, padding=1, name='pool1')(x)  # after ReLU: zero padding = −∞ padding
    else:
      x = conv(2 * self.growth_rate, 3, name='conv1_conv')(x)
    for b, n in enumerate(self.blocks):
      for i in range(n):
        x = DenseLayer(self.growth_rate, self.bn_size, conv, norm,
                       name=f'conv{b + 2}_block{i + 1}')(x)
      if b < len(self.blocks) - 1:
        x = Transition(self.compression, conv, norm, name=f'pool{b + 2}')(x)
    x = nn.relu(norm(name='bn')(x))
    x = GlobalAvgPool(name='avg_pool')(x)
    x = self.dense(self.num_classes, name='predictions')(x)
    return jnp.asarray(x, jnp.float32)


DenseNet121 = partial(DenseNet, blocks=(6, 12, 24, 16))
DenseNet169 = partial(DenseNet, blocks=(6, 12, 32, 32))
DenseNet201 = partial(DenseNet, blocks=(6, 12, 48, 32))
DenseNetBC100 = partial(DenseNet, blocks=(16, 16, 16), growth_rate=12, stem='cifar')
