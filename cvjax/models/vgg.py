"""VGG (Simonyan & Zisserman 2015), configurations A, B, D, E.

Each stage is a run of 3×3/s1/p1 convs followed by a 2×2/s2 max-pool, so a
224² image leaves the features at 7×7×512. Names follow Keras' VGG16
(`block{stage}_conv{i}`, `block{stage}_pool`) so weights map one to one.
"""
from functools import partial
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cvjax.models.base import BNModel
from cvjax.models.layers import AdaptiveAvgPool, GlobalAvgPool, MaxPool, choose, flatten

# Table 1 of the paper: filters of each conv, stage by stage.
CFG_A = ((64,), (128,), (256, 256), (512, 512), (512, 512))  # VGG-11
CFG_B = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))  # VGG-13
CFG_D = ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3)  # VGG-16
CFG_E = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)  # VGG-19


class VGG(BNModel):
  """VGG: x float32[B, H, W, 3] → logits float32[B, num_classes].

  head='imagenet': torchvision's 7×7 adaptive average pool (the identity at
    224²), flatten (NHWC order), fc1 4096 → ReLU → dropout → fc2 4096 → ReLU →
    dropout → fc3 N. VGG-16 has 138,357,544 params, VGG-19 143,667,240.
  head='gap': global average pool → fc N, for 32×32 images (CIFAR): the
    features end at 1×1×512 there, and the 4096-wide layers would be 90% of
    the parameters for little gain.
  batch_norm: conv → BN → ReLU (torchvision's `vgg16_bn`; convs keep biases).
  """
  stages: Sequence[Sequence[int]]
  batch_norm: bool = False  # the bn_* fields count only with it
  head: str = 'imagenet'
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x, train: bool = False):
    choose('VGG head', self.head, {'imagenet': 0, 'gap': 0})
    conv3x3, norm = partial(self.conv, kernel_size=3), self.norm(train)

    for s, filters in enumerate(self.stages, start=1):
      for i, f in enumerate(filters, start=1):
        x = conv3x3(f, name=f'block{s}_conv{i}')(x)
        if self.batch_norm:
          x = norm(name=f'block{s}_bn{i}')(x)
        x = nn.relu(x)
      x = MaxPool(2, 2, name=f'block{s}_pool')(x)

    if self.head == 'gap':
      x = GlobalAvgPool(name='avgpool')(x)
    else:
      x = flatten(AdaptiveAvgPool(7, name='avgpool')(x))
      for i in (1, 2):
        x = nn.relu(self.dense(4096, name=f'fc{i}')(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train,
                       name=f'drop{i}')(x)
      x = self.dense(self.num_classes, name='fc3')(x)
      return jnp.asarray(x, jnp.float32)
    x = self.dense(self.num_classes, name='fc')(x)
    return jnp.asarray(x, jnp.float32)


VGG11 = partial(VGG, stages=CFG_A)
VGG13 = partial(VGG, stages=CFG_B)
VGG16 = partial(VGG, stages=CFG_D)
VGG19 = partial(VGG, stages=CFG_E)
