"""YOLOv3 (Redmon & Farhadi 2018): Darknet-53 and a three-scale head; YOLOv3-tiny.

    model = get_model('yolov3', num_classes=80)
    maps = model.apply(variables, images, train=False)
    # images f32[B, 416, 416, 3] in [0, 1] (Darknet feeds them as they are)
    # maps: a tuple, coarsest first (stride 32, 16, 8 — Darknet's [yolo] layer order):
    #   f32[B, 13, 13, 3, 85], f32[B, 26, 26, 3, 85], f32[B, 52, 52, 3, 85]
    # last axis: raw (tx, ty, tw, th, objectness logit, C class logits)
    anchors = model.scale_anchors()   # per map f32[3, 2] (w, h), normalised to the input

`cvjax.detection.yolo` decodes the maps (box centre (sigmoid(t_xy) + cell) / S, size
anchor · exp(t_wh); score objectness × class probability, both sigmoids) and holds the loss.

Darknet-53 (`yolov3.cfg` layers 0-74): conv → BN → leaky ReLU (0.1) everywhere;
a 3×3 conv of 32, then five stages, each a 3×3/2 conv doubling the channels (64, 128,
256, 512, 1024) and 1, 2, 8, 8, 4 residual blocks (1×1 to half the channels, 3×3
back, added to the input). The stage-3 and stage-4 outputs (strides 8 and 16) are the
routes the head concatenates.

Head (layers 75-106), per scale from the coarsest: five convs alternating 1×1 to n and
3×3 to 2n (n = 512, 256, 128), then a 3×3 to 2n and a 1×1 output conv with bias (no BN,
linear) to 3·(5 + C) channels. Between scales the fifth conv's output is reduced by a
1×1 conv to n/2, upsampled 2× (nearest) and concatenated with the route (upsampled
channels first, as Darknet's `[route] layers = -1, 61`).

YOLOv3-tiny (`yolov3-tiny.cfg`): 3×3 convs of 16, 32, 64, 128, 256, 512 each followed
by a 2×2 maxpool (stride 2; the last one stride 1), a 3×3 of 1024, then the 13×13 head
(1×1 256, 3×3 512, output) and the 26×26 one (1×1 128 from the 256, 2× upsampling,
concat with the 256-channel conv 8, 3×3 256, output).

Layer names are Darknet's layer indices in the cfg (`conv{i}` and its `bn{i}`;
`backbone/` for Darknet-53's 0-74 and tiny's 0-12), so a cfg and a `.weights` file
(`cvjax.pretrained.darknet`) read side by side with the parameters.

Darknet's stride-1 maxpool (size 2, padding size − 1 = 1, offset −padding / 2 = 0 in C)
covers cells i and i + 1 and pads one −inf row and column at the bottom and right,
so 13×13 stays 13×13 (`DarknetMaxPool`).

Parameters for 80 classes at 416²: yolov3 61,949,149 trainable + 52,608 BatchNorm
statistics; yolov3_tiny 8,852,366 trainable + 6,368 statistics. yolov3_shapes, the
CPU model for `cvjax_shapes` (128², 6 classes): Darknet-53 at a quarter of the width
(first conv 8 channels, head 128/64/32) with 1, 1, 2, 2, 1 blocks.

Departure from Darknet, initialisation only: the objectness bias of the output convs
starts at log(0.01 / 0.99) (RetinaNet's prior), so the ~10⁴ no-object terms do not swamp
the first steps of training from scratch.
"""
from __future__ import annotations

import functools
import math
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cvjax.errors import UserError
from cvjax.models.base import BNModel, BNNet
from cvjax.models.ssd import PostprocessConfig

ModuleDef = Any

# Darknet's COCO anchors (pixels at 416², (w, h), smallest first) and the cfg's masks:
# map k (coarsest first) uses the k-th group of three from the end.
COCO_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90),
                (156, 198), (373, 326))
TINY_COCO_ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
OBJECTNESS_PRIOR = 0.01


def normalised(anchors_px, size: int = 416) -> tuple[float, ...]:
  """((w, h) in pixels at `size`², ...) → the flat (w0, h0, w1, h1, ...) normalised to the input."""
  return tuple(float(v) / size for pair in anchors_px for v in pair)


def leaky(x):
  return nn.leaky_relu(x, 0.1)


