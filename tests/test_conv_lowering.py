"""The CPU conv lowerings compute lax.conv_general_dilated's numbers, values and gradients,
and the impl a model holds is chosen once, by name."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cvjax.errors import UserError
from cvjax.models import CONV_IMPLS, blocks, conv_lowering, layers, onednn

DN = ('NHWC', 'HWIO', 'NHWC')


def _grads(f, g, x, w, argnums=(0, 1)):
  """Gradients of <g, f(x, w)>: a random cotangent through f."""
  return jax.grad(lambda x, w: jnp.vdot(g, f(x, w)), argnums=argnums)(x, w)


def _close(a, b, rtol=1e-5, atol=1e-4):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize('strides,padding', [
    ((1, 1), ((0, 0), (0, 0))),  # a plain matmul
    ((2, 2), ((0, 0), (0, 0))),  # strided (ResNet downsample)
    ((2, 1), 'SAME'),
    ((1, 1), ((1, 1), (1, 1))),  # padded
])
def test_1x1_matmul_matches_lax_conv_in_value_and_gradient(strides, padding):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (2, 11, 10, 3))
  w = jax.random.normal(kw, (1, 1, 3, 4))
  kwargs = dict(window_strides=strides, padding=padding, dimension_numbers=DN)
  ref = lambda x, w: lax.conv_general_dilated(x, w, **kwargs)
  ours = lambda x, w: conv_lowering.conv_1x1(x, w, **kwargs)
  assert ours(x, w).shape == ref(x, w).shape
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  g = jax.random.normal(kg, ref(x, w).shape)
  _close(_grads(ours, g, x, w), _grads(ref, g, x, w))


def test_1x1_matmul_falls_back_to_lax_for_groups_input_dilation_and_kxk():
  x = jax.random.normal(jax.random.key(1), (1, 8, 8, 4))
  cases = [(jax.random.normal(jax.random.key(2), (1, 1, 2, 6)), dict(feature_group_count=2)),
           (jax.random.normal(jax.random.key(3), (1, 1, 4, 5)), dict(lhs_dilation=(2, 2))),
           (jax.random.normal(jax.random.key(4), (3, 3, 4, 5)), {})]
  for w, extra in cases:
    kwargs = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), dimension_numbers=DN, **extra)
    np.testing.assert_array_equal(conv_lowering.conv_1x1(x, w, **kwargs),
                                  lax.conv_general_dilated(x, w, **kwargs))


def test_band_is_the_conv_as_a_matmul_with_a_banded_kernel():
  """conv_band on its own (any channel count): lax.conv's numbers, value and gradients."""
  kx, kw, kg = jax.random.split(jax.random.key(7), 3)
  x = jax.random.normal(kx, (3, 10, 7, 5))
  w = jax.random.normal(kw, (3, 2, 5, 4))  # a non-square kernel
  kwargs = dict(window_strides=(2, 1), padding=((1, 2), (0, 1)))
  ref = lambda x, w: lax.conv_general_dilated(x, w, dimension_numbers=DN, **kwargs)
  ours = lambda x, w: conv_lowering.conv_band(x, w, **kwargs)
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  g = jax.random.normal(kg, ref(x, w).shape)
  _close(_grads(ours, g, x, w), _grads(ref, g, x, w))


