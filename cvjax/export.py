"""Export a trained run's model for serving: TensorFlow SavedModel or StableHLO.

    python -m cvjax.export --workdir=W --format=savedmodel --out=DIR [--step=N]
    python -m cvjax.export --workdir=W --format=stablehlo  --out=DIR
        [--platforms=cpu,cuda]

The exported function is the restored run's eval forward pass,

    x float32[b, S, S, C] → float32[b, num_classes] class probabilities

(softmax of the logits; detection models return their raw outputs, e.g. SSD's
(locations f32[b, A, 4], logits f32[b, A, K+1]), before box decoding and NMS),
with the trained variables embedded and the batch size b symbolic (any b ≥ 1).
Its input is the model's input *after* preprocessing: uint8 images go through
`cvjax.data.preprocess_for_eval(images, dataset=..., image_size=S, channels=C,
preprocessing=...)` first (detection: `cvjax.visualize.preprocess`; the
arguments are in DIR/cvjax_export.json). On the same input a classifier's
export gives `cvjax.restore(W).predict(images)` up to float rounding.

Formats:
  savedmodel  `jax.experimental.jax2tf.convert` (native serialization, the only
              mode in jax ≥ 0.5: the StableHLO is embedded in an XlaCallModule
              op) wrapped in a `tf.function` with variables as `tf.Variable`s:
                m = tf.saved_model.load(DIR)
                m.signatures['serving_default'](x=x)['probabilities']  # or m.predict(x)
  stablehlo   `jax.export`: DIR/model.jax_export (`Exported.serialize()`),
              reload with
                exp = jax.export.deserialize(open(DIR + '/model.jax_export', 'rb').read())
                exp.call(x)
              and DIR/model.mlir, the StableHLO module as text (only for weights
              up to 64 MiB; else `exp.mlir_module()` gives it).

Lowered for `--platforms` (default: cpu and cuda, so the artifact runs on
either; XLA compiles it for the machine that loads it), with XLA's own
convolution (`conv_impl='xla'`), whatever the run trained with.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Sequence

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from cvjax import cli, errors
from cvjax.data import datasets
from cvjax.models import registry

FORMATS = ('savedmodel', 'stablehlo')
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
DEFAULT_PLATFORMS = ('cpu', 'cuda')
INFO_FILE = 'cvjax_export.json'
MLIR_TEXT_LIMIT = 64 * 2**20  # bytes of weights above which model.mlir is not written

FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', None, 'A training run directory.', flag_values=FLAGS)
flags.DEFINE_string('format', None, ' | '.join(FORMATS), flag_values=FLAGS)
flags.DEFINE_string('out', None, 'Output directory.', flag_values=FLAGS)
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest good one).',
                     flag_values=FLAGS)
flags.DEFINE_string('platforms', ','.join(DEFAULT_PLATFORMS),
                    'Comma-separated lowering platforms: ' + ', '.join(PLATFORMS),
                    flag_values=FLAGS)
flags.mark_flags_as_required(['workdir', 'format', 'out'], flag_values=FLAGS)


def serving_function(run) -> tuple[Callable, tuple[int, int, int], str]:
  """(f(variables, x), (S, S, C), output name) for a `cvjax.restore` result.

  f: x float32[b, S, S, C] → probabilities float32[b, K] for classification,
  the model's raw outputs otherwise. The model computes its convolutions with
  XLA's own op: the CPU lowerings a run may have trained with are for the CPU
  backend, the export is for any of its platforms.
  """
  h, _, c = registry.model_input_shape(run.config.model)
  s = run.config.image_size or h
  model = run.model
  if 'conv_impl' in getattr(model, '__dataclass_fields__', {}):  # a plain flax model has none
    model = model.clone(conv_impl='xla')
  if run.config.task == 'classification':
    def f(variables, x):
      return jax.nn.softmax(model.apply(variables, x, train=False))
    return f, (s, s, c), 'probabilities'

  def raw(variables, x):
    return model.apply(variables, x, train=False)
  return raw, (s, s, c), 'outputs'


def _preprocessing(run, s: int, c: int) -> dict[str, Any]:
  """How uint8 images become the exported function's input (`cvjax.visualize.preprocess`)."""
  if run.config.task == 'detection':
    return {'function': 'cvjax.visualize.preprocess',
            'description': f'RGB / 255, resized to {s}x{s} (bilinear, no antialiasing); '
                           'the model normalises it itself'}
  return {'function': 'cvjax.data.preprocess_for_eval', 'dataset': run.config.dataset,
          'image_size': s, 'channels': c, 'preprocessing': run.config.preprocessing}


