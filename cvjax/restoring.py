"""`cvjax.restore(workdir)`: a trained run, ready for a notebook."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from cvjax import tasks
from cvjax.errors import UserError
from cvjax.train import rundir
from cvjax.train.checkpoint import Checkpoints
from cvjax.train.config import TrainConfig
from cvjax.train.state import init_variables


@dataclasses.dataclass
class Restored:
  """A restored run.

  model:     the flax module (call `model.apply(variables, x, train=False)`), built by
             the same factory as in training (compute dtype, remat, conv_impl as trained;
             no BatchNorm axis).
  variables: {'params', 'batch_stats'?} as trained.
  config:    the run's TrainConfig.
  step:      the checkpoint's step (train-step calls: batches consumed).
  predict:   the task's predictor. Classification: uint8[B, H, W, C] images at any size
             → float32[B, num_classes] probabilities, with the run's own eval
             preprocessing; segmentation: float32[B, S, S, classes]; detection: one dict
             per image, 'boxes' f32[n, 4] (ymin, xmin, ymax, xmax) normalised, 'classes'
             int32[n], 'scores' f32[n]; localization: one dict per image, 'class' int,
             'probabilities' f32[K], 'box' f32[4] (ymin, xmin, ymax, xmax) normalised.
  class_names: label index -> name, None when the run does not know them.
  """
  model: Any
  variables: dict
  config: TrainConfig
  step: int
  predict: Callable[[np.ndarray], Any]
  class_names: list[str] | None = None


def read_config(workdir: str) -> TrainConfig:
  """The TrainConfig of `workdir`, or a UserError saying what is wrong with the path."""
  if not os.path.exists(workdir):
    raise UserError(f'{workdir} does not exist')
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise UserError(f'{workdir} has no config.json; is it a cvjax workdir?')
  return TrainConfig.from_file(config_path)


def restore(workdir: str, step: int | None = None) -> Restored:
  """Restores the newest good checkpoint of `workdir` (or `step`); parses no flags.

  Needs only the workdir: config.json's "resolved" record (classes, class names, input
  size, normalisation; `cvjax.train.rundir.Resolved`) stands in for the dataset, the
  model comes from the factory without a BatchNorm axis, and only its variables are read
  from the checkpoint. No dataset is read or prepared and no mesh, optimizer or schedule
  is built, so a run restores where its data is not (and while it trains: the
  checkpoints are opened read-only).

  A workdir written before cvjax recorded "resolved" falls back to the dataset's facts
  (`dataset_meta`): restoring it needs the dataset as training did, unless its config
  sets num_classes (converted weights).
  """
  config = read_config(workdir)
  resolved = rundir.read_resolved(workdir)
  if resolved is not None:
    task = tasks.get_task(config, resolved.dataset_meta(config.dataset))
    _check_record(task, resolved, workdir)
  else:
    cls = tasks.task_class(config.task)
    cls.check(config)
    meta = cls.dataset_meta(config) if config.num_classes is None else None
    task = cls(config, meta)
  model = task.build_model(bn_axis_name=None)  # inference outside a mesh
  # Shapes only: no compiled random init.
  template = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0),
                                                   task.input_shape))
  # A reader: never creates, cleans or moves anything in a run it does not own (the run
  # may be training right now).
  ckpts = Checkpoints(os.path.join(workdir, 'checkpoints'), read_only=True)
  try:
    # A run that keeps a weight average evaluated it: restore that.
    restored = ckpts.restore_variables(template, step, ema=config.ema_decay is not None)
  finally:
    ckpts.close()
  if restored is None:
    raise UserError(f'no restorable checkpoint under {ckpts.directory}')
  variables, batches = restored
  names = task.meta.class_names if task.meta is not None else None
  return Restored(model=model, variables=variables, config=config, step=batches,
                  predict=task.predictor(model, variables),
                  class_names=list(names) if names else None)


def _check_record(task, resolved: rundir.Resolved, workdir: str) -> None:
  """A UserError when the recorded input does not fit the model `task` builds; a warning
  when this cvjax would normalise inputs otherwise than the run did."""
  if (task.image_size, task.channels) != (resolved.image_size, resolved.channels):
    raise UserError(f'{workdir}/config.json records inputs of {resolved.image_size}² × '
                    f'{resolved.channels} but its config gives {task.image_size}² × '
                    f'{task.channels}; was the file edited?')
  now = task.preprocessing()
  if now != resolved.preprocessing:
    logging.warning('%s was trained with inputs normalised as %r; this cvjax normalises '
                    'them as %r: predictions may be off', workdir, resolved.preprocessing, now)
