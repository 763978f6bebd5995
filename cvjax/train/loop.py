"""The training loop every experiment uses: `fit(config, workdir)`.

One loop for the whole codebase. It builds the mesh, model, optimizer and data
from a `TrainConfig`, resumes from the newest good checkpoint in `workdir`, and
then alternates compiled train steps with logging, evaluation, checkpoints and
early stopping. Everything it needs to continue exactly — the TrainState (whose
step fixes the data position and the random keys) and the early-stopping
bookkeeping — is in the checkpoint, so `kill -9` and a re-run of the same
command end with the same numbers as a run never interrupted.

Steps (issue 6). The loop counts optimizer steps: `num_train_steps`, epochs,
logging, evaluation, checkpoint names and schedules all use them. With
`--grad_accum_steps` K one optimizer step is K train-step calls on K
micro-batches; a skipped fp16 overflow call is no optimizer step either.
Training metrics are window means over train-step calls. Checkpoints are only
written between optimizer steps; SIGTERM in the middle of an accumulation
finishes it first (at most K − 1 more micro-batches).

Files written to `workdir` (process 0 only): `config.json`, `metrics.jsonl`,
`tensorboard/`, `checkpoints/<step>/`, and at the end `results.json`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from cvjax import data, models
from cvjax.errors import Preempted, TrainingDiverged, UserError
from cvjax.train import optim, steps
from cvjax.train.checkpoint import Checkpoints
from cvjax.train.config import HALF_PRECISIONS, TrainConfig
from cvjax.train.loss_scale import DynamicLossScale
from cvjax.train.state import TrainState, create_train_state
from cvjax.train.tasks import Task, get_task
from cvjax.train.writers import MetricWriter, Progress


@dataclasses.dataclass
class Run:
  """What `build_run` derives from a config: enough to train or to restore."""
  config: TrainConfig
  task: Task
  mesh: Any
  model: Any
  dataset: Any               # data.DatasetMeta
  input_shape: tuple[int, int, int, int]  # (1, S, S, C) used for init
  steps_per_epoch: int      # optimizer steps (of batch_size × grad_accum_steps examples)
  total_steps: int          # optimizer steps
  schedule: Any
  tx: Any
  freezer: Any = None        # cvjax.transfer.Freezer when config.freeze is set (issue 5)

  @property
  def image_size(self) -> int:
    return self.input_shape[1]

  @property
  def channels(self) -> int:
    return self.input_shape[3]

  def init_state(self) -> TrainState:
    """A fresh state, replicated over the mesh."""
    scale = DynamicLossScale.create() if self.config.half_precision == 'fp16' else None
    create = functools.partial(create_train_state, self.model, self.tx,
                               input_shape=self.input_shape, loss_scale=scale)
    return jax.jit(create, out_shardings=steps.replicated(self.mesh))(
        jax.random.PRNGKey(self.config.seed))


def _check_divisible(name: str, size: int, devices: int) -> None:
  if size % devices:
    fix = (size // devices + 1) * devices
    raise UserError(f'{name}={size} cannot be split over {devices} devices; '
                    f'use a multiple of {devices} (e.g. {fix}) or --num_devices')


def build_run(config: TrainConfig) -> Run:
  """Validates `config` and builds mesh, model, optimizer and schedule."""
  config.validate()
  mesh = steps.make_mesh(config.num_devices)
  if config.num_devices is not None and not 1 <= config.num_devices <= jax.device_count():
    raise UserError(f'num_devices={config.num_devices} but this run has '
                    f'{jax.device_count()} devices')
  _check_divisible('batch_size', config.batch_size, mesh.size)
  _check_divisible('eval_batch_size', config.eval_batch_size or config.batch_size, mesh.size)
  task = get_task(config.task)
  height, _, channels = models.model_input_shape(config.model)  # unknown model: fail first
  meta = task.dataset_meta(config)
  image_size = config.image_size or height
  num_classes = config.num_classes or meta.num_classes  # issue 5: converted weights
  if num_classes < meta.num_classes:
    raise UserError(f'num_classes={num_classes} but {config.dataset} has {meta.num_classes} '
                    'classes; leave num_classes unset to use the dataset\'s')
  model = models.get_model(config.model, num_classes=num_classes,
                           bn_axis_name=steps.AXIS, **model_kwargs(config))
  accum = config.grad_accum_steps
  if accum > 1 and config.batch_size * accum > meta.split_sizes.get('train', math.inf):
    raise UserError(f'batch_size × grad_accum_steps = {config.batch_size} × {accum} is larger '
                    f'than the {meta.split_sizes["train"]} training examples of {config.dataset}; '
                    'use a smaller --batch_size or --grad_accum_steps')
  steps_per_epoch = data.steps_per_epoch(meta, config.batch_size * accum)  # optimizer steps
  if steps_per_epoch < 1:
    raise UserError(f'batch_size={config.batch_size} is larger than the '
                    f'{meta.split_sizes["train"]} training examples of {config.dataset}')
  total = config.num_train_steps or math.ceil(config.num_epochs * steps_per_epoch)
  schedule = optim.learning_rate_schedule(config, total, steps_per_epoch)
  input_shape = (1, image_size, image_size, channels)
  if hasattr(task, 'build_model'):  # issue 5: a task with its own model (cached-feature heads)
    model, input_shape = task.build_model(config, meta)
  freezer = None
  if config.freeze:  # Transfer hook (issue 5): frozen params, see cvjax.transfer.
    from cvjax import transfer
    freezer = transfer.make_freezer(config.freeze, model, input_shape)
  return Run(config=config, task=task, mesh=mesh, model=model, dataset=meta,
             input_shape=input_shape,
             steps_per_epoch=steps_per_epoch, total_steps=total, schedule=schedule,
             tx=optim.make_optimizer(config, schedule, freezer), freezer=freezer)


def model_kwargs(config: TrainConfig) -> dict:
  """model_kwargs plus what --half_precision and --remat ask of the model (issue 6)."""
  kwargs = dict(config.model_kwargs)
  if config.half_precision:
    kwargs['dtype'] = HALF_PRECISIONS[config.half_precision]  # param_dtype stays float32
  if config.remat:
    if config.model not in remat_models():
      raise UserError(f'model {config.model!r} has no remat option; --remat works for '
                      f'{", ".join(remat_models())}')
    kwargs['remat'] = True
  return kwargs


def remat_models() -> list[str]:
  """Registered models whose `remat=True` recomputes their residual blocks."""
  from cvjax.models.cifar_resnet import rematerialises
  return [m for m in models.list_models(None) if 'remat' in models.model_options(m)
          and rematerialises(models.get_model(m, num_classes=10))]


def evaluate(run: Run, state: TrainState, eval_step, split: str) -> dict[str, float]:
  """The task's metrics over every example of `split` (exactly once each)."""
  evaluator = run.task.evaluator()
  for batch in run.task.eval_batches(run, split):
    sums, per_example = jax.device_get(eval_step(state, batch))
    evaluator.update(sums, per_example)
  return evaluator.result()


