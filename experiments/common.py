"""Flags shared by every experiment, and the wrapper that runs one.

An experiment program is `common.main()`; everything else lives in the library
(`cvjax.tasks.fit`). The flags are generated from `cvjax.train.TrainConfig`'s fields and
their help (one flag per field, same name, same default), so a new config field is a new
flag with nothing written here. An experiment's settings live in one place, its flagfile
in experiments/configs/ (first line: the command that runs it; then the result to expect);
a setting that neither the flagfile nor the command line gives is TrainConfig's default.
A program may name a default flagfile, read when the command line names none: the
default run `python -m experiments.lenet` is experiments/configs/lenet_fashion_mnist.flags.

Bad input (unknown model/dataset/op, impossible batch size, missing files, a flag
that does not parse) ends with one `error: ...` line on stderr and exit status 2, no
traceback. `--helpshort` lists the experiment's flags.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import types
import typing

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow only reads data here

from absl import app, flags, logging  # noqa: E402

from cvjax import allocator, cli, signals  # noqa: E402
from cvjax.errors import CheckpointWriteError, Preempted, UserError  # noqa: E402

FLAGS = flags.FLAGS
# The experiments' flagfiles, one per recipe.
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')


def _train_config():
  """TrainConfig, imported on first use: it brings JAX, which takes seconds, and the stop
  signals are handled from before that (see `main`)."""
  from cvjax.train.config import TrainConfig  # pylint: disable=g-import-not-at-top
  return TrainConfig


def _main_module() -> str:
  """The module name absl files `--helpshort` flags under: the program being run."""
  return sys.argv[0] if sys.argv and sys.argv[0] else 'experiments'


def _flag_kind(name: str) -> type:
  """The flag type of TrainConfig field `name`: int for 'int | None', dict for
  'dict[str, Any]', tuple for 'tuple[float, ...]', ..."""
  hint = typing.get_type_hints(_train_config())[name]
  args = typing.get_args(hint)
  if isinstance(hint, types.UnionType) and type(None) in args:
    hint = next(a for a in args if a is not type(None))
  return typing.get_origin(hint) or hint


def define_config_flags(module_name: str | None = None,
                        flag_values: flags.FlagValues = FLAGS) -> None:
  """One absl flag per TrainConfig field: same name, the field's default and help."""
  module_name = module_name or _main_module()
  config_class = _train_config()
  base = config_class()
  for field in dataclasses.fields(config_class):
    kind = _flag_kind(field.name)
    default = getattr(base, field.name)
    helptext = field.metadata.get('help', '')
    choices = field.metadata.get('choices')
    common = dict(flag_values=flag_values, module_name=module_name)
    if kind is dict:
      flags.DEFINE_string(field.name, '', helptext, **common)
    elif kind is tuple:
      flags.DEFINE_list(field.name, [str(v) for v in default], helptext, **common)
    elif kind is bool:
      flags.DEFINE_bool(field.name, default, helptext, **common)
    elif kind is int:
      flags.DEFINE_integer(field.name, default, helptext, **common)
    elif kind is float:
      flags.DEFINE_float(field.name, default, helptext, **common)
    elif choices and not field.metadata.get('empty_is_none'):
      flags.DEFINE_enum(field.name, default, choices, helptext, **common)
    else:
      if choices:
        helptext += f' One of: {", ".join(choices)}.'
      flags.DEFINE_string(field.name, default, helptext, **common)


def define_run_flags(module_name: str | None = None,
                     flag_values: flags.FlagValues = FLAGS) -> None:
  """The flags of a run that are not TrainConfig fields: --workdir, --set_aside, ..."""
  common = dict(flag_values=flag_values, module_name=module_name or _main_module())
  flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<model>_<dataset>). '
                      'A workdir with checkpoints is resumed.', **common)
  flags.DEFINE_bool('set_aside', False, 'If --workdir holds a different run, move it to '
                    '<workdir>.old-<time> and start this one (nothing is deleted).', **common)
  flags.DEFINE_bool('reevaluate', False, 'Evaluate a finished run again and rewrite its '
                    'results.json (a finished run otherwise just reports its results).', **common)
  flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of process 0.',
                      **common)
  flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.', **common)
  flags.DEFINE_integer('process_id', None, "Multi-process: this process's index.", **common)


def config_from_flags(flag_values: flags.FlagValues = FLAGS):
  """The TrainConfig the parsed flags describe."""
  from cvjax.train.config import parse_kwargs  # pylint: disable=g-import-not-at-top
  config_class = _train_config()
  values = {}
  for field in dataclasses.fields(config_class):
    kind = _flag_kind(field.name)
    value = flag_values[field.name].value
    if kind is dict:
      value = parse_kwargs(value or '')
    elif kind is tuple:
      try:
        value = tuple(float(v) for v in value)
      except ValueError:
        raise UserError(f'--{field.name} must be numbers, got {value}') from None
    elif field.metadata.get('empty_is_none') and value == '':
      value = None
    values[field.name] = value
  return config_class(**values)


