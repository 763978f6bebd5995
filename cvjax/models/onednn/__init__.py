"""2-D convolutions computed by oneDNN, as XLA FFI custom calls (CPU only).

`conv_general_dilated` is a drop-in for `lax.conv_general_dilated`: for the
convolutions it takes — 2-D, NHWC/HWIO, float32, any strides, explicit
non-negative padding, kernel dilation, feature groups including depthwise — the
forward pass, the input gradient and the kernel gradient are each one custom
call into oneDNN (`conv.cc`), tied together with `jax.custom_vjp`; anything else
(other layouts or dtypes, input dilation, batch groups, negative padding) goes to
`lax.conv_general_dilated` unchanged.

The library is compiled at set-up (`python -m cvjax.models.onednn.build`, which
`make setup` runs). `available()` loads it on first use and registers its
handlers; when it is missing or fails to load, it says so in one warning and
returns False, and callers compute with XLA (`conv_lowering.resolve`).

Threads: oneDNN here runs on GNU OpenMP (Debian's build). A custom call runs
on the XLA thread that reaches it and opens an OpenMP team of `OMP_NUM_THREADS`
(default: one per core) around it, so each conv uses every core, as XLA's own ops
do; the two pools take turns, since XLA:CPU runs a training step's ops in order.
"""
from __future__ import annotations

import ctypes
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_TARGETS = {'forward': 'CvjaxOnednnConvForward',
            'backward_data': 'CvjaxOnednnConvBackwardData',
            'backward_weights': 'CvjaxOnednnConvBackwardWeights'}
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


def _target(kind: str) -> str:
  return f'cvjax_onednn_conv_{kind}'


_registered: list[ctypes.CDLL] = []  # the library whose handlers XLA holds (one per process)


@functools.lru_cache(maxsize=None)
def available() -> bool:
  """Whether oneDNN's convolutions are built and registered with XLA (on first call).

  When not, one warning says why and how to build them; callers fall back to XLA.
  XLA keeps the first handlers registered for the life of the process, so a library
  rebuilt meanwhile takes effect in the next process.
  """
  if _registered:
    return True
  from cvjax.models.onednn import build
  path = build.library_path()
  why = None
  if not path.exists():
    why = 'they are not built'
  else:
    try:
      library = ctypes.CDLL(str(path))
    except OSError as err:
      why = f'{path.name} does not load ({err})'
  if why:
    warnings.warn(f'oneDNN convolutions unavailable: {why}; XLA computes the convolutions '
                  '(build them with: python -m cvjax.models.onednn.build)', stacklevel=2)
    return False
  for kind, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(_target(kind), jax.ffi.pycapsule(getattr(library, symbol)),
                                platform='cpu')
  _registered.append(library)
  return True


def version() -> str | None:
  """The oneDNN version the library was built against ('2.6.3'), or None if unavailable."""
  if not available():
    return None
  v = _registered[0].cvjax_onednn_version()
  return f'{v // 10000}.{v // 100 % 100}.{v % 100}'


def _pads(padding, size, window, strides, dilation) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    effective = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    return [tuple(p) for p in lax.padtype_to_pads(size, effective, strides, padding)]
  return [tuple(int(v) for v in p) for p in padding]


def supports(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
             precision=None, preferred_element_type=None) -> bool:
  """Whether oneDNN computes this `lax.conv_general_dilated` call (see module docstring)."""
  del precision
  if lhs.ndim != 4 or rhs.ndim != 4 or dimension_numbers is None:
    return False
  if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != _NHWC:
    return False
  if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
    return False
  if preferred_element_type not in (None, jnp.float32):
    return False
  if batch_group_count != 1 or any(d != 1 for d in (lhs_dilation or (1, 1))):
    return False
  dilation = tuple(rhs_dilation or (1, 1))
  pads = _pads(padding, lhs.shape[1:3], rhs.shape[:2], window_strides, dilation)
  return all(p >= 0 for pair in pads for p in pair) and available()


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, computed by oneDNN where `supports` says so.

  lhs: [B, H, W, C] float32 (NHWC); rhs: [kh, kw, C/groups, O] (HWIO);
  returns [B, H', W', O]. Other calls go to `lax.conv_general_dilated`.
  """
  args = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
              dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
              batch_group_count=batch_group_count, precision=precision,
              preferred_element_type=preferred_element_type)
  if not supports(lhs, rhs, window_strides, padding, **args):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **args)
  dilation = tuple(int(d) for d in (rhs_dilation or (1, 1)))
  pads = _pads(padding, lhs.shape[1:3], rhs.shape[:2], window_strides, dilation)
  geometry = (*(int(s) for s in window_strides), *pads[0], *pads[1], *dilation,
              int(feature_group_count))
  return _conv(geometry, lhs, rhs)


def _output_shape(geometry, x_shape, w_shape) -> tuple[int, int, int, int]:
  sh, sw, pt, pb, pl, pr, dh, dw, _ = geometry
  kh, kw, _, o = w_shape
  b, h, w, _ = x_shape
  return (b, (h + pt + pb - (kh - 1) * dh - 1) // sh + 1,
          (w + pl + pr - (kw - 1) * dw - 1) // sw + 1, o)


def _call(kind: str, shape, a, b, geometry):
  out = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.ffi.ffi_call(_target(kind), out, vmap_method='sequential')(
      a, b, geometry=np.asarray(geometry, np.int64))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv(geometry, x, w):
  return _call('forward', _output_shape(geometry, x.shape, w.shape), x, w, geometry)


def _conv_fwd(geometry, x, w):
  return _conv(geometry, x, w), (x, w)


def _conv_bwd(geometry, residuals, dy):
  x, w = residuals
  dx = _call('backward_data', x.shape, dy, w, geometry)
  dw = _call('backward_weights', w.shape, x, dy, geometry)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)
