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
import functools
import io
import json
import math
import numbers
import tokenize
import types
import typing
from typing import Any

from cvjax import cli
from cvjax.errors import UserError, unknown_choice
from cvjax.models import CONV_IMPLS
from cvjax.train import freeze as freezing

OPTIMIZERS = ('sgd', 'momentum', 'nesterov', 'adam', 'adamw')
SCHEDULES = ('constant', 'step', 'cosine', 'onecycle')
# Input conventions of imported weights (op strings in cvjax.data.pipeline): 'caffe' Keras
# VGG/ResNet (BGR, 0-255, minus ImageNet means), 'torch' torchvision (ImageNet mean/std),
# 'tf' Keras MobileNet/Inception (scaled to [-1, 1]).
PREPROCESSINGS = ('caffe', 'torch', 'tf')
TTAS = ('flip',)
PIXEL_LOSSES = ('l1', 'l2')  # the superres task's loss
DIFFUSION_SCHEDULES = ('linear', 'cosine')  # cvjax.generation.diffusion.beta_schedule
# Compute dtype of --half_precision (params, optimizer state and BN statistics stay float32).
HALF_PRECISIONS = {'bf16': 'bfloat16', 'fp16': 'float16'}
# The key of a workdir's config.json beside the TrainConfig fields: what the run resolved
# (classes, input size, normalisation; `cvjax.train.rundir.Resolved`). Not a field:
# `from_json` skips it.
RESOLVED = 'resolved'


