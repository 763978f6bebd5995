"""Train/eval step semantics: data parallelism, BatchNorm sync, schedules."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cvjax import models
from cvjax.errors import UserError
from cvjax.tasks.classification import ClassificationTask, cross_entropy
from cvjax.train import optim, steps
from cvjax.train.config import TrainConfig
from cvjax.train.state import create_train_state, update_ema


def _batch(n=16, size=32, classes=10, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return {'image': rng.normal(size=(n, size, size, 3)).astype(dtype),
          'label': rng.integers(0, classes, n).astype(np.int32)}


def _init(model, tx, shape):
  """A fresh TrainState, jitted like the loop's (eagerly, the init compiles op by op)."""
  return jax.jit(lambda key: create_train_state(model, tx, key, shape))(jax.random.PRNGKey(0))


def _train(num_devices, model_name='resnet20', steps_to_run=2, tx=None, dtype=jnp.float32,
           size=16, conv_impl='xla', depth=None):
  mesh = steps.make_mesh(num_devices)
  bn = {'bn_axis_name': steps.AXIS} if models.model_info(model_name).batch_norm else {}
  model = models.get_model(model_name, num_classes=10, dtype=dtype, param_dtype=dtype,
                           conv_impl=conv_impl, **bn)
  if depth:  # a shallower CIFAR ResNet: the same blocks, shortcuts and BatchNorms
    model = model.clone(depth=depth)
  tx = tx or optax.sgd(0.1, momentum=0.9)
  state = _init(model, tx, (1, size, size, 3))
  state = jax.device_put(state, steps.replicated(mesh))
  step = steps.parallel_train_step(mesh, ClassificationTask(TrainConfig(), None))
  history = []
  for i in range(steps_to_run):
    batch = jax.device_put(_batch(seed=i, size=size, dtype=dtype), steps.batch_sharded(mesh))
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


def _max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


@pytest.mark.slow
@pytest.mark.parametrize('conv_impl', ['auto', 'xla'])
def test_one_and_eight_devices_give_the_same_params_and_batch_stats(conv_impl):
  """Same global batch on 1 and 8 devices → same training, BN included.

  Run in float64: in float32 three momentum steps of a BN ResNet on 2-example
  shards amplify summation-order noise to ~5e-3, which would hide a real bug;
  in float64 the two agree to ~1e-15, and a wrong reduction is off by O(1).
  """
  assert jax.device_count() == 8, 'conftest should simulate 8 CPU devices'
  with jax.enable_x64(True):
    one, hist1 = _train(1, dtype=jnp.float64, conv_impl=conv_impl, depth=8)
    eight, hist8 = _train(8, dtype=jnp.float64, conv_impl=conv_impl, depth=8)
  assert _max_diff(one.params, eight.params) < 1e-10
  # BatchNorm statistics are synchronised over the 'data' axis: global-batch means.
  assert _max_diff(one.batch_stats, eight.batch_stats) < 1e-10
  np.testing.assert_allclose([h['loss'] for h in hist1], [h['loss'] for h in hist8], rtol=1e-10)


@pytest.mark.slow
def test_one_and_eight_devices_agree_with_onednn_convolutions():
  """oneDNN's convs are float32 only: 1 and 8 devices agree to float32 rounding (1e-7 here),
  where a gradient summed or averaged once too often would be off by the step (1e-2)."""
  one, _ = _train(1, conv_impl='onednn', depth=8)
  eight, _ = _train(8, conv_impl='onednn', depth=8)
  assert max(_max_diff(one.params, eight.params), _max_diff(one.batch_stats, eight.batch_stats)) < 1e-5
  assert _max_diff(one.params, _train(1, conv_impl='onednn', depth=8, steps_to_run=0)[0].params) > 1e-3


def test_eight_device_step_equals_plain_single_device_step_not_eight_times_it():
  """Guards the shard_map trap: an extra reduction would scale the step by 8."""
  mesh_state, _ = _train(8, 'lenet5', steps_to_run=1, tx=optax.sgd(0.1), size=32)
  model = models.get_model('lenet5', num_classes=10)
  state = _init(model, optax.sgd(0.1), (1, 32, 32, 3))
  initial = jax.device_get(state.params)
  plain, _ = jax.jit(lambda s, b: steps.train_step(s, b, task=ClassificationTask(TrainConfig(), None), axis_name=None))(state, _batch(seed=0))
  assert _max_diff(mesh_state.params, jax.device_get(plain.params)) < 2e-5
  # And the step actually moved the parameters.
  assert _max_diff(initial, jax.device_get(plain.params)) > 1e-3


class _DropoutNet(nn.Module):
  @nn.compact
  def __call__(self, x, train):
    x = nn.Dropout(0.5, deterministic=not train)(x.reshape(x.shape[0], -1))
    return nn.Dense(10)(x)


def test_dropout_masks_differ_between_steps_but_repeat_for_the_same_step():
  model = _DropoutNet()
  state = _init(model, optax.sgd(0.0), (1, 32, 32, 3))
  step = jax.jit(lambda s, b: steps.train_step(s, b, task=ClassificationTask(TrainConfig(), None), axis_name=None))
  batch = _batch(n=4)
  _, m1 = step(state, batch)
  _, m1_again = step(state, batch)
  _, m2 = step(state.replace(step=state.step + 1), batch)
  assert float(m1['loss']) == float(m1_again['loss'])
  assert float(m1['loss']) != float(m2['loss'])


