"""The generative families (autoencoder, VAE, DCGAN, DDPM U-Net): registered counts at
28×28×1, every method's shapes, and the behaviour each model's training relies on."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvjax import errors, summary
from cvjax.models import get_model, model_info, model_options
from cvjax.models.autoencoder import ConvEncoder
from cvjax.models.dcgan import DCGAN
from cvjax.models.unet import DiffusionUNet
from cvjax.models.vae import MLPVAE

# name: (task, params, BatchNorm statistics) at 28×28×1, 10 classes.
COUNTS = {
    'conv_autoencoder': ('autoencoder', 241_441, 0),
    'denoising_autoencoder': ('autoencoder', 241_441, 0),
    'conv_vae': ('vae', 191_265, 0),
    # Flax's examples/vae: 784·500+500 + 2·(500·20+20) + 20·500+500 + 500·784+784.
    'mlp_vae': ('vae', 815_824, 0),
    'dcgan': ('gan', 1_920_194, 1_024),
    'dcgan_conditional': ('gan', 2_055_874, 1_024),
    'ddpm_unet': ('diffusion', 1_623_169, 0),
}
X = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
KEY = jax.random.key(0)


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _variables(model, x=X):
  return jax.eval_shape(lambda x: model.init(KEY, x, train=False), x)


def _shapes(tree):
  return jax.tree.map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype).name), tree)


@pytest.mark.parametrize('name', sorted(COUNTS))
def test_registered_parameter_counts_at_28x28x1_are_pinned(name):
  task, params, stats = COUNTS[name]
  info = model_info(name)
  assert (info.task, info.input_shape, info.num_classes) == (task, (28, 28, 1), 10)
  assert info.batch_norm == (task == 'gan')
  variables = _variables(get_model(name, 10))
  assert _count(variables['params']) == params
  assert _count(variables.get('batch_stats', {})) == stats


@pytest.mark.parametrize('name', sorted(COUNTS))
def test_bfloat16_models_keep_float32_params_and_return_float32(name):
  model = get_model(name, 10, dtype='bfloat16')
  out, v = jax.eval_shape(
      lambda x: model.init_with_output({'params': KEY, 'dropout': KEY}, x, train=True), X)
  assert {a.dtype for a in jax.tree.leaves(v['params'])} == {jnp.dtype('float32')}
  assert {a.dtype for a in jax.tree.leaves(out)} == {jnp.dtype('float32')}


def test_mlp_vae_has_the_flax_example_layers():
  params = _variables(get_model('mlp_vae', 10))['params']
  assert _shapes(params) == {
      'encoder': {'fc1': {'kernel': ((784, 500), 'float32'), 'bias': ((500,), 'float32')},
                  'fc2_mean': {'kernel': ((500, 20), 'float32'), 'bias': ((20,), 'float32')},
                  'fc2_logvar': {'kernel': ((500, 20), 'float32'), 'bias': ((20,), 'float32')}},
      'decoder': {'fc1': {'kernel': ((20, 500), 'float32'), 'bias': ((500,), 'float32')},
                  'fc2': {'kernel': ((500, 784), 'float32'), 'bias': ((784,), 'float32')}}}


def test_registry_options_fix_the_variants_and_offer_bn_axis_name_only_to_the_gans():
  assert 'noise_std' in model_options('conv_autoencoder')
  assert 'noise_std' not in model_options('denoising_autoencoder')
  assert get_model('denoising_autoencoder', 10).noise_std == 0.3
  assert 'conditional' not in model_options('dcgan_conditional')
  assert get_model('dcgan_conditional', 10).conditional
  for name in COUNTS:
    assert ('bn_axis_name' in model_options(name)) == (name.startswith('dcgan')), name
  with pytest.raises(errors.UserError, match='bn_axis_name'):
    get_model('ddpm_unet', 10, bn_axis_name='data')


# --- autoencoder ----------------------------------------------------------------

def test_autoencoder_methods_give_the_documented_shapes():
  model = get_model('conv_autoencoder', 10)
  v = _variables(model)
  z = jax.eval_shape(lambda v, x: model.apply(v, x, method='encode'), v, X)
  assert (z.shape, z.dtype) == ((2, 32), jnp.float32)
  out = jax.eval_shape(lambda v, z: model.apply(v, z, method='decode'), v, z)
  assert (out.shape, out.dtype) == ((2, 28, 28, 1), jnp.float32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x), v, X)
  assert (out.shape, out.dtype) == ((2, 28, 28, 1), jnp.float32)
  other = get_model('conv_autoencoder', 10, image_shape=(32, 32, 3), latent_dim=8)
  out = jax.eval_shape(lambda x: other.init_with_output(KEY, x)[0],
                       jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert out.shape == (1, 32, 32, 3)
  with pytest.raises(errors.UserError, match=r'image_shape=\(32, 32, 3\)'):
    _variables(model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  with pytest.raises(errors.UserError, match='multiples of 4'):
    _variables(get_model('conv_autoencoder', 10, image_shape=(30, 30, 1)))


@pytest.mark.slow
def test_denoising_autoencoder_corrupts_the_input_only_in_training():
  model = get_model('denoising_autoencoder', 10)
  x = jnp.full((2, 28, 28, 1), 0.5).at[:, :4].set(0.0).at[:, -4:].set(1.0)
  v = model.init(KEY, x)
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, ConvEncoder):
      seen.append(args[0])
    return next_fun(*args, **kwargs)

  def encoder_input(train, key):
    seen.clear()
    with nn.intercept_methods(record):
      model.apply(v, x, train=train, rngs={'dropout': key})
    return seen[0]

  k1, k2 = jax.random.split(jax.random.key(1))
  assert np.array_equal(encoder_input(False, k1), x)
  noisy, other = encoder_input(True, k1), encoder_input(True, k2)
  assert 0.0 <= float(noisy.min()) and float(noisy.max()) <= 1.0  # clipped
  middle = np.asarray(noisy - x)[:, 4:-4]
  assert 0.2 < middle.std() < 0.3  # N(0, 0.3²) clipped at ±0.5 (±1.67σ): σ·0.87 ≈ 0.26
  assert not np.array_equal(noisy, other)
  assert np.array_equal(encoder_input(True, k1), noisy)  # the noise is the key's
  plain = get_model('conv_autoencoder', 10)
  assert np.array_equal(plain.apply(v, x, train=True, rngs={'dropout': k1}), plain.apply(v, x))


# --- VAE --------------------------------------------------------------------------

@pytest.mark.parametrize('name, latent', [('conv_vae', 16), ('mlp_vae', 20)])
def test_vae_returns_the_decoder_output_and_the_posterior(name, latent):
  model = get_model(name, 10)
  v = _variables(model)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, rngs={'dropout': KEY}), v, X)
  assert _shapes(out) == {'x': ((2, 28, 28, 1), 'float32'), 'mean': ((2, latent), 'float32'),
                          'logvar': ((2, latent), 'float32'), 'z': ((2, latent), 'float32')}
  mean, logvar = jax.eval_shape(lambda v, x: model.apply(v, x, method='encode'), v, X)
  assert mean.shape == logvar.shape == (2, latent)
  dec = jax.eval_shape(lambda v, z: model.apply(v, z, method='decode'), v, mean)
  assert (dec.shape, dec.dtype) == ((2, 28, 28, 1), jnp.float32)
  assert 'log_sigma' not in v['params']


def test_gaussian_vae_has_one_learned_log_sigma_starting_at_zero_and_a_mean_in_0_1():
  model = MLPVAE(likelihood='gaussian', hidden=16, latent_dim=4)
  x = jax.random.uniform(KEY, (3, 28, 28, 1))
  out, v = model.init_with_output(KEY, x)
  assert v['params']['log_sigma'].shape == () and float(v['params']['log_sigma']) == 0.0
  assert _count(v['params']) == _count(MLPVAE(hidden=16, latent_dim=4).init(KEY, x)['params']) + 1
  assert out['log_sigma'].shape == () and out['log_sigma'].dtype == jnp.float32
  assert 0.0 <= float(out['x'].min()) and float(out['x'].max()) <= 1.0
  with pytest.raises(errors.UserError, match="unknown likelihood 'laplace'"):
    MLPVAE(likelihood='laplace').init(KEY, x)


@pytest.mark.slow
def test_vae_sample_is_mean_plus_sigma_times_the_keys_normal_draw():
  model = get_model('mlp_vae', 10)
  n = 4000  # one image repeated: the rows of z are independent draws from q(z | x)
  x = jnp.broadcast_to(jax.random.uniform(KEY, (1, 28, 28, 1)), (n, 28, 28, 1))
  v = model.init(KEY, x[:1])
  apply = jax.jit(lambda x, key: model.apply(v, x, rngs={'dropout': key}))
  k1, k2 = jax.random.split(jax.random.key(1))
  a, b, c = apply(x, k1), apply(x, k1), apply(x, k2)
  assert np.array_equal(a['z'], b['z']) and not np.array_equal(a['z'], c['z'])
  mean, sigma = a['mean'][0], jnp.exp(a['logvar'][0] / 2)
  z = np.asarray(a['z'])
  assert np.all(np.abs(z.mean(0) - mean) < 5 * sigma / math.sqrt(n))
  assert np.allclose(z.std(0), sigma, rtol=0.08)
  # eval samples too (train=False is the default above); the decoder output is of z
  assert np.allclose(a['x'][:2], model.apply(v, a['z'][:2], method='decode'), atol=1e-5)


# --- DCGAN ----------------------------------------------------------------------

def test_dcgan_init_creates_exactly_the_generator_and_the_discriminator():
  model = get_model('dcgan', 10, bn_axis_name='data')
  axis_names = set()

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm):
      axis_names.add(context.module.axis_name)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    v = _variables(model)
  assert set(v) == {'params', 'batch_stats'}
  assert set(v['params']) == set(v['batch_stats']) == {'generator', 'discriminator'}
  assert axis_names == {'data'}
  z = jax.ShapeDtypeStruct((3, 100), jnp.float32)
  images = jax.eval_shape(lambda v, z: model.apply(v, z, method='generate'), v, z)
  assert (images.shape, images.dtype) == ((3, 28, 28, 1), jnp.float32)
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, method='discriminate'), v, X)
  assert (logits.shape, logits.dtype) == ((2,), jnp.float32)
  assert jax.eval_shape(lambda v, x: model.apply(v, x), v, X).shape == (2,)


def test_dcgan_at_32x32_has_three_upsamplings_and_other_sizes_are_refused():
  model = DCGAN(image_shape=(32, 32, 3))
  v = _variables(model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert set(v['params']['generator']) == {'fc', 'bn0', 'deconv1', 'bn1', 'deconv2', 'bn2',
                                           'deconv3'}
  assert v['params']['generator']['fc']['kernel'].shape == (100, 4 * 4 * 256)
  assert v['params']['discriminator']['fc']['kernel'].shape == (4 * 4 * 256, 1)
  images = jax.eval_shape(lambda v, z: model.apply(v, z, method='generate'), v,
                          jax.ShapeDtypeStruct((1, 100), jnp.float32))
  assert images.shape == (1, 32, 32, 3)
  with pytest.raises(errors.UserError, match='28×28 or 32×32'):
    _variables(DCGAN(image_shape=(64, 64, 3)), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))


@pytest.mark.slow
def test_dcgan_images_lie_in_minus1_1_and_the_conditional_ones_follow_the_labels():
  model = get_model('dcgan_conditional', 10)
  v = model.init(KEY, jnp.zeros((1, 28, 28, 1)))
  kernels = np.asarray(v['params']['generator']['deconv1']['kernel'])
  scales = np.asarray(v['params']['generator']['bn0']['scale'])
  assert abs(kernels.std() - 0.02) < 0.002 and abs(scales.mean() - 1) < 0.01  # N(0, .02), N(1, .02)
  z = jax.random.normal(jax.random.key(1), (4, 100))
  generate = jax.jit(lambda z, labels: model.apply(v, z, labels, method='generate'))
  a, b = generate(z, jnp.array([0, 1, 2, 3])), generate(z, jnp.array([3, 3, 3, 3]))
  assert a.shape == (4, 28, 28, 1) and -1.0 <= float(a.min()) and float(a.max()) <= 1.0
  assert float(a.max() - a.min()) > 0.1  # not a constant image
  assert not np.allclose(a[:3], b[:3]) and np.array_equal(a[3], b[3])
  logits = model.apply(v, a, jnp.array([0, 1, 2, 3]), method='discriminate')
  assert not np.allclose(logits, model.apply(v, a, jnp.array([5, 5, 5, 5]), method='discriminate'))
  with pytest.raises(errors.UserError, match='needs labels'):
    model.apply(v, z, method='generate')


# --- DDPM U-Net -----------------------------------------------------------------

def test_unet_predicts_noise_of_the_input_shape_and_needs_h_w_multiples_of_4():
  model = get_model('ddpm_unet', 10)
  v = _variables(model)
  t = jax.ShapeDtypeStruct((2,), jnp.int32)
  eps = jax.eval_shape(lambda v, x, t: model.apply(v, x, t), v, X, t)
  assert (eps.shape, eps.dtype) == ((2, 28, 28, 1), jnp.float32)
  assert 'batch_stats' not in v
  assert {'down3_attn1', 'down3_attn2', 'mid_attn', 'up3_attn1', 'up3_attn2',
          'up3_attn3'} == {k for k in v['params'] if 'attn' in k}
  rgb = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  assert jax.eval_shape(lambda x: model.init_with_output(KEY, x)[0], rgb).shape == (1, 32, 32, 3)
  with pytest.raises(errors.UserError, match='multiples of 4'):
    _variables(model, jax.ShapeDtypeStruct((1, 30, 30, 1), jnp.float32))


def test_unet_starts_as_the_reference_with_every_residual_branch_and_the_output_at_zero():
  inits = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Conv):
      inits['/'.join(context.module.path)] = context.module.kernel_init
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    _variables(get_model('ddpm_unet', 10))
  zero = {p for p, init in inits.items() if init is nn.initializers.zeros}
  assert zero == {p for p in inits if p.endswith(('/conv2', '/proj')) or p == 'conv_out'}
  assert len(zero) == 1 + 6 + 3 * 2 + 2 + 3 * 3  # out, attention, down, middle and up blocks


@pytest.mark.slow
def test_unet_output_depends_on_t_and_dropout_acts_only_in_training():
  model = DiffusionUNet(base=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,))
  x = jax.random.uniform(KEY, (2, 8, 8, 1))
  # random weights: the untrained model's output is zero (its last conv starts at zero)
  leaves, tree = jax.tree.flatten(_variables(model, x))
  rng = np.random.default_rng(0)
  v = jax.tree.unflatten(tree, [0.3 * rng.standard_normal(a.shape, np.float32) for a in leaves])

  @jax.jit
  def outputs(v):
    at = lambda t: model.apply(v, x, jnp.array(t))
    return (at([0, 0]), at([500, 500]), at([500, 0]), model.apply(v, x),
            model.apply(v, x, jnp.array([0, 0]), train=True, rngs={'dropout': KEY}))

  at0, at500, mixed, no_t, train = outputs(v)
  assert np.abs(at0 - at500).mean() > 0.01 * np.abs(at0).mean()
  assert np.allclose(mixed[0], at500[0], atol=1e-5) and np.allclose(mixed[1], at0[1], atol=1e-5)
  assert np.allclose(no_t, at0, atol=1e-5)  # t=None is t=0
  assert not np.allclose(train, at0, atol=1e-3)


# --- the summary ----------------------------------------------------------------

@pytest.mark.parametrize('name', sorted(COUNTS))
def test_summary_counts_every_new_model(name, capsys):
  _, params, stats = COUNTS[name]
  s = summary.summary(name)
  assert s['total_params'] == params and s['total_batch_stats'] == stats
  assert sum(layer['params'] for layer in s['layers']) == params
  assert summary.main([f'--model={name}']) == 0
  assert f'{params:,}' in capsys.readouterr().out