def field(default: Any = dataclasses.MISSING, *, help: str, choices=None,  # pylint: disable=redefined-builtin
          resumable: bool = False, empty_is_none: bool = False, default_factory=None,
          minimum=None, maximum=None, exclusive_minimum=None, exclusive_maximum=None,
          words: str | None = None):
  """A TrainConfig field with its flag help and the values it accepts.

  choices: the values a string field accepts. minimum / maximum (inclusive) and
  exclusive_minimum / exclusive_maximum bound a number, or each number of a tuple;
  every number must be finite as well. words: what `validate` says the field must be,
  where the bounds' own wording ('positive', 'in [0, 1)') is not the one to use.
  """
  metadata = {'help': help, 'choices': choices, 'resumable': resumable,
              'empty_is_none': empty_is_none, 'minimum': minimum, 'maximum': maximum,
              'exclusive_minimum': exclusive_minimum, 'exclusive_maximum': exclusive_maximum,
              'words': words}
  if default_factory is not None:
    return dataclasses.field(default_factory=default_factory, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


POSITIVE = {'exclusive_minimum': 0}    # sizes, intervals, rates: > 0
NON_NEGATIVE = {'minimum': 0}          # lengths and strengths that may be 0
# JAX's keys are 32-bit: larger seeds would repeat the draws of smaller ones.
MAX_SEED = 2**32 - 1


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
                    'segmentation, localization, superres, features, autoencoder, vae, gan '
                    'or diffusion (cvjax.tasks).')
  model: str = field('lenet5', help='Registered model name (cvjax.models.list_models()).')
  model_kwargs: dict[str, Any] = field(
      default_factory=dict, help='Extra model arguments, e.g. "activation=relu,pooling=max".')
  dataset: str = field('fashion_mnist', help='TFDS dataset name (mnist, fashion_mnist, cifar10, '
                       'cifar100, tf_flowers, imagenet2012, voc2007, cvjax_shapes, ...).')
  image_size: int | None = field(None, help="Model input size; default: the model's natural size.",
                                 **POSITIVE)
  augment: str | None = field(None, help='Train augmentation ops, e.g. "pad_crop(4)|flip_lr"; '
                              'default: the dataset\'s; "" for none.')
  train_split: str = field('train', help="Split trained on; 'train_minus_validation' keeps the "
                           "'validation' split out of training for model selection "
                           '(cvjax.data.datasets).')
  eval_split: str = field('test', help='Split evaluated during training (what the best '
                          "checkpoint and early stopping watch: 'validation' for selection).",
                          resumable=True)
  data_dir: str | None = field(None, help="TFDS data_dir (default: TFDS's).", resumable=True)
  raw_data_dir: str | None = field(None, help="Directory with a dataset's original raw files, "
                                   'used to build the TFDS dataset offline.', resumable=True)

  # How long.
  batch_size: int = field(128, help='Global batch size (all devices).', **POSITIVE)
  eval_batch_size: int | None = field(None, help='Global eval batch size (default: batch_size).',
                                      resumable=True, **POSITIVE)
  num_epochs: float | None = field(10.0, help='Training length in epochs.', resumable=True,
                                   **POSITIVE)
  num_train_steps: int | None = field(None, help='Training length in optimizer steps; overrides '
                                      'num_epochs.', resumable=True, **POSITIVE)

  # Optimisation.
  optimizer: str = field('momentum', help='Optimizer.', choices=OPTIMIZERS)
  learning_rate: float = field(0.1, help='Peak learning rate.', **POSITIVE)
  momentum: float = field(0.9, help="Momentum for momentum/nesterov; Adam's beta1 for adam/adamw "
                          '(0.5 in DCGAN).', minimum=0,
                          exclusive_maximum=1)
  schedule: str = field('cosine', help="Learning-rate schedule; 'onecycle' is optax's "
                        'cosine one-cycle (up over warmup_epochs, default 30% of the run, '
                        'from lr/25, then down to lr/1e4).', choices=SCHEDULES)
  warmup_epochs: float = field(0.0, help='Linear warmup length in epochs.', **NON_NEGATIVE)
  decay_epochs: tuple[float, ...] = field((), help="Epochs at which the 'step' schedule "
                                          'multiplies the learning rate by decay_factor.',
                                          **NON_NEGATIVE)
  decay_factor: float = field(0.1, help="'step' schedule multiplier.", exclusive_minimum=0,
                              maximum=1)
  weight_decay: float = field(0.0, help='L2 weight decay on kernels (coupled for sgd/adam, '
                              'decoupled for adamw).', **NON_NEGATIVE)
  label_smoothing: float = field(0.0, help='Label smoothing.', minimum=0, exclusive_maximum=1)
  pixel_loss: str = field('l1', help="Super-resolution loss against the high-resolution "
                          "image: 'l1' (mean absolute error, EDSR) or 'l2' (mean squared "
                          "error, SRCNN and ESPCN).", choices=PIXEL_LOSSES)
  grad_clip_norm: float | None = field(None, help='Clip gradients to this global norm.',
                                       **POSITIVE)
  ema_decay: float | None = field(None, help='Keep an exponential moving average of the '
                                  'weights (and BN statistics) with this decay per optimizer '
                                  'step, e.g. 0.999; evaluation, the final results and '
                                  'restore use it.', exclusive_minimum=0, exclusive_maximum=1)
  mixup_alpha: float = field(0.0, help='Mixup (Zhang et al.): mix each train batch with its '
                             'reverse by lambda ~ Beta(alpha, alpha), labels likewise; 0: off.',
                             **NON_NEGATIVE)
  cutmix_alpha: float = field(0.0, help='CutMix (Yun et al.): paste a box of the reversed batch, '
                              'area 1 - lambda, lambda ~ Beta(alpha, alpha); labels mixed by '
                              "the box's area; 0: off. With mixup too, each batch uses one of "
                              'the two, chosen with probability 1/2 (timm).', **NON_NEGATIVE)
  mix_prob: float = field(1.0, help='Probability that a train batch is mixed (mixup/cutmix).',
                          minimum=0, maximum=1)
  diffusion_schedule: str = field('linear', help="The diffusion task's noise schedule: "
                                  "'linear' (Ho et al.: beta 1e-4 to 0.02) or 'cosine' "
                                  '(Nichol & Dhariwal).', choices=DIFFUSION_SCHEDULES)
  diffusion_steps: int = field(1000, help='The diffusion task\'s number of noise levels T.',
                               **POSITIVE)
  iw_samples: int = field(0, help="The vae task's importance-weighted bound (Burda et al.) in "
                          'evaluation, with this many latent samples per image; 0: off.',
                          resumable=True, **NON_NEGATIVE)
  tta: str | None = field(None, help="Test-time augmentation: 'flip' averages the softmax of "
                          'each image and its mirror (evaluation, results and predict); '
                          'default: none.', choices=TTAS, empty_is_none=True, resumable=True,
                          words='flip (or unset for none)')

  # Bookkeeping.
  seed: int = field(0, help='Seed for init, data order, augmentation and dropout.', minimum=0,
                    maximum=MAX_SEED)
  log_every_steps: int = field(100, help='Training metrics interval.', resumable=True,
                               **POSITIVE)
  eval_every_steps: int | None = field(None, help='Evaluation interval (default: each epoch).',
                                       resumable=True, **POSITIVE)
  checkpoint_every_steps: int | None = field(None, help='Checkpoint interval (default: each '
                                             'epoch).', resumable=True, **POSITIVE)
  keep_checkpoints: int = field(3, help='Newest checkpoints kept (the best one is kept too).',
                                resumable=True, **POSITIVE)
  early_stopping_patience: int | None = field(None, help='Stop after this many evaluations '
                                              'without improvement.', resumable=True,
                                              **POSITIVE)
  early_stopping_metric: str | None = field(None, help='Eval metric watched by early stopping '
                                            "(default: the task's main metric, e.g. accuracy; "
                                            '"loss" is minimised).', resumable=True)
  num_devices: int | None = field(None, help='Use only the first N devices (default: all).',
                                  resumable=True, **POSITIVE)

  # Transfer learning and imported weights (cvjax.train.freeze, cvjax.train.warm_start).
  num_classes: int | None = field(None, help="Model outputs; default: the dataset's. Set by "
                                  'cvjax.convert, so restoring converted weights needs no data.',
                                  **POSITIVE)
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
                                     choices=tuple(HALF_PRECISIONS), empty_is_none=True,
                                     words='one of bf16, fp16 (or unset for float32)')
  grad_accum_steps: int = field(1, help='Average the gradients of K micro-batches of '
                                '--batch_size per optimizer step (effective batch batch_size × '
                                'K; steps, epochs and schedules count optimizer steps).',
                                **POSITIVE, words='a positive integer')
  remat: bool = field(False, help='Recompute residual blocks in the backward pass: less '
                      'activation memory, ~1/3 more compute (models that declare it).')
  conv_impl: str = field('auto', help='How convolutions are computed: auto (on the CPU backend '
                         "oneDNN's kernels where built, else the CPU lowerings of "
                         "cvjax.models.conv_lowering; XLA's convolution elsewhere), onednn "
                         "(oneDNN's kernels only) or xla (always XLA's convolution). Same "
                         'parameters either way.', choices=CONV_IMPLS, resumable=True)

  def validate(self) -> None:
    """Raises `UserError` for settings that cannot work.

    Each field is checked against its declaration: its type, its choices, and for a
    number that it is finite and within the bounds of its `field(...)` (e.g.
    'learning_rate must be a finite number > 0, got nan'); then the settings that
    depend on each other.
    """
    for f in dataclasses.fields(self):
      check_field(f, getattr(self, f.name))
    if self.num_train_steps is None and self.num_epochs is None:
      raise UserError('set num_train_steps or a positive num_epochs')
    if self.half_precision and 'dtype' in self.model_kwargs:
      raise UserError(f'half_precision={self.half_precision} and model_kwargs '
                      f'dtype={self.model_kwargs["dtype"]} both set the compute dtype; use one')
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
  def from_json(cls, text: str, source: str = 'config.json') -> 'TrainConfig':
    """The TrainConfig `to_json` wrote as `text`, its values' types checked (not their
    ranges: that is `validate`). Text that is not a JSON object, an unknown field or a
    value of the wrong type is a `UserError` naming `source` (e.g. the file) and the key.
    A workdir's `RESOLVED` record beside the fields is skipped (`cvjax.train.rundir`)."""
    raw = cli.parse_json(text, source, 'a JSON object of TrainConfig fields')
    if not isinstance(raw, dict):
      raise UserError(f'{source} holds a JSON {_json_kind(raw)}; expected a JSON object of '
                      'TrainConfig fields')
    raw = {k: v for k, v in raw.items() if k != RESOLVED}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    if unknown:
      names = sorted(unknown)
      listed = ', '.join(_shown(n, 30) for n in names[:5]) + (', ...' if len(names) > 5 else '')
      raise UserError(f'{source} has unknown fields [{listed}]; was it written by a newer '
                      'cvjax?')
    values = {}
    for name, value in raw.items():
      kind, _ = field_types()[name]
      if kind is tuple and isinstance(value, list):
        value = tuple(value)
      elif kind is float and _is_number(value, integer=True) and _finite(value):
        value = float(value)
      try:
        check_type(fields[name], value)
      except UserError as e:
        raise UserError(f'{source}: {e}') from None
      values[name] = value
    return cls(**values)

  @classmethod
  def from_file(cls, path: str) -> 'TrainConfig':
    """The TrainConfig in the JSON file at `path` (a workdir's config.json), validated.

    A missing, unreadable or empty file, text that is not JSON (the message gives the
    line), an unknown field, a value of the wrong type or outside its range is a
    `UserError` that names `path`, the key and what was expected.
    """
    config = cls.from_json(cli.read_text(path), source=path)
    try:
      config.validate()
    except UserError as e:
      raise UserError(f'{path}: {e}') from None
    return config

  def replace(self, **changes) -> 'TrainConfig':
    return dataclasses.replace(self, **changes)


