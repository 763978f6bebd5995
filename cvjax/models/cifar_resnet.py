"""CIFAR ResNets (He et al. 2016 §4.2): 6n + 2 layers on 32×32 images.

      output map   32×32   16×16   8×8
      layers       1 + 2n    2n     2n
      filters        16      32     64

A 3×3 conv, three stages of n basic blocks (stride 2 at the start of stages 2
and 3), global average pool, fc N. Shortcuts are option A (identity; on a
shape change, subsample and zero-pad channels: no parameters), as in the
paper's CIFAR experiments. Parameters at 10 classes (the paper rounds them to
0.27M/0.46M/0.66M/0.85M/1.7M; convs have no bias, BN has γ and β):
resnet20 269,722 · resnet32 464,154 · resnet44 658,586 · resnet56 853,018 ·
resnet110 1,727,962. By hand for ResNet-20: conv1 + bn 432 + 32; stage 1
3·(2·2,304 + 2·32) = 14,016; stage 2 (4,608 + 9,216 + 128) + 2·(2·9,216 + 128)
= 51,072; stage 3 (18,432 + 36,864 + 256) + 2·(2·36,864 + 256) = 203,520;
fc 64·10 + 10 = 650.
"""
from functools import partial

import flax.linen as nn
import jax.numpy as jnp

from cvjax import errors
from cvjax.models.base import BNModel
from cvjax.models.layers import GlobalAvgPool, ModuleDef
from cvjax.models.resnet import BasicBlock, remat_block


class CifarResNet(BNModel):
  """x float32[B, 32, 32, 3] → logits float32[B, num_classes]; depth = 6n + 2."""
  depth: int
  num_classes: int = 10
  num_filters: int = 16
  shortcut: str = 'A'  # 'A': parameter-free (paper); 'B': 1×1 conv + BN
  zero_init_last_bn: bool = False
  remat: bool = False  # recompute each block in the backward pass (less memory)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if (self.depth - 2) % 6 or self.depth < 8:
      raise errors.UserError(
          f'CIFAR ResNet depth {self.depth} is not 6n + 2 (20, 32, 44, 56, 110, ...)')
    n = (self.depth - 2) // 6
    block = remat_block(self.block()) if self.remat else self.block()
    conv, norm = partial(self.conv, use_bias=False), self.norm(train)

    x = nn.relu(norm(name='bn1')(conv(self.num_filters, 3, name='conv1')(x)))
    for i in range(3):
      for j in range(n):
        x = block(self.num_filters * 2**i, conv=conv, norm=norm,
                  act=nn.relu, strides=2 if i > 0 and j == 0 else 1,
                  zero_init_last_bn=self.zero_init_last_bn,
                  shortcut=self.shortcut, name=f'layer{i + 1}_{j}')(x)
    x = GlobalAvgPool(name='avgpool')(x)
    x = self.dense(self.num_classes, name='fc')(x)
    return jnp.asarray(x, jnp.float32)

  def block(self) -> ModuleDef:
    """The residual block class (subclasses swap in theirs, e.g. SE-ResNet-20's)."""
    return BasicBlock


ResNet20 = partial(CifarResNet, depth=20)
ResNet32 = partial(CifarResNet, depth=32)
ResNet44 = partial(CifarResNet, depth=44)
ResNet56 = partial(CifarResNet, depth=56)
ResNet110 = partial(CifarResNet, depth=110)
