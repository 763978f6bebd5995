"""Fault injection: each test does the failure for real and checks what survives."""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cvjax.errors import UserError
from cvjax.tasks import fit
from cvjax.train import rundir
from cvjax.train import TrainConfig
from cvjax.train.writers import MetricWriter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
  env = dict(os.environ)
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  return env


def _lenet(real_mnist, **changes):
  return TrainConfig(**{**dict(
      model='lenet5', model_kwargs={'activation': 'relu', 'pooling': 'max'}, dataset='mnist',
      data_dir=real_mnist['data_dir'], raw_data_dir=real_mnist['raw_dir'], batch_size=64,
      num_train_steps=20, optimizer='adam', learning_rate=2e-3, log_every_steps=10,
      eval_every_steps=20, checkpoint_every_steps=10, seed=0), **changes})


class _NoTensorBoard:
  def scalar(self, *_):
    pass


def _records():
  """(step, scalars) as the loop writes them: training every step, eval every 3rd."""
  for step in range(1, 9):
    yield step, {'train_loss': 1 / step, 'learning_rate': 0.1}
    if step % 3 == 0:
      yield step, {'eval_accuracy': step / 10}


def test_a_metrics_line_torn_by_a_kill_is_dropped_when_the_run_resumes(tmp_path, monkeypatch):
  """A kill -9 can stop a write at any byte of the lines written after the last checkpoint."""
  monkeypatch.setattr(MetricWriter, '_summary_writer', lambda self: _NoTensorBoard())
  straight = MetricWriter(str(tmp_path / 'straight'))
  os.makedirs(tmp_path / 'straight')
  for step, scalars in _records():
    straight.write(step, scalars)
  with open(straight.path, 'rb') as f:
    text = f.read()
  checkpoint = 4   # the newest checkpoint: every line of steps <= 4 was written before it
  lines = text.splitlines(keepends=True)
  saved = sum(len(l) for l in lines if json.loads(l)['step'] <= checkpoint)
  os.makedirs(tmp_path / 'killed')
  killed = MetricWriter(str(tmp_path / 'killed'))
  for cut in range(saved, len(text) + 1):
    with open(killed.path, 'wb') as f:
      f.write(text[:cut])
    killed.truncate_after(checkpoint)          # what a resumed run does first
    for step, scalars in _records():
      if step > checkpoint:
        killed.write(step, scalars)
    with open(killed.path, 'rb') as f:
      assert f.read() == text, f'cut at byte {cut}'
  # A whole last record whose newline was lost is kept, and the next one starts a new line.
  with open(killed.path, 'wb') as f:
    f.write(text[:-1])
  killed.truncate_after(8)
  killed.write(9, {'train_loss': 0.1})
  with open(killed.path) as f:
    assert [json.loads(line)['step'] for line in f] == [1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9]


def test_a_second_run_on_a_busy_workdir_is_refused_and_a_stale_lock_is_taken_over(tmp_path, caplog):
  workdir = str(tmp_path)
  with rundir.WorkdirLock(workdir):
    with pytest.raises(UserError, match=rf'is in use by process {os.getpid()} on '
                                        rf'{socket.gethostname()}; wait for it'):
      with rundir.WorkdirLock(workdir):
        pass
  assert not os.path.exists(os.path.join(workdir, rundir.LOCK))
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  with open(os.path.join(workdir, rundir.LOCK), 'w') as f:
    f.write(f'{dead.pid} {socket.gethostname()}\n')
  with rundir.WorkdirLock(workdir):
    with open(os.path.join(workdir, rundir.LOCK)) as f:
      assert f.read().split()[0] == str(os.getpid())
  assert 'is gone; taking it over' in caplog.text
  with open(os.path.join(workdir, rundir.LOCK), 'w') as f:  # another host's lock is never stale
    f.write(f'{dead.pid} some-other-host\n')
  with pytest.raises(UserError, match='in use by process .* on some-other-host'):
    with rundir.WorkdirLock(workdir):
      pass