@functools.cache
def field_types() -> dict[str, tuple[type, bool]]:
  """{field name: (its type without None: int, float, str, bool, tuple or dict; whether
  None is allowed)}, from TrainConfig's annotations."""
  out = {}
  for name, hint in typing.get_type_hints(TrainConfig).items():
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    if optional:
      hint = next(a for a in args if a is not type(None))
    out[name] = (typing.get_origin(hint) or hint, optional)
  return out


def check_field(f: dataclasses.Field, value) -> None:
  """`UserError` unless `value` is of field `f`'s type, among its choices, and (numbers)
  finite and within its bounds."""
  check_type(f, value)
  kind, _ = field_types()[f.name]
  meta = f.metadata
  if value is None or kind not in (int, float, tuple):
    return
  bounds = _bounds(meta)
  for number in value if kind is tuple else (value,):
    if kind is not int and not _finite(number):
      plural = 'finite numbers' if kind is tuple else 'a finite number'
      raise UserError(f'{f.name} must be {meta["words"] or f"{plural} {bounds}".strip()}, '
                      f'got {_shown(value)}')
    if not _within(number, meta):
      words = {'> 0': 'positive', '>= 0': '0 or more'}.get(bounds, bounds)
      each = 'each ' if kind is tuple else ''
      raise UserError(f'{f.name} must {each}be {meta["words"] or words}, got {_shown(value)}')


