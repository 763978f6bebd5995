"""`cvjax.restore(workdir)`: a trained run, ready for a notebook; `cvjax.restore_ensemble(workdirs)`:
classification runs that predict together."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

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
  num_classes: the model's classes (outputs per image or pixel), None when unknown.
  sample:    generative runs (tasks vae, gan, diffusion): sample(n, seed=0, **options) →
             uint8[n, H, W, C] new images (`cvjax.tasks.generation` lists the options,
             e.g. steps= for DDIM, labels= for a conditional GAN); None otherwise.
  encode, decode, reconstruct: autoencoders and VAEs: uint8 images → f32[n, L] codes
             (the posterior means), codes → uint8 images, images → uint8 images.
  """
  model: Any
  variables: dict
  config: TrainConfig
  step: int
  predict: Callable[[np.ndarray], Any]
  class_names: list[str] | None = None
  num_classes: int | None = None
  sample: Callable[..., np.ndarray] | None = None
  encode: Callable[[np.ndarray], np.ndarray] | None = None
  decode: Callable[[np.ndarray], np.ndarray] | None = None
  reconstruct: Callable[[np.ndarray], np.ndarray] | None = None


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
                  class_names=list(names) if names else None, num_classes=task.num_classes,
                  **task.generative(model, variables))


@dataclasses.dataclass
class RestoredEnsemble:
  """Classification runs restored together (`restore_ensemble`).

  workdirs:    the members' run directories, in the order given.
  members:     each member's `Restored`, in the same order.
  predict:     uint8[B, H, W, C] images at any size → float32[B, num_classes], the mean of
               the members' softmax probabilities (each member preprocesses as it was
               trained).
  class_names: label index -> name, None when no member knows them.
  num_classes: the members' class count.
  """
  workdirs: list[str]
  members: list[Restored]
  predict: Callable[[np.ndarray], np.ndarray]
  class_names: list[str] | None
  num_classes: int


def restore_ensemble(workdirs: Sequence[str],
                     steps: Sequence[int | None] | None = None) -> RestoredEnsemble:
  """Restores each classification run of `workdirs` (`restore`; at `steps[i]`, else the
  newest good checkpoint) as one model whose prediction is the mean of theirs.

  Every member must be a classification run with the first's class count and, where
  both runs know them, its class names; otherwise a UserError names the two workdirs
  and what differs. Like `restore`, reads no dataset and writes nothing.
  """
  if isinstance(workdirs, str):
    raise UserError(f'restore_ensemble wants a list of workdirs, got the string '
                    f'{workdirs!r}; pass [{workdirs!r}]')
  workdirs = list(workdirs)
  if not workdirs:
    raise UserError('restore_ensemble got no workdirs; give one or more classification runs')
  steps = [None] * len(workdirs) if steps is None else list(steps)
  if len(steps) != len(workdirs):
    raise UserError(f'restore_ensemble got {len(steps)} steps for {len(workdirs)} workdirs; '
                    'give one step (or None) per workdir')
  check_classification(workdirs, [read_config(w) for w in workdirs])
  members = [restore(w, s) for w, s in zip(workdirs, steps)]
  check_same_classes(workdirs, members)
  names = next((m.class_names for m in members if m.class_names), None)
  return RestoredEnsemble(workdirs=workdirs, members=members,
                          predict=_mean_predictor([m.predict for m in members]),
                          class_names=names, num_classes=members[0].num_classes)


def check_classification(workdirs: Sequence[str], configs: Sequence[TrainConfig]) -> None:
  """A UserError unless every config is a classification run's (read before restoring)."""
  first, task = workdirs[0], configs[0].task
  if task != 'classification':
    raise UserError(f'{first} is a {task} run; an ensemble averages the class '
                    'probabilities of classification runs')
  for workdir, config in zip(workdirs[1:], configs[1:]):
    if config.task != task:
      raise UserError(f'{first} and {workdir} differ in task ({task!r} vs {config.task!r}); '
                      'an ensemble averages classification runs')


def check_same_classes(workdirs: Sequence[str], members: Sequence[Restored]) -> None:
  """A UserError unless every member has the first's class count and (where both know
  them) class names."""
  first, a = workdirs[0], members[0]
  for workdir, b in zip(workdirs[1:], members[1:]):
    if b.num_classes != a.num_classes:
      raise UserError(f'{first} and {workdir} differ in class count ({a.num_classes} vs '
                      f'{b.num_classes}); ensemble runs trained on the same classes')
    if a.class_names and b.class_names and a.class_names != b.class_names:
      raise UserError(f'{first} and {workdir} differ in class names '
                      f'({_first_difference(a.class_names, b.class_names)}); ensemble runs '
                      'trained on the same classes')


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
  for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
      return f'class {i}: {x!r} vs {y!r}'
  return f'{len(a)} vs {len(b)} names'


def _mean_predictor(predicts: Sequence[Callable[[np.ndarray], np.ndarray]]
                    ) -> Callable[[np.ndarray], np.ndarray]:
  def predict(images) -> np.ndarray:
    return sum(p(images) for p in predicts) / np.float32(len(predicts))
  return predict


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
