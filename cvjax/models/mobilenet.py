"""MobileNet v1 (Howard et al. 2017) and v2 (Sandler et al. 2018), as Keras builds them.

v1 replaces each 3×3 conv by a depthwise 3×3 conv (one filter per channel) and a
pointwise 1×1 conv, both followed by BN and ReLU6: k²·C + C·C' weights instead
of k²·C·C' (8-9× fewer multiply-adds at k = 3). Table 1 of the paper:

      layer                      stride   filters   output at 224²
      conv1 3×3                    2        32       112×112×32
      dw/pw 1                      1        64       112×112×64
      dw/pw 2, 3                   2, 1     128       56×56×128
      dw/pw 4, 5                   2, 1     256       28×28×256
      dw/pw 6 … 11                 2, 1×5   512       14×14×512
      dw/pw 12, 13                 2, 1     1024       7×7×1024
      avg pool, dropout 1e-3, conv_preds 1×1 N (with bias)

v2's inverted residual block expands C → t·C with a 1×1 conv, filters with a
depthwise 3×3 (both BN + ReLU6), and projects back with a *linear* 1×1 (BN, no
ReLU: the "linear bottleneck"); a residual joins input and output when the
stride is 1 and the widths agree. Table 2 of the paper (t expansion, c
channels, n repeats, s stride of the first):

      input      operator        t    c     n   s
      224²×3     conv2d 3×3      -    32    1   2
      112²×32    bottleneck      1    16    1   1
      112²×16    bottleneck      6    24    2   2
      56²×24     bottleneck      6    32    3   2
      28²×32     bottleneck      6    64    4   2
      14²×64     bottleneck      6    96    3   1
      14²×96     bottleneck      6    160   3   2
      7²×160     bottleneck      6    320   1   1
      7²×320     conv2d 1×1      -    1280  1   1
      7²×1280    avgpool, dense N

Counts at 1000 classes (alpha 1): v1 4,231,976 params + 21,888 BN statistics =
Keras' `MobileNet` 4,253,864; v2 3,504,872 + 34,112 = Keras' `MobileNetV2`
3,538,984 (torchvision's `mobilenet_v2`: 3,504,872).

Keras exactness. Names are Keras' (v1: `conv1`, `conv1_bn`, `conv_dw_{i}`,
`conv_dw_{i}_bn`, `conv_pw_{i}`, `conv_pw_{i}_bn`, `conv_preds`; v2: `Conv1`,
`bn_Conv1`, `expanded_conv/depthwise`, `block_{i}/expand`, `block_{i}/expand_BN`,
`.../depthwise`, `.../depthwise_BN`, `.../project`, `.../project_BN`, `Conv_1`,
`Conv_1_bn`, `predictions` — join a path with '_' for the Keras name). Padding:
the stride-2 stem convs are Keras 'same' ((0, 1) on even inputs, (1, 1) on odd);
v1's stride-2 depthwise convs are padded ((0, 1), (0, 1)) whatever the size
(Keras' `ZeroPadding2D(((0, 1), (0, 1)))`), v2's by `correct_pad` (= 'same').
BN: v1 eps 1e-3, momentum 0.99; v2 eps 1e-3, momentum 0.999.

`small_input=True` (the CIFAR variants): stride 1 in the stem (v1) or in the
stem and the first 24-channel block (v2), so a 32² image ends at 2² / 4².
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from cvjax.models.base import BNModel
from cvjax.models.blocks import conv_pads, depthwise_conv
from cvjax.models.layers import GlobalAvgPool, conv_general, he_normal

ModuleDef = Any

# v1: (pointwise filters, stride) of dw/pw blocks 1 … 13.
MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
# v2: (t, c, n, s), Table 2.
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
  """Rounds a width to a multiple of `divisor`, never below 90% of v (Keras' `_make_divisible`)."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


def _conv(conv: ModuleDef, x, features, kernel, stride, padding, name):
  """conv (a `conv_general` constructor) without bias, He init, Keras padding, applied to x."""
  return conv(features, kernel, stride, padding=conv_pads(x, kernel, stride, padding),
              use_bias=False, kernel_init=he_normal, name=name)(x)


class MobileNetV1(BNModel):
  """MobileNet v1: x float32[B, H, W, 3] → logits float32[B, num_classes]; alpha: width."""
  alpha: float = 1.0
  dropout_rate: float = 1e-3
  small_input: bool = False
  bn_momentum: float = 0.99  # Keras'
  bn_epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm, conv = self.norm(train), partial(_conv, self.conv_general)

    stride = 1 if self.small_input else 2
    x = conv(x, int(32 * self.alpha), 3, stride, 'same', 'conv1')
    x = nn.relu6(norm(name='conv1_bn')(x))
    for i, (filters, s) in enumerate(MOBILENET_V1, start=1):
      pad = 'same' if s == 1 else ((0, 1), (0, 1))
      x = self.depthwise_conv(x, 3, s, pad, name=f'conv_dw_{i}')
      x = nn.relu6(norm(name=f'conv_dw_{i}_bn')(x))
      x = conv(x, int(filters * self.alpha), 1, 1, 'valid', f'conv_pw_{i}')
      x = nn.relu6(norm(name=f'conv_pw_{i}_bn')(x))
    x = jnp.mean(x, axis=(1, 2), keepdims=True)  # GlobalAveragePooling2D(keepdims=True)
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout')(x)
    x = self.conv_general(self.num_classes, 1, name='conv_preds')(x)
    return jnp.asarray(x.reshape(x.shape[0], -1), jnp.float32)


class InvertedResidual(nn.Module):
  """Expand 1×1 (t·C) → depthwise 3×3 (stride) → linear 1×1 (features), + x if shapes agree.

  [B, H, W, C] → [B, H/s, W/s, features]. No expansion conv when t = 1.
  conv, depthwise: how convs are built (a model hands in its own).
  """
  features: int
  expansion: int
  strides: int
  norm: ModuleDef
  conv: ModuleDef = conv_general
  depthwise: Callable[..., Any] = depthwise_conv

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    y = x
    if self.expansion != 1:
      y = _conv(self.conv, y, self.expansion * c, 1, 1, 'valid', 'expand')
      y = nn.relu6(self.norm(name='expand_BN')(y))
    y = self.depthwise(y, 3, self.strides, 'same', name='depthwise')
    y = nn.relu6(self.norm(name='depthwise_BN')(y))
    y = _conv(self.conv, y, self.features, 1, 1, 'valid', 'project')
    y = self.norm(name='project_BN')(y)  # linear bottleneck: no activation
    if self.strides == 1 and c == self.features:
      return x + y
    return y


class MobileNetV2(BNModel):
  """MobileNet v2: x float32[B, H, W, 3] → logits float32[B, num_classes]; alpha: width."""
  alpha: float = 1.0
  small_input: bool = False
  bn_momentum: float = 0.999  # Keras'
  bn_epsilon: float = 1e-3

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm, conv = self.norm(train), partial(_conv, self.conv_general)

    x = conv(x, make_divisible(32 * self.alpha), 3, 1 if self.small_input else 2, 'same', 'Conv1')
    x = nn.relu6(norm(name='bn_Conv1')(x))
    block = 0
    for stage, (t, c, n, s) in enumerate(MOBILENET_V2):
      if self.small_input and stage == 1:
        s = 1
      for i in range(n):
        x = InvertedResidual(make_divisible(int(c * self.alpha)), t, s if i == 0 else 1, norm,
                             conv=self.conv_general, depthwise=self.depthwise_conv,
                             name=f'block_{block}' if block else 'expanded_conv')(x)
        block += 1
    last = make_divisible(1280 * self.alpha) if self.alpha > 1.0 else 1280
    x = nn.relu6(norm(name='Conv_1_bn')(conv(x, last, 1, 1, 'valid', 'Conv_1')))
    x = GlobalAvgPool(name='avg_pool')(x)
    x = self.dense(self.num_classes, name='predictions')(x)
    return jnp.asarray(x, jnp.float32)
