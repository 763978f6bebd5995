"""Variational autoencoders (Kingma & Welling 2014): a convolutional one and Flax's MLP
example (task 'vae').

      model    encoder                                decoder                        params
      ConvVAE  conv 3×3/2 32, conv 3×3/2 64 (ReLU),   dense 7·7·64, ReLU, deconv      191,265
               flatten, dense L mean, dense L logvar  3×3/2 32 ReLU, deconv 3×3/2 C
      MLPVAE   flatten, dense 500 ReLU,               dense 500 ReLU, dense H·W·C,    815,824
               dense 20 mean, dense 20 logvar         reshape
  (at 28×28×1; ConvVAE's L = 16, its layers `autoencoder.ConvEncoder`'s with two heads
  and `autoencoder.ConvDecoder`'s.) MLPVAE is Flax's `examples/vae` (same layers, names and count) on
  images rather than flat vectors. A Gaussian likelihood adds one parameter.

`__call__(x, train=False)` with x f32[B, H, W, C] in [0, 1] returns a dict:
  'x'          f32[B, H, W, C]: the decoder's output for z (see `likelihood`)
  'mean'       f32[B, L], 'logvar' f32[B, L]: q(z | x) = N(mean, diag(exp(logvar)))
  'z'          f32[B, L]: mean + exp(logvar / 2) · ε, ε ~ N(0, I) (reparameterisation)
  'log_sigma'  f32[] (gaussian only): log of the decoder's learned noise scale
ε is drawn from the 'dropout' rng stream in training and in eval alike, since the ELBO
needs a sample either way: `apply(..., rngs={'dropout': key})`.

likelihood:
  'bernoulli'  'x' is logits: −log p(x | z) = sigmoid_binary_cross_entropy(logits, x).
  'gaussian'   'x' is the mean in [0, 1] (a sigmoid), with one learned scalar σ shared
               by every pixel (σ-VAE, Rybkin et al. 2021): −log p(x | z) is the sum
               over pixels of (x − mean)² / (2σ²) + log σ + log(2π) / 2; log σ starts at 0.
`num_classes` is a `Model` field the factory sets and these models ignore. No BatchNorm.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cvjax import errors
from cvjax.models.autoencoder import ConvDecoder, ConvEncoder, check_image_shape, check_input
from cvjax.models.base import Model, Net
from cvjax.models.layers import flatten

Array = Any
LIKELIHOODS = ('bernoulli', 'gaussian')


def reparameterize(key: Array, mean: Array, logvar: Array) -> Array:
  """z f32[B, L] = mean + exp(logvar / 2) · ε, ε ~ N(0, I) drawn with `key`."""
  eps = jax.random.normal(key, mean.shape, jnp.float32)
  return mean + jnp.exp(0.5 * logvar) * eps


class _VAE(Model):
  """What both VAEs share: the likelihood, its σ, the sample and the output dict.
  A subclass's `setup` calls this one's and sets `encoder` (x → (mean, logvar), in
  `dtype`) and `decoder` (z → f32[B, H, W, C] before the output activation)."""
  num_classes: int = 10  # ignored
  likelihood: str = 'bernoulli'
  image_shape: Sequence[int] = (28, 28, 1)

  def setup(self):
    if self.likelihood not in LIKELIHOODS:
      raise errors.unknown_choice('likelihood', self.likelihood, LIKELIHOODS)
    if self.likelihood == 'gaussian':
      self.log_sigma = self.param('log_sigma', nn.initializers.zeros, (), jnp.float32)

  def encode(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    """x f32[B, H, W, C] in [0, 1] → (mean f32[B, L], logvar f32[B, L])."""
    mean, logvar = self.encoder(jnp.asarray(x, jnp.float32))
    return jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32)

  def decode(self, z: Array, train: bool = False) -> Array:
    """z f32[B, L] → f32[B, H, W, C]: logits (bernoulli) or the mean in [0, 1] (gaussian)."""
    x = jnp.asarray(self.decoder(z), jnp.float32)
    return jax.nn.sigmoid(x) if self.likelihood == 'gaussian' else x

  def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
    check_input(type(self).__name__, x, self.image_shape)
    mean, logvar = self.encode(x, train)
    z = reparameterize(self.make_rng('dropout'), mean, logvar)
    out = {'x': self.decode(z, train), 'mean': mean, 'logvar': logvar, 'z': z}
    if self.likelihood == 'gaussian':
      out['log_sigma'] = self.log_sigma
    return out


class ConvVAE(_VAE):
  """The conv VAE: x f32[B, H, W, C] in [0, 1] → the dict of the module docstring.

  Parameters: encoder/conv1, conv2, mean, logvar (`autoencoder.ConvEncoder`),
  decoder/fc, deconv1, deconv2 (`autoencoder.ConvDecoder`), and log_sigma for 'gaussian'.
  """
  latent_dim: int = 16
  widths: Sequence[int] = (32, 64)

  def setup(self):
    super().setup()
    shape = check_image_shape('ConvVAE', self.image_shape, len(self.widths))
    options = self.net_options()
    self.encoder = ConvEncoder(latent_dim=self.latent_dim, widths=self.widths, gaussian=True,
                               **options)
    self.decoder = ConvDecoder(image_shape=shape, widths=self.widths, **options)


class MLPEncoder(Net):
  """Flax's examples/vae encoder: x f32[B, ...] → flatten, fc1 (hidden, ReLU) →
  (fc2_mean, fc2_logvar), each [B, latent_dim] in `dtype`."""
  hidden: int = 500
  latent_dim: int = 20

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    x = nn.relu(self.dense(self.hidden, name='fc1')(flatten(x)))
    return (self.dense(self.latent_dim, name='fc2_mean')(x),
            self.dense(self.latent_dim, name='fc2_logvar')(x))


class MLPDecoder(Net):
  """Flax's examples/vae decoder: z f32[B, L] → fc1 (hidden, ReLU) → fc2 (H·W·C),
  reshaped to [B, H, W, C] (`image_shape`) in `dtype`."""
  hidden: int = 500
  image_shape: Sequence[int] = (28, 28, 1)

  @nn.compact
  def __call__(self, z: Array) -> Array:
    z = nn.relu(self.dense(self.hidden, name='fc1')(z))
    z = self.dense(math.prod(self.image_shape), name='fc2')(z)
    return z.reshape((z.shape[0], *self.image_shape))


class MLPVAE(_VAE):
  """Flax's examples/vae: x f32[B, H, W, C] in [0, 1] → the dict of the module docstring.

  At 28×28×1: 784·500 + 500 (encoder/fc1) + 2 · (500·20 + 20) (fc2_mean, fc2_logvar)
  + 20·500 + 500 (decoder/fc1) + 500·784 + 784 (decoder/fc2) = 815,824.
  """
  hidden: int = 500
  latent_dim: int = 20

  def setup(self):
    super().setup()
    shape = check_image_shape('MLPVAE', self.image_shape, 0)
    options = self.net_options()
    self.encoder = MLPEncoder(hidden=self.hidden, latent_dim=self.latent_dim, **options)
    self.decoder = MLPDecoder(hidden=self.hidden, image_shape=shape, **options)
