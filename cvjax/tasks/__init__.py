"""Tasks by name: the layer above `cvjax.train` that knows every kind of problem.

    task = cvjax.tasks.get_task('detection')      # a cvjax.train.Task
    results = cvjax.tasks.fit(config, workdir)    # cvjax.train.fit with config.task's task

The training loop never looks tasks up itself; this registry is the only place that
maps `TrainConfig.task` to a `Task`, and adding a task is one line here.
"""
from __future__ import annotations

from typing import Any, Callable

from cvjax.detection.task import DetectionTask
from cvjax.errors import unknown_choice
from cvjax.segmentation.task import SegmentationTask
from cvjax.tasks.classification import ClassificationTask
from cvjax.tasks.features import FeatureTask
from cvjax.tasks.localization import LocalizationTask
from cvjax.train import Task, TrainConfig, loop
from cvjax.train import run as train_run

TASKS: dict[str, Callable[[], Task]] = {
    'classification': ClassificationTask,
    'detection': DetectionTask,
    'segmentation': SegmentationTask,
    'features': FeatureTask,
    'localization': LocalizationTask,
}


def get_task(name: str) -> Task:
  """A new `Task` object for `name` (see TASKS)."""
  if name not in TASKS:
    raise unknown_choice('task', name, TASKS)
  return TASKS[name]()


def fit(config: TrainConfig, workdir: str, *, set_aside: bool = False,
        reevaluate: bool = False, stop=None) -> dict[str, Any]:
  """Trains (or resumes) `config` in `workdir` with the task `config.task` names
  (`cvjax.train.fit` says what set_aside, reevaluate and stop do). A setting that
  cannot work is a `UserError` before anything is written to `workdir`."""
  config.validate()
  return loop.fit(config, workdir, get_task(config.task), set_aside=set_aside,
                  reevaluate=reevaluate, stop=stop)


def build_run(config: TrainConfig, *, with_data: bool = True):
  """`cvjax.train.build_run` with the task `config.task` names."""
  return train_run.build_run(config, get_task(config.task), with_data=with_data)
