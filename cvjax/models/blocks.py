"""Building blocks the later model families share.

The lecture's named layers, each a small module with its shapes in the docstring:
  SEBlock          squeeze-and-excitation (Hu et al. 2018): GAP → dense C/r → ReLU →
                   dense C → sigmoid → scale the channels.
  DepthPool        max over groups of k consecutive channels: [B,H,W,C] → [B,H,W,C/k].
  GlobalAvgPool    re-exported from `layers`: mean over H and W, [B,H,W,C] → [B,C].
  GlobalMaxPool    max over H and W, [B,H,W,C] → [B,C].
  DepthwiseConv    one k×k filter per channel (MobileNet, EfficientNet).
  SeparableConv    depthwise k×k conv then pointwise 1×1 (Xception, Keras `SeparableConv2D`).
  StochasticDepth  drops a residual branch for a whole example in training
                   (EfficientNet's "drop connect", Keras `Dropout(noise_shape=(None,1,1,1))`).
  MaxPoolCeil      torch's `MaxPool2d(ceil_mode=True)` (Caffe's GoogLeNet pools).
  AvgPoolSame      Keras `AveragePooling2D(padding='same')`: zeros do not count in the mean.
  MaxPoolSame      Keras `MaxPooling2D(padding='same')`.

Padding. cvjax pads explicitly (see `layers`). Keras ports must pad as Keras does,
and Keras' 'same' is asymmetric: total = max((⌈n/s⌉ − 1)·s + k − n, 0), with
⌊total/2⌋ before and the rest after — a 3×3/s2 window on an even input is padded
(0, 1), on an odd one (1, 1). `keras_same` computes exactly that from the input's
shape (it equals Keras' `imagenet_utils.correct_pad` + 'valid' for stride 2, which
EfficientNet and MobileNetV2 use), so the padding stays explicit and visible.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cvjax import errors
from cvjax.models import conv_lowering, layers, onednn
from cvjax.models.layers import GlobalAvgPool  # noqa: F401  (re-exported: the lecture's GAP)

Array = Any
ModuleDef = Any
Pads = tuple[tuple[int, int], tuple[int, int]]

# Depthwise kernels are [kh, kw, 1, C]: flax's fan_out would be kh·kw·C, but each
# output sees only kh·kw inputs. He-normal over the true per-channel fan (kh·kw),
# which is what Keras' fan_out gets for its [kh, kw, C, 1] depthwise kernels.
depthwise_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def keras_same(hw: Sequence[int], kernel: int | Sequence[int],
               stride: int | Sequence[int] = 1) -> Pads:
  """Keras/TensorFlow 'same' padding for an input of spatial size hw = (H, W).

  Returns ((top, bottom), (left, right)); e.g. k=3, s=2: (0, 1) on even sizes,
  (1, 1) on odd; k=3, s=1: (1, 1) always.
  """
  pads = []
  for n, k, s in zip(hw, _pair(kernel), _pair(stride)):
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    pads.append((total // 2, total - total // 2))
  return tuple(pads)


def conv_pads(x: Array, kernel: int | Sequence[int], stride: int | Sequence[int],
              padding: str | int | Pads) -> Pads:
  """Explicit pads for x [B, H, W, C]: 'same' (Keras), 'valid', p (symmetric) or pairs."""
  if padding == 'same':
    return keras_same(x.shape[1:3], kernel, stride)
  if padding == 'valid':
    return ((0, 0), (0, 0))
  if isinstance(padding, int):
    return layers.sym(padding)
  return tuple(tuple(p) for p in padding)


class SEBlock(nn.Module):
  """Squeeze-and-excitation: x [B, H, W, C] → x · s, s = σ(W2 δ(W1 GAP(x))) [B, 1, 1, C].

  squeeze: GAP → [B, C]; excitation: dense to C_s = C // reduction (or
  `squeeze_features`), `act` (ReLU), dense back to C, `gate` (sigmoid); then
  each channel of x is multiplied by its gate. Parameters: 2·C·C_s + C_s + C.
  conv: None for dense layers; a conv constructor (`layers.conv_general`, a model's
  `conv_general`) stores them as 1×1 convs on the pooled 1×1 map (kernels
  [1, 1, C, C_s], with the constructor's dtypes), as Keras' EfficientNet does; the
  maths is the same. dtype, param_dtype: the dense layers'.
  Names: `reduce`, `expand` (Keras: `<block>_se_reduce`, `<block>_se_expand`).
  """
  reduction: int = 16
  squeeze_features: int | None = None
  act: Callable = nn.relu
  gate: Callable = nn.sigmoid
  conv: ModuleDef | None = None
  kernel_init: Callable = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    cs = self.squeeze_features or max(1, c // self.reduction)
    s = jnp.mean(x, axis=(1, 2), keepdims=True)  # squeeze: [B, 1, 1, C]
    if self.conv is not None:
      layer = lambda f, name: self.conv(f, 1, kernel_init=self.kernel_init, name=name)
    else:
      layer = lambda f, name: nn.Dense(f, kernel_init=self.kernel_init, dtype=self.dtype,
                                       param_dtype=self.param_dtype, name=name)
    s = self.act(layer(cs, 'reduce')(s))
    s = self.gate(layer(c, 'expand')(s))
    return x * s.astype(x.dtype)


class DepthPool(nn.Module):
  """Depth (channel) max-pooling: [B, H, W, C] → [B, H, W, C / pool_size].

  Output channel j is the max of input channels j·k … j·k + k − 1 (k = pool_size),
  TensorFlow's `max_pool(ksize=(1, 1, 1, k), strides=(1, 1, 1, k))`: a layer
  that learns which of k feature detectors to trust (maxout over channels).
  """
  pool_size: int

  def __call__(self, x: Array) -> Array:
    c, k = x.shape[-1], self.pool_size
    if k < 1 or c % k:
      raise errors.UserError(
          f'DepthPool({k}) needs channels divisible by {k}, got {c} channels; '
          f'use a pool size that divides {c}')
    return jnp.max(x.reshape(*x.shape[:-1], c // k, k), axis=-1)


class GlobalMaxPool(nn.Module):
  """Max over H and W: [B, H, W, C] → [B, C]."""

  def __call__(self, x: Array) -> Array:
    return jnp.max(x, axis=(1, 2))


class DepthwiseConv(nn.Conv):
  """A k×k conv with one filter per channel (`feature_group_count` = C = features).

  x [B, H, W, C] → [B, H', W', C]; kernel [k, k, 1, C] as `nn.Conv` has it (so
  `cvjax.summary` counts its k²·C MACs per output pixel). `padding` must be
  explicit pairs. `impl` (a resolved conv impl) with the 'onednn' lowering
  computes it with oneDNN's grouped convolution; with the 'depthwise' lowering
  (and no oneDNN) as the sum of k² shifted copies of the padded input, each scaled
  per channel by one kernel tap (the same numbers: XLA:CPU's grouped
  convolutions, and above all their gradients, are slow); otherwise it is the
  grouped `lax` convolution.
  """
  impl: str = 'xla'

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if self.features != c:
      raise ValueError(f'DepthwiseConv features={self.features} but the input has {c} channels')
    (kh, kw), (sh, sw) = self.kernel_size, self.strides or (1, 1)
    (pt, pb), (pl, pr) = self.padding
    kernel = self.param('kernel', self.kernel_init, (kh, kw, 1, c), self.param_dtype)
    dtype = self.dtype or x.dtype
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    on = conv_lowering.lowerings(self.impl)
    args = ((sh, sw), ((pt, pb), (pl, pr)))
    nhwc = dict(dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)
    if 'onednn' in on and onednn.supports(x, kernel, *args, **nhwc):
      y = onednn.conv_general_dilated(x, kernel, *args, **nhwc)
    elif 'depthwise' in on:
      xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
      ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
      y = sum(xp[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :] * kernel[i, j, 0]
              for i in range(kh) for j in range(kw))
    else:
      y = jax.lax.conv_general_dilated(x, kernel, *args, **nhwc)
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (c,), self.param_dtype).astype(dtype)
    return y


def depthwise_conv(x: Array, kernel_size: int, strides: int = 1, padding: Any = 'same', *,
                   name: str, impl: str = 'xla', dtype=jnp.float32, param_dtype=jnp.float32,
                   use_bias: bool = False) -> Array:
  """Depthwise k×k conv (one filter per channel, Keras `DepthwiseConv2D`): [B,H,W,C] → [B,H',W',C].

  Call inside a compact method; the conv is created under `name` there.
  Kernel [k, k, 1, C] (Keras: [k, k, C, 1]; a reshape maps one to the other).
  """
  c, k, s = x.shape[-1], kernel_size, strides
  return DepthwiseConv(c, (k, k), (s, s), padding=conv_pads(x, k, s, padding),
                       feature_group_count=c, use_bias=use_bias, kernel_init=depthwise_init,
                       impl=impl, dtype=dtype, param_dtype=param_dtype, name=name)(x)


class SeparableConv(nn.Module):
  """Depthwise-separable conv: k×k per-channel conv (`depthwise`), then 1×1 (`pointwise`).

  x [B, H, W, C] → [B, H', W', features]. Params k²·C + C·features (+ features
  with use_bias): Xception's 3×3 728→728 has 6,552 + 529,984 = 536,536 vs
  4,769,856 for a full 3×3 conv. padding: 'same' (Keras), 'valid', p or pairs.
  Keras' `SeparableConv2D` keeps `depthwise_kernel` [k, k, C, 1] and
  `pointwise_kernel` [1, 1, C, F]; here depthwise/kernel is [k, k, 1, C].
  depthwise, conv: how the two are built (`depthwise_conv`, `layers.conv_general`;
  a model hands in its own, with its dtypes and conv lowering).
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Any = 'same'
  use_bias: bool = False
  depthwise: Callable[..., Array] = depthwise_conv
  conv: ModuleDef = layers.conv_general

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = self.depthwise(x, self.kernel_size, self.strides, self.padding, name='depthwise')
    return self.conv(self.features, 1, use_bias=self.use_bias, kernel_init=layers.he_normal,
                     name='pointwise')(x)


class StochasticDepth(nn.Module):
  """Drops the residual branch of whole examples: y [B, ...] → y · m / (1 − rate).

  m ~ Bernoulli(1 − rate), one draw per example.

  Identity in eval (`deterministic=True`) or at rate 0. Randomness from the
  'dropout' rng stream, like `nn.Dropout` (it is one, broadcast over H, W, C).
  """
  rate: float

  @nn.compact
  def __call__(self, y: Array, deterministic: bool) -> Array:
    if self.rate <= 0:
      return y
    return nn.Dropout(self.rate, broadcast_dims=tuple(range(1, y.ndim)),
                      deterministic=deterministic, name='dropout')(y)


class MaxPoolCeil(layers.MaxPool):
  """k×k max-pool, stride s, padding p, output size rounded up (torch `ceil_mode=True`).

  out = ⌈(n + 2p − k) / s⌉ + 1 (less one if the last window would start in the
  padding); the extra bottom/right cells are −∞, so they never win. GoogLeNet:
  112 → 56 with 3×3/s2 (floor mode would give 55).
  """

  def __call__(self, x: Array) -> Array:
    s, k, p = self.stride or self.window, self.window, self.padding
    pads = []
    for n in x.shape[1:3]:
      out = -(-(n + 2 * p - k) // s) + 1
      if (out - 1) * s >= n + p:  # torch: the last window must start inside the input
        out -= 1
      pads.append((p, (out - 1) * s + k - n - p))
    return nn.max_pool(x, (k, k), (s, s), tuple(pads))


class AvgPoolSame(layers.AvgPool):
  """Keras `AveragePooling2D(k, s, padding='same')`: the mean over the real cells of each window.

  Padding as `keras_same`; padded zeros are not counted (count_include_pad=False),
  so the border of a constant map stays constant. (`padding` is unused.)
  """

  def __call__(self, x: Array) -> Array:
    s, k = self.stride or self.window, self.window
    return nn.avg_pool(x, (k, k), (s, s), keras_same(x.shape[1:3], k, s),
                       count_include_pad=False)


class MaxPoolSame(layers.MaxPool):
  """Keras `MaxPooling2D(k, s, padding='same')`: padding as `keras_same`, padded cells never win."""

  def __call__(self, x: Array) -> Array:
    s, k = self.stride or self.window, self.window
    return nn.max_pool(x, (k, k), (s, s), keras_same(x.shape[1:3], k, s))
