"""Per-layer forward (and backward) time of a model, measured on this backend.

    python -m cvjax.profile --model=alexnet --batch_size=8 [--image_size=227]
        [--backward] [--repeats=7] [--json] [--plot=alexnet_time.png]
        [--trace_dir=/tmp/trace] [--conv_impl=auto|xla]

How the per-layer times are obtained (also printed under the table):

1. The layer walk of `cvjax.summary` (`nn.intercept_methods` under
   `jax.eval_shape`) lists every leaf layer — Conv, Dense, BatchNorm, pools,
   LRN, Dropout — with its real input shape for this batch; an extra
   interceptor keeps each layer's module definition.
2. Each leaf layer is `jax.jit`-compiled **alone**, on a random input of its
   real input shape, with its own slice of freshly initialised parameters,
   and timed: `repeats` interleaved rounds (every layer once per round, so a
   burst of load from other processes hits all layers alike), each round
   running the layer `number` times back to back (chosen so one round lasts
   ≥ 2 ms) and blocking on the result; the median over rounds is reported in
   milliseconds per call (one call = the whole batch).
3. The whole model is compiled and timed the same way. `sum / whole` compares
   the sum of the layer times with it: activation functions, reshapes and
   padding are not modules (they are fused into neighbouring ops in the whole
   model, and missing from the sum), and XLA fuses across layer boundaries in
   the whole model, so the ratio is near, not at, 1.
4. With `--backward`, each layer's (and the model's) `jax.vjp` — forward,
   then gradients with respect to the input and the parameters for a random
   output cotangent — is compiled and timed the same way (`fwd+bwd ms`).
   XLA drops forward work the gradient does not need (a conv's gradient needs
   only its input and kernel), so `fwd+bwd` is not exactly forward + backward.
5. Beside the times, XLA's own cost analysis of each compiled layer
   (`compiled.cost_analysis()['flops']`, 2 per multiply-add, some backends skip
   padding zeros; a conv computed by oneDNN is a custom call XLA cannot count, so
   its 2 × MACs are added) and the MACs `cvjax.summary` counts. `GFLOP/s` is the useful
   work over the measured time: 2 × MACs for convs and dense layers (XLA's count
   of a conv computed as a banded matmul includes its multiplies by zero, see
   `cvjax.models.conv_lowering`), XLA's FLOPs for the rest. Compute-bound
   convs run far faster than memory-bound fully connected layers at small
   batch sizes.

The model's convolutions are computed as in training (`--conv_impl=auto`, the
default: oneDNN's kernels and the CPU's matmul lowerings on the CPU backend, XLA's
convolution elsewhere); `--conv_impl=xla` times XLA's convolution everywhere.

`--trace_dir` also records a `jax.profiler` trace of a few whole-model calls
(open it with Perfetto, https://ui.perfetto.dev, or TensorBoard's profile
plugin) for an op-by-op view of the fused program.

Times are wall-clock on a possibly shared machine: compare shares, not
absolute milliseconds, across machines.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Sequence

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cvjax import cli, errors
from cvjax import summary as cv_summary
from cvjax.models import registry

_MIN_ROUND_S = 2e-3   # one timed round runs a function at least this long
_TRACE_CALLS = 3      # whole-model calls recorded under --trace_dir

FLAGS = flags.FlagValues()
flags.DEFINE_string('model', None, 'A registered model, e.g. alexnet, resnet50 '
                    '(python -m cvjax.summary --help lists them).', flag_values=FLAGS)
flags.DEFINE_integer('image_size', None, "Pixels per side; default: the model's natural size.",
                     flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 1, 'Images per call; every time is for the whole batch.',
                     flag_values=FLAGS)
flags.DEFINE_integer('num_classes', None, "Outputs; default: the model's dataset's.",
                     flag_values=FLAGS)
flags.DEFINE_string('dtype', 'float32', 'Computation dtype, e.g. float32, bfloat16.',
                    flag_values=FLAGS)
flags.DEFINE_bool('backward', False, "Also time each layer's forward+backward (jax.vjp).",
                  flag_values=FLAGS)
flags.DEFINE_integer('repeats', 7, 'Timed rounds (median).', flag_values=FLAGS)
flags.DEFINE_bool('json', False, 'Print one JSON object.', flag_values=FLAGS)
flags.DEFINE_string('plot', None, 'Write a bar chart PNG here.', flag_values=FLAGS)
flags.DEFINE_string('trace_dir', None, 'Write a jax.profiler trace of whole-model calls here.',
                    flag_values=FLAGS)
flags.DEFINE_string('conv_impl', 'auto', "How convolutions are computed: auto (training's "
                    "default: the CPU's matmul lowerings on the CPU backend) or xla.",
                    flag_values=FLAGS)
flags.mark_flag_as_required('model', flag_values=FLAGS)

# Layer types grouped for shares: flax class name → group; other names by substring.
GROUPS = {'LRN': 'norm', 'Dropout': 'other'}
_BY_SUBSTRING = (('Conv', 'conv'), ('Dense', 'dense'), ('Pool', 'pool'), ('Norm', 'norm'))


def layer_group(layer_type: str) -> str:
  """'conv', 'dense', 'pool', 'norm' or 'other' for a module class name.

  Conv, DepthwiseConv, ConvTranspose → conv; Dense, DenseGeneral → dense;
  MaxPool, AvgPool, GlobalAvgPool, MaxPoolCeil, ... → pool; BatchNorm,
  LayerNorm, GroupNorm, LRN → norm; anything else (Dropout, ...) → other.
  """
  if layer_type in GROUPS:
    return GROUPS[layer_type]
  return next((g for sub, g in _BY_SUBSTRING if sub in layer_type), 'other')


def _subtree(tree, path):
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


class _Timer:
  """Interleaved median timing of several compiled functions (see module doc)."""

  def __init__(self):
    self.fns: list[tuple[Callable, tuple, int]] = []
    self.samples: list[list[float]] = []

  def add(self, fn: Callable, args: tuple) -> int:
    """Registers `fn(*args)`, already compiled; runs it once to calibrate."""
    jax.block_until_ready(fn(*args))  # warm-up (allocations, caches)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    one = max(time.perf_counter() - t0, 1e-7)
    number = max(1, math.ceil(_MIN_ROUND_S / one))
    self.fns.append((fn, args, number))
    self.samples.append([])
    return len(self.fns) - 1

  def run(self, rounds: int) -> None:
    for _ in range(rounds):
      for i, (fn, args, number) in enumerate(self.fns):
        t0 = time.perf_counter()
        for _ in range(number):
          out = fn(*args)
        jax.block_until_ready(out)
        self.samples[i].append((time.perf_counter() - t0) / number)

  def median_ms(self, i: int) -> float:
    return 1e3 * statistics.median(self.samples[i])


def _layer_flops(compiled, macs: int) -> float | None:
  """XLA's FLOPs of one compiled layer, plus 2 × MACs where oneDNN computes its conv (a
  custom call, which XLA's cost analysis counts as nothing)."""
  flops = _xla_flops(compiled)
  if 'cvjax_onednn_conv_forward' in compiled.as_text():
    flops = (flops or 0.0) + 2.0 * macs
  return flops


