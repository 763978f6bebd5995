"""Wide Residual Networks (Zagoruyko & Komodakis 2016), WRN-d-k on 32×32 images.

      output map   32×32   16×16   8×8
      blocks         n       n      n       n = (d − 4) / 6
      filters       16k     32k    64k

A 3×3 conv to 16 channels, three stages of n pre-activation basic blocks (stride 2
at the start of stages 2 and 3), BN-ReLU, global average pool, fc N. A block is
BN-ReLU-conv3×3-BN-ReLU-[dropout]-conv3×3 plus its input; where the width or
stride changes, the shortcut is a 1×1 conv of the pre-activated input (the
paper's code). Convs have no bias; He init (fan_out) as the paper's code.
Parameters at 10 classes: WRN-16-4 2,748,890 · WRN-40-4 8,949,210 ·
WRN-28-10 36,479,194.
"""
from functools import partial

import flax.linen as nn
import jax.numpy as jnp

from cvjax import errors
from cvjax.models.base import BNModel
from cvjax.models.layers import GlobalAvgPool
from cvjax.models.resnet import remat_block

Array = jnp.ndarray


class PreActBlock(nn.Module):
  """[B, H, W, C_in] → [B, H/s, W/s, features]: the WRN basic block, pre-activation."""
  features: int
  conv: nn.Module
  norm: nn.Module
  strides: int = 1
  dropout_rate: float = 0.0
  train: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = nn.relu(self.norm(name='bn1')(x))
    shortcut = x
    if x.shape[-1] != self.features or self.strides != 1:
      shortcut = self.conv(self.features, 1, self.strides, padding=0, name='shortcut')(y)
    y = self.conv(self.features, 3, self.strides, name='conv1')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = nn.Dropout(self.dropout_rate, deterministic=not self.train)(y)
    y = self.conv(self.features, 3, name='conv2')(y)
    return shortcut + y


class WideResNet(BNModel):
  """x float32[B, 32, 32, 3] → logits float32[B, num_classes]; depth = 6n + 4, width k."""
  depth: int = 28
  widen_factor: int = 10
  num_classes: int = 10
  dropout_rate: float = 0.0  # between a block's two convs (the paper: 0.3 on CIFAR)
  remat: bool = False  # recompute each block in the backward pass (less memory)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if (self.depth - 4) % 6 or self.depth < 10:
      raise errors.UserError(f'Wide ResNet depth {self.depth} is not 6n + 4 (10, 16, 22, 28, 40, ...)')
    if self.widen_factor < 1:
      raise errors.UserError(f'Wide ResNet widen_factor {self.widen_factor} is below 1')
    n = (self.depth - 4) // 6
    block = remat_block(PreActBlock) if self.remat else PreActBlock
    conv, norm = partial(self.conv, use_bias=False), self.norm(train)

    x = conv(16, 3, name='conv1')(x)
    for i in range(3):
      for j in range(n):
        x = block(16 * self.widen_factor * 2**i, conv=conv, norm=norm,
                  strides=2 if i > 0 and j == 0 else 1, dropout_rate=self.dropout_rate,
                  train=train, name=f'layer{i + 1}_{j}')(x)
    x = nn.relu(norm(name='bn_final')(x))
    x = GlobalAvgPool(name='avgpool')(x)
    x = self.dense(self.num_classes, name='fc')(x)
    return jnp.asarray(x, jnp.float32)


WRN16_4 = partial(WideResNet, depth=16, widen_factor=4)
WRN28_10 = partial(WideResNet, depth=28, widen_factor=10)
WRN40_4 = partial(WideResNet, depth=40, widen_factor=4)
