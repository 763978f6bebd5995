"""The run directory contract: one live run per workdir, identity on resume, atomic records.

    workdir/
      config.json           the run's TrainConfig (written atomically)
      config_history.jsonl  one line per resume that changed a resumable field:
                            {"step": N, "changed": {field: [old, new]}}
      metrics.jsonl         one JSON line per logged step (cvjax.train.writers)
      checkpoints/<step>/   orbax checkpoints, written to a temporary name and renamed
      results.json          the final test metrics (written atomically)
      .lock                 flock of the live run, holding "pid host"; removed when it ends
      damaged_checkpoints/  steps that did not restore, moved aside (cvjax.train.checkpoint)

A workdir holds one run. Resuming with a config that differs in a field that defines
what is trained (model, data, optimizer, seed, ...) is refused field by field; only the
`resumable` fields of `TrainConfig` (length, intervals, devices, ...) may change, and
each change is logged in config_history.jsonl. `set_aside` moves an existing run to a
new sibling directory instead of refusing; nothing is ever deleted.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time


from cvjax import cli
from cvjax.errors import UserError
from cvjax.locking import LOCK, WorkdirLock  # noqa: F401 (part of the run-directory contract)
from cvjax.train.config import TrainConfig

RUN_FILES = ('config.json', 'checkpoints', 'metrics.jsonl', 'results.json', 'tensorboard',
             'damaged_checkpoints')


def prepare(workdir: str) -> None:
  """Creates `workdir` (and parents), or raises UserError saying why it cannot be used."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f'--workdir={workdir} is an existing file, not a directory; '
                    'choose another --workdir')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f'--workdir={workdir} cannot be created ({e.strerror}); '
                    'choose a writable location') from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise UserError(f'--workdir={workdir} is not writable; choose a writable location')


def write_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary sibling and a rename: a reader (or a
  `kill -9`) sees the old file or the new one, never half of one."""
  tmp = f'{path}.{os.getpid()}.tmp'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_config(workdir: str) -> TrainConfig | None:
  """The workdir's recorded TrainConfig, None when there is none yet."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  try:
    return TrainConfig.from_json(cli.read_text(path), source=path)
  except UserError as e:
    raise UserError(f'{e}; choose another --workdir') from None


def differences(old: TrainConfig, new: TrainConfig) -> dict[str, tuple]:
  """{field: (old value, new value)} for every field that differs."""
  a, b = dataclasses.asdict(old), dataclasses.asdict(new)
  return {k: (a[k], b[k]) for k in a if _normal(a[k]) != _normal(b[k])}


def _normal(value):
  """JSON's view of a value: tuples as lists, also inside lists and dicts (model_kwargs)."""
  if isinstance(value, (tuple, list)):
    return [_normal(v) for v in value]
  if isinstance(value, dict):
    return {k: _normal(v) for k, v in value.items()}
  return value


def holds_a_run(workdir: str) -> bool:
  return any(os.path.exists(os.path.join(workdir, f)) for f in RUN_FILES)


def set_aside(workdir: str) -> str:
  """Moves the run in `workdir` (everything but the live lock) to a new sibling
  `<workdir>.old-<UTC time>`; returns that directory."""
  stamp = time.strftime('%Y%m%d-%H%M%S', time.gmtime())
  target = f'{workdir.rstrip(os.sep)}.old-{stamp}'
  n = 1
  while os.path.exists(target):
    n += 1
    target = f'{workdir.rstrip(os.sep)}.old-{stamp}-{n}'
  os.makedirs(target)
  for name in os.listdir(workdir):
    if name != LOCK:
      os.rename(os.path.join(workdir, name), os.path.join(target, name))
  return target


def check_identity(workdir: str, config: TrainConfig) -> dict[str, tuple]:
  """Compares `config` with the run recorded in `workdir`.

  Returns the resumable fields that changed ({} when none). Raises UserError, one
  line per differing identity field, when the workdir holds another experiment.
  """
  old = read_config(workdir)
  if old is None:
    if holds_a_run(workdir):
      raise UserError(f'{workdir} holds run files but no config.json; choose another --workdir')
    return {}
  changed = differences(old, config)
  resumable = TrainConfig.resumable_fields()
  identity = {k: v for k, v in changed.items() if k not in resumable}
  if identity:
    lines = [f'{k}: {_show(a)} → {_show(b)}' for k, (a, b) in sorted(identity.items())]
    raise UserError(
        f'{workdir} holds a different run; it differs in\n' + '\n'.join(f'error:   {line}' for line in lines)
        + f'\nerror: use a new --workdir, or --set_aside to move the old run aside '
          f'(to {workdir.rstrip(os.sep)}.old-<time>) and start this one')
  return changed


def record_changes(workdir: str, step: int, changed: dict[str, tuple]) -> None:
  """Appends a config_history.jsonl line for a resume with changed resumable fields."""
  if not changed:
    return
  with open(os.path.join(workdir, 'config_history.jsonl'), 'a') as f:
    f.write(json.dumps({'step': step, 'changed': {k: [a, b] for k, (a, b) in changed.items()}},
                       sort_keys=True) + '\n')


def _show(value) -> str:
  if isinstance(value, dict):
    return ','.join(f'{k}={v}' for k, v in sorted(value.items())) or '{}'
  return 'None' if value is None else str(value)

