"""Per-layer output shapes, parameters, multiply-adds and activation memory.

    python -m cvjax.summary --model=resnet50 [--num_classes=1000]
        [--image_size=224] [--batch_size=1] [--dtype=float32] [--json]
        [--backward_memory]

The model is traced, never run: `jax.eval_shape` of `model.init` under
`nn.intercept_methods` records every module call's input and output shapes,
so resnet152 at 224² costs a second of Python and no FLOPs.

Counting conventions (torchvision's published "GFLOPS", which are MACs):
  conv   MACs = H_out · W_out · C_out · k_h · k_w · C_in / groups  (per example)
  dense  MACs = in · out
  pools, BatchNorm, LRN, dropout, activations, biases, residual adds: 0.
`nn.tabulate` gives shapes and parameters, but its FLOPs come from XLA's cost
analysis, which counts 2 per MAC, skips products with padding zeros (−7% on
ResNet-18) and adds elementwise ops; hence MACs are counted here.
Per-layer numbers are for the whole batch: `macs` is batch_size ×
`macs_per_example`.

activation_bytes: the sum over leaf layers (Conv, Dense, BatchNorm, pools,
LRN, Dropout) of their output's size × itemsize for the batch, i.e. what a
forward pass materialises if every layer's output is kept for the backward
pass. Activation functions are plain functions, fused by XLA, and not counted.

--backward_memory measures what one training-mode gradient keeps,
with and, for models that have it, without `remat`, two ways:
  saved activations: the residuals JAX's autodiff stores between the forward and
    the backward pass (traced, no FLOPs; params and the input are not counted).
    This is what remat cuts: only each block's input is kept, its inside is
    recomputed in the backward pass.
  XLA temp buffers: `memory_analysis().temp_size_in_bytes` of the compiled
    gradient on this backend (seconds to compile); XLA schedules and reuses
    buffers itself, so it can differ from the residuals, in either direction.
"""
import functools
import json
import math
import sys
from typing import Any, Sequence

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

from cvjax import cli, errors, models
from cvjax.models import layers as cv_layers

FLAGS = flags.FlagValues()
flags.DEFINE_string('model', None, 'One of: ' + ', '.join(models.list_models(None)),
                    flag_values=FLAGS)
flags.DEFINE_integer('num_classes', None, 'Default: 10 for lenet5 and the CIFAR nets, else 1000.',
                     flag_values=FLAGS)
flags.DEFINE_integer('image_size', None, "Pixels per side; default: the model's natural size.",
                     flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 1, 'Examples per batch.', flag_values=FLAGS)
flags.DEFINE_string('dtype', 'float32', 'Computation dtype, e.g. float32, bfloat16.',
                    flag_values=FLAGS)
flags.DEFINE_bool('json', False, 'Print one JSON object.', flag_values=FLAGS)
flags.DEFINE_bool('backward_memory', False, 'Also measure the activation memory of a training '
                  'gradient, with and without remat (compiles the gradient: seconds to a '
                  'minute).', flag_values=FLAGS)
flags.mark_flag_as_required('model', flag_values=FLAGS)


def _shape(x) -> list[int] | None:
  return list(x.shape) if hasattr(x, 'shape') else None


def _window(module: nn.Module) -> dict[str, Any]:
  """kernel / stride / padding of a conv or pool, as [h, w] and [[lo, hi], [lo, hi]]."""
  if isinstance(module, nn.Conv):
    strides = module.strides or 1
    strides = [strides] * 2 if isinstance(strides, int) else list(strides)
    pad = module.padding
    if not isinstance(pad, str):
      pad = [list(p) if isinstance(p, Sequence) else [p, p] for p in pad]
    return {'kernel': list(module.kernel_size), 'stride': strides, 'padding': pad}
  if isinstance(module, (cv_layers.MaxPool, cv_layers.AvgPool)):
    s = module.stride or module.window
    p = module.padding
    return {'kernel': [module.window] * 2, 'stride': [s, s],
            'padding': [[p, p], [p, p]]}
  return {}


