"""The training loop every experiment uses: `fit(config, workdir, task_class)`.

One loop for the whole codebase. It builds the mesh, model, optimizer and data
from a `TrainConfig`, resumes from the newest good checkpoint in `workdir`, and
then alternates compiled train steps with logging, evaluation, checkpoints and
early stopping. Everything it needs to continue exactly — the TrainState (whose
step fixes the data position and the random keys) and the early-stopping
bookkeeping — is in the checkpoint, so `kill -9` and a re-run of the same
command end with the same numbers as a run never interrupted.

Steps. The loop counts optimizer steps: `num_train_steps`, epochs,
logging, evaluation, checkpoint names and schedules all use them. With
`--grad_accum_steps` K one optimizer step is K train-step calls on K
micro-batches; a skipped fp16 overflow call is no optimizer step either.
Training metrics are window means over train-step calls. Checkpoints are only
written between optimizer steps; SIGTERM in the middle of an accumulation
finishes it first (at most K − 1 more micro-batches).

Files written to `workdir` (process 0 only; see `cvjax.train.rundir` for the contract):
`config.json` (with what the run resolved: `rundir.Resolved`), `config_history.jsonl`,
`metrics.jsonl`, `tensorboard/`, `checkpoints/<step>/`, `.lock` while running, and at the
end `results.json`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from cvjax import cli, signals
from cvjax.errors import TrainingDiverged, UserError
from cvjax.train import rundir, steps
from cvjax.train.checkpoint import Checkpoints
from cvjax.train.config import TrainConfig
from cvjax.train.run import DatasetUnavailable, Run, build_run
from cvjax.train.state import TrainState
from cvjax.train.task import Task
from cvjax.train.writers import MetricWriter, Progress


def evaluate(run: Run, state: TrainState, eval_step, split: str,
             stop: signals.StopRequest | None = None, step: int | None = None
             ) -> dict[str, float]:
  """The task's metrics over every example of `split` (exactly once each).

  With `stop`, a stop signal ends the evaluation between two batches (Interrupted or
  Preempted, naming the checkpoint of optimizer step `step` as the one kept).
  """
  evaluator = run.task.evaluator()
  for batch in run.task.eval_batches(steps.batch_sharded(run.mesh), split):
    if stop is not None:
      stop.check(f'during the evaluation on {split}: the checkpoint of step {step} is kept; '
                 're-run the same command to evaluate it')
    sums, per_example = jax.device_get(eval_step(state, batch))
    evaluator.update(sums, per_example)
  return evaluator.result()


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


def fit(config: TrainConfig, workdir: str, task_class: type[Task], *, set_aside: bool = False,
        reevaluate: bool = False, stop: signals.StopRequest | None = None) -> dict[str, Any]:
  """Trains (or resumes training) `config` as a `task_class` task in `workdir`; returns the
  results dict. The task is built once, with the config and the dataset's facts
  (`build_run`).

  `cvjax.tasks.fit(config, workdir)` looks the task up by `config.task`. The workdir
  contract (`cvjax.train.rundir`): one live run per workdir; a workdir holding another
  experiment is refused, or with `set_aside` moved to a sibling first; a finished run
  returns its recorded results without training or rewriting them, unless `reevaluate`.

  Resuming or re-evaluating needs the dataset as training did (`cvjax.restore` does not);
  without it a UserError says so.

  Raises UserError for bad settings, TrainingDiverged for a non-finite loss
  (after making sure the last good checkpoint is on disk), Preempted after SIGTERM
  and Interrupted after Ctrl-C (each after writing a checkpoint of the current step,
  or before anything is written when the signal came during start-up).

  stop: the request set by the program's own stop-signal handlers
  (`cvjax.signals.stop_signals`); without one, `fit` installs them for its duration.
  """
  with contextlib.ExitStack() as handlers:
    if stop is None:
      stop = handlers.enter_context(signals.stop_signals())
    try:
      return _fit_locked(config, workdir, task_class, set_aside, reevaluate, stop)
    except OSError as e:
      if e.errno not in _REFUSED_WRITES:
        raise
      raise UserError(f'writing {e.filename or workdir} failed ({e.strerror}); the complete '
                      'checkpoints are intact: free space or fix the directory, then re-run to '
                      'resume') from None


# What a filesystem says when it refuses a write (full, over quota, read-only, not ours).
_REFUSED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _fit_locked(config: TrainConfig, workdir: str, task_class: type[Task], set_aside: bool,
                reevaluate: bool, stop: signals.StopRequest) -> dict[str, Any]:
  stop.check('before training started: nothing was written')
  chief = jax.process_index() == 0
  if chief:
    rundir.prepare(workdir)
  with rundir.WorkdirLock(workdir, enabled=chief):
    changed = {}
    if chief:
      try:
        changed = rundir.check_identity(workdir, config)
      except UserError:
        if not set_aside:
          raise
        logging.warning('moved the run that was in %s to %s', workdir, rundir.set_aside(workdir))
    # The state is replicated and each device draws its own random bits inside the
    # shard_map, so no random draw needs the partitionable threefry (see Run.init_state).
    with jax.threefry_partitionable(False):
      return _fit(config, workdir, task_class, chief, changed, reevaluate, stop)


def _fit(config: TrainConfig, workdir: str, task_class: type[Task], chief: bool, changed: dict,
         reevaluate: bool, stop: signals.StopRequest) -> dict[str, Any]:
  try:
    run = build_run(config, task_class)
  except DatasetUnavailable as e:
    if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
      raise
    doing = 're-evaluating' if reevaluate else 'resuming'
    raise UserError(f'{doing} the run in {workdir} needs its dataset {config.dataset!r} '
                    f'(restoring it for inference, cvjax.restore, does not): {e}') from None
  task = run.task
  ckpts = Checkpoints(os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints,
                      best_metric=f'eval_{task.main_metric}')
  restored = ckpts.restore_latest(run.abstract_state())
  book = _Bookkeeping(restored[1] if restored else None)
  if restored:
    state = restored[0]
    logging.info('resumed from step %d in %s', int(state.step), ckpts.directory)
  else:
    state = task.warm_start(run.init_state(), run.model)
  # Optimizer steps done (checkpoint names, logs, schedules) and batches consumed
  # (`state.step`: the data position). They differ under --grad_accum_steps and
  # after skipped fp16 overflow steps; checkpoints are written between optimizer steps.
  start_step = int(restored[1].get('step', state.step)) if restored else int(state.step)
  start_batch = int(state.step)
  results_path = os.path.join(workdir, 'results.json')
  if chief:
    if restored and changed:
      rundir.record_changes(workdir, start_step, changed)
      logging.info('resuming at step %d with %s', start_step, ', '.join(
          f'{k}: {a} → {b}' for k, (a, b) in sorted(changed.items())))
    rundir.write_config(workdir, config, task.resolved())
  if (restored and start_step >= run.total_steps and os.path.exists(results_path)
      and not reevaluate):
    ckpts.close()
    try:
      results = cli.read_json(results_path, what='the results object this run wrote')
    except UserError as e:
      raise UserError(f'{e}; re-run with --reevaluate to evaluate the run again and rewrite '
                      'it') from None
    logging.info('already finished: step %d of %d; results at %s (--reevaluate to evaluate '
                 'again)', start_step, run.total_steps, results_path)
    return results

  writer = MetricWriter(workdir, enabled=chief)
  writer.truncate_after(start_step)
  train_step = steps.parallel_train_step(run.mesh, task, run.freezer)
  eval_step = steps.parallel_eval_step(run.mesh, task)
  eval_every = config.eval_every_steps or run.steps_per_epoch
  ckpt_every = config.checkpoint_every_steps or run.steps_per_epoch
  watched = config.early_stopping_metric or task.main_metric
  higher_is_better = (task.main_metric_higher_is_better if watched == task.main_metric
                      else watched != 'loss')

  def save(step: int, metrics: dict | None = None) -> None:
    meta = {'step': step, 'config': dataclasses.asdict(config), **book.as_meta()}
    ckpts.save(step, state, meta, metrics=metrics)

  batches = task.train_batches(steps.batch_sharded(run.mesh), start_batch)
  stop.check(f'before training started: nothing new was written in {workdir}')
  progress = Progress(run.total_steps, start_step, config.log_every_steps, enabled=chief)
  step, stopped_early = start_step, False
  timed_from, timed_steps = None, 0  # timed_steps: train-step calls (micro-batches)
  loop_start = time.time()
  last_saved = max(ckpts.all_steps(), default=None)
  try:
    while step < run.total_steps and not stopped_early:
      batch = next(batches)
      if timed_from is None and 'image' in batch:  # TensorBoard's grid of augmented inputs
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
        with progress.phase(f'evaluating on {config.eval_split}'):
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
          or stop.is_set()):
        book.train_seconds += time.time() - loop_start
        loop_start = time.time()
        save(step, ckpt_metrics)
        last_saved = step
      if stop.is_set():
        ckpts.wait()
        raise stop.error(f'at step {step}: checkpoint written to '
                         f'{os.path.join(ckpts.directory, str(step))}; re-run the same command '
                         'to resume')
  finally:
    try:
      ckpts.wait()
      ckpts.close()
    finally:
      progress.close()
      writer.flush()

  book.train_seconds += time.time() - loop_start
  final = book.last_eval
  if not final or final.get('step') != step or final.get('split') != 'test':
    with progress.phase('evaluating on test'):
      final = evaluate(run, state, eval_step, 'test', stop, step)
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
    rundir.write_atomically(results_path, json.dumps(results, indent=2))
  writer.close()
  logging.info('done: %s', json.dumps(results))
  return results