def test_eval_step_counts_only_masked_in_examples():
  mesh = steps.make_mesh(8)
  model = models.get_model('lenet5', num_classes=10)
  state = _init(model, optax.sgd(0.1), (1, 32, 32, 1))
  state = jax.device_put(state, steps.replicated(mesh))
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(16, 32, 32, 1)).astype(np.float32),
           'label': rng.integers(0, 10, 16).astype(np.int32),
           'mask': np.arange(16) < 11}
  sums, _ = jax.device_get(steps.parallel_eval_step(mesh, ClassificationTask(TrainConfig(), None))(state, jax.device_put(batch, steps.batch_sharded(mesh))))
  assert sums['count'] == 11
  logits = model.apply({'params': state.params}, batch['image'][:11], train=False)
  expected = float(jnp.sum(cross_entropy(logits, batch['label'][:11])))
  assert sums['loss_sum'] == pytest.approx(expected, rel=1e-5)


def test_label_smoothing_raises_the_loss_of_a_confident_correct_prediction():
  logits = jnp.array([[10.0, 0.0, 0.0]])
  labels = jnp.array([0])
  assert float(cross_entropy(logits, labels, 0.1)[0]) > float(cross_entropy(logits, labels)[0]) + 0.1


def test_warmup_then_cosine_schedule_values():
  config = TrainConfig(learning_rate=0.4, schedule='cosine', warmup_epochs=1)
  schedule = optim.learning_rate_schedule(config, total_steps=110, steps_per_epoch=10)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.2)
  assert float(schedule(10)) == pytest.approx(0.4)
  assert float(schedule(60)) == pytest.approx(0.2, rel=1e-5)   # half-way through the cosine
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


def test_step_schedule_decays_at_the_given_epochs():
  config = TrainConfig(learning_rate=0.1, schedule='step', decay_epochs=(2, 3), decay_factor=0.1)
  schedule = optim.learning_rate_schedule(config, total_steps=40, steps_per_epoch=10)
  assert [float(schedule(s)) for s in (19, 20, 29, 30)] == pytest.approx([0.1, 0.01, 0.01, 0.001])


def test_weight_decay_touches_kernels_not_biases():
  config = TrainConfig(optimizer='sgd', learning_rate=1.0, weight_decay=0.5)
  tx = optim.make_optimizer(config, optax.constant_schedule(1.0))
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones((2,))}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -0.5)
  np.testing.assert_allclose(updates['bias'], 0.0)


def test_bad_config_values_name_the_value_and_the_choices():
  with pytest.raises(UserError, match=r"unknown optimizer 'rmsprop'; valid choices: adam, adamw"):
    TrainConfig(optimizer='rmsprop').validate()
  with pytest.raises(UserError, match='batch_size must be positive, got 0'):
    TrainConfig(batch_size=0).validate()


def test_onecycle_schedule_rises_by_cosine_from_lr_over_25_then_falls_to_lr_over_25e4():
  config = TrainConfig(learning_rate=0.5, schedule='onecycle')
  schedule = optim.learning_rate_schedule(config, total_steps=100, steps_per_epoch=10)
  lr = lambda s: float(schedule(s))  # noqa: E731
  assert lr(0) == pytest.approx(0.5 / 25)
  assert lr(15) == pytest.approx(0.5 / 25 + (0.5 - 0.5 / 25) * 0.5)   # half-way up: cosine
  assert lr(30) == pytest.approx(0.5)                                 # the default 30 %
  assert lr(65) == pytest.approx(0.5 / 25 / 1e4 + (0.5 - 0.5 / 25 / 1e4) * 0.5, rel=1e-5)
  assert lr(100) == pytest.approx(0.5 / 25 / 1e4)
  warm = optim.learning_rate_schedule(config.replace(warmup_epochs=2), 100, 10)
  assert float(warm(20)) == pytest.approx(0.5) and float(warm(10)) < 0.5   # the peak moved


def _ema_state(decay_steps=0):
  model = models.get_model('lenet5', num_classes=10)
  state = jax.jit(lambda key: create_train_state(model, optax.sgd(0.1), key, (1, 32, 32, 1),
                                                 ema=True))(jax.random.PRNGKey(0))
  assert state.ema['updates'] == 0
  np.testing.assert_array_equal(state.ema['params']['conv1']['kernel'],
                                state.params['conv1']['kernel'])   # starts at the init
  return state


def test_ema_moves_by_tfs_num_updates_decay_and_only_on_optimizer_steps():
  state = _ema_state()
  ones = jax.tree.map(jnp.ones_like, state.params)
  fc2_bias = lambda s: np.asarray(s.ema['params']['fc2']['bias'])  # noqa: E731
  average = fc2_bias(state)
  state = state.replace(params=ones)
  for n in range(3):   # decay min(0.99, (1 + n) / (10 + n)): 0.1, 2/11, 3/12
    rate = min(0.99, (1 + n) / (10 + n))
    state = update_ema(state, 0.99, True)
    average = rate * average + (1 - rate) * 1.0
    np.testing.assert_allclose(fc2_bias(state), average, rtol=1e-6)
  held = update_ema(state, 0.99, jnp.asarray(False))   # mid-accumulation: no move
  np.testing.assert_array_equal(fc2_bias(held), fc2_bias(state))
  assert int(held.ema['updates']) == 3


def test_eval_scores_the_weight_average_not_the_trained_weights():
  state = _ema_state()
  task = ClassificationTask(TrainConfig(model='lenet5', num_classes=10, ema_decay=0.9), None)
  average = jax.tree.map(lambda p: p * 0.5, state.params)
  state = state.replace(ema={**state.ema, 'params': average})
  batch = {'image': np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype(np.float32),
           'label': np.arange(4, dtype=np.int32), 'mask': np.ones(4, bool)}
  sums, _ = steps.eval_step(state, batch, task=task, axis_name=None)
  logits = state.apply_fn({'params': average}, batch['image'], train=False)
  expected = float(jnp.sum(cross_entropy(logits, batch['label'])))
  assert float(sums['loss_sum']) == pytest.approx(expected, rel=1e-6)
