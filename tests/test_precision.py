"""Mixed precision, gradient accumulation and remat."""
import functools
import os
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cvjax
from cvjax import models, tasks
from cvjax.errors import Preempted, TrainingDiverged, UserError
from cvjax.models import resnet, resnext, senet
from cvjax.tasks import fit
from cvjax.train import TrainConfig, optim, steps
from cvjax.train.checkpoint import Checkpoints
from cvjax.train.loss_scale import DynamicLossScale
from cvjax.train.state import create_train_state
from cvjax.tasks.classification import ClassificationTask

pytestmark = pytest.mark.slow  # Mixed precision, accumulation and remat train real steps and runs: minutes.



def _batch(seed, n=16, size=32, channels=3):
  rng = np.random.default_rng(seed)
  return {'image': rng.normal(size=(n, size, size, channels)).astype(np.float32),
          'label': rng.integers(0, 10, n).astype(np.int32)}


def _state(model, tx, mesh, size=32, channels=3, loss_scale=None):
  create = functools.partial(create_train_state, model, tx,
                             input_shape=(1, size, size, channels))
  return jax.jit(create, out_shardings=steps.replicated(mesh))(jax.random.PRNGKey(0),
                                                               loss_scale=loss_scale)


def _equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


# --- Dynamic loss scale.

def test_loss_scale_halves_on_overflow_and_doubles_after_period_finite_steps():
  s = DynamicLossScale.create(initial=8.0, period=3, min_scale=2.0)
  ok, bad = jnp.asarray(True), jnp.asarray(False)
  history = []
  for finite in (ok, ok, ok, ok, bad, ok, ok, ok, bad, bad, bad):
    s = s.adjust(finite)
    history.append((float(s.scale), int(s.counter)))
  assert history == [(8, 1), (8, 2), (16, 0), (16, 1), (8, 0), (8, 1), (8, 2), (16, 0),
                     (8, 0), (4, 0), (2, 0)]   # never below min_scale
  assert float(s.adjust(bad).scale) == 2.0
  grads = {'w': jnp.asarray([3.0, -6.0])}
  np.testing.assert_array_equal(s.unscale(jax.tree.map(lambda g: g * s.scale, grads))['w'],
                                grads['w'])


# --- bf16 / fp16 steps.

# One model per family: every conv and dense layer computes in
# the half dtype; params, BN statistics and the returned logits stay float32.
FAMILIES = [('lenet5', 32), ('alexnet', 227), ('vgg11_bn_cifar', 32), ('resnet18', 64),
            ('resnet20', 32), ('se_resnet20', 32), ('resnext50_32x4d', 64),
            ('densenet_bc100_cifar', 32), ('mobilenet_v2_cifar', 32), ('efficientnet_b0_cifar', 32),
            ('googlenet_cifar', 32), ('inception_v3', 75), ('xception', 71), ('vit_tiny_cifar', 32),
            ('ssd128_resnet18_slim', 128), ('fcn8s_tiny', 128)]


@pytest.mark.parametrize('name,size', FAMILIES)
def test_every_family_computes_in_half_precision_with_float32_params_statistics_and_outputs(name, size):
  model = models.get_model(name, num_classes=10, dtype='bfloat16')
  seen = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, (nn.Conv, nn.Dense, nn.ConvTranspose)):
      seen.append(out.dtype)
    return out

  def init(x):
    with nn.intercept_methods(record):
      return model.init_with_output(jax.random.key(0), x)

  outputs, variables = jax.eval_shape(init, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  assert seen and set(seen) == {jnp.dtype(jnp.bfloat16)}
  for tree in (variables, outputs):
    assert {x.dtype for x in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}


class _ConvBN(nn.Module):
  """conv → BatchNorm → ReLU → GAP → dense, computing in `dtype` as the registry's models do."""
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3), dtype=self.dtype, name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, axis_name=steps.AXIS, dtype=self.dtype,
                     name='bn')(x)
    x = nn.Dense(10, dtype=self.dtype, name='fc')(jnp.mean(nn.relu(x), axis=(1, 2)))
    return x.astype(jnp.float32)


