"""Orbax checkpoints: async saves, last-K plus best, resume that skips bad ones.

Layout: `<workdir>/checkpoints/<step>/{state,meta}`. `state` is the TrainState
as a plain state dict (params, batch_stats, opt_state, step, rng); `meta` is
JSON: the config, eval metrics and the early-stopping bookkeeping.
Orbax writes each step to a temporary folder and renames it when complete, so
a run killed mid-save never leaves a half-written step that looks finished.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import serialization
from orbax.checkpoint import checkpoint_managers as policies

from cvjax.errors import UserError


class Checkpoints:
  """A CheckpointManager that keeps the newest `keep` steps and the best one.

  "Best" is the highest `best_metric` passed to `save(metrics=...)`.
  """

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
               best_metric: str = 'eval_accuracy'):
    if keep < 1:
      raise UserError(f'keep_checkpoints must be at least 1, got {keep}')
    preservation = policies.AnyPreservationPolicy([
        policies.LatestN(keep),
        policies.BestN(get_metric_fn=lambda m: m[best_metric], reverse=False, n=1,
                       keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation, enable_async_checkpointing=async_save,
        create=True, cleanup_tmp_directories=True)
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'meta'))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, meta: dict[str, Any], metrics: dict | None = None,
           force: bool = True) -> None:
    """Starts an async save of `state` (a TrainState) and `meta` at `step`.

    Raises UserError when the filesystem refuses the write (full, read-only, ...);
    the checkpoints already complete are left as they are.
    """
    try:
      self.manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(_on_host(_state_dict(state))),
              meta=ocp.args.JsonSave(meta)),
          metrics=metrics, force=force)
    except OSError as e:
      raise self._write_failed(step, e) from None

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
    """(state, meta) of the newest step that restores cleanly, or None.

    A newest checkpoint that is corrupt is skipped with a warning and the one
    before it is used; nothing is deleted.
    """
    target = _abstract(template)
    for step in reversed(self.all_steps()):
      try:
        return self._restore(step, template, target)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('checkpoint at step %d in %s cannot be restored (%s: %s); '
                        'trying the previous one', step, self.directory,
                        type(e).__name__, str(e).splitlines()[0] if str(e) else '')
    return None

  def wait(self) -> None:
    """Blocks until pending async saves are on disk (UserError if one failed)."""
    try:
      self.manager.wait_until_finished()
    except OSError as e:
      raise self._write_failed(None, e) from None

  def _write_failed(self, step: int | None, error: OSError) -> UserError:
    done = self.all_steps()
    which = f'at step {step} ' if step is not None else ''
    return UserError(f'writing the checkpoint {which}in {self.directory} failed '
                     f'({error.strerror or error}); the complete checkpoints {done} are intact: '
                     'free space or fix the directory, then re-run to resume')

  def close(self) -> None:
    self.manager.close()


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
