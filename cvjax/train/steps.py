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

fp16: the loss is scaled by the state's `DynamicLossScale` before the
backward pass, gradients are `pmean`ed (an inf on one device reaches all) and
unscaled, and the finite check is additionally `pmin`ed over the axis, so
every device keeps or skips the same update.
"""
from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cvjax.train import loss_scale as loss_scaling
from cvjax.train import optim
from cvjax.train.factory import DATA_AXIS as AXIS
from cvjax.train.state import TrainState, eval_variables, model_variables, update_ema
from cvjax.train.task import Task

# fold_in constants of the keys `Task.mix_batch` and `Task.draw_noise` get (the dropout
# key is the step's own).
MIX_STREAM = 1
NOISE_STREAM = 2


def train_step(state: TrainState, batch: dict, *, task: Task,
               axis_name: str | None = AXIS, freezer=None) -> tuple[TrainState, dict]:
  """One train step (an optimizer step, or one micro-step of an accumulation) on
  this device's shard of the batch.

  batch: the task's batch dict, e.g. {'image': f32[b, H, W, C], 'label': int32[b]},
  b = global batch / devices. Returns the new state and {'loss', ...task
  metrics} averaged over the global batch. With `axis_name=None` it is a plain
  single-device step. `task` (built with the run's settings) gives the model input and
  the loss. `freezer` (a `cvjax.train.freeze.Freezer`): no gradient into
  its frozen params, and its frozen BatchNorm layers run in inference mode (their
  statistics stay unchanged).

  With `state.loss_scale` set (fp16) the metrics add 'loss_scale' (the
  scale this step used) and 'overflow' (1.0 when some gradient was inf/nan: then
  params, optimizer state and BN statistics are left as they were, the scale
  halves, and only `step` advances). When the optimizer accumulates
  (`optax.MultiSteps`) or the scale can skip, the metrics add 'updated' (1.0 when
  this call stepped the parameters); the training loop counts optimizer steps by it.

  Before the forward pass the task may mix the batch (`Task.mix_batch`: mixup, cutmix)
  and add its per-example draws (`Task.draw_noise`), each with a key of its own; a task
  with `own_update` (a GAN) then makes the whole step itself (`Task.update`). After the
  update a run with `ema_decay` moves its weight
  average (`cvjax.train.state.update_ema`).
  """
  base_rng = jax.random.fold_in(state.rng, state.step)  # the same on every device
  step_rng = base_rng
  if axis_name is not None:  # a different dropout mask on every device
    step_rng = jax.random.fold_in(step_rng, lax.axis_index(axis_name))
  batch = task.mix_batch(batch, jax.random.fold_in(step_rng, MIX_STREAM))
  batch = task.draw_noise(batch, jax.random.fold_in(base_rng, NOISE_STREAM), axis_name)
  if task.own_update:
    new_state, metrics = task.update(state, batch, base_rng, axis_name)
    if task.config.ema_decay:
      new_state = update_ema(new_state, task.config.ema_decay, True)
    return new_state, metrics
  has_bn = bool(state.batch_stats)
  scaler = state.loss_scale

  def loss_fn(params):
    if freezer is not None:
      params = freezer.stop_gradient(params)
    variables = model_variables(state.replace(params=params))
    with freezer.bn_inference() if freezer is not None else contextlib.nullcontext():
      out = task.train_apply(state.apply_fn, variables, batch, rngs={'dropout': step_rng},
                             mutable=['batch_stats'] if has_bn else False)
    outputs, updates = out if has_bn else (out, {})
    loss, metrics = task.loss(outputs, batch, axis_name)
    scaled = loss if scaler is None else scaler.scale_loss(loss)
    return scaled, (loss, metrics, updates)

  grads, (loss, metrics, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
  metrics = {'loss': loss, **metrics}
  if axis_name is not None:
    grads = lax.pmean(grads, axis_name)
    metrics = lax.pmean(metrics, axis_name)
  if scaler is not None:
    grads = scaler.unscale(grads)
  new_state = state.apply_gradients(grads=grads)
  if has_bn:
    new_state = new_state.replace(batch_stats=updates['batch_stats'])
  updated = optim.completes_update(new_state.opt_state)  # True, or bool[] under MultiSteps
  if scaler is not None:
    finite = loss_scaling.all_finite(grads)
    if axis_name is not None:  # the same decision on every device, whatever its arithmetic
      finite = lax.pmin(finite.astype(jnp.int32), axis_name) > 0
    kept = loss_scaling.select_tree(
        finite, (new_state.params, new_state.opt_state, new_state.batch_stats),
        (state.params, state.opt_state, state.batch_stats))
    new_state = new_state.replace(params=kept[0], opt_state=kept[1], batch_stats=kept[2],
                                  loss_scale=scaler.adjust(finite))
    updated = updated & finite
    metrics.update(loss_scale=scaler.scale, overflow=1.0 - finite.astype(jnp.float32))
  if task.config.ema_decay:
    new_state = update_ema(new_state, task.config.ema_decay, updated)
  if scaler is not None or not isinstance(updated, bool):
    metrics['updated'] = jnp.asarray(updated, jnp.float32)
  return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, task: Task,
              axis_name: str | None = AXIS) -> tuple[dict, dict]:
  """The task's eval measurements on one batch (model in inference mode, with the weight
  average where the run keeps one, and the task's test-time augmentation).

  Returns (sums, per_example): `sums` summed over the global batch,
  `per_example` with a leading batch axis (see cvjax.train.task).
  """
  outputs = task.eval_apply(state.apply_fn, eval_variables(state), batch)
  sums, per_example = task.eval_outputs(outputs, batch)
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  return sums, per_example


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


def parallel_train_step(mesh: Mesh, task: Task, freezer=None):
  """jit(shard_map(train_step)): (state, global batch) → (state, metrics).

  freezer: the run's `cvjax.train.freeze.Freezer`, or None. The incoming state buffer
  is donated, so keep only the returned state.
  """
  step = functools.partial(train_step, task=task, axis_name=AXIS, freezer=freezer)
  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)),
                          out_specs=(P(), P()), check_vma=False)
  return jax.jit(sharded, donate_argnums=0)


def parallel_eval_step(mesh: Mesh, task: Task):
  """jit(shard_map(eval_step)): (state, global batch) → (sums, per_example)."""
  step = functools.partial(eval_step, task=task, axis_name=AXIS)
  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)),
                          out_specs=(P(), P(AXIS)), check_vma=False)
  return jax.jit(sharded)
