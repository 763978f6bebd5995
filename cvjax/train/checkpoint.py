"""Orbax checkpoints: async saves, last-K plus best, resume that skips bad ones.

Layout: `<workdir>/checkpoints/<step>/{state,meta}`. `state` is the TrainState
as a plain state dict (params, batch_stats, opt_state, step, rng); `meta` is
JSON: the config, eval metrics and the early-stopping bookkeeping.
Orbax writes each step to a temporary folder and renames it when complete, so
a run killed mid-save never leaves a half-written step that looks finished.

Owners and readers. Only the run that holds the workdir's lock opens
`Checkpoints(directory)` as the writer: it saves, deletes old steps, cleans the
temporary folders of saves that never finished and sets damaged steps aside.
Everyone else (`cvjax.restore`, the tools, a notebook) opens
`Checkpoints(directory, read_only=True)`, which creates, cleans and moves
nothing, so looking at a live run never disturbs it.

Damaged steps. A step that does not restore is skipped for the one before it.
The writer then moves it to `<workdir>/damaged_checkpoints/<step>-<UTC time>`
(nothing is deleted) so that the resumed run can write that step again.
"""
from __future__ import annotations

import contextlib
import logging as std_logging
import os
import re
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import serialization
from orbax.checkpoint import checkpoint_managers as policies

from cvjax.errors import CheckpointWriteError, UserError

DAMAGED = 'damaged_checkpoints'  # beside checkpoints/: steps that did not restore