def _subtree(tree, path):
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return {}
    tree = tree[key]
  return tree


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _nbytes(tree) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def summarize(model: nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
  """Traces `model` on x float32[input_shape] (B, H, W, C) and counts.

  Returns a dict with total_params, total_batch_stats, param_bytes, macs,
  macs_per_example, flops (= 2·macs), activation_bytes (all for the batch)
  and layers: one dict per leaf module call, in execution order, with name
  ('/'-joined path), type, input_shape, output_shape, params, macs,
  activation_bytes, and for convs and pools kernel, stride, padding.

  Raises:
    UserError: the input is too small (some layer's output is empty).
  """
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__':
      m = context.module
      for leaf in jax.tree.leaves(out):
        if 0 in leaf.shape:  # a window larger than its (padded) input
          raise errors.UserError(
              f'input {"×".join(map(str, input_shape[1:]))} is too small for '
              f'this model: layer {"/".join(m.path)} ({type(m).__name__}) '
              f'gives an empty output of shape {tuple(leaf.shape)}')
      calls.append({
          'path': tuple(m.path), 'module': m, 'type': type(m).__name__,
          'input_shape': _shape(args[0]) if args else None,
          'out': jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), out),
          **_window(m)})
    return out

  def init(x):
    with nn.intercept_methods(record):
      return model.init(jax.random.key(0), x, train=False)

  variables = jax.eval_shape(init, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  params = variables.get('params', {})

  paths = [c['path'] for c in calls]
  layers = []
  for c in calls:
    p = c['path']
    if any(len(q) > len(p) and q[:len(p)] == p for q in paths):
      continue  # a container (block, the model itself): its leaves are listed
    own = _subtree(params, p)
    macs = 0
    if isinstance(c['module'], (nn.Conv, nn.Dense)):
      out = c['out']
      macs = math.prod(own['kernel'].shape) * math.prod(out.shape) // out.shape[-1]
    out_leaves = jax.tree.leaves(c['out'])
    layer = {
        'name': '/'.join(p), 'type': c['type'],
        'input_shape': c['input_shape'],
        'output_shape': list(out_leaves[0].shape) if len(out_leaves) == 1 else
                        [list(o.shape) for o in out_leaves],
        'params': _count(own), 'macs': int(macs),
        'activation_bytes': _nbytes(c['out'])}
    layer.update({k: c[k] for k in ('kernel', 'stride', 'padding') if k in c})
    layers.append(layer)

  batch = int(input_shape[0])
  macs = sum(l['macs'] for l in layers)
  return {
      'input_shape': list(input_shape),
      'batch_size': batch,
      'total_params': _count(params),
      'total_batch_stats': _count(variables.get('batch_stats', {})),
      'param_bytes': _nbytes(params),
      'macs': macs,
      'macs_per_example': macs // batch,
      'flops': 2 * macs,
      'activation_bytes': sum(l['activation_bytes'] for l in layers),
      'layers': layers,
  }


def summary(name: str, num_classes: int | None = None,
            image_size: int | None = None, batch_size: int = 1,
            dtype: str = 'float32') -> dict[str, Any]:
  """`summarize` for a registered model at its natural size unless told.

  num_classes defaults to the model's dataset (10 for lenet5 and the CIFAR
  nets, else 1000); image_size (pixels, square) to `model_input_shape`.

  Raises:
    UserError: unknown model or dtype, a size below 1, or an image too
      small for the model (some layer's output would be empty).
  """
  h, w, c = models.model_input_shape(name)
  num_classes = models.model_num_classes(name) if num_classes is None else num_classes
  if image_size is not None:
    h = w = image_size
  for flag, value in [('num_classes', num_classes), ('image_size', h),
                      ('batch_size', batch_size)]:
    if value < 1:
      raise errors.UserError(f'{flag} must be a positive integer, got {value}')
  model = models.get_model(name, num_classes, dtype=dtype)
  result = summarize(model, (batch_size, h, w, c))
  return {'model': name, 'num_classes': num_classes,
          'dtype': jnp.dtype(model.dtype).name, **result}


def _gradient_of(model: nn.Module):
  """(params, batch_stats, x) → d sum(logits) / d params, BatchNorm in training mode."""
  def loss(params, batch_stats, x):
    variables = {'params': params, **({'batch_stats': batch_stats} if batch_stats else {})}
    out = model.apply(variables, x, train=True, mutable=['batch_stats'] if batch_stats else False,
                      rngs={'dropout': jax.random.key(0)})
    out = out[0] if batch_stats else out
    return sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree.leaves(out))
  return loss


def _saved_activation_bytes(loss, params, batch_stats, x) -> int:
  """Bytes of the residuals `jax.vjp` of `loss` w.r.t. params keeps, arguments excluded.

  The same count as `jax.ad_checkpoint.print_saved_residuals`, summed: the vjp's
  residuals are outputs of a traced jaxpr; those that are its inputs (params,
  statistics, the image) are not activations.
  """
  def residuals(params, batch_stats, x):
    _, pullback = jax.vjp(functools.partial(loss, batch_stats=batch_stats, x=x), params)
    return jax.tree.leaves(pullback)

  jaxpr = jax.make_jaxpr(residuals)(params, batch_stats, x).jaxpr
  inputs = set(jaxpr.invars)
  kept = {v for v in jaxpr.outvars if not hasattr(v, 'val') and v not in inputs}
  return sum(math.prod(v.aval.shape) * jnp.dtype(v.aval.dtype).itemsize for v in kept)


