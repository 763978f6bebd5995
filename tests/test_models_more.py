"""The later model families: published counts, Keras layer parity, shapes, modes, layers, FCN.

Counts and shapes come from `jax.eval_shape` (no compute), cached per (model,
size) so the count and shape tests share one trace. Keras references are
built shape-only under `keras.StatelessScope`; the Keras -> cvjax mapping is
the library's (`cvjax.pretrained.keras_layers`), checked here on every tensor's
name and shape, and on outputs by the parity tests, which convert random Keras
weights and compare logits on small images, with every conv impl.
"""
import collections
import functools
import math
import os
import re
import types

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvjax import errors
from cvjax.models import CONV_IMPLS, get_model, list_models, model_input_shape, model_options
from cvjax.models import blocks, efficientnet, fcn, inception, layers, registry, vit
from cvjax.pretrained import keras_layers
from cvjax.segmentation import metrics

def _key(seed: int = 0):
  return jax.random.key(seed, impl='rbg')


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@functools.cache
def _traced(name: str, size: int | None = None, num_classes: int | None = None,
            train: bool = False, **kwargs):
  """(outputs, variables) as shapes, for x float32[1, size, size, C]."""
  h, _, c = model_input_shape(name)
  size = size or h
  num_classes = num_classes or registry.model_num_classes(name)
  model = get_model(name, num_classes, **kwargs)
  return jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=train),
      jax.ShapeDtypeStruct((1, size, size, c), jnp.float32))


def _counts(name, **kwargs):
  _, variables = _traced(name, **kwargs)
  return _count(variables['params']), _count(variables.get('batch_stats', {}))


# --- registry ------------------------------------------------------------------

NEW_CLASSIFIERS = [
    'googlenet', 'googlenet_torchvision', 'googlenet_cifar', 'inception_v3', 'xception',
    'se_resnet50', 'se_resnet20', 'resnext50_32x4d', 'densenet121', 'densenet169',
    'densenet201', 'densenet_bc100_cifar', 'mobilenet_v1', 'mobilenet_v1_cifar',
    'mobilenet_v2', 'mobilenet_v2_cifar', 'vit_b16', 'vit_ti16', 'vit_tiny_cifar',
    'efficientnet_b0_cifar'] + [f'efficientnet_b{i}' for i in range(8)]
SEGMENTERS = ['fcn32s_vgg16', 'fcn16s_vgg16', 'fcn8s_vgg16', 'fcn8s_resnet18',
              'fcn8s_resnet50', 'fcn8s_tiny', 'deeplabv3_resnet50', 'deeplabv3_resnet101',
              'deeplabv3_tiny']


def test_new_models_are_registered_by_task():
  assert set(NEW_CLASSIFIERS) <= set(list_models())
  assert set(SEGMENTERS) == set(list_models('segmentation'))
  assert not set(SEGMENTERS) & set(list_models())  # the classification tests skip them
  assert all(registry.model_task(n) == 'segmentation' for n in SEGMENTERS)
  assert model_input_shape('inception_v3') == model_input_shape('xception') == (299, 299, 3)
  assert [model_input_shape(f'efficientnet_b{i}')[0] for i in range(8)] == [
      224, 240, 260, 300, 380, 456, 528, 600]  # Tan & Le 2019 / Keras default sizes


def test_family_options():
  assert {'aux_logits', 'small_input'} <= set(model_options('googlenet'))
  assert 'batch_norm' not in model_options('googlenet')  # googlenet / _torchvision: two models
  assert {'alpha', 'small_input'} <= set(model_options('mobilenet_v2'))
  assert {'drop_connect_rate', 'small_input'} <= set(model_options('efficientnet_b3'))
  assert {'dropout_rate', 'attention_dropout_rate'} <= set(model_options('vit_b16'))
  assert 'growth_rate' in model_options('densenet121')


# --- parameter counts -------------------------------------------------------------

