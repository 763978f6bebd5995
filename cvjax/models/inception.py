"""Inception: GoogLeNet (Szegedy et al. 2015, "Inception v1") and Inception-v3 (2016).

An Inception module runs four branches on the same input and concatenates them
along channels: a 1×1 conv; a 1×1 reduction then a 3×3; a 1×1 reduction then a
5×5; a 3×3/s1 max-pool then a 1×1 "pool projection". The 1×1 reductions are
what make the wide module cheap.

GoogLeNet, Table 1 of the paper (filters of each branch; output at 224²):

      module   #1×1  #3×3red  #3×3  #5×5red  #5×5  pool proj   output
      3a        64      96     128     16      32      32     28×28×256
      3b       128     128     192     32      96      64     28×28×480
      4a       192      96     208     16      48      64     14×14×512
      4b       160     112     224     24      64      64     14×14×512
      4c       128     128     256     24      64      64     14×14×512
      4d       112     144     288     32      64      64     14×14×528
      4e       256     160     320     32     128     128     14×14×832
      5a       256     160     320     32     128     128      7×7×832
      5b       384     192     384     48     128     128      7×7×1024

Names follow torchvision (`conv1`, `conv2`, `conv3`, `inception3a` with
`branch1`, `branch2_0`, `branch2_1`, `branch3_0`, `branch3_1`, `branch4_1`,
each a `conv` (+ `bn`); `aux1`, `aux2`; `fc`): torchvision's `branch2.0.conv`
is `branch2_0/conv` here.

Inception-v3 is Keras' `keras.applications.InceptionV3`, layer for layer (299²,
23,851,784 weights in Keras' count = 23,817,352 params + 34,432 BN statistics).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cvjax.models.base import BNModel
from cvjax.models.blocks import AvgPoolSame, MaxPoolCeil, conv_pads
from cvjax.models.layers import (LRN, AdaptiveAvgPool, GlobalAvgPool, MaxPool, conv_general,
                                 flatten, he_normal)

ModuleDef = Any

# (#1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj), Table 1.
GOOGLENET_MODULES = {
    '3a': (64, 96, 128, 16, 32, 32),
    '3b': (128, 128, 192, 32, 96, 64),
    '4a': (192, 96, 208, 16, 48, 64),
    '4b': (160, 112, 224, 24, 64, 64),
    '4c': (128, 128, 256, 24, 64, 64),
    '4d': (112, 144, 288, 32, 64, 64),
    '4e': (256, 160, 320, 32, 128, 128),
    '5a': (256, 160, 320, 32, 128, 128),
    '5b': (384, 192, 384, 48, 128, 128),
}


class BasicConv(nn.Module):
  """conv (+ BN) + ReLU: [B, H, W, C] → [B, H', W', features].

  With `norm` (torchvision's `BasicConv2d`, Keras' `conv2d_bn`) the conv has no
  bias; without it (the GoogLeNet paper) it has one. kernel_size: k or (kh, kw);
  padding: p (symmetric), pairs, 'same' (Keras) or 'valid'. conv: the conv's
  constructor (`layers.conv_general`; a model hands in its own).
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: int = 1
  padding: Any = 0
  norm: ModuleDef | None = None
  conv: ModuleDef = conv_general

  @nn.compact
  def __call__(self, x):
    k = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    x = self.conv(self.features, k, self.strides,
                  padding=conv_pads(x, k, self.strides, self.padding),
                  use_bias=self.norm is None, kernel_init=he_normal, name='conv')(x)
    if self.norm is not None:
      x = self.norm(name='bn')(x)
    return nn.relu(x)


