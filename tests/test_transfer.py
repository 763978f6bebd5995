"""Transfer learning: freezing, frozen BatchNorm, init_from, the two-phase recipe, feature extraction."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import cvjax
from cvjax import models, transfer
from cvjax.tasks import features
from cvjax.tasks.classification import ClassificationTask
from cvjax.errors import UserError
from cvjax.pretrained import common
from cvjax.tasks import fit, get_task
from cvjax.train import TrainConfig, optim, rundir, steps, warm_start
from cvjax.train import freeze as freezing
from cvjax.train.state import create_train_state

pytestmark = pytest.mark.slow  # Each test builds or trains models through fit.


def _flat(tree):
  return {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _same_bits(a, b):
  return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ------------------------------------------------------------------ freezing


class _Block(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x, train=False):
    y = nn.Conv(self.features, (3, 3), name='conv1')(x)
    return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn1')(y))


class _TinyResNet(nn.Module):
  """cvjax's ResNet layout in miniature (conv1/bn1 stem, stages layer1_0, layer2_0, head
  fc), so that the step tests compile in seconds: the freezer is model-agnostic."""
  num_classes: int = 5

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3), name='conv1')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name='bn1')(x))
    x = _Block(8, name='layer1_0')(x, train)
    x = _Block(16, name='layer2_0')(x[:, ::2, ::2], train)
    return nn.Dense(self.num_classes, name='fc')(x.mean(axis=(1, 2)))


def _init(model, tx, shape):
  """A fresh TrainState, jitted like the loop's (eagerly, the init compiles op by op)."""
  return jax.jit(lambda key: create_train_state(model, tx, key, shape))(jax.random.PRNGKey(0))


def test_frozen_params_and_bn_statistics_stay_bit_identical_through_training_steps():
  """Top stage + head trainable, momentum + weight decay: 3 steps change nothing
  frozen (not even through weight decay), and frozen BN statistics stay put."""
  shape = (1, 16, 16, 3)
  model = _TinyResNet()
  freezer = freezing.make_freezer('all_but_top:1', model, shape)
  assert freezer.description == 'all but layer2_0, fc'
  config = TrainConfig(optimizer='momentum', learning_rate=0.1, weight_decay=1e-3)
  tx = optim.make_optimizer(config, optax.constant_schedule(0.1), freezer)
  state = _init(model, tx, shape)
  batch = {'image': jax.random.normal(jax.random.PRNGKey(1), (8, 16, 16, 3)),
           'label': jnp.arange(8) % 5}
  step = jax.jit(lambda s, b: steps.train_step(s, b, task=ClassificationTask(TrainConfig(), None), axis_name=None, freezer=freezer))
  after = state
  for _ in range(3):
    after, _ = step(after, batch)

  for collection in ('params', 'batch_stats'):
    before, now = _flat(getattr(state, collection)), _flat(getattr(after, collection))
    for path in before:
      frozen = not path.startswith(('layer2', 'fc'))
      assert _same_bits(before[path], now[path]) == frozen, (collection, path)
  # Frozen params carry no optimizer state: momentum only for layer2 and fc.
  assert sum(x.size for x in jax.tree.leaves(after.opt_state)) == sum(
      v.size for p, v in _flat(state.params).items() if p.startswith(('layer2', 'fc'))) + 1


def test_frozen_bn_layers_normalise_with_running_statistics_in_a_train_step():
  """With every BN frozen, the train-mode forward equals the inference forward."""
  shape = (1, 16, 16, 3)
  model = _TinyResNet()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False)
  stats = jax.tree.map(lambda x: jax.random.uniform(jax.random.PRNGKey(2), x.shape, minval=0.5,
                                                    maxval=2.0), variables['batch_stats'])
  variables = {**variables, 'batch_stats': stats}
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  freezer = freezing.make_freezer('all_but_head', model, shape)
  with freezer.bn_inference():
    train_out, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(train_out, model.apply(variables, x, train=False), rtol=1e-5,
                             atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), updates['batch_stats'], stats)
  # Without the freezer the same call uses batch statistics: different numbers.
  plain, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert np.abs(plain - train_out).max() > 1e-2


def _trainable_modules(freezer, model, shape):
  params = _flat(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))['params'])
  return sorted({p.split('/')[0] for p in params if p not in freezer.frozen})


def test_freeze_by_block_depth_names_the_top_stages_of_resnet_and_vgg():
  shape = (1, 32, 32, 3)
  resnet = models.get_model('resnet34', num_classes=5)
  top2 = freezing.make_freezer('all_but_top:2', resnet, shape)
  assert _trainable_modules(top2, resnet, shape) == (
      ['fc'] + [f'layer3_{j}' for j in range(6)] + [f'layer4_{j}' for j in range(3)])
  head_only = freezing.make_freezer('all_but_head', resnet, shape)
  assert _trainable_modules(head_only, resnet, shape) == ['fc']
  vgg = models.get_model('vgg11', num_classes=5)
  top1 = freezing.make_freezer('all_but_top:1', vgg, (1, 32, 32, 3))
  assert _trainable_modules(top1, vgg, (1, 32, 32, 3)) == [
      'block5_conv1', 'block5_conv2', 'fc1', 'fc2', 'fc3']
  by_name = freezing.make_freezer(r'^(conv1|bn1|layer1)', resnet, shape)
  assert {p.split('/')[0] for p in by_name.frozen} == {'conv1', 'bn1', 'layer1_0', 'layer1_1',
                                                       'layer1_2'}
  assert 'layer1_0/bn1' in by_name.frozen_modules and 'layer2_0/bn1' not in by_name.frozen_modules