# (name, params at the registry's class count, BatchNorm statistics or None, reference).
PUBLISHED = [
    ('googlenet', 6_998_552, None, 'Szegedy et al. 2015 Table 1 layer sizes, with biases'),
    ('googlenet_torchvision', 6_624_904, 14_560, 'torchvision googlenet(aux_logits=False)'),
    ('inception_v3', 23_817_352, 34_432, 'Keras InceptionV3 23,851,784 = params + stats'),
    ('xception', 22_855_952, 54_528, 'Keras Xception 22,910,480 = params + stats'),
    ('se_resnet50', 28_088_024, 53_120, 'timm seresnet50; Hu et al. 2018 Table 2: 28.09M'),
    ('se_resnet20', 272_095, 1_376, 'ResNet-20 269,722 + SE 147 + 486 + 1,740 (by hand)'),
    ('resnext50_32x4d', 25_028_904, 68_224, 'torchvision resnext50_32x4d'),
    ('densenet121', 7_978_856, 83_648, 'torchvision densenet121; Keras 8,062,504 with stats'),
    ('densenet169', 14_149_480, 158_400, 'torchvision densenet169; Keras 14,307,880'),
    ('densenet201', 20_013_928, 229_056, 'torchvision densenet201; Keras 20,242,984'),
    ('densenet_bc100_cifar', 769_162, 23_988, 'Huang et al. 2017 Table 2: 0.8M'),
    ('mobilenet_v1', 4_231_976, 21_888, 'Keras MobileNet 4,253,864 = params + stats'),
    ('mobilenet_v2', 3_504_872, 34_112, 'torchvision mobilenet_v2; Keras 3,538,984'),
    ('vit_b16', 86_567_656, None, 'torchvision vit_b_16; Dosovitskiy et al. 2021: 86M'),
    ('vit_ti16', 5_717_416, None, 'timm deit_tiny_patch16_224 (Touvron et al. 2021)'),
    ('vit_tiny_cifar', 1_806_538, None, 'this file: 6 blocks of 295,872 + embeddings'),
]
# Keras EfficientNetB0…B7 count_params(): params + BN statistics + 7 (its Normalization layer).
KERAS_EFFICIENTNET = [5_330_571, 7_856_239, 9_177_569, 12_320_535, 19_466_823, 30_562_527,
                      43_265_143, 66_658_687]


@pytest.mark.parametrize('name, params, stats, reference', PUBLISHED,
                         ids=[p[0] for p in PUBLISHED])
def test_published_parameter_counts(name, params, stats, reference):
  del reference  # named in the table above, shown by pytest on failure
  got_params, got_stats = _counts(name)
  assert got_params == params
  assert got_stats == (stats or 0)


@pytest.mark.slow
@pytest.mark.parametrize('variant', range(8))
def test_efficientnet_counts_match_keras_b0_to_b7(variant):
  params, stats = _counts(f'efficientnet_b{variant}')
  assert params + stats + 7 == KERAS_EFFICIENTNET[variant]
  if variant == 0:
    assert (params, stats) == (5_288_548, 42_016)  # torchvision efficientnet_b0: 5,288,548


def test_googlenet_aux_heads_add_torchvision_s_inception_aux_params():
  # torchvision googlenet(aux_logits=True): 13,004,888; the paper layout: 13,378,280.
  assert _counts('googlenet_torchvision', aux_logits=True, train=True)[0] == 13_004_888
  assert _counts('googlenet', aux_logits=True, train=True)[0] == 13_378_280


