"""The terms of a VAE's evidence lower bound (Kingma & Welling 2014) and its
importance-weighted tightening (Burda et al. 2016), in JAX.

  gaussian_kl(mean, logvar)                       KL(q(z|x) ‖ N(0, I))       f32[B]
  bernoulli_log_likelihood(logits, x)             log p(x|z), x in [0, 1]     f32[B]
  gaussian_log_likelihood(mean, log_sigma, x)     log p(x|z), Gaussian        f32[B]
  log_normal(z, mean, logvar)                     log N(z; mean, diag e^logvar), over the last axis
  importance_weighted_bound(log_p_x_given_z, log_p_z, log_q_z)   log (1/K) Σ_k w_k   f32[B]

All in nats, per example: the image and latent terms sum over every axis after the
first (pixels and channels, or latent dimensions); `log_normal` sums over the last
axis only, so it also takes z f32[K, B, D] of K samples. The ELBO of one sample
z ~ q(z|x) is log p(x|z) − gaussian_kl(mean, logvar) with the KL in closed form, or
log p(x|z) + log p(z) − log q(z|x) estimated from z. Everything is jittable and
differentiable.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)


def _sum_per_example(values: jax.Array) -> jax.Array:
  """f[B, ...] → f32[B], the sum over every axis but the first."""
  return jnp.sum(values, axis=tuple(range(1, values.ndim))).astype(jnp.float32)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, diag exp(logvar)) ‖ N(0, I)) in closed form.

  ½·Σ (exp(logvar) + mean² − 1 − logvar).

  Args:
    mean, logvar: f32[B, ...] of one shape, the encoder's q(z|x); logvar = log σ².

  Returns:
    f32[B], nats, >= 0.
  """
  return _sum_per_example(0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar))


def bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
  """Σ x·log σ(l) + (1 − x)·log(1 − σ(l)): the Bernoulli log-likelihood, grey levels allowed.

  With x in [0, 1] rather than {0, 1} this is the negated binary cross-entropy the
  Flax VAE example trains on MNIST's grey levels; it is not normalised over x (the
  continuous Bernoulli's log C(λ) term is absent), so for grey x it is not a
  log-density and its maximum, at σ(l) = x, is below 0. Computed as x·l − softplus(l),
  finite for any logits.

  Args:
    logits: f32[B, H, W, C], the decoder's logits l.
    x: f32[B, H, W, C] in [0, 1].

  Returns:
    f32[B], nats, <= 0.
  """
  return _sum_per_example(x * logits - jax.nn.softplus(logits))


def gaussian_log_likelihood(mean: jax.Array, log_sigma: jax.Array, x: jax.Array) -> jax.Array:
  """Σ log N(x; mean, σ²) with σ = exp(log_sigma), per pixel.

  Args:
    mean: f32[B, H, W, C], the decoder's mean.
    log_sigma: log standard deviation (not variance), broadcastable to mean: a scalar,
      per channel, or per pixel.
    x: f32[B, H, W, C].

  Returns:
    f32[B], nats (a density: positive when σ is small and x near the mean).
  """
  z = (x - mean) * jnp.exp(-log_sigma)
  return _sum_per_example(jnp.broadcast_to(-0.5 * _LOG_2PI - log_sigma - 0.5 * jnp.square(z), z.shape))


def log_normal(z: jax.Array, mean: jax.Array | float = 0.0, logvar: jax.Array | float = 0.0) -> jax.Array:
  """log N(z; mean, diag exp(logvar)), summed over the last axis.

  The defaults give the standard normal prior log p(z).

  Args:
    z: f32[..., D]. mean, logvar: broadcastable to z; logvar = log σ².

  Returns:
    f32[...] (z's shape without its last axis), nats.
  """
  log_density = -0.5 * (_LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar))
  return jnp.sum(jnp.broadcast_to(log_density, jnp.shape(z)), axis=-1).astype(jnp.float32)


def importance_weighted_bound(log_p_x_given_z: jax.Array, log_p_z: jax.Array,
                              log_q_z: jax.Array) -> jax.Array:
  """The K-sample importance-weighted bound of Burda et al. (IWAE), per example.

  log (1/K) Σ_k exp(log p(x|z_k) + log p(z_k) − log q(z_k|x)), with logsumexp. K = 1
  gives the single-sample ELBO; it never falls below the mean of the K ELBO samples
  and tends to log p(x) as K grows.

  Args:
    log_p_x_given_z, log_p_z, log_q_z: f32[K, B], nats, for K draws z_k ~ q(z|x).

  Returns:
    f32[B], nats.
  """
  log_weights = log_p_x_given_z + log_p_z - log_q_z
  num_samples = log_weights.shape[0]
  return (jax.nn.logsumexp(log_weights, axis=0) - math.log(num_samples)).astype(jnp.float32)
