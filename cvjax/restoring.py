"""`cvjax.restore(workdir)`: a trained run, ready for a notebook."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np

from cvjax import tasks
from cvjax.errors import UserError
from cvjax.train.checkpoint import Checkpoints
from cvjax.train.config import TrainConfig
from cvjax.train.state import model_variables


@dataclasses.dataclass
class Restored:
  """A restored run.

  model:     the flax module (call `model.apply(variables, x, train=False)`), built by
             the same factory as in training (compute dtype, remat, conv_impl as trained;
             no BatchNorm axis).
  variables: {'params', 'batch_stats'?} as trained.
  config:    the run's TrainConfig.
  step:      the checkpoint's step.
  predict:   the task's predictor. Classification: uint8[B, H, W, C] images at any size
             → float32[B, num_classes] probabilities, with the run's own eval
             preprocessing; segmentation: float32[B, S, S, classes]; detection: one dict
             per image, 'boxes' f32[n, 4] (ymin, xmin, ymax, xmax) normalised, 'classes'
             int32[n], 'scores' f32[n]; localization: one dict per image, 'class' int,
             'probabilities' f32[K], 'box' f32[4] (ymin, xmin, ymax, xmax) normalised.
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
  """Restores the newest good checkpoint of `workdir` (or `step`); parses no flags."""
  config = read_config(workdir)
  # Restoring for inference needs no particular device count.
  config_1 = config.replace(num_devices=1, batch_size=1, eval_batch_size=1)
  run = tasks.build_run(config_1, with_data=config.num_classes is None)
  # A reader: never creates, cleans or moves anything in a run it does not own (the run
  # may be training right now).
  ckpts = Checkpoints(os.path.join(workdir, 'checkpoints'), read_only=True)
  try:
    template = run.abstract_state()  # shapes and shardings only: no compiled random init
    if step is None:
      restored = ckpts.restore_latest(template)
      if restored is None:
        raise UserError(f'no restorable checkpoint under {ckpts.directory}')
    else:
      if step not in ckpts.all_steps():
        raise UserError(f'no checkpoint at step {step} in {ckpts.directory}; '
                        f'available: {ckpts.all_steps()}')
      restored = ckpts.restore(step, template)
  finally:
    ckpts.close()
  state, _ = restored
  variables = jax.device_get(model_variables(state))
  model = run.model
  if 'bn_axis_name' in getattr(model, '__dataclass_fields__', {}):
    model = model.clone(bn_axis_name=None)  # inference outside a mesh
  return Restored(model=model, variables=variables, config=config, step=int(state.step),
                  predict=run.task.predictor(run, model, variables),
                  class_names=getattr(run.dataset, 'class_names', None))