def test_se_block_adds_exactly_two_dense_layers_per_bottleneck():
  # C = 4f: 2·C·C/16 + C/16 + C per block, 3/4/6/3 blocks of C = 256/512/1024/2048.
  se = sum(n * (2 * c * c // 16 + c // 16 + c) for n, c in
           [(3, 256), (4, 512), (6, 1024), (3, 2048)])
  assert se == 2_530_992
  assert _counts('se_resnet50')[0] - 25_557_032 == se  # minus torchvision resnet50


# --- Keras: layer-by-layer shapes, names, and outputs --------------------------------------

def _keras():
  os.environ.setdefault('KERAS_BACKEND', 'jax')
  import keras  # pylint: disable=g-import-not-at-top
  return keras


def _keras_layer_weights(keras_model, values=None):
  """{Keras layer name: its weights in Keras' order} (what `keras.read_h5` gives):
  `values[weight path]`, or zero-strided placeholders of the right shapes (no memory)."""
  return {l.name: [np.broadcast_to(np.float32(0), w.shape) if values is None else values[w.path]
                   for w in l.weights]
          for l in keras_model.layers if l.weights}


# (cvjax name, keras.applications name, Keras count minus ours, cvjax layers Keras leaves
# unnamed: conv2d_N / batch_normalization_N, matched by creation order)
KERAS_PORTS = [
    ('inception_v3', 'InceptionV3', 0, None),  # every conv2d_bn is unnamed in Keras
    ('xception', 'Xception', 0, {'block2_residual', 'block3_residual', 'block4_residual',
                                 'block13_residual'}),
    ('densenet121', 'DenseNet121', 0, set()),
    ('mobilenet_v1', 'MobileNet', 0, set()),
    ('mobilenet_v2', 'MobileNetV2', 0, set()),
    ('efficientnet_b0', 'EfficientNetB0', 7, set()),
]


@pytest.mark.parametrize('name, keras_name, extra, unnamed', KERAS_PORTS,
                         ids=[p[0] for p in KERAS_PORTS])
def test_keras_ports_match_layer_by_layer(name, keras_name, extra, unnamed):
  keras = _keras()
  with keras.StatelessScope(initialize_variables=False):
    ref = getattr(keras.applications, keras_name)(weights=None)
  # Every Keras tensor finds its cvjax variable by name or creation order, with its shape
  # (check_against inside), and none is left over.
  arrays, names = keras_layers.to_cvjax(_keras_layer_weights(ref), name,
                                        model_input_shape(name)[0])
  assert sum(a.size for a in arrays.values()) + extra == ref.count_params()
  auto = {'_'.join(path.split('/')[1:-1]) for path, source in names.items()
          if re.match(r'(conv2d|batch_normalization)(_\d+)?/', source)}
  if unnamed is not None:  # every other layer has Keras' name: path joined with '_'
    assert auto == unnamed | {f'{u}_bn' for u in unnamed}
  else:  # InceptionV3: all 94 conv2d_bn, conv and BN each matched by number
    assert len(auto) == 2 * 94
    assert {'_'.join(p.split('/')[1:-1]) for p in names} - auto == {'predictions'}


def _copy_keras_weights(name, keras_model, values, size, **kwargs):
  """cvjax variables for `name` at size², holding `values` {Keras weight path: array},
  through the library's mapping (MobileNets' alpha read off the weights)."""
  layers = _keras_layer_weights(keras_model, values)
  assert keras_layers.model_kwargs(layers, name) == kwargs
  arrays, _ = keras_layers.to_cvjax(layers, name, size)
  return traverse_util.unflatten_dict({tuple(k.split('/')): jnp.asarray(v)
                                       for k, v in arrays.items()})


def _random_keras_values(keras_model, seed=0):
  """{weight path: array}: He-scaled kernels, random BN γ, β, mean and variance (so that a
  mix-up of any two would show)."""
  rng = np.random.default_rng(seed)
  values = {}
  for layer in keras_model.layers:
    depthwise = type(layer).__name__ in ('DepthwiseConv2D', 'SeparableConv2D')
    for w in layer.weights:
      shape, leaf = tuple(w.shape), w.path.rsplit('/', 1)[-1]
      if leaf == 'moving_variance':
        value = rng.uniform(0.5, 1.5, shape)
      elif leaf == 'gamma':
        value = rng.uniform(0.8, 1.2, shape)
      elif leaf in ('moving_mean', 'beta', 'bias'):
        value = rng.normal(0, 0.1, shape)
      else:  # kernels: He normal over the true fan-in
        fan_in = math.prod(shape[:-1]) // (shape[-2] if depthwise and 'pointwise' not in leaf
                                           else 1)
        value = rng.normal(0, math.sqrt(2 / fan_in), shape)
      values[w.path] = value.astype(np.float32)
  return values


# Odd and even sizes, so that Keras' asymmetric 'same' paddings are exercised (MobileNet v1
# at 65: its fixed (0, 1) pads differ from 'same' there); narrow MobileNets to keep it quick.
# MobileNetV2 and EfficientNetB0 are checked end to end, through a saved file, the convert
# CLI and cvjax.restore, in test_pretrained.py.
PARITY = [
    ('mobilenet_v1', 'MobileNet', 65, dict(alpha=0.25)),
    ('xception', 'Xception', 71, {}),
    ('inception_v3', 'InceptionV3', 75, {}),
    # ~15 s of CPU, mostly XLA compiling DenseNet's 58 concatenations twice (Keras, cvjax).
    pytest.param('densenet121', 'DenseNet121', 33, {}, marks=pytest.mark.slow),
]


@functools.lru_cache(maxsize=1)  # the conv_impl cases of one model share it
def _keras_reference(name, keras_name, size, kwargs_items):
  """(Keras model, its random weight values, input x, Keras' logits for x)."""
  keras = _keras()
  with keras.StatelessScope(initialize_variables=False):  # no initialisers: fast
    ref = getattr(keras.applications, keras_name)(
        weights=None, input_shape=(size, size, 3), classes=7, classifier_activation=None,
        **dict(kwargs_items))
  values = _random_keras_values(ref)
  x = np.random.default_rng(1).uniform(0, 1, (2, size, size, 3)).astype(np.float32)
  trainable = [values[w.path] for w in ref.trainable_variables]
  others = [values[w.path] if w.path in values else np.zeros(w.shape, w.dtype)  # + a dropout seed
            for w in ref.non_trainable_variables]
  keras_forward = jax.jit(lambda t, n, x: ref.stateless_call(t, n, x, training=False)[0])
  return ref, values, x, np.asarray(keras_forward(trainable, others, x))  # compiled: 10× faster


@pytest.mark.slow
@pytest.mark.parametrize('conv_impl', CONV_IMPLS)
@pytest.mark.parametrize('name, keras_name, size, kwargs', PARITY,
                         ids=['mobilenet_v1', 'xception', 'inception_v3', 'densenet121'])
