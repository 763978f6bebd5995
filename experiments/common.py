"""Flags shared by every experiment, and the wrapper that runs one.

An experiment module is a dict of defaults plus `common.main(DEFAULTS)`;
everything else lives in the library (`cvjax.train.fit`). Flags mirror
`cvjax.train.TrainConfig` field for field.

Bad input (unknown model/dataset/op, impossible batch size, missing files)
ends with one `error: ...` line on stderr and exit status 2, no traceback.
"""
from __future__ import annotations

import functools
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow only reads data here

from absl import app, flags, logging  # noqa: E402

from cvjax.errors import Preempted, UserError  # noqa: E402
from cvjax.train.config import (OPTIMIZERS, PREPROCESSINGS, SCHEDULES, TrainConfig,  # noqa: E402
                                parse_kwargs)

FLAGS = flags.FLAGS
_BASE = TrainConfig()


def _define_flags() -> None:
  f = flags
  f.DEFINE_string('workdir', None, 'Run directory (default: runs/<model>_<dataset>). '
                  'A workdir with checkpoints is resumed.')
  f.DEFINE_string('task', _BASE.task, 'classification (more tasks register themselves).')
  f.DEFINE_string('model', _BASE.model, 'Model name; `python -m cvjax.summary --help` lists them.')
  f.DEFINE_string('model_kwargs', '', 'Extra model arguments, e.g. "activation=relu,pooling=max".')
  f.DEFINE_string('dataset', _BASE.dataset, 'TFDS dataset name (mnist, fashion_mnist, cifar10, '
                  'cifar100, tf_flowers, imagenet2012).')
  f.DEFINE_integer('image_size', None, 'Model input size; default: the model\'s natural size.')
  f.DEFINE_string('augment', None, 'Train augmentation ops, e.g. "pad_crop(4)|flip_lr"; '
                  'default: the dataset\'s; "" for none.')
  f.DEFINE_string('eval_split', _BASE.eval_split, 'Split evaluated during training.')
  f.DEFINE_string('data_dir', None, 'TFDS data_dir (default: TFDS\'s).')
  f.DEFINE_string('raw_data_dir', None, 'Directory with a dataset\'s original raw files, used to '
                  'build the TFDS dataset offline.')
  f.DEFINE_integer('batch_size', _BASE.batch_size, 'Global batch size (all devices).')
  f.DEFINE_integer('eval_batch_size', None, 'Global eval batch size (default: batch_size).')
  f.DEFINE_float('num_epochs', _BASE.num_epochs, 'Training length in epochs.')
  f.DEFINE_integer('num_train_steps', None, 'Training length in steps; overrides num_epochs.')
  f.DEFINE_enum('optimizer', _BASE.optimizer, OPTIMIZERS, 'Optimizer.')
  f.DEFINE_float('learning_rate', _BASE.learning_rate, 'Peak learning rate.')
  f.DEFINE_float('momentum', _BASE.momentum, 'Momentum for momentum/nesterov.')
  f.DEFINE_enum('schedule', _BASE.schedule, SCHEDULES, 'Learning-rate schedule.')
  f.DEFINE_float('warmup_epochs', _BASE.warmup_epochs, 'Linear warmup length in epochs.')
  f.DEFINE_list('decay_epochs', [], 'Epochs at which the step schedule decays.')
  f.DEFINE_float('decay_factor', _BASE.decay_factor, 'Step schedule multiplier.')
  f.DEFINE_float('weight_decay', _BASE.weight_decay, 'L2 weight decay on kernels.')
  f.DEFINE_float('label_smoothing', _BASE.label_smoothing, 'Label smoothing.')
  f.DEFINE_float('grad_clip_norm', None, 'Clip gradients to this global norm.')
  f.DEFINE_integer('seed', _BASE.seed, 'Seed for init, data order, augmentation and dropout.')
  f.DEFINE_integer('log_every_steps', _BASE.log_every_steps, 'Training metrics interval.')
  f.DEFINE_integer('eval_every_steps', None, 'Evaluation interval (default: each epoch).')
  f.DEFINE_integer('checkpoint_every_steps', None, 'Checkpoint interval (default: each epoch).')
  f.DEFINE_integer('keep_checkpoints', _BASE.keep_checkpoints, 'Newest checkpoints kept '
                   '(the best one is kept too).')
  f.DEFINE_integer('early_stopping_patience', None, 'Stop after this many evaluations '
                   'without improvement.')
  f.DEFINE_string('early_stopping_metric', None, 'Eval metric watched by early stopping '
                  '(default: the task\'s main metric, e.g. accuracy; "loss" is minimised).')
  f.DEFINE_integer('num_devices', None, 'Use only the first N devices (default: all).')
  # Transfer learning and imported weights (issue 5; see cvjax.transfer).
  f.DEFINE_string('init_from', None, 'Workdir (e.g. from `python -m cvjax.convert`) whose '
                  'params/BN statistics with matching path and shape start a fresh run.')
  f.DEFINE_string('init_exclude', None, 'Not taken from --init_from: "head" or a regex on '
                  'param paths (re-initialised instead).')
  f.DEFINE_string('freeze', '', 'Frozen params: all_but_head, all_but_top:N (top N stages '
                  'train), or a regex on param paths such as "^(conv1|bn1|layer1)".')
  f.DEFINE_string('preprocessing', '', 'Input convention of imported weights: '
                  f'{", ".join(PREPROCESSINGS)} (caffe: Keras VGG/ResNet; torch: torchvision); '
                  '"" (default): the dataset\'s mean/std.')
  # Mixed precision and memory (issue 6).
  f.DEFINE_string('half_precision', None, 'Compute in bf16 or fp16 (params, optimizer state, '
                  'BN statistics, logits and loss stay float32; fp16 adds dynamic loss '
                  'scaling). Default: float32.')
  f.DEFINE_integer('grad_accum_steps', _BASE.grad_accum_steps, 'Average the gradients of K '
                   'micro-batches of --batch_size per optimizer step (effective batch '
                   'batch_size × K; steps, epochs and schedules count optimizer steps).')
  f.DEFINE_bool('remat', _BASE.remat, 'Recompute residual blocks in the backward pass: less '
                'activation memory, ~1/3 more compute (ResNet family).')
  f.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of process 0.')
  f.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.')
  f.DEFINE_integer('process_id', None, 'Multi-process: this process\'s index.')


