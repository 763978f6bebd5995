"""`DiffusionTask` (task 'diffusion'): DDPM (Ho et al. 2020) with ε-prediction.

    python -m experiments.generate --flagfile=experiments/configs/ddpm_fashion_mnist.flags

Images in [-1, 1]. Each train step draws, per example and the same on any device count,
a noise level t ~ U{0, ..., T−1} and ε ~ N(0, I), makes x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε
(`cvjax.generation.diffusion.q_sample`) and trains the U-Net (`cvjax.models.unet`)
`model(x_t, t)` towards ε: loss = the mean squared error over pixels (Ho et al.'s
simplified objective). T = `--diffusion_steps` noise levels on `--diffusion_schedule`
('linear' or 'cosine'). Eval: the same loss on the eval split with fixed draws ('loss',
the main metric, lower is better).

`sample(n, seed, steps=None, eta=0.0)` of `cvjax.restore`: ancestral sampling through
all T levels (steps=None), or DDIM (Song et al. 2021) with `steps` levels and `eta`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cvjax.errors import UserError
from cvjax.generation import diffusion
from cvjax.tasks.generation import EVAL_KEY, GenerativeTask, to_uint8
from cvjax.tasks.means import MeanEvaluator, masked_sums
from cvjax.train.task import per_example


class DiffusionTask(GenerativeTask):
  """x_t, t → ε; mean squared error; ancestral or DDIM sampling."""
  name = 'diffusion'
  main_metric = 'loss'
  pixel_range = 'symmetric'

  def __init__(self, config, meta):
    super().__init__(config, meta)
    self.schedule = diffusion.make_schedule(config.diffusion_schedule, config.diffusion_steps)

  def noised(self, batch: dict, key: jax.Array, axis_name) -> dict:
    """The batch with 't' int32[b], 'noise' f32[b, H, W, C] and 'noisy' x_t, drawn per
    example of the global batch from `key`."""
    x = batch['image']
    steps = self.schedule.num_steps
    t = per_example(jax.random.fold_in(key, 0),
                    lambda k: jax.random.randint(k, (), 0, steps), x.shape[0], axis_name)
    noise = per_example(jax.random.fold_in(key, 1),
                        lambda k: jax.random.normal(k, x.shape[1:], x.dtype), x.shape[0],
                        axis_name)
    return {**batch, 't': t, 'noise': noise,
            'noisy': diffusion.q_sample(self.schedule, x, t, noise)}

  def draw_noise(self, batch, key, axis_name):
    return self.noised(batch, key, axis_name)

  def train_apply(self, apply_fn, variables, batch, *, rngs, mutable):
    return apply_fn(variables, batch['noisy'], batch['t'], train=True, rngs=rngs,
                    mutable=mutable)

  def loss(self, eps, batch, axis_name):
    del axis_name
    return jnp.mean(jnp.square(eps.astype(jnp.float32) - batch['noise'])), {}

  def eval_apply(self, apply_fn, variables, batch):
    batch = self.noised(batch, jax.random.PRNGKey(EVAL_KEY), None)
    return {'eps': apply_fn(variables, batch['noisy'], batch['t'], train=False),
            'noise': batch['noise']}

  def eval_outputs(self, outputs, batch):
    error = jnp.square(outputs['eps'].astype(jnp.float32) - outputs['noise'])
    return masked_sums({'loss': jnp.mean(error, axis=(1, 2, 3))}, batch), {}

  def evaluator(self):
    return MeanEvaluator(('loss',))

  def generative(self, model, variables):
    schedule = self.schedule
    shape = (self.image_size, self.image_size, self.channels)

    def eps_fn(x, t):
      return model.apply(variables, x, t, train=False).astype(jnp.float32)

    def sample(n: int, seed: int = 0, steps: int | None = None, eta: float = 0.0):
      """n images from x_T ~ N(0, I) drawn with `seed`: ancestral sampling over all T
      levels (steps None), else DDIM over `steps` levels with `eta` (0: deterministic)."""
      key = jax.random.PRNGKey(seed)
      full = (int(n),) + shape
      if steps is None:
        images = jax.jit(lambda k: diffusion.ddpm_sample(eps_fn, schedule, full, k))(key)
      else:
        if not 1 <= int(steps) <= schedule.num_steps:
          raise UserError(f'steps must be in [1, {schedule.num_steps}] (the run\'s noise '
                          f'levels), got {steps}')
        images = jax.jit(lambda k: diffusion.ddim_sample(eps_fn, schedule, full, k,
                                                         int(steps), eta=float(eta)))(key)
      return to_uint8(np.asarray(images), 'symmetric')
    return {'sample': sample}
