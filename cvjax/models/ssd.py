"""SSD: Single Shot MultiBox Detector (Liu et al. 2016) on VGG-16 and ResNet-50.

    model = get_model('ssd300_vgg16', num_classes=20)          # VOC: 20 object classes
    locations, logits = model.apply(variables, images, train=False)
    # images f32[B, 300, 300, 3] in [0, 1] (the model normalises them itself)
    # locations f32[B, 8732, 4] codes (dx, dy, dw, dh); logits f32[B, 8732, 21], column 0 background
    anchors = model.default_boxes()                              # f32[8732, 4] (ymin, xmin, ymax, xmax)

The model returns the raw head outputs; `cvjax.detection.postprocess.detect`
turns them into boxes. `num_classes` counts object classes only (VOC 20,
COCO 80); the logits have one more column, background, first.

SSD300-VGG16, layer for layer torchvision's `ssd300_vgg16` (same layers,
anchors and head layout, so its weights load with `TORCHVISION_SSD300_VGG16`):

    layer                        output at 300²   notes
    conv1_1, conv1_2 / pool1     150×150×64       3×3 p1 convs, 2×2/2 pools
    conv2_1, conv2_2 / pool2      75×75×128
    conv3_1..3 / pool3            38×38×256       pool3 in ceil mode (75 → 38)
    conv4_1..3                    38×38×512       → L2Norm (learned scale, init 20) → head 0
    pool4, conv5_1..3             19×19×512
    pool5 3×3/1 p1, fc6, fc7      19×19×1024      fc6 3×3 dilation 6; fc7 1×1 → head 1
    conv8_1 1×1, conv8_2 3×3/2    10×10×512       → head 2
    conv9_1, conv9_2 3×3/2         5×5×256        → head 3
    conv10_1, conv10_2 3×3 p0      3×3×256        → head 4
    conv11_1, conv11_2 3×3 p0      1×1×256        → head 5
    heads: per map a 3×3 p1 conv to boxes·(K+1) logits and one to boxes·4 codes,
    4, 6, 6, 6, 4, 4 boxes per cell → 8,732 default boxes.

SSD512-VGG16 follows the paper's Caffe model (`ssd_pascal_512`): conv10_2 and
conv11_2 are 3×3/2 p1 and a conv12_2 4×4 p1 is added, maps 64, 32, 16, 8, 4,
2, 1 → 24,564 boxes. (torchvision has no SSD512; its unused `highres` branch
keeps conv10_2/11_2 at p0, which gives maps 8 → 6 → 4, not the paper's.)

SSD300-ResNet50 follows NVIDIA's SSD300 v1.1 (DeepLearningExamples): torchvision's
ResNet-50 up to layer3 with layer3's stride set to 1 (38×38×1024), extra blocks
1×1 → BN → ReLU → 3×3 → BN → ReLU (channels 512, 512, 256, 256, 256), SSD300's anchors.

ssd128_resnet18_slim, the small model: torchvision's ResNet-18 at a quarter of the
width (stages of 16, 32, 64, 128 channels) on 128² inputs; heads on layer2,
layer3, layer4 and two BN extra blocks, maps 16, 8, 4, 2, 1 → 1,524 default
boxes, scales 0.1, 0.2, 0.43, 0.66, 0.89 (+1.12): the paper's rule (s_min 0.2,
s_max 0.9) with the first map at s_min / 2, as SSD300 puts conv4_3. At 0.061
GMACs per image (SSD300-VGG16: 31.4) and 1.4M params for 20 classes it keeps
SSD's mechanisms — multi-scale maps, per-map 3×3 heads, default boxes, matching,
MultiBox loss, NMS — and BatchNorm lets it train from scratch.

Parameters for 20 classes: ssd300_vgg16 26,285,486 (35,641,826 with torchvision's
91 COCO columns, its documented count), ssd512_vgg16 27,188,676, ssd300_resnet50
15,428,142, ssd128_resnet18_slim 1,385,704.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cvjax.models import resnet
from cvjax.models.default_boxes import AnchorSpec, default_boxes
from cvjax.models.base import BNModel, BNNet
from cvjax.models.layers import MaxPool
from cvjax.models.vgg import CFG_D

ModuleDef = Any


@dataclasses.dataclass(frozen=True)
class PostprocessConfig:
  """torchvision's SSD defaults: score_thresh 0.01, nms_thresh 0.45,
  detections_per_img 200, topk_candidates 400."""
  score_threshold: float = 0.01
  nms_threshold: float = 0.45
  max_detections: int = 200
  candidates_per_class: int = 400


# torchvision's SSD init for everything it adds to VGG: Xavier-uniform, zero bias.
xavier = nn.initializers.xavier_uniform()

# Input normalisation, applied inside the model to images in [0, 1].
# torchvision ssd300_vgg16: Caffe-style, pixel·255 − mean (RGB), the backbone's training inputs.
VGG_MEAN = (0.48235, 0.45882, 0.40784)
VGG_STD = (1 / 255, 1 / 255, 1 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Extra:
  """One extra feature layer pair: 1×1 conv to `mid` channels, then a
  kernel×kernel conv with `stride` and `padding` to `out` channels."""
  mid: int
  out: int
  kernel: int = 3
  stride: int = 2
  padding: int = 1


SSD300_EXTRAS = (Extra(256, 512), Extra(128, 256), Extra(128, 256, stride=1, padding=0),
                 Extra(128, 256, stride=1, padding=0))
SSD512_EXTRAS = (Extra(256, 512), Extra(128, 256), Extra(128, 256), Extra(128, 256),
                 Extra(128, 256, kernel=4, stride=1, padding=1))
RESNET_EXTRAS = (Extra(256, 512), Extra(256, 512), Extra(128, 256),
                 Extra(128, 256, stride=1, padding=0), Extra(128, 256, stride=1, padding=0))

SSD300_ANCHORS = AnchorSpec(scales=(0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05),
                            aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
                            steps=(8, 16, 32, 64, 100, 300))
SSD512_ANCHORS = AnchorSpec(scales=(0.04, 0.1, 0.26, 0.42, 0.58, 0.74, 0.9, 1.06),
                            aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
                            steps=(8, 16, 32, 64, 128, 256, 512))
SLIM_ANCHORS = AnchorSpec(scales=(0.1, 0.2, 0.43, 0.66, 0.89, 1.12),
                          aspect_ratios=((2,), (2, 3), (2, 3), (2,), (2,)), steps=None)


class L2Norm(nn.Module):
  """x / ‖x‖₂ over channels, times a learned per-channel scale (ParseNet; SSD's
  conv4_3, init 20): [B, H, W, C] → [B, H, W, C]. ‖x‖ is floored at 1e-12 as
  torch's `F.normalize`."""
  scale_init: float = 20.0
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.constant(self.scale_init), (x.shape[-1],),
                       self.param_dtype)
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
    return (x32 / jnp.maximum(norm, 1e-12) * scale).astype(x.dtype)


