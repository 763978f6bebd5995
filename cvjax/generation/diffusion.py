"""Denoising diffusion: β schedules, the forward process and the DDPM / DDIM samplers.

DDPM is Ho et al. (2020), "Denoising Diffusion Probabilistic Models"; the cosine
schedule is Nichol & Dhariwal (2021), "Improved DDPM"; DDIM is Song et al. (2021),
"Denoising Diffusion Implicit Models". A model predicts the noise ε that was added:

  beta_schedule(kind, T)                  f64[T], β_t
  make_schedule(kind, T)                  Schedule: f32[T] β, α, ᾱ, log ᾱ
  q_sample(schedule, x0, t, noise)        x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·noise
  predict_x0(schedule, x_t, t, eps)       x0 = (x_t − √(1 − ᾱ_t)·ε) / √ᾱ_t
  ddpm_posterior(schedule, x0, x_t, t)    mean and variance of q(x_{t−1} | x_t, x0)
  ddpm_sample(eps_fn, schedule, shape, key)                  ancestral sampling, T steps
  ddim_timesteps(T, num_steps)            the DDIM steps, descending
  ddim_sigma(schedule, t, t_prev, eta)    DDIM's σ_t
  ddim_step(schedule, x_t, eps, t, t_prev, eta, noise)       one DDIM update
  ddim_sample(eps_fn, schedule, shape, key, num_steps, eta)  DDIM sampling

Timesteps are 0-based as in Ho et al.'s code: index t ∈ {0, …, T − 1} holds the
paper's step t + 1, so ᾱ[0] = 1 − β[0] and "before step 0" means ᾱ = 1 (x0 itself).
`eps_fn(x f32[B, H, W, C], t int32[B]) -> f32[B, H, W, C]` is the model (any
closure over its variables). Data are scaled to [-1, 1]; `clip` clips the predicted
x0 to that range at every step, as Ho et al. and diffusers do.

Schedules are computed in float64 and stored in float32, and 1 − ᾱ is taken from
log ᾱ (−expm1(log ᾱ)) rather than from ᾱ: near t = 0, 1 − ᾱ_t is ~1e-4 and float32
subtraction from 1 would keep only three or four of its digits.

`Schedule` is a pytree (its arrays are leaves, `num_steps` is static), so it can be
an argument of a jitted function; the samplers are one `lax.fori_loop` / `lax.scan`
each, so `jax.jit(ddpm_sample, static_argnums=(0, 2, 4))` compiles `eps_fn` once.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cvjax import errors

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]

_LINEAR_BETAS = (1e-4, 0.02)  # β_1 and β_T of Ho et al. (T = 1000)
_COSINE_OFFSET = 0.008        # s of Nichol & Dhariwal: keeps β_1 from being vanishingly small
_COSINE_MAX_BETA = 0.999      # their clip: β_T would be 1, a singular last step
SCHEDULES = ('linear', 'cosine')


def beta_schedule(kind: str, num_steps: int = 1000) -> np.ndarray:
  """The noise variances β_t of a diffusion of `num_steps` steps.

  'linear' (Ho et al.): β linear from 1e-4 (t = 0) to 0.02 (t = T − 1), the same
  endpoints for every T (improved-diffusion rescales them by 1000/T; this does not).
  'cosine' (Nichol & Dhariwal): ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2),
  s = 0.008, and β at index t is 1 − f(t + 1)/f(t), clipped at 0.999 (only the last
  few steps reach it).

  Args:
    kind: 'linear' or 'cosine'.
    num_steps: T >= 1.

  Returns:
    f64[T], β_t in (0, 1).

  Raises:
    UserError: an unknown kind.
    ValueError: num_steps < 1.
  """
  num_steps = int(num_steps)
  if num_steps < 1:
    raise ValueError(f'a diffusion needs at least one step; got num_steps={num_steps}')
  if kind == 'linear':
    return np.linspace(*_LINEAR_BETAS, num_steps, dtype=np.float64)
  if kind == 'cosine':
    s = _COSINE_OFFSET
    f = np.cos((np.arange(num_steps + 1, dtype=np.float64) / num_steps + s) / (1 + s) * np.pi / 2) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], _COSINE_MAX_BETA)
  raise errors.unknown_choice('beta schedule', kind, SCHEDULES)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A diffusion's per-step constants, f32[T] each (index t = the paper's step t + 1).

  betas: β_t. alphas: α_t = 1 − β_t. alpha_bars: ᾱ_t = Π_{s ≤ t} α_s.
  log_alpha_bars: log ᾱ_t, the accurate source of 1 − ᾱ_t and of ratios ᾱ_t/ᾱ_s.
  num_steps: T (static under jit).
  """
  betas: jax.Array
  alphas: jax.Array
  alpha_bars: jax.Array
  log_alpha_bars: jax.Array
  num_steps: int


