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
  else None.
  """
  batch_stats: Any = None
  rng: jax.Array = None
  loss_scale: Any = None


def init_variables(model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...]) -> dict:
  """Initialises `model` on zeros of `input_shape` = (1, H, W, C)."""
  params_rng, dropout_rng = jax.random.split(rng)
  return model.init({'params': params_rng, 'dropout': dropout_rng},
                    jnp.zeros(input_shape, jnp.float32), train=False)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, input_shape: tuple[int, ...],
                       loss_scale=None) -> TrainState:
  """A fresh state at step 0. Pure: jit it, or `eval_shape` it for a template.

  loss_scale: a `cvjax.train.loss_scale.DynamicLossScale` (fp16 runs) or None.
  """
  init_rng, run_rng = jax.random.split(rng)
  variables = init_variables(model, init_rng, input_shape)
  return TrainState.create(
      apply_fn=model.apply, params=variables['params'], tx=tx,
      batch_stats=variables.get('batch_stats', {}), rng=run_rng, loss_scale=loss_scale)


def model_variables(state: TrainState) -> dict:
  """The `variables` dict `model.apply` expects."""
  variables = {'params': state.params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables
