"""Single-image super-resolution: SRCNN, ESPCN and EDSR-baseline (task 'superres').

Every model maps an image to an image and has no BatchNorm; `num_classes` is a
`Model` field the factory sets and these models ignore (the output has the
input's channels). All convs have a bias and pad k // 2 zeros on every side, so a
stride-1 conv keeps H and W ('same' for the odd kernels used here).

      model            input (natural)            output              params
      SRCNN 9-1-5 ×3   f32[B, 11, 11, 1] Y, LR    f32[B, 33, 33, 1]    8,129
      SRCNN 9-5-5 ×3   f32[B, 11, 11, 1] Y, LR    f32[B, 33, 33, 1]   57,281
      ESPCN ×3         f32[B, 17, 17, 1] Y, LR    f32[B, 51, 51, 1]   22,729
      EDSR-baseline ×2 f32[B, 48, 48, 3] RGB, LR  f32[B, 96, 96, 3]  1,369,859
      EDSR-baseline ×3                            f32[B, 144, 144, 3] 1,554,499
      EDSR-baseline ×4                            f32[B, 192, 192, 3] 1,517,571

Every model takes the low-resolution image and returns it ×`scale`: SRCNN first
upscales it bicubically (`bicubic_upscale`, no parameters), as its papers prepare
their inputs, then refines it at the output size; ESPCN and EDSR upscale at their
end with `layers.pixel_shuffle` (torch's order). SRCNN with scale 1 takes an input
already upscaled.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cvjax import errors
from cvjax.models.base import Model
from cvjax.models.layers import pixel_shuffle

Array = Any
ModuleDef = Any

# PyTorch's default conv init, kaiming_uniform(a=√5): U(±√(1/fan_in)), variance 1/(3·fan_in),
# which the papers' official codes train from. He init (`layers.conv`'s default) doubles
# the variance through each of EDSR's 16 residual blocks, which have no normalisation.
TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')

# DIV2K's mean RGB in [0, 1], the official EDSR code's `rgb_mean`.
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class _SRModel(Model):
  """A model whose convs start from PyTorch's default init (see `TORCH_DEFAULT_INIT`)."""

  @nn.nowrap
  def sr_conv(self, features: int, kernel_size: int, **kwargs: Any) -> nn.Conv:
    return self.conv(features, kernel_size, kernel_init=TORCH_DEFAULT_INIT, **kwargs)


def bicubic_upscale(x: Array, scale: int) -> Array:
  """f32[B, h, w, C] → f32[B, h·scale, w·scale, C], bicubic (Keys' kernel, a = −0.5, as
  MATLAB's `imresize` upsamples; at the borders the kernel's weights are renormalised
  where MATLAB repeats the edge pixels). Not clipped."""
  if scale == 1:
    return x
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, h * scale, w * scale, c), method='bicubic')


class SRCNN(_SRModel):
  """SRCNN (Dong et al. 2016, TPAMI): x f32[B, h, w, 1] → f32[B, h·r, w·r, 1], r = `scale`.

  x is the low-resolution Y channel; it is upscaled bicubically (`bicubic_upscale`) to
  the output size first, then the three convs below run at H×W = h·r × w·r.

      layer   conv                       output     params (9-1-5)
      conv1   f1×f1, 64, ReLU            H×W×64        5,248
      conv2   f2×f2, 32, ReLU            H×W×32        2,080
      conv3   f3×f3, 1                   H×W×1           801
                                                       8,129
  (9-5-5: conv2 has 51,232, 57,281 in all.) The paper's convs are unpadded (a
  33² sub-image gives 21²); these pad, so the output aligns with the input.
  """
  num_classes: int = 1  # ignored
  kernel_sizes: tuple[int, int, int] = (9, 1, 5)  # f1, f2, f3
  widths: tuple[int, int] = (64, 32)  # n1, n2
  scale: int = 3

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    f1, f2, f3 = self.kernel_sizes
    x = bicubic_upscale(jnp.asarray(x, jnp.float32), _check_scale('SRCNN', self.scale))
    x = nn.relu(self.sr_conv(self.widths[0], f1, name='conv1')(x))
    x = nn.relu(self.sr_conv(self.widths[1], f2, name='conv2')(x))
    x = self.sr_conv(1, f3, name='conv3')(x)
    return jnp.asarray(x, jnp.float32)