class InceptionV1(nn.Module):
  """The GoogLeNet module: [B, H, W, C] → [B, H, W, #1×1 + #3×3 + #5×5 + pool proj]."""
  filters: Sequence[int]  # a row of GOOGLENET_MODULES
  conv: ModuleDef  # BasicConv partial (the model's norm and conv)
  branch3_kernel: int = 5  # torchvision uses 3 here (kept for its weights)

  @nn.compact
  def __call__(self, x):
    f1, r3, f3, r5, f5, fp = self.filters
    k = self.branch3_kernel
    b1 = self.conv(f1, 1, name='branch1')(x)
    b2 = self.conv(r3, 1, name='branch2_0')(x)
    b2 = self.conv(f3, 3, padding=1, name='branch2_1')(b2)
    b3 = self.conv(r5, 1, name='branch3_0')(x)
    b3 = self.conv(f5, k, padding=k // 2, name='branch3_1')(b3)
    b4 = MaxPoolCeil(3, 1, padding=1, name='branch4_0')(x)
    b4 = self.conv(fp, 1, name='branch4_1')(b4)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAux(nn.Module):
  """Auxiliary classifier on 4a / 4d: 4×4 average pool (5×5/s3 at 14×14), 1×1 conv 128,
  fc 1024 + ReLU, dropout 0.7, fc N: [B, 14, 14, C] → [B, N]."""
  num_classes: int
  conv: ModuleDef
  dropout_rate: float = 0.7
  dense: ModuleDef = nn.Dense

  @nn.compact
  def __call__(self, x, train: bool):
    x = AdaptiveAvgPool(4, name='avgpool')(x)
    x = flatten(self.conv(128, 1, name='conv')(x))  # NHWC order (torch: C·H·W)
    x = nn.relu(self.dense(1024, name='fc1')(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout')(x)
    return jnp.asarray(self.dense(self.num_classes, name='fc2')(x), jnp.float32)


class GoogLeNet(BNModel):
  """GoogLeNet: x float32[B, H, W, 3] → logits float32[B, num_classes].

      layer                       output at 224²
      conv1 7×7/2, p3, 64         112×112×64
      maxpool1 3×3/2 (ceil)        56×56×64     (+ LRN in the paper)
      conv2 1×1 64, conv3 3×3 192  56×56×192    (+ LRN in the paper)
      maxpool2 3×3/2               28×28×192
      inception 3a, 3b             28×28×480
      maxpool3 3×3/2               14×14×480
      inception 4a … 4e            14×14×832    (aux1 after 4a, aux2 after 4d)
      maxpool4 3×3/2 (tv: 2×2/2)    7×7×832
      inception 5a, 5b              7×7×1024
      avgpool, dropout, fc N             N

  Paper (`batch_norm=False`): convs with biases, LRN, 5×5 branches, dropout 0.4:
  6,998,552 params at 1000 classes (Table 1 lists ≈6.8M weights, biases not
  counted). torchvision's `googlenet` (`GoogLeNetTorchvision`): BN (eps 1e-3)
  after every bias-free conv, no LRN, 3×3 in the "5×5" branch, 2×2 maxpool4,
  dropout 0.2: 6,624,904 params, 13,004,888 with the aux heads.

  small_input: the CIFAR stem (kuangliu/pytorch-cifar): one 3×3 conv of 192
  (+ BN) replaces conv1 … maxpool2, so a 32² image meets inception 3a at 32²
  (5.5M params, 1.34 GMACs at 10 classes).

  aux_logits: build the two auxiliary classifiers. In training the model then
  returns (logits, aux1_logits, aux2_logits) (weight their losses 0.3, see
  `aux_loss`); in eval it returns the logits alone.
  """
  batch_norm: bool = False  # the bn_* fields count only with it
  lrn: bool = True
  branch3_kernel: int = 5
  pool4_window: int = 3
  aux_logits: bool = False
  small_input: bool = False
  dropout_rate: float = 0.4
  bn_epsilon: float = 1e-3  # torchvision's

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = self.norm(train) if self.batch_norm else None
    conv = partial(BasicConv, norm=norm, conv=self.conv_general)
    inception = partial(InceptionV1, conv=conv, branch3_kernel=self.branch3_kernel)
    aux = partial(InceptionAux, self.num_classes, conv, dense=self.dense)
    want_aux = self.aux_logits and (train or self.is_initializing())

    if self.small_input:
      x = conv(192, 3, padding=1, name='conv1')(x)
    else:
      x = conv(64, 7, 2, padding=3, name='conv1')(x)
      x = MaxPoolCeil(3, 2, name='maxpool1')(x)
      if self.lrn:
        x = LRN(name='lrn1')(x)
      x = conv(64, 1, name='conv2')(x)
      x = conv(192, 3, padding=1, name='conv3')(x)
      if self.lrn:
        x = LRN(name='lrn2')(x)
      x = MaxPoolCeil(3, 2, name='maxpool2')(x)
    x = inception(GOOGLENET_MODULES['3a'], name='inception3a')(x)
    x = inception(GOOGLENET_MODULES['3b'], name='inception3b')(x)
    x = MaxPoolCeil(3, 2, name='maxpool3')(x)
    x = inception(GOOGLENET_MODULES['4a'], name='inception4a')(x)
    aux1 = aux(name='aux1')(x, train) if want_aux else None
    for m in ('4b', '4c', '4d'):
      x = inception(GOOGLENET_MODULES[m], name=f'inception{m}')(x)
    aux2 = aux(name='aux2')(x, train) if want_aux else None
    x = inception(GOOGLENET_MODULES['4e'], name='inception4e')(x)
    x = MaxPoolCeil(self.pool4_window, 2, name='maxpool4')(x)
    x = inception(GOOGLENET_MODULES['5a'], name='inception5a')(x)
    x = inception(GOOGLENET_MODULES['5b'], name='inception5b')(x)
    x = GlobalAvgPool(name='avgpool')(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout')(x)
    logits = jnp.asarray(self.dense(self.num_classes, name='fc')(x), jnp.float32)
    if self.aux_logits and train:
      return logits, aux1, aux2
    return logits


def aux_loss(outputs, labels, aux_weight: float = 0.3):
  """GoogLeNet's training loss: CE(logits) + aux_weight · (CE(aux1) + CE(aux2)), means over B.

  outputs: (logits, aux1, aux2), each float32[B, N]; labels int[B].
  """
  import optax  # pylint: disable=g-import-not-at-top
  ce = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()
  logits, aux1, aux2 = outputs
  return ce(logits) + aux_weight * (ce(aux1) + ce(aux2))


GoogLeNetTorchvision = partial(GoogLeNet, batch_norm=True, lrn=False, branch3_kernel=3,
                               pool4_window=2, dropout_rate=0.2)


# ------------------------------------------------------------------ Inception-v3

class InceptionA(nn.Module):
  """mixed0-2 (35×35): 1×1 64 | 1×1 48 → 5×5 64 | 1×1 64 → 3×3 96 → 3×3 96 |
  avgpool → 1×1 pool_features."""
  pool_features: int
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    c = self.conv
    b1 = c(64, 1, name='branch1x1')(x)
    b5 = c(48, 1, name='branch5x5_1')(x)
    b5 = c(64, 5, name='branch5x5_2')(b5)
    bd = c(64, 1, name='branch3x3dbl_1')(x)
    bd = c(96, 3, name='branch3x3dbl_2')(bd)
    bd = c(96, 3, name='branch3x3dbl_3')(bd)
    bp = AvgPoolSame(3, 1, name='branch_pool_avg')(x)
    bp = c(self.pool_features, 1, name='branch_pool')(bp)
    return jnp.concatenate([b1, b5, bd, bp], axis=-1)


class InceptionB(nn.Module):
  """mixed3 (35 → 17): 3×3/2 384 | 1×1 64 → 3×3 96 → 3×3/2 96 | maxpool 3×3/2."""
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    c = self.conv
    b3 = c(384, 3, 2, padding='valid', name='branch3x3')(x)
    bd = c(64, 1, name='branch3x3dbl_1')(x)
    bd = c(96, 3, name='branch3x3dbl_2')(bd)
    bd = c(96, 3, 2, padding='valid', name='branch3x3dbl_3')(bd)
    bp = MaxPool(3, 2, name='branch_pool')(x)
    return jnp.concatenate([b3, bd, bp], axis=-1)


class InceptionC(nn.Module):
  """mixed4-7 (17×17), factorised 7×7: 1×1 192 | 1×1 c → 1×7 c → 7×1 192 |
  1×1 c → 7×1 c → 1×7 c → 7×1 c → 1×7 192 | avgpool → 1×1 192."""
  channels_7x7: int
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    c, c7 = self.conv, self.channels_7x7
    b1 = c(192, 1, name='branch1x1')(x)
    b7 = c(c7, 1, name='branch7x7_1')(x)
    b7 = c(c7, (1, 7), name='branch7x7_2')(b7)
    b7 = c(192, (7, 1), name='branch7x7_3')(b7)
    bd = c(c7, 1, name='branch7x7dbl_1')(x)
    bd = c(c7, (7, 1), name='branch7x7dbl_2')(bd)
    bd = c(c7, (1, 7), name='branch7x7dbl_3')(bd)
    bd = c(c7, (7, 1), name='branch7x7dbl_4')(bd)
    bd = c(192, (1, 7), name='branch7x7dbl_5')(bd)
    bp = AvgPoolSame(3, 1, name='branch_pool_avg')(x)
    bp = c(192, 1, name='branch_pool')(bp)
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """mixed8 (17 → 8): 1×1 192 → 3×3/2 320 | 1×1 192 → 1×7 → 7×1 → 3×3/2 192 | maxpool 3×3/2."""
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    c = self.conv
    b3 = c(192, 1, name='branch3x3_1')(x)
    b3 = c(320, 3, 2, padding='valid', name='branch3x3_2')(b3)
    b7 = c(192, 1, name='branch7x7x3_1')(x)
    b7 = c(192, (1, 7), name='branch7x7x3_2')(b7)
    b7 = c(192, (7, 1), name='branch7x7x3_3')(b7)
    b7 = c(192, 3, 2, padding='valid', name='branch7x7x3_4')(b7)
    bp = MaxPool(3, 2, name='branch_pool')(x)
    return jnp.concatenate([b3, b7, bp], axis=-1)


class InceptionE(nn.Module):
  """mixed9-10 (8×8), expanded filter bank: 1×1 320 | 1×1 384 → (1×3 384 ‖ 3×1 384) |
  1×1 448 → 3×3 384 → (1×3 384 ‖ 3×1 384) | avgpool → 1×1 192: 2048 channels."""
  conv: ModuleDef

  @nn.compact
  def __call__(self, x):
    c = self.conv
    b1 = c(320, 1, name='branch1x1')(x)
    b3 = c(384, 1, name='branch3x3_1')(x)
    b3 = jnp.concatenate([c(384, (1, 3), name='branch3x3_2a')(b3),
                          c(384, (3, 1), name='branch3x3_2b')(b3)], axis=-1)
    bd = c(448, 1, name='branch3x3dbl_1')(x)
    bd = c(384, 3, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([c(384, (1, 3), name='branch3x3dbl_3a')(bd),
                          c(384, (3, 1), name='branch3x3dbl_3b')(bd)], axis=-1)
    bp = AvgPoolSame(3, 1, name='branch_pool_avg')(x)
    bp = c(192, 1, name='branch_pool')(bp)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(BNModel):
  """Inception-v3 as Keras builds it: x float32[B, 299, 299, 3] → logits float32[B, num_classes].

      layer                                     output at 299²
      stem_conv1 3×3/2 32 valid                 149×149×32
      stem_conv2 3×3 32 valid                   147×147×32
      stem_conv3 3×3 64 same                    147×147×64
      pool1 3×3/2                                73×73×64
      stem_conv4 1×1 80, stem_conv5 3×3 192 v    71×71×192
      pool2 3×3/2                                35×35×192
      mixed0-2 (InceptionA, pool 32/64/64)       35×35×256/288/288
      mixed3 (InceptionB)                        17×17×768
      mixed4-7 (InceptionC, 7×7 as 1×7 + 7×1)    17×17×768
      mixed8 (InceptionD)                         8×8×1280
      mixed9-10 (InceptionE)                      8×8×2048
      avg_pool, predictions N                          N

  Every conv is Keras' `conv2d_bn`: no bias, BN without scale (γ), eps 1e-3,
  momentum 0.99, ReLU; 'same' convs here are stride 1 (symmetric padding);
  stride-2 convs and pools are 'valid'. The branch pools average only real
  cells (Keras' 'same' average pool). No auxiliary head (Keras has none).
  The smallest input is 75².
  """
  bn_momentum: float = 0.99  # Keras'
  bn_epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = partial(BasicConv, norm=self.norm(train, use_scale=False), padding='same',
                conv=self.conv_general)

    x = c(32, 3, 2, padding='valid', name='stem_conv1')(x)
    x = c(32, 3, padding='valid', name='stem_conv2')(x)
    x = c(64, 3, name='stem_conv3')(x)
    x = MaxPool(3, 2, name='pool1')(x)
    x = c(80, 1, padding='valid', name='stem_conv4')(x)
    x = c(192, 3, padding='valid', name='stem_conv5')(x)
    x = MaxPool(3, 2, name='pool2')(x)
    for i, pool_features in enumerate((32, 64, 64)):
      x = InceptionA(pool_features, c, name=f'mixed{i}')(x)
    x = InceptionB(c, name='mixed3')(x)
    for i, c7 in enumerate((128, 160, 160, 192)):
      x = InceptionC(c7, c, name=f'mixed{4 + i}')(x)
    x = InceptionD(c, name='mixed8')(x)
    x = InceptionE(c, name='mixed9')(x)
    x = InceptionE(c, name='mixed10')(x)
    x = GlobalAvgPool(name='avg_pool')(x)
    x = self.dense(self.num_classes, name='predictions')(x)
    return jnp.asarray(x, jnp.float32)