def check_type(f: dataclasses.Field, value) -> None:
  """`UserError` unless `value` has field `f`'s type (and is among its choices)."""
  kind, optional = field_types()[f.name]
  meta = f.metadata
  if value is None and optional:
    return
  choices = meta['choices']
  if choices:
    if isinstance(value, str) and value in choices:
      return
    if meta['words']:
      raise UserError(f'{f.name} must be {meta["words"]}, got {_shown(value)}')
    if not isinstance(value, str):
      raise UserError(f'{f.name} must be one of {", ".join(choices)}, got {_shown(value)}')
    raise unknown_choice(f.name, value if len(value) <= 60 else value[:57] + '...', choices)
  bounds = _bounds(meta)
  expected, ok = {
      int: (f'an integer {bounds}', _is_number(value, integer=True)),
      float: (f'a number {bounds}', _is_number(value, integer=False)),
      bool: ('true or false', isinstance(value, bool)),
      str: ('a string', isinstance(value, str)),
      tuple: (f'a list of numbers {bounds}', isinstance(value, tuple) and all(
          _is_number(v, integer=False) for v in value)),
      dict: ('a dict of model arguments {name: value}', isinstance(value, dict) and all(
          isinstance(k, str) for k in value)),
  }[kind]
  if not ok:
    raise UserError(f'{f.name} must be {meta["words"] or expected.strip()}, got {_shown(value)}')


def _is_number(value, integer: bool) -> bool:
  """True for ints (and floats unless `integer`), numpy's included, False for bools."""
  return not isinstance(value, bool) and isinstance(
      value, numbers.Integral if integer else numbers.Real)


def _finite(number) -> bool:
  """math.isfinite, False for an int too large for a float."""
  try:
    return math.isfinite(number)
  except OverflowError:
    return False