def upsample2(x):
  """Nearest-neighbour 2× upsampling (Darknet's [upsample] stride=2): [B, H, W, C] → [B, 2H, 2W, C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class DarknetMaxPool(nn.Module):
  """Darknet's [maxpool] size k, stride s (padding k − 1, offset 0): output
  (H + k − 1 − k) // s + 1, windows from cell 0, the missing cells at the bottom and right
  −inf. k = s = 2 on even inputs halves them; k = 2, s = 1 keeps the size."""
  window: int = 2
  stride: int = 2

  def __call__(self, x):
    def pad(size):
      out = (size + self.window - 1 - self.window) // self.stride + 1
      return (0, max((out - 1) * self.stride + self.window - size, 0))
    return nn.max_pool(x, (self.window,) * 2, (self.stride,) * 2, (pad(x.shape[1]), pad(x.shape[2])))


class _Layers:
  """conv → BN → leaky ReLU named by Darknet layer index, for a BNNet's compact body."""

  def __init__(self, module, train: bool, start: int = 0):
    self.m, self.train, self.index = module, train, start

  def skip(self, n: int = 1) -> None:
    """Layers with no parameters (shortcut, route, upsample, maxpool, yolo)."""
    self.index += n

  def conv_bn(self, x, features: int, kernel: int, stride: int = 1):
    m, i = self.m, self.index
    x = m.conv(features, kernel, stride, use_bias=False, name=f'conv{i}')(x)
    x = m.norm(self.train)(name=f'bn{i}')(x)
    self.index += 1
    return leaky(x)

  def output(self, x, anchors: int, num_classes: int):
    """The linear 1×1 output conv with bias: [B, S, S, ·] → f32[B, S, S, anchors, 5 + C]."""
    m, i = self.m, self.index
    columns = 5 + num_classes
    prior = math.log(OBJECTNESS_PRIOR / (1 - OBJECTNESS_PRIOR))
    bias = np.zeros((anchors, columns), np.float32)
    bias[:, 4] = prior

    def bias_init(key, shape, dtype=jnp.float32):
      del key
      return jnp.asarray(bias.reshape(shape), dtype)
    x = m.conv(anchors * columns, 1, bias_init=bias_init, name=f'conv{i}')(x)
    self.index += 2  # the conv and its [yolo] layer
    out = jnp.promote_types(m.dtype, jnp.float32)
    return x.reshape(x.shape[:3] + (anchors, columns)).astype(out)