def test_keras_weights_give_keras_outputs(name, keras_name, size, kwargs, conv_impl):
  ref, values, x, want = _keras_reference(name, keras_name, size, tuple(sorted(kwargs.items())))
  model = get_model(name, 7, conv_impl=conv_impl, **kwargs)
  variables = _copy_keras_weights(name, ref, values, size, **kwargs)
  got = jax.jit(functools.partial(model.apply, train=False))(variables, jnp.asarray(x))
  assert np.abs(want).max() > 0.1 and not np.allclose(want[0], want[1], rtol=1e-2)  # not degenerate
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


# --- shapes -----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize('name, sizes', [
    ('googlenet', (224, 160)), ('googlenet_cifar', (32, 64)), ('inception_v3', (299, 75)),
    ('xception', (299, 71)), ('se_resnet50', (224, 96)), ('resnext50_32x4d', (224, 128)),
    ('densenet121', (224, 96)), ('densenet_bc100_cifar', (32, 48)), ('mobilenet_v1', (224, 97)),
    ('mobilenet_v2', (224, 97)), ('mobilenet_v2_cifar', (32, 28)),
    ('efficientnet_b0', (224, 97)), ('efficientnet_b7', (600, 64)),
    ('vit_b16', (224, 384)), ('vit_tiny_cifar', (32, 28))])
def test_logits_shape_at_two_input_sizes(name, sizes):
  for size in sizes:
    logits, _ = _traced(name, size=size, num_classes=5)
    assert logits.shape == (1, 5) and logits.dtype == jnp.float32


def test_param_counts_do_not_depend_on_input_size_except_vit_s_position_embeddings():
  for name in ('inception_v3', 'efficientnet_b7', 'densenet121'):
    assert _traced(name, size=96, num_classes=5)[1]['params'].keys() == \
        _traced(name, num_classes=5)[1]['params'].keys()
    assert _count(_traced(name, size=96, num_classes=5)[1]) == \
        _count(_traced(name, num_classes=5)[1])
  p224 = _traced('vit_b16', size=224, num_classes=5)[1]['params']['pos_embedding']
  p384 = _traced('vit_b16', size=384, num_classes=5)[1]['params']['pos_embedding']
  assert (p224.shape, p384.shape) == ((1, 197, 768), (1, 577, 768))


def test_efficientnet_compound_scaling_widths_and_depths():
  # Keras' round_filters / round_repeats: B7 is 2.0× wide, 3.1× deep.
  assert efficientnet.round_filters(32, 2.0) == 64
  assert efficientnet.round_filters(1280, 2.0) == 2560
  assert efficientnet.round_filters(24, 1.1) == 24 and efficientnet.round_filters(40, 1.2) == 48
  blocks_of = lambda d: sum(efficientnet.round_repeats(n, d) for _, n, *_ in
                            efficientnet.B0_STAGES)
  assert [blocks_of(efficientnet.COEFFICIENTS[f'b{i}'][1]) for i in range(8)] == [
      16, 23, 23, 26, 32, 39, 45, 55]
  names = _traced('efficientnet_b7', size=64, num_classes=5)[1]['params']
  assert sum(k.startswith('block') for k in names) == 55
  assert names['top_conv']['kernel'].shape == (1, 1, 640, 2560)


def test_summary_macs_match_torchvision_published_gflops():
  from cvjax import summary
  # torchvision's "GFLOPS" are multiply-adds; ViT's include the attention products.
  for name, gmacs in [('googlenet_torchvision', 1.50), ('resnext50_32x4d', 4.23),
                      ('densenet121', 2.83), ('mobilenet_v2', 0.30), ('efficientnet_b0', 0.39)]:
    assert round(summary.summary(name)['macs'] / 1e9, 2) == gmacs, name
  vit_macs = summary.summary('vit_b16')['macs'] + vit.attention_macs(224, 16, 768, 12)
  assert round(vit_macs / 1e9, 2) == 17.56


# --- train / eval modes ------------------------------------------------------------

def test_googlenet_aux_heads_only_in_training():
  (logits, aux1, aux2), _ = _traced('googlenet', num_classes=5, train=True, aux_logits=True)
  assert logits.shape == aux1.shape == aux2.shape == (1, 5)
  logits, variables = _traced('googlenet', num_classes=5, aux_logits=True)
  assert logits.shape == (1, 5) and {'aux1', 'aux2'} <= set(variables['params'])
  assert not {'aux1', 'aux2'} & set(_traced('googlenet', num_classes=5)[1]['params'])
  logits = jnp.array([[2.0, 0.0]])
  assert float(inception.aux_loss((logits, logits, logits), jnp.array([0]))) == \
      pytest.approx(1.6 * np.log(1 + np.exp(-2.0)), rel=1e-5)


