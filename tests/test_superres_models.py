"""Super-resolution models: published parameter counts, output sizes, torch's pixel
shuffle order and EDSR's fixed mean shift."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvjax.models import get_model, layers, model_info, model_input_shape, superres


def _init_shapes(name, shape=None):
  """(output, variables) as ShapeDtypeStructs at the model's natural input (or `shape`)."""
  model = get_model(name, model_info(name).num_classes)
  x = jax.ShapeDtypeStruct((1, *(shape or model_input_shape(name))), jnp.float32)
  return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), x)


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('name, expected', [
    ('srcnn_915', 8_129), ('srcnn_955', 57_281), ('espcn_x3', 22_729),
    ('edsr_baseline_x2', 1_369_859), ('edsr_baseline_x3', 1_554_499),
    ('edsr_baseline_x4', 1_517_571)])
def test_parameter_counts_are_the_papers(name, expected):
  _, variables = _init_shapes(name)
  assert set(variables) == {'params'}  # no BatchNorm statistics
  assert _count(variables['params']) == expected


def test_espcn_counts_grow_with_the_last_conv_only():
  # conv3 is 3×3×32×r² + r²: ×2 → 1,156, ×4 → 4,624 instead of ×3's 2,601.
  counts = {r: _count(_init_shapes(f'espcn_x{r}')[1]['params']) for r in (2, 3, 4)}
  assert counts == {2: 22_729 - 2_601 + 1_156, 3: 22_729, 4: 22_729 - 2_601 + 4_624}


@pytest.mark.parametrize('name, shape, out', [
    ('srcnn_915', (11, 11, 1), (33, 33, 1)), ('srcnn_955', (20, 24, 1), (60, 72, 1)),
    ('espcn_x2', (17, 17, 1), (34, 34, 1)), ('espcn_x3', (10, 12, 1), (30, 36, 1)),
    ('espcn_x4', (17, 17, 1), (68, 68, 1)),
    ('edsr_baseline_x2', (48, 48, 3), (96, 96, 3)), ('edsr_baseline_x3', (10, 12, 3), (30, 36, 3)),
    ('edsr_baseline_x4', (48, 48, 3), (192, 192, 3))])
def test_output_is_the_input_scaled_by_r_in_float32(name, shape, out):
  y, _ = _init_shapes(name, shape)
  assert y.shape == (1, *out) and y.dtype == jnp.float32


def test_registry_says_superres_without_batchnorm():
  for name in ('srcnn_915', 'espcn_x3', 'edsr_baseline_x4'):
    info = model_info(name)
    assert info.task == 'superres' and not info.batch_norm and not info.supports_remat


def _torch_pixel_shuffle_nhwc(x: np.ndarray, r: int) -> np.ndarray:
  """torch's reference permutation on the NCHW equivalent of x[B, H, W, C·r²]."""
  b, h, w, crr = x.shape
  c = crr // (r * r)
  nchw = x.transpose(0, 3, 1, 2).reshape(b, c, r, r, h, w)
  out = nchw.transpose(0, 1, 4, 2, 5, 3).reshape(b, c, h * r, w * r)
  return out.transpose(0, 2, 3, 1)


@pytest.mark.parametrize('r', [2, 3])
def test_pixel_shuffle_matches_torchs_channel_order(r):
  x = np.arange(2 * 3 * 4 * 2 * r * r, dtype=np.float32).reshape(2, 3, 4, 2 * r * r)
  got = np.asarray(layers.pixel_shuffle(jnp.asarray(x), r))
  assert got.shape == (2, 3 * r, 4 * r, 2)
  np.testing.assert_array_equal(got, _torch_pixel_shuffle_nhwc(x, r))
  # channel c·r² + i·r + j of pixel (h, w) lands at (h·r + i, w·r + j) of channel c
  assert got[1, 2 * r + (r - 1), 3 * r + 1, 1] == x[1, 2, 3, 1 * r * r + (r - 1) * r + 1]


@pytest.mark.parametrize('r', [2, 3])
def test_pixel_shuffle_equals_torch_functional(r):
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(r).standard_normal((2, 3, 5, 3 * r * r)).astype(np.float32)
  ref = torch.nn.functional.pixel_shuffle(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), r)
  got = np.asarray(layers.pixel_shuffle(jnp.asarray(x), r))
  np.testing.assert_array_equal(got, ref.numpy().transpose(0, 2, 3, 1))


def test_edsr_mean_shift_returns_the_div2k_mean_when_every_conv_is_zero():
  model = get_model('edsr_baseline_x2', 3, n_resblocks=2)
  mean = jnp.asarray(superres.DIV2K_MEAN, jnp.float32)
  x = jnp.broadcast_to(mean, (1, 6, 5, 3))
  variables = model.init(jax.random.key(0), x)
  zeros = jax.tree.map(jnp.zeros_like, variables)
  y = np.asarray(model.apply(zeros, x))
  assert y.shape == (1, 12, 10, 3)
  np.testing.assert_array_equal(y, np.broadcast_to(np.asarray(mean), y.shape))
  # with rgb_range 255 the shift is 255× the mean: a zero network returns it
  y255 = model.clone(rgb_range=255.0).apply(zeros, x * 255.0)
  np.testing.assert_allclose(np.asarray(y255), np.broadcast_to(np.asarray(mean) * 255.0, y.shape),
                             rtol=1e-6)