class Darknet53(BNNet):
  """x f32[B, S, S, 3] → the routes (stride 8, 16, 32 maps), Darknet layers 0 … .

  width: channels of the first conv (Darknet-53: 32); stage k has width · 2^(k+1).
  stage_sizes: residual blocks per stage (Darknet-53: 1, 2, 8, 8, 4).
  """
  stage_sizes: Sequence[int] = (1, 2, 8, 8, 4)
  width: int = 32

  @nn.compact
  def __call__(self, x, train: bool = False) -> list[jax.Array]:
    layers = _Layers(self, train)
    x = layers.conv_bn(x, self.width, 3)
    routes = []
    for k, blocks in enumerate(self.stage_sizes):
      channels = self.width * 2 ** (k + 1)
      x = layers.conv_bn(x, channels, 3, 2)
      for _ in range(blocks):
        y = layers.conv_bn(x, channels // 2, 1)
        y = layers.conv_bn(y, channels, 3)
        layers.skip()  # [shortcut] from=-3
        x = x + y
      routes.append(x)
    return routes[-3:]

  def num_layers(self) -> int:
    """Darknet layers in the backbone (Darknet-53: 75)."""
    return 1 + sum(1 + 3 * b for b in self.stage_sizes)


class _YOLODetector(BNModel):
  """The fields and decoding settings YOLOv3 and YOLOv3-tiny share (a subclass sets
  `anchors`' default and `num_scales`)."""
  family: ClassVar[str] = 'yolo'  # how cvjax.detection trains and decodes it

  num_classes: int = 80
  anchors: Sequence[Any] = ()
  input_size: int = 416
  ignore_threshold: float = 0.5
  score_threshold: float = 0.005
  nms_threshold: float = 0.45
  max_detections: int = 200
  candidates_per_class: int = 400

  num_scales: ClassVar[int] = 3

  def __post_init__(self):
    object.__setattr__(self, 'anchors', _flat_anchors(self.anchors, self.num_scales))
    super().__post_init__()

  def scale_anchors(self) -> list[np.ndarray]:
    """Per map (coarsest first) its anchors f32[A, 2] (w, h), normalised."""
    return _scale_anchors(self.anchors, self.num_scales)

  def postprocess_config(self) -> PostprocessConfig:
    return PostprocessConfig(score_threshold=self.score_threshold,
                             nms_threshold=self.nms_threshold,
                             max_detections=self.max_detections,
                             candidates_per_class=self.candidates_per_class)


class YOLOv3(_YOLODetector):
  """Darknet-53 → three-scale head → per-scale raw maps (see the module doc).

  anchors: flat (w0, h0, …, w8, h8) normalised to the input, smallest first (Darknet's
    order); map k (coarsest first) uses anchors 3·(2 − k) … 3·(2 − k) + 2. Pairs
    ((w, h), ...) are accepted too. `--model_kwargs=anchors=(...)` sets them
    (`python -m cvjax.anchors` computes them for a dataset).
  ignore_threshold: the loss ignores no-object terms of predictions overlapping a ground
    truth box by more than this (IoU).
  score_threshold, nms_threshold, max_detections, candidates_per_class: post-processing.
  """
  anchors: Sequence[Any] = normalised(COCO_ANCHORS)
  width: int = 32
  stage_sizes: Sequence[int] = (1, 2, 8, 8, 4)

  num_scales: ClassVar[int] = 3

  @nn.compact
  def __call__(self, x, train: bool = False) -> tuple[jax.Array, ...]:
    x = x.astype(self.dtype)
    backbone = Darknet53(stage_sizes=self.stage_sizes, width=self.width, **self.net_options(),
                         name='backbone')
    routes = backbone(x, train=train)[::-1]                   # stride 32, 16, 8
    layers = _Layers(self, train, start=backbone.num_layers())
    per_map = len(self.anchors) // 2 // self.num_scales
    outputs, x = [], routes[0]
    for k, route in enumerate(routes):
      n = self.width * 16 // 2 ** k                             # 512, 256, 128
      if k:
        layers.skip()                                           # [route] layers = -4
        x = upsample2(layers.conv_bn(x, n, 1))                  # x: the last set's fifth conv
        layers.skip(2)                                          # [upsample], [route] -1, r
        x = jnp.concatenate([x, route], axis=-1)
      for j in range(5):
        x = layers.conv_bn(x, n if j % 2 == 0 else 2 * n, 1 if j % 2 == 0 else 3)
      y = layers.conv_bn(x, 2 * n, 3)
      outputs.append(layers.output(y, per_map, self.num_classes))
    return tuple(outputs)


class YOLOv3Tiny(_YOLODetector):
  """`yolov3-tiny.cfg`: seven 3×3 convs with maxpools → two scales (13², 26² at 416²).

  anchors: flat (w0, h0, …, w5, h5) normalised, smallest first; map 0 (coarse) uses
  anchors 3-5, map 1 anchors 0-2 (the cfg's masks). Other fields as `YOLOv3`.
  """
  anchors: Sequence[Any] = normalised(TINY_COCO_ANCHORS)

  num_scales: ClassVar[int] = 2

  @nn.compact
  def __call__(self, x, train: bool = False) -> tuple[jax.Array, ...]:
    x = x.astype(self.dtype)
    x, route = TinyBackbone(**self.net_options(), name='backbone')(x, train=train)
    layers = _Layers(self, train, start=TinyBackbone.num_layers)
    per_map = len(self.anchors) // 2 // self.num_scales
    keep = layers.conv_bn(x, 256, 1)                            # 13
    y = layers.conv_bn(keep, 512, 3)                            # 14
    coarse = layers.output(y, per_map, self.num_classes)        # 15, [yolo] 16
    layers.skip()                                               # 17 [route] -4
    y = upsample2(layers.conv_bn(keep, 128, 1))                 # 18, [upsample] 19
    layers.skip(2)                                              # 19, 20 [route] -1, 8
    y = layers.conv_bn(jnp.concatenate([y, route], axis=-1), 256, 3)   # 21
    fine = layers.output(y, per_map, self.num_classes)          # 22, [yolo] 23
    return coarse, fine


class TinyBackbone(BNNet):
  """yolov3-tiny layers 0-12 → (layer 12 f32[B, S/32, S/32, 1024], layer 8 [B, S/16, S/16, 256])."""
  num_layers: ClassVar[int] = 13

  @nn.compact
  def __call__(self, x, train: bool = False):
    layers = _Layers(self, train)
    route = None
    for k, features in enumerate((16, 32, 64, 128, 256, 512)):
      x = layers.conv_bn(x, features, 3)
      if k == 4:
        route = x                                               # layer 8
      x = DarknetMaxPool(2, 1 if k == 5 else 2, name=f'maxpool{layers.index}')(x)
      layers.skip()
    return layers.conv_bn(x, 1024, 3), route


def _flat_anchors(anchors, num_scales: int) -> tuple[float, ...]:
  """Flat (w0, h0, …) floats from flat numbers or (w, h) pairs; a whole number of pairs per map."""
  flat = tuple(float(v) for v in np.asarray(anchors, np.float64).reshape(-1))
  pairs = len(flat) // 2
  if len(flat) % 2 or pairs == 0 or pairs % num_scales:
    raise UserError(f'anchors must be (w, h) pairs, the same number for each of the '
                    f'{num_scales} maps; got {len(flat)} numbers')
  if min(flat) <= 0:
    raise UserError(f'anchors must be positive widths and heights, got {flat}')
  return flat


def _scale_anchors(anchors, num_scales: int) -> list[np.ndarray]:
  wh = np.asarray(anchors, np.float32).reshape(num_scales, -1, 2)
  return [wh[num_scales - 1 - k] for k in range(num_scales)]


# The CPU model for cvjax_shapes: quarter-width Darknet-53 with fewer blocks, 128² inputs.
YOLOv3Shapes = functools.partial(YOLOv3, width=8, stage_sizes=(1, 1, 2, 2, 1), input_size=128)