def _check(fmt: str, platforms: Sequence[str]) -> None:
  if fmt not in FORMATS:
    raise errors.unknown_choice('format', fmt, FORMATS)
  for p in platforms:
    if p not in PLATFORMS:
      raise errors.unknown_choice('platform', p, PLATFORMS)
  if not platforms:
    raise errors.UserError('--platforms is empty; name at least one, e.g. cpu')


def export(workdir: str, fmt: str, out: str, *, step: int | None = None,
           platforms: Sequence[str] = DEFAULT_PLATFORMS) -> dict[str, Any]:
  """Exports run `workdir` (newest good checkpoint, or `step`) to directory `out`.

  Returns the export's description (also written to `out/cvjax_export.json`):
  format, files, input/output shapes and dtypes, the preprocessing arguments,
  class names, step and platforms.

  Raises:
    UserError: unknown format or platform, no run in `workdir`, `out` an
      existing file.
  """
  from cvjax import restoring  # loads JAX, Flax and orbax
  _check(fmt, platforms)
  if not os.path.isdir(workdir):
    raise errors.UserError(f'workdir {workdir} does not exist; give the directory of a '
                           'training run (it holds config.json and checkpoints/)')
  if os.path.exists(out) and not os.path.isdir(out):
    raise errors.UserError(f'--out={out} is a file; give a directory')
  run = restoring.restore(workdir, step)
  f, (s, _, c), output_name = serving_function(run)
  variables = jax.tree.map(jnp.asarray, run.variables)
  os.makedirs(out, exist_ok=True)

  files = _save(fmt, f, variables, (s, s, c), output_name, out, platforms)

  info = {
      'format': fmt,
      'files': files,
      'workdir': os.path.abspath(workdir),
      'step': run.step,
      'model': run.config.model,
      'task': run.config.task,
      'input': {'shape': ['b', s, s, c], 'dtype': 'float32',
                'preprocessing': _preprocessing(run, s, c)},
      'output': {'name': output_name,
                 'shape': ['b', len(run.class_names)] if run.class_names and
                          output_name == 'probabilities' else None,
                 'dtype': 'float32'},
      'class_names': list(run.class_names) if run.class_names else None,
      'platforms': list(platforms),
  }
  with open(os.path.join(out, INFO_FILE), 'w') as fh:
    json.dump(info, fh, indent=2)
  return info


def _save(fmt: str, f, variables, hwc, output_name: str, out: str,
          platforms: Sequence[str]) -> list[str]:
  """Writes `f(variables, x)` for x float32[b, *hwc] to `out` in `fmt`; returns the files."""
  s, _, c = hwc
  if fmt == 'stablehlo':
    (b,) = jax.export.symbolic_shape('b')
    exported = jax.export.export(jax.jit(lambda x: f(variables, x)),
                                 platforms=tuple(platforms))(
        jax.ShapeDtypeStruct((b, s, s, c), jnp.float32))
    with open(os.path.join(out, 'model.jax_export'), 'wb') as fh:
      fh.write(exported.serialize())
    files = ['model.jax_export']
    weight_bytes = sum(l.nbytes for l in jax.tree.leaves(variables))
    if weight_bytes <= MLIR_TEXT_LIMIT:  # the text spells every weight out in hex
      with open(os.path.join(out, 'model.mlir'), 'w') as fh:
        fh.write(exported.mlir_module())
      files.append('model.mlir')
  else:
    _save_savedmodel(f, variables, hwc, output_name, out, platforms)
    files = ['saved_model.pb', 'variables/']
  return files