@pytest.mark.slow
def test_ctrl_c_checkpoints_the_current_step_and_the_rerun_resumes_there(real_mnist, tmp_path,
                                                                        caplog):
  workdir = str(tmp_path / 'run')
  args = [f'--workdir={workdir}', '--dataset=mnist', f'--data_dir={real_mnist["data_dir"]}',
          f'--raw_data_dir={real_mnist["raw_dir"]}', '--batch_size=64', '--num_train_steps=5000',
          '--checkpoint_every_steps=100000', '--eval_every_steps=100000', '--log_every_steps=5']
  proc = subprocess.Popen([sys.executable, '-m', 'experiments.lenet', *args], env=_env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 300
  while not (os.path.exists(metrics) and os.path.getsize(metrics)) and time.time() < deadline:
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    time.sleep(0.1)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr[-2000:]
  saved = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()]
  assert len(saved) == 1 and saved[0] >= 5
  assert f'interrupted: Ctrl-C at step {saved[0]}: checkpoint written to' in stderr
  assert not os.path.exists(os.path.join(workdir, rundir.LOCK))
  # The rerun (in this process: the interrupted one was the real program) goes on from there.
  with open(os.path.join(workdir, 'config.json')) as f:
    config = TrainConfig.from_json(f.read())
  with caplog.at_level(logging.INFO, logger='absl'):
    again = fit(config.replace(num_train_steps=saved[0] + 2, log_every_steps=1), workdir)
  assert again['step'] == saved[0] + 2
  assert f'resumed from step {saved[0]}' in caplog.text


@pytest.mark.slow
def test_a_checkpoint_write_that_fails_keeps_the_complete_ones_and_the_run_resumes(
    real_mnist, tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  workdir = str(tmp_path / 'run')
  real_save = ocp.CheckpointManager.save

  def full_disk_after_step_10(self, step, *args, **kwargs):
    if step > 10:
      raise OSError(28, 'No space left on device')
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_disk_after_step_10)
  with pytest.raises(UserError, match=r'writing the checkpoint at step 20 in .* failed \(No space '
                                      r'left on device\); the complete checkpoints \[10\] are intact'):
    fit(_lenet(real_mnist), workdir)
  assert not os.path.exists(os.path.join(workdir, rundir.LOCK))
  monkeypatch.setattr(ocp.CheckpointManager, 'save', real_save)
  results = fit(_lenet(real_mnist), workdir)  # resumes from step 10
  assert results['step'] == 20
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()) == [10, 20]


def test_a_save_killed_midway_leaves_only_a_temporary_folder_and_resume_takes_the_previous_step(
    tmp_path):
  """orbax writes a step under a temporary name and renames it when complete; what a kill -9
  in the middle leaves behind is never taken for a checkpoint."""
  import jax.numpy as jnp
  import optax
  from cvjax import models
  from cvjax.train.checkpoint import Checkpoints
  from cvjax.train.state import create_train_state
  import jax
  state = create_train_state(models.get_model('lenet5', num_classes=10), optax.sgd(0.1),
                             jax.random.PRNGKey(0), (1, 32, 32, 1))
  directory = str(tmp_path / 'checkpoints')
  ckpts = Checkpoints(directory, keep=5, async_save=False)
  for step in (1, 2):
    ckpts.save(step, state.replace(step=jnp.asarray(step)), {'step': step})
  ckpts.wait()
  ckpts.close()
  torn = tmp_path / 'checkpoints' / '3.orbax-checkpoint-tmp-1234567890'
  (torn / 'state').mkdir(parents=True)
  (torn / 'state' / 'partial').write_bytes(b'\x00' * 100)
  again = Checkpoints(directory, keep=5)
  assert again.all_steps() == [1, 2]
  restored, meta = again.restore_latest(state)
  assert meta == {'step': 2} and int(restored.step) == 2
  again.close()
