"""The one configuration object every experiment fills in, and the one place its fields are described.

`TrainConfig` is plain data: experiments build it from flags, `fit` reads it,
and it is written to `<workdir>/config.json` so a run documents itself and
`cvjax.restore(workdir)` can rebuild the model without flags. Each field's help
text lives here (`field(..., help=...)`); `experiments.common` generates one
command-line flag per field from it, so adding a setting is one line plus its doc.

Fields marked `resumable` may change when a run is resumed (they lengthen it or
change its bookkeeping); any other difference means a different experiment.
"""
from __future__ import annotations

import ast
import dataclasses
import json
from typing import Any

from cvjax.errors import UserError, unknown_choice
from cvjax.models import CONV_IMPLS
from cvjax.train import freeze as freezing

OPTIMIZERS = ('sgd', 'momentum', 'nesterov', 'adam', 'adamw')
SCHEDULES = ('constant', 'step', 'cosine')
# Input conventions of imported weights (op strings in cvjax.data.pipeline): 'caffe' Keras
# VGG/ResNet (BGR, 0-255, minus ImageNet means), 'torch' torchvision (ImageNet mean/std),
# 'tf' Keras MobileNet/Inception (scaled to [-1, 1]).
PREPROCESSINGS = ('caffe', 'torch', 'tf')
# Compute dtype of --half_precision (params, optimizer state and BN statistics stay float32).
HALF_PRECISIONS = {'bf16': 'bfloat16', 'fp16': 'float16'}


