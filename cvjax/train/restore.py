"""`cvjax.restore(workdir)`: a trained run, ready for a notebook."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np

from cvjax import data
from cvjax.errors import UserError
from cvjax.train.checkpoint import Checkpoints
from cvjax.train.config import TrainConfig
from cvjax.train.state import model_variables
from cvjax.train import steps


@dataclasses.dataclass
class Restored:
  """A restored run.

  model:     the flax module (call `model.apply(variables, x, train=False)`).
  variables: {'params', 'batch_stats'?} as trained.
  config:    the run's TrainConfig.
  step:      the checkpoint's step.
  predict:   uint8[B, H, W, C] images at any size → float32[B, num_classes]
             probabilities, with the run's own eval preprocessing.
             Detection runs (issue 4): one dict per image, 'boxes' f32[n, 4]
             (ymin, xmin, ymax, xmax) normalised, 'classes' int32[n], 'scores' f32[n].
  """
  model: Any
  variables: dict
  config: TrainConfig
  step: int
  predict: Callable[[np.ndarray], np.ndarray]
  class_names: list[str] | None = None


def restore(workdir: str, step: int | None = None) -> Restored:
  """Restores the newest good checkpoint of `workdir` (or `step`); parses no flags."""
  from cvjax.train.loop import build_run  # avoid an import cycle at package load
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise UserError(f'{workdir} has no config.json; is it a cvjax workdir?')
  with open(config_path) as f:
    config = TrainConfig.from_json(f.read())
  # Restoring for inference needs no particular device count.
  config_1 = config.replace(num_devices=1, batch_size=1, eval_batch_size=1)
  if config.num_classes is not None:  # issue 5: converted weights need no prepared dataset
    from cvjax.pretrained.common import run_without_data
    run = run_without_data(config_1)
  else:
    run = build_run(config_1)
  ckpts = Checkpoints(os.path.join(workdir, 'checkpoints'), keep=max(config.keep_checkpoints, 1))
  try:
    # Shapes and shardings only: no compiled random init (minutes for big models; issue 5).
    replicated = steps.replicated(run.mesh)
    template = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
        jax.eval_shape(run.init_state))
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
  model = run.model.clone(bn_axis_name=None) if hasattr(run.model, 'bn_axis_name') else run.model
  apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False)))

  def predict(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[None]
    x = data.preprocess_for_eval(images, dataset=config.dataset, image_size=run.image_size,
                                 channels=run.channels,
                                 preprocessing=config.preprocessing)  # issue 5
    return np.asarray(apply(variables, x))

  if hasattr(run.task, 'predictor'):  # issue 4: a detector's predict gives boxes, classes, scores
    predict = run.task.predictor(model, variables, run.image_size)
  return Restored(model=model, variables=variables, config=config, step=int(state.step),
                  predict=predict, class_names=getattr(run.dataset, 'class_names', None))
