"""The run directory contract: one live run per workdir, identity on resume, atomic records.

    workdir/
      config.json           the run's TrainConfig (written atomically), and under
                            "resolved" what the run derived from it and its dataset
                            (`Resolved`: classes, input size, normalisation)
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

Restoring for inference (`cvjax.restore`) needs only the workdir: config.json's
"resolved" record says what the dataset would (`read_resolved`). `write_workdir` writes
a workdir from weights alone (converted weights, a transfer recipe's full model).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from cvjax import cli, data
from cvjax.errors import UserError
from cvjax.locking import LOCK, WorkdirLock  # noqa: F401 (part of the run-directory contract)
from cvjax.train import freeze, optim
from cvjax.train.checkpoint import Checkpoints
from cvjax.train.config import RESOLVED, TrainConfig
from cvjax.train.state import TrainState

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


@dataclasses.dataclass(frozen=True)
class Resolved:
  """What a run resolved beyond its TrainConfig, recorded as config.json's "resolved".

  num_classes: the model's outputs (config.num_classes, else the dataset's).
  class_names: label index -> name (the dataset's), or None when unknown.
  image_size, channels: the size S and channels C of the images the model reads.
  preprocessing: the normalisation of images scaled to [0, 1] that the run used, as a
    `cvjax.data.preprocess` op string ('normalize((0.1307,), (0.3081,))', 'caffe'; ''
    for none: e.g. detectors normalise inside the model).
  """
  num_classes: int
  class_names: tuple[str, ...] | None
  image_size: int
  channels: int
  preprocessing: str

  def as_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out['class_names'] = list(self.class_names) if self.class_names is not None else None
    return out

  @classmethod
  def from_json(cls, raw, source: str) -> 'Resolved':
    """The record `as_json` wrote; a UserError naming `source` for anything else."""
    expected = {'num_classes': 'a positive integer', 'image_size': 'a positive integer',
                'channels': 'a positive integer', 'preprocessing': 'a string',
                'class_names': 'a list of strings or null'}
    if not isinstance(raw, dict) or set(raw) != set(expected):
      raise UserError(f'{source}: "{RESOLVED}" must be an object with '
                      f'{", ".join(sorted(expected))}; was it written by another cvjax?')
    for key, words in expected.items():
      value = raw[key]
      if words == 'a positive integer':
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
      elif words == 'a string':
        ok = isinstance(value, str)
      else:
        ok = value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))
      if not ok:
        raise UserError(f'{source}: {RESOLVED}.{key} must be {words}, got {value!r:.60}')
    names = raw['class_names']
    return cls(num_classes=raw['num_classes'], class_names=tuple(names) if names else None,
               image_size=raw['image_size'], channels=raw['channels'],
               preprocessing=raw['preprocessing'])

  def dataset_meta(self, dataset: str):
    """A `cvjax.data.DatasetMeta` holding only what was recorded (no split sizes; the
    image shape is the model's input), for building the run's task without its data."""
    return data.DatasetMeta(name=dataset, num_classes=self.num_classes,
                            image_shape=(None, None, self.channels), split_sizes={},
                            class_names=self.class_names)


def config_text(config: TrainConfig, resolved: Resolved | None) -> str:
  """config.json's text: the TrainConfig's fields, plus "resolved" when given."""
  if resolved is None:
    return config.to_json()
  return json.dumps({**dataclasses.asdict(config), RESOLVED: resolved.as_json()}, indent=2,
                    sort_keys=True)


def write_config(workdir: str, config: TrainConfig, resolved: Resolved | None) -> None:
  """Writes `workdir`/config.json atomically (`config_text`)."""
  write_atomically(os.path.join(workdir, 'config.json'), config_text(config, resolved))


def read_resolved(workdir: str) -> Resolved | None:
  """The "resolved" record of `workdir`'s config.json; None when the file has none (a
  workdir of a cvjax from before the record). A bad record is a UserError naming the file."""
  path = os.path.join(workdir, 'config.json')
  raw = cli.parse_json(cli.read_text(path), path, 'a JSON object of TrainConfig fields')
  if not isinstance(raw, dict) or RESOLVED not in raw:
    return None
  return Resolved.from_json(raw[RESOLVED], path)


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



def write_workdir(out: str, task, arrays: dict[str, Any], meta: dict[str, Any]) -> str:
  """Writes weights as step 0 of a new workdir `out`, atomically: a normal run directory
  that `cvjax.restore(out)` predicts with and `--init_from=out` starts from.

  task: the run's `cvjax.train.Task`, built with its config (whose num_classes is set)
    and a DatasetMeta or None; config.json records its config and `task.resolved()`.
  arrays: '/'-joined paths ('params/conv1/kernel', 'batch_stats/...') -> arrays.
  meta: extra entries of the checkpoint's meta (e.g. `converted_from`).

  The TrainState is a step-0 state of the config's optimizer (slots at zero).
  Everything is written to a temporary sibling directory that is renamed to `out` only
  when complete, so a failure leaves no half-written `out`.

  Raises UserError if `out` exists.
  """
  config = task.config
  out = os.path.abspath(out)
  if os.path.exists(out):
    raise UserError(f'--out={out} already exists; choose a new directory')
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  model = task.build_model()
  freezer = (freeze.make_freezer(config.freeze, model, task.input_shape)
             if config.freeze else None)
  tx = optim.make_optimizer(config, optax.constant_schedule(config.learning_rate), freezer)

  def tree(collection):
    prefix = collection + '/'
    flat = {tuple(k[len(prefix):].split('/')): jnp.asarray(v) for k, v in arrays.items()
            if k.startswith(prefix)}
    return traverse_util.unflatten_dict(flat) if flat else {}

  state = TrainState.create(apply_fn=model.apply, params=tree('params'), tx=tx,
                            batch_stats=tree('batch_stats'), rng=jax.random.PRNGKey(0))
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(out)}.', suffix='.tmp', dir=parent)
  try:
    with open(os.path.join(tmp, 'config.json'), 'w') as f:
      f.write(config_text(config, task.resolved()))
    ckpts = Checkpoints(os.path.join(tmp, 'checkpoints'), keep=1, async_save=False)
    try:
      ckpts.save(0, state, {'step': 0, 'config': dataclasses.asdict(config), **meta})
      ckpts.wait()
    finally:
      ckpts.close()
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out
