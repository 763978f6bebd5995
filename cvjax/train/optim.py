"""Optimizers and learning-rate schedules, all from optax."""
from __future__ import annotations

import jax
import optax

from cvjax.train.config import TrainConfig

ONECYCLE_PCT_START = 0.3  # torch.optim.lr_scheduler.OneCycleLR's default


def learning_rate_schedule(config: TrainConfig, total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """lr(step) for the configured schedule, with optional linear warmup.

  'constant', 'cosine' (to 0 at `total_steps`), 'step' (multiply by
  `decay_factor` at each of `decay_epochs`) or 'onecycle' (optax's
  `cosine_onecycle_schedule`, fastai/torch's OneCycleLR: cosine from lr/25 up to lr
  over the warmup — `warmup_epochs`, else the first 30% of the run — then down to
  lr/25e4; the warmup is part of the cycle, not an extra linear ramp).
  """
  base = config.learning_rate
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  warmup = min(warmup, max(total_steps - 1, 0))
  if config.schedule == 'onecycle':
    pct_start = warmup / total_steps if warmup else ONECYCLE_PCT_START
    return optax.cosine_onecycle_schedule(max(total_steps, 1), base, pct_start=pct_start)
  if config.schedule == 'constant':
    main = optax.constant_schedule(base)
  elif config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(base, decay_steps=max(total_steps - warmup, 1))
  else:  # 'step'
    boundaries = {int(round(e * steps_per_epoch)) - warmup: config.decay_factor
                  for e in config.decay_epochs}
    main = optax.piecewise_constant_schedule(base, boundaries)
  if not warmup:
    return main
  ramp = optax.linear_schedule(0.0, base, transition_steps=warmup)
  return optax.join_schedules([ramp, main], boundaries=[warmup])


def _is_kernel(params):
  """Weight decay mask: conv and dense kernels only, not biases or BN scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: TrainConfig, schedule: optax.Schedule,
                   freezer=None) -> optax.GradientTransformation:
  """The configured optimizer with weight decay and gradient clipping.

  freezer: a `cvjax.train.freeze.Freezer`; its frozen params get no update.
  With `grad_accum_steps` K > 1 the whole chain sits inside `optax.MultiSteps`:
  it averages K successive micro-batch gradients and steps once, so clipping,
  weight decay and the schedule's count all see optimizer steps.
  """
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.weight_decay and config.optimizer != 'adamw':
    # Coupled L2: adding wd * w to the gradient is the gradient of wd/2 * |w|².
    parts.append(optax.add_decayed_weights(config.weight_decay, mask=_is_kernel))
  if config.optimizer == 'sgd':
    parts.append(optax.sgd(schedule))
  elif config.optimizer in ('momentum', 'nesterov'):
    parts.append(optax.sgd(schedule, momentum=config.momentum,
                           nesterov=config.optimizer == 'nesterov'))
  elif config.optimizer == 'adam':
    parts.append(optax.adam(schedule, b1=config.momentum))
  else:  # 'adamw'
    parts.append(optax.adamw(schedule, b1=config.momentum, weight_decay=config.weight_decay,
                             mask=_is_kernel))
  tx = optax.chain(*parts)
  if freezer is not None:  # multi_transform with set_to_zero for the frozen params
    tx = freezer.wrap_optimizer(tx)
  if config.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps).gradient_transformation()
  return tx


def completes_update(opt_state) -> jax.Array | bool:
  """After `tx.update`: did this call step the parameters? bool[].

  Always True without accumulation; under `optax.MultiSteps`, True when the
  call closed an accumulation window (its mini-step counter wrapped to 0).
  """
  if isinstance(opt_state, optax.MultiStepsState):
    return opt_state.mini_step == 0
  return True
