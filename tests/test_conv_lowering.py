"""The im2col conv lowering computes lax.conv_general_dilated's numbers, values and gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cvjax.errors import UserError
from cvjax.models import conv_lowering, layers

DN = ('NHWC', 'HWIO', 'NHWC')


def _both(x, w, **kw):
  ref = lambda x, w: lax.conv_general_dilated(x, w, dimension_numbers=DN, **kw)
  ours = lambda x, w: conv_lowering.conv_im2col(x, w, dimension_numbers=DN, **kw)
  return ref, ours


@pytest.mark.parametrize('k,strides,padding,dilation', [
    (3, (1, 1), ((1, 1), (1, 1)), (1, 1)),
    (3, (2, 2), ((1, 1), (1, 1)), (1, 1)),
    (7, (2, 2), ((3, 3), (3, 3)), (1, 1)),
    (5, (1, 2), ((0, 2), (1, 0)), (1, 1)),  # asymmetric strides and padding
    (3, (1, 1), ((2, 2), (2, 2)), (2, 2)),  # dilated
    (3, (2, 2), 'SAME', (1, 1)),
    (3, (1, 1), 'VALID', (1, 1)),
    (1, (1, 1), ((0, 0), (0, 0)), (1, 1)),  # 1×1: a plain matmul
    (1, (2, 2), ((0, 0), (0, 0)), (1, 1)),  # strided 1×1 (ResNet downsample)
    (1, (1, 1), ((1, 1), (1, 1)), (1, 1)),  # padded 1×1
])
def test_im2col_matches_lax_conv_in_value_and_gradient(k, strides, padding, dilation):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (2, 11, 10, 3))
  w = jax.random.normal(kw, (k, k, 3, 4))
  ref, ours = _both(x, w, window_strides=strides, padding=padding, rhs_dilation=dilation)
  y_ref, y = ref(x, w), ours(x, w)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  g = jax.random.normal(kg, y.shape)  # a random cotangent: gradients of <g, conv(x, w)>
  grads_ref = jax.grad(lambda x, w: jnp.vdot(g, ref(x, w)), argnums=(0, 1))(x, w)
  grads = jax.grad(lambda x, w: jnp.vdot(g, ours(x, w)), argnums=(0, 1))(x, w)
  for a, b in zip(grads, grads_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_im2col_falls_back_to_lax_for_groups_and_input_dilation():
  x = jax.random.normal(jax.random.key(1), (1, 8, 8, 4))
  grouped = jax.random.normal(jax.random.key(2), (3, 3, 2, 6))  # 2 groups of 2 channels
  ref, ours = _both(x, grouped, window_strides=(1, 1), padding='SAME', feature_group_count=2)
  np.testing.assert_array_equal(ours(x, grouped), ref(x, grouped))
  w = jax.random.normal(jax.random.key(3), (3, 3, 4, 5))
  ref, ours = _both(x, w, window_strides=(1, 1), padding=((1, 1), (1, 1)), lhs_dilation=(2, 2))
  np.testing.assert_array_equal(ours(x, w), ref(x, w))


def test_auto_plans_a_matmul_for_1x1_and_materialized_backward_on_cpu_only():
  assert conv_lowering.resolve('auto', (1, 1), backend='cpu') == 'im2col+materialize'
  assert conv_lowering.resolve('auto', (3, 3), backend='cpu') == 'xla+materialize'
  assert conv_lowering.resolve('auto', (3, 3), backend='cpu', groups=32) == 'xla'
  assert conv_lowering.resolve('auto', (1, 1), backend='gpu') == 'xla'
  assert conv_lowering.resolve('xla', (1, 1), backend='cpu') == 'xla'
  with conv_lowering.default_impl('im2col'):
    assert conv_lowering.resolve(None, (3, 3), backend='gpu') == 'im2col'
  assert conv_lowering.resolve(None, (1, 1), backend='cpu') == 'im2col+materialize'


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
  a = jax.grad(lambda x, w: jnp.vdot(g, ours(x, w)), argnums=(0, 1))(x, w)
  b = jax.grad(lambda x, w: jnp.vdot(g, ref(x, w)), argnums=(0, 1))(x, w)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4), a, b)


@pytest.mark.parametrize('k,strides,padding,size,channels,case', [
    (3, 1, 1, 9, 16, None),  # XLA's conv, materialised backward
    (3, 2, 1, 9, 16, None),
    (1, 1, 0, 9, 16, None),  # 1×1 matmul, materialised backward
    (1, 2, 0, 9, 16, None),
    (5, 1, 0, 32, 1, 'band'),  # LeNet-5's C1
    (5, 1, 0, 14, 6, 'band'),  # LeNet-5's C3
    (3, 2, 1, 9, 4, 'band'),  # strided and padded
    (5, 1, 0, 5, 16, 'full'),  # LeNet-5's C5: a dense layer
    (3, 1, 1, 1, 16, 'full'),  # padding only around a 1×1 input
    (3, 1, 1, 40, 3, None),  # too wide for the band: 42 > 8 × 3 columns
])
def test_auto_gives_autodiff_values_and_gradients(k, strides, padding, size, channels, case):
  """'auto' on the CPU: same values and gradients (reverse and forward mode) as lax.conv,
  on every path it picks for a k×k shape."""
  kx, kw, kg = jax.random.split(jax.random.key(6), 3)
  x = jax.random.normal(kx, (2, size, size, channels))
  w = jax.random.normal(kw, (k, k, channels, 32))
  kwargs = dict(window_strides=(strides, strides), padding=((padding, padding),) * 2,
                dimension_numbers=DN)
  if k > 1:
    dims = lax.conv_dimension_numbers(x.shape, w.shape, DN)
    assert conv_lowering._small_case(x, w, **{**kwargs, 'dimension_numbers': dims}) == case
  ours = lambda x, w: conv_lowering.lowering('auto', (k, k), backend='cpu')(x, w, **kwargs)
  ref = lambda x, w: lax.conv_general_dilated(x, w, **kwargs)
  # Sums of up to 400 products of unit normals: float32 rounding differs by order.
  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-4)
  g = jax.random.normal(kg, ref(x, w).shape)
  for argnums in [(0, 1), 1]:  # 1: no gradient into x (a model's first conv)
    a = jax.grad(lambda x, w: jnp.vdot(g, ours(jnp.tanh(x), w)), argnums=argnums)(x, w)
    b = jax.grad(lambda x, w: jnp.vdot(g, ref(jnp.tanh(x), w)), argnums=argnums)(x, w)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4), a, b)
  tangents = (jnp.ones_like(x), jnp.ones_like(w))
  np.testing.assert_allclose(jax.jvp(ours, (x, w), tangents)[1], jax.jvp(ref, (x, w), tangents)[1],
                             rtol=1e-5, atol=1e-4)


class _Net(nn.Module):
  impl: str | None = None

  @nn.compact
  def __call__(self, x):
    x = layers.conv(8, 3, 2, impl=self.impl, name='c3')(x)
    return layers.conv(5, 1, impl=self.impl, use_bias=False, name='c1')(x)


def test_every_impl_has_the_same_parameters_and_outputs():
  x = jax.random.normal(jax.random.key(4), (2, 9, 9, 3))
  variables = _Net('xla').init(jax.random.key(5), x)
  for impl in ('auto', 'im2col', None):
    other = _Net(impl).init(jax.random.key(5), x)
    assert jax.tree.map(jnp.shape, other) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(_Net(impl).apply(variables, x), _Net('xla').apply(variables, x),
                               rtol=1e-5, atol=1e-5)


def test_unknown_impl_is_a_user_error():
  with pytest.raises(UserError, match="unknown conv impl 'fast'; choose one of auto, xla, im2col"):
    layers.conv(4, 3, impl='fast')
