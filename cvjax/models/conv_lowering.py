"""How a 2-D convolution is computed: XLA's convolution, or forms that are faster on XLA:CPU.

A model holds its choice as a field (`conv_impl`, declared once in `base.Net`), resolved
once when it is built (`cvjax.models.get_model`); the layers it builds with `self.conv` &
co. pass it on, and `lowering(impl, kernel_size, groups)` gives each conv a drop-in for
`lax.conv_general_dilated` (what `nn.Conv` calls). The parameters
(`kernel` [kh, kw, C_in, C_out], `bias`) and their names are the same for every impl,
so checkpoints and imported weights do not care.

impl, as a model option (`CONV_IMPLS`):
  'xla'     `lax.conv_general_dilated`: XLA's convolution op, plain autodiff.
  'onednn'  oneDNN's kernels for every conv they take (`cvjax.models.onednn`: 2-D,
            NHWC, float32), XLA's for the rest; 'xla' when oneDNN is not built.
  'auto'    'cpu' when `jax.default_backend()` is 'cpu' at construction, else 'xla'.
Resolved (a model's field): 'xla', 'onednn', or 'cpu' = every lowering of
`CPU_LOWERINGS`, the first that takes a conv computing it:
  onednn       oneDNN's forward, input-gradient and kernel-gradient kernels
               (custom calls, `cvjax.models.onednn`); left out ('cpu-onednn')
               when the library is not built. The rest apply where it is not
               (bfloat16, other layouts, or no library):
  matmul1x1    a 1×1 conv is the (strided) input times the [C_in, C_out] kernel
               (`conv_1x1`).
  materialize  the backward pass of an ungrouped conv reads a materialised copy of
               its input (1×1: and of the output gradient), see below.
  band         few input channels on a narrow input (LeNet's C1, C3): one banded
               matmul (`conv_band`).
  depthwise    `blocks.DepthwiseConv` as a sum of k² per-channel scaled shifted
               copies of the input instead of a grouped convolution.
Grouped convs otherwise stay XLA's. Values and gradients are autodiff's, up to
float32 rounding. oneDNN's convs are differentiable in reverse mode only
(`jax.custom_vjp`); for forward mode (`jax.jvp`, `jax.jacfwd`) build the model
with conv_impl='xla'. Benchmarks time one lowering's share with internal names:
'cpu-band' (every CPU lowering but `band`; several: 'cpu-band-depthwise') and
'xla+band' (XLA's convs plus `band` alone); `get_model` takes them too.

Why the materialised copy: XLA:CPU computes a conv's weight gradient on transposed
operands ([C, H, W, B] for an NHWC input) and fuses each transpose with the
elementwise ops that produced the operand (BatchNorm, ReLU, residual additions,
recomputed back to the previous conv), so the transposing loop reads a dozen arrays
in a cache-hostile order. A matmul is never fused with the ops producing its
operands, so `_materialize` (an identity matmul on groups of 16 values, exact for
finite numbers) makes the transpose read one array. `lax.optimization_barrier` would
say this directly, but XLA:CPU removes barriers before it fuses.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from cvjax import errors
from cvjax.models import onednn

CONV_IMPLS = ('auto', 'xla', 'onednn')
CPU_LOWERINGS = ('onednn', 'matmul1x1', 'materialize', 'band', 'depthwise')
_GROUP = 16  # values per identity matmul in `_materialize`
_BAND_MAX_CHANNELS = 8  # C_in up to which a k×k conv is a banded matmul ...
_BAND_MAX_WASTE = 8  # ... if its padded input width is at most this many kernel widths
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


def resolve(impl: str) -> str:
  """The concrete impl of a model built now.

  'auto' → 'cpu' on the CPU backend ('cpu-onednn' when oneDNN's convolutions are
  not built: `onednn.available` warns once), else 'xla'. 'onednn' → 'onednn'
  on the CPU backend when built, else 'xla'. Concrete names ('xla', 'cpu', the
  benchmarks' 'cpu-band', 'xla+band', ...) come back as they are. Raises
  UserError for an unknown name.
  """
  cpu = jax.default_backend() == 'cpu'
  if impl == 'auto':
    return ('cpu' if onednn.available() else 'cpu-onednn') if cpu else 'xla'
  if impl == 'onednn':
    return 'onednn' if cpu and onednn.available() else 'xla'
  lowerings(impl)
  return impl


@functools.lru_cache(maxsize=None)
def lowerings(impl: str) -> frozenset[str]:
  """The CPU lowerings a concrete impl turns on: 'xla' none, 'cpu' all of `CPU_LOWERINGS`,
  'cpu-a-b' all but a and b, 'xla+a+b' only a and b."""
  if impl == 'onednn':
    return frozenset({'onednn'})
  if impl == 'auto':
    raise ValueError("conv impl 'auto' is resolved when the model is built "
                     '(cvjax.models.get_model does it); a layer got it unresolved')
  unknown = errors.UserError(f'unknown conv impl {impl!r}; choose one of {", ".join(CONV_IMPLS)}')
  if not isinstance(impl, str):
    raise unknown
  base, sep, rest = impl.partition('-') if impl.startswith('cpu') else impl.partition('+')
  names = rest.split(sep) if sep else []
  if base not in ('xla', 'cpu') or any(n not in CPU_LOWERINGS for n in names) or (sep and not names):
    raise unknown
  return frozenset(CPU_LOWERINGS) - set(names) if base == 'cpu' else frozenset(names)


def lowering(impl: str, kernel_size: Sequence[int], groups: int = 1) -> Callable[..., Any]:
  """A drop-in for `lax.conv_general_dilated` computing a conv the concrete `impl`'s way."""
  on = lowerings(impl)
  fallback = _xla_lowering(on - {'onednn'}, kernel_size, groups)
  if 'onednn' not in on:
    return fallback
  return functools.partial(_conv_onednn, fallback)


def _conv_onednn(fallback: Callable[..., Any], lhs, rhs, *args, **kwargs):
  """oneDNN's conv where it takes the call (`onednn.supports`), else `fallback`'s."""
  if onednn.supports(lhs, rhs, *args, **kwargs):
    return onednn.conv_general_dilated(lhs, rhs, *args, **kwargs)
  return fallback(lhs, rhs, *args, **kwargs)


def _xla_lowering(on: frozenset[str], kernel_size: Sequence[int], groups: int) -> Callable[..., Any]:
  """The lowering of XLA ops for the lowerings `on` (none of them oneDNN)."""
  if groups != 1 or not on & {'matmul1x1', 'materialize', 'band'}:
    return lax.conv_general_dilated
  if all(k == 1 for k in kernel_size):
    base = conv_1x1 if 'matmul1x1' in on else lax.conv_general_dilated
    if 'materialize' not in on:
      return base
    # 1×1: the output gradient too (its transposes fuse BatchNorm's backward).
    return functools.partial(_conv_materialized_backward, base, True)
  return functools.partial(_conv_kxk, on)


def _conv_kxk(on: frozenset[str], lhs, rhs, *args, **kwargs):
  """An ungrouped k×k conv; its shapes, known only when it is called, pick how."""
  if 'band' in on and _is_band(lhs, rhs, *args, **kwargs):
    return conv_band(lhs, rhs, *args, **kwargs)
  if 'materialize' in on:
    return _conv_materialized_backward(lax.conv_general_dilated, False, lhs, rhs, *args, **kwargs)
  return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)


