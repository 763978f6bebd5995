"""Image generation on the one loop: the shared base, the autoencoder and the VAE.

    python -m experiments.generate --flagfile=experiments/configs/vae_fashion_mnist.flags

Every generative task reads a classification dataset's images (and labels, which only a
conditional GAN uses) through the one pipeline: {'image': f32[B, H, W, C], 'label':
int32[B]}, with no augmentation unless `--augment` asks for some, scaled to [0, 1]
(autoencoders, VAEs: Bernoulli likelihoods) or [-1, 1] (GANs and diffusion: tanh and
Gaussian noise). Tasks:

  autoencoder  `cvjax.models.autoencoder`: images → Bernoulli logits of the same image;
               loss: the reconstruction's cross-entropy in nats per image; eval: 'loss'
               (main, lower is better) and 'mse' (per pixel, [0, 1] scale).
  vae          `cvjax.models.vae`: loss: the negative ELBO in nats per image, reconstruction
               (−log p(x|z), one z by the reparameterisation trick) + KL(q(z|x) ‖ N(0, I));
               eval: 'neg_elbo' (main), 'reconstruction', 'kl' and with `--iw_samples` K
               'iw_nll', −log of Burda et al.'s importance-weighted bound.
  gan          `cvjax.tasks.gan`; diffusion: `cvjax.tasks.diffusion`.

Grey pixels are not binary: the Bernoulli "likelihood" of a grey level is the
cross-entropy the Flax VAE example and most papers on non-binarised data report, a
number comparable between models trained alike, not a density of 8-bit data.

`cvjax.restore` of a run adds `sample`, and for autoencoders and VAEs `encode`, `decode`
and `reconstruct` (`generative`); `python -m cvjax.sample` draws grids from them.
"""
from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
import numpy as np

from cvjax import data, models
from cvjax.errors import UserError
from cvjax.generation import elbo
from cvjax.tasks.means import MeanEvaluator, masked_sums
from cvjax.train import factory
from cvjax.train.task import Task, image_batches

# Settings of image classification that have no meaning when images are learned.
_NOT_FOR_GENERATION = {'mixup_alpha': 'mixes labels', 'cutmix_alpha': 'mixes labels',
                       'tta': 'averages class probabilities', 'label_smoothing': 'smooths labels',
                       'preprocessing': 'normalises for imported classifier weights'}
# The evaluation's latent draws and noise: one fixed key, so every evaluation of a run (and
# of its checkpoints) scores the same draws.
EVAL_KEY = 0


def to_uint8(images, pixel_range: str) -> np.ndarray:
  """f32[..., C] images in the task's range ('unit': [0, 1], 'symmetric': [-1, 1]) →
  uint8 (clipped, rounded)."""
  x = np.asarray(images, np.float32)
  if pixel_range == 'symmetric':
    x = (x + 1.0) / 2.0
  return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def from_uint8(images: np.ndarray, pixel_range: str) -> np.ndarray:
  """uint8[B, H, W, C] → f32 in the task's range."""
  x = np.asarray(images, np.float32) / 255.0
  return x * 2.0 - 1.0 if pixel_range == 'symmetric' else x