def test_bf16_step_keeps_params_optimizer_and_bn_statistics_float32_and_near_the_fp32_step():
  mesh = steps.make_mesh(8)
  batch = jax.device_put(_batch(0, size=16), steps.batch_sharded(mesh))
  tx = optax.sgd(0.1, momentum=0.9)
  step = steps.parallel_train_step(mesh, ClassificationTask(TrainConfig(), None))
  state, metrics = step(_state(_ConvBN(jnp.bfloat16), tx, mesh, size=16), batch)
  for tree in (state.params, state.opt_state, state.batch_stats):
    assert {x.dtype for x in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
  assert metrics['loss'].dtype == jnp.float32
  # BN statistics are reduced in float32 and agree with a float32 step to bf16's rounding.
  ref, ref_metrics = step(_state(_ConvBN(jnp.float32), tx, mesh, size=16), batch)
  np.testing.assert_allclose(state.batch_stats['bn']['mean'], ref.batch_stats['bn']['mean'],
                             rtol=0.02, atol=1e-3)
  np.testing.assert_allclose(state.batch_stats['bn']['var'], ref.batch_stats['bn']['var'],
                             rtol=0.02)
  assert float(metrics['loss']) == pytest.approx(float(ref_metrics['loss']), rel=0.02)


def test_fp16_overflow_leaves_params_optimizer_and_bn_statistics_and_halves_the_scale():
  mesh = steps.make_mesh(8)
  model = _ConvBN(jnp.float16)
  batch = jax.device_put(_batch(0, size=16), steps.batch_sharded(mesh))
  step = steps.parallel_train_step(mesh, ClassificationTask(TrainConfig(), None))
  # 2**40 × dloss/dlogits cannot be represented in float16 (max 65,504): a sure overflow.
  state = _state(model, optax.sgd(0.1, momentum=0.9), mesh, size=16,
                 loss_scale=DynamicLossScale.create(initial=2.0**40))
  before = jax.device_get(state)
  state, metrics = step(state, batch)
  after = jax.device_get(state)
  assert _equal(before.params, after.params) and _equal(before.opt_state, after.opt_state)
  assert _equal(before.batch_stats, after.batch_stats)
  assert int(after.step) == 1 and float(after.loss_scale.scale) == 2.0**39
  assert float(metrics['overflow']) == 1.0 and float(metrics['updated']) == 0.0
  assert np.isfinite(float(metrics['loss']))   # the loss itself is fine: the loop goes on

  # A representable scale steps normally (and the scale's counter advances).
  state = _state(model, optax.sgd(0.1, momentum=0.9), mesh, size=16,
                 loss_scale=DynamicLossScale.create(initial=1.0))
  state, metrics = step(state, batch)
  assert float(metrics['overflow']) == 0.0 and float(metrics['updated']) == 1.0
  assert not _equal(before.params, jax.device_get(state.params))
  assert not _equal(before.batch_stats, jax.device_get(state.batch_stats))
  assert int(state.loss_scale.counter) == 1


def test_fp16_overflow_on_one_device_skips_the_step_on_every_device():
  mesh = steps.make_mesh(8)
  model = models.get_model('lenet5', num_classes=10, dtype='float16')
  tx = optax.sgd(0.1)
  batch = _batch(0, channels=1)
  batch['image'][6:8] *= 1000.0    # device 3's two examples only
  state = _state(model, tx, mesh, channels=1, loss_scale=DynamicLossScale.create())  # 2**15
  before = jax.device_get(state.params)
  state, metrics = steps.parallel_train_step(mesh, ClassificationTask(TrainConfig(), None))(state,
                                                   jax.device_put(batch, steps.batch_sharded(mesh)))
  assert float(metrics['overflow']) == 1.0 and np.isfinite(float(metrics['loss']))
  # Every device's copy of the replicated params is the old one.
  for shard in state.params['conv1']['kernel'].addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), before['conv1']['kernel'])
  # Without device 3's outliers the same scale is fine.
  state = _state(model, tx, mesh, channels=1, loss_scale=DynamicLossScale.create())
  _, metrics = steps.parallel_train_step(mesh, ClassificationTask(TrainConfig(), None))(
      state, jax.device_put(_batch(0, channels=1), steps.batch_sharded(mesh)))
  assert float(metrics['overflow']) == 0.0