def config_from_flags() -> TrainConfig:
  """The TrainConfig the parsed flags describe."""
  try:
    decay_epochs = tuple(float(e) for e in FLAGS.decay_epochs)
  except ValueError:
    raise UserError(f'--decay_epochs must be numbers, got {FLAGS.decay_epochs}') from None
  return TrainConfig(
      task=FLAGS.task, model=FLAGS.model, model_kwargs=parse_kwargs(FLAGS.model_kwargs), dataset=FLAGS.dataset,
      image_size=FLAGS.image_size, augment=FLAGS.augment, eval_split=FLAGS.eval_split,
      data_dir=FLAGS.data_dir, raw_data_dir=FLAGS.raw_data_dir, batch_size=FLAGS.batch_size,
      eval_batch_size=FLAGS.eval_batch_size, num_epochs=FLAGS.num_epochs,
      num_train_steps=FLAGS.num_train_steps, optimizer=FLAGS.optimizer,
      learning_rate=FLAGS.learning_rate, momentum=FLAGS.momentum, schedule=FLAGS.schedule,
      warmup_epochs=FLAGS.warmup_epochs, decay_epochs=decay_epochs,
      decay_factor=FLAGS.decay_factor, weight_decay=FLAGS.weight_decay,
      label_smoothing=FLAGS.label_smoothing, grad_clip_norm=FLAGS.grad_clip_norm,
      seed=FLAGS.seed, log_every_steps=FLAGS.log_every_steps,
      eval_every_steps=FLAGS.eval_every_steps,
      checkpoint_every_steps=FLAGS.checkpoint_every_steps,
      keep_checkpoints=FLAGS.keep_checkpoints,
      early_stopping_patience=FLAGS.early_stopping_patience,
      early_stopping_metric=FLAGS.early_stopping_metric, num_devices=FLAGS.num_devices,
      init_from=FLAGS.init_from, init_exclude=FLAGS.init_exclude, freeze=FLAGS.freeze,
      preprocessing=FLAGS.preprocessing or None,  # issue 5
      half_precision=FLAGS.half_precision or None, grad_accum_steps=FLAGS.grad_accum_steps,
      remat=FLAGS.remat)  # issue 6


class _QuietLibraries:
  """Drops INFO records of orbax and TFDS (dozens per checkpoint); keeps warnings."""
  noisy = ('/orbax/', '/tensorflow_datasets/', '/etils/')

  def filter(self, record) -> bool:
    return record.levelno > 20 or not any(n in record.pathname for n in self.noisy)


def _train(argv, run=None) -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise UserError(f'unexpected arguments {argv[1:]}; flags look like --name=value')
  from cvjax.train import distributed
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from cvjax.train import fit  # imports JAX/TF only once the flags are good
  config = config_from_flags()
  workdir = FLAGS.workdir or os.path.join('runs', f'{config.model}_{config.dataset}')
  logging.info('workdir %s', workdir)
  results = (run or fit)(config, workdir)  # run: issue 5's multi-phase experiments
  # Issue 4: every task's test metrics (classification: test_accuracy, test_loss first).
  keys = sorted((k for k, v in results.items() if k.startswith('test_') and k != 'test_examples'
                 and isinstance(v, float)), key=lambda k: (k not in ('test_accuracy', 'test_loss'), k))
  print(' '.join(f'{k}={results[k]:.4f}' for k in keys) + f' steps={results["step"]} '
        f'train_seconds={results["train_seconds"]:.0f} -> {workdir}')


def _main(argv, run=None) -> None:
  try:
    _train(argv, run)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except Preempted as e:
    print(f'preempted: {e}', file=sys.stderr)
    sys.exit(143)
  except KeyboardInterrupt:
    print('interrupted; the newest checkpoint is kept, re-run to resume', file=sys.stderr)
    sys.exit(130)


def main(defaults: dict, run=None) -> None:
  """Defines the shared flags with this experiment's `defaults`, then runs it.

  run: `run(config, workdir) -> results` in place of one `fit` (e.g. the two phases of
  experiments.transfer); its results need test_accuracy, test_loss, step, train_seconds.
  """
  _define_flags()
  for name, value in defaults.items():
    FLAGS.set_default(name, value)
  app.run(functools.partial(_main, run=run))
