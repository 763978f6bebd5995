"""The experiment programs as a user runs them: kill -9 and resume, SIGTERM, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cvjax.tasks import fit
from cvjax.train import TrainConfig
from cvjax.train.checkpoint import Checkpoints

pytestmark = pytest.mark.slow  # Each test runs an experiment program in a subprocess.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(real_mnist, workdir, *extra):
  return [sys.executable, '-m', 'experiments.lenet', f'--workdir={workdir}', '--dataset=mnist',
          f'--data_dir={real_mnist["data_dir"]}', f'--raw_data_dir={real_mnist["raw_dir"]}',
          '--batch_size=64', '--num_train_steps=30', '--checkpoint_every_steps=5',
          '--eval_every_steps=15', '--log_every_steps=10', '--keep_checkpoints=20', *extra]


def _env():
  env = dict(os.environ)
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  return env


def _wait_for_checkpoint(workdir, proc, minimum_step, timeout=240):
  directory = os.path.join(workdir, 'checkpoints')
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      pytest.fail(f'run ended (exit {proc.returncode}) before checkpoint {minimum_step}: '
                  f'{proc.stderr.read()[-2000:]}')
    steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
    if steps and max(steps) >= minimum_step:
      return max(steps)
    time.sleep(0.05)
  pytest.fail(f'no checkpoint >= {minimum_step} after {timeout} s')


def _final(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    metrics = [json.loads(line) for line in f]
  return results, metrics


@pytest.mark.slow
def test_killed_with_sigkill_and_rerun_ends_exactly_like_an_uninterrupted_run(real_mnist, tmp_path):
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  proc = subprocess.Popen(_command(real_mnist, killed), env=_env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for_checkpoint(killed, proc, minimum_step=15)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, 'results.json'))
  assert os.path.exists(os.path.join(killed, '.lock'))  # left behind by the killed run
  # The uninterrupted reference: the killed program's own config.json, run in this process.
  with open(os.path.join(killed, 'config.json')) as f:
    fit(TrainConfig.from_json(f.read()), straight)
  # The bytes a kill in the middle of the next metrics write leaves: half a record, no newline.
  with open(os.path.join(killed, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 29, "train_loss": 0.4')
  done = subprocess.run(_command(real_mnist, killed), env=_env(), cwd=REPO,
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  assert 'resumed from step' in done.stderr
  assert f'was left by process {proc.pid}, which is gone; taking it over' in done.stderr
  (r1, m1), (r2, m2) = _final(straight), _final(killed)
  for key in ('step', 'test_accuracy', 'test_loss', 'test_examples'):
    assert r1[key] == r2[key], key
  assert m1 == m2  # every logged loss, accuracy and learning rate, step for step; no torn line


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_143(real_mnist, tmp_path):
  workdir = str(tmp_path / 'preempted')
  proc = subprocess.Popen(_command(real_mnist, workdir, '--checkpoint_every_steps=1000',
                                   '--num_train_steps=60'),
                          env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  # Wait until training is under way (the first metrics line), then preempt.
  deadline = time.time() + 240
  while not os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:] if proc.poll() is not None else 'timeout'
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 143, stderr[-2000:]
  line = [l for l in stderr.splitlines() if l.startswith('preempted:')]
  assert line and 're-run the same command to resume' in line[0]
  steps = Checkpoints(os.path.join(workdir, 'checkpoints')).all_steps()
  assert len(steps) == 1 and 10 <= steps[0] < 60   # written at the step SIGTERM arrived


# Each path to an error once through a real process (the messages of the library's other
# UserErrors are pinned in-process: test_train, test_data).
BAD_INPUTS = {
    'unknown_model': (['--model=lenet6'], "error: unknown model 'lenet6'; did you mean 'lenet5'"),
    'unknown_dataset': (['--dataset=mnits'], "error: unknown dataset 'mnits'; did you mean 'mnist'?"),
    'unknown_optimizer': (['--optimizer=rmsprop'], "flag --optimizer=rmsprop: value should be one of"),
    'missing_flagfile': (['--flagfile=experiments/configs/nope.flags'], 'nope.flags'),
}


def test_bad_input_gives_one_clear_line_and_a_nonzero_exit_without_traceback(real_mnist, tmp_path):
  procs = {}
  for name, (flags, _) in BAD_INPUTS.items():  # in parallel: each start-up costs seconds
    command = _command(real_mnist, str(tmp_path / name), *flags)
    procs[name] = subprocess.Popen(command, env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
  for name, proc in procs.items():
    _, stderr = proc.communicate(timeout=300)
    expected = BAD_INPUTS[name][1]
    assert proc.returncode != 0, name
    assert 'Traceback' not in stderr, f'{name}: {stderr[-3000:]}'
    assert expected in stderr, f'{name}: {stderr[-3000:]}'
    assert not os.path.exists(tmp_path / name / 'checkpoints'), name