def test_checkpoints_keep_the_loss_scale_and_older_checkpoints_without_one_still_restore(tmp_path):
  import orbax.checkpoint as ocp
  from flax import serialization
  mesh = steps.make_mesh(1)
  model = models.get_model('lenet5', num_classes=10)
  scaled = _state(model, optax.sgd(0.1), mesh, channels=1,
                  loss_scale=DynamicLossScale(scale=jnp.float32(1024.0), counter=jnp.int32(7)))
  ckpts = Checkpoints(str(tmp_path / 'fp16'), async_save=False)
  ckpts.save(1, scaled, {'step': 1})
  restored, _ = ckpts.restore_latest(
      _state(model, optax.sgd(0.1), mesh, channels=1, loss_scale=DynamicLossScale.create()))
  ckpts.close()
  assert float(restored.loss_scale.scale) == 1024.0 and int(restored.loss_scale.counter) == 7

  # A checkpoint written before the loss_scale and ema fields existed: the same tree, no entry
  # for either at all.
  plain = _state(model, optax.sgd(0.1), mesh, channels=1)
  old = {k: v for k, v in serialization.to_state_dict(plain).items()
         if k not in ('loss_scale', 'ema')}
  ckpts = Checkpoints(str(tmp_path / 'old'), async_save=False)
  ckpts.manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(old),
                                                meta=ocp.args.JsonSave({'step': 3})))
  ckpts.wait()
  restored, meta = ckpts.restore_latest(plain)
  ckpts.close()
  assert meta == {'step': 3} and restored.loss_scale is None
  assert _equal(jax.device_get(restored.params), jax.device_get(plain.params))


# --- Gradient accumulation.

def _accum_run(k, micro_batch, updates, dtype):
  """`updates` optimizer steps of lenet5 with K = k on micro-batches of `micro_batch`."""
  mesh = steps.make_mesh(8)
  config = TrainConfig(optimizer='momentum', learning_rate=0.05, weight_decay=1e-3,
                       grad_accum_steps=k, grad_clip_norm=1.0)
  tx = optim.make_optimizer(config, optax.cosine_decay_schedule(0.05, updates))
  model = models.get_model('lenet5', num_classes=10, dtype=dtype, param_dtype=dtype)
  state = _state(model, tx, mesh, channels=1)
  initial = jax.device_get(state.params)
  step = steps.parallel_train_step(mesh, ClassificationTask(TrainConfig(), None))
  flags = []
  data = [_batch(i, n=16, channels=1) for i in range(updates)]   # 16 examples per update
  for big in data:
    for j in range(k):
      micro = jax.tree.map(lambda a: a[j * micro_batch:(j + 1) * micro_batch].astype(
          dtype if a.dtype.kind == 'f' else a.dtype), big)
      state, metrics = step(state, jax.device_put(micro, steps.batch_sharded(mesh)))
      flags.append(float(metrics.get('updated', 1.0)))
  return jax.device_get(state), flags, initial


def test_two_accumulated_micro_batches_equal_one_double_batch_and_schedules_count_updates():
  """float64 params, so that a wrong mean (a sum, a step per micro-batch) cannot hide in
  noise; MultiSteps accumulates in float32, which bounds the agreement at ~1e-9."""
  with jax.enable_x64(True):
    accum, flags, initial = _accum_run(2, 8, updates=3, dtype=jnp.float64)
    plain, _, _ = _accum_run(1, 16, updates=3, dtype=jnp.float64)
  assert flags == [0.0, 1.0] * 3
  assert int(accum.step) == 6 and int(accum.opt_state.gradient_step) == 3
  max_diff = lambda a, b: max(jax.tree.leaves(
      jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))
  assert max_diff(accum.params, plain.params) < 1e-8
  assert max_diff(accum.params, initial) > 1e-3   # and training moved them


def test_resume_from_a_checkpoint_in_the_middle_of_an_accumulation_is_exact(tmp_path):
  mesh = steps.make_mesh(8)
  config = TrainConfig(optimizer='adam', learning_rate=1e-3, grad_accum_steps=3)
  tx = optim.make_optimizer(config, optax.constant_schedule(1e-3))
  model = models.get_model('lenet5', num_classes=10)
  fresh = functools.partial(_state, model, tx, mesh, channels=1)
  step = steps.parallel_train_step(mesh, ClassificationTask(TrainConfig(), None))
  batches = [jax.device_put(_batch(i, n=8, channels=1), steps.batch_sharded(mesh))
             for i in range(6)]
  state = fresh()
  for i, batch in enumerate(batches):
    state, _ = step(state, batch)
    if i == 1:   # two of three micro-batches accumulated
      ckpts = Checkpoints(str(tmp_path / 'ckpt'), async_save=False)
      ckpts.save(2, state, {'step': 0})
  straight = jax.device_get(state)

  resumed, meta = ckpts.restore_latest(fresh())
  ckpts.close()
  assert int(resumed.opt_state.mini_step) == 2 and meta == {'step': 0}
  for batch in batches[2:]:
    resumed, _ = step(resumed, batch)
  resumed = jax.device_get(resumed)
  assert _equal(resumed.params, straight.params) and _equal(resumed.opt_state, straight.opt_state)


# --- The loop.