class GenerativeTask(Task):
  """What every generative task shares: images of a classification dataset in the task's
  pixel range, no augmentation by default, the settings that mean nothing here refused."""
  pixel_range = 'unit'            # 'unit' [0, 1] or 'symmetric' [-1, 1]
  main_metric_higher_is_better = False

  @classmethod
  def check(cls, config):
    for name, why in _NOT_FOR_GENERATION.items():
      if getattr(config, name):
        raise UserError(f'task={cls.name} learns images, not labels: --{name} {why}; drop it')
    if models.model_task(config.model) != cls.name:
      offered = ', '.join(models.list_models(cls.name))
      raise UserError(f'task={cls.name} needs one of its models ({offered}), got {config.model}')
    super().check(dataclasses.replace(config, augment=config.augment or ''))

  @classmethod
  def dataset_meta(cls, config):
    return data.dataset_meta(config.dataset, data_dir=config.data_dir,
                             raw_data_dir=config.raw_data_dir)

  def module(self):
    """The model as the factory builds it for inference (its fields: likelihood, latents)."""
    return factory.build_model(self.config, self.num_classes, bn_axis_name=None)

  def data_spec(self):
    spec = data.classification.data_spec(self.config.dataset, self.meta,
                                         image_size=self.image_size, channels=self.channels)
    # The classification tail ends with the dataset's normalize: replace it by the range.
    tail = spec.tail.rsplit('|', 1)[0]
    if self.preprocessing():
      tail = f'{tail}|{self.preprocessing()}'
    return dataclasses.replace(spec, tail=tail, default_augment='')

  def train_batches(self, sharding, start_step: int):
    c = self.config
    return data.pipeline.train_batches(
        self.data_spec(), global_batch_size=c.batch_size, sharding=sharding, seed=c.seed,
        start_step=start_step, augment=c.augment or '', split=c.train_split,
        data_dir=c.data_dir, num_examples=self.meta.split_sizes[c.train_split])

  def preprocessing(self):
    if self.pixel_range == 'unit':
      return ''
    half = (0.5,) * self.channels
    return f'normalize({half}, {half})'

  def images_in(self, images) -> jax.Array:
    """uint8[B, H, W, C] (or [H, W, C], or a list) → f32 in the pixel range at the model's
    size and channels, as evaluation prepares them."""
    batches = image_batches(images)
    x = np.concatenate(batches)
    size, channels = self.image_size, self.channels
    if x.shape[1:] != (size, size, channels):
      raise UserError(f'{self.name} models take uint8[B, {size}, {size}, {channels}] images, '
                      f'got shape {list(x.shape)}')
    return jnp.asarray(from_uint8(x, self.pixel_range))

  def codec(self, variables, encode_fn, decode_fn) -> dict:
    """`restore`'s 'encode' (uint8 images → f32[B, latent] codes), 'decode' (codes → uint8
    images in [0, 1]'s 256 levels) and 'reconstruct' (both), from jitted
    encode_fn(variables, x) and decode_fn(variables, z) → pixels in [0, 1]."""
    def encode(images):
      return np.asarray(encode_fn(variables, self.images_in(images)))

    def decode(codes):
      return to_uint8(decode_fn(variables, jnp.asarray(codes, jnp.float32)), 'unit')

    def reconstruct(images):
      return decode(encode(images))
    return {'encode': encode, 'decode': decode, 'reconstruct': reconstruct}

  def predictor(self, model, variables, probabilities=None):
    """A generative run has no class probabilities: `predict` says what to use instead."""
    del model, variables, probabilities
    task = self.name

    def predict(images):
      del images
      raise UserError(f'a {task} run has no predict: use sample (and for autoencoders '
                      'encode, decode, reconstruct) of cvjax.restore')
    return predict


class AutoencoderTask(GenerativeTask):
  """Images → their reconstruction's Bernoulli logits; cross-entropy in nats per image."""
  name = 'autoencoder'
  main_metric = 'loss'

  def loss(self, logits, batch, axis_name):
    del axis_name
    x = batch['image']
    nats = -elbo.bernoulli_log_likelihood(logits, x)
    mse = jnp.mean(jnp.square(jax.nn.sigmoid(logits.astype(jnp.float32)) - x))
    return jnp.mean(nats), {'mse': mse}

  def eval_outputs(self, logits, batch):
    x = batch['image']
    per_image = {'loss': -elbo.bernoulli_log_likelihood(logits, x),
                 'mse': jnp.mean(jnp.square(jax.nn.sigmoid(logits.astype(jnp.float32)) - x),
                                 axis=(1, 2, 3))}
    return masked_sums(per_image, batch), {}

  def evaluator(self):
    return MeanEvaluator(('loss', 'mse'))

  def generative(self, model, variables):
    encode_fn = jax.jit(lambda v, x: model.apply(v, x, method='encode'))
    decode_fn = jax.jit(lambda v, z: jax.nn.sigmoid(model.apply(v, z, method='decode')))

    def sample(n, seed=0):
      del n, seed
      raise UserError('a plain autoencoder has no prior to sample codes from: train a VAE '
                      '(task vae) to sample, or use reconstruct')
    return {'sample': sample, **self.codec(variables, encode_fn, decode_fn)}