@pytest.mark.slow
def test_se_resnet20_bn_statistics_move_in_train_only():
  model = get_model('se_resnet20', 10)
  x = jax.random.normal(_key(1), (4, 8, 8, 3))
  variables = jax.jit(model.init)(_key(), x)
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  _, updates = apply(variables, x, train=True, mutable=('batch_stats',))
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'],
                       updates['batch_stats'])
  assert all(jax.tree.leaves(moved))
  eval_a = apply(variables, x, train=False)
  other = x.at[1:].set(0.0)
  np.testing.assert_allclose(apply(variables, other, train=False)[0], eval_a[0], atol=1e-5)


def test_stochastic_depth_drops_whole_examples_in_training_only():
  y = jnp.ones((64, 3, 3, 4))
  layer = blocks.StochasticDepth(0.5)
  out = layer.apply({}, y, deterministic=False, rngs={'dropout': _key(3)})
  per_example = np.asarray(out).reshape(64, -1)
  assert set(np.unique(per_example)) <= {0.0, 2.0}  # kept examples scaled by 1/(1 - 0.5)
  assert np.all(per_example.min(1) == per_example.max(1))  # one coin per example
  assert 10 < (per_example[:, 0] == 0).sum() < 54
  np.testing.assert_array_equal(layer.apply({}, y, deterministic=True), y)


def test_efficientnet_drop_connect_grows_linearly_and_is_off_in_eval():
  rates = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, efficientnet.MBConv):
      rates[context.module.name] = context.module.drop_rate
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    _traced.__wrapped__('efficientnet_b0', size=32, num_classes=5)
  assert rates['block1a'] == 0.0 and rates['block7a'] == pytest.approx(0.2 * 15 / 16)
  assert rates['block2b'] == pytest.approx(0.2 * 2 / 16)
  # A block with a residual: rate 1 drops the branch entirely (output = input) in training.
  norm = functools.partial(nn.BatchNorm, use_running_average=True)
  block = efficientnet.MBConv(8, 3, 1, 6, drop_rate=1.0, norm=norm)
  x = jax.random.normal(_key(1), (2, 5, 5, 8))
  variables = block.init(_key(), x, train=False)
  np.testing.assert_array_equal(
      block.apply(variables, x, train=True, rngs={'dropout': _key(2)}), x)
  assert not np.allclose(block.apply(variables, x, train=False), x)


def test_vit_dropout_is_random_in_train_and_off_in_eval():
  model = vit.ViT(patch_size=4, hidden_size=16, depth=1, num_heads=2, mlp_dim=32,
                  num_classes=3, dropout_rate=0.3)
  x = jax.random.normal(_key(1), (2, 8, 8, 1))
  variables = jax.jit(model.init)(_key(), x)  # eagerly, every op would compile
  head = variables['params']['head']
  variables['params']['head'] = {**head, 'kernel': jnp.ones_like(head['kernel'])}  # zero-init
  apply = jax.jit(model.apply, static_argnames='train')
  evals = [apply(variables, x) for _ in range(2)]
  np.testing.assert_array_equal(*evals)
  train = [apply(variables, x, train=True, rngs={'dropout': _key(s)}) for s in (2, 3, 2)]
  assert not np.allclose(train[0], train[1]) and not np.allclose(train[0], evals[0])
  np.testing.assert_array_equal(train[0], train[2])


# --- layers ------------------------------------------------------------------------

def test_se_block_matches_the_squeeze_excitation_formula():
  x = jax.random.normal(_key(1), (2, 3, 3, 32))
  se = blocks.SEBlock(reduction=16)
  variables = se.init(_key(), x)
  p = jax.tree.map(np.asarray, variables['params'])
  assert p['reduce']['kernel'].shape == (32, 2) and p['expand']['kernel'].shape == (2, 32)
  xn = np.asarray(x, np.float64)
  z = xn.mean(axis=(1, 2))                                                # squeeze [B, C]
  s = np.maximum(z @ p['reduce']['kernel'] + p['reduce']['bias'], 0)      # [B, C/16]
  s = 1 / (1 + np.exp(-(s @ p['expand']['kernel'] + p['expand']['bias'])))  # [B, C]
  np.testing.assert_allclose(se.apply(variables, x), xn * s[:, None, None, :], rtol=1e-5,
                             atol=1e-6)
  conv = blocks.SEBlock(squeeze_features=3, conv=layers.conv_general)
  shapes = jax.tree.map(jnp.shape, conv.init(_key(), x)['params'])
  assert shapes['reduce']['kernel'] == (1, 1, 32, 3)  # Keras EfficientNet's se_reduce


def test_depth_pool_takes_the_max_of_each_group_of_channels():
  x = jnp.array([1., 5., 2., 7., 3., 0.]).reshape(1, 1, 1, 6)
  np.testing.assert_array_equal(blocks.DepthPool(3).apply({}, x).ravel(), [5., 7.])
  np.testing.assert_array_equal(blocks.DepthPool(2).apply({}, x).ravel(), [5., 7., 3.])
  with pytest.raises(errors.UserError, match='divisible by 4'):
    blocks.DepthPool(4).apply({}, x)