def _config(real_mnist, **changes):
  base = dict(model='lenet5', model_kwargs={'activation': 'relu', 'pooling': 'max'},
              dataset='mnist', data_dir=real_mnist['data_dir'], raw_data_dir=real_mnist['raw_dir'],
              batch_size=64, num_train_steps=10, optimizer='adam', learning_rate=2e-3,
              schedule='cosine', log_every_steps=5, eval_every_steps=10,
              checkpoint_every_steps=5, keep_checkpoints=10, seed=0)
  base.update(changes)
  return TrainConfig(**base)


def _metrics(workdir):
  import json
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def accum_run(real_mnist, tmp_path_factory):
  """10 optimizer steps of 2 accumulated micro-batches of 32 real digits."""
  workdir = str(tmp_path_factory.mktemp('accum') / 'straight')
  return workdir, fit(_config(real_mnist, batch_size=32, grad_accum_steps=2), workdir)


def test_fit_with_two_accumulated_batches_of_32_matches_batches_of_64(accum_run, real_mnist,
                                                                       tmp_path):
  accum_dir, accum = accum_run
  double = fit(_config(real_mnist), str(tmp_path / 'double'))
  assert accum['step'] == double['step'] == 10
  assert accum['test_loss'] == pytest.approx(double['test_loss'], rel=1e-4)
  assert Checkpoints(os.path.join(accum_dir, 'checkpoints')).all_steps() == [5, 10]
  assert [m['step'] for m in _metrics(accum_dir) if 'train_loss' in m] == [5, 10]
  assert cvjax.restore(accum_dir).step == 20   # state.step counts micro-batches


def test_sigterm_mid_accumulation_finishes_the_step_and_the_rerun_ends_exactly_alike(
    accum_run, real_mnist, tmp_path, monkeypatch):
  accum_dir, accum = accum_run
  # SIGTERM after micro-batch 7 (mid optimizer step 4): the loop finishes the
  # accumulation, checkpoints step 4 and stops; a re-run ends like the straight run.
  original = ClassificationTask.train_batches

  def interrupted(self, sharding, start_step):
    for i, batch in enumerate(original(self, sharding, start_step), start=start_step + 1):
      yield batch
      if i == 7:
        os.kill(os.getpid(), signal.SIGTERM)

  killed_dir = str(tmp_path / 'killed')
  config = _config(real_mnist, batch_size=32, grad_accum_steps=2, checkpoint_every_steps=3)
  monkeypatch.setattr(ClassificationTask, 'train_batches', interrupted)
  with pytest.raises(Preempted, match='SIGTERM at step 4'):
    fit(config, killed_dir)
  monkeypatch.setattr(ClassificationTask, 'train_batches', original)
  assert Checkpoints(os.path.join(killed_dir, 'checkpoints')).all_steps() == [3, 4]
  again = fit(config, killed_dir)
  assert again['test_loss'] == accum['test_loss'] and again['step'] == 10
  params = lambda d: jax.device_get(cvjax.restore(d).variables['params'])
  assert _equal(params(killed_dir), params(accum_dir))


def test_fit_fp16_survives_skipped_overflow_steps_but_stops_on_a_nan_loss(real_mnist, tmp_path,
                                                                           monkeypatch):
  # Start the scale far too high: the first steps overflow and are skipped.
  create = DynamicLossScale.create
  monkeypatch.setattr(DynamicLossScale, 'create', lambda **kw: create(**{'initial': 2.0**30, **kw}))
  workdir = str(tmp_path / 'fp16')
  results = fit(_config(real_mnist, half_precision='fp16', num_train_steps=20,
                        log_every_steps=10, eval_every_steps=20, checkpoint_every_steps=10),
                workdir)
  assert results['step'] == 20 and results['test_accuracy'] > 0.6
  train = [m for m in _metrics(workdir) if 'train_loss' in m]
  assert [m['step'] for m in train] == [10, 20]
  # Windows average over train-step calls: 10 updates plus the skipped calls.
  assert train[0]['train_overflow'] > 0.3 and train[1]['train_overflow'] < 0.2
  assert train[1]['train_loss_scale'] < 2.0**30
  restored = cvjax.restore(workdir)
  assert restored.step > 20                 # skipped steps consumed batches too
  assert {x.dtype for x in jax.tree.leaves(restored.variables)} == {np.dtype(np.float32)}

  with pytest.raises(TrainingDiverged, match=r'loss is (nan|inf) at step \d+; stopped'):
    fit(_config(real_mnist, half_precision='fp16', optimizer='sgd', learning_rate=1e4,
                schedule='constant', num_train_steps=40), str(tmp_path / 'nan'))


# --- Remat.