def _is_nhwc(lhs, rhs, dimension_numbers) -> bool:
  return (lhs.ndim == 4 and dimension_numbers is not None
          and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC)


def _is_band(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, batch_group_count=1, **_) -> bool:
  """Whether `conv_band` takes this conv: few input channels on a narrow input,
  NHWC/HWIO, ungrouped, undilated."""
  if (not _is_nhwc(lhs, rhs, dimension_numbers) or feature_group_count != 1
      or batch_group_count != 1 or any(d != 1 for d in (lhs_dilation or (1, 1)))
      or any(d != 1 for d in (rhs_dilation or (1, 1)))):
    return False
  kh, kw, c, _ = rhs.shape
  pads = _window_pads(padding, lhs.shape[1:3], (kh, kw), window_strides)
  width = lhs.shape[2] + sum(pads[1])
  return c <= _BAND_MAX_CHANNELS and width <= _BAND_MAX_WASTE * kw


def conv_band(lhs, rhs, window_strides, padding, precision=None, preferred_element_type=None,
              **_):
  """A conv as one matmul of input rows with a banded (Toeplitz) expansion of the kernel.

  lhs: [B, H, W, C] (NHWC); rhs: [kh, kw, C, O] (HWIO); returns [B, H', W', O].
  Undilated, ungrouped convs only (`_is_band` checks). With the input padded to
  [B, Hp, Wp, C]:

      rows  [B·H', kh·Wp·C]   the kh input rows under each output row, side by side
      band  [kh·Wp·C, W'·O]   band[i, v, c, u, o] = kernel[i, v − u·sw, c, o] (0 outside)
      out = rows @ band

  Plain autodiff then gives a weight gradient that is one large matmul
  (rowsᵀ @ dy, then a sum along the band's diagonals) and an input gradient that is
  dy @ bandᵀ plus kh shifted row adds, where XLA:CPU's own gradient convolutions are
  slow for few input channels. The matmul multiplies Wp/kw times more zeros than it
  needs, hence the limits `_BAND_MAX_CHANNELS` and `_BAND_MAX_WASTE`.
  """
  kh, kw, c, o = rhs.shape
  sh, sw = window_strides
  pads = _window_pads(padding, lhs.shape[1:3], (kh, kw), window_strides)
  x = jnp.pad(lhs, [(0, 0), pads[0], pads[1], (0, 0)])
  b, height, width, _ = x.shape
  ho, wo = (height - kh) // sh + 1, (width - kw) // sw + 1
  rows = jnp.stack([lax.slice_in_dim(x, i, i + (ho - 1) * sh + 1, sh, axis=1)
                    for i in range(kh)], axis=2)  # [B, H', kh, Wp, C]
  shift = np.zeros((kw, width, wo), np.float32)  # shift[j, v, u] = [v == u·sw + j]
  for j in range(kw):
    shift[j, np.arange(wo) * sw + j, np.arange(wo)] = 1
  band = jnp.einsum('jvu,ijco->ivcuo', shift.astype(rhs.dtype), rhs)  # [kh, Wp, C, W', O]
  out = lax.dot_general(rows.reshape(b * ho, kh * width * c),
                        band.reshape(kh * width * c, wo * o), (((1,), (0,)), ((), ())),
                        precision=precision, preferred_element_type=preferred_element_type)
  return out.reshape(b, ho, wo, o)