def test_global_pools():
  x = jnp.arange(8.0).reshape(1, 2, 2, 2)
  np.testing.assert_array_equal(blocks.GlobalAvgPool().apply({}, x), [[3., 4.]])
  np.testing.assert_array_equal(blocks.GlobalMaxPool().apply({}, x), [[6., 7.]])


def test_keras_same_padding_is_asymmetric_on_even_inputs():
  assert blocks.keras_same((224, 224), 3, 2) == ((0, 1), (0, 1))
  assert blocks.keras_same((225, 75), 3, 2) == ((1, 1), (1, 1))
  assert blocks.keras_same((112, 112), 5, 2) == ((1, 2), (1, 2))  # EfficientNet k5 s2
  assert blocks.keras_same((7, 7), 3, 1) == ((1, 1), (1, 1))
  assert blocks.keras_same((17, 17), (1, 7), 1) == ((0, 0), (3, 3))
  # padded cells never win the max, and are not counted in the average
  x = -jnp.ones((1, 4, 4, 1))
  np.testing.assert_array_equal(blocks.MaxPoolSame(3, 2).apply({}, x), -jnp.ones((1, 2, 2, 1)))
  np.testing.assert_array_equal(blocks.AvgPoolSame(3, 1).apply({}, x), x)


def test_ceil_mode_max_pool_sizes_like_torch():
  def sizes(n, k, s, p=0):
    return blocks.MaxPoolCeil(k, s, p).apply({}, jnp.zeros((1, n, n, 1))).shape[1]
  assert [sizes(112, 3, 2), sizes(56, 3, 2), sizes(28, 3, 2), sizes(14, 2, 2)] == [56, 28, 14, 7]
  assert sizes(14, 3, 2) == 7 and sizes(7, 3, 1, 1) == 7 and sizes(5, 2, 2) == 3
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  np.testing.assert_array_equal(blocks.MaxPoolCeil(2, 2).apply({}, x)[0, :, :, 0],
                                [[4., 5.], [7., 8.]])


def test_separable_conv_counts_depthwise_and_pointwise():
  shapes = jax.tree.map(jnp.shape, blocks.SeparableConv(728).init(
      _key(), jnp.zeros((1, 5, 5, 728)))['params'])
  assert shapes == {'depthwise': {'kernel': (3, 3, 1, 728)},
                    'pointwise': {'kernel': (1, 1, 728, 728)}}  # 6,552 + 529,984


# --- FCN and segmentation ------------------------------------------------------------

@pytest.mark.parametrize('name, sizes', [('fcn8s_vgg16', (224, 96)), ('fcn32s_vgg16', (64,)),
                                         ('fcn16s_vgg16', (64,)), ('fcn8s_resnet50', (224, 160)),
                                         ('fcn8s_tiny', (128, 96))])
def test_fcn_outputs_per_pixel_logits_at_the_input_size(name, sizes):
  for size in sizes:
    logits, _ = _traced(name, size=size, num_classes=7)
    assert logits.shape == (1, size, size, 7) and logits.dtype == jnp.float32


def test_fcn8s_vgg16_parameter_count_and_size_check():
  # Long et al.'s voc-fcn8s: VGG-16 convs 14,714,688, fc6 102,764,544, fc7 16,781,312,
  # scores 86,037 + 10,773 + 5,397, learned deconvs 7,056 + 7,056 + 112,896.
  assert _counts('fcn8s_vgg16')[0] == 134_489_759
  with pytest.raises(errors.UserError, match='multiples of 32'):
    _traced.__wrapped__('fcn8s_tiny', size=100)


