"""The lectures' deep CNN: VGG-style stacks of 3×3 convs with BatchNorm, max-pooling and
dropout, He init, on small gray images (Fashion-MNIST at 28×28).

      stage     convs (3×3, BN, ReLU)   then           output at 28×28 in
      1         2 × widths[0]           pool 2, drop   14×14×32
      2         2 × widths[1]           pool 2, drop    7×7×64
      3         2 × widths[2]           pool 2, drop    3×3×128
      head      flatten, dense `hidden` + BN + ReLU, dropout 0.5, dense N

Convs and fc1 have no bias (BatchNorm follows). Parameters at 28×28×1, 10 classes:
882,858 at the defaults; 373,082 with widths (16, 32, 64), the fast recipe's
(experiments/configs/fashion_mnist_fast.flags).
"""
from functools import partial
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cvjax.models.base import BNModel
from cvjax.models.layers import MaxPool, flatten


class DeepCNN(BNModel):
  """x float32[B, H, W, C] → logits float32[B, num_classes]; H, W ≥ 8."""
  num_classes: int = 10
  widths: Sequence[int] = (32, 64, 128)
  convs_per_stage: int = 2
  hidden: int = 512
  dropout_rate: float = 0.25        # after each stage's pool
  head_dropout_rate: float = 0.5    # before the last dense

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv, norm = partial(self.conv, use_bias=False), self.norm(train)
    for i, width in enumerate(self.widths):
      for j in range(self.convs_per_stage):
        x = conv(width, 3, name=f'conv{i + 1}_{j + 1}')(x)
        x = nn.relu(norm(name=f'bn{i + 1}_{j + 1}')(x))
      x = MaxPool(2, name=f'pool{i + 1}')(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = flatten(x)
    x = self.dense(self.hidden, use_bias=False, kernel_init=nn.initializers.he_normal(),
                   name='fc1')(x)
    x = nn.relu(norm(name='bn_fc1')(x))
    x = nn.Dropout(self.head_dropout_rate, deterministic=not train)(x)
    x = self.dense(self.num_classes, name='fc2')(x)
    return jnp.asarray(x, jnp.float32)