jax.tree_util.register_dataclass(
    Schedule, data_fields=['betas', 'alphas', 'alpha_bars', 'log_alpha_bars'],
    meta_fields=['num_steps'])


def make_schedule(kind: str, num_steps: int = 1000) -> Schedule:
  """`beta_schedule(kind, num_steps)` and its products, computed in float64, stored as f32."""
  betas = beta_schedule(kind, num_steps)
  alphas = 1.0 - betas
  arrays = (betas, alphas, np.cumprod(alphas), np.cumsum(np.log1p(-betas)))
  return Schedule(*(jnp.asarray(a, jnp.float32) for a in arrays), num_steps=len(betas))


def _log_alpha_bar(schedule: Schedule, t: jax.Array) -> jax.Array:
  """log ᾱ_t for int t of any shape; t = −1 (before the first step) gives log 1 = 0."""
  t = jnp.asarray(t, jnp.int32)
  return jnp.where(t >= 0, schedule.log_alpha_bars[jnp.maximum(t, 0)], 0.0)


def _per_example(values: jax.Array, ndim: int) -> jax.Array:
  """f32[B] → f32[B, 1, …, 1] with `ndim` axes, to scale a batch of images."""
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """A draw of x_t from q(x_t | x0) = N(√ᾱ_t·x0, (1 − ᾱ_t)·I), given the noise.

  Args:
    schedule: the diffusion.
    x0: f32[B, H, W, C] data in [-1, 1] (any [B, ...] shape works).
    t: int32[B], steps in [0, T).
    noise: f32 like x0, standard normal.

  Returns:
    f32 like x0: √ᾱ_t·x0 + √(1 − ᾱ_t)·noise.
  """
  log_ab = _per_example(_log_alpha_bar(schedule, t), x0.ndim)
  return jnp.exp(0.5 * log_ab) * x0 + jnp.sqrt(-jnp.expm1(log_ab)) * noise


def predict_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
  """The x0 that `q_sample` would have mapped to x_t with noise `eps` (q_sample inverted).

  Args:
    x_t: f32[B, H, W, C]. t: int32[B] in [0, T). eps: f32 like x_t.

  Returns:
    f32 like x_t: (x_t − √(1 − ᾱ_t)·eps) / √ᾱ_t, not clipped.
  """
  log_ab = _per_example(_log_alpha_bar(schedule, t), x_t.ndim)
  return (x_t - jnp.sqrt(-jnp.expm1(log_ab)) * eps) * jnp.exp(-0.5 * log_ab)


