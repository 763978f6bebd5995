"""Training: config, state, pure steps, the Task protocol, the model factory and the one loop.

    run = build_run(config, task_class)         # the task, model, optimizer, schedule
    results = fit(config, workdir, task_class)  # train or resume; `cvjax.tasks.fit` looks
                                                # the task class up by config.task
"""
from cvjax.train.config import TrainConfig
from cvjax.train.factory import build_model
from cvjax.train.loop import evaluate, fit
from cvjax.train.run import Run, build_run
from cvjax.train.task import Task

__all__ = ['Run', 'Task', 'TrainConfig', 'build_model', 'build_run', 'evaluate', 'fit']