class CeilMaxPool(nn.Module):
  """torch's `MaxPool2d(k, s, ceil_mode=True)`: the last partial window counts
  (pads bottom/right with −inf as needed), so 75 → 38 for k = s = 2."""
  window: int = 2
  stride: int = 2

  def __call__(self, x):
    def extra(size):
      out = -(-(size - self.window) // self.stride) + 1
      return max((out - 1) * self.stride + self.window - size, 0)
    pad = ((0, extra(x.shape[1])), (0, extra(x.shape[2])))
    return nn.max_pool(x, (self.window,) * 2, (self.stride,) * 2, pad)


class VGGFeatures(BNNet):
  """SSD's VGG-16 trunk and extra layers: x → the feature maps the heads read.

  batch_norm: conv → BN → ReLU everywhere (convs keep biases, as torchvision's vgg_bn),
    for training from scratch (`--model_kwargs` cannot reach it: a registry entry can).
  """
  extras: Sequence[Extra] = SSD300_EXTRAS
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False) -> list[jax.Array]:
    norm = self.norm(train)

    def conv_relu(x, features, kernel, name, stride=1, padding=None, dilation=1, init=None):
      x = self.conv(features, kernel, stride, padding, name=name, kernel_dilation=dilation,
                    **({'kernel_init': init} if init else {}))(x)
      if self.batch_norm:
        x = norm(name=f'{name}_bn')(x)
      return nn.relu(x)

    outputs = []
    for s, filters in enumerate(CFG_D, start=1):
      if s == 5:
        x = MaxPool(2, 2, name='pool4')(x)
      for i, f in enumerate(filters, start=1):
        x = conv_relu(x, f, 3, f'conv{s}_{i}')
      if s in (1, 2):
        x = MaxPool(2, 2, name=f'pool{s}')(x)
      elif s == 3:
        x = CeilMaxPool(2, 2, name='pool3')(x)
      elif s == 4:
        outputs.append(L2Norm(param_dtype=self.param_dtype, name='l2norm')(x))
    x = MaxPool(3, 1, padding=1, name='pool5')(x)
    x = conv_relu(x, 1024, 3, 'fc6', padding=6, dilation=6, init=xavier)
    x = conv_relu(x, 1024, 1, 'fc7', init=xavier)
    outputs.append(x)
    for j, e in enumerate(self.extras, start=8):
      x = conv_relu(x, e.mid, 1, f'conv{j}_1', init=xavier)
      x = conv_relu(x, e.out, e.kernel, f'conv{j}_2', e.stride, e.padding, init=xavier)
      outputs.append(x)
    return outputs


