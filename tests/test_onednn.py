"""oneDNN's convolutions (cvjax.models.onednn): the same numbers as lax.conv, forward and both
gradients, on every geometry a model uses; the fallback when the library is missing."""
import functools
import warnings

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import optax
import pytest
from jax import lax

from cvjax import models
from cvjax.models import base, conv_lowering, onednn
from cvjax.models.onednn import build

pytestmark = pytest.mark.skipif(
    not onednn.available(), reason='oneDNN convolutions are not built on this machine '
    '(python -m cvjax.models.onednn.build); cvjax computes with XLA')

DN = ('NHWC', 'HWIO', 'NHWC')


def _conv_pair(strides, padding, dilation, groups):
  kwargs = dict(window_strides=strides, padding=padding, rhs_dilation=dilation,
                dimension_numbers=DN, feature_group_count=groups)
  return (functools.partial(onednn.conv_general_dilated, **kwargs),
          functools.partial(lax.conv_general_dilated, **kwargs))


# (batch, height, width, C_in, C_out, kernel (kh, kw), strides, padding, dilation, groups)
SWEEP = [
    (2, 9, 7, 3, 5, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),      # odd sizes, few channels
    (1, 8, 8, 4, 8, (3, 3), (2, 2), ((0, 1), (0, 1)), (1, 1), 1),      # batch 1, 'SAME' at s2
    (3, 11, 10, 6, 9, (3, 3), (2, 2), ((2, 2), (2, 2)), (2, 2), 3),    # dilated and grouped
    (2, 8, 8, 8, 8, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 8),      # depthwise
    (2, 9, 9, 6, 12, (5, 5), (2, 2), ((2, 2), (2, 2)), (1, 1), 6),     # depthwise, multiplier 2
    (2, 7, 7, 4, 6, (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),      # 1×1
    (2, 9, 9, 16, 8, (1, 1), (2, 2), ((0, 0), (0, 0)), (1, 1), 1),     # strided 1×1 shortcut
    (2, 10, 10, 3, 4, (5, 5), (3, 3), ((1, 2), (0, 3)), (1, 1), 1),    # asymmetric padding, s3
    (1, 13, 6, 2, 3, (3, 1), (1, 2), ((1, 1), (0, 0)), (1, 1), 1),     # non-square kernel, strides
    (2, 12, 12, 8, 16, (7, 7), (2, 2), ((3, 3), (3, 3)), (1, 1), 1),   # a ResNet stem
    (2, 5, 5, 4, 4, (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),      # 'VALID'
    (2, 6, 6, 8, 8, (3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2), 2),      # DeepLab's atrous, grouped
]


@pytest.mark.parametrize('b, h, w, c, o, k, strides, padding, dilation, groups', SWEEP)
def test_forward_and_both_gradients_match_lax(b, h, w, c, o, k, strides, padding, dilation, groups):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(b, h, w, c)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(*k, c // groups, o)), jnp.float32)
  ours, ref = _conv_pair(strides, padding, dilation, groups)
  want = ref(x, kernel)
  got = jax.jit(ours)(x, kernel)
  assert got.shape == want.shape
  # Sums of up to 400 products of unit normals: float32 rounding differs by order.
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  cotangent = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  grads = lambda f: jax.jit(lambda x, w: jax.vjp(f, x, w)[1](cotangent))(x, kernel)
  for g, g_ref in zip(grads(ours), grads(ref)):
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-4)


def test_each_pass_is_one_onednn_custom_call():
  ours, _ = _conv_pair((1, 1), ((1, 1), (1, 1)), (1, 1), 1)
  x, w = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 4, 8))
  hlo = jax.jit(jax.value_and_grad(lambda x, w: ours(x, w).sum(), argnums=(0, 1))).lower(x, w).as_text()
  for kind in ('forward', 'backward_data', 'backward_weights'):
    assert f'cvjax_onednn_conv_{kind}' in hlo
  assert 'convolution' not in hlo
  # The first layer of a model needs no input gradient: XLA drops that call.
  hlo = jax.jit(jax.grad(lambda w, x: ours(x, w).sum())).lower(w, x).compile().as_text()
  assert 'conv_backward_data' not in hlo and 'cvjax_onednn_conv_backward_weights' in hlo


@pytest.mark.parametrize('case', ['bfloat16', 'lhs_dilation', 'negative_padding', 'nchw'])
def test_what_onednn_does_not_take_goes_to_lax_unchanged(case):
  x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
  kwargs = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), dimension_numbers=DN)
  if case == 'bfloat16':
    x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  elif case == 'lhs_dilation':
    kwargs['lhs_dilation'] = (2, 2)
  elif case == 'negative_padding':
    kwargs['padding'] = ((-1, 1), (1, 1))
  else:
    x, kwargs['dimension_numbers'] = jnp.ones((1, 2, 6, 6)), ('NCHW', 'HWIO', 'NCHW')
  assert not onednn.supports(x, w, **kwargs)
  hlo = jax.jit(functools.partial(onednn.conv_general_dilated, **kwargs)).lower(x, w).as_text()
  assert 'cvjax_onednn' not in hlo and 'convolution' in hlo


