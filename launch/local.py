"""The local backend: a queue that runs trials as concurrent subprocesses.

Each trial gets a slot: a group of `devices_per_trial` GPUs (exported as
CUDA_VISIBLE_DEVICES) when the machine has GPUs, else one of `max_parallel` CPU
slots. GPUs are found without importing JAX: the launcher's own
CUDA_VISIBLE_DEVICES when it is set (an override; empty means none), else
`nvidia-smi -L`. A failed trial is reported (exit status, last error line, log
path) and the queue goes on. SIGINT or SIGTERM to the launcher stops starting
trials and sends SIGTERM to the running ones, which write a checkpoint and exit
143; a second signal kills them. Re-running the sweep resumes them.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable

from cvjax.errors import UserError
from launch import trials as trials_lib
from launch.trials import Trial

_POLL_SECONDS = 0.2


def detect_gpus(environ=None) -> list[str]:
  """GPU ids to hand out (strings for CUDA_VISIBLE_DEVICES)."""
  environ = os.environ if environ is None else environ
  if 'CUDA_VISIBLE_DEVICES' in environ:
    ids = [d.strip() for d in environ['CUDA_VISIBLE_DEVICES'].split(',')]
    return [d for d in ids if d and d != '-1']
  try:
    out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=60,
                         check=False)
  except (OSError, subprocess.TimeoutExpired):
    return []
  if out.returncode:
    return []
  gpus = [line for line in out.stdout.splitlines() if line.startswith('GPU ')]
  return [str(i) for i in range(len(gpus))]


@dataclasses.dataclass(frozen=True)
class Slot:
  label: str            # 'gpu 0,1' or 'cpu 2'
  env: dict[str, str]   # added to the trial's environment


def make_slots(gpus: list[str], devices_per_trial: int, max_parallel: int | None) -> list[Slot]:
  """GPU groups of `devices_per_trial` (at most `max_parallel`), or CPU slots."""
  if devices_per_trial < 1:
    raise UserError(f'--devices_per_trial must be at least 1, got {devices_per_trial}')
  if max_parallel is not None and max_parallel < 1:
    raise UserError(f'--max_parallel must be at least 1, got {max_parallel}')
  if not gpus:
    return [Slot(f'cpu {i}', {}) for i in range(max_parallel or 1)]
  if devices_per_trial > len(gpus):
    raise UserError(f'--devices_per_trial={devices_per_trial} but this machine has '
                    f'{len(gpus)} GPUs ({",".join(gpus)}); use at most {len(gpus)} or '
                    '--backend=slurm for multi-node trials')
  k = devices_per_trial
  groups = [gpus[i:i + k] for i in range(0, len(gpus) - k + 1, k)]
  groups = groups[:max_parallel] if max_parallel else groups
  return [Slot(f'gpu {",".join(g)}', {'CUDA_VISIBLE_DEVICES': ','.join(g)}) for g in groups]


def _die_with_parent() -> None:
  """In the child: SIGTERM (checkpoint, exit 143) if the launcher dies (Linux)."""
  try:
    import ctypes  # pylint: disable=import-outside-toplevel
    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


@dataclasses.dataclass
class _Running:
  trial: Trial
  slot: int
  proc: subprocess.Popen
  log: object
  started: float


def run(trials: list[Trial], root: str, *, experiment: str, slots: list[Slot],
        python: str = sys.executable, say: Callable[[str], None] = print) -> dict[str, dict]:
  """Runs every trial of `trials` that is not finished; returns {name: outcome}.

  outcome: {'status': done | failed | preempted | interrupted | skipped | not started,
  'exit_code', 'seconds', 'error'}.
  """
  outcomes: dict[str, dict] = {}
  pending = collections.deque()
  for trial in trials:
    if trials_lib.is_finished(trial, root):
      outcomes[trial.name] = {'status': 'skipped', 'exit_code': 0, 'seconds': 0.0, 'error': None}
      say(f'[skip ] {trial.name}: finished earlier ({_headline(trial, root)})')
    else:
      pending.append(trial)
  free = list(range(len(slots)))
  running: list[_Running] = []
  signals = []
  width = len(str(len(pending)))
  started_count = 0

  def on_signal(signum, _frame):
    signals.append(signum)
  previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    forwarded = 0
    while running or (pending and not signals):
      while pending and free and not signals:
        trial, slot = pending.popleft(), free.pop(0)
        command = [python, '-m', experiment, f'--flagfile={trial.flagfile(root)}']
        shown = ' '.join(shlex.quote(c) for c in command)
        env = {**os.environ, **slots[slot].env, 'PYTHONUNBUFFERED': '1'}
        log = trials_lib.start_attempt(trial, root, shown, slots[slot].label)
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform == 'linux' else None)
        running.append(_Running(trial, slot, proc, log, time.time()))
        started_count += 1
        say(f'[start] {started_count:>{width}}/{len(pending) + started_count} {trial.name} '
            f'on {slots[slot].label}, log: {trial.log(root)}')
      if len(signals) > forwarded:  # 1st: SIGTERM (checkpoint and stop), 2nd: SIGKILL
        sig = signal.SIGTERM if forwarded == 0 else signal.SIGKILL
        for r in running:
          _signal_group(r.proc, sig)
        if running:
          say(f'[stop ] {"terminating" if sig == signal.SIGTERM else "killing"} '
              f'{len(running)} running trial(s); re-run the sweep to resume them')
        forwarded = len(signals)
      for r in [r for r in running if r.proc.poll() is not None]:
        running.remove(r)
        free.append(r.slot)
        free.sort()
        r.log.close()
        outcomes[r.trial.name] = _finish(r, root, say)
      time.sleep(_POLL_SECONDS if running else 0)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  for trial in pending:
    outcomes[trial.name] = {'status': 'not started', 'exit_code': None, 'seconds': 0.0,
                            'error': None}
  if signals:
    outcomes['__signal__'] = {'status': 'interrupted', 'signal': signals[0]}
  return outcomes


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(proc.pid, sig)
  except (ProcessLookupError, PermissionError):
    pass


def _finish(r: _Running, root: str, say) -> dict:
  code = r.proc.returncode
  if code < 0:  # killed by a signal: report it the way a shell would
    code = 128 - code
  trials_lib.write_exit_code(r.trial, root, code)
  seconds = time.time() - r.started
  finished = trials_lib.is_finished(r.trial, root)
  if code == 0 and finished:
    say(f'[done ] {r.trial.name} in {seconds:.0f} s: {_headline(r.trial, root)}')
    return {'status': 'done', 'exit_code': 0, 'seconds': seconds, 'error': None}
  state = trials_lib.EXIT_MEANING.get(code, 'failed')
  error = trials_lib.last_error_line(r.trial.log(root))
  if code == 0:
    error = f'exited 0 without writing {trials_lib.RESULTS}'
  say(f'[{"FAIL " if state == "failed" else "stop "}] {r.trial.name}: exit {code} after '
      f'{seconds:.0f} s: {error}\n        log: {r.trial.log(root)}')
  return {'status': state, 'exit_code': code, 'seconds': seconds, 'error': error}


def _headline(trial: Trial, root: str) -> str:
  results = trials_lib.status(trial, root)['results'] or {}
  shown = [f'{k}={results[k]:.4f}' for k in ('test_accuracy', 'test_loss')
           if isinstance(results.get(k), (int, float))]
  return ' '.join(shown) or 'results.json'
