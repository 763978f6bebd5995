"""The DDPM U-Net (Ho, Jain & Abbeel 2020), small, for 28×28 images (task 'diffusion').

x_t f32[B, H, W, C] and the time index t → the predicted noise ε f32[B, H, W, C]. The
structure is the paper's (its `diffusion_tf/models/unet.py`) with base 32 channels,
multipliers (1, 2, 2) and 8 GroupNorm groups instead of 128, (1, 2, 2, 2) and 32:

      stage    layers                                           output at 28×28×1     params
      time     sinusoid(t) 32 → dense 128, swish → dense 128    128                   20,736
      conv_in  conv 3×3, 32                                     28×28×32                 320
      down1    2 × ResBlock(32); downsample conv 3×3/2          14×14×32              54,752
      down2    2 × ResBlock(64); downsample conv 3×3/2          7×7×64               185,280
      down3    2 × [ResBlock(64), attention]                    7×7×64               198,272
      middle   ResBlock(64), attention, ResBlock(64)            7×7×64               181,504
      up3      3 × [ResBlock(64) of [h, skip], attention]; ×2   14×14×64             470,080
      up2      3 × ResBlock(64) of [h, skip]; ×2                28×28×64             399,232
      up1      3 × ResBlock(32) of [h, skip]                    28×28×32             112,640
      out      GroupNorm, swish, conv 3×3, C                    28×28×C                  353
                                                                                   1,623,169
  ResBlock(c): GroupNorm, swish, conv 3×3 c, + dense_c(swish(time)), GroupNorm, swish,
    dropout, conv 3×3 c; a 1×1 conv on the shortcut when the channels change.
  attention: GroupNorm, q, k, v 1×1 convs, one head, softmax over the H·W positions
    (scaled by 1/√c), 1×1 projection, added to the input. It follows every ResBlock at a
    size in `attention_resolutions` (7: two down, the middle, three up).
  ×2: nearest-neighbour upsampling, then conv 3×3. Skips: every down ResBlock's and
    downsample's output, and conv_in's, concatenated to the up path's input in reverse.

H and W must be multiples of 2^(len(channel_mults) − 1). The time embedding is the
Transformer's (sin then cos, frequencies 10000^(−i / (base/2 − 1))), of t as given (integer
steps 0 … T − 1, or float times). Weights are the reference's: uniform fan-avg
variance-scaling, and zero for the last conv of each ResBlock, the attention's
projection and the output conv, so every block starts as the identity and the
untrained model predicts ε = 0. `num_classes` is a `Model` field the factory sets
and this model ignores. No BatchNorm; dropout draws from the 'dropout' rng stream.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cvjax import errors
from cvjax.models.base import Model

Array = Any
ModuleDef = Any

DDPM_INIT = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
ZERO_INIT = nn.initializers.zeros


def timestep_embedding(t: Array, dim: int) -> Array:
  """t f32[B] → f32[B, dim]: [sin(t·f_i), cos(t·f_i)], f_i = 10000^(−i / (dim/2 − 1))."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
  args = t[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class ResBlock(nn.Module):
  """x f32[B, H, W, C], temb f32[B, T] → f32[B, H, W, features] (see the module docstring).

  conv: `conv(features, kernel_size, name=...)`; dense: `dense(features, name=...)`;
  norm: a GroupNorm constructor.
  """
  conv: ModuleDef
  dense: ModuleDef
  norm: ModuleDef
  features: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x: Array, temb: Array, train: bool = False) -> Array:
    h = self.conv(self.features, 3, name='conv1')(nn.swish(self.norm(name='norm1')(x)))
    h = h + self.dense(self.features, name='temb')(nn.swish(temb))[:, None, None, :]
    h = nn.swish(self.norm(name='norm2')(h))
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    h = self.conv(self.features, 3, kernel_init=ZERO_INIT, name='conv2')(h)
    if x.shape[-1] != self.features:
      x = self.conv(self.features, 1, name='shortcut')(x)
    return x + h


class AttentionBlock(nn.Module):
  """x f32[B, H, W, C] → same: x + proj(softmax(q·kᵀ / √C) · v), one head over H·W."""
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    y = self.norm(name='norm')(x)
    q, k, v = (self.conv(c, 1, name=n)(y).reshape(b, h * w, c) for n in ('q', 'k', 'v'))
    logits = jnp.einsum('bic,bjc->bij', q, k) / math.sqrt(c)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    y = jnp.einsum('bij,bjc->bic', weights, v).reshape(b, h, w, c)
    return x + self.conv(c, 1, kernel_init=ZERO_INIT, name='proj')(y)


class DiffusionUNet(Model):
  """x f32[B, H, W, C] (a noisy image x_t), t int32[B] or f32[B] (None: zeros) →
  predicted noise ε f32[B, H, W, C]."""
  num_classes: int = 10  # ignored
  base: int = 32
  channel_mults: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 2
  dropout_rate: float = 0.1
  attention_resolutions: Sequence[int] = (7,)
  num_groups: int = 8

  @nn.compact
  def __call__(self, x: Array, t: Array | None = None, train: bool = False) -> Array:
    b, height, width, channels = x.shape
    levels = len(self.channel_mults)
    if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
      raise errors.UserError(f'DiffusionUNet with {levels} levels needs H and W multiples of '
                             f'{2 ** (levels - 1)}, got {height}×{width}')
    t = jnp.zeros((b,), jnp.float32) if t is None else jnp.asarray(t, jnp.float32)
    t = jnp.broadcast_to(t, (b,))
    conv = partial(self.conv, kernel_init=DDPM_INIT)
    dense = partial(self.dense, kernel_init=DDPM_INIT)
    norm = partial(nn.GroupNorm, num_groups=self.num_groups, dtype=self.dtype,
                   param_dtype=self.param_dtype)
    block = partial(ResBlock, conv, dense, norm, dropout_rate=self.dropout_rate)
    attention = partial(AttentionBlock, conv, norm)

    temb = dense(4 * self.base, name='time_fc1')(timestep_embedding(t, self.base))
    temb = dense(4 * self.base, name='time_fc2')(nn.swish(temb))

    hs = [conv(self.base, 3, name='conv_in')(jnp.asarray(x, jnp.float32))]
    for i, mult in enumerate(self.channel_mults):
      for j in range(self.num_res_blocks):
        h = block(self.base * mult, name=f'down{i + 1}_block{j + 1}')(hs[-1], temb, train)
        if h.shape[1] in self.attention_resolutions:
          h = attention(name=f'down{i + 1}_attn{j + 1}')(h)
        hs.append(h)
      if i < levels - 1:
        hs.append(conv(hs[-1].shape[-1], 3, strides=2, name=f'down{i + 1}_downsample')(hs[-1]))

    h = hs[-1]
    h = block(h.shape[-1], name='mid_block1')(h, temb, train)
    h = attention(name='mid_attn')(h)
    h = block(h.shape[-1], name='mid_block2')(h, temb, train)

    for i in reversed(range(levels)):
      for j in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = block(self.base * self.channel_mults[i], name=f'up{i + 1}_block{j + 1}')(h, temb, train)
        if h.shape[1] in self.attention_resolutions:
          h = attention(name=f'up{i + 1}_attn{j + 1}')(h)
      if i > 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = conv(h.shape[-1], 3, name=f'up{i + 1}_upsample')(h)

    h = nn.swish(norm(name='norm_out')(h))
    h = conv(channels, 3, kernel_init=ZERO_INIT, name='conv_out')(h)
    return jnp.asarray(h, jnp.float32)
