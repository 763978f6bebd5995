"""`GANTask` (task 'gan'): DCGAN's two networks and two optimizers in one train state.

    python -m experiments.generate --flagfile=experiments/configs/dcgan_fashion_mnist.flags

The model (`cvjax.models.dcgan.DCGAN`) holds both networks: its params and BatchNorm
statistics are {'generator': ..., 'discriminator': ...}, `generate(z, labels)` gives
images in [-1, 1] and `discriminate(x, labels)` logits f32[B]. The state's optimizer is
`per_network`: one optax chain per network (the run's optimizer, schedule and weight
decay for each; DCGAN's Adam with β1 = 0.5 is `--optimizer=adam --momentum=0.5`).

One train step, as PyTorch's DCGAN example alternates them:
  1. z ~ N(0, I) per example (the same draws on any device count), fakes = G(z).
  2. Discriminator: loss softplus(−D(real)) + softplus(D(fake)) (binary cross-entropy,
     real = 1), gradient into D only, D's optimizer steps.
  3. Generator: the non-saturating loss softplus(−D(G(z))) against the updated D,
     gradient into G only, G's optimizer steps.
BatchNorm statistics move as in that example: G's once per step (its forward in 1), D's
after each of its three passes (real, fake, and the fakes of step 3). Metrics: 'loss'
(d_loss + g_loss, the loop's divergence check), 'd_loss', 'g_loss', 'd_real' and
'd_fake' (D's mean probability of "real" on each).

Eval on the eval split's real images and as many fresh samples (fixed draws): 'd_loss'
(the main metric: higher means a generator the discriminator tells apart less well;
log 4 ≈ 1.386 at the game's equilibrium), 'g_loss', 'd_real', 'd_fake'. The Fréchet
distance and KID in a classifier's features: `python -m cvjax.sample --fd_classifier=...`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from cvjax.errors import UserError
from cvjax.tasks.generation import EVAL_KEY, GenerativeTask, to_uint8
from cvjax.tasks.means import MeanEvaluator, masked_sums
from cvjax.train import optim
from cvjax.train.task import per_example

NETWORKS = ('generator', 'discriminator')
_Z_STREAM = 1  # fold_in constant of the latent draws' key


class PerNetworkState(NamedTuple):
  """The optimizer state of each network."""
  generator: optax.OptState
  discriminator: optax.OptState


def per_network(generator: optax.GradientTransformation,
                discriminator: optax.GradientTransformation) -> optax.GradientTransformation:
  """One optax transformation over params {'generator', 'discriminator'}: each network
  with its own transformation and state. (`optax.multi_transform` would do the same for a
  simultaneous update; the alternating step updates one network at a time with
  `update_network`, which must leave the other's moments and counts alone.)"""
  parts = {'generator': generator, 'discriminator': discriminator}

  def init(params):
    return PerNetworkState(**{k: parts[k].init(params[k]) for k in NETWORKS})

  def update(grads, state, params=None):
    new, updates = {}, {}
    for k in NETWORKS:
      updates[k], new[k] = parts[k].update(grads[k], getattr(state, k),
                                           None if params is None else params[k])
    return updates, PerNetworkState(**new)
  return optax.GradientTransformation(init, update)


def _bce_real(logits):   # −log σ(l): the cross-entropy of "real"
  return jax.nn.softplus(-logits.astype(jnp.float32))


def _bce_fake(logits):   # −log(1 − σ(l)): the cross-entropy of "fake"
  return jax.nn.softplus(logits.astype(jnp.float32))


class GANTask(GenerativeTask):
  """DCGAN: alternating discriminator and generator updates in one jitted step."""
  name = 'gan'
  main_metric = 'd_loss'
  main_metric_higher_is_better = True
  pixel_range = 'symmetric'
  own_update = True

  def __init__(self, config, meta):
    super().__init__(config, meta)
    module = self.module()
    self.latent_dim = module.latent_dim
    self.conditional = bool(getattr(module, 'conditional', False))
    self._parts = None

  @classmethod
  def check(cls, config):
    super().check(config)
    refused = {'half_precision': ('fp16', 'its dynamic loss scale is for one loss; use '
                                  '--half_precision=bf16'),
               'grad_accum_steps': (None, 'accumulation is for one optimizer'),
               'freeze': (None, 'freezing is for transfer learning')}
    for name, (value, why) in refused.items():
      got = getattr(config, name)
      if (got == value) if value is not None else (got and got != 1):
        raise UserError(f'task=gan cannot use --{name}={got}: {why}; drop it')

  def optimizer(self, schedule, freezer=None):
    """`per_network` of two copies of the run's optimizer (same settings, own state)."""
    del freezer
    self._parts = {k: optim.make_optimizer(self.config, schedule) for k in NETWORKS}
    return per_network(self._parts['generator'], self._parts['discriminator'])

  def latents(self, key, local_batch: int, axis_name):
    """z f32[b, latent_dim] ~ N(0, I), per example of the global batch."""
    return per_example(key, lambda k: jax.random.normal(k, (self.latent_dim,)),
                       local_batch, axis_name)

  def update(self, state, batch, key, axis_name):
    if self._parts is None:
      raise UserError('GANTask.update needs the optimizers: call task.optimizer(schedule) '
                      'first (build_run does)')
    real = batch['image']
    labels = batch['label'] if self.conditional else None
    z = self.latents(jax.random.fold_in(key, _Z_STREAM), real.shape[0], axis_name)
    apply = state.apply_fn
    params, stats = state.params, state.batch_stats

    def run(method, p, s, x):
      out, new = apply({'params': p, 'batch_stats': s}, x, labels, train=True, method=method,
                       mutable=['batch_stats'])
      return out, new['batch_stats']

    def mean(x):
      x = jnp.mean(x)
      return x if axis_name is None else lax.pmean(x, axis_name)

    fakes, after_g = run('generate', params, stats, z)
    stats = {**stats, 'generator': after_g['generator']}
    fakes = lax.stop_gradient(fakes)

    def d_loss_fn(d_params):
      p = {**params, 'discriminator': d_params}
      real_logits, s = run('discriminate', p, stats, real)
      fake_logits, s = run('discriminate', p, s, fakes)
      loss = jnp.mean(_bce_real(real_logits)) + jnp.mean(_bce_fake(fake_logits))
      return loss, (s['discriminator'], real_logits, fake_logits)

    d_grads, (d_stats, real_logits, fake_logits) = jax.grad(d_loss_fn, has_aux=True)(
        params['discriminator'])
    if axis_name is not None:
      d_grads = lax.pmean(d_grads, axis_name)
    d_updates, d_opt = self._parts['discriminator'].update(
        d_grads, state.opt_state.discriminator, params['discriminator'])
    d_params = optax.apply_updates(params['discriminator'], d_updates)
    stats = {**stats, 'discriminator': d_stats}

    def g_loss_fn(g_params):
      p = {'generator': g_params, 'discriminator': d_params}
      images, _ = run('generate', p, stats, z)  # G's statistics moved once, above
      logits, s = run('discriminate', p, stats, images)
      return jnp.mean(_bce_real(logits)), s['discriminator']

    (g_loss, d_stats), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
        params['generator'])
    if axis_name is not None:
      g_grads = lax.pmean(g_grads, axis_name)
    g_updates, g_opt = self._parts['generator'].update(
        g_grads, state.opt_state.generator, params['generator'])
    g_params = optax.apply_updates(params['generator'], g_updates)
    stats = {**stats, 'discriminator': d_stats}
    new_state = state.replace(
        step=state.step + 1, params={'generator': g_params, 'discriminator': d_params},
        opt_state=PerNetworkState(generator=g_opt, discriminator=d_opt), batch_stats=stats)
    d_loss = mean(_bce_real(real_logits)) + mean(_bce_fake(fake_logits))
    g_loss = mean(g_loss)
    metrics = {'loss': d_loss + g_loss, 'd_loss': d_loss, 'g_loss': g_loss,
               'd_real': mean(jax.nn.sigmoid(real_logits.astype(jnp.float32))),
               'd_fake': mean(jax.nn.sigmoid(fake_logits.astype(jnp.float32)))}
    return new_state, metrics

  # ------------------------------------------------------------------ eval

  def eval_apply(self, apply_fn, variables, batch):
    real = batch['image']
    labels = batch['label'] if self.conditional else None
    z = self.latents(jax.random.PRNGKey(EVAL_KEY), real.shape[0], None)
    fakes = apply_fn(variables, z, labels, train=False, method='generate')
    return {'real': apply_fn(variables, real, labels, train=False, method='discriminate'),
            'fake': apply_fn(variables, fakes, labels, train=False, method='discriminate')}

  def loss(self, outputs, batch, axis_name):  # the step is `update`; kept for the protocol
    del batch, axis_name
    return jnp.mean(_bce_real(outputs['real']) + _bce_fake(outputs['fake'])), {}

  def eval_outputs(self, outputs, batch):
    real, fake = outputs['real'], outputs['fake']
    per_image = {'d_loss': _bce_real(real) + _bce_fake(fake), 'g_loss': _bce_real(fake),
                 'd_real': jax.nn.sigmoid(real.astype(jnp.float32)),
                 'd_fake': jax.nn.sigmoid(fake.astype(jnp.float32))}
    return masked_sums(per_image, batch), {}

  def evaluator(self):
    return MeanEvaluator(('d_loss', 'g_loss', 'd_real', 'd_fake'))

  # ------------------------------------------------------------- inference

  def generative(self, model, variables):
    generate = jax.jit(lambda v, z, labels: model.apply(v, z, labels, train=False,
                                                        method='generate'))
    latent, classes, conditional = self.latent_dim, self.num_classes, self.conditional

    def sample(n: int, seed: int = 0, labels=None):
      """n images from z ~ N(0, I) drawn with `seed`; a conditional GAN draws `labels`
      (int[n]; default 0, 1, ..., classes − 1 in turn)."""
      n = int(n)
      z = jax.random.normal(jax.random.PRNGKey(seed), (n, latent))
      if conditional:
        labels = np.arange(n) % classes if labels is None else np.asarray(labels, np.int32)
        if labels.shape != (n,) or labels.min() < 0 or labels.max() >= classes:
          raise UserError(f'labels must be {n} class indices in [0, {classes}), got '
                          f'{labels.tolist()}')
        labels = jnp.asarray(labels, jnp.int32)
      elif labels is not None:
        raise UserError('this GAN is not class-conditional: sample without labels')
      return to_uint8(generate(variables, z, labels), 'symmetric')
    return {'sample': sample}