def _bounds(meta) -> str:
  """The bounds of a field as text: '> 0', '>= 0', 'in [0, 1)', '' for none."""
  low, low_open = meta['minimum'], False
  if meta['exclusive_minimum'] is not None:
    low, low_open = meta['exclusive_minimum'], True
  high, high_open = meta['maximum'], False
  if meta['exclusive_maximum'] is not None:
    high, high_open = meta['exclusive_maximum'], True
  if low is not None and high is not None:
    return f'in {"(" if low_open else "["}{low}, {high}{")" if high_open else "]"}'
  if low is not None:
    return f'{">" if low_open else ">="} {low}'
  if high is not None:
    return f'{"<" if high_open else "<="} {high}'
  return ''


def _within(number, meta) -> bool:
  checks = ((meta['minimum'], lambda b: number >= b), (meta['exclusive_minimum'], lambda b: number > b),
            (meta['maximum'], lambda b: number <= b), (meta['exclusive_maximum'], lambda b: number < b))
  return all(bound is None or holds(bound) for bound, holds in checks)


def _shown(value, limit: int = 60) -> str:
  """repr(value), shortened to `limit` characters (always one line)."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + '...'


def _json_kind(value) -> str:
  return {list: 'array', str: 'string', bool: 'boolean', type(None): 'null'}.get(
      type(value), 'number')


def parse_kwargs(text: str) -> dict:
  """Model arguments from `--model_kwargs` text, parsed as the keyword arguments of a Python
  call (`ast.parse` of `dict(<text>)`): "activation=relu,anchors=(0.1,0.2),zero_init_last_bn=true"
  → {'activation': 'relu', 'anchors': (0.1, 0.2), 'zero_init_last_bn': True}.

  Commas inside brackets or quotes belong to the value. A value is a Python literal
  (`ast.literal_eval`: numbers, strings, tuples, lists, dicts, True, False, None); true,
  false and none in any case are booleans and None; any other expression (a bare word such
  as relu) is a string of its text. An item that is not name=value is a `UserError`
  naming it.
  """
  call_text = f'dict({text})'
  try:
    call = ast.parse(call_text, mode='eval').body
  except (SyntaxError, RecursionError, MemoryError):  # the last two: nested thousands deep
    raise UserError(f'model_kwargs item {_shown(_bad_kwargs_item(text), 80)} is not '
                    'key=value') from None
  if call.args or any(k.arg is None for k in call.keywords):  # `relu`, `**x`
    node = call.args[0] if call.args else next(k for k in call.keywords if k.arg is None)
    item = ast.get_source_segment(call_text, node)
    raise UserError(f'model_kwargs item {_shown(item, 80)} is not key=value')
  return {k.arg: _kwarg_value(k.value, call_text) for k in call.keywords}


def _kwarg_value(node: ast.expr, call_text: str):
  if isinstance(node, ast.Name) and node.id.lower() in ('true', 'false', 'none'):
    return {'true': True, 'false': False, 'none': None}[node.id.lower()]
  try:
    return ast.literal_eval(node)
  except (ValueError, TypeError):  # a bare word (relu), another expression (he-normal), {[1]: 2}
    return ast.get_source_segment(call_text, node)


def _bad_kwargs_item(text: str) -> str:
  """The first comma-separated item of `text` that is not name=value on its own, for the
  error message; commas inside brackets or quotes do not separate (Python's tokenizer).
  The rest of the text when a bracket or quote is left open."""
  line_starts = [0]
  for line in text.splitlines(keepends=True):
    line_starts.append(line_starts[-1] + len(line))
  offset = lambda row_col: line_starts[row_col[0] - 1] + row_col[1]  # noqa: E731
  items, start, depth = [], 0, 0
  try:
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
      if token.type != tokenize.OP:
        continue
      depth += (token.string in ('(', '[', '{')) - (token.string in (')', ']', '}'))
      if token.string == ',' and depth == 0:
        items.append(text[start:offset(token.start)])
        start = offset(token.end)
  except (tokenize.TokenError, SyntaxError):
    pass
  items.append(text[start:])
  for item in items:
    try:
      call = ast.parse(f'dict({item})', mode='eval').body
    except (SyntaxError, RecursionError, MemoryError):
      return item.strip()
    if call.args or len(call.keywords) != 1 or call.keywords[0].arg is None:
      return item.strip()
  return text.strip()
