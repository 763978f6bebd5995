"""The one configuration object every experiment fills in.

`TrainConfig` is plain data: experiments build it from flags, `fit` reads it,
and it is written to `<workdir>/config.json` so a run documents itself and
`cvjax.restore(workdir)` can rebuild the model without flags.
"""
from __future__ import annotations

import dataclasses
import ast
import json
from typing import Any

from cvjax.errors import UserError, unknown_choice

OPTIMIZERS = ('sgd', 'momentum', 'nesterov', 'adam', 'adamw')
SCHEDULES = ('constant', 'step', 'cosine')
# Input conventions of imported weights (issue 5; op strings in cvjax.data.pipeline):
# 'caffe' Keras VGG/ResNet (BGR, 0-255, minus ImageNet means), 'torch' torchvision
# (ImageNet mean/std), 'tf' Keras MobileNet/Inception (scaled to [-1, 1]).
PREPROCESSINGS = ('caffe', 'torch', 'tf')
# Issue 6: compute dtype of --half_precision (params, optimizer state and BN statistics stay float32).
HALF_PRECISIONS = {'bf16': 'bfloat16', 'fp16': 'float16'}


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
  task: str = 'classification'       # see cvjax.train.tasks
  model: str = 'lenet5'
  model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  dataset: str = 'fashion_mnist'
  image_size: int | None = None      # None: the model's natural input size.
  augment: str | None = None         # None: the dataset's default; '': none.
  eval_split: str = 'test'
  data_dir: str | None = None
  raw_data_dir: str | None = None

  # How long.
  batch_size: int = 128               # global, over all devices
  eval_batch_size: int | None = None  # None: same as batch_size
  num_epochs: float | None = 10.0
  num_train_steps: int | None = None  # overrides num_epochs when set

  # Optimisation.
  optimizer: str = 'momentum'
  learning_rate: float = 0.1
  momentum: float = 0.9
  schedule: str = 'cosine'
  warmup_epochs: float = 0.0
  decay_epochs: tuple[float, ...] = ()  # 'step' schedule: epochs where lr *= decay_factor
  decay_factor: float = 0.1
  weight_decay: float = 0.0           # L2 on kernels (coupled for sgd/adam, decoupled for adamw)
  label_smoothing: float = 0.0
  grad_clip_norm: float | None = None

  # Bookkeeping.
  seed: int = 0
  log_every_steps: int = 100
  eval_every_steps: int | None = None        # None: once per epoch
  checkpoint_every_steps: int | None = None  # None: once per epoch
  keep_checkpoints: int = 3
  early_stopping_patience: int | None = None  # evaluations without improvement
  early_stopping_metric: str | None = None    # None: the task's main metric
  num_devices: int | None = None              # None: all devices

  # --- Transfer learning and imported weights (issue 5; cvjax.transfer, cvjax.pretrained).
  num_classes: int | None = None      # model outputs; None: the dataset's. Set by cvjax.convert,
                                      # so restoring converted weights needs no prepared dataset.
  preprocessing: str | None = None    # None: the dataset's mean/std; else one of PREPROCESSINGS
  init_from: str | None = None        # workdir whose params/batch_stats (matching path and
                                      # shape) start a fresh run; the rest stays initialised
  init_exclude: str | None = None     # not taken from init_from: 'head' or a regex on paths
  freeze: str = ''                    # frozen params: 'all_but_head', 'all_but_top:N' (top N
                                      # stages stay trainable) or a regex on 'module/.../param'

  # --- Mixed precision and memory (issue 6).
  half_precision: str | None = None   # 'bf16' | 'fp16': compute dtype; params, optimizer state,
                                      # BN statistics, logits and loss stay float32. fp16 adds
                                      # dynamic loss scaling (cvjax.train.loss_scale).
  grad_accum_steps: int = 1           # K micro-batches of batch_size per optimizer step
  remat: bool = False                 # recompute residual blocks in the backward pass

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
    # Transfer learning (issue 5).
    if self.preprocessing is not None and self.preprocessing not in PREPROCESSINGS:
      raise unknown_choice('preprocessing', self.preprocessing, PREPROCESSINGS)
    if self.num_classes is not None and self.num_classes <= 0:
      raise UserError(f'num_classes must be positive, got {self.num_classes}')
    from cvjax import transfer  # pylint: disable=g-import-not-at-top
    transfer.parse_freeze(self.freeze)
    if self.init_exclude not in (None, '', 'head'):
      transfer.compile_pattern(self.init_exclude, 'init_exclude')

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
  """"a=1,b=relu,c=true" → {'a': 1, 'b': 'relu', 'c': True}."""
  out = {}
  for item in filter(None, (s.strip() for s in text.split(','))):
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