def test_fcn_upsampling_is_bilinear_and_aligned():
  n, s = 6, 8
  x = jnp.arange(float(n)).reshape(1, n, 1, 1) * jnp.ones((1, n, n, 1))
  up = fcn.Upsample(s)
  y = np.asarray(up.apply(up.init(_key(), x), x))[0, :, n * s // 2, 0]
  centres = (np.arange(n * s) + 0.5) / s - 0.5  # output pixel centres in input coordinates
  inside = (centres >= 0) & (centres <= n - 1)
  np.testing.assert_allclose(y[inside], centres[inside], atol=1e-5)
  assert y.shape == (n * s,)


def test_miou_on_hand_made_masks():
  labels = jnp.array([[[0, 0, 1, 1],
                       [0, 0, 1, 1],
                       [2, 2, 2, 2]]])
  preds = jnp.array([[[0, 1, 1, 1],
                      [0, 0, 1, 1],
                      [2, 2, 0, 2]]])
  c = np.asarray(metrics.confusion_matrix(preds, labels, 4))
  np.testing.assert_array_equal(c[:3, :3], [[3, 1, 0], [0, 4, 0], [1, 0, 3]])
  # IoU: class 0: 3 / (4 + 4 − 3) = 0.6; class 1: 4 / 5 = 0.8; class 2: 3 / 4 = 0.75;
  # class 3 is in neither (skipped).
  np.testing.assert_allclose(metrics.iou_per_class(c)[:3], [0.6, 0.8, 0.75])
  assert np.isnan(metrics.iou_per_class(c)[3])
  assert metrics.mean_iou(c) == pytest.approx((0.6 + 0.8 + 0.75) / 3)
  assert metrics.pixel_accuracy(c) == pytest.approx(10 / 12)
  ignored = labels.at[0, 2, :].set(255)  # VOC's border label: not counted
  assert int(metrics.confusion_matrix(preds, ignored, 4).sum()) == 8


def _seg_task():
  from cvjax import tasks
  from cvjax.train import TrainConfig
  return tasks.get_task(TrainConfig(task='segmentation', model='fcn8s_tiny'), None)


def test_segmentation_task_is_registered_and_its_loss_is_per_pixel_ce():
  task = _seg_task()
  assert task.name == 'segmentation' and task.main_metric == 'miou'
  labels = jnp.array([[[0, 1], [2, 255]]])
  uniform = jnp.zeros((1, 2, 2, 3))
  loss, m = task.loss(uniform, {'segmentation': labels}, None)
  assert float(loss) == pytest.approx(np.log(3), rel=1e-6)  # the 255 pixel is ignored
  sure = 20.0 * jax.nn.one_hot(jnp.array([[[0, 1], [2, 0]]]), 3)
  loss, m = task.loss(sure, {'segmentation': labels}, None)
  assert float(loss) < 1e-6 and float(m['accuracy']) == 1.0
  wrong = 20.0 * jax.nn.one_hot(jnp.array([[[1, 1], [2, 0]]]), 3)
  assert float(task.loss(wrong, {'segmentation': labels}, None)[0]) == pytest.approx(20 / 3, rel=1e-4)


def test_segmentation_eval_sums_ignore_padding_examples():
  task = _seg_task()
  labels = jnp.array([[[0, 1], [1, 1]], [[2, 2], [2, 2]]])
  logits = 10.0 * jax.nn.one_hot(jnp.array([[[0, 1], [0, 1]], [[0, 0], [0, 0]]]), 3)
  sums, _ = task.eval_outputs(logits, {'segmentation': labels,
                                       'mask': jnp.array([True, False])})
  ev = task.evaluator()
  ev.update(jax.device_get(sums), {})
  result = ev.result()
  assert result['count'] == 1
  assert result['accuracy'] == pytest.approx(0.75)
  assert result['miou'] == pytest.approx((1 / 2 + 2 / 3) / 2)  # class 2 only in padding


@pytest.fixture(scope='module')
def shapes_data_dir(tmp_path_factory):
  """`cvjax_shapes/tiny` (96², 64/16/32 images) built offline into a temporary TFDS dir."""
  pytest.importorskip('skimage')
  from cvjax.segmentation import data
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  data.dataset_meta('cvjax_shapes/tiny', data_dir)
  return data_dir


def test_shapes_segmentation_batches(shapes_data_dir):
  from cvjax.data import pipeline
  from cvjax.segmentation import data
  from cvjax.train import steps
  meta = data.dataset_meta('cvjax_shapes/tiny', shapes_data_dir)
  assert meta.num_classes == 7 and meta.class_names[0] == 'background'
  assert meta.split_sizes == {'train': 64, 'validation': 16, 'test': 32}
  sharding = steps.batch_sharded(steps.make_mesh())
  spec = data.data_spec('cvjax_shapes/tiny', image_size=64)
  batches = lambda start: pipeline.train_batches(spec, global_batch_size=16, sharding=sharding,
                                                 seed=0, start_step=start, num_examples=64,
                                                 data_dir=shapes_data_dir)
  it = batches(0)
  first = [next(it) for _ in range(5)]
  b = first[0]
  assert b['image'].shape == (16, 64, 64, 3) and b['image'].dtype == jnp.float32
  assert b['segmentation'].shape == (16, 64, 64) and b['segmentation'].dtype == jnp.int32
  values = np.unique(np.concatenate([np.asarray(f['segmentation']).ravel() for f in first]))
  assert values[0] == 0 and set(values) <= set(range(7)) and len(values) > 3
  resumed = next(batches(4))  # step 4 (epoch 1) computed directly from the step
  np.testing.assert_array_equal(resumed['image'], first[4]['image'])
  evals = list(pipeline.eval_batches(spec, split='validation', global_batch_size=24,
                                     sharding=sharding, data_dir=shapes_data_dir))
  assert len(evals) == 1 and int(np.sum(evals[0]['mask'])) == 16
  with pytest.raises(errors.UserError, match='cvjax_shapes'):
    data.check_dataset('voc')
  # the classification ops apply: pad_crop pads the mask with the ignored label
  shifted = next(pipeline.local_train_batches(spec, global_batch_size=16, seed=0,
                                              augment='pad_crop(4)', num_examples=64,
                                              data_dir=shapes_data_dir))
  assert set(np.unique(shifted['segmentation'])) <= set(range(7)) | {255}


@pytest.mark.slow
def test_fcn_trains_on_shapes_through_the_one_loop(shapes_data_dir, tmp_path):
  """With ResNet-20's augmentation string: one --augment grammar for every task."""
  from cvjax.tasks import fit
  from cvjax.train import TrainConfig
  config = TrainConfig(task='segmentation', model='fcn8s_tiny', dataset='cvjax_shapes/tiny',
                       image_size=64, data_dir=shapes_data_dir, batch_size=16,
                       num_train_steps=8, optimizer='adam', learning_rate=3e-3,
                       log_every_steps=4, eval_every_steps=8, augment='flip_lr|pad_crop(4)',
                       conv_impl='xla')  # the loop is under test here, not the CPU lowerings
  results = fit(config, str(tmp_path))
  assert results['step'] == 8 and results['test_examples'] == 32
  assert 0.0 <= results['test_miou'] <= 1.0
  assert results['test_accuracy'] > 0.5  # the background alone is most of the pixels


# --- experiments and the comparison ---------------------------------------------------

def _family_flagfiles():
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      'experiments', 'configs')
  files = {}
  for name in sorted(os.listdir(root)):
    with open(os.path.join(root, name)) as f:
      lines = f.read().splitlines()
    if lines and ('experiments.models ' in lines[0] or 'experiments.fcn ' in lines[0]):
      files[name] = lines
  return files