def backward_memory(name: str, num_classes: int | None = None, image_size: int | None = None,
                    batch_size: int = 1, dtype: str = 'float32',
                    compiled: bool = True) -> dict[str, Any]:
  """Activation memory of one training-mode gradient of model `name`.

  Returns {'saved_bytes', 'xla_temp_bytes', 'backend', 'remat': bool} and, when
  the model has remat, 'saved_bytes_remat' and 'xla_temp_bytes_remat' (bytes
  for the batch; see the module docstring for what each measures). With
  compiled=False the XLA numbers are None (no compilation).
  """
  h, w, c = models.model_input_shape(name)
  num_classes = models.model_num_classes(name) if num_classes is None else num_classes
  h = w = image_size or h
  x = jax.ShapeDtypeStruct((batch_size, h, w, c), jnp.float32)
  out = {'backend': jax.default_backend()}
  plain = models.get_model(name, num_classes, dtype=dtype)
  variants = [('', plain)]
  out['remat'] = models.model_info(name).supports_remat
  if out['remat']:
    variants.append(('_remat', models.get_model(name, num_classes, dtype=dtype, remat=True)))
  for suffix, model in variants:
    variables = jax.eval_shape(functools.partial(model.init, train=False),
                               jax.random.key(0), x)
    params, stats = variables['params'], variables.get('batch_stats', {})
    loss = _gradient_of(model)
    out[f'saved_bytes{suffix}'] = _saved_activation_bytes(loss, params, stats, x)
    out[f'xla_temp_bytes{suffix}'] = (
        jax.jit(jax.grad(loss)).lower(params, stats, x).compile()
        .memory_analysis().temp_size_in_bytes if compiled else None)
  return out


def format_backward_memory(m: dict[str, Any], batch_size: int) -> str:
  """Two lines: saved activations and XLA temp buffers, without and with remat."""
  def row(label, key):
    text = f'{label:<36}{_mib(m[key]):>14}' if m[key] is not None else f'{label:<36}{"-":>14}'
    if m['remat'] and m.get(f'{key}_remat') is not None:
      text += f'   with remat {_mib(m[key + "_remat"]):>12}'
    return text
  lines = [f'backward pass (one training-mode gradient, batch {batch_size})'
           + ('' if m['remat'] else ', no remat option for this model') + ':',
           row('  saved activations (autodiff)', 'saved_bytes'),
           row(f'  XLA temp buffers ({m["backend"]}, compiled)', 'xla_temp_bytes')]
  return '\n'.join(lines)


def _si(n: float) -> str:
  for unit, scale in [('G', 1e9), ('M', 1e6), ('K', 1e3)]:
    if n >= scale:
      return f'{n / scale:.2f} {unit}'
  return f'{n:.0f} '


def _mib(n: int) -> str:
  return f'{n / 2**20:.2f} MiB'


def format_table(s: dict[str, Any]) -> str:
  """The summary as a fixed-width table (shapes per example, H×W×C)."""
  def per_example(shape):
    return '×'.join(map(str, shape[1:])) if shape and isinstance(shape[0], int) else str(shape)

  def window(l):  # '3×3 s2 p1'; uneven or string paddings written out
    if 'kernel' not in l:
      return ''
    (kh, kw), (sh, sw), pad = l['kernel'], l['stride'], l['padding']
    stride = f's{sh}' if sh == sw else f's{sh},{sw}'
    if not isinstance(pad, str):
      sides = {lo for lo, _ in pad} | {hi for _, hi in pad}
      pad = f'p{pad[0][0]}' if len(sides) == 1 else f'p{pad}'
    return f'{kh}×{kw} {stride} {pad}'

  b, h, w, c = s['input_shape']
  rows = [(l['name'], l['type'], window(l), per_example(l['output_shape']),
           f"{l['params']:,}", f"{l['macs']:,}", f"{l['activation_bytes']:,}")
          for l in s['layers']]
  head = ('layer', 'type', 'k s p', 'output', 'params', 'MACs', 'act. bytes')
  widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
  fmt = '  '.join(f'{{:{"<" if i < 4 else ">"}{wd}}}' for i, wd in enumerate(widths))
  lines = [f"{s['model']}: input {h}×{w}×{c}, batch {b}, {s['dtype']}, "
           f"{s['num_classes']} classes", fmt.format(*head)]
  lines += [fmt.format(*r) for r in rows]
  lines += [
      f"params      {s['total_params']:,} ({_mib(s['param_bytes'])})"
      + (f" + {s['total_batch_stats']:,} BatchNorm statistics" if s['total_batch_stats'] else ''),
      f"MACs        {s['macs']:,} ({_si(s['macs'])}MACs, {_si(s['flops'])}FLOPs)",
      f"activations {s['activation_bytes']:,} bytes ({_mib(s['activation_bytes'])}) for the batch"]
  return '\n'.join(lines)


def run(f: flags.FlagValues) -> int:
  s = summary(f.model, f.num_classes, f.image_size, f.batch_size, f.dtype)
  if f.backward_memory:
    s['backward_memory'] = backward_memory(f.model, f.num_classes, f.image_size, f.batch_size,
                                           f.dtype)
  if f.json:
    print(json.dumps(s))
  else:
    print(format_table(s))
    if f.backward_memory:
      print(format_backward_memory(s['backward_memory'], f.batch_size))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
