"""Classification + localisation: one class and one box for the single object of an image.

The step between classification and detection (Sermanet et al. 2014 "OverFeat"
§4; the ILSVRC localisation task): a classification backbone whose last feature
map feeds two heads,

      head    layers                                                   output
      class   global average pool, fc K                                logits f32[B, K]
      box     1×1 conv `box_channels` + ReLU, adaptive average pool to  box f32[B, 4] in [0, 1]
              `box_grid`², flatten, fc `box_hidden` + ReLU, fc 4,       (ymin, xmin, ymax, xmax),
              sigmoid                                                   normalised

The class head sees only the pooled features (what is in the image); the box
head keeps a `box_grid` × `box_grid` map, so where things are survives into its
fully connected layers, and the pooled grid makes its parameters independent
of the input size. The four coordinates are separate sigmoids, not forced into
order: a box with ymin > ymax (or xmin > xmax) has IoU 0 with everything.

Backbones are ImageNet ResNets (`resnet.py`'s stem and `BasicBlock`s, its
parameter names `conv1`, `bn1`, `layer{i}_{j}`, `fc`, so `init_from` loads
ResNet-18 weights by path): 'resnet10' (one block per stage) and 'resnet18'
(two). x float32[B, H, W, 3] with H, W ≥ 32 → (logits float32[B, K], box
float32[B, 4]).

Variants and parameters (convs have no bias, BN has γ and β):
`localizer_shapes` — ResNet-10, 16-128 filters, for 96² images of
`cvjax_shapes/single` (K = 6): 389,370 = backbone 309,456 + class fc 774 + box
head 79,140 (box_conv 128·32 + 32, box_fc1 288·256 + 256, box_fc2 256·4 + 4);
`localizer_resnet18` — ResNet-18, 64-512 filters, 224², K = 1000: 11,780,940 =
backbone 11,176,512 (torchvision's ResNet-18 without its fc) + fc 513,000 + box
head 91,428 (box_conv 512·32 + 32).
"""
from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax.numpy as jnp

from cvjax.models.base import BNModel
from cvjax.models.layers import AdaptiveAvgPool, GlobalAvgPool, MaxPool, choose, flatten
from cvjax.models.resnet import BasicBlock

BACKBONES = {'resnet10': (1, 1, 1, 1), 'resnet18': (2, 2, 2, 2)}


class Localizer(BNModel):
  """x float32[B, H, W, 3] → (class logits float32[B, K], box float32[B, 4] in [0, 1])."""
  num_classes: int = 6
  backbone: str = 'resnet10'
  width: int = 16  # filters of the first stage; stage i has width · 2^i
  box_channels: int = 32
  box_grid: int = 3
  box_hidden: int = 256

  @nn.compact
  def __call__(self, x, train: bool = False):
    stages = choose('localizer backbone', self.backbone, BACKBONES)
    conv, dense, norm = partial(self.conv, use_bias=False), self.dense, self.norm(train)

    x = nn.relu(norm(name='bn1')(conv(self.width, 7, 2, name='conv1')(x)))
    x = MaxPool(3, 2, padding=1, name='maxpool')(x)
    for i, blocks in enumerate(stages):
      for j in range(blocks):
        x = BasicBlock(self.width * 2**i, conv=conv, norm=norm, act=nn.relu,
                       strides=2 if i > 0 and j == 0 else 1, name=f'layer{i + 1}_{j}')(x)

    logits = dense(self.num_classes, name='fc')(GlobalAvgPool(name='avgpool')(x))
    y = nn.relu(self.conv(self.box_channels, 1, name='box_conv')(x))
    y = flatten(AdaptiveAvgPool(self.box_grid, name='box_pool')(y))
    y = nn.relu(dense(self.box_hidden, name='box_fc1')(y))
    box = nn.sigmoid(dense(4, name='box_fc2')(y).astype(jnp.float32))
    return jnp.asarray(logits, jnp.float32), box


LocalizerShapes = Localizer  # its defaults; backbone and width stay options
LocalizerResNet18 = partial(Localizer, backbone='resnet18', width=64, num_classes=1000)