@pytest.mark.parametrize('freeze, message', [
    ('all_but_top:3', r"freeze='all_but_top:3': _TinyResNet has only 2 stages \(layer1_0, layer2_0\)"),
    ('^nothing_here', r"freeze='\^nothing_here' matches no parameter of _TinyResNet"),
    ('.', r"freeze='.' freezes every parameter of _TinyResNet; nothing would train"),
    ('all_but_top:two', r'write all_but_top:N'),
    ('(', r"freeze='\(' is not a valid regular expression"),
])
def test_bad_freeze_settings_are_refused(freeze, message):
  with pytest.raises(UserError, match=message):
    freezing.make_freezer(freeze, _TinyResNet(), (1, 16, 16, 3))


# ------------------------------------------------------- init_from and recipes


def _config(real_mnist, **changes):
  base = dict(model='lenet5', model_kwargs={'activation': 'relu', 'pooling': 'max'},
              dataset='mnist', data_dir=real_mnist['data_dir'], raw_data_dir=real_mnist['raw_dir'],
              batch_size=64, num_train_steps=30, optimizer='adam', learning_rate=2e-3,
              schedule='cosine', log_every_steps=10, eval_every_steps=30,
              checkpoint_every_steps=30, augment='', seed=0, num_devices=1)
  base.update(changes)
  return TrainConfig(**base)


@pytest.fixture(scope='module')
def source(real_mnist, tmp_path_factory):
  """A LeNet-5 with a 12-way head trained 30 steps on the digits: another class count."""
  workdir = str(tmp_path_factory.mktemp('source') / 'lenet12')
  fit(_config(real_mnist, num_classes=12), workdir)
  return workdir, _flat(cvjax.restore(workdir).variables['params'])


def test_init_from_with_a_different_class_count_loads_the_base_and_reinitialises_the_head(
    source, real_mnist, tmp_path):
  """Frozen base + 10-way head: after training, the base is bit-identical to the
  12-way source, and the head has the new shape and moved."""
  workdir, source_params = source
  target = str(tmp_path / 'target')
  results = fit(_config(real_mnist, init_from=workdir, freeze='all_but_head',
                        num_train_steps=20, eval_every_steps=20), target)
  params = _flat(cvjax.restore(target).variables['params'])
  for path in ('conv1/kernel', 'conv2/bias', 'conv3/kernel', 'fc1/kernel'):
    assert _same_bits(params[path], source_params[path]), path
  assert source_params['fc2/kernel'].shape == (84, 12) and params['fc2/kernel'].shape == (84, 10)
  assert results['step'] == 20 and results['num_params'] == sum(
      v.size for p, v in source_params.items() if not p.startswith('fc2')) + 84 * 10 + 10


def test_init_from_refuses_a_source_with_nothing_in_common_or_other_preprocessing(
    real_mnist, tmp_path):
  """(The loop's init_from hook itself is exercised by the tests around this one.)"""
  resnet = models.get_model('resnet20', num_classes=3)
  arrays = {p: np.zeros(s, np.float32) for p, s in common.model_shapes(resnet, 32).items()}
  fake = rundir.write_workdir(str(tmp_path / 'resnet20'), get_task(common.converted_config(
      model='resnet20', num_classes=3, image_size=32, preprocessing='torch'), None), arrays, {})
  state = _lenet_state()
  with pytest.raises(UserError, match=r'trained on torch-normalised inputs but this run uses '
                                      r"the dataset's; set --preprocessing=torch"):
    warm_start.init_from(state, _config(real_mnist, init_from=fake))
  with pytest.raises(UserError, match=r'has no tensor matching lenet5 by path and shape'):
    warm_start.init_from(state, _config(real_mnist, init_from=fake, preprocessing='torch'))
  with pytest.raises(UserError, match=r"init_from='/nonexistent' has no config.json"):
    warm_start.init_from(state, _config(real_mnist, init_from='/nonexistent'))


def _lenet_state():
  model = models.get_model('lenet5', num_classes=10)
  return _init(model, optax.sgd(0.1), (1, 32, 32, 1))


