"""How a 2-D convolution is computed: XLA's convolution, or patches × kernel as one matmul.

`nn.Conv` calls whatever `conv_general_dilated` it is given with
`lax.conv_general_dilated`'s arguments; `lowering(impl, kernel_size)` returns such
a function. The parameters (`kernel` [kh, kw, C_in, C_out], `bias`) are the same
for every impl, so checkpoints and imported weights do not care.

impl:
  'xla'     `lax.conv_general_dilated`: XLA's convolution op, plain autodiff.
  'im2col'  gather the kh·kw shifted (strided, dilated) views of the padded input
            into x_col [B, H', W', kh·kw·C_in] and contract it with the kernel
            reshaped to [kh·kw·C_in, C_out] in one `dot_general`; a 1×1 conv is just
            the (strided) input times the kernel, no copy. Plain autodiff.
  'auto'    on other backends than the CPU: 'xla'. On the CPU, what measured fastest
            on a 2-core AVX-512 machine (benchmarks/NOTES.md): 1×1 convs as a matmul
            ('im2col'), k×k convs as 'xla', and for both a backward pass that reads a
            materialised copy of the conv's input (1×1: and of the output gradient).
            Two k×k shapes go another way, decided when the conv is called: a window
            covering the whole padded input (LeNet's C5) is a matmul of the flattened
            input, and few input channels on a narrow input (LeNet's C1, C3) are
            `conv_band`'s banded matmul. Gradients are the same numbers as plain
            autodiff, up to float32 rounding.

Why the materialised copy: XLA:CPU computes a conv's weight gradient on transposed
operands ([C, H, W, B] for an NHWC input) and fuses each transpose with the
elementwise ops that produced the operand (BatchNorm, ReLU, residual additions,
recomputed back to the previous conv), so the transposing loop reads a dozen arrays
in a cache-hostile order: half of a ResNet-20 train step went there. A matmul is
never fused with the ops producing its operands, so `_materialize` (an identity
matmul on groups of 16 values, exact for finite numbers) makes the transpose read
one array. `lax.optimization_barrier` would say this directly, but XLA:CPU removes
barriers before it fuses.

'im2col' falls back to 'xla' where it does not apply: grouped or batch-grouped
convs, input (transposed-conv) dilation, or layouts other than NHWC input / HWIO
kernel / NHWC output (what `nn.Conv` uses). 'auto' leaves grouped convs plain 'xla'.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from cvjax import errors

IMPLS = ('auto', 'xla', 'im2col')
_DEFAULT: contextvars.ContextVar[str] = contextvars.ContextVar('cvjax_conv_impl', default='auto')
_GROUP = 16  # values per identity matmul in `_materialize`


@contextlib.contextmanager
def default_impl(impl: str) -> Iterator[None]:
  """Within the block, convs built by `cvjax.models.layers.conv` without an explicit
  `impl` use this one (benchmarks compare lowerings of a whole model this way).

  The choice is made when the model is traced: wrap the first call of a jitted
  function (its compilation), not later calls, which reuse the compiled program.
  """
  check_impl(impl)
  token = _DEFAULT.set(impl)
  try:
    yield
  finally:
    _DEFAULT.reset(token)


def check_impl(impl: str) -> str:
  if impl not in IMPLS:
    raise errors.UserError(f'unknown conv impl {impl!r}; choose one of {", ".join(IMPLS)}')
  return impl


def resolve(impl: str | None, kernel_size: Sequence[int], backend: str | None = None,
            groups: int = 1) -> str:
  """The plan for one conv: 'xla', 'im2col', or on the CPU under 'auto'
  'im2col+materialize' (1×1) / 'xla+materialize' (k×k, ungrouped; when called, a
  full-window or few-channel shape takes its matmul instead, see `_small_case`).

  impl None means the scoped default (`default_impl`, else 'auto').
  """
  impl = check_impl(_DEFAULT.get() if impl is None else impl)
  if impl != 'auto':
    return impl
  if (backend or jax.default_backend()) != 'cpu' or groups != 1:
    return 'xla'
  return ('im2col' if all(k == 1 for k in kernel_size) else 'xla') + '+materialize'


def lowering(impl: str | None, kernel_size: Sequence[int], backend: str | None = None,
             groups: int = 1) -> Callable[..., Any]:
  """A drop-in for `lax.conv_general_dilated` following `resolve`'s plan."""
  plan = resolve(impl, kernel_size, backend, groups)
  base = conv_im2col if plan.startswith('im2col') else lax.conv_general_dilated
  if not plan.endswith('+materialize'):
    return base
  if plan.startswith('im2col'):
    # 1×1: the output gradient too (its transposes fuse BatchNorm's backward).
    return functools.partial(_conv_materialized_backward, base, True)
  return _conv_auto_kxk


def _conv_auto_kxk(lhs, rhs, *args, **kwargs):
  """'auto' for an ungrouped k×k conv on the CPU; the shapes, known only now, pick how."""
  case = _small_case(lhs, rhs, *args, **kwargs)
  if case == 'full':
    return conv_im2col(lhs, rhs, *args, **kwargs)
  if case == 'band':
    return conv_band(lhs, rhs, *args, **kwargs)
  return _conv_materialized_backward(lax.conv_general_dilated, False, lhs, rhs, *args, **kwargs)