class ResNetFeatures(BNNet):
  """A torchvision ResNet trunk (v1.5 blocks, same names) and BN extra blocks:
  x → the feature maps the heads read.

  stage_strides: stride of each stage's first block (torchvision: 1, 2, 2, 2);
  outputs: the stages (0-based) whose outputs feed heads, before the extras.
  Defaults: NVIDIA SSD300's ResNet-50, up to layer3 with its stride set to 1.
  Extra block j (`extra{j}_*`): 1×1 → BN → ReLU → k×k → BN → ReLU (convs without bias).
  """
  block_cls: ModuleDef = resnet.Bottleneck
  stage_sizes: Sequence[int] = (3, 4, 6)
  stage_strides: Sequence[int] = (1, 2, 1)
  outputs: Sequence[int] = (2,)
  num_filters: int = 64
  extras: Sequence[Extra] = RESNET_EXTRAS

  @nn.compact
  def __call__(self, x, train: bool = False) -> list[jax.Array]:
    conv, norm = functools.partial(self.conv, use_bias=False), self.norm(train)
    x = nn.relu(norm(name='bn1')(conv(self.num_filters, 7, 2, name='conv1')(x)))
    x = MaxPool(3, 2, padding=1, name='maxpool')(x)
    outputs = []
    for i, (blocks, stride) in enumerate(zip(self.stage_sizes, self.stage_strides)):
      for j in range(blocks):
        x = self.block_cls(self.num_filters * 2**i, conv=conv, norm=norm,
                           strides=stride if j == 0 else 1, name=f'layer{i + 1}_{j}')(x)
      if i in self.outputs:
        outputs.append(x)
    for j, e in enumerate(self.extras, start=1):  # NVIDIA's additional_blocks.{j-1}
      x = nn.relu(norm(name=f'extra{j}_bn1')(conv(e.mid, 1, name=f'extra{j}_conv1')(x)))
      x = conv(e.out, e.kernel, e.stride, e.padding, name=f'extra{j}_conv2')(x)
      x = nn.relu(norm(name=f'extra{j}_bn2')(x))
      outputs.append(x)
    return outputs