def test_two_phase_trains_the_head_then_the_top_stage_at_a_tenth_of_the_learning_rate(
    source, real_mnist, tmp_path):
  workdir, source_params = source
  config = _config(real_mnist, init_from=workdir, freeze='all_but_head', schedule='constant',
                   num_train_steps=10, eval_every_steps=10, checkpoint_every_steps=10)
  results = transfer.two_phase(config, str(tmp_path / 'tp'), phase2_freeze='all_but_top:1',
                               phase2_lr_scale=0.1)
  phase1 = _flat(cvjax.restore(str(tmp_path / 'tp' / 'phase1')).variables['params'])
  phase2 = _flat(cvjax.restore(results['workdir']).variables['params'])
  # LeNet's stages are its modules: all_but_top:1 trains fc1 and the head fc2.
  assert _same_bits(phase1['fc1/kernel'], source_params['fc1/kernel'])
  assert not _same_bits(phase2['fc1/kernel'], phase1['fc1/kernel'])
  assert _same_bits(phase2['conv3/kernel'], source_params['conv3/kernel'])
  assert not _same_bits(phase2['fc2/kernel'], phase1['fc2/kernel'])
  lrs = [json.loads(line)['learning_rate'] for name in ('phase1', 'phase2')
         for line in open(tmp_path / 'tp' / name / 'metrics.jsonl') if 'learning_rate' in line]
  assert lrs == pytest.approx([2e-3, 2e-4])
  assert results['phase1']['step'] == 10 and results['step'] == 10


def test_feature_extraction_head_and_the_assembled_model_agree_on_the_test_digits(
    source, real_mnist, tmp_path):
  workdir, source_params = source
  config = _config(real_mnist, init_from=workdir, num_train_steps=40, eval_every_steps=40,
                   checkpoint_every_steps=40, eval_batch_size=200)
  results = transfer.feature_extraction(config, str(tmp_path / 'fx'))
  restored = cvjax.restore(results['model_workdir'])
  params = _flat(restored.variables['params'])
  assert _same_bits(params['fc1/kernel'], source_params['fc1/kernel'])
  assert params['fc2/kernel'].shape == (84, 10)
  probs = restored.predict(real_mnist['test_images'])
  accuracy = float(np.mean(probs.argmax(-1) == real_mnist['test_labels']))
  assert results['test_examples'] == 1000 and results['test_accuracy'] > 0.3  # chance: 0.1
  assert accuracy == pytest.approx(results['test_accuracy'], abs=2e-3)


def test_feature_extraction_computes_base_and_head_in_bf16_with_half_precision(
    source, real_mnist, tmp_path):
  workdir, _ = source
  config = _config(real_mnist, init_from=workdir, half_precision='bf16', num_train_steps=40,
                   eval_every_steps=40, checkpoint_every_steps=40, eval_batch_size=200)
  results = transfer.feature_extraction(config, str(tmp_path / 'fx'))
  assert results['test_accuracy'] > 0.3  # chance: 0.1
  task = features.FeatureTask(config, features.FeatureTask.dataset_meta(config))
  model, variables, head, _ = task.base()
  assert task.build_model().dtype == model.dtype == 'bfloat16'
  x = jnp.asarray(real_mnist['test_images'][:16], jnp.float32) / 255.0
  half = jax.jit(features.feature_fn(model, head))(variables, x)
  full = jax.jit(features.feature_fn(model.clone(dtype=jnp.float32), head))(variables, x)
  assert half.dtype == jnp.float32  # features are kept in float32
  assert 0 < float(jnp.abs(half - full).max()) < 0.05 * float(jnp.abs(full).max())


@pytest.mark.parametrize('changes, message', [
    (dict(preprocessing='bgr'), r"unknown preprocessing 'bgr'; valid choices: caffe, tf, torch"),
    (dict(freeze='all_but_top'), r'write all_but_top:N'),
    (dict(init_exclude='[x'), r"init_exclude='\[x' is not a valid regular expression"),
    (dict(num_classes=0), r'num_classes must be positive'),
])
def test_bad_transfer_settings_fail_validation(changes, message):
  with pytest.raises(UserError, match=message):
    TrainConfig(**changes).validate()


def test_model_preprocessing_replaces_the_dataset_normalisation():
  from cvjax import data
  from cvjax.data import preprocess
  image = np.array([[[[255, 128, 0]]]], np.uint8)  # one RGB pixel
  caffe = data.preprocess_for_eval(image, dataset='tf_flowers', image_size=1,
                                   preprocessing='caffe')
  expected = np.array([0.0, 128.0, 255.0]) - np.array(preprocess.CAFFE_BGR_MEAN)  # B, G, R
  np.testing.assert_allclose(caffe[0, 0, 0], expected, atol=1e-3)
  torch = data.preprocess_for_eval(image, dataset='tf_flowers', image_size=1,
                                   preprocessing='torch')
  np.testing.assert_allclose(torch[0, 0, 0], (np.array([255, 128, 0]) / 255 - (0.485, 0.456, 0.406))
                             / np.array((0.229, 0.224, 0.225)), rtol=1e-5)
  with pytest.raises(UserError, match=r"preprocessing 'caffe' is for RGB models"):
    data.preprocess_for_eval(image[..., :1], dataset='mnist', image_size=1, preprocessing='caffe')


def test_converted_source_dir_must_not_exist(tmp_path):
  os.makedirs(tmp_path / 'taken')
  with pytest.raises(UserError, match=r'already exists; choose a new directory'):
    rundir.write_workdir(str(tmp_path / 'taken'), get_task(common.converted_config(
        model='lenet5', num_classes=10, image_size=32, preprocessing='torch'), None), {}, {})