# The CIFAR net (basic blocks, option-A shortcuts) and a small ResNeXt (bottlenecks given as
# a functools.partial, 1×1-conv shortcuts): the two ways blocks reach `remat_block`.
REMAT_NETS = {
    'se_cifar_resnet8': functools.partial(senet.SECifarResNet, depth=8, num_classes=10),
    'resnext_tiny': functools.partial(
        resnet.ResNet, stage_sizes=(1, 1), num_filters=16, num_classes=10,
        block_cls=functools.partial(resnext.ResNeXtBottleneck, cardinality=4, base_width=16)),
}


@pytest.mark.parametrize('name', sorted(REMAT_NETS))
def test_remat_gives_identical_gradients_and_bn_statistics(name):
  plain, remat = REMAT_NETS[name](), REMAT_NETS[name](remat=True)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  variables = jax.jit(plain.init)(jax.random.key(0), x)
  assert jax.tree.structure(jax.eval_shape(remat.init, jax.random.key(0), x)) == \
      jax.tree.structure(variables)

  def grads(model):
    def loss(params):
      out, upd = model.apply({**variables, 'params': params}, x, train=True,
                             mutable=['batch_stats'])
      return jnp.mean(out ** 2), upd
    return jax.jit(jax.grad(loss, has_aux=True))(variables['params'])

  (g0, u0), (g1, u1) = grads(plain), grads(remat)
  if name.startswith('se_'):  # the recomputed SE reduction fuses differently: last-bit noise
    assert max(jax.tree.leaves(jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))), g0, g1))) < 1e-5
    assert _equal(u0, u1)
  else:
    assert _equal(g0, g1) and _equal(u0, u1)   # bit for bit on XLA:CPU


# --- Bad input.

@pytest.mark.parametrize('changes,message', [
    (dict(half_precision='fp8'),
     "half_precision must be one of bf16, fp16 (or unset for float32), got 'fp8'"),
    (dict(half_precision='bf16', model_kwargs={'dtype': 'float16'}),
     'half_precision=bf16 and model_kwargs dtype=float16 both set the compute dtype; use one'),
    (dict(grad_accum_steps=0), 'grad_accum_steps must be a positive integer, got 0'),
])
def test_bad_precision_settings_name_the_value(changes, message):
  with pytest.raises(UserError, match=message.replace('(', r'\(').replace(')', r'\)')):
    TrainConfig(**changes).validate()


def test_remat_is_offered_exactly_for_models_that_recompute_their_blocks():
  offered = [m for m in models.list_models(None) if models.model_info(m).supports_remat]
  assert {'resnet20', 'resnet50', 'resnext50_32x4d', 'se_resnet50', 'se_resnet20'} <= set(offered)
  assert 'lenet5' not in offered and 'densenet121' not in offered


def test_remat_on_a_model_without_blocks_and_too_large_accumulation_are_refused(real_mnist, tmp_path):
  with pytest.raises(UserError, match=r"model 'lenet5' has no remat option; --remat works for .*resnet20"):
    tasks.build_run(_config(real_mnist, remat=True))
  with pytest.raises(UserError, match=r'batch_size × grad_accum_steps = 1000 × 5 is larger than '
                                      r'the 4000 training examples of mnist'):
    tasks.build_run(_config(real_mnist, batch_size=1000, grad_accum_steps=5))


def test_a_bf16_remat_run_restores_with_the_compute_dtype_and_remat_it_trained_with(tmp_path):
  """restore builds the model with the same factory as training (no dataset needed here)."""
  from cvjax.train import freeze, rundir
  config = TrainConfig(model='resnet20', num_classes=10, dataset='cifar10', half_precision='bf16',
                       remat=True, conv_impl='xla', batch_size=1, num_train_steps=1,
                       optimizer='sgd', schedule='constant')
  net = models.get_model('resnet20', num_classes=10)
  shapes = freeze.variable_shapes(net, (1, 32, 32, 3))
  arrays = {f'{c}/{p}': np.zeros(v.shape, np.float32) for c in ('params', 'batch_stats')
            for p, v in freeze.flat_paths(shapes[c]).items()}
  rundir.write_workdir(str(tmp_path / 'run'), tasks.get_task(config, None), arrays, {})
  restored = cvjax.restore(str(tmp_path / 'run'))
  assert restored.model.dtype == jnp.bfloat16 and restored.model.remat
  assert restored.model.conv_impl == 'xla' and restored.model.bn_axis_name is None
  assert {x.dtype for x in jax.tree.leaves(restored.variables)} == {np.dtype(np.float32)}
