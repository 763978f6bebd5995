"""Small layers shared by the model families.

Pools are tiny `nn.Module`s rather than bare functions so that they show up,
with their window, stride and padding, in `cvjax.summary`. All padding is
explicit and symmetric, `((p, p), (p, p))`, like torchvision and Keras'
`ZeroPadding2D`; `'SAME'` pads a 3×3/s2 window (0, 1) on even inputs, which
would make imported weights give different numbers.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cvjax import errors
from cvjax.models import conv_lowering

Array = Any
ModuleDef = Any

# He et al. 2015 normal init, fan-out mode as torchvision's ResNet and VGG use
# (`kaiming_normal_(mode='fan_out', nonlinearity='relu')`). jax's own
# `he_normal` is a truncated normal over fan-in, hence our own.
he_normal = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def sym(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric 2-D padding `((p, p), (p, p))`."""
  return ((p, p), (p, p))


def conv(features: int, kernel_size: int, strides: int = 1,
         padding: int | None = None, impl: str = 'xla', **kwargs) -> nn.Conv:
  """A square `nn.Conv` with explicit symmetric padding.

  Args:
    features: output channels.
    kernel_size: k, for a k×k kernel.
    strides: s, the same along H and W.
    padding: p zeros on every side; default k // 2 (size-preserving at s=1).
    impl: how the conv is computed, a resolved impl ('xla', 'cpu'; see
      `cvjax.models.conv_lowering`). The parameters and numbers are the same for every impl.
    **kwargs: passed to `nn.Conv` (use_bias, dtype, kernel_init, name, ...).
  """
  if padding is None:
    padding = kernel_size // 2
  kwargs.setdefault('kernel_init', he_normal)
  return conv_general(features, kernel_size, strides, padding=sym(padding), impl=impl, **kwargs)


def conv_general(features: int, kernel_size: int | Sequence[int], strides: int | Sequence[int] = 1,
                 impl: str = 'xla', **kwargs) -> nn.Conv:
  """`nn.Conv` (any padding it takes, flax's default init) computed the `impl` way.

  For the families whose convs need asymmetric 'same' padding (Keras ports) or
  non-square kernels: the same parameters as a plain `nn.Conv`.
  """
  k = (kernel_size,) * 2 if isinstance(kernel_size, int) else tuple(kernel_size)
  s = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
  lowering = conv_lowering.lowering(impl, k, groups=kwargs.get('feature_group_count', 1))
  return nn.Conv(features, k, s, conv_general_dilated=lowering, **kwargs)


class MaxPool(nn.Module):
  """k×k max-pool, stride s, padding p (padded cells never win): [B,H,W,C] → [B,O,O',C]."""
  window: int
  stride: int | None = None  # defaults to window
  padding: int = 0

  def __call__(self, x: Array) -> Array:
    s = self.stride or self.window
    return nn.max_pool(x, (self.window,) * 2, (s, s), sym(self.padding))


class AvgPool(nn.Module):
  """k×k average pool, stride s, padding p (zeros count in the mean, as in torch)."""
  window: int
  stride: int | None = None
  padding: int = 0

  def __call__(self, x: Array) -> Array:
    s = self.stride or self.window
    return nn.avg_pool(x, (self.window,) * 2, (s, s), sym(self.padding))


class GlobalAvgPool(nn.Module):
  """Mean over H and W: [B, H, W, C] → [B, C]."""

  def __call__(self, x: Array) -> Array:
    return jnp.mean(x, axis=(1, 2))


class AdaptiveAvgPool(nn.Module):
  """torch's `AdaptiveAvgPool2d`: [B, H, W, C] → [B, n, n, C].

  Bin i covers rows floor(i·H/n) … ceil((i+1)·H/n) − 1 (same for columns), so
  the layer is the identity when H = W = n and replicates rows when H < n.
  """
  output_size: int

  def __call__(self, x: Array) -> Array:
    n = self.output_size
    _, h, w, _ = x.shape
    if (h, w) == (n, n):
      return x
    if h % n == 0 and w % n == 0:
      return nn.avg_pool(x, (h // n, w // n), (h // n, w // n))

    def bins(size):
      return [(i * size // n, -(-(i + 1) * size // n)) for i in range(n)]

    rows = [jnp.stack([jnp.mean(x[:, r0:r1, c0:c1], axis=(1, 2))
                       for c0, c1 in bins(w)], axis=1)
            for r0, r1 in bins(h)]
    return jnp.stack(rows, axis=1)


class LRN(nn.Module):
  """Local response normalisation across channels (Krizhevsky et al. 2012 §3.3).

  b_c = a_c / (k + alpha · Σ_{c' in window of `size` around c} a_c'²)^beta,
  with the paper's k=2, n=5, alpha=1e-4, beta=0.75. (torch's
  `LocalResponseNorm` divides alpha by n; this is the paper's form.)
  Shape-preserving: [B, H, W, C] → [B, H, W, C].
  """
  size: int = 5
  alpha: float = 1e-4
  beta: float = 0.75
  k: float = 2.0

  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    sq = jnp.pad(jnp.square(x),
                 [(0, 0)] * 3 + [(self.size // 2, (self.size - 1) // 2)])
    window_sum = sum(sq[..., i:i + c] for i in range(self.size))
    return x / (self.k + self.alpha * window_sum) ** self.beta


def flatten(x: Array) -> Array:
  """[B, H, W, C] → [B, H·W·C] in NHWC order (torch flattens C·H·W)."""
  return x.reshape((x.shape[0], -1))


def pixel_shuffle(x: Array, r: int) -> Array:
  """Depth-to-space: x[B, H, W, C·r²] → [B, H·r, W·r, C], torch's channel order.

  Input channel c·r² + i·r + j of pixel (h, w) goes to output channel c at pixel
  (h·r + i, w·r + j), as `torch.nn.PixelShuffle(r)` does on the NCHW equivalent, so
  sub-pixel convs ported from torch (ESPCN, EDSR) keep their meaning. (TF's
  `depth_to_space` orders the channels (i, j, c) instead.)
  """
  b, h, w, crr = x.shape
  if r < 1 or crr % (r * r):
    raise errors.UserError(f'pixel_shuffle by {r} needs a positive r and channels divisible by '
                           f'r² = {r * r}, got {crr} channels')
  c = crr // (r * r)
  x = x.reshape(b, h, w, c, r, r)
  x = x.transpose(0, 1, 4, 2, 5, 3)  # [B, H, i, W, j, C]
  return x.reshape(b, h * r, w * r, c)


def choose(kind: str, value: str, table: dict[str, Any]) -> Any:
  """`table[value]`, or a `UserError` naming `kind` and the valid keys."""
  if value not in table:
    raise errors.unknown_choice(kind, value, table)
  return table[value]