_BAND_MAX_CHANNELS = 8  # C_in up to which a k×k conv is a banded matmul ...
_BAND_MAX_WASTE = 8  # ... if its padded input width is at most this many kernel widths


def _small_case(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, batch_group_count=1, **_):
  """'full' when the window covers the whole padded input (the conv is a dense layer:
  `conv_im2col` multiplies the flattened input), 'band' for few input channels on a
  narrow input (`conv_band`), else None. NHWC/HWIO, ungrouped, undilated only."""
  if (lhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1
      or any(d != 1 for d in (lhs_dilation or (1, 1)))
      or any(d != 1 for d in (rhs_dilation or (1, 1)))
      or dimension_numbers is None
      or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != _NHWC):
    return None
  kh, kw, c, _ = rhs.shape
  pads = _window_pads(padding, lhs.shape[1:3], (kh, kw), window_strides)
  height, width = (lhs.shape[1 + a] + sum(pads[a]) for a in (0, 1))
  if (height, width) == (kh, kw):
    return 'full'
  if c <= _BAND_MAX_CHANNELS and width <= _BAND_MAX_WASTE * kw:
    return 'band'
  return None


def conv_band(lhs, rhs, window_strides, padding, precision=None, preferred_element_type=None,
              **_):
  """A conv as one matmul of input rows with a banded (Toeplitz) expansion of the kernel.

  lhs: [B, H, W, C] (NHWC); rhs: [kh, kw, C, O] (HWIO); returns [B, H', W', O].
  Undilated, ungrouped convs only (`_small_case` checks). With the input padded to
  [B, Hp, Wp, C]:

      rows  [B·H', kh·Wp·C]   the kh input rows under each output row, side by side
      band  [kh·Wp·C, W'·O]   band[i, v, c, u, o] = kernel[i, v − u·sw, c, o] (0 outside)
      out = rows @ band

  Plain autodiff then gives a weight gradient that is one large matmul
  (rowsᵀ @ dy, then a sum along the band's diagonals) and an input gradient that is
  dy @ bandᵀ plus kh shifted row adds. For LeNet-5's convs (C_in 1 and 6) XLA:CPU's
  own convolutions run these gradients at 4-10 GFLOP/s; the matmul runs near the
  matmul peak although it multiplies Wp/kw times more zeros than it needs — hence
  the limits `_BAND_MAX_CHANNELS` and `_BAND_MAX_WASTE`.
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


_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


def _window_pads(padding, size: Sequence[int], window: Sequence[int],
                 strides: Sequence[int]) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    return lax.padtype_to_pads(size, window, strides, padding)
  return [tuple(p) for p in padding]


def conv_im2col(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count: int = 1,
                batch_group_count: int = 1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` computed as x_col [B, H', W', kh·kw·C] @ kernel [kh·kw·C, O].

  lhs: [B, H, W, C] (NHWC); rhs: [kh, kw, C, O] (HWIO); returns [B, H', W', O].
  Unsupported cases (see the module docstring) go to `lax.conv_general_dilated`.
  """
  args = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
              dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
              batch_group_count=batch_group_count, precision=precision,
              preferred_element_type=preferred_element_type)
  fallback = functools.partial(lax.conv_general_dilated, lhs, rhs, window_strides, padding, **args)
  if lhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1:
    return fallback()
  if lhs_dilation is not None and any(d != 1 for d in lhs_dilation):
    return fallback()
  if dimension_numbers is None or (
      lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != _NHWC):
    return fallback()

  kh, kw, c, o = rhs.shape
  sh, sw = window_strides
  dh, dw = rhs_dilation or (1, 1)
  span = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)  # the dilated window
  pads = _window_pads(padding, lhs.shape[1:3], span, window_strides)
  if any(p != (0, 0) for p in pads):
    lhs = jnp.pad(lhs, [(0, 0), pads[0], pads[1], (0, 0)])
  b, h, w, _ = lhs.shape
  ho, wo = (h - span[0]) // sh + 1, (w - span[1]) // sw + 1

  def view(i: int, j: int):  # input pixels under kernel tap (i, j), for every output pixel
    start = (0, i * dh, j * dw, 0)
    return lax.slice(lhs, start, (b, start[1] + (ho - 1) * sh + 1, start[2] + (wo - 1) * sw + 1, c),
                     (1, sh, sw, 1))

  if kh == kw == 1:
    cols = view(0, 0)
  elif (ho, wo) == (1, 1) and span == (h, w) and (dh, dw) == (1, 1):
    cols = lhs.reshape(b, 1, 1, h * w * c)  # the window is the whole input: a dense layer
  else:  # (i, j, c) order along the last axis, as the HWIO kernel flattens
    cols = lax.concatenate([view(i, j) for i in range(kh) for j in range(kw)], 3)
  return lax.dot_general(cols, rhs.reshape(kh * kw * c, o), (((3,), (0,)), ((), ())),
                         precision=precision, preferred_element_type=preferred_element_type)
