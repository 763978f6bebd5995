"""DeepLabv3 (Chen, Papandreou, Schroff & Adam 2017): atrous ResNet + ASPP, torchvision's layout.

A ResNet whose last stages trade their stride for dilation keeps features at 1/8
or 1/16 of the input (the output stride); Atrous Spatial Pyramid Pooling looks at
them at several rates and through an image-level pooling branch; a 3×3 conv and a
1×1 classifier give scores that are bilinearly upsampled to the input size:

      stage          output stride 16 (paper)      output stride 8 (torchvision)
      conv1..layer2  H/8                           H/8
      layer3         H/16                          H/8, dilation 2 (first block 1)
      layer4         H/16, dilation 2 (first 1)    H/8, dilation 4 (first block 2)
      ASPP rates     6, 12, 18                     12, 24, 36

      ASPP (each conv + BN + ReLU, A = aspp_features)   layer4 [B, h, w, C]
        aspp_conv0   1×1 A
        aspp_conv1-3 3×3 A, dilation r1 / r2 / r3
        aspp_pool    mean over h×w → 1×1 A → broadcast to h×w
        concat 5·A → aspp_project 1×1 A, BN, ReLU, dropout 0.5
      head_conv 3×3 A, BN, ReLU → classifier 1×1 K (+ bias) → bilinear ×stride

x float32[B, H, W, 3] → per-pixel logits float32[B, H, W, K] for any H, W
(K classes, background included). The upsampling is `jax.image.resize`
'bilinear', which for enlarging equals torch's `interpolate(..., 'bilinear',
align_corners=False)`. Dilated stages follow torchvision's `_make_layer(...,
dilate=True)` exactly: the block that would have had the stride keeps the previous
stage's dilation, its 1×1 downsample has stride 1, the other blocks get the new
dilation (on the 3×3 of a bottleneck; on the first 3×3 of a basic block).

Names: the backbone's are `resnet.py`'s (`conv1`, `bn1`, `layer{i}_{j}/...`, so
ImageNet ResNet weights load by path with `init_from`); the head's are
`aspp_conv{0-3}`/`aspp_bn{0-3}`, `aspp_pool_conv`/`aspp_pool_bn`,
`aspp_project_conv`/`aspp_project_bn`, `head_conv`/`head_bn`, `classifier`
(`cvjax.pretrained.deeplab` maps torchvision's state_dict onto them).

`aux_head=True` adds torchvision's auxiliary FCN head on layer3 (`aux_conv` 3×3
256 + `aux_bn` + ReLU + dropout 0.1 + `aux_classifier` 1×1 K), trained by its
`aux_loss`; `__call__` still returns the main logits only, and sows the aux
logits, upsampled to H×W, as `intermediates/aux_logits` (read them with
`model.apply(v, x, mutable=['intermediates'])`). The training task does not use
them; the option exists so torchvision's checkpoints with the aux head import whole.

Variants: `deeplabv3_resnet50` / `deeplabv3_resnet101` (torchvision: output
stride 8, ASPP 256, K = 21: 39,638,869 / 58,630,997 params, +2,365,205 with the
aux head) and `deeplabv3_tiny`, a ResNet-10 (basic blocks, 16-128 filters,
output stride 8) with a 64-wide ASPP at rates 3, 6, 9 (the paper's 12/24/36 for
513² scaled to 128²) for `cvjax_shapes` on a CPU.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cvjax.models import resnet
from cvjax.models.base import BNModel
from cvjax.models.layers import MaxPool, choose

_RESNETS = {
    'resnet10': ((1, 1, 1, 1), resnet.BasicBlock),
    'resnet50': ((3, 4, 6, 3), resnet.Bottleneck),
    'resnet101': ((3, 4, 23, 3), resnet.Bottleneck),
}
BACKBONES = tuple(_RESNETS)
# Output stride → (dilate layer2, layer3, layer4) as torchvision's
# `replace_stride_with_dilation`, and the paper's ASPP rates at that stride.
OUTPUT_STRIDES = {16: ((False, False, True), (6, 12, 18)),
                  8: ((False, True, True), (12, 24, 36))}


def stage_dilations(stages: Sequence[int], output_stride: int) -> list[list[tuple[int, int]]]:
  """(stride, dilation) of every block, by stage: torchvision's `_make_layer` rules.

  e.g. ResNet-50 at output stride 8: layer3 [(1, 1), (1, 2) ×5], layer4 [(1, 2), (1, 4) ×2].
  """
  dilate, _ = OUTPUT_STRIDES[output_stride]
  out, dilation = [], 1
  for i, blocks in enumerate(stages):
    stride, previous = (2 if i > 0 else 1), dilation
    if i > 0 and dilate[i - 1]:
      dilation, stride = dilation * stride, 1
    out.append([(stride, previous)] + [(1, dilation)] * (blocks - 1))
  return out


class DeepLabV3(BNModel):
  """DeepLabv3 on an atrous ResNet (see the module docstring)."""
  backbone: str = 'resnet50'
  num_classes: int = 21
  width: int = 64  # the backbone's first-stage filters
  output_stride: int = 8  # 8 (torchvision) or 16 (the paper's default)
  atrous_rates: Sequence[int] | None = None  # default: OUTPUT_STRIDES[output_stride]
  aspp_features: int = 256
  aux_head: bool = False  # torchvision's aux FCN head on layer3 (params only; see above)
  aux_features: int = 256
  dropout_rate: float = 0.5  # after the ASPP projection
  aux_dropout_rate: float = 0.1
  remat: bool = False  # recompute each backbone block in the backward pass (less memory)

  def _backbone(self, x, train):
    """(layer3, layer4) features: [B, H/s3, W/s3, C3], [B, H/os, W/os, C4]."""
    stages, block_cls = _RESNETS[self.backbone]
    block_cls = resnet.remat_block(block_cls) if self.remat else block_cls
    conv, norm = partial(self.conv, use_bias=False), self.norm(train)
    x = nn.relu(norm(name='bn1')(conv(self.width, 7, 2, name='conv1')(x)))
    x = MaxPool(3, 2, padding=1, name='maxpool')(x)
    feats = []
    for i, blocks in enumerate(stage_dilations(stages, self.output_stride)):
      for j, (stride, dilation) in enumerate(blocks):
        x = block_cls(self.width * 2**i, conv=conv, norm=norm, act=nn.relu, strides=stride,
                      dilation=dilation, name=f'layer{i + 1}_{j}')(x)
      feats.append(x)
    return feats[2], feats[3]

  @nn.compact
  def __call__(self, x, train: bool = False):
    choose('DeepLab backbone', self.backbone, dict.fromkeys(BACKBONES))
    choose('DeepLab output_stride', self.output_stride, OUTPUT_STRIDES)
    rates = tuple(self.atrous_rates or OUTPUT_STRIDES[self.output_stride][1])
    b, h, w, _ = x.shape
    layer3, top = self._backbone(x, train)

    conv, norm = partial(self.conv, use_bias=False), self.norm(train)
    a = self.aspp_features

    def conv_bn_relu(y, kernel, name, dilation=1, features=a):
      y = conv(features, kernel, padding=dilation * (kernel // 2), kernel_dilation=dilation,
                name=f'{name}_conv')(y)
      return nn.relu(norm(name=f'{name}_bn')(y))

    branches = [conv_bn_relu(top, 1, 'aspp0')]
    branches += [conv_bn_relu(top, 3, f'aspp{k}', r) for k, r in enumerate(rates, start=1)]
    pooled = conv_bn_relu(jnp.mean(top, axis=(1, 2), keepdims=True), 1, 'aspp_pool')
    branches.append(jnp.broadcast_to(pooled, (*top.shape[:3], a)))
    y = conv_bn_relu(jnp.concatenate(branches, axis=-1), 1, 'aspp_project')
    y = nn.Dropout(self.dropout_rate, deterministic=not train, name='aspp_dropout')(y)
    y = conv_bn_relu(y, 3, 'head')
    y = self.conv(self.num_classes, 1, name='classifier')(y)
    y = jax.image.resize(jnp.asarray(y, jnp.float32), (b, h, w, self.num_classes), 'bilinear')

    if self.aux_head:
      aux = conv_bn_relu(layer3, 3, 'aux', features=self.aux_features)
      aux = nn.Dropout(self.aux_dropout_rate, deterministic=not train, name='aux_dropout')(aux)
      aux = self.conv(self.num_classes, 1, name='aux_classifier')(aux)
      self.sow('intermediates', 'aux_logits',
               jax.image.resize(jnp.asarray(aux, jnp.float32), (b, h, w, self.num_classes),
                                'bilinear'))
    return y


DeepLabV3ResNet50 = partial(DeepLabV3, backbone='resnet50')
DeepLabV3ResNet101 = partial(DeepLabV3, backbone='resnet101')
DeepLabV3Tiny = partial(DeepLabV3, backbone='resnet10', width=16, atrous_rates=(3, 6, 9),
                        aspp_features=64, aux_features=32, num_classes=7)