def _materialize(x):
  """x, written to memory by a matmul with the identity on groups of 16 values.

  Exact for finite values (x·1 + Σ 0·x'); an inf or NaN spreads to its group.
  """
  g = _GROUP if x.size % _GROUP == 0 else x.shape[-1]
  return (x.reshape(-1, g) @ jnp.eye(g, dtype=x.dtype)).reshape(x.shape)


def _conv_materialized_backward(base, materialize_cotangent: bool, lhs, rhs, *args, **kwargs):
  """base(lhs, rhs, ...) whose derivative reads `_materialize(lhs)` (see module docstring).

  A custom JVP of the bilinear conv, y' = conv(x', w) + conv(m(x), w'), so forward and
  reverse mode both work; with `materialize_cotangent` the tangent out is m(y'), whose
  transpose materialises the incoming gradient.
  """
  f = lambda x, w: base(x, w, *args, **kwargs)

  @jax.custom_jvp
  def conv(x, w):
    return f(x, w)

  def jvp(primals, tangents):
    (x, w), (dx, dw) = primals, tangents
    y = f(x, w)
    parts = []
    if not isinstance(dx, SymbolicZero):
      parts.append(f(dx, w))
    if not isinstance(dw, SymbolicZero):
      parts.append(f(_materialize(x), dw))
    if not parts:
      return y, jnp.zeros_like(y)
    dy = sum(parts[1:], parts[0])
    return y, _materialize(dy) if materialize_cotangent else dy

  conv.defjvp(jvp, symbolic_zeros=True)
  return conv(lhs, rhs)


def _window_pads(padding, size: Sequence[int], window: Sequence[int],
                 strides: Sequence[int]) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    return lax.padtype_to_pads(size, window, strides, padding)
  return [tuple(p) for p in padding]


def conv_1x1(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
             precision=None, preferred_element_type=None):
  """A 1×1 `lax.conv_general_dilated` as one matmul: the (padded, strided) input
  [B, H', W', C] times the kernel [C, O].

  lhs: [B, H, W, C] (NHWC); rhs: [1, 1, C, O] (HWIO); returns [B, H', W', O].
  Other kernels, grouped convs, input dilation and other layouts go to
  `lax.conv_general_dilated`.
  """
  args = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
              dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
              batch_group_count=batch_group_count, precision=precision,
              preferred_element_type=preferred_element_type)
  if (rhs.shape[:2] != (1, 1) or feature_group_count != 1 or batch_group_count != 1
      or any(d != 1 for d in (lhs_dilation or (1, 1)))
      or not _is_nhwc(lhs, rhs, dimension_numbers)):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **args)
  pads = _window_pads(padding, lhs.shape[1:3], (1, 1), window_strides)
  if any(p != (0, 0) for p in pads):
    lhs = jnp.pad(lhs, [(0, 0), pads[0], pads[1], (0, 0)])
  x = lhs[:, ::window_strides[0], ::window_strides[1], :]
  return lax.dot_general(x, rhs.reshape(rhs.shape[2:]), (((3,), (0,)), ((), ())),
                         precision=precision, preferred_element_type=preferred_element_type)
