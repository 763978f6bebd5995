"""DCGAN (Radford, Metz & Chintala 2016), unconditional or class-conditional (task 'gan').

One module holds both networks, as submodules `generator` and `discriminator`, so
their parameters and BatchNorm statistics sit under those two top-level keys and are
trained as two optimisers' parameters:

    images = model.apply(v, z, labels, train=True, method='generate', mutable=['batch_stats'])
    logits = model.apply(v, x, labels, train=True, method='discriminate', mutable=['batch_stats'])

At 28×28×C (base 7×7, two upsamplings), width w = 64, latent 100:

      network        layer                                      output     params (C = 1)
      generator      fc: dense 7·7·4w, reshape, BN, ReLU        7×7×256     1,254,912
                     deconv1 4×4/2, 2w, BN, ReLU               14×14×128      524,544
                     deconv2 4×4/2, C, tanh                    28×28×C          2,049
      discriminator  conv1 4×4/2 pad 1, w, LeakyReLU 0.2       14×14×64         1,088
                     conv2 4×4/2 pad 1, 2w, BN, LeakyReLU 0.2   7×7×128       131,328
                     fc: flatten, dense 1                       1               6,273
                                                                             1,920,194
  (dcgan_conditional, 10 classes: 2,055,874.) At 32×32 the base is 4×4 and there are three
  upsamplings (4w → 2w → w → C) and three discriminator convs (w → 2w → 4w).

The paper's choices: no pooling (strided convs and transposed convs), BatchNorm in
both networks except the generator's output and the discriminator's input layers, ReLU
and a tanh output in the generator, LeakyReLU 0.2 in the discriminator, and weights
from N(0, 0.02) (BatchNorm's scale from N(1, 0.02), as the PyTorch example does).
Layers followed by BatchNorm have no bias. Conditional (Mirza & Osindero 2014): the
generator sees [z, one_hot(label)], the discriminator the image with one_hot(label)
broadcast to K extra channels. Images are in [-1, 1] (x·2 − 1 for [0, 1] data).
The transposed convs are not `nn.Conv`s, so `cvjax.summary` does not count their
multiply-adds.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cvjax import errors
from cvjax.models.base import BNModel, BNNet
from cvjax.models.layers import flatten

Array = Any

DCGAN_INIT = nn.initializers.normal(0.02)


def _bn_scale_init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _upsamplings(image_shape: Sequence[int]) -> int:
  h, w, _ = image_shape
  if (h, w) == (28, 28):
    return 2
  if (h, w) == (32, 32):
    return 3
  raise errors.UserError(f'DCGAN is sized for 28×28 or 32×32 images, got image_shape '
                         f'{tuple(image_shape)}; use (28, 28, C) or (32, 32, C)')


class Generator(BNNet):
  """z f32[B, latent] (with one-hot labels concatenated when conditional) → images
  f32[B, H, W, C] in [-1, 1] (in `dtype`): dense to a base×base×4w map, then one 4×4
  stride-2 transposed conv per upsampling, halving the width, the last to C."""
  image_shape: Sequence[int] = (28, 28, 1)
  width: int = 64

  @nn.compact
  def __call__(self, z: Array, train: bool = False) -> Array:
    n = _upsamplings(self.image_shape)
    base = self.image_shape[0] >> n
    norm = self.norm(train, scale_init=_bn_scale_init)
    features = 4 * self.width
    x = self.dense(base * base * features, use_bias=False, kernel_init=DCGAN_INIT, name='fc')(z)
    x = x.reshape((z.shape[0], base, base, features))
    x = nn.relu(norm(name='bn0')(x))
    for i in range(n):
      last = i == n - 1
      features = self.image_shape[2] if last else features // 2
      x = nn.ConvTranspose(features, (4, 4), (2, 2), padding='SAME', use_bias=last,
                           kernel_init=DCGAN_INIT, dtype=self.dtype,
                           param_dtype=self.param_dtype, name=f'deconv{i + 1}')(x)
      x = jnp.tanh(x) if last else nn.relu(norm(name=f'bn{i + 1}')(x))
    return x


class Discriminator(BNNet):
  """x f32[B, H, W, C'] → logits f32[B] (real vs generated): one 4×4 stride-2 conv
  (pad 1) per upsampling of the generator, widths w, 2w, 4w, LeakyReLU 0.2, BatchNorm
  after all but the first; flatten; dense 1."""
  image_shape: Sequence[int] = (28, 28, 1)
  width: int = 64

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    norm = self.norm(train, scale_init=_bn_scale_init)
    for i in range(_upsamplings(self.image_shape)):
      x = self.conv(self.width * 2 ** i, 4, strides=2, padding=1, use_bias=i == 0,
                    kernel_init=DCGAN_INIT, name=f'conv{i + 1}')(x)
      if i > 0:
        x = norm(name=f'bn{i + 1}')(x)
      x = nn.leaky_relu(x, 0.2)
    x = self.dense(1, kernel_init=DCGAN_INIT, name='fc')(flatten(x))
    return x[:, 0]


class DCGAN(BNModel):
  """The generator and the discriminator of a DCGAN, for `image_shape` (28 or 32 pixels).

  generate(z, labels=None, train=False): z f32[B, latent_dim] → images f32[B, H, W, C]
    in [-1, 1].
  discriminate(x, labels=None, train=False): x f32[B, H, W, C] in [-1, 1] → logits
    f32[B] (sigmoid: the probability that x is real).
  labels: int32[B] in [0, num_classes), needed when `conditional`; the unconditional
  model ignores them. Both update their network's BatchNorm statistics in training
  (`mutable=['batch_stats']`).
  `__call__(x, train=False)` is `discriminate(x, zeros)`; while initialising it also
  runs the generator on zeros, so `init` creates both networks' variables.
  """
  num_classes: int = 10  # the labels' classes when conditional
  latent_dim: int = 100
  width: int = 64
  conditional: bool = False
  image_shape: Sequence[int] = (28, 28, 1)

  def setup(self):
    options = dict(image_shape=tuple(self.image_shape), width=self.width, **self.net_options())
    self.generator = Generator(**options)
    self.discriminator = Discriminator(**options)

  def _one_hot(self, labels: Array | None, batch: int) -> Array:
    if labels is None:
      raise errors.UserError('the conditional DCGAN needs labels, int32[B] in '
                             f'[0, {self.num_classes}), for generate and discriminate')
    return jax.nn.one_hot(jnp.reshape(labels, (batch,)), self.num_classes, dtype=jnp.float32)

  def generate(self, z: Array, labels: Array | None = None, train: bool = False) -> Array:
    """z f32[B, latent_dim] (labels int32[B] if conditional) → images f32[B, H, W, C] in [-1, 1]."""
    z = jnp.asarray(z, jnp.float32)
    if self.conditional:
      z = jnp.concatenate([z, self._one_hot(labels, z.shape[0])], axis=-1)
    return jnp.asarray(self.generator(z, train), jnp.float32)

  def discriminate(self, x: Array, labels: Array | None = None, train: bool = False) -> Array:
    """x f32[B, H, W, C] in [-1, 1] (labels int32[B] if conditional) → logits f32[B]."""
    x = jnp.asarray(x, jnp.float32)
    if self.conditional:
      planes = self._one_hot(labels, x.shape[0])[:, None, None, :]
      x = jnp.concatenate([x, jnp.broadcast_to(planes, (*x.shape[:3], self.num_classes))], -1)
    return jnp.asarray(self.discriminator(x, train), jnp.float32)

  def __call__(self, x: Array, train: bool = False) -> Array:
    labels = jnp.zeros((x.shape[0],), jnp.int32)
    if self.is_initializing():
      self.generate(jnp.zeros((x.shape[0], self.latent_dim), jnp.float32), labels, train)
    return self.discriminate(x, labels, train)
