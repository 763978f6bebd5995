"""ResNet (He et al. 2016) for ImageNet: v1.5 as torchvision, v1 as Keras.

Names mirror torchvision: `conv1`, `bn1`, `maxpool`, `layer{1-4}_{j}` (blocks
with `conv1..3`, `bn1..3`, `downsample_conv`, `downsample_bn`), `fc`.
"""
from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cvjax.models.base import BNModel
from cvjax.models.layers import GlobalAvgPool, MaxPool, choose

ModuleDef = Any


def _shortcut(block, x, y, kind: str):
  """The identity, or what makes x the shape of y when they differ.

  kind 'B': 1×1 conv with the block's stride, then BN (torchvision, Keras).
  kind 'A': subsample by the stride and zero-pad the new channels, no
    parameters (He et al. §4.2, the CIFAR nets).
  """
  if x.shape == y.shape:
    return x
  choose('shortcut', kind, {'A': 0, 'B': 0})
  s = block.strides
  if kind == 'B':
    x = block.conv(y.shape[-1], 1, s, name='downsample_conv')(x)
    return block.norm(name='downsample_bn')(x)
  x = x[:, ::s, ::s, :]
  extra = y.shape[-1] - x.shape[-1]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


def remat_block(block_cls):
  """`nn.remat(block_cls)`, also through a `functools.partial` (ResNeXt's blocks).

  A rematerialised block keeps only its input for the backward pass and
  recomputes its inside there: the same numbers and parameter names, less
  activation memory, one more forward pass of compute.
  """
  if isinstance(block_cls, partial):
    return partial(nn.remat(block_cls.func), *block_cls.args, **block_cls.keywords)
  return nn.remat(block_cls)


def _dilated(dilation: int) -> dict:
  """A 3×3 conv's extra arguments for atrous rate `dilation` (padding = rate keeps the
  size); none at rate 1, so undilated nets build exactly as before."""
  return {} if dilation == 1 else {'padding': dilation, 'kernel_dilation': dilation}


def _last_scale_init(block):
  """Zero γ for the block's last BN, if asked: each block starts as the identity
  (Goyal et al. 2017), which helps large-batch training."""
  return nn.initializers.zeros if block.zero_init_last_bn else nn.initializers.ones


class BasicBlock(nn.Module):
  """3×3 → 3×3 (ResNet-18/34, CIFAR): [B, H, W, C] → [B, H/s, W/s, features]."""
  features: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable = nn.relu
  strides: int = 1
  zero_init_last_bn: bool = False
  stride_on_1x1: bool = False  # no 1×1 here: v1 and v1.5 are the same block
  shortcut: str = 'B'
  dilation: int = 1  # atrous rate of the first 3×3 (DeepLab; mmseg's BasicBlock)

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.features, 3, self.strides, **_dilated(self.dilation), name='conv1')(x)
    y = self.act(self.norm(name='bn1')(y))
    y = self.conv(self.features, 3, name='conv2')(y)
    y = self.norm(name='bn2', scale_init=_last_scale_init(self))(y)
    return self.act(y + _shortcut(self, x, y, self.shortcut))


class Bottleneck(nn.Module):
  """1×1 → 3×3 → 1×1 (ResNet-50/101/152): [B, H, W, C] → [B, H/s, W/s, 4·features].

  The stride sits on the 3×3 (v1.5, torchvision) or on the first 1×1
  (`stride_on_1x1`, the paper's v1 and Keras); `dilation` is the 3×3's atrous rate
  (torchvision's `replace_stride_with_dilation`, DeepLab).
  """
  features: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable = nn.relu
  strides: int = 1
  zero_init_last_bn: bool = False
  stride_on_1x1: bool = False
  shortcut: str = 'B'
  dilation: int = 1

  @nn.compact
  def __call__(self, x):
    s1, s3 = (self.strides, 1) if self.stride_on_1x1 else (1, self.strides)
    y = self.conv(self.features, 1, s1, name='conv1')(x)
    y = self.act(self.norm(name='bn1')(y))
    y = self.conv(self.features, 3, s3, **_dilated(self.dilation), name='conv2')(y)
    y = self.act(self.norm(name='bn2')(y))
    y = self.conv(4 * self.features, 1, name='conv3')(y)
    y = self.norm(name='bn3', scale_init=_last_scale_init(self))(y)
    return self.act(y + _shortcut(self, x, y, self.shortcut))


class ResNet(BNModel):
  """ImageNet ResNet: x float32[B, H, W, 3] → logits float32[B, num_classes].

      layer                  output at 224²   filters
      conv1 7×7, s2, p3      112×112          64
      maxpool 3×3, s2, p1     56×56
      layer1                  56×56            64   (×4 out in bottlenecks)
      layer2                  28×28           128   (first block: stride 2)
      layer3                  14×14           256
      layer4                   7×7            512
      avgpool, fc N            1×1            N

  Blocks per stage: ResNet-18 2-2-2-2, 34 3-4-6-3 (basic); 50 3-4-6-3,
  101 3-4-23-3, 152 3-8-36-3 (bottleneck).
  """
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_filters: int = 64
  zero_init_last_bn: bool = False
  stride_on_1x1: bool = False  # True: v1 (Keras); False: v1.5 (torchvision)
  conv_bias: bool = False  # Keras' convs have biases
  remat: bool = False  # recompute each block in the backward pass (less memory)

  @nn.compact
  def __call__(self, x, train: bool = False):
    block_cls = remat_block(self.block_cls) if self.remat else self.block_cls
    conv, norm = partial(self.conv, use_bias=self.conv_bias), self.norm(train)

    x = nn.relu(norm(name='bn1')(conv(self.num_filters, 7, 2, name='conv1')(x)))
    x = MaxPool(3, 2, padding=1, name='maxpool')(x)
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        x = block_cls(
            self.num_filters * 2**i, conv=conv, norm=norm, act=nn.relu,
            strides=2 if i > 0 and j == 0 else 1,
            zero_init_last_bn=self.zero_init_last_bn,
            stride_on_1x1=self.stride_on_1x1, name=f'layer{i + 1}_{j}')(x)
    x = GlobalAvgPool(name='avgpool')(x)
    x = self.dense(self.num_classes, name='fc')(x)
    return jnp.asarray(x, jnp.float32)


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNet101 = partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=Bottleneck)
ResNet152 = partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=Bottleneck)

# Keras' `keras.applications.ResNet50` & co.: v1 blocks, conv biases, BN eps
# 1.001e-5 and momentum 0.99. Keras pads with ZeroPadding2D before the 7×7
# conv (3) and the max-pool (1): equal to ours, since the pool follows a ReLU.
_keras = dict(stride_on_1x1=True, conv_bias=True, bn_epsilon=1.001e-5,
              bn_momentum=0.99)
ResNet50Keras = partial(ResNet50, **_keras)
ResNet101Keras = partial(ResNet101, **_keras)
ResNet152Keras = partial(ResNet152, **_keras)