class ESPCN(_SRModel):
  """ESPCN (Shi et al. 2016, CVPR): x f32[B, h, w, 1] → f32[B, h·r, w·r, 1], r = `scale`.

  x is the low-resolution Y channel; the upscaling is the last layer's sub-pixel shuffle.

      layer   conv                 output        params (r = 3)
      conv1   5×5, 64, tanh        h×w×64           1,664
      conv2   3×3, 32, tanh        h×w×32          18,464
      conv3   3×3, r²              h×w×r²           2,601
      shuffle pixel_shuffle(r)     hr×wr×1              0
                                                   22,729
  """
  num_classes: int = 1  # ignored
  scale: int = 3

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    r = _check_scale('ESPCN', self.scale)
    x = jnp.tanh(self.sr_conv(64, 5, name='conv1')(x))
    x = jnp.tanh(self.sr_conv(32, 3, name='conv2')(x))
    x = self.sr_conv(r * r, 3, name='conv3')(x)
    return jnp.asarray(pixel_shuffle(x, r), jnp.float32)


class ResBlock(nn.Module):
  """EDSR's residual block, x f32[B, H, W, C] → same: x + res_scale · conv(relu(conv(x))).

  No BatchNorm (Lim et al. §3.1: it removes range flexibility); conv: a k×k conv
  constructor `conv(features, kernel_size, name=...)`.
  """
  conv: ModuleDef
  features: int
  res_scale: float = 1.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = nn.relu(self.conv(self.features, 3, name='conv1')(x))
    y = self.conv(self.features, 3, name='conv2')(y)
    return x + self.res_scale * y


class Upsampler(nn.Module):
  """EDSR's upsampler, f32[B, h, w, C] → f32[B, h·scale, w·scale, C].

  scale 2^n: n stages of conv 3×3 (4C) + pixel_shuffle(2); scale 3: conv 3×3 (9C) +
  pixel_shuffle(3) (the official code's `common.Upsampler`, no activation).
  """
  conv: ModuleDef
  features: int
  scale: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.scale & (self.scale - 1) == 0:
      for i in range(self.scale.bit_length() - 1):
        x = pixel_shuffle(self.conv(4 * self.features, 3, name=f'conv{i + 1}')(x), 2)
    elif self.scale == 3:
      x = pixel_shuffle(self.conv(9 * self.features, 3, name='conv1')(x), 3)
    else:
      raise errors.UserError(f'EDSR upsamples by a power of 2 or by 3, not {self.scale}')
    return x


class EDSR(_SRModel):
  """EDSR (Lim et al. 2017, CVPRW), the official PyTorch code's structure:
  x f32[B, h, w, 3] RGB → f32[B, h·r, w·r, 3], r = `scale`.

      layer      op                                         output
      sub_mean   x − rgb_range · DIV2K_MEAN (fixed)         h×w×3
      head       conv 3×3, F                                h×w×F
      body       n_resblocks × ResBlock(F), conv 3×3 F,     h×w×F
                 + head's output (the long skip)
      upsample   Upsampler(F, r)                            hr×wr×F
      tail       conv 3×3, 3                                hr×wr×3
      add_mean   + rgb_range · DIV2K_MEAN (fixed)           hr×wr×3

  The baseline: F = 64, 16 blocks, res_scale 1 (EDSR proper: 256, 32, 0.1).
  Inputs and outputs are in [0, rgb_range]; cvjax's images are in [0, 1], hence
  rgb_range = 1 (the official code's default is 255; the parameters do not depend on
  it, but weights trained at 255 expect 255-scaled images). The mean shift is a
  constant, not a parameter (the official MeanShift conv has requires_grad False).
  """
  num_classes: int = 3  # ignored
  scale: int = 2
  features: int = 64
  n_resblocks: int = 16
  res_scale: float = 1.0
  rgb_range: float = 1.0

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    r = _check_scale('EDSR', self.scale)
    mean = self.rgb_range * jnp.asarray(DIV2K_MEAN, jnp.float32)
    x = x - mean
    x = self.sr_conv(self.features, 3, name='head')(x)
    y = x
    for i in range(self.n_resblocks):
      y = ResBlock(self.sr_conv, self.features, self.res_scale, name=f'block{i + 1}')(y)
    x = x + self.sr_conv(self.features, 3, name='body_end')(y)
    x = Upsampler(self.sr_conv, self.features, r, name='upsample')(x)
    x = self.sr_conv(3, 3, name='tail')(x)
    return jnp.asarray(x, jnp.float32) + mean


def _check_scale(model: str, scale: int) -> int:
  if not isinstance(scale, int) or scale < 1:
    raise errors.UserError(f'{model} scale must be a positive integer, got {scale!r}')
  return scale
