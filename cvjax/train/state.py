"""TrainState: everything a step reads and writes, as one pytree."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """Flax's TrainState plus BatchNorm statistics and the run's base key.

  `rng` never advances: step `s` uses `fold_in(rng, s)`, so a resumed run
  draws exactly the random numbers an uninterrupted one would. `step` counts
  train-step calls, i.e. batches consumed (micro-batches under gradient
  accumulation, skipped fp16 overflow steps included): it fixes the data
  position and the keys. `loss_scale` is a `DynamicLossScale` for fp16 runs,
  else None. `ema` is the exponential moving average of the weights
  ({'params', 'batch_stats'}, see `update_ema`) for runs with `ema_decay`, else None.
  """
  batch_stats: Any = None
  rng: jax.Array = None
  loss_scale: Any = None
  ema: Any = None


def init_variables(model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...]) -> dict:
  """Initialises `model` on zeros of `input_shape` = (1, H, W, C)."""
  params_rng, dropout_rng = jax.random.split(rng)
  return model.init({'params': params_rng, 'dropout': dropout_rng},
                    jnp.zeros(input_shape, jnp.float32), train=False)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, input_shape: tuple[int, ...],
                       loss_scale=None, ema: bool = False) -> TrainState:
  """A fresh state at step 0. Pure: jit it, or `eval_shape` it for a template.

  loss_scale: a `cvjax.train.loss_scale.DynamicLossScale` (fp16 runs) or None.
  ema: keep a moving average of the weights, starting at the initial ones.
  """
  init_rng, run_rng = jax.random.split(rng)
  variables = init_variables(model, init_rng, input_shape)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  average = {'params': params, 'batch_stats': batch_stats, 'updates': jnp.zeros((), jnp.int32)}
  return TrainState.create(
      apply_fn=model.apply, params=params, tx=tx, batch_stats=batch_stats, rng=run_rng,
      loss_scale=loss_scale, ema=average if ema else None)


def update_ema(state: TrainState, decay: float, updated) -> TrainState:
  """`state` with its weight average moved towards its current params and BN statistics.

  With n optimizer steps averaged so far, the decay used is min(decay, (1 + n) / (10 + n))
  (`tf.train.ExponentialMovingAverage` with num_updates), so the average is not held
  back by the random init early in a short run. updated: bool (or bool[]) — whether this
  call stepped the parameters; the average moves only then.
  """
  if state.ema is None:
    return state
  n = state.ema['updates']
  rate = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
  rate = jnp.where(updated, rate, 1.0)
  mix = lambda avg, new: (rate * avg + (1.0 - rate) * new).astype(avg.dtype)  # noqa: E731
  ema = {'params': jax.tree.map(mix, state.ema['params'], state.params),
         'batch_stats': jax.tree.map(mix, state.ema['batch_stats'], state.batch_stats),
         'updates': n + jnp.asarray(updated, jnp.int32)}
  return state.replace(ema=ema)


def model_variables(state: TrainState) -> dict:
  """The `variables` dict `model.apply` expects."""
  variables = {'params': state.params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def eval_variables(state: TrainState) -> dict:
  """The variables evaluation uses: the weight average where the run keeps one."""
  if state.ema is None:
    return model_variables(state)
  variables = {'params': state.ema['params']}
  if state.ema['batch_stats']:
    variables['batch_stats'] = state.ema['batch_stats']
  return variables
