"""Flags shared by every experiment, and the wrapper that runs one.

An experiment module is a dict of defaults plus `common.main(DEFAULTS)`; everything
else lives in the library (`cvjax.tasks.fit`). The flags are generated from
`cvjax.train.TrainConfig`'s fields and their help (one flag per field, same name), so
a new config field is a new flag with nothing written here.

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

from cvjax import cli  # noqa: E402
from cvjax.errors import Preempted, UserError  # noqa: E402
from cvjax.train.config import TrainConfig, parse_kwargs  # noqa: E402

FLAGS = flags.FLAGS


def _main_module() -> str:
  """The module name absl files `--helpshort` flags under: the program being run."""
  return sys.argv[0] if sys.argv and sys.argv[0] else 'experiments'


def _flag_kind(name: str) -> type:
  """The flag type of TrainConfig field `name`: int for 'int | None', dict for
  'dict[str, Any]', tuple for 'tuple[float, ...]', ..."""
  hint = typing.get_type_hints(TrainConfig)[name]
  args = typing.get_args(hint)
  if isinstance(hint, types.UnionType) and type(None) in args:
    hint = next(a for a in args if a is not type(None))
  return typing.get_origin(hint) or hint


def define_config_flags(module_name: str | None = None,
                        flag_values: flags.FlagValues = FLAGS) -> None:
  """One absl flag per TrainConfig field: same name, the field's default and help."""
  module_name = module_name or _main_module()
  base = TrainConfig()
  for field in dataclasses.fields(TrainConfig):
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


def _define_run_flags(module_name: str) -> None:
  common = dict(flag_values=FLAGS, module_name=module_name)
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


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> TrainConfig:
  """The TrainConfig the parsed flags describe."""
  values = {}
  for field in dataclasses.fields(TrainConfig):
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
  return TrainConfig(**values)


class _QuietLibraries:
  """Drops INFO records of orbax and TFDS (dozens per checkpoint); keeps warnings."""
  noisy = ('/orbax/', '/tensorflow_datasets/', '/etils/')

  def filter(self, record) -> bool:
    return record.levelno > 20 or not any(n in record.pathname for n in self.noisy)


def _train(argv, run=None) -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())
  cli.check_no_positional(argv)
  from cvjax.train import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  # JAX, TensorFlow and the tasks are imported only once the flags are good.
  from cvjax import tasks  # pylint: disable=g-import-not-at-top
  config = _drop_inapplicable_defaults(config_from_flags())
  workdir = FLAGS.workdir or os.path.join('runs', f'{config.model}_{config.dataset}')
  logging.info('workdir %s', workdir)
  if run is None:
    results = tasks.fit(config, workdir, set_aside=FLAGS.set_aside, reevaluate=FLAGS.reevaluate)
  else:  # a multi-phase recipe (experiments.transfer)
    results = run(config, workdir)
  # Every task's test metrics (classification: test_accuracy, test_loss first).
  keys = sorted((k for k, v in results.items() if k.startswith('test_') and k != 'test_examples'
                 and isinstance(v, float)), key=lambda k: (k not in ('test_accuracy', 'test_loss'), k))
  print(' '.join(f'{k}={results[k]:.4f}' for k in keys) + f' steps={results["step"]} '
        f'train_seconds={results["train_seconds"]:.0f} -> {workdir}')


def _drop_inapplicable_defaults(config: TrainConfig) -> TrainConfig:
  """The experiment's default model_kwargs without the options `config.model` lacks
  (`experiments.lenet --model=resnet20` keeps LeNet's activation/pooling defaults out);
  options typed on the command line are kept and checked by the model."""
  if not FLAGS['model_kwargs'].using_default_value or not config.model_kwargs:
    return config
  from cvjax import models  # pylint: disable=g-import-not-at-top
  options = set(models.model_options(config.model))
  dropped = sorted(set(config.model_kwargs) - options)
  if dropped:
    logging.info('note: this experiment\'s default model_kwargs %s do not apply to %s; '
                 'dropped', ', '.join(dropped), config.model)
  return config.replace(model_kwargs={k: v for k, v in config.model_kwargs.items()
                                      if k in options})


def _main(argv, run=None) -> None:
  try:
    _train(argv, run)
  except UserError as e:
    sys.exit(cli.fail(str(e)))
  except Preempted as e:  # SIGTERM (143) or a first Ctrl-C (130): a checkpoint was written
    print(f'{"interrupted" if e.exit_status == 130 else "preempted"}: {e}', file=sys.stderr)
    sys.exit(e.exit_status)
  except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
    print('interrupted; nothing more was saved (checkpoints already written are kept; '
          're-run to resume from the newest)', file=sys.stderr)
    sys.exit(130)


def main(defaults: dict, run=None) -> None:
  """Defines the shared flags with this experiment's `defaults`, then runs it.

  run: `run(config, workdir) -> results` in place of one `fit` (e.g. the two phases of
  experiments.transfer); its results need test_accuracy, test_loss, step, train_seconds.
  """
  module_name = _main_module()
  define_config_flags(module_name)
  _define_run_flags(module_name)
  for name, value in defaults.items():
    FLAGS.set_default(name, value)
  app.run(functools.partial(_main, run=run), flags_parser=cli.absl_flags_parser)