@contextlib.contextmanager
def _sigterm_flag():
  """Yields an Event set when SIGTERM arrives (preemption)."""
  flag = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return
  previous = signal.signal(signal.SIGTERM, lambda *_: flag.set())
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


class _Bookkeeping:
  """Host-side state that must survive a resume (saved in checkpoint meta)."""

  def __init__(self, meta: dict | None):
    meta = meta or {}
    self.best = meta.get('best_metric')
    self.evals_since_best = meta.get('evals_since_best', 0)
    self.train_seconds = meta.get('train_seconds', 0.0)
    self.last_eval = meta.get('last_eval')
    # Training metrics summed since the last log line: a resumed run logs the
    # same window means as an uninterrupted one.
    self.train_sums = meta.get('train_sums', {})
    self.train_count = meta.get('train_count', 0)

  def update(self, value: float, higher_is_better: bool) -> None:
    better = (self.best is None or
              (value > self.best if higher_is_better else value < self.best))
    if better:
      self.best, self.evals_since_best = value, 0
    else:
      self.evals_since_best += 1

  def as_meta(self) -> dict:
    return {'best_metric': self.best, 'evals_since_best': self.evals_since_best,
            'train_seconds': self.train_seconds, 'last_eval': self.last_eval,
            'train_sums': self.train_sums, 'train_count': self.train_count}


