"""`build_run(config, task_class)`: everything a config determines before training starts."""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax

from cvjax import data, models
from cvjax.errors import UserError, unknown_choice
from cvjax.train import freeze, optim, steps
from cvjax.train.config import TrainConfig
from cvjax.train.loss_scale import DynamicLossScale
from cvjax.train.state import TrainState, create_train_state
from cvjax.train.task import Task


@dataclasses.dataclass
class Run:
  """What `build_run` derives from a config: enough to train (`cvjax.restore` needs none
  of it: no mesh, optimizer, schedule or dataset)."""
  config: TrainConfig
  task: Task                 # built once with the config and `dataset`
  mesh: Any
  model: Any
  dataset: Any               # data.DatasetMeta
  input_shape: tuple[int, ...]  # the model's init input, (1, S, S, C)
  steps_per_epoch: int      # optimizer steps (of batch_size × grad_accum_steps examples)
  total_steps: int          # optimizer steps
  schedule: Any
  tx: Any
  freezer: freeze.Freezer | None = None

  @property
  def image_size(self) -> int:
    return self.task.image_size

  @property
  def channels(self) -> int:
    return self.task.channels

  @property
  def num_classes(self) -> int:
    return self.task.num_classes

  def _create_state(self):
    scale = DynamicLossScale.create() if self.config.half_precision == 'fp16' else None
    return functools.partial(create_train_state, self.model, self.tx,
                             input_shape=self.input_shape, loss_scale=scale,
                             ema=self.config.ema_decay is not None)

  def init_state(self) -> TrainState:
    """A fresh state, replicated over the mesh.

    The parameters are replicated, never sharded, so their random init does not
    need the partitionable threefry; the classic one gives other (equally random)
    values and compiles several times faster on XLA:CPU (docs/benchmarks.md).
    """
    with jax.threefry_partitionable(False):
      return jax.jit(self._create_state(), out_shardings=steps.replicated(self.mesh))(
          jax.random.PRNGKey(self.config.seed))

  def abstract_state(self) -> TrainState:
    """The state's shapes, dtypes and (replicated) shardings, computed without running
    or compiling anything: the template that checkpoints restore into."""
    replicated = steps.replicated(self.mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                        jax.eval_shape(self._create_state(), jax.random.PRNGKey(0)))


def _check_divisible(name: str, size: int, devices: int) -> None:
  if size % devices:
    fix = (size // devices + 1) * devices
    raise UserError(f'{name}={size} cannot be split over {devices} devices; '
                    f'use a multiple of {devices} (e.g. {fix}) or --num_devices')


class DatasetUnavailable(UserError):
  """The run's dataset could not be prepared or read (`Task.dataset_meta` failed)."""


def build_run(config: TrainConfig, task_class: type[Task]) -> Run:
  """Validates `config` and builds its task, mesh, model, optimizer and schedule.

  Checks run first (config, devices, model, `task_class.check`, batch sizes), then
  `task_class.dataset_meta(config)` prepares the dataset if needed (a failure there is
  a `DatasetUnavailable`), then the task is built once: `task_class(config, meta)`.
  """
  config.validate()
  if config.num_devices is not None and not 1 <= config.num_devices <= jax.device_count():
    raise UserError(f'num_devices={config.num_devices} but this run has '
                    f'{jax.device_count()} devices')
  mesh = steps.make_mesh(config.num_devices)
  models.model_info(config.model)  # an unknown model fails first
  task_class.check(config)
  _check_divisible('batch_size', config.batch_size, mesh.size)
  _check_divisible('eval_batch_size', config.eval_batch_size or config.batch_size, mesh.size)
  try:
    meta = task_class.dataset_meta(config)
  except DatasetUnavailable:
    raise
  except UserError as e:
    raise DatasetUnavailable(str(e)) from None
  if config.num_classes is not None and config.num_classes < meta.num_classes:
    raise UserError(f'num_classes={config.num_classes} but {config.dataset} has '
                    f'{meta.num_classes} classes; leave num_classes unset to use the dataset\'s')
  accum, train = config.grad_accum_steps, config.train_split
  if meta.split_sizes and train not in meta.split_sizes:
    raise unknown_choice(f'train_split of {config.dataset}', train, meta.split_sizes)
  examples = 'training examples' if train == 'train' else f'{train} examples'
  if accum > 1 and config.batch_size * accum > meta.split_sizes.get(train, math.inf):
    raise UserError(f'batch_size × grad_accum_steps = {config.batch_size} × {accum} is larger '
                    f'than the {meta.split_sizes[train]} {examples} of {config.dataset}; '
                    'use a smaller --batch_size or --grad_accum_steps')
  steps_per_epoch = data.steps_per_epoch(meta, config.batch_size * accum, train)  # optimizer steps
  if steps_per_epoch < 1:
    raise UserError(f'batch_size={config.batch_size} is larger than the '
                    f'{meta.split_sizes[train]} {examples} of {config.dataset}')
  total = config.num_train_steps or math.ceil(config.num_epochs * steps_per_epoch)
  schedule = optim.learning_rate_schedule(config, total, steps_per_epoch)
  task = task_class(config, meta)
  model, input_shape = task.build_model(), task.input_shape
  freezer = freeze.make_freezer(config.freeze, model, input_shape) if config.freeze else None
  return Run(config=config, task=task, mesh=mesh, model=model, dataset=meta,
             input_shape=input_shape, steps_per_epoch=steps_per_epoch, total_steps=total,
             schedule=schedule, tx=task.optimizer(schedule, freezer),
             freezer=freezer)