class Checkpoints:
  """A CheckpointManager that keeps the newest `keep` steps and the best one.

  "Best" is the highest `best_metric` passed to `save(metrics=...)`. With
  `read_only=True` (every reader of a run it does not own) nothing is created,
  cleaned, deleted or moved, and `save` is refused.
  """

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
               best_metric: str = 'eval_accuracy', *, read_only: bool = False):
    if keep < 1:
      raise UserError(f'keep_checkpoints must be at least 1, got {keep}')
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    self._pending: int | None = None  # the step of an async save not yet known to be on disk
    self._failed: CheckpointWriteError | None = None
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                             cleanup_tmp_directories=False)
    else:
      preservation = policies.AnyPreservationPolicy([
          policies.LatestN(keep),
          policies.BestN(get_metric_fn=lambda m: m[best_metric], reverse=False, n=1,
                         keep_checkpoints_without_metrics=False),
      ])
      options = ocp.CheckpointManagerOptions(
          preservation_policy=preservation, enable_async_checkpointing=async_save,
          create=True, cleanup_tmp_directories=True)
    if read_only and not os.path.isdir(self.directory):
      raise UserError(f'{self.directory} does not exist: the run has written no checkpoint yet')
    def open_manager():
      with _quiet_absl(read_only):  # orbax warns that a read-only manager is read-only
        return ocp.CheckpointManager(self.directory, options=options,
                                     item_names=('state', 'meta'))
    try:
      # A reader lists the steps while the live run may be deleting its oldest one.
      self.manager = _again_if_a_step_vanished(open_manager) if read_only else open_manager()
    except OSError as e:
      if read_only:
        raise UserError(f'cannot read the checkpoints in {self.directory} ({e.strerror})') from None
      raise self._write_failed(None, e) from None

  def all_steps(self, reload: bool = False) -> list[int]:
    """The complete steps, oldest first; `reload` lists the directory again (a reader
    of a live run sees the steps written since it opened)."""
    if reload:
      _again_if_a_step_vanished(self.manager.reload)
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, meta: dict[str, Any], metrics: dict | None = None,
           force: bool = True) -> None:
    """Starts an async save of `state` (a TrainState) and `meta` at `step`.

    Raises CheckpointWriteError (a UserError) naming the step whose write the
    filesystem refused (full, read-only, ...); the complete checkpoints are left
    as they are.
    """
    if self.read_only:
      raise UserError(f'{self.directory} was opened read-only; only the run that holds '
                      'the workdir lock writes checkpoints')
    if self._failed is not None:
      raise self._failed
    self.wait()  # a failure of the previous async save is reported as that step's
    try:
      self.manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(_on_host(_state_dict(state))),
              meta=ocp.args.JsonSave(meta)),
          metrics=metrics, force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_failed(step, e) from None
    self._pending = step

  def restore(self, step: int, template):
    """Restores step `step` into the structure and shardings of `template`."""
    return self._restore(step, template, _abstract(template))

  def _restore(self, step: int, template, target):
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                      meta=ocp.args.JsonRestore()))
    # Put back the fields left out as None (see `_state_dict`).
    unset = {k: None for k, v in serialization.to_state_dict(template).items() if v is None}
    return (serialization.from_state_dict(template, {**unset, **restored['state']}),
            restored['meta'])

  def restore_latest(self, template):
    """(state, meta) of the newest step that restores cleanly, or None when there is none.

    A step that does not restore is skipped with a warning for the one before it.
    The writer moves such a step to DAMAGED so that the run can write that step
    again, but only once an older step has restored: when none restores (a
    damaged disk, or checkpoints of another cvjax version) a UserError says so and
    nothing is moved. A reader moves nothing, and lists the directory again when a
    step vanished meanwhile (the live run deleted it).
    """
    target = _abstract(template)
    return self._newest(lambda step: self._restore(step, template, target))

  def restore_variables(self, template: dict, step: int | None = None, ema: bool = False):
    """(variables, step) of checkpoint `step`, default the newest that restores cleanly
    (damaged steps skipped as in `restore_latest`); None when there is no checkpoint.

    Only the model's variables are read: orbax's partial restore of the state's
    'params' and 'batch_stats' (or, with `ema`, of its weight average 'ema') and its
    batch counter 'step', not the optimizer state nor anything else, so nothing of the
    run's optimizer is needed.

    template: {'params': ..., 'batch_stats'?: ...} of jax.ShapeDtypeStruct (e.g.
      `jax.eval_shape` of the model's init); the stored shapes must match it.
    Returns: variables {'params', 'batch_stats' when the model has BatchNorm} as numpy
      arrays, and the TrainState's `step` (train-step calls: batches consumed).
    """
    variables = {k: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), v)
                 for k, v in template.items() if v}
    item = {'ema': variables} if ema else dict(variables)
    item['step'] = jax.ShapeDtypeStruct((), np.int64)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)

    def read(step: int):
      state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=True)))['state']
      stored = state['ema'] if ema else state
      return {k: stored[k] for k in variables}, int(state['step'])
    if step is None:
      return self._newest(read)
    if step not in self.all_steps():
      raise UserError(f'no checkpoint at step {step} in {self.directory}; '
                      f'available: {self.all_steps()}')
    return read(step)

  def _newest(self, restore_step):
    """`restore_step(step)` of the newest step for which it succeeds (see restore_latest)."""
    damaged: list[tuple[int, str]] = []
    tried: set[int] = set()
    while True:
      steps = [s for s in self.all_steps(reload=bool(tried)) if s not in tried]
      if not steps:
        break
      step = steps[-1]
      tried.add(step)
      try:
        restored = restore_step(step)
      except Exception as e:  # pylint: disable=broad-except
        if not os.path.isdir(os.path.join(self.directory, str(step))):
          continue  # deleted by the run that owns it while we read
        reason = f'{type(e).__name__}: {_first_line(e)}'
        logging.warning('checkpoint at step %d in %s cannot be restored (%s); '
                        'trying the previous one', step, self.directory, reason)
        damaged.append((step, reason))
        continue
      if not self.read_only:
        for bad, _ in damaged:
          self._set_aside(bad)
      return restored
    if damaged:
      listed = ', '.join(f'step {s} ({reason})' for s, reason in damaged)
      raise UserError(f'no checkpoint in {self.directory} can be restored: {listed}; move '
                      'the damaged steps out of that folder to start again from the last good '
                      'one (or from scratch), or use a new --workdir')
    return None

  def _set_aside(self, step: int) -> None:
    """Moves the damaged `step` to <workdir>/DAMAGED/<step>-<UTC time>."""
    stamp = time.strftime('%Y%m%d-%H%M%S', time.gmtime())
    target_dir = os.path.join(os.path.dirname(self.directory), DAMAGED)
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, f'{step}-{stamp}')
    n = 1
    while os.path.exists(target):
      n += 1
      target = os.path.join(target_dir, f'{step}-{stamp}-{n}')
    os.rename(os.path.join(self.directory, str(step)), target)
    self.manager.reload()
    logging.warning('moved the damaged checkpoint at step %d to %s; the run writes that step '
                    'again', step, target)

  def wait(self) -> None:
    """Blocks until pending async saves are on disk (CheckpointWriteError if one failed;
    after a failure, returns at once)."""
    if self._failed is not None or self.read_only:
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_failed(self._pending, e) from None
    self._pending = None

  def _write_failed(self, step: int | None, error: Exception) -> Exception:
    """CheckpointWriteError for a write the filesystem refused; `error` itself otherwise."""
    reason = _os_error_reason(error)
    if reason is None:
      return error
    self._failed = CheckpointWriteError(
        f'writing the checkpoint {f"at step {step} " if step is not None else ""}in '
        f'{self.directory} failed ({reason}); the complete checkpoints '
        f'{_complete_steps(self.directory)} are intact: free space or fix the directory, '
        'then re-run to resume')
    return self._failed

  def close(self) -> None:
    if self._failed is None:  # after a failed write orbax still waits for it: do not join
      self.manager.close()


