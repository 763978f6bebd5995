"""Fully convolutional networks for semantic segmentation (Long, Shelhamer & Darrell 2015).

A classification backbone without its pooled head, class scores by 1×1 convs,
and transposed convolutions ("deconvolution", initialised to bilinear
interpolation and learned) that bring the scores back to the input size.
Skips add finer scores from earlier stages (FCN-16s, FCN-8s):

      stage            output (H×W input)   VGG-16 (paper)          ResNet
      pool3 / layer2      H/8               block3_pool             layer2
      pool4 / layer3      H/16              block4_pool             layer3
      pool5 / layer4      H/32              block5_pool, fc6 7×7    layer4
                                            4096, fc7 1×1 4096
      score_fr            H/32 × K          1×1 K on fc7            1×1 K on layer4

      FCN-32s  upscore ×32 (64×64/32) of score_fr
      FCN-16s  upscore2 ×2 (4×4/2) of score_fr + score_pool4 → upscore16 ×16 (32×32/16)
      FCN-8s   ... + score_pool4 → upscore_pool4 ×2 + score_pool3 → upscore8 ×8 (16×16/8)

x float32[B, H, W, 3] → per-pixel logits float32[B, H, W, num_classes] (K
classes, background included); H and W must be multiples of 32. A transposed
conv with kernel 2s and stride s gives (n − 1)·s + 2s = (n + 1)·s rows; s/2 are
cropped from each side (Caffe's pad s/2), so ×s is exact and aligned.

Differences from the paper, all for inputs of any multiple of 32: no 100-pixel
input padding and no crop layers; fc6 is padded 3 (same-size). Score layers
start at zero, so the net starts as its coarser self (§4.2). Backbone names are
`vgg.py`'s (`block{s}_conv{i}`) and `resnet.py`'s (`conv1`, `bn1`,
`layer{i}_{j}`), so ImageNet weights load by path with `init_from`. The
transposed convs are not `nn.Conv`s, so `cvjax.summary` does not count their
multiply-adds (in·k²·out per input pixel: 92.6M for FCN-8s VGG-16 at 224², K = 21).

Variants: `fcn{32,16,8}s_vgg16` (K = 21 for VOC: 134.5M params for FCN-8s),
`fcn8s_resnet18`, `fcn8s_resnet50`, and `fcn8s_tiny`, a ResNet-10 (one basic block
per stage, 16-128 filters) for `cvjax_shapes` on a CPU.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cvjax import errors
from cvjax.models import resnet, vgg
from cvjax.models.base import BNModel
from cvjax.models.layers import MaxPool, choose

_RESNETS = {
    'resnet10': ((1, 1, 1, 1), resnet.BasicBlock),
    'resnet18': ((2, 2, 2, 2), resnet.BasicBlock),
    'resnet34': ((3, 4, 6, 3), resnet.BasicBlock),
    'resnet50': ((3, 4, 6, 3), resnet.Bottleneck),
    'resnet101': ((3, 4, 23, 3), resnet.Bottleneck),
}
BACKBONES = ('vgg16',) + tuple(_RESNETS)


def bilinear_kernel(kernel_size: int, channels: int) -> np.ndarray:
  """float32[k, k, C, C]: bilinear upsampling of each channel on its own (Long et al.'s init).

  weight(i, j) = (1 − |i − c| / f)(1 − |j − c| / f), f = ⌈k/2⌉, c = (2f − 1 − f mod 2) / 2.
  """
  f = (kernel_size + 1) // 2
  c = (2 * f - 1 - f % 2) / 2
  r = 1 - np.abs(np.arange(kernel_size) - c) / f
  w = np.zeros((kernel_size, kernel_size, channels, channels), np.float32)
  w[:, :, np.arange(channels), np.arange(channels)] = np.outer(r, r)[..., None]
  return w


class Upsample(nn.Module):
  """×s learned upsampling: transposed conv, kernel 2s, stride s, bilinear init, crop s/2 per side.

  [B, H, W, C] → [B, s·H, s·W, C].
  """
  factor: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s, c = self.factor, x.shape[-1]
    init = lambda key, shape, dtype: jnp.asarray(bilinear_kernel(2 * s, c), dtype)
    y = nn.ConvTranspose(c, (2 * s, 2 * s), (s, s), padding='VALID', use_bias=False,
                         kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype,
                         name='deconv')(x)
    crop = s // 2
    return y[:, crop:crop + s * x.shape[1], crop:crop + s * x.shape[2]]


class FCN(BNModel):
  """FCN-32s/16s/8s on a VGG-16 or ResNet backbone (see the module docstring); the bn_*
  fields count only with a ResNet backbone."""
  backbone: str = 'vgg16'
  skips: int = 2  # 0: FCN-32s, 1: FCN-16s, 2: FCN-8s
  num_classes: int = 21
  width: int = 64  # the backbone's first-stage filters (VGG 64, ResNet 64)
  fc_features: int = 4096  # VGG's fc6/fc7 as convs
  dropout_rate: float = 0.5

  def _vgg(self, x, train):
    conv3 = partial(self.conv, kernel_size=3)
    feats = []
    for s, filters in enumerate(vgg.CFG_D, start=1):
      for i, f in enumerate(filters, start=1):
        x = nn.relu(conv3(f * self.width // 64, name=f'block{s}_conv{i}')(x))
      x = MaxPool(2, 2, name=f'block{s}_pool')(x)
      feats.append(x)
    drop = partial(nn.Dropout, self.dropout_rate, deterministic=not train)
    x = nn.relu(self.conv(self.fc_features, 7, name='fc6')(x))
    x = drop(name='drop6')(x)
    x = nn.relu(self.conv(self.fc_features, 1, name='fc7')(x))
    x = drop(name='drop7')(x)
    return feats[2], feats[3], x

  def _resnet(self, x, train):
    stages, block_cls = _RESNETS[self.backbone]
    conv, norm = partial(self.conv, use_bias=False), self.norm(train)
    x = nn.relu(norm(name='bn1')(conv(self.width, 7, 2, name='conv1')(x)))
    x = MaxPool(3, 2, padding=1, name='maxpool')(x)
    feats = []
    for i, blocks in enumerate(stages):
      for j in range(blocks):
        x = block_cls(self.width * 2**i, conv=conv, norm=norm, act=nn.relu,
                      strides=2 if i > 0 and j == 0 else 1, name=f'layer{i + 1}_{j}')(x)
      feats.append(x)
    return feats[1], feats[2], feats[3]

  @nn.compact
  def __call__(self, x, train: bool = False):
    choose('FCN backbone', self.backbone, dict.fromkeys(BACKBONES))
    choose('FCN skips', self.skips, {0: '32s', 1: '16s', 2: '8s'})
    h, w = x.shape[1:3]
    if h % 32 or w % 32:
      raise errors.UserError(
          f'FCN needs an input whose height and width are multiples of 32, got {h}×{w}; '
          f'use e.g. --image_size={max(32, round(h / 32) * 32)}')
    pool3, pool4, top = (self._vgg if self.backbone == 'vgg16' else self._resnet)(x, train)

    score = partial(self.conv_general, self.num_classes, 1, kernel_init=nn.initializers.zeros)
    up = partial(Upsample, dtype=self.dtype, param_dtype=self.param_dtype)
    y = score(name='score_fr')(top)                                         # H/32
    if self.skips == 0:
      y = up(32, name='upscore')(y)
    else:
      y = up(2, name='upscore2')(y) + score(name='score_pool4')(pool4)      # H/16
      if self.skips == 1:
        y = up(16, name='upscore16')(y)
      else:
        y = up(2, name='upscore_pool4')(y) + score(name='score_pool3')(pool3)  # H/8
        y = up(8, name='upscore8')(y)
    return jnp.asarray(y, jnp.float32)


FCN32sVGG16 = partial(FCN, backbone='vgg16', skips=0)
FCN16sVGG16 = partial(FCN, backbone='vgg16', skips=1)
FCN8sVGG16 = partial(FCN, backbone='vgg16', skips=2)
FCN8sResNet18 = partial(FCN, backbone='resnet18', skips=2)
FCN8sResNet50 = partial(FCN, backbone='resnet50', skips=2)
FCN8sTiny = partial(FCN, backbone='resnet10', skips=2, width=16, num_classes=7)