def _xla_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = (cost or {}).get('flops')
  return float(flops) if flops is not None and flops >= 0 else None


def _random_like(key, tree):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  return treedef.unflatten([jax.random.normal(k, l.shape, l.dtype)
                            for k, l in zip(keys, leaves)])


def profile(name: str, *, image_size: int | None = None, batch_size: int = 1,
            num_classes: int | None = None, dtype: str = 'float32',
            backward: bool = False, repeats: int = 7,
            trace_dir: str | None = None, conv_impl: str = 'auto') -> dict[str, Any]:
  """Measures model `name`'s per-layer and whole-model time (see module doc).

  Args:
    name: a registered model (`cvjax.models.list_models(None)`).
    image_size: input height = width in pixels; default: the model's natural size.
    batch_size: images per call B; every time is for the whole batch.
    num_classes: outputs; default: the model's dataset's.
    dtype: computation dtype, e.g. 'float32', 'bfloat16'.
    backward: also time each layer's and the model's `jax.vjp`.
    repeats: timed rounds; the median is reported.
    trace_dir: if set, a `jax.profiler` trace of whole-model calls is written here.
    conv_impl: 'auto' (as training computes convolutions) or 'xla'
      (`cvjax.models.CONV_IMPLS`).

  Returns:
    A JSON-able dict: model, backend, device, input_shape [B, H, W, C], dtype,
    repeats, method (how times were obtained), layers (one dict per leaf
    layer in execution order: name, type, group, input_shape, output_shape,
    macs, xla_flops, forward_ms, forward_share, gflops_per_s and with
    `backward` forward_backward_ms, forward_backward_share), whole_model
    {forward_ms, xla_flops, forward_backward_ms?}, sum_of_layers
    {forward_ms, forward_backward_ms?}, sum_over_whole {forward, ...},
    groups {group: {forward_ms, forward_share, ...}} and conv_share (the
    convs' share of the summed forward time, 0..1). Shares are fractions of
    the sum of the per-layer times.

  Raises:
    UserError: unknown model, dtype or conv_impl, sizes below 1, an input too
      small for the model.
  """
  for flag, value in [('batch_size', batch_size), ('repeats', repeats)]:
    if value < 1:
      raise errors.UserError(f'{flag} must be a positive integer, got {value}')
  if image_size is not None and image_size < 1:
    raise errors.UserError(f'image_size must be a positive integer, got {image_size}')
  h, w, c = registry.model_input_shape(name)
  if image_size is not None:
    h = w = image_size
  num_classes = registry.model_num_classes(name) if num_classes is None else num_classes
  model = registry.get_model(name, num_classes, dtype=dtype, conv_impl=conv_impl)
  input_shape = (batch_size, h, w, c)

  # 1. The summary's layer walk, with the module definitions kept on the side.
  modules: dict[tuple[str, ...], tuple[nn.Module, dict, Any]] = {}  # module, kwargs, x dtype

  def keep(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and tuple(context.module.path) not in modules:
      m = context.module
      if (len(args) == 1 and hasattr(args[0], 'dtype')
          and not any(isinstance(v, jax.Array) for v in kwargs.values())):
        modules[tuple(m.path)] = (m.clone(parent=None, name=None), dict(kwargs), args[0].dtype)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(keep):
    walk = cv_summary.summarize(model, input_shape)

  key_init, key_x, key_rest = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(key_x, input_shape, jnp.float32)
  variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(key_init)

  timer = _Timer()
  layers = []
  for i, layer in enumerate(walk['layers']):
    path = tuple(layer['name'].split('/'))
    if path not in modules:
      raise errors.UserError(f'layer {layer["name"]} ({layer["type"]}) of {name} takes more '
                             'than one array, so it cannot be timed alone')
    module, kwargs, x_dtype = modules[path]
    own = {col: sub for col, tree in variables.items()
           if (sub := _subtree(tree, path)) is not None}
    lx = _random_like(jax.random.fold_in(key_rest, i),
                      jax.ShapeDtypeStruct(tuple(layer['input_shape']), x_dtype))

    def fwd(v, y, module=module, kwargs=kwargs):
      return module.apply(v, y, **kwargs)

    compiled = jax.jit(fwd).lower(own, lx).compile()
    entry = {'name': layer['name'], 'type': layer['type'], 'group': layer_group(layer['type']),
             'input_shape': layer['input_shape'], 'output_shape': layer['output_shape'],
             'macs': layer['macs'], 'xla_flops': _layer_flops(compiled, layer['macs']),
             '_fwd': timer.add(compiled, (own, lx))}
    if backward:
      out = jax.eval_shape(fwd, own, lx)
      ct = _random_like(jax.random.fold_in(key_rest, 10_000 + i), out)

      def fwd_bwd(v, y, ct, fwd=fwd):
        return jax.vjp(fwd, v, y)[1](ct)

      entry['_bwd'] = timer.add(jax.jit(fwd_bwd).lower(own, lx, ct).compile(), (own, lx, ct))
    layers.append(entry)

  def whole(v, y):
    return model.apply(v, y, train=False)

  whole_c = jax.jit(whole).lower(variables, x).compile()
  whole_fwd = timer.add(whole_c, (variables, x))
  whole_bwd = None
  if backward:
    ct = _random_like(jax.random.fold_in(key_rest, 99_999), jax.eval_shape(whole, variables, x))
    whole_bwd = timer.add(
        jax.jit(lambda v, y, ct: jax.vjp(whole, v, y)[1](ct)).lower(variables, x, ct).compile(),
        (variables, x, ct))

  # 2-4. Interleaved timed rounds.
  timer.run(repeats)
  if trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(_TRACE_CALLS):
        jax.block_until_ready(whole_c(variables, x))

  for l in layers:
    l['forward_ms'] = timer.median_ms(l.pop('_fwd'))
    work = 2 * l['macs'] or l['xla_flops']
    l['gflops_per_s'] = work / l['forward_ms'] / 1e6 if work and l['forward_ms'] > 0 else None
    if backward:
      l['forward_backward_ms'] = timer.median_ms(l.pop('_bwd'))

  kinds = ['forward'] + (['forward_backward'] if backward else [])
  sums = {k: sum(l[f'{k}_ms'] for l in layers) for k in kinds}
  for l in layers:
    for k in kinds:
      l[f'{k}_share'] = l[f'{k}_ms'] / sums[k] if sums[k] else 0.0
  groups: dict[str, dict[str, float]] = {}
  for l in layers:
    g = groups.setdefault(l['group'], {'layers': 0, 'macs': 0,
                                       **{f'{k}_ms': 0.0 for k in kinds}})
    g['layers'] += 1
    g['macs'] += l['macs']
    for k in kinds:
      g[f'{k}_ms'] += l[f'{k}_ms']
  for g in groups.values():
    for k in kinds:
      g[f'{k}_share'] = g[f'{k}_ms'] / sums[k] if sums[k] else 0.0

  whole_model = {'forward_ms': timer.median_ms(whole_fwd),
                 'xla_flops': _layer_flops(whole_c, groups.get('conv', {}).get('macs', 0))}
  if backward:
    whole_model['forward_backward_ms'] = timer.median_ms(whole_bwd)
  device = jax.devices()[0]
  return {
      'model': name,
      'backend': jax.default_backend(),
      'device': getattr(device, 'device_kind', str(device)),
      'input_shape': list(input_shape),
      'num_classes': num_classes,
      'dtype': jnp.dtype(model.dtype).name,
      'repeats': repeats,
      'conv_impl': conv_impl,
      'method': METHOD,
      'layers': layers,
      'whole_model': whole_model,
      'sum_of_layers': {f'{k}_ms': v for k, v in sums.items()},
      'sum_over_whole': {k: sums[k] / whole_model[f'{k}_ms'] for k in kinds},
      'groups': groups,
      'conv_share': groups.get('conv', {}).get('forward_share', 0.0),
      'trace_dir': trace_dir,
  }


METHOD = ('each leaf layer jax.jit-compiled alone on a random input of its real shape and '
          'timed: median over interleaved rounds of back-to-back calls (>= 2 ms per round); '
          'the whole model timed the same way; shares are fractions of the sum of the '
          'per-layer times; XLA FLOPs from compiled.cost_analysis(); fwd+bwd = one jitted '
          'jax.vjp (gradients w.r.t. input and parameters)')


def format_table(p: dict[str, Any]) -> str:
  """The profile as a fixed-width table, then totals, shares and the method."""
  backward = 'forward_backward' in p['sum_over_whole']

  def num(v, fmt):
    return '-' if v is None else format(v, fmt)

  head = ['layer', 'type', 'output', 'MACs', 'XLA GFLOP', 'fwd ms', 'fwd %', 'GFLOP/s']
  if backward:
    head += ['fwd+bwd ms', 'f+b %']
  rows = []
  for l in p['layers']:
    out = l['output_shape']
    out = '×'.join(map(str, out[1:])) if out and isinstance(out[0], int) else str(out)
    row = [l['name'], l['type'], out, f"{l['macs']:,}",
           num(l['xla_flops'] and l['xla_flops'] / 1e9, '.3f'),
           f"{l['forward_ms']:.3f}", f"{100 * l['forward_share']:.1f}",
           num(l['gflops_per_s'], '.1f')]
    if backward:
      row += [f"{l['forward_backward_ms']:.3f}", f"{100 * l['forward_backward_share']:.1f}"]
    rows.append(row)
  widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
  fmt = '  '.join(f'{{:{"<" if i < 3 else ">"}{wd}}}' for i, wd in enumerate(widths))
  b, h, w, c = p['input_shape']
  lines = [f"{p['model']}: input {h}×{w}×{c}, batch {b}, {p['dtype']}, on {p['backend']} "
           f"({p['device']}), median of {p['repeats']} rounds", fmt.format(*head)]
  lines += [fmt.format(*r) for r in rows]
  whole, sums = p['whole_model'], p['sum_of_layers']
  lines.append(f"sum of layers  fwd {sums['forward_ms']:.3f} ms"
               + (f", fwd+bwd {sums['forward_backward_ms']:.3f} ms" if backward else ''))
  lines.append(f"whole model    fwd {whole['forward_ms']:.3f} ms"
               + (f", fwd+bwd {whole['forward_backward_ms']:.3f} ms" if backward else '')
               + f"  (sum / whole: fwd {p['sum_over_whole']['forward']:.2f}"
               + (f", fwd+bwd {p['sum_over_whole']['forward_backward']:.2f}" if backward else '')
               + ')')
  shares = ', '.join(
      f"{g} {100 * v['forward_share']:.1f}%"
      + (f" (fwd+bwd {100 * v['forward_backward_share']:.1f}%)" if backward else '')
      for g, v in sorted(p['groups'].items(), key=lambda kv: -kv[1]['forward_ms']))
  lines.append(f'time share by layer type: {shares}')
  lines.append(f"convolutions take {100 * p['conv_share']:.1f}% of the measured forward time")
  lines.append(f"method: {p['method']}")
  if p.get('trace_dir'):
    lines.append(f"jax.profiler trace of {_TRACE_CALLS} whole-model calls in {p['trace_dir']}")
  return '\n'.join(lines)


_COLORS = {'conv': '#1f77b4', 'dense': '#ff7f0e', 'pool': '#2ca02c', 'norm': '#9467bd',
           'other': '#7f7f7f'}


def plot(p: dict[str, Any], path: str, *, dpi: int = 100):
  """Writes a horizontal bar chart of per-layer times to `path` (PNG); returns the Figure.

  One bar per layer (forward ms; with a backward profile, fwd+bwd ms beside it),
  coloured by layer type; the title gives the conv share.
  """
  from matplotlib.figure import Figure
  from matplotlib.patches import Patch

  layers = p['layers']
  backward = 'forward_backward' in p['sum_over_whole']
  n = len(layers)
  fig = Figure(figsize=(8, max(3.0, 0.3 * n + 1.5)), dpi=dpi)
  ax = fig.subplots()
  y = np.arange(n)
  colors = [_COLORS[l['group']] for l in layers]
  height = 0.4 if backward else 0.8
  ax.barh(y - (height / 2 if backward else 0), [l['forward_ms'] for l in layers], height,
          color=colors)
  if backward:
    ax.barh(y + height / 2, [l['forward_backward_ms'] for l in layers], height,
            color=colors, alpha=0.45, hatch='//')
  for i, l in enumerate(layers):
    if l['forward_share'] >= 0.01:
      ax.text(l['forward_ms'], i - (height / 2 if backward else 0),
              f" {100 * l['forward_share']:.0f}%", va='center', fontsize=8)
  ax.set_yticks(y, [l['name'] for l in layers])
  ax.invert_yaxis()
  ax.set_xlabel('milliseconds per call (median)'
                + ('; hatched: forward+backward' if backward else ''))
  b, h, w, c = p['input_shape']
  conv = p['groups'].get('conv', {})
  ax.set_title(f"{p['model']} {h}×{w}×{c}, batch {b} on {p['backend']}: convolutions "
               f"{100 * p['conv_share']:.0f}% of forward time"
               + (f", {100 * conv.get('forward_backward_share', 0):.0f}% of fwd+bwd"
                  if backward else ''), fontsize=10)
  used = sorted({l['group'] for l in layers}, key=list(_COLORS).index)
  ax.legend(handles=[Patch(color=_COLORS[g], label=g) for g in used], loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  return fig


def run(f: flags.FlagValues) -> int:
  if f.plot:
    parent = os.path.dirname(os.path.abspath(f.plot))
    if not os.path.isdir(parent):
      raise errors.UserError(f'--plot={f.plot}: directory {parent} does not exist')
  p = profile(f.model, image_size=f.image_size, batch_size=f.batch_size,
              num_classes=f.num_classes, dtype=f.dtype, backward=f.backward,
              repeats=f.repeats, trace_dir=f.trace_dir, conv_impl=f.conv_impl)
  if f.plot:
    plot(p, f.plot)
  print(json.dumps(p) if f.json else format_table(p))
  if f.plot and not f.json:
    print(f'bar chart: {f.plot}')
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
