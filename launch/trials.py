"""A sweep on disk: ROOT/sweep.json and one directory per trial.

  ROOT/sweep.json              experiment, base flagfiles and their lines, passthrough
                               flags, swept flags and every trial's name and overrides
  ROOT/<trial>/trial.flags     base flags + passthrough + this trial's values + --workdir;
                               what the trial ran with (never rewritten once it finished)
  ROOT/<trial>/log.txt         the trial's stdout and stderr, one header line per attempt
  ROOT/<trial>/exit_code       the exit status of the last attempt (written when it ends)
  ROOT/<trial>/results.json    written by the experiment when it finishes: the trial is done
  ROOT/<trial>/checkpoints/ …  the experiment's own workdir files

Both backends and `launch.summarize` read and write only through this module.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time

from cvjax import cli
from cvjax.errors import UserError

SWEEP_JSON = 'sweep.json'
FLAGFILE = 'trial.flags'
LOG = 'log.txt'
EXIT_CODE = 'exit_code'
RESULTS = 'results.json'
ATTEMPT_HEADER = '==== launch.sweep'
EXIT_MEANING = {143: 'preempted', 130: 'interrupted'}


@dataclasses.dataclass(frozen=True)
class Trial:
  name: str
  overrides: dict[str, str]

  def directory(self, root: str) -> str:
    return os.path.join(root, self.name)

  def flagfile(self, root: str) -> str:
    return os.path.join(root, self.name, FLAGFILE)

  def log(self, root: str) -> str:
    return os.path.join(root, self.name, LOG)


def read_flag_lines(path: str) -> list[str]:
  """The flag lines of an absl flagfile (comments and blank lines dropped); a missing or
  unreadable file, or one that is not UTF-8 text, is a `UserError` naming it."""
  lines = [line.strip() for line in cli.read_text(path, 'flagfile').split('\n')]
  return [l for l in lines if l and not l.startswith(('#', '//'))]


def flagfile_text(trial: Trial, root: str, *, experiment: str, base_flagfiles: list[str],
                  passthrough: list[str]) -> str:
  """trial.flags: later lines win, so the order is base, passthrough, swept, workdir."""
  lines = [f'# Trial {trial.name} of the sweep in {root} (written by launch.sweep).',
           f'# Run it alone: python -m {experiment} --flagfile={trial.flagfile(root)}']
  for path in base_flagfiles:
    lines += [f'# from {path}:', *read_flag_lines(path)]
  if passthrough:
    lines += ['# passed to every trial:', *passthrough]
  if trial.overrides:
    lines += ['# swept:', *(f'--{k}={v}' for k, v in trial.overrides.items())]
  lines += [f'--workdir={trial.directory(root)}']
  return '\n'.join(lines) + '\n'


def write_flagfile(trial: Trial, root: str, text: str) -> bool:
  """Writes trial.flags, except over a finished trial's: that one records what it ran.

  Returns True when an existing trial.flags says something else.
  """
  os.makedirs(trial.directory(root), exist_ok=True)
  path = trial.flagfile(root)
  changed = False
  if os.path.exists(path):
    changed = _flags_only(cli.read_text(path)) != _flags_only(text)
    if is_finished(trial, root):
      return changed
  with open(path, 'w') as f:
    f.write(text)
  return changed


def _flags_only(text: str) -> list[str]:
  return [l for l in text.splitlines() if l.strip() and not l.startswith('#')]


def by_name(lines: list[str]) -> dict[str, str]:
  """{flag name: its last `--name[=value]` line}: the value absl would use."""
  return {l.lstrip('-').split('=', 1)[0]: l for l in lines}


def flag_value(line: str | None, unset: str = '') -> str:
  """The value of a `--name=value` line: 'true' for a bare `--name`, `unset` for None."""
  if line is None:
    return unset
  return line.split('=', 1)[1] if '=' in line else 'true'


def recorded_flags(trial: Trial, root: str) -> dict[str, str]:
  """by_name of the trial's own trial.flags ({} when it has none), without --workdir."""
  path = trial.flagfile(root)
  if not os.path.exists(path):
    return {}
  flags = by_name(_flags_only(cli.read_text(path)))
  flags.pop('workdir', None)
  return flags


def is_finished(trial: Trial, root: str) -> bool:
  return os.path.exists(os.path.join(trial.directory(root), RESULTS))


def start_attempt(trial: Trial, root: str, command: str, where: str):
  """Opens log.txt for appending, after a header; clears the previous exit code."""
  exit_path = os.path.join(trial.directory(root), EXIT_CODE)
  if os.path.exists(exit_path):
    os.remove(exit_path)
  log = open(trial.log(root), 'a')  # pylint: disable=consider-using-with
  log.write(f'{ATTEMPT_HEADER} {time.strftime("%Y-%m-%d %H:%M:%S")} on {where}: {command}\n')
  log.flush()
  return log


def write_exit_code(trial: Trial, root: str, code: int) -> None:
  with open(os.path.join(trial.directory(root), EXIT_CODE), 'w') as f:
    f.write(f'{code}\n')


