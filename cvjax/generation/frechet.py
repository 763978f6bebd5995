"""Distances between generated and real images, measured in a classifier's features.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to the
Inception-v3 pool3 features of two image sets; KID (Bińkowski et al. 2018) is an
unbiased MMD² with a cubic polynomial kernel on the same features. Here the
classifier is any flax model, so the numbers are "FID / KID in that model's
features": comparable between runs that use the same classifier and weights, not
with the published Inception numbers.

  feature_extractor(model, variables)     jitted f32[B, H, W, C] → f32[B, D]
  statistics(features)                    (μ f64[D], Σ f64[D, D])
  frechet_distance(mu1, sigma1, mu2, sigma2)    float, squared feature units
  kernel_distance(f1, f2)                 (mean, std) of MMD² over random subsets

`frechet_distance` follows pytorch-fid's `calculate_frechet_distance` step for
step (scipy's `sqrtm`, the ε·I retry, the imaginary-part check), so the same
statistics give the same number. Everything but the extractor is numpy in float64.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

# pytorch-fid's tolerance on the imaginary part of sqrtm's diagonal, above which the
# square root is not trusted.
_MAX_IMAGINARY = 1e-3


def feature_extractor(model: nn.Module, variables: Any) -> Callable[[jax.Array], jax.Array]:
  """A jitted function from images to the input of the model's last `nn.Dense` layer.

  For a CNN classifier that is the penultimate representation (after pooling or
  flattening and any hidden dense layers), as Inception's pool3 is the input of its
  logits layer. The model runs in inference mode (`train=False`: BatchNorm's running
  statistics, no dropout); `flax.linen.intercept_methods` records the first argument
  of every `nn.Dense.__call__` (subclasses included) in call order and the last one is
  returned, so a model whose final layer is not an `nn.Dense` (e.g. a 1 × 1 conv
  head) yields the input of whichever Dense ran last.

  Args:
    model: a flax module called as `model.apply(variables, x, train=False)`.
    variables: its variables ({'params': …, 'batch_stats': …}).

  Returns:
    fn(x f32[B, H, W, C]) → f32[B, D]. Calling it raises ValueError if the model
    calls no nn.Dense, or if that Dense's input is not [B, D].
  """
  def features(x: jax.Array) -> jax.Array:
    inputs = []

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.Dense) and context.method_name == '__call__':
        inputs.append(args[0] if args else kwargs['inputs'])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      model.apply(variables, x, train=False)
    if not inputs:
      raise ValueError(f'{type(model).__name__} calls no flax.linen.Dense layer, so it has no '
                       'features to extract; use a classifier with a dense head')
    last = inputs[-1]
    if last.ndim != 2:
      raise ValueError(f'the last Dense layer of {type(model).__name__} takes an input of shape '
                       f'{last.shape}, not [B, D]; features must be one vector per image')
    return jnp.asarray(last, jnp.float32)

  return jax.jit(features)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of a set of feature vectors, as pytorch-fid fits its Gaussian.

  Args:
    features: f[N, D], N >= 2, one row per image.

  Returns:
    (mu f64[D], sigma f64[D, D]); sigma is the sample covariance (divides by N − 1).
  """
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f'statistics takes features f[N, D] with N >= 2 images; got shape {features.shape}')
  return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
  """The Fréchet (2-Wasserstein²) distance between N(mu1, sigma1) and N(mu2, sigma2).

  d² = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2·(Σ1Σ2)^{1/2}), the matrix square root by
  `scipy.linalg.sqrtm`. When the root is not finite (Σ1Σ2 singular, e.g. fewer images
  than dimensions) it is recomputed as ((Σ1 + εI)(Σ2 + εI))^{1/2} with a warning; a
  complex root whose diagonal's imaginary parts are all within 1e-3 of 0 is replaced
  by its real part.

  Args:
    mu1, mu2: f[D] feature means.
    sigma1, sigma2: f[D, D] feature covariances.
    eps: the diagonal offset of the retry.

  Returns:
    The distance as a Python float, in squared feature units; 0 for identical
    statistics (up to sqrtm's rounding, ~1e-10 relative to Tr Σ).

  Raises:
    ValueError: shapes that do not match, or a root with a large imaginary part.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f'frechet_distance takes means [D] and covariances [D, D] of one D; got means '
                     f'{mu1.shape} and {mu2.shape}, covariances {sigma1.shape} and {sigma2.shape}')
  root = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(root).all():
    warnings.warn(f'the product of the covariances is singular; adding {eps} to their diagonals '
                  'before the square root (more images than feature dimensions avoids this)',
                  RuntimeWarning, stacklevel=2)
    offset = eps * np.eye(sigma1.shape[0])
    root = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(root):
    if not np.allclose(np.diagonal(root).imag, 0.0, atol=_MAX_IMAGINARY):
      raise ValueError(f'the square root of the covariance product has imaginary parts up to '
                       f'{np.max(np.abs(root.imag)):.3g}; the covariances are not valid '
                       '(symmetric positive semi-definite) or too ill-conditioned')
    root = root.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(x, y) = (x·y/d + 1)³ for every pair of rows: f64[n, d], f64[m, d] → f64[n, m]."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def kernel_distance(f1: np.ndarray, f2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
  """KID: the unbiased MMD² between two feature sets with k(x, y) = (x·y/d + 1)³.

  Each of `num_subsets` rounds draws m = min(subset_size, n1, n2) rows of each set
  without replacement (one `np.random.default_rng(seed)` for all draws, f1's rows
  first) and computes
    MMD²_u = Σ_{i≠j} k(x_i, x_j)/(m(m−1)) + Σ_{i≠j} k(y_i, y_j)/(m(m−1)) − 2·Σ_{i,j} k(x_i, y_j)/m²,
  which is unbiased, so it can be (slightly) negative; torch-fidelity and clean-fid
  compute the same estimate.

  Args:
    f1: f[n1, d]; f2: f[n2, d], the two sets' features; n1, n2 >= 2.
    num_subsets: rounds averaged.
    subset_size: the largest m.
    seed: the subsets' seed.

  Returns:
    (mean, std) of MMD² over the rounds, Python floats in squared kernel units; std
    is the population standard deviation (ddof = 0), as torch-fidelity reports it.
  """
  f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
  if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
    raise ValueError(f'kernel_distance takes features f[n1, d] and f[n2, d]; got {f1.shape} and {f2.shape}')
  m = min(int(subset_size), f1.shape[0], f2.shape[0])
  if m < 2 or num_subsets < 1:
    raise ValueError(f'kernel_distance needs subsets of at least 2 rows and at least one subset; got '
                     f'subset size {m} (sets of {f1.shape[0]} and {f2.shape[0]}) and {num_subsets} subsets')
  rng = np.random.default_rng(seed)
  estimates = []
  for _ in range(int(num_subsets)):
    x = f1[rng.choice(f1.shape[0], m, replace=False)]
    y = f2[rng.choice(f2.shape[0], m, replace=False)]
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    estimates.append(within - 2.0 * k_xy.sum() / m ** 2)
  return float(np.mean(estimates)), float(np.std(estimates))