@contextlib.contextmanager
def _quiet_absl(quiet: bool):
  """absl's Python logger at ERROR for the block (when `quiet`)."""
  logger = std_logging.getLogger('absl')
  level = logger.level
  if quiet:
    logger.setLevel(std_logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _again_if_a_step_vanished(read, tries: int = 10):
  """`read()`, called again (up to `tries` times) when it fails because a file or folder it
  listed was gone by the time it opened it: the live run deleted an old step meanwhile."""
  for attempt in range(tries):
    try:
      return read()
    except FileNotFoundError:
      if attempt == tries - 1:
        raise
      time.sleep(0.05)


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else ''


# tensorstore reports the errno of a failed write inside a ValueError's message.
_ERRNO = re.compile(r"os_error_code='?(\d+)|\[Errno (\d+)\]")


def _os_error_reason(error: Exception) -> str | None:
  """strerror of the filesystem error behind `error` (an OSError, or orbax/tensorstore's
  wrapping of one), None when `error` is not a filesystem error."""
  if isinstance(error, OSError) and error.errno:
    return error.strerror or os.strerror(error.errno)
  found = _ERRNO.search(str(error))
  if found:
    return os.strerror(int(found[1] or found[2]))
  return None


def _complete_steps(directory: str) -> list[int]:
  """The step folders under `directory`, read from the disk (not orbax's cache)."""
  try:
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())
  except OSError:
    return []


def _state_dict(state) -> dict:
  """The TrainState as a state dict, fields that are None left out.

  `loss_scale` is None outside fp16 runs: leaving it out keeps such
  checkpoints the same tree as those written before the field existed, so
  they restore either way.
  """
  return {k: v for k, v in serialization.to_state_dict(state).items() if v is not None}


def _on_host(tree):
  """Replicated arrays as NumPy copies of this process's replica.

  Orbax would otherwise split every replicated array into one slice per device and
  write each from a different device ("replica-parallel"), dispatching a slice
  per array and device; the state is replicated, so one copy is the whole of it.
  """
  def leaf(x):
    if isinstance(x, jax.Array) and x.sharding.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return x
  return jax.tree.map(leaf, tree)


def _abstract(template) -> dict:
  """ShapeDtypeStructs (with shardings) for every array of a TrainState."""
  def leaf(x):
    x = x if hasattr(x, 'shape') else np.asarray(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None))
  return jax.tree.map(leaf, _state_dict(template))
