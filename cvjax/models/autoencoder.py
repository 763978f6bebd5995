"""A convolutional autoencoder and its denoising variant (task 'autoencoder').

x f32[B, H, W, C] in [0, 1] is coded to z f32[B, latent_dim] and decoded to Bernoulli
logits f32[B, H, W, C] (no sigmoid: train with `optax.sigmoid_binary_cross_entropy(logits,
x)`, show `jax.nn.sigmoid(logits)`). `num_classes` is a `Model` field the factory sets and
these models ignore. No BatchNorm.

      part      layer                                    output at 28×28×1   params
      encoder   conv1 3×3/2, 32, ReLU                    14×14×32               320
                conv2 3×3/2, 64, ReLU                     7×7×64             18,496
                flatten, code: dense latent_dim          32                 100,384
      decoder   fc: dense 7·7·64, reshape, ReLU           7×7×64            103,488
                deconv1 3×3/2 transposed, 32, ReLU       14×14×32            18,464
                deconv2 3×3/2 transposed, C              28×28×1                289
                                                                            241,441

`denoising_autoencoder` is the same network with noise_std 0.3 (Vincent et al. 2008,
with Gaussian corruption): in training the encoder sees x + N(0, 0.3²) clipped to
[0, 1], and the loss compares the reconstruction with the clean x.

The convs pad 1 on every side, so each halves an even H and W; the transposed convs
are 'SAME', so each doubles them. `widths` may be longer than two (one stride-2
conv per entry); H and W must then be multiples of 2^len(widths). The decoder builds
`image_shape`, which `decode(z)` needs without an image, and `__call__` checks x
against it. The transposed convs are not `nn.Conv`s, so `cvjax.summary` does not
count their multiply-adds.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cvjax import errors
from cvjax.models.base import Model, Net
from cvjax.models.layers import flatten

Array = Any


def check_image_shape(model: str, image_shape: Sequence[int],
                      downsamplings: int) -> tuple[int, ...]:
  """image_shape as (H, W, C), checked: H and W multiples of 2^downsamplings."""
  shape = tuple(image_shape)
  factor = 2 ** downsamplings
  if len(shape) != 3 or shape[0] % factor or shape[1] % factor or min(shape) < 1:
    raise errors.UserError(f'{model} image_shape must be (H, W, C) with H and W multiples of '
                           f'{factor}, got {shape}')
  return shape


def check_input(model: str, x: Array, image_shape: Sequence[int]) -> None:
  if tuple(x.shape[1:]) != tuple(image_shape):
    raise errors.UserError(f'{model} was built for images of shape {tuple(image_shape)} (H, W, C), '
                           f'got x of shape {tuple(x.shape)}; build it with '
                           f'image_shape={tuple(x.shape[1:])}')


class ConvEncoder(Net):
  """x f32[B, H, W, C] → z [B, latent_dim] (in `dtype`): a 3×3 stride-2 conv with ReLU
  per entry of `widths`, flatten, dense 'code'; gaussian: two dense heads instead,
  'mean' and 'logvar', and the pair (mean, logvar)."""
  latent_dim: int
  widths: Sequence[int] = (32, 64)
  gaussian: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array | tuple[Array, Array]:
    for i, width in enumerate(self.widths):
      x = nn.relu(self.conv(width, 3, strides=2, name=f'conv{i + 1}')(x))
    x = flatten(x)
    if self.gaussian:
      return (self.dense(self.latent_dim, name='mean')(x),
              self.dense(self.latent_dim, name='logvar')(x))
    return self.dense(self.latent_dim, name='code')(x)


class ConvDecoder(Net):
  """z f32[B, L] → f32[B, H, W, C] (in `dtype`, no output activation), H, W, C =
  `image_shape`: dense to (H, W) / 2^n × widths[-1] and ReLU, then n 3×3 stride-2
  transposed convs through reversed(widths[:-1]) to C, ReLU between them."""
  image_shape: Sequence[int] = (28, 28, 1)
  widths: Sequence[int] = (32, 64)

  @nn.compact
  def __call__(self, z: Array) -> Array:
    h, w, c = self.image_shape
    factor = 2 ** len(self.widths)
    x = self.dense(h // factor * (w // factor) * self.widths[-1], name='fc')(z)
    x = nn.relu(x.reshape((z.shape[0], h // factor, w // factor, self.widths[-1])))
    features = [*reversed(self.widths[:-1]), c]
    for i, width in enumerate(features):
      x = nn.ConvTranspose(width, (3, 3), (2, 2), padding='SAME', dtype=self.dtype,
                           param_dtype=self.param_dtype, name=f'deconv{i + 1}')(x)
      if i < len(features) - 1:
        x = nn.relu(x)
    return x


class ConvAutoencoder(Model):
  """x f32[B, H, W, C] in [0, 1] → reconstruction logits f32[B, H, W, C].

  encode(x, train=False) → z f32[B, latent_dim]; decode(z, train=False) → logits
  f32[B, H, W, C]; `__call__` is decode(encode(x, train)). With noise_std > 0 and
  train=True, `encode` corrupts x first (the noise from the 'dropout' rng stream:
  `apply(..., rngs={'dropout': key})`); in eval it codes x as it is.
  """
  num_classes: int = 10  # ignored
  latent_dim: int = 32
  widths: Sequence[int] = (32, 64)
  noise_std: float = 0.0
  image_shape: Sequence[int] = (28, 28, 1)

  def setup(self):
    shape = check_image_shape('ConvAutoencoder', self.image_shape, len(self.widths))
    options = self.net_options()
    self.encoder = ConvEncoder(latent_dim=self.latent_dim, widths=self.widths, **options)
    self.decoder = ConvDecoder(image_shape=shape, widths=self.widths, **options)

  def encode(self, x: Array, train: bool = False) -> Array:
    """x f32[B, H, W, C] in [0, 1] → z f32[B, latent_dim]."""
    x = jnp.asarray(x, jnp.float32)
    if train and self.noise_std > 0:
      noise = jax.random.normal(self.make_rng('dropout'), x.shape, jnp.float32)
      x = jnp.clip(x + self.noise_std * noise, 0.0, 1.0)
    return jnp.asarray(self.encoder(x), jnp.float32)

  def decode(self, z: Array, train: bool = False) -> Array:
    """z f32[B, latent_dim] → Bernoulli logits f32[B, H, W, C] (H, W, C = image_shape)."""
    return jnp.asarray(self.decoder(z), jnp.float32)

  def __call__(self, x: Array, train: bool = False) -> Array:
    check_input('ConvAutoencoder', x, self.image_shape)
    return self.decode(self.encode(x, train), train)
