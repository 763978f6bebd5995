"""Pure train and eval steps, and their data-parallel compiled forms.

Data parallelism has `pmap`'s semantics, built the current way: one `jax.jit`
of a `jax.shard_map` over a 1-D mesh with axis 'data'. Inside the map every
device sees its slice of the batch and a full copy of the state.

We run `shard_map` with `check_vma=False`: autodiff then returns each device's
local gradient (as pmap did) and we `pmean` it explicitly. With the default
`check_vma=True`, autodiff would already *sum* the gradients of replicated
params over the axis and an extra `pmean` would give an N-times-too-large step
— `tests/test_train.py` pins 1-device and 8-device runs to the same numbers.
BatchNorm layers get `axis_name='data'`, so their batch statistics are means
over the global batch, exactly as on one device.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cvjax.train.state import TrainState, model_variables

AXIS = 'data'


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy. logits f32[B, K], labels int[B] → f32[B]."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_step(state: TrainState, batch: dict, *, label_smoothing: float = 0.0,
               axis_name: str | None = AXIS) -> tuple[TrainState, dict]:
  """One SGD step on this device's shard of the batch.

  batch: {'image': f32[b, H, W, C], 'label': int32[b]}, b = global batch / devices.
  Returns the new state and {'loss', 'accuracy'} averaged over the global batch.
  With `axis_name=None` it is a plain single-device step.
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:  # a different dropout mask on every device
    step_rng = jax.random.fold_in(step_rng, lax.axis_index(axis_name))
  has_bn = bool(state.batch_stats)

  def loss_fn(params):
    variables = model_variables(state.replace(params=params))
    out = state.apply_fn(variables, batch['image'], train=True,
                         rngs={'dropout': step_rng},
                         mutable=['batch_stats'] if has_bn else False)
    logits, updates = out if has_bn else (out, {})
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  if axis_name is not None:
    grads = lax.pmean(grads, axis_name)
    loss, accuracy = lax.pmean((loss, accuracy), axis_name)
  new_state = state.apply_gradients(grads=grads)
  if has_bn:
    new_state = new_state.replace(batch_stats=updates['batch_stats'])
  return new_state, {'loss': loss, 'accuracy': accuracy}


def eval_step(state: TrainState, batch: dict, *, axis_name: str | None = AXIS) -> dict:
  """Sums of loss and correct predictions over the real (mask=True) examples.

  batch: {'image': f32[b, H, W, C], 'label': int32[b], 'mask': bool[b]}.
  Returns {'loss_sum', 'correct', 'count'} summed over the global batch.
  """
  logits = state.apply_fn(model_variables(state), batch['image'], train=False)
  mask = batch['mask'].astype(jnp.float32)
  sums = {
      'loss_sum': jnp.sum(cross_entropy(logits, batch['label']) * mask),
      'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask),
      'count': jnp.sum(mask),
  }
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  return sums


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (all by default)."""
  devices = jax.devices()
  if num_devices is not None:
    devices = devices[:num_devices]
  return Mesh(devices, (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def parallel_train_step(mesh: Mesh, label_smoothing: float = 0.0):
  """jit(shard_map(train_step)): (state, global batch) → (state, metrics).

  The incoming state buffer is donated, so keep only the returned state.
  """
  step = functools.partial(train_step, label_smoothing=label_smoothing, axis_name=AXIS)
  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)),
                          out_specs=(P(), P()), check_vma=False)
  return jax.jit(sharded, donate_argnums=0)


def parallel_eval_step(mesh: Mesh):
  """jit(shard_map(eval_step)): (state, global batch) → summed metrics."""
  step = functools.partial(eval_step, axis_name=AXIS)
  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)),
                          out_specs=P(), check_vma=False)
  return jax.jit(sharded)