def test_family_flagfiles_state_their_command_and_use_known_flags_and_models():
  import dataclasses
  from cvjax.train.config import TrainConfig, parse_kwargs
  files = _family_flagfiles()
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  assert len(files) >= 20  # each family on CIFAR-sized inputs and on ImageNet, plus FCN
  known = {f.name for f in dataclasses.fields(TrainConfig)} | {'workdir'}
  datasets = collections.Counter()
  for name, lines in files.items():
    assert lines[0].endswith(f'--flagfile=experiments/configs/{name}'), name
    comments = ' '.join(l for l in lines if l.startswith('#'))
    docs = re.findall(r'docs/[\w./-]+\.md', comments)  # where its results are written up
    assert docs or 'measured' in comments or 'Expect' in comments, name  # or 'not measured'
    for doc in docs:
      assert os.path.exists(os.path.join(repo, doc)), (name, doc)
    flags = dict(l[2:].split('=', 1) for l in lines if l.startswith('--'))
    assert set(flags) <= known, (name, set(flags) - known)
    assert flags['model'] in list_models(None), name
    assert set(parse_kwargs(flags.get('model_kwargs', ''))) <= set(model_options(flags['model']))
    datasets[flags['dataset']] += 1
  assert datasets['cifar10'] >= 9 and datasets['imagenet2012'] >= 9


def test_compare_models_rejects_bad_input_and_writes_table_and_plot(tmp_path, capsys):
  from benchmarks import compare_models
  assert compare_models.main(['--models=resnet51']) == 2
  assert capsys.readouterr().err.startswith("error: unknown model 'resnet51'")
  assert compare_models.main(['--models=lenet5', '--train_steps=0']) == 2
  assert compare_models.main(['--models=lenet5', '--conv_impl=fast']) == 2
  assert capsys.readouterr().err.splitlines()[-1].startswith("error: unknown conv impl 'fast'")
  rows = [{'model': 'lenet5', 'params': 61_706, 'macs': 416_520, 'images_per_second': 9000.0,
           'accuracy': 0.81, 'train_seconds': 12.0},
          {'model': 'vit_tiny_cifar', 'params': 1_800_394, 'macs': 120e6,
           'images_per_second': 300.0, 'accuracy': 0.78, 'train_seconds': 200.0}]
  args = types.SimpleNamespace(train_steps=300, batch_size=128, learning_rate=2e-3, seed=0,
                               infer_batch=256, repeats=5, eval_examples=2000)
  table = compare_models.markdown(rows, args)
  assert '| lenet5 | LeNet | 61,706 | 416.52K | 9,000 | 0.8100 | 12 |' in table
  compare_models.scatter(rows, str(tmp_path / 'plot.png'), args)
  assert (tmp_path / 'plot.png').read_bytes()[:4] == b'\x89PNG'