def ddpm_posterior(schedule: Schedule, x0: jax.Array, x_t: jax.Array,
                   t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The Gaussian q(x_{t−1} | x_t, x0) of Ho et al. (their eq. 6–7).

  μ̃ = √ᾱ_{t−1}·β_t/(1 − ᾱ_t)·x0 + √α_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t)·x_t and
  β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t, with ᾱ_{−1} = 1: at t = 0 the mean is x0 and
  the variance 0.

  Args:
    x0: f32[B, H, W, C]. x_t: f32 like x0. t: int32[B] in [0, T).

  Returns:
    (mean f32 like x0, variance f32[B]).
  """
  t = jnp.asarray(t, jnp.int32)
  log_ab, log_ab_prev = _log_alpha_bar(schedule, t), _log_alpha_bar(schedule, t - 1)
  one_minus_ab, one_minus_ab_prev = -jnp.expm1(log_ab), -jnp.expm1(log_ab_prev)
  beta = schedule.betas[t]
  coef_x0 = jnp.exp(0.5 * log_ab_prev) * beta / one_minus_ab
  coef_xt = jnp.sqrt(schedule.alphas[t]) * one_minus_ab_prev / one_minus_ab
  mean = _per_example(coef_x0, x0.ndim) * x0 + _per_example(coef_xt, x0.ndim) * x_t
  return mean, one_minus_ab_prev / one_minus_ab * beta


def ddpm_sample(eps_fn: EpsFn, schedule: Schedule, shape: Sequence[int], key: jax.Array,
                clip: bool = True) -> jax.Array:
  """Ancestral sampling (Ho et al., Algorithm 2, in the x0-parameterised form of their code).

  x_T ~ N(0, I); for t = T − 1 … 0: x0̂ from ε = eps_fn(x_t, t) (clipped to [-1, 1]
  if `clip`), then x_{t−1} ~ N(μ̃_t(x_t, x0̂), β̃_t·I), without noise at t = 0, where
  the mean is x0̂ itself. T calls of eps_fn, in one `lax.fori_loop`.

  Args:
    eps_fn: the noise predictor, (f32[B, H, W, C], int32[B]) → f32[B, H, W, C].
    schedule: the diffusion it was trained on.
    shape: (B, H, W, C), static.
    key: PRNG key; x_T uses one half, the noise of step t `fold_in(other half, t)`.
    clip: clip the predicted x0 to [-1, 1] (then the sample lies in [-1, 1]).

  Returns:
    f32[shape], the samples x_0.
  """
  shape = tuple(int(d) for d in shape)
  init_key, noise_key = jax.random.split(key)
  num_steps = schedule.num_steps

  def step(i, x):
    t = num_steps - 1 - i
    t_batch = jnp.full((shape[0],), t, jnp.int32)
    x0 = predict_x0(schedule, x, t_batch, eps_fn(x, t_batch))
    if clip:
      x0 = jnp.clip(x0, -1.0, 1.0)
    mean, variance = ddpm_posterior(schedule, x0, x, t_batch)
    noise = jax.random.normal(jax.random.fold_in(noise_key, t), shape, jnp.float32)
    # variance is exactly 0 at t = 0, so the last step adds no noise.
    return mean + _per_example(jnp.sqrt(variance), len(shape)) * noise

  x_T = jax.random.normal(init_key, shape, jnp.float32)
  return jax.lax.fori_loop(0, num_steps, step, x_T)


def ddim_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
  """The steps DDIM visits: range(0, T, T // num_steps), descending.

  Song et al.'s uniform skip; diffusers calls it 'leading' spacing. When num_steps
  does not divide T the range has more than num_steps entries (T = 1000,
  num_steps = 300: 334 steps of 3), as in Song et al.'s code; diffusers keeps only
  the first num_steps of them.

  Returns:
    int32[S], e.g. [980, 960, …, 20, 0] for T = 1000, num_steps = 50.
  """
  num_train_steps, num_steps = int(num_train_steps), int(num_steps)
  if not 1 <= num_steps <= num_train_steps:
    raise ValueError(f'DDIM takes between 1 and T = {num_train_steps} steps; got num_steps={num_steps}')
  return np.arange(0, num_train_steps, num_train_steps // num_steps, dtype=np.int32)[::-1].copy()


def ddim_sigma(schedule: Schedule, t: jax.Array, t_prev: jax.Array, eta: float) -> jax.Array:
  """DDIM's noise scale σ_t = η·√((1 − ᾱ_prev)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev) (Song et al. eq. 16).

  η = 0 is the deterministic DDIM; η = 1 with t_prev = t − 1 gives σ_t² = β̃_t, DDPM's
  posterior variance.

  Args:
    t: int32 steps in [0, T), any shape. t_prev: int32 like t, the next step visited,
      −1 after the last (ᾱ_prev = 1, so σ = 0).
    eta: η >= 0.

  Returns:
    f32 like t.
  """
  log_ab, log_ab_prev = _log_alpha_bar(schedule, t), _log_alpha_bar(schedule, t_prev)
  variance = (jnp.expm1(log_ab_prev) / jnp.expm1(log_ab)) * -jnp.expm1(log_ab - log_ab_prev)
  return eta * jnp.sqrt(variance)


def ddim_step(schedule: Schedule, x_t: jax.Array, eps: jax.Array, t: jax.Array, t_prev: jax.Array,
              eta: float = 0.0, noise: jax.Array | None = None, clip: bool = True) -> jax.Array:
  """One DDIM update from step t to step t_prev (Song et al. eq. 12).

  x_prev = √ᾱ_prev·x0̂ + √(1 − ᾱ_prev − σ_t²)·ε + σ_t·z, x0̂ = `predict_x0(x_t, ε)`
  clipped to [-1, 1] if `clip`, σ_t = `ddim_sigma(schedule, t, t_prev, eta)`. The
  direction term uses the given ε, not one re-derived from the clipped x0̂
  (diffusers' default; Song et al.'s code does not clip). With η = 0 and the true
  noise of x_t = q_sample(x0, t, ε), x_prev is q_sample(x0, t_prev, ε).

  Args:
    x_t: f32[B, H, W, C]. eps: f32 like x_t, the predicted noise.
    t: int32[B] in [0, T). t_prev: int32[B], < t; −1 means x0 (ᾱ_prev = 1).
    eta: η >= 0.
    noise: z, standard normal like x_t; None drops the σ_t·z term (as η = 0 does).
    clip: clip x0̂ to [-1, 1].

  Returns:
    f32 like x_t.
  """
  x0 = predict_x0(schedule, x_t, t, eps)
  if clip:
    x0 = jnp.clip(x0, -1.0, 1.0)
  log_ab_prev = _per_example(_log_alpha_bar(schedule, t_prev), x_t.ndim)
  sigma = _per_example(ddim_sigma(schedule, t, t_prev, eta), x_t.ndim)
  direction = jnp.sqrt(jnp.maximum(-jnp.expm1(log_ab_prev) - sigma ** 2, 0.0))
  x_prev = jnp.exp(0.5 * log_ab_prev) * x0 + direction * eps
  return x_prev if noise is None else x_prev + sigma * noise


def ddim_sample(eps_fn: EpsFn, schedule: Schedule, shape: Sequence[int], key: jax.Array,
                num_steps: int, eta: float = 0.0, clip: bool = True) -> jax.Array:
  """DDIM sampling: x_T ~ N(0, I), then `ddim_step` over `ddim_timesteps(T, num_steps)`.

  Each visited t goes to the next one visited, t_prev, and the last (t = 0) to −1,
  where ᾱ_prev = 1 and σ = 0, so the sample is the last predicted x0.

  Args:
    eps_fn: the noise predictor, (f32[B, H, W, C], int32[B]) → f32[B, H, W, C].
    schedule: the diffusion it was trained on.
    shape: (B, H, W, C), static.
    key: PRNG key; x_T uses one half, the noise of the i-th step `fold_in(other half, i)`.
    num_steps: steps requested, 1 … T, static (see `ddim_timesteps` for the count
      when it does not divide T).
    eta: η; 0 is deterministic given x_T, 1 with num_steps = T has DDPM's variances.
    clip: clip the predicted x0 to [-1, 1] (then the sample lies in [-1, 1]).

  Returns:
    f32[shape], the samples.
  """
  shape = tuple(int(d) for d in shape)
  init_key, noise_key = jax.random.split(key)
  timesteps = ddim_timesteps(schedule.num_steps, num_steps)
  previous = np.append(timesteps[1:], np.int32(-1))

  def step(x, step_input):
    i, t, t_prev = step_input
    t, t_prev = jnp.full((shape[0],), t, jnp.int32), jnp.full((shape[0],), t_prev, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(noise_key, i), shape, jnp.float32)
    return ddim_step(schedule, x, eps_fn(x, t), t, t_prev, eta, noise, clip), None

  x_T = jax.random.normal(init_key, shape, jnp.float32)
  steps = (jnp.arange(len(timesteps), dtype=jnp.int32), jnp.asarray(timesteps), jnp.asarray(previous))
  x, _ = jax.lax.scan(step, x_T, steps)
  return x