class SSD(BNModel):
  """Backbone feature maps → per-map 3×3 heads → (locations, logits).

  __call__(x f32[B, S, S, 3] in [0, 1], train) returns
    locations f32[B, A, 4]: box codes (dx, dy, dw, dh) against `default_boxes()`;
    logits f32[B, A, num_classes + 1]: column 0 is background.
  The post-processing settings (score_threshold, nms_threshold, max_detections,
  candidates_per_class) are torchvision's and are read by `postprocess_config()`.
  `backbone` is built with this model's options (conv_impl, dtypes, BatchNorm's).
  """
  family: ClassVar[str] = 'ssd'  # how cvjax.detection trains and decodes it

  backbone: ModuleDef
  anchor_spec: AnchorSpec
  num_classes: int = 20
  input_size: int = 300
  pixel_mean: tuple[float, ...] = VGG_MEAN
  pixel_std: tuple[float, ...] = VGG_STD
  score_threshold: float = 0.01
  nms_threshold: float = 0.45
  max_detections: int = 200
  candidates_per_class: int = 400

  def _backbone(self, **kwargs) -> nn.Module:
    return self.backbone(**self.net_options(), **kwargs)

  @nn.compact
  def __call__(self, x, train: bool = False):
    mean = jnp.asarray(self.pixel_mean, jnp.float32)
    std = jnp.asarray(self.pixel_std, jnp.float32)
    x = ((x - mean) / std).astype(self.dtype)
    features = self._backbone(name='backbone')(x, train=train)
    if len(features) != self.anchor_spec.num_maps:
      raise ValueError(f'the backbone gives {len(features)} feature maps for a '
                       f'{x.shape[1]}² input, the anchors expect {self.anchor_spec.num_maps}')
    head = functools.partial(self.conv, kernel_size=3, kernel_init=xavier)
    batch, columns = x.shape[0], self.num_classes + 1
    locations, logits = [], []
    for k, (f, n) in enumerate(zip(features, self.anchor_spec.boxes_per_location())):
      # Channel a·C + c of a head is box a's value c: the (H, W, boxes) order of the anchors.
      logits.append(head(n * columns, name=f'cls_head_{k}')(f).reshape(batch, -1, columns))
      locations.append(head(n * 4, name=f'box_head_{k}')(f).reshape(batch, -1, 4))
    out = jnp.promote_types(self.dtype, jnp.float32)  # float32 (float64 models: float64)
    return jnp.concatenate(locations, 1).astype(out), jnp.concatenate(logits, 1).astype(out)

  def feature_sizes(self, image_size: int | None = None) -> list[tuple[int, int]]:
    """(height, width) of every head's feature map for a square input (traced, not run)."""
    size = image_size or self.input_size
    backbone = self._backbone(parent=None)  # standalone, not a child of this module
    shapes = jax.eval_shape(
        lambda x: backbone.init_with_output(jax.random.key(0), x, train=False)[0],
        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    return [tuple(s.shape[1:3]) for s in shapes]

  def default_boxes(self, image_size: int | None = None) -> np.ndarray:
    """The anchors the outputs refer to: f32[A, 4] (ymin, xmin, ymax, xmax), normalised."""
    size = image_size or self.input_size
    return default_boxes(self.anchor_spec, self.feature_sizes(size), (size, size))

  def postprocess_config(self) -> PostprocessConfig:
    return PostprocessConfig(score_threshold=self.score_threshold,
                             nms_threshold=self.nms_threshold,
                             max_detections=self.max_detections,
                             candidates_per_class=self.candidates_per_class)


SSD300VGG16 = functools.partial(SSD, backbone=functools.partial(VGGFeatures, extras=SSD300_EXTRAS),
                                anchor_spec=SSD300_ANCHORS, input_size=300)
SSD512VGG16 = functools.partial(SSD, backbone=functools.partial(VGGFeatures, extras=SSD512_EXTRAS),
                                anchor_spec=SSD512_ANCHORS, input_size=512)
SSD300ResNet50 = functools.partial(SSD, backbone=ResNetFeatures, anchor_spec=SSD300_ANCHORS,
                                   input_size=300, pixel_mean=IMAGENET_MEAN,
                                   pixel_std=IMAGENET_STD)
SSD128ResNet18Slim = functools.partial(
    SSD, backbone=functools.partial(
        ResNetFeatures, block_cls=resnet.BasicBlock, stage_sizes=(2, 2, 2, 2),
        stage_strides=(1, 2, 2, 2), outputs=(1, 2, 3), num_filters=16,
        extras=(Extra(64, 128), Extra(64, 128))),
    anchor_spec=SLIM_ANCHORS, input_size=128, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)


def _torchvision_vgg_names() -> dict[str, str]:
  """Our parameter path → torchvision `ssd300_vgg16` state-dict prefix."""
  names = {}
  trunk = [(1, 2), (2, 2), (3, 3), (4, 3)]
  index = 0
  for s, n in trunk:
    for i in range(1, n + 1):
      names[f'backbone/conv{s}_{i}'] = f'backbone.features.{index}'
      index += 2
    index += 1  # the pool
  for i, j in zip((1, 2, 3), (1, 3, 5)):
    names[f'backbone/conv5_{i}'] = f'backbone.extra.0.{j}'
  names['backbone/fc6'] = 'backbone.extra.0.7.1'
  names['backbone/fc7'] = 'backbone.extra.0.7.3'
  for j in range(4):
    names[f'backbone/conv{8 + j}_1'] = f'backbone.extra.{j + 1}.0'
    names[f'backbone/conv{8 + j}_2'] = f'backbone.extra.{j + 1}.2'
  for k in range(6):
    names[f'cls_head_{k}'] = f'head.classification_head.module_list.{k}'
    names[f'box_head_{k}'] = f'head.regression_head.module_list.{k}'
  return names


# Weight conversion table for torchvision's ssd300_vgg16: conv `path/kernel`
# [kh, kw, in, out] ← `prefix.weight` [out, in, kh, kw] transposed (2, 3, 1, 0);
# `path/bias` ← `prefix.bias`; `backbone/l2norm/scale` ← `backbone.scale_weight`.
# torchvision's 91 COCO columns (background + 90 category ids) load with num_classes=90.
TORCHVISION_SSD300_VGG16: dict[str, str] = {
    **_torchvision_vgg_names(), 'backbone/l2norm': 'backbone.scale_weight'}
