"""cvjax.generation against the definitions: diffusion schedules and samplers, the
Fréchet and kernel distances, and the ELBO terms (scipy, optax and brute force as oracles)."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.integrate
import scipy.linalg
import scipy.stats

from cvjax import models
from cvjax.errors import UserError
from cvjax.generation import diffusion, elbo, frechet

T = 1000


def _alpha_bars64(kind: str, num_steps: int = T) -> np.ndarray:
  return np.cumprod(1.0 - diffusion.beta_schedule(kind, num_steps))


# --- diffusion -------------------------------------------------------------------------------

def test_linear_schedule_is_ho_et_als_from_1e4_to_0_02():
  betas = diffusion.beta_schedule('linear', T)
  assert betas.dtype == np.float64 and betas.shape == (T,)
  assert betas[0] == 1e-4 and betas[-1] == 0.02
  for t in (1, 250, 777):
    assert betas[t] == pytest.approx(1e-4 + (0.02 - 1e-4) * t / (T - 1), rel=1e-12)
  schedule = diffusion.make_schedule('linear', T)
  assert schedule.num_steps == T and schedule.alpha_bars.dtype == jnp.float32
  for t in (0, 1, 500, T - 1):
    expected = np.prod([1.0 - (1e-4 + (0.02 - 1e-4) * s / (T - 1)) for s in range(t + 1)])
    assert float(schedule.alpha_bars[t]) == pytest.approx(expected, rel=1e-6)
    assert float(schedule.alphas[t]) == pytest.approx(1.0 - betas[t], rel=1e-7)
    assert float(jnp.exp(schedule.log_alpha_bars[t])) == pytest.approx(expected, rel=1e-6)


def test_cosine_alpha_bar_is_f_t_over_f_0_until_the_0_999_clip():
  s = 0.008

  def f(t):
    return np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2

  betas = diffusion.beta_schedule('cosine', T)
  alpha_bars = _alpha_bars64('cosine')
  # Paper step t (1-based) is index t - 1.
  for t in (1, 2, 100, 500, 900, 980):
    assert alpha_bars[t - 1] == pytest.approx(f(t) / f(0), rel=1e-10)
    assert betas[t - 1] == pytest.approx(1.0 - f(t) / f(t - 1), rel=1e-10)
  assert betas[-1] == 0.999 and np.all(betas[:-1] < 0.999)  # f(T) = 0 would make β = 1


def test_unknown_schedule_is_a_user_error_naming_the_choices():
  with pytest.raises(UserError, match="'cosine'"):
    diffusion.beta_schedule('cosin')


def test_q_sample_has_mean_sqrt_alpha_bar_x0_and_variance_1_minus_alpha_bar():
  schedule = diffusion.make_schedule('linear', T)
  t = jnp.array([0, 100, 500, 999], jnp.int32)
  x0 = jnp.array([0.9, -0.5, 0.3, 1.0], jnp.float32).reshape(4, 1, 1, 1)
  x0 = jnp.broadcast_to(x0, (4, 64, 64, 8))  # 32768 draws per example
  noise = jax.random.normal(jax.random.PRNGKey(0), x0.shape)
  x_t = np.asarray(diffusion.q_sample(schedule, x0, t, noise), np.float64).reshape(4, -1)
  alpha_bars = _alpha_bars64('linear')[np.asarray(t)]
  n = x_t.shape[1]
  expected_mean = np.sqrt(alpha_bars) * np.asarray(x0[:, 0, 0, 0])
  assert np.all(np.abs(x_t.mean(axis=1) - expected_mean) < 5 * np.sqrt((1 - alpha_bars) / n))
  assert np.all(np.abs(x_t.var(axis=1) / (1 - alpha_bars) - 1) < 5 * np.sqrt(2 / n))


def test_ddpm_posterior_is_the_gaussian_conditional_of_x_t_minus_1_given_x_t_and_x0():
  schedule = diffusion.make_schedule('cosine', T)
  betas = diffusion.beta_schedule('cosine', T)
  alpha_bars = _alpha_bars64('cosine')
  t = np.array([0, 1, 50, 400, 998], np.int32)
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, (len(t), 3, 3, 2))
  x_t = rng.normal(size=x0.shape)
  mean, variance = diffusion.ddpm_posterior(schedule, jnp.asarray(x0, jnp.float32),
                                            jnp.asarray(x_t, jnp.float32), jnp.asarray(t))
  # x_{t-1} = √ᾱ_{t-1}·x0 + √(1-ᾱ_{t-1})·u and x_t = √α_t·x_{t-1} + √β_t·v: condition on x_t.
  ab_prev = np.where(t > 0, alpha_bars[np.maximum(t - 1, 0)], 1.0)
  var_prev, alpha = 1.0 - ab_prev, 1.0 - betas[t]
  var_t = alpha * var_prev + betas[t]
  gain = (np.sqrt(alpha) * var_prev / var_t)[:, None, None, None]
  expected_mean = np.sqrt(ab_prev)[:, None, None, None] * x0 + gain * (
      x_t - np.sqrt(alpha_bars[t])[:, None, None, None] * x0)
  expected_variance = var_prev - alpha * var_prev ** 2 / var_t
  np.testing.assert_allclose(mean, expected_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(variance, expected_variance, rtol=1e-5, atol=1e-12)
  assert float(variance[0]) == 0.0


@pytest.mark.parametrize('kind', ['linear', 'cosine'])
def test_one_ddim_step_with_eta_0_and_the_true_noise_lands_on_q_sample_at_t_prev(kind):
  schedule = diffusion.make_schedule(kind, T)
  key_x, key_eps = jax.random.split(jax.random.PRNGKey(1))
  x0 = jax.random.uniform(key_x, (5, 8, 8, 3), minval=-1.0, maxval=1.0)
  eps = jax.random.normal(key_eps, x0.shape)
  t = jnp.array([999, 500, 300, 20, 1], jnp.int32)
  t_prev = jnp.array([979, 480, 100, 0, -1], jnp.int32)
  x_t = diffusion.q_sample(schedule, x0, t, eps)
  x_prev = diffusion.ddim_step(schedule, x_t, eps, t, t_prev, eta=0.0)
  expected = diffusion.q_sample(schedule, x0, t_prev, eps)
  # x0 is recovered from x_t by dividing by √ᾱ_t: float32 rounding of x_t grows by
  # √(ᾱ_prev/ᾱ_t), ~600 at cosine's last step (ᾱ = 2.4e-9), ~1 elsewhere.
  alpha_bars = np.append(_alpha_bars64(kind), 1.0)  # index -1: ᾱ = 1
  growth = np.sqrt(alpha_bars[np.asarray(t_prev)] / alpha_bars[np.asarray(t)])
  for i in range(len(t)):
    atol = 1e-5 + 4 * np.finfo(np.float32).eps * float(jnp.abs(x_t[i]).max()) * growth[i]
    np.testing.assert_allclose(x_prev[i], expected[i], atol=atol, err_msg=f't={t[i]}')
  np.testing.assert_allclose(x_prev[-1], x0[-1], atol=2e-5)  # t_prev = -1 is x0 itself


def test_ddim_timesteps_are_song_et_als_uniform_skip_descending():
  np.testing.assert_array_equal(diffusion.ddim_timesteps(T, 50), np.arange(980, -1, -20))
  np.testing.assert_array_equal(diffusion.ddim_timesteps(T, T), np.arange(T - 1, -1, -1))
  assert len(diffusion.ddim_timesteps(T, 300)) == 334  # range(0, 1000, 3)
  for bad in (0, T + 1):
    with pytest.raises(ValueError, match='num_steps'):
      diffusion.ddim_timesteps(T, bad)


@pytest.mark.parametrize('kind', ['linear', 'cosine'])
def test_ddim_with_eta_1_and_every_step_has_the_ddpm_posterior_variance(kind):
  schedule = diffusion.make_schedule(kind, T)
  betas, alpha_bars = diffusion.beta_schedule(kind, T), _alpha_bars64(kind)
  t = np.array([1, 2, 10, 500, 900], np.int32)
  sigma = diffusion.ddim_sigma(schedule, jnp.asarray(t), jnp.asarray(t - 1), eta=1.0)
  expected = (1.0 - alpha_bars[t - 1]) / (1.0 - alpha_bars[t]) * betas[t]
  np.testing.assert_allclose(np.square(np.asarray(sigma, np.float64)), expected, rtol=2e-5)
  _, variance = diffusion.ddpm_posterior(schedule, jnp.zeros((len(t), 1)), jnp.zeros((len(t), 1)),
                                         jnp.asarray(t))
  np.testing.assert_allclose(np.square(sigma), variance, rtol=2e-5)
  assert float(diffusion.ddim_sigma(schedule, 0, -1, eta=1.0)) == 0.0
  assert float(diffusion.ddim_sigma(schedule, 500, 480, eta=0.0)) == 0.0


def _point_mass_eps_fn(schedule, x0):
  """The exact ε-predictor when the data are the single point x0."""
  def eps_fn(x, t):
    log_ab = schedule.log_alpha_bars[t].reshape(-1, 1, 1, 1)
    return (x - jnp.exp(0.5 * log_ab) * x0) / jnp.sqrt(-jnp.expm1(log_ab))
  return eps_fn


@pytest.mark.parametrize('kind', ['linear', 'cosine'])
def test_samplers_return_the_point_of_a_single_point_data_distribution(kind):
  schedule = diffusion.make_schedule(kind, T)
  x0 = jax.random.uniform(jax.random.PRNGKey(2), (2, 4, 4, 1), minval=-0.95, maxval=0.95)
  eps_fn = _point_mass_eps_fn(schedule, x0)
  ddpm = jax.jit(diffusion.ddpm_sample, static_argnums=(0, 2, 4))
  ddim = jax.jit(diffusion.ddim_sample, static_argnums=(0, 2, 4, 5))
  key = jax.random.PRNGKey(3)
  np.testing.assert_allclose(ddpm(eps_fn, schedule, x0.shape, key), x0, atol=1e-5)
  for num_steps, eta in ((50, 0.0), (50, 1.0), (T, 1.0), (7, 0.5)):
    np.testing.assert_allclose(ddim(eps_fn, schedule, x0.shape, key, num_steps, eta), x0, atol=1e-5)


def test_samplers_are_deterministic_given_the_key_and_ddim_eta_0_given_x_T():
  schedule = diffusion.make_schedule('linear', 100)
  eps_fn = lambda x, t: 0.1 * x  # noqa: E731
  shape = (3, 2, 2, 1)
  a = diffusion.ddpm_sample(eps_fn, schedule, shape, jax.random.PRNGKey(0), clip=False)
  b = diffusion.ddpm_sample(eps_fn, schedule, shape, jax.random.PRNGKey(0), clip=False)
  c = diffusion.ddpm_sample(eps_fn, schedule, shape, jax.random.PRNGKey(1), clip=False)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  clipped = diffusion.ddim_sample(lambda x, t: -x, schedule, shape, jax.random.PRNGKey(0), 10)
  assert clipped.shape == shape and float(jnp.abs(clipped).max()) <= 1.0


# --- Fréchet and kernel distances ------------------------------------------------------------

def _random_spd(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


def test_statistics_are_the_mean_and_the_n_minus_1_covariance():
  features = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
  mu, sigma = frechet.statistics(features)
  centred = features.astype(np.float64) - features.mean(axis=0, dtype=np.float64)
  assert mu.dtype == np.float64 and sigma.shape == (6, 6)
  np.testing.assert_allclose(mu, features.mean(axis=0, dtype=np.float64), rtol=1e-12)
  np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)


def test_frechet_distance_is_the_wasserstein_2_distance_between_the_gaussians():
  rng = np.random.default_rng(1)
  d = 16
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  sigma1, sigma2 = _random_spd(rng, d), _random_spd(rng, d)
  # The symmetric form Tr((Σ1^½ Σ2 Σ1^½)^½), equal to Tr((Σ1 Σ2)^½) in exact arithmetic.
  root1 = scipy.linalg.sqrtm(sigma1).real
  cross = np.trace(scipy.linalg.sqrtm(root1 @ sigma2 @ root1).real)
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * cross
  assert frechet.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_diagonal_covariances_is_the_closed_form():
  rng = np.random.default_rng(2)
  a, b = rng.uniform(0.1, 3.0, 10), rng.uniform(0.1, 3.0, 10)
  mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert isinstance(got, float) and got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_identical_statistics_is_0():
  rng = np.random.default_rng(3)
  mu, sigma = frechet.statistics(rng.normal(size=(500, 32)))
  assert abs(frechet.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_frechet_distance_retries_a_non_finite_root_with_eps_on_the_diagonals(monkeypatch):
  rng = np.random.default_rng(4)
  mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
  sigma1, sigma2 = _random_spd(rng, 4), _random_spd(rng, 4)
  real_sqrtm, calls = scipy.linalg.sqrtm, []

  def failing_once(a):
    calls.append(a)
    return np.full_like(a, np.inf) if len(calls) == 1 else real_sqrtm(a)

  monkeypatch.setattr(scipy.linalg, 'sqrtm', failing_once)
  with pytest.warns(RuntimeWarning, match='singular'):
    got = frechet.frechet_distance(mu1, sigma1, mu2, sigma2, eps=0.5)
  np.testing.assert_allclose(calls[1], (sigma1 + 0.5 * np.eye(4)) @ (sigma2 + 0.5 * np.eye(4)))
  expected = (np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2)
              - 2 * np.trace(real_sqrtm(calls[1]).real))
  assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_drops_a_tiny_imaginary_part_and_refuses_a_large_one(monkeypatch):
  sigma = np.eye(3)
  monkeypatch.setattr(scipy.linalg, 'sqrtm', lambda a: a + 1e-6j)
  assert frechet.frechet_distance(np.zeros(3), sigma, np.zeros(3), sigma) == pytest.approx(0.0, abs=1e-12)
  monkeypatch.setattr(scipy.linalg, 'sqrtm', lambda a: a + 1e-2j * np.eye(3))
  with pytest.raises(ValueError, match='imaginary'):
    frechet.frechet_distance(np.zeros(3), sigma, np.zeros(3), sigma)


def _mmd2_by_definition(x, y):
  def k(a, b):
    return (np.dot(a, b) / len(a) + 1.0) ** 3
  m = len(x)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
  return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / m ** 2


def test_kernel_distance_is_the_unbiased_mmd2_with_the_cubic_kernel():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(12, 5)), rng.normal(0.3, 1.2, size=(12, 5))
  mean, std = frechet.kernel_distance(x, y, num_subsets=3, subset_size=100)  # m = n: one subset
  assert mean == pytest.approx(_mmd2_by_definition(x, y), rel=1e-10)
  assert std < 1e-12


def test_kernel_distance_is_about_0_for_one_distribution_and_not_for_two():
  rng = np.random.default_rng(6)
  a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
  same, same_std = frechet.kernel_distance(a, b, num_subsets=20, subset_size=500)
  shifted, _ = frechet.kernel_distance(a, b + 0.25, num_subsets=20, subset_size=500)
  assert abs(same) < 3 * same_std
  assert abs(same) < 0.1 * shifted


class _ConvOnly(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Conv(2, (3, 3))(x)


@functools.lru_cache(maxsize=None)
def _images(shape):
  return jax.random.normal(jax.random.PRNGKey(7), shape)


def test_features_are_the_input_of_lenet5s_last_dense_layer():
  model = models.get_model('lenet5', num_classes=10)
  x = _images((3, 28, 28, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  features = frechet.feature_extractor(model, variables)(x)
  assert features.shape == (3, 84) and features.dtype == jnp.float32
  fc2 = variables['params']['fc2']
  logits = model.apply(variables, x, train=False)
  np.testing.assert_allclose(features @ fc2['kernel'] + fc2['bias'], logits, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(features).max()) <= 1.0  # after fc1's tanh


def test_features_of_a_batchnorm_dropout_cnn_are_taken_in_inference_mode():
  model = models.get_model('deep_cnn', num_classes=10, widths=(4, 8, 8), hidden=16)
  x = _images((2, 28, 28, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  # Running statistics unlike the batch's, so training-mode BatchNorm would disagree.
  variables = {**variables, 'batch_stats': jax.tree.map(lambda v: v + 0.5, variables['batch_stats'])}
  features = frechet.feature_extractor(model, variables)(x)
  assert features.shape == (2, 16)
  fc2 = variables['params']['fc2']
  np.testing.assert_allclose(features @ fc2['kernel'] + fc2['bias'],
                             model.apply(variables, x, train=False), rtol=1e-5, atol=1e-5)


def test_feature_extractor_refuses_a_model_without_a_dense_layer():
  model, x = _ConvOnly(), jnp.zeros((1, 4, 4, 1))
  extract = frechet.feature_extractor(model, model.init(jax.random.PRNGKey(0), x))
  with pytest.raises(ValueError, match='no flax.linen.Dense'):
    extract(x)


# --- ELBO terms -------------------------------------------------------------------------------

def test_gaussian_kl_in_1d_is_the_integral_of_q_log_q_over_p():
  for mean, logvar in ((0.0, 0.0), (0.7, -0.5), (-1.3, 1.2)):
    q = scipy.stats.norm(mean, np.exp(0.5 * logvar))
    integral, _ = scipy.integrate.quad(lambda z: q.pdf(z) * (q.logpdf(z) - scipy.stats.norm.logpdf(z)),
                                       -30, 30)
    got = elbo.gaussian_kl(jnp.array([[mean]]), jnp.array([[logvar]]))
    assert got.shape == (1,) and float(got[0]) == pytest.approx(integral, abs=1e-6)


def test_gaussian_kl_matches_a_monte_carlo_estimate():
  rng = np.random.default_rng(8)
  mean, logvar = rng.normal(size=(2, 3)), rng.normal(scale=0.5, size=(2, 3))
  z = mean + np.exp(0.5 * logvar) * rng.normal(size=(200_000, 2, 3))
  log_ratio = (scipy.stats.norm.logpdf(z, mean, np.exp(0.5 * logvar))
               - scipy.stats.norm.logpdf(z)).sum(axis=-1)
  estimate, error = log_ratio.mean(axis=0), log_ratio.std(axis=0) / np.sqrt(len(z))
  got = np.asarray(elbo.gaussian_kl(jnp.asarray(mean), jnp.asarray(logvar)))
  assert np.all(np.abs(got - estimate) < 5 * error)


def test_bernoulli_log_likelihood_is_minus_optax_binary_cross_entropy_summed():
  rng = np.random.default_rng(9)
  logits = rng.normal(scale=4.0, size=(3, 5, 5, 2)).astype(np.float32)
  logits[0, 0, 0] = (80.0, -80.0)  # saturated: a naive log(σ) would give -inf
  x = rng.uniform(size=logits.shape).astype(np.float32)
  x[1] = np.round(x[1])  # binary images too
  got = elbo.bernoulli_log_likelihood(jnp.asarray(logits), jnp.asarray(x))
  expected = -optax.sigmoid_binary_cross_entropy(jnp.asarray(logits), jnp.asarray(x)).sum(axis=(1, 2, 3))
  assert got.shape == (3,) and np.all(np.isfinite(got))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_gaussian_log_likelihood_is_scipys_logpdf_summed_per_image():
  rng = np.random.default_rng(10)
  mean, x = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 3))
  for log_sigma in (np.float64(-1.5), rng.normal(scale=0.3, size=(2, 4, 4, 3))):
    got = elbo.gaussian_log_likelihood(jnp.asarray(mean), jnp.asarray(log_sigma), jnp.asarray(x))
    expected = np.broadcast_to(scipy.stats.norm.logpdf(x, mean, np.exp(log_sigma)), x.shape)
    np.testing.assert_allclose(got, expected.sum(axis=(1, 2, 3)), rtol=1e-5)


def test_log_normal_is_scipys_logpdf_summed_over_the_last_axis():
  rng = np.random.default_rng(11)
  z, mean, logvar = rng.normal(size=(4, 3, 6)), rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
  got = elbo.log_normal(jnp.asarray(z), jnp.asarray(mean), jnp.asarray(logvar))
  assert got.shape == (4, 3)
  np.testing.assert_allclose(got, scipy.stats.norm.logpdf(z, mean, np.exp(0.5 * logvar)).sum(-1), rtol=1e-5)
  np.testing.assert_allclose(elbo.log_normal(jnp.asarray(z)), scipy.stats.norm.logpdf(z).sum(-1), rtol=1e-5)


def test_importance_weighted_bound_is_the_elbo_for_one_sample_and_above_the_mean_elbo_for_more():
  rng = np.random.default_rng(12)
  k, b = 16, 5
  log_px, log_pz, log_qz = (rng.normal(loc, 2.0, size=(k, b)) for loc in (-100.0, -5.0, -3.0))
  elbos = log_px + log_pz - log_qz
  one = elbo.importance_weighted_bound(*(jnp.asarray(a[:1]) for a in (log_px, log_pz, log_qz)))
  np.testing.assert_allclose(one, elbos[0], rtol=1e-6)
  bound = np.asarray(elbo.importance_weighted_bound(jnp.asarray(log_px), jnp.asarray(log_pz),
                                                    jnp.asarray(log_qz)))
  np.testing.assert_allclose(bound, np.log(np.mean(np.exp(elbos), axis=0)), rtol=1e-6)
  assert np.all(bound >= elbos.mean(axis=0))
  far = elbo.importance_weighted_bound(jnp.asarray(log_px - 5000.0), jnp.asarray(log_pz),
                                       jnp.asarray(log_qz))  # exp would underflow to 0
  np.testing.assert_allclose(far, bound - 5000.0, rtol=1e-6)