class VAETask(GenerativeTask):
  """Images → (decoder output, posterior mean and log-variance, z); negative ELBO in nats."""
  name = 'vae'
  main_metric = 'neg_elbo'

  def __init__(self, config, meta):
    super().__init__(config, meta)
    module = self.module()
    self.likelihood = getattr(module, 'likelihood', 'bernoulli')
    self.latent_dim = module.latent_dim

  def log_likelihood(self, outputs: dict, x: jax.Array) -> jax.Array:
    """log p(x|z) per image, nats: f32[B]."""
    if self.likelihood == 'gaussian':
      return elbo.gaussian_log_likelihood(outputs['x'], outputs['log_sigma'], x)
    return elbo.bernoulli_log_likelihood(outputs['x'], x)

  def terms(self, outputs: dict, x: jax.Array) -> dict:
    """Per image: 'reconstruction' −log p(x|z), 'kl', 'neg_elbo' their sum; f32[B] each."""
    reconstruction = -self.log_likelihood(outputs, x)
    kl = elbo.gaussian_kl(outputs['mean'], outputs['logvar'])
    return {'neg_elbo': reconstruction + kl, 'reconstruction': reconstruction, 'kl': kl}

  def loss(self, outputs, batch, axis_name):
    del axis_name
    terms = self.terms(outputs, batch['image'])
    return jnp.mean(terms['neg_elbo']), {'reconstruction': jnp.mean(terms['reconstruction']),
                                         'kl': jnp.mean(terms['kl'])}

  def eval_apply(self, apply_fn, variables, batch):
    """The model with a fixed draw of z; with iw_samples K, also −log of the K-sample
    importance-weighted bound ('iw_nll', f32[B])."""
    x = batch['image']
    key = jax.random.PRNGKey(EVAL_KEY)
    outputs = apply_fn(variables, x, train=False, rngs={'dropout': key})
    k = self.config.iw_samples
    if not k:
      return outputs
    mean, logvar = apply_fn(variables, x, method='encode')
    eps = jax.random.normal(jax.random.fold_in(key, 1), (k,) + mean.shape, mean.dtype)
    z = mean + jnp.exp(0.5 * logvar) * eps                                    # [K, B, L]

    def log_weight(z_k):
      decoded = {**outputs, 'x': apply_fn(variables, z_k, method='decode')}
      return (self.log_likelihood(decoded, x)
              + elbo.log_normal(z_k, jnp.zeros_like(z_k), jnp.zeros_like(z_k))
              - elbo.log_normal(z_k, mean, logvar))
    log_w = jax.lax.map(log_weight, z)                                        # [K, B]
    bound = elbo.importance_weighted_bound(log_w, jnp.zeros_like(log_w), jnp.zeros_like(log_w))
    return {**outputs, 'iw_nll': -bound}

  def eval_outputs(self, outputs, batch):
    per_image = self.terms(outputs, batch['image'])
    if 'iw_nll' in outputs:
      per_image['iw_nll'] = outputs['iw_nll']
    return masked_sums(per_image, batch), {}

  def evaluator(self):
    keys = ('neg_elbo', 'reconstruction', 'kl')
    return MeanEvaluator(keys + (('iw_nll',) if self.config.iw_samples else ()))

  def decoded_images(self, decoder_output: jax.Array) -> jax.Array:
    """The decoder's output as an image in [0, 1]: Bernoulli means σ(logits), or the
    Gaussian means."""
    if self.likelihood == 'gaussian':
      return decoder_output
    return jax.nn.sigmoid(decoder_output.astype(jnp.float32))

  def generative(self, model, variables):
    encode_fn = jax.jit(lambda v, x: model.apply(v, x, method='encode')[0])
    decode_fn = jax.jit(lambda v, z: self.decoded_images(model.apply(v, z, method='decode')))
    latent = self.latent_dim
    codec = self.codec(variables, encode_fn, decode_fn)

    def sample(n: int, seed: int = 0):
      """n images decoded from z ~ N(0, I) drawn with `seed` (the decoder's means)."""
      z = jax.random.normal(jax.random.PRNGKey(seed), (int(n), latent))
      return codec['decode'](z)
    return {'sample': sample, **codec}