def test_impl_names():
  assert conv_lowering.resolve('onednn') == 'onednn'
  assert conv_lowering.lowerings('onednn') == {'onednn'}
  assert conv_lowering.resolve('auto') == 'cpu'  # every CPU lowering, oneDNN first
  assert onednn.version().count('.') == 2


class _TinyMobileNet(base.BNModel):
  """A stem conv, a depthwise 3×3, a pointwise 1×1, each with BatchNorm: MobileNet's layers,
  small enough to compile in float64 in seconds."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = self.norm(train)
    x = nn.relu(norm(name='bn1')(self.conv(8, 3, 2, use_bias=False, name='stem')(x)))
    x = nn.relu(norm(name='bn2')(self.depthwise_conv(x, 3, name='depthwise')))
    x = nn.relu(norm(name='bn3')(self.conv(16, 1, use_bias=False, name='pointwise')(x)))
    return self.dense(self.num_classes, name='fc')(x.mean((1, 2)))


def _net(name, impl, dtype):
  if name == 'tiny_mobilenet':
    return _TinyMobileNet(conv_impl=conv_lowering.resolve(impl), dtype=dtype, param_dtype=dtype)
  net = models.get_model(name, num_classes=10, conv_impl=impl, dtype=dtype, param_dtype=dtype)
  return net.clone(depth=8) if name == 'resnet20' else net  # ResNet-20's blocks, 3 of them


@pytest.mark.parametrize('name, size, channels', [('resnet20', 16, 3), ('tiny_mobilenet', 16, 3),
                                                  ('lenet5', 32, 1)])
def test_a_model_trains_to_the_same_numbers_with_onednn_and_xla(name, size, channels):
  """Same parameters; loss and gradients (BatchNorm, depthwise convs included) as close to
  the float64 truth as XLA's own float32 convolutions are."""
  x = np.asarray(jax.random.normal(jax.random.key(0), (4, size, size, channels)))
  labels = np.arange(4) % 10

  def value_and_grad(impl, dtype):
    net = _net(name, impl, dtype)
    variables = jax.tree.map(lambda v: jnp.asarray(v, dtype), init)

    def loss(params):
      logits, _ = net.apply({**variables, 'params': params}, jnp.asarray(x, dtype), train=True,
                            mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return jax.device_get(jax.jit(jax.value_and_grad(loss))(variables['params']))

  init = _net(name, 'xla', jnp.float32).init(jax.random.key(1), x, train=False)
  assert jax.tree.map(jnp.shape, _net(name, 'onednn', jnp.float32).init(
      jax.random.key(1), x, train=False)) == jax.tree.map(jnp.shape, init)
  ours, xla = value_and_grad('onednn', jnp.float32), value_and_grad('xla', jnp.float32)
  with jax.enable_x64(True):
    truth = value_and_grad('xla', jnp.float64)
  for a, b, t in zip(jax.tree.leaves(ours), jax.tree.leaves(xla), jax.tree.leaves(truth)):
    err, err_xla = np.abs(a - t).max(), np.abs(b - t).max()
    assert err <= 4 * err_xla + 1e-6 * np.abs(t).max(), (err, err_xla)


def test_a_missing_library_falls_back_to_xla_with_one_warning(monkeypatch, tmp_path):
  monkeypatch.setattr(build, 'library_path', lambda: tmp_path / 'libcvjax_onednn-0.so')
  monkeypatch.setattr(onednn, '_registered', [])  # as in a process that has not loaded it
  onednn.available.cache_clear()
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      assert conv_lowering.resolve('auto') == 'cpu-onednn'
      assert conv_lowering.resolve('onednn') == 'xla'
      x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2))
      y = onednn.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)
      assert float(y[0, 2, 2, 0]) == 18.0
    assert [str(w.message) for w in caught] == [
        'oneDNN convolutions unavailable: they are not built; XLA computes the convolutions '
        '(build them with: python -m cvjax.models.onednn.build)']
  finally:
    monkeypatch.undo()
    onednn.available.cache_clear()
  assert onednn.available()


def test_the_library_name_follows_the_source_and_the_build_command(monkeypatch):
  path = build.library_path()
  assert path.exists() and path.name.startswith('libcvjax_onednn-')
  monkeypatch.setattr(build, 'compile_flags', lambda: ['-O0'])
  assert build.library_path() != path