class _QuietLibraries:
  """Drops INFO records of orbax and TFDS (dozens per checkpoint), and orbax's ERROR
  records: a checkpoint write the filesystem refuses is logged by orbax as several
  tracebacks, and reported by cvjax as one `error:` line (CheckpointWriteError)."""
  noisy = ('/orbax/', '/tensorflow_datasets/', '/etils/')

  def filter(self, record) -> bool:
    if '/orbax/' in record.pathname:
      return record.levelno == logging.WARNING
    return record.levelno > logging.INFO or not any(n in record.pathname for n in self.noisy)


def _train(argv, run, stop: signals.StopRequest) -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())
  cli.check_no_positional(argv)
  from cvjax.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  # JAX, TensorFlow and the tasks are imported only once the flags are good.
  from cvjax import tasks  # pylint: disable=g-import-not-at-top
  config = config_from_flags()
  workdir = FLAGS.workdir or os.path.join('runs', f'{config.model}_{config.dataset}')
  logging.info('workdir %s', workdir)
  if run is None:
    results = tasks.fit(config, workdir, set_aside=FLAGS.set_aside, reevaluate=FLAGS.reevaluate,
                        stop=stop)
  else:  # a multi-phase recipe (experiments.transfer)
    results = run(config, workdir)
  # Every task's test metrics (classification: test_accuracy, test_loss first).
  keys = sorted((k for k, v in results.items() if k.startswith('test_') and k != 'test_examples'
                 and isinstance(v, float)), key=lambda k: (k not in ('test_accuracy', 'test_loss'), k))
  print(' '.join(f'{k}={results[k]:.4f}' for k in keys) + f' steps={results["step"]} '
        f'train_seconds={results["train_seconds"]:.0f} -> {workdir}')


def _exit_at_once(status: int = 130) -> None:
  """Ends the program without unwinding: a second Ctrl-C, or orbax's threads still waiting
  for a checkpoint write that failed. Checkpoints already complete are kept."""
  if status == 130:
    print('interrupted at once; nothing more was saved (checkpoints already written are '
          'kept; re-run to resume from the newest)', file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


def _skip_closed_loop_errors(hook):
  """sys.unraisablehook without the "Event loop is closed" RuntimeErrors that tensorstore
  reports when the writes of a checkpoint that failed complete into the event loop orbax
  has already closed (dozens of tracebacks); the failure itself is one `error:` line."""
  def unraisablehook(unraisable):
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == 'Event loop is closed':
      return
    hook(unraisable)
  return unraisablehook


def _main(argv, run, stop: signals.StopRequest) -> None:
  sys.unraisablehook = _skip_closed_loop_errors(sys.unraisablehook)
  try:
    stop.check('before training started: nothing was written')
    _train(argv, run, stop)
  except CheckpointWriteError as e:
    cli.fail(str(e))
    _exit_at_once(cli.USAGE_ERROR)
  except UserError as e:
    sys.exit(cli.fail(str(e)))
  except Preempted as e:  # SIGTERM (143) or a first Ctrl-C (130)
    print(f'{"interrupted" if e.exit_status == 130 else "preempted"}: {e}', file=sys.stderr)
    sys.exit(e.exit_status)
  except KeyboardInterrupt:  # a Ctrl-C outside the handlers (`fit` of a multi-phase recipe)
    print('interrupted; nothing more was saved (checkpoints already written are kept; '
          're-run to resume from the newest)', file=sys.stderr)
    sys.exit(130)


def with_default_flagfile(argv: list[str], default_flagfile: str | None) -> list[str]:
  """`argv` (program name first) with `--flagfile=<experiments/configs/default_flagfile>`
  read first when `argv` names no flagfile of its own: a flagfile is a whole recipe, so one
  given replaces the default; the command line's other flags override either."""
  if default_flagfile is None or cli.flagfiles(argv[1:]):
    return list(argv)
  return [argv[0], f'--flagfile={os.path.join(CONFIGS, default_flagfile)}', *argv[1:]]


def main(run=None, default_flagfile: str | None = None) -> None:
  """Defines the shared flags (TrainConfig's defaults), then runs the experiment that the
  command line describes.

  run: `run(config, workdir) -> results` in place of one `fit` (e.g. the two phases of
  experiments.transfer); its results need test_accuracy, test_loss, step, train_seconds.
  default_flagfile: a file in experiments/configs/ read when the command line names no
  --flagfile (`with_default_flagfile`).

  First the program restarts itself with a caching memory allocator where one is installed
  (`cvjax.allocator`; `CVJAX_ALLOCATOR=system` keeps glibc's). SIGTERM and Ctrl-C are
  recorded from then on, before JAX is imported: the run stops at its next safe point
  (Preempted / Interrupted), a second Ctrl-C ends it at once.
  """
  allocator.reexec_with_caching_allocator()
  with signals.stop_signals(on_second_interrupt=_exit_at_once) as stop:
    module_name = _main_module()
    define_config_flags(module_name)
    define_run_flags(module_name)
    app.run(functools.partial(_main, run=run, stop=stop),
            argv=with_default_flagfile(sys.argv, default_flagfile),
            flags_parser=cli.absl_flags_parser)
