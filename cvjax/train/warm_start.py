"""Warm starts: a fresh run whose params and BatchNorm statistics come from another workdir.

  init_from=DIR        every param and BatchNorm statistic of DIR's newest readable
                       checkpoint whose path ('layer4_2/conv3/kernel') and shape match this
                       model's is loaded; the rest keeps its fresh initialisation (a head
                       for a new class count has another shape). What was loaded,
                       re-initialised and left unused is logged; nothing matching at all is
                       an error. DIR is any cvjax workdir, e.g. one written by
                       `python -m cvjax.convert`.
  init_exclude='head'  also re-initialise the head when its shape happens to match
                       (Fashion-MNIST's 10 classes -> MNIST's 10 digits); or a regex.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from flax import traverse_util

from cvjax.errors import UserError
from cvjax.train.config import TrainConfig
from cvjax.train.freeze import compile_pattern, flat_paths


def read_workdir(workdir: str):
  """(TrainConfig, {'params', 'batch_stats'} as numpy, step) of `workdir`'s newest
  checkpoint that restores, without building its model or preparing its dataset."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise UserError(f'init_from={workdir!r} has no config.json; is it a cvjax workdir?')
  config = TrainConfig.from_file(config_path)
  directory = os.path.join(workdir, 'checkpoints')
  steps = sorted((int(d) for d in os.listdir(directory) if d.isdigit()), reverse=True) \
      if os.path.isdir(directory) else []
  checkpointer = ocp.PyTreeCheckpointer()
  for step in steps:
    path = os.path.join(os.path.abspath(directory), str(step), 'state')
    try:
      tree = checkpointer.metadata(path).item_metadata.tree
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('checkpoint %s cannot be read (%s); trying the previous one', path,
                      type(e).__name__)
      continue
    return config, {k: state.get(k) or {} for k in ('params', 'batch_stats')}, step
  raise UserError(f'init_from={workdir!r} has no readable checkpoint under {directory}')


def init_from(state, config, head: tuple[str, ...] = ()):
  """`state` with every tensor of `config.init_from` whose path and shape match loaded.

  Args:
    state: a fresh TrainState (params and batch_stats placed as the loop wants them).
    config: the run's TrainConfig (init_from, init_exclude, preprocessing).
    head: the model's head modules (used by init_exclude='head').

  Returns:
    The state with loaded params/batch_stats, same shardings and dtypes.

  Raises:
    UserError: unreadable source, mismatched preprocessing, or nothing matched.
  """
  source_config, source, step = read_workdir(config.init_from)
  if source_config.preprocessing != config.preprocessing:
    raise UserError(
        f'init_from={config.init_from!r} was trained on {source_config.preprocessing or "its dataset"}'
        f'-normalised inputs but this run uses {config.preprocessing or "the dataset"}\'s; '
        f'set --preprocessing={source_config.preprocessing or ""} so the weights see what they expect')
  exclude = config.init_exclude or None
  if exclude == 'head':
    excluded = lambda p: p.split('/')[0] in head  # noqa: E731
  elif exclude:
    pattern = compile_pattern(exclude, 'init_exclude')
    excluded = lambda p: bool(pattern.search(p))  # noqa: E731
  else:
    excluded = lambda p: False  # noqa: E731

  report = {'loaded': [], 'excluded': [], 'missing': [], 'mis-shaped': [], 'unused': []}
  new = {}
  for collection in ('params', 'batch_stats'):
    target = flat_paths(getattr(state, collection) or {})
    have = flat_paths(source[collection])
    out = {}
    for path, leaf in target.items():
      key = f'{collection}/{path}'
      if excluded(path):
        report['excluded'].append(key)
      elif path not in have:
        report['missing'].append(key)
      elif tuple(have[path].shape) != tuple(leaf.shape):
        report['mis-shaped'].append(f'{key} {tuple(have[path].shape)}->{tuple(leaf.shape)}')
      else:
        report['loaded'].append(key)
        out[path] = jax.device_put(np.asarray(have[path], leaf.dtype), leaf.sharding)
        continue
      out[path] = leaf
    report['unused'] += [f'{collection}/{p}' for p in have if p not in target]
    new[collection] = traverse_util.unflatten_dict({tuple(p.split('/')): v for p, v in out.items()})
  if not report['loaded']:
    first = next(iter(flat_paths(state.params)), '?')
    raise UserError(
        f'init_from={config.init_from!r} ({source_config.model}) has no tensor matching '
        f'{config.model} by path and shape (e.g. this model has params/{first}, the source '
        f'{", ".join(list(flat_paths(source["params"]))[:2])}); is it the same model family?')
  def listed(kind):
    items = report[kind]
    return f'{kind} {len(items)} ({", ".join(items[:4])}{", ..." if len(items) > 4 else ""})'
  reinit = [listed(k) for k in ('excluded', 'missing', 'mis-shaped') if report[k]]
  logging.info('init_from %s (step %d): loaded %d tensors; re-initialised: %s; %s',
               config.init_from, step, len(report['loaded']), '; '.join(reinit) or 'none',
               listed('unused') + ' of the source' if report['unused'] else 'all of the source used')
  return state.replace(params=new['params'],
                       batch_stats=new['batch_stats'] if state.batch_stats else state.batch_stats)
