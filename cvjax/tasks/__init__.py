"""Tasks by name: the layer above `cvjax.train` that knows every kind of problem.

    cls = cvjax.tasks.task_class('detection')     # a cvjax.train.Task subclass
    meta = cls.dataset_meta(config)               # prepares the dataset if needed
    task = cvjax.tasks.get_task(config, meta)     # built once with the run's settings
    results = cvjax.tasks.fit(config, workdir)    # cvjax.train.fit with config.task's task

The training loop never looks tasks up itself; this registry is the only place that
maps `TrainConfig.task` to a `Task`, and adding a task is one line here.
"""
from __future__ import annotations

from typing import Any

from cvjax.data import DatasetMeta
from cvjax.tasks.detection import DetectionTask
from cvjax.errors import unknown_choice
from cvjax.tasks.segmentation import SegmentationTask
from cvjax.tasks.classification import ClassificationTask
from cvjax.tasks.features import FeatureTask
from cvjax.tasks.localization import LocalizationTask
from cvjax.tasks.superres import SuperResolutionTask
from cvjax.tasks.diffusion import DiffusionTask
from cvjax.tasks.gan import GANTask
from cvjax.tasks.generation import AutoencoderTask, VAETask
from cvjax.train import Task, TrainConfig, loop
from cvjax.train import run as train_run

TASKS: dict[str, type[Task]] = {
    'classification': ClassificationTask,
    'detection': DetectionTask,
    'segmentation': SegmentationTask,
    'features': FeatureTask,
    'localization': LocalizationTask,
    'superres': SuperResolutionTask,
    'autoencoder': AutoencoderTask,
    'vae': VAETask,
    'gan': GANTask,
    'diffusion': DiffusionTask,
}


def task_class(name: str) -> type[Task]:
  """The `Task` subclass of `name` (see TASKS); its classmethods `check(config)` and
  `dataset_meta(config)` need no task object."""
  if name not in TASKS:
    raise unknown_choice('task', name, TASKS)
  return TASKS[name]


def get_task(config: TrainConfig, meta: DatasetMeta | None) -> Task:
  """The task `config.task` names, built once with `config` and the dataset's facts `meta`
  (None where there are none: weights without their dataset, whose config sets
  num_classes)."""
  return task_class(config.task)(config, meta)


def fit(config: TrainConfig, workdir: str, *, set_aside: bool = False,
        reevaluate: bool = False, stop=None) -> dict[str, Any]:
  """Trains (or resumes) `config` in `workdir` with the task `config.task` names
  (`cvjax.train.fit` says what set_aside, reevaluate and stop do). A setting that
  cannot work is a `UserError` before anything is written to `workdir`."""
  config.validate()
  return loop.fit(config, workdir, task_class(config.task), set_aside=set_aside,
                  reevaluate=reevaluate, stop=stop)


def build_run(config: TrainConfig):
  """`cvjax.train.build_run` with the task `config.task` names: checks, the dataset's
  facts, then the task built once (`get_task`), mesh, model, optimizer and schedule."""
  return train_run.build_run(config, task_class(config.task))