def fit(config: TrainConfig, workdir: str) -> dict[str, Any]:
  """Trains (or resumes training) in `workdir`; returns the results dict.

  Raises UserError for bad settings, TrainingDiverged for a non-finite loss
  (after making sure the last good checkpoint is on disk) and Preempted after
  SIGTERM (after writing a checkpoint of the current step).
  """
  run = build_run(config)
  chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  _write_config(config, workdir, chief)

  task = run.task
  ckpts = Checkpoints(os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints,
                      best_metric=f'eval_{task.main_metric}')
  state = run.init_state()
  restored = ckpts.restore_latest(state)
  book = _Bookkeeping(restored[1] if restored else None)
  if restored:
    state = restored[0]
    logging.info('resumed from step %d in %s', int(state.step), ckpts.directory)
  elif config.init_from and not hasattr(task, 'build_model'):
    # Transfer hook (issue 5): a fresh run starts from another's weights (a task with its
    # own model, cvjax.transfer.FeatureTask, reads init_from itself).
    from cvjax import transfer
    head = (transfer.head_modules(run.model, run.input_shape)
            if config.init_exclude == 'head' else ())
    state = transfer.init_from(state, config, head)
  # Optimizer steps done (checkpoint names, logs, schedules) and batches consumed
  # (`state.step`: the data position). They differ under --grad_accum_steps and
  # after skipped fp16 overflow steps; checkpoints are written between optimizer steps.
  start_step = int(restored[1].get('step', state.step)) if restored else int(state.step)
  start_batch = int(state.step)

  writer = MetricWriter(workdir, enabled=chief)
  writer.truncate_after(start_step)
  train_step = steps.parallel_train_step(run.mesh, config.label_smoothing, task,
                                         freezer=run.freezer)
  eval_step = steps.parallel_eval_step(run.mesh, task)
  eval_every = config.eval_every_steps or run.steps_per_epoch
  ckpt_every = config.checkpoint_every_steps or run.steps_per_epoch
  watched = config.early_stopping_metric or task.main_metric
  higher_is_better = (task.main_metric_higher_is_better if watched == task.main_metric
                      else watched != 'loss')

  def save(step: int, metrics: dict | None = None) -> None:
    meta = {'step': step, 'config': dataclasses.asdict(config), **book.as_meta()}
    ckpts.save(step, state, meta, metrics=metrics)

  batches = task.train_batches(run, start_batch)
  progress = Progress(run.total_steps, start_step, config.log_every_steps, enabled=chief)
  step, stopped_early = start_step, False
  timed_from, timed_steps = None, 0  # timed_steps: train-step calls (micro-batches)
  loop_start = time.time()
  last_saved = max(ckpts.all_steps(), default=None)
  try:
    with _sigterm_flag() as preempt:
      while step < run.total_steps and not stopped_early:
        batch = next(batches)
        if timed_from is None and 'image' in batch:  # issue 8: TensorBoard input grid
          writer.images(step + 1, 'augmented_inputs', batch['image'])
        state, metrics = train_step(state, batch)
        host = jax.device_get(metrics)  # also the per-step NaN check
        # A skipped fp16 overflow step has a finite loss (only its scaled gradients
        # overflowed), so it passes; a nan/inf loss itself stops the run.
        if not np.isfinite(host['loss']):
          raise TrainingDiverged(
              f'loss is {host["loss"]} at step {step + 1}; stopped. The last good checkpoint '
              f'(step {last_saved}) is kept in {ckpts.directory}; try a lower '
              f'--learning_rate or --grad_clip_norm')
        if host.get('overflow') and host['loss_scale'] <= state.loss_scale.min_scale:
          raise TrainingDiverged(
              f'fp16 gradients overflow even at loss scale {host["loss_scale"]:g} at step '
              f'{step + 1}; stopped. Try --half_precision=bf16 or a lower --learning_rate')
        updated = host.pop('updated', 1.0) > 0
        for k, v in host.items():  # window means over micro-batches
          book.train_sums[k] = book.train_sums.get(k, 0.0) + float(v)
        book.train_count += 1
        if timed_from is None:  # exclude compilation from the throughput
          timed_from = time.time()
        else:
          timed_steps += 1
        if not updated:  # mid-accumulation or a skipped fp16 step: no optimizer step yet
          continue
        step += 1

        if step % config.log_every_steps == 0 or step == run.total_steps:
          scalars = {f'train_{k}': v / book.train_count for k, v in book.train_sums.items()}
          scalars['learning_rate'] = float(run.schedule(step - 1))
          writer.write(step, scalars)
          progress.update(step, scalars)
          book.train_sums, book.train_count = {}, 0
        else:
          progress.update(step)

        ckpt_metrics = None
        if step % eval_every == 0 or step == run.total_steps:
          result = evaluate(run, state, eval_step, config.eval_split)
          book.last_eval = {**result, 'step': step, 'split': config.eval_split}
          if watched not in result:
            raise UserError(f'early_stopping_metric {watched!r} is not measured by the '
                            f'{task.name} task; it measures {sorted(result)}')
          book.update(result[watched], higher_is_better)
          shown = {f'eval_{k}': v for k, v in result.items() if k != 'count'}
          writer.write(step, shown)
          logging.info('step %d: eval on %s %s', step, config.eval_split,
                       ' '.join(f'{k}={v:.4f}' for k, v in shown.items()))
          ckpt_metrics = {f'eval_{task.main_metric}': result[task.main_metric]}
          patience = config.early_stopping_patience
          if patience and book.evals_since_best >= patience:
            logging.info('early stopping at step %d: no better %s in %d evaluations',
                         step, watched, patience)
            stopped_early = True

        if (step % ckpt_every == 0 or step == run.total_steps or stopped_early
            or preempt.is_set()):
          book.train_seconds += time.time() - loop_start
          loop_start = time.time()
          save(step, ckpt_metrics)
          last_saved = step
        if preempt.is_set():
          ckpts.wait()
          raise Preempted(f'SIGTERM at step {step}: checkpoint written to {ckpts.directory}; '
                          're-run the same command to resume')
  finally:
    ckpts.wait()
    progress.close()
    writer.flush()

  book.train_seconds += time.time() - loop_start
  final = book.last_eval
  if not final or final.get('step') != step or final.get('split') != 'test':
    final = evaluate(run, state, eval_step, 'test')
  elapsed = time.time() - timed_from if timed_from else 0.0
  results = {
      'step': step,
      **{f'test_{k}': v for k, v in final.items() if k not in ('count', 'step', 'split')},
      'test_examples': final['count'],
      'train_seconds': book.train_seconds,
      'images_per_second': timed_steps * config.batch_size / elapsed if timed_steps else None,
      'early_stopped': stopped_early,
      'best_eval_metric': book.best,
      'num_devices': run.mesh.size,
      'num_params': int(sum(x.size for x in jax.tree.leaves(state.params))),
  }
  if chief:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  writer.close()
  ckpts.close()
  logging.info('done: %s', json.dumps(results))
  return results


def _write_config(config: TrainConfig, workdir: str, chief: bool) -> None:
  """Writes config.json; warns when resuming a workdir under a different config."""
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      try:
        old = TrainConfig.from_json(f.read())
      except (UserError, json.JSONDecodeError, TypeError):
        old = None
    if old is not None and old != config:
      changed = sorted(k for k, v in dataclasses.asdict(config).items()
                       if dataclasses.asdict(old).get(k) != v)
      logging.warning('workdir %s was started with a different config (changed: %s); '
                      'resuming with the new one', workdir, ', '.join(changed))
  if chief:
    with open(path, 'w') as f:
      f.write(config.to_json())