_ERROR = re.compile(r'^(error:|preempted:|interrupted)|Error\b|Exception\b|FATAL|Traceback|'
                    r'Killed|Aborted|Segmentation fault')


def last_error_line(log_path: str) -> str | None:
  """The line of the last attempt's log that best says why it failed.

  An `error:`/`preempted:` line from the experiment wins, then the last line that
  names an error (e.g. a traceback's final line), then the last line.
  """
  if not os.path.isfile(log_path):
    return None
  try:
    with open(log_path, errors='replace') as f:
      lines = f.read().splitlines()
  except OSError as e:
    return f'cannot read {log_path} ({e.strerror})'
  starts = [i for i, l in enumerate(lines) if l.startswith(ATTEMPT_HEADER)]
  lines = [l.strip() for l in lines[starts[-1] + 1 if starts else 0:] if l.strip()]
  if not lines:
    return None
  for pattern in (re.compile(r'^(error:|preempted:)'), _ERROR):
    hits = [l for l in lines if pattern.search(l)]
    if hits:
      return hits[-1][:300]
  return lines[-1][:300]


def status(trial: Trial, root: str) -> dict:
  """{'status': done | failed | preempted | interrupted | unfinished | not started,
  'exit_code', 'error', 'results'} of a trial, from its files alone."""
  directory = trial.directory(root)
  results_path = os.path.join(directory, RESULTS)
  if os.path.exists(results_path):
    results = cli.read_json(results_path, what='the results object the experiment writes')
    if not isinstance(results, dict):
      raise UserError(f'{results_path} holds a {type(results).__name__}, not the results '
                      'object the experiment writes; delete it to run the trial again')
    return {'status': 'done', 'exit_code': 0, 'error': None, 'results': results}
  code = None
  exit_path = os.path.join(directory, EXIT_CODE)
  if os.path.exists(exit_path):
    text = cli.read_text(exit_path).strip()
    code = int(text) if re.fullmatch(r'-?[0-9]{1,4}', text) else None
  if code is not None:
    state = EXIT_MEANING.get(code, 'failed')
    return {'status': state, 'exit_code': code, 'error': last_error_line(trial.log(root)),
            'results': None}
  started = os.path.exists(trial.log(root)) or os.path.isdir(os.path.join(directory, 'checkpoints'))
  return {'status': 'unfinished' if started else 'not started', 'exit_code': None,
          'error': None, 'results': None}


# ------------------------------------------------------------------ sweep.json


def load_sweep(root: str, missing_ok: bool = False) -> dict | None:
  """ROOT/sweep.json, checked: an object whose "trials" are {"name", "overrides"} objects
  (a name is one directory of ROOT; overrides map flag names to strings) and whose other
  lists hold strings. Anything else is a `UserError` naming the file and the key."""
  path = os.path.join(root, SWEEP_JSON)
  if not os.path.exists(path):
    if missing_ok:
      return None
    raise UserError(f'{root} has no {SWEEP_JSON}; is it a launch.sweep directory?')
  fix = 'restore it or delete it to start the sweep afresh'
  try:
    record = cli.read_json(path, what='the object launch.sweep writes')
  except UserError as e:
    raise UserError(f'{e}; {fix}') from None
  if not isinstance(record, dict):
    raise UserError(f'{path} holds a {type(record).__name__}, not an object; {fix}')
  trials = record.get('trials')
  if not isinstance(trials, list):
    raise UserError(f'{path}: "trials" must be a list of {{"name", "overrides"}}; {fix}')
  for n, t in enumerate(trials):
    name = t.get('name') if isinstance(t, dict) else None
    overrides = t.get('overrides') if isinstance(t, dict) else None
    if (not isinstance(name, str) or name in ('', '.', '..') or os.sep in name
        or '\0' in name):
      raise UserError(f'{path}: trials[{n}].name must be a directory name, got '
                      f'{str(name)[:60]!r}; {fix}')
    if not isinstance(overrides, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in overrides.items()):
      raise UserError(f'{path}: trials[{n}].overrides must map flag names to strings; {fix}')
  for key in ('swept', 'log_scale', 'passthrough', 'base_lines', 'base_flagfiles'):
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
      raise UserError(f'{path}: "{key}" must be a list of strings; {fix}')
  return record


def trials_of(record: dict) -> list[Trial]:
  return [Trial(t['name'], dict(t['overrides'])) for t in record['trials']]


def save_sweep(root: str, record: dict) -> dict:
  """Writes sweep.json, keeping trials (and swept flags) of earlier runs in ROOT."""
  path = os.path.join(root, SWEEP_JSON)
  old = load_sweep(root, missing_ok=True)
  if old is not None:
    known = {t['name'] for t in old.get('trials', [])}
    record = dict(record)
    record['trials'] = old.get('trials', []) + [t for t in record['trials'] if t['name'] not in known]
    record['swept'] = list(dict.fromkeys(old.get('swept', []) + record['swept']))
    record['log_scale'] = sorted(set(old.get('log_scale', [])) | set(record['log_scale']))
  os.makedirs(root, exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2)
  os.replace(tmp, path)
  return record
