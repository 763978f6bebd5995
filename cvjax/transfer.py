"""Transfer-learning recipes built on the one loop: two-phase fine-tuning and feature extraction.

The mechanisms live in `cvjax.train` (`freeze`: which params stay fixed and how;
`warm_start`: `--init_from` loading by path and shape) and apply to any run through
`TrainConfig` fields. The recipes here chain runs:

  two_phase           phase 1 trains the head on a frozen base (freeze='all_but_head'),
                      phase 2 unfreezes the top stages at a smaller learning rate.
  feature_extraction  a head trained on base features computed once (task 'features'),
                      then written as a full-model workdir.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from absl import logging

from cvjax.errors import UserError
from cvjax.restoring import restore
from cvjax.tasks import fit, get_task
from cvjax.train import freeze, rundir, warm_start


def two_phase(config, workdir: str, *, phase2_freeze: str = 'all_but_top:2',
              phase2_lr_scale: float = 0.1, phase2_epochs: float | None = None,
              phase2_steps: int | None = None) -> dict[str, Any]:
  """The lecture's fine-tuning recipe with the one loop, in `workdir`/phase1 and /phase2.

  Phase 1 trains `config` as given (typically init_from=DIR, freeze='all_but_head').
  Phase 2 starts from phase 1's weights (head included), unfreezes by `phase2_freeze`
  ('' for everything) and trains with `phase2_lr_scale` × the learning rate (the
  lecture: 10-100× smaller) for `phase2_epochs` or `phase2_steps` (default: as phase 1).
  Each phase is a normal, resumable workdir: re-running continues where it stopped.

  Returns:
    phase 2's results dict (as `fit`'s), plus 'phase1' (phase 1's results) and
    'workdir' (phase 2's).
  """
  if not 0 < phase2_lr_scale <= 1:
    raise UserError(f'phase2_lr_scale must be in (0, 1], got {phase2_lr_scale}')
  first_dir, second_dir = os.path.join(workdir, 'phase1'), os.path.join(workdir, 'phase2')
  phase1 = fit(config, first_dir)
  logging.info('phase 1 (%s frozen): test_accuracy=%.4f', config.freeze or 'nothing',
               phase1['test_accuracy'])
  second = config.replace(
      init_from=first_dir, init_exclude=None, freeze=phase2_freeze,
      learning_rate=config.learning_rate * phase2_lr_scale, warmup_epochs=0.0,
      num_epochs=phase2_epochs if phase2_epochs is not None else config.num_epochs,
      num_train_steps=phase2_steps if phase2_steps is not None else (
          None if phase2_epochs is not None else config.num_train_steps))
  phase2 = fit(second, second_dir)
  return {**phase2, 'phase1': phase1, 'workdir': second_dir}


def feature_extraction(config, workdir: str) -> dict[str, Any]:
  """Trains a new head on cached base features, then writes the full model.

  `config` as for fine-tuning (init_from=DIR, model = DIR's model, the new dataset;
  augment is not used: each image's features are computed once). The head trains
  with the one loop in `workdir`/head (task 'features'); `workdir`/model is then a
  normal workdir holding the base's weights with the trained head, for
  `cvjax.restore` / `--init_from`.

  Returns:
    the head run's results, plus 'model_workdir'.
  """
  head_dir, model_dir = os.path.join(workdir, 'head'), os.path.join(workdir, 'model')
  results = fit(config.replace(task='features', freeze=''), head_dir)
  if not os.path.exists(model_dir):
    source_config, arrays, _ = warm_start.read_workdir(config.init_from)
    head = restore(head_dir)
    joined = {f'{k}/{p}': np.asarray(v) for k in ('params', 'batch_stats')
              for p, v in freeze.flat_paths(arrays[k]).items()}
    head_params = freeze.flat_paths(head.variables['params'])
    name = next(iter(head_params)).split('/')[0]
    joined = {p: v for p, v in joined.items() if p.split('/')[1] != name}
    joined.update({f'params/{p}': np.asarray(v) for p, v in head_params.items()})
    num_classes = int(head_params[f'{name}/kernel'].shape[-1])
    full = config.replace(task='classification', freeze='', init_from=None, init_exclude=None,
                          num_classes=num_classes,
                          image_size=config.image_size or source_config.image_size)
    # The head run's record: its dataset's classes and names, no dataset needed.
    meta = rundir.read_resolved(head_dir).dataset_meta(full.dataset)
    rundir.write_workdir(model_dir, get_task(full, meta), joined,
                         {'feature_extraction': {'base': os.path.abspath(config.init_from),
                                                 'head': os.path.abspath(head_dir)}})
  return {**results, 'model_workdir': model_dir}