@pytest.mark.slow
@pytest.mark.parametrize('k,strides,padding,size,channels,band', [
    (3, 1, 1, 9, 16, False),  # XLA's conv, materialised backward
    (3, 2, 1, 9, 16, False),
    (1, 1, 0, 9, 16, False),  # 1×1 matmul, materialised backward
    (1, 2, 0, 9, 16, False),
    (5, 1, 0, 32, 1, True),  # LeNet-5's C1
    (5, 1, 0, 14, 6, True),  # LeNet-5's C3
    (3, 2, 1, 9, 4, True),  # strided and padded
    (5, 1, 0, 5, 16, False),  # LeNet-5's C5: too many channels for the band
    (3, 1, 1, 40, 3, False),  # too wide for the band: 42 > 8 × 3 columns
])
def test_cpu_lowerings_give_autodiff_values_and_gradients(k, strides, padding, size, channels,
                                                          band):
  """XLA's CPU lowerings: same values and gradients (reverse and forward mode) as lax.conv,
  on every path they pick for a shape (oneDNN's: test_onednn)."""
  kx, kw, kg = jax.random.split(jax.random.key(6), 3)
  x = jax.random.normal(kx, (2, size, size, channels))
  w = jax.random.normal(kw, (k, k, channels, 32))
  kwargs = dict(window_strides=(strides, strides), padding=((padding, padding),) * 2,
                dimension_numbers=DN)
  if k > 1:
    dims = lax.conv_dimension_numbers(x.shape, w.shape, DN)
    assert conv_lowering._is_band(x, w, **{**kwargs, 'dimension_numbers': dims}) == band
  ours = lambda x, w: conv_lowering.lowering('cpu-onednn', (k, k))(x, w, **kwargs)
  ref = lambda x, w: lax.conv_general_dilated(x, w, **kwargs)
  # Sums of up to 400 products of unit normals: float32 rounding differs by order.
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-4)
  g = jax.random.normal(kg, ref(x, w).shape)
  for argnums in [(0, 1), 1]:  # 1: no gradient into x (a model's first conv)
    a = _grads(lambda x, w: ours(jnp.tanh(x), w), g, x, w, argnums)
    b = _grads(lambda x, w: ref(jnp.tanh(x), w), g, x, w, argnums)
    _close(a, b)
  tangents = (jnp.ones_like(x), jnp.ones_like(w))
  np.testing.assert_allclose(jax.jvp(ours, (x, w), tangents)[1], jax.jvp(ref, (x, w), tangents)[1],
                             rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('strides,padding', [((1, 1), ((1, 1), (1, 1))), ((2, 2), ((0, 1), (0, 1)))])
def test_depthwise_shifted_sum_matches_the_grouped_conv(strides, padding):
  x = jax.random.normal(jax.random.key(8), (2, 8, 8, 6))
  conv = lambda impl: blocks.DepthwiseConv(6, (3, 3), strides, padding=padding,
                                           feature_group_count=6, use_bias=True, impl=impl)
  variables = conv('xla').init(jax.random.key(9), x)
  assert jax.tree.map(jnp.shape, conv('cpu').init(jax.random.key(9), x)) == \
      jax.tree.map(jnp.shape, variables)
  f = lambda impl: lambda v, x: conv(impl).apply(v, x)
  np.testing.assert_allclose(f('cpu')(variables, x), f('xla')(variables, x), rtol=1e-5, atol=1e-5)
  g = jax.random.normal(jax.random.key(10), f('xla')(variables, x).shape)
  _close(_grads(f('cpu'), g, variables, x), _grads(f('xla'), g, variables, x))


def test_impl_names_resolve_once_and_name_their_lowerings():
  assert CONV_IMPLS == ('auto', 'xla', 'onednn')
  cpu = 'cpu' if onednn.available() else 'cpu-onednn'
  assert conv_lowering.resolve('auto') == (cpu if jax.default_backend() == 'cpu' else 'xla')
  assert conv_lowering.resolve('xla') == 'xla' and conv_lowering.resolve('cpu') == 'cpu'
  assert conv_lowering.lowerings('xla') == frozenset()
  assert conv_lowering.lowerings('cpu') == set(conv_lowering.CPU_LOWERINGS)
  assert conv_lowering.lowerings('cpu-band-depthwise') == {'onednn', 'matmul1x1', 'materialize'}
  assert conv_lowering.lowerings('xla+band') == {'band'}
  with pytest.raises(ValueError, match='resolved when the model is built'):
    conv_lowering.lowering('auto', (3, 3))
  assert conv_lowering.lowering('cpu-onednn', (3, 3), groups=32) is lax.conv_general_dilated
  assert conv_lowering.lowering('xla', (1, 1)) is lax.conv_general_dilated


class _Net(nn.Module):
  impl: str = 'xla'

  @nn.compact
  def __call__(self, x):
    x = layers.conv(8, 3, 2, impl=self.impl, name='c3')(x)
    return layers.conv(5, 1, impl=self.impl, use_bias=False, name='c1')(x)


def test_every_impl_has_the_same_parameters_and_outputs():
  x = jax.random.normal(jax.random.key(4), (2, 9, 9, 3))
  variables = _Net('xla').init(jax.random.key(5), x)
  impls = ['cpu', 'xla+band'] + [f'cpu-{n}' for n in conv_lowering.CPU_LOWERINGS]
  for impl in impls:
    other = _Net(impl).init(jax.random.key(5), x)
    assert jax.tree.map(jnp.shape, other) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(_Net(impl).apply(variables, x), _Net('xla').apply(variables, x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('impl', ['fast', 'im2col', 'cpu-dense', 'xla-band', 'cpu-', None])
def test_unknown_impl_is_a_user_error(impl):
  with pytest.raises(UserError, match=f"unknown conv impl {impl!r}; choose one of auto, xla, onednn"):
    layers.conv(4, 3, impl=impl)