def _save_savedmodel(f, variables, hwc, output_name: str, out: str,
                     platforms: Sequence[str]) -> None:
  """jax2tf (native serialization) → tf.function → SavedModel in `out`."""
  tf = datasets.tensorflow()  # hides accelerators from TF before its first op
  from jax.experimental import jax2tf  # loads TensorFlow

  leaves, treedef = jax.tree.flatten(variables)
  tf_vars = [tf.Variable(np.asarray(l), trainable=False) for l in leaves]
  converted = jax2tf.convert(
      lambda leaves, x: f(jax.tree.unflatten(treedef, leaves), x),
      polymorphic_shapes=[None, '(b, ...)'], with_gradient=False,
      native_serialization_platforms=tuple(platforms))

  module = tf.Module()
  module.variables_list = tf_vars

  @tf.function(autograph=False,
               input_signature=[tf.TensorSpec((None, *hwc), tf.float32, name='x')])
  def predict(x):
    return converted(module.variables_list, x)

  @tf.function(autograph=False,
               input_signature=[tf.TensorSpec((None, *hwc), tf.float32, name='x')])
  def serve(x):
    outputs = converted(module.variables_list, x)
    if isinstance(outputs, (list, tuple)):
      return {f'{output_name}_{i}': o for i, o in enumerate(outputs)}
    return {output_name: outputs}

  module.predict = predict
  tf.saved_model.save(module, out, signatures={'serving_default': serve})


def load(out: str) -> Callable[[np.ndarray], Any]:
  """Reloads an export directory; returns x float32[b, S, S, C] → outputs (numpy).

  Uses `tf.saved_model.load` or `jax.export.deserialize` per the export's
  `cvjax_export.json`, i.e. only the exported artifact, not the run. A directory that
  is not a readable export is a `UserError` naming the file at fault.
  """
  info_path = os.path.join(out, INFO_FILE)
  if not os.path.exists(info_path):
    raise errors.UserError(f'{out} has no {INFO_FILE}; is it a cvjax export?')
  info = cli.read_json(info_path, what=f'the {INFO_FILE} cvjax.export writes')
  if not isinstance(info, dict) or info.get('format') not in FORMATS:
    raise errors.UserError(f'{info_path}: expected an object whose "format" is one of '
                           f'{", ".join(FORMATS)}; is {out} a cvjax export?')
  if info['format'] == 'stablehlo':
    path = os.path.join(out, 'model.jax_export')
    if not os.path.isfile(path):
      raise errors.UserError(f'{out} has no model.jax_export; export the run again')
    with open(path, 'rb') as fh:
      serialized = bytearray(fh.read())
    try:
      exported = jax.export.deserialize(serialized)
    except Exception as e:  # pylint: disable=broad-except  # flatbuffers: any kind
      raise errors.UserError(f'{path} is not a serialized jax.export module '
                             f'({type(e).__name__}); export the run again') from None
    return lambda x: jax.tree.map(np.asarray, exported.call(np.asarray(x, np.float32)))
  if not os.path.isfile(os.path.join(out, 'saved_model.pb')):
    raise errors.UserError(f'{out} has no saved_model.pb; export the run again')
  tf = datasets.tensorflow()
  try:
    loaded = tf.saved_model.load(out)
  except Exception as e:  # pylint: disable=broad-except  # TensorFlow's errors: any kind
    raise errors.UserError(f'{out} is not a SavedModel TensorFlow can load '
                           f'({type(e).__name__}); export the run again') from None
  return lambda x: _numpy(loaded.predict(tf.constant(np.asarray(x, np.float32))))


def _numpy(outputs):
  if isinstance(outputs, (list, tuple)):
    return type(outputs)(o.numpy() for o in outputs)
  return outputs.numpy()


def run(f: flags.FlagValues) -> int:
  platforms = [p.strip() for p in f.platforms.split(',') if p.strip()]
  _check(f.format, platforms)
  info = export(f.workdir, f.format, f.out, step=f.step, platforms=platforms)
  print(f"exported {info['model']} (step {info['step']}) as {info['format']} to {f.out}: "
        f"input float32{info['input']['shape']} after "
        f"{info['input']['preprocessing']['function']} (see {os.path.join(f.out, INFO_FILE)})")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