def field(default: Any = dataclasses.MISSING, *, help: str, choices=None,  # pylint: disable=redefined-builtin
          resumable: bool = False, empty_is_none: bool = False, default_factory=None):
  """A TrainConfig field with its flag help (and, optionally, the values a flag accepts)."""
  metadata = {'help': help, 'choices': choices, 'resumable': resumable,
              'empty_is_none': empty_is_none}
  if default_factory is not None:
    return dataclasses.field(default_factory=default_factory, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that determines a training run.

  Sizes are global (summed over all devices and processes). Step counts are
  optimizer steps. `None` means "derive a default", as documented per field.
  With `grad_accum_steps` K > 1, `batch_size` is the micro-batch of one
  forward/backward pass and each optimizer step sees batch_size × K examples
  (torch/timm's convention); epochs, schedules and every `*_steps` count
  optimizer steps.
  """
  # What to train on what.
  task: str = field('classification', help='What is learned: classification, detection, '
                    'segmentation, localization or features (cvjax.tasks).')
  model: str = field('lenet5', help='Registered model name (cvjax.models.list_models()).')
  model_kwargs: dict[str, Any] = field(
      default_factory=dict, help='Extra model arguments, e.g. "activation=relu,pooling=max".')
  dataset: str = field('fashion_mnist', help='TFDS dataset name (mnist, fashion_mnist, cifar10, '
                       'cifar100, tf_flowers, imagenet2012, voc2007, cvjax_shapes, ...).')
  image_size: int | None = field(None, help="Model input size; default: the model's natural size.")
  augment: str | None = field(None, help='Train augmentation ops, e.g. "pad_crop(4)|flip_lr"; '
                              'default: the dataset\'s; "" for none.')
  eval_split: str = field('test', help='Split evaluated during training.', resumable=True)
  data_dir: str | None = field(None, help="TFDS data_dir (default: TFDS's).", resumable=True)
  raw_data_dir: str | None = field(None, help="Directory with a dataset's original raw files, "
                                   'used to build the TFDS dataset offline.', resumable=True)

  # How long.
  batch_size: int = field(128, help='Global batch size (all devices).')
  eval_batch_size: int | None = field(None, help='Global eval batch size (default: batch_size).',
                                      resumable=True)
  num_epochs: float | None = field(10.0, help='Training length in epochs.', resumable=True)
  num_train_steps: int | None = field(None, help='Training length in optimizer steps; overrides '
                                      'num_epochs.', resumable=True)

  # Optimisation.
  optimizer: str = field('momentum', help='Optimizer.', choices=OPTIMIZERS)
  learning_rate: float = field(0.1, help='Peak learning rate.')
  momentum: float = field(0.9, help='Momentum for momentum/nesterov.')
  schedule: str = field('cosine', help='Learning-rate schedule.', choices=SCHEDULES)
  warmup_epochs: float = field(0.0, help='Linear warmup length in epochs.')
  decay_epochs: tuple[float, ...] = field((), help="Epochs at which the 'step' schedule "
                                          'multiplies the learning rate by decay_factor.')
  decay_factor: float = field(0.1, help="'step' schedule multiplier.")
  weight_decay: float = field(0.0, help='L2 weight decay on kernels (coupled for sgd/adam, '
                              'decoupled for adamw).')
  label_smoothing: float = field(0.0, help='Label smoothing.')
  grad_clip_norm: float | None = field(None, help='Clip gradients to this global norm.')

  # Bookkeeping.
  seed: int = field(0, help='Seed for init, data order, augmentation and dropout.')
  log_every_steps: int = field(100, help='Training metrics interval.', resumable=True)
  eval_every_steps: int | None = field(None, help='Evaluation interval (default: each epoch).',
                                       resumable=True)
  checkpoint_every_steps: int | None = field(None, help='Checkpoint interval (default: each '
                                             'epoch).', resumable=True)
  keep_checkpoints: int = field(3, help='Newest checkpoints kept (the best one is kept too).',
                                resumable=True)
  early_stopping_patience: int | None = field(None, help='Stop after this many evaluations '
                                              'without improvement.', resumable=True)
  early_stopping_metric: str | None = field(None, help='Eval metric watched by early stopping '
                                            "(default: the task's main metric, e.g. accuracy; "
                                            '"loss" is minimised).', resumable=True)
  num_devices: int | None = field(None, help='Use only the first N devices (default: all).',
                                  resumable=True)

  # Transfer learning and imported weights (cvjax.train.freeze, cvjax.train.warm_start).
  num_classes: int | None = field(None, help="Model outputs; default: the dataset's. Set by "
                                  'cvjax.convert, so restoring converted weights needs no data.')
  preprocessing: str | None = field(None, help='Input convention of imported weights: caffe '
                                    '(Keras VGG/ResNet), torch (torchvision), tf (Keras '
                                    'MobileNet/Inception); default: the dataset\'s mean/std.',
                                    choices=PREPROCESSINGS, empty_is_none=True)
  init_from: str | None = field(None, help='Workdir (e.g. from `python -m cvjax.convert`) whose '
                                'params/BN statistics with matching path and shape start a '
                                'fresh run.')
  init_exclude: str | None = field(None, help='Not taken from --init_from: "head" or a regex on '
                                   'param paths (re-initialised instead).')
  freeze: str = field('', help='Frozen params: all_but_head, all_but_top:N (top N stages train), '
                      'or a regex on param paths such as "^(conv1|bn1|layer1)".')

  # Precision, memory and speed.
  half_precision: str | None = field(None, help='Compute in bf16 or fp16 (params, optimizer '
                                     'state, BN statistics, logits and loss stay float32; fp16 '
                                     'adds dynamic loss scaling). Default: float32.',
                                     choices=tuple(HALF_PRECISIONS), empty_is_none=True)
  grad_accum_steps: int = field(1, help='Average the gradients of K micro-batches of '
                                '--batch_size per optimizer step (effective batch batch_size × '
                                'K; steps, epochs and schedules count optimizer steps).')
  remat: bool = field(False, help='Recompute residual blocks in the backward pass: less '
                      'activation memory, ~1/3 more compute (models that declare it).')
  conv_impl: str = field('auto', help='How convolutions are computed: auto (the CPU lowerings '
                         'of cvjax.models.conv_lowering on the CPU backend, XLA\'s convolution '
                         "elsewhere) or xla (always XLA's convolution). Same parameters either "
                         'way.', choices=CONV_IMPLS, resumable=True)

  def validate(self) -> None:
    """Raises `UserError` for settings that cannot work."""
    if self.optimizer not in OPTIMIZERS:
      raise unknown_choice('optimizer', self.optimizer, OPTIMIZERS)
    if self.schedule not in SCHEDULES:
      raise unknown_choice('schedule', self.schedule, SCHEDULES)
    if self.batch_size <= 0:
      raise UserError(f'batch_size must be positive, got {self.batch_size}')
    if self.num_train_steps is None and not self.num_epochs:
      raise UserError('set num_train_steps or a positive num_epochs')
    if self.num_train_steps is not None and self.num_train_steps <= 0:
      raise UserError(f'num_train_steps must be positive, got {self.num_train_steps}')
    if self.learning_rate <= 0:
      raise UserError(f'learning_rate must be positive, got {self.learning_rate}')
    if not 0 <= self.label_smoothing < 1:
      raise UserError(f'label_smoothing must be in [0, 1), got {self.label_smoothing}')
    if self.half_precision is not None and self.half_precision not in HALF_PRECISIONS:
      raise UserError(f'half_precision must be one of bf16, fp16 (or unset for float32), '
                      f'got {self.half_precision!r}')
    if self.half_precision and 'dtype' in self.model_kwargs:
      raise UserError(f'half_precision={self.half_precision} and model_kwargs '
                      f'dtype={self.model_kwargs["dtype"]} both set the compute dtype; use one')
    if self.grad_accum_steps < 1:
      raise UserError(f'grad_accum_steps must be a positive integer, got {self.grad_accum_steps}')
    if self.preprocessing is not None and self.preprocessing not in PREPROCESSINGS:
      raise unknown_choice('preprocessing', self.preprocessing, PREPROCESSINGS)
    if self.num_classes is not None and self.num_classes <= 0:
      raise UserError(f'num_classes must be positive, got {self.num_classes}')
    if self.conv_impl not in CONV_IMPLS:
      raise unknown_choice('conv_impl', self.conv_impl, CONV_IMPLS)
    freezing.parse_freeze(self.freeze)
    if self.init_exclude not in (None, '', 'head'):
      freezing.compile_pattern(self.init_exclude, 'init_exclude')

  @classmethod
  def resumable_fields(cls) -> set[str]:
    """Fields that may differ when a run is resumed (see the module doc)."""
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get('resumable')}

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> 'TrainConfig':
    raw = json.loads(text)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
      raise UserError(f'config has unknown fields {sorted(unknown)}; was it written by a newer cvjax?')
    if 'decay_epochs' in raw:
      raw['decay_epochs'] = tuple(raw['decay_epochs'])
    return cls(**raw)

  def replace(self, **changes) -> 'TrainConfig':
    return dataclasses.replace(self, **changes)


def parse_kwargs(text: str) -> dict:
  """"a=1,b=relu,c=true,d=(0.1,0.2)" → {'a': 1, 'b': 'relu', 'c': True, 'd': (0.1, 0.2)}:
  commas inside brackets belong to the value (a Python literal)."""
  out = {}
  items, depth, start = [], 0, 0
  for i, ch in enumerate(text + ','):
    depth += (ch in '([{') - (ch in ')]}')
    if ch == ',' and depth <= 0:
      items.append(text[start:i])
      start = i + 1
  for item in filter(None, (s.strip() for s in items)):
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise UserError(f'model_kwargs item {item!r} is not key=value')
    lowered = value.lower()
    if lowered in ('true', 'false'):
      out[key] = lowered == 'true'
    elif lowered == 'none':
      out[key] = None
    else:
      try:
        out[key] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        out[key] = value
  return out
