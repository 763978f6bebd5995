"""Fault injection: each test does the failure for real and checks what survives."""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
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


# ---- readers of a live run -------------------------------------------------------------

def _converted_lenet(workdir: str) -> str:
  """A workdir with one checkpoint (step 0) and no dataset: cvjax.convert's shape of run."""
  from cvjax import models
  from cvjax.pretrained import common
  from cvjax.tasks import get_task
  config = TrainConfig(model='lenet5', num_classes=10)
  shapes = common.model_shapes(models.get_model('lenet5', num_classes=10), 32, channels=1)
  return rundir.write_workdir(workdir, get_task(config, None),
                              {p: np.ones(s, np.float32) * 0.01 for p, s in shapes.items()}, {})


def _tree(directory) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, n), directory)
                for d, dirs, files in os.walk(directory) for n in dirs + files)


def test_restoring_a_live_run_creates_cleans_and_moves_nothing_in_it(tmp_path):
  """A notebook's `cvjax.restore` must not delete the save the training is writing."""
  import cvjax
  workdir = _converted_lenet(str(tmp_path / 'run'))
  in_progress = os.path.join(workdir, 'checkpoints', '7.orbax-checkpoint-tmp-1733000000')
  os.makedirs(os.path.join(in_progress, 'state'))
  with open(os.path.join(in_progress, 'state', 'being_written'), 'wb') as f:
    f.write(b'\0' * 64)
  before = _tree(workdir)
  restored = cvjax.restore(workdir)
  assert restored.step == 0
  assert _tree(workdir) == before


def test_a_reader_skips_a_damaged_newest_step_and_moves_nothing(tmp_path, caplog):
  import jax.numpy as jnp
  from cvjax.train.checkpoint import Checkpoints
  state = _lenet_state()
  directory = str(tmp_path / 'run' / 'checkpoints')
  ckpts = Checkpoints(directory, keep=5, async_save=False)
  for step in (1, 2):
    ckpts.save(step, state.replace(step=jnp.asarray(step)), {'step': step})
  ckpts.close()
  _damage(os.path.join(directory, '2'))
  before = _tree(str(tmp_path))
  reader = Checkpoints(directory, read_only=True)
  restored, meta = reader.restore_latest(state)
  assert meta == {'step': 1} and int(restored.step) == 1
  assert 'checkpoint at step 2 in' in caplog.text and 'cannot be restored' in caplog.text
  assert _tree(str(tmp_path)) == before
  with pytest.raises(UserError, match='opened read-only; only the run that holds'):
    reader.save(3, state, {'step': 3})


def _lenet_state():
  import jax
  import optax
  from cvjax import models
  from cvjax.train.state import create_train_state
  return create_train_state(models.get_model('lenet5', num_classes=10), optax.sgd(0.1),
                            jax.random.PRNGKey(0), (1, 32, 32, 1))


def _damage(step_dir: str) -> None:
  """Truncates every file of a checkpoint step to half its size (a torn copy, a bad disk)."""
  for d, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(d, name)
      size = os.path.getsize(path)
      with open(path, 'r+b') as f:
        f.truncate(size // 2)


def test_when_no_step_restores_the_writer_refuses_and_moves_nothing(tmp_path):
  import jax.numpy as jnp
  from cvjax.train.checkpoint import Checkpoints
  state = _lenet_state()
  directory = str(tmp_path / 'checkpoints')
  ckpts = Checkpoints(directory, keep=5, async_save=False)
  ckpts.save(1, state.replace(step=jnp.asarray(1)), {'step': 1})
  ckpts.close()
  _damage(os.path.join(directory, '1'))
  before = _tree(str(tmp_path))
  with pytest.raises(UserError, match=r'no checkpoint in .*checkpoints can be restored: step 1 '):
    Checkpoints(directory, keep=5).restore_latest(state)
  assert _tree(str(tmp_path)) == before


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_rerun_ends_as_an_undamaged_run(
    real_mnist, tmp_path):
  workdir = str(tmp_path / 'run')
  straight = fit(_lenet(real_mnist), str(tmp_path / 'straight'))
  fit(_lenet(real_mnist, num_train_steps=20), workdir)
  os.remove(os.path.join(workdir, 'results.json'))  # as if killed before the final evaluation
  _damage(os.path.join(workdir, 'checkpoints', '20'))
  again = fit(_lenet(real_mnist), workdir)     # resumes from 10 and writes step 20 anew
  for key in ('test_accuracy', 'test_loss', 'step', 'num_params'):
    assert again[key] == straight[key], key
  moved = os.listdir(os.path.join(workdir, 'damaged_checkpoints'))
  assert len(moved) == 1 and moved[0].startswith('20-')
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                if d.isdigit()) == [10, 20]
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    f.write('{"step": 2')  # torn by hand: a finished run's record that does not parse
  with pytest.raises(UserError, match=r'results.json is not JSON .*; re-run with --reevaluate'):
    fit(_lenet(real_mnist), workdir)
  assert fit(_lenet(real_mnist), workdir, reevaluate=True)['test_accuracy'] == straight['test_accuracy']


def test_an_empty_config_json_in_a_workdir_is_refused_naming_it(tmp_path):
  (tmp_path / 'config.json').write_text('')
  with pytest.raises(UserError, match=rf'{tmp_path}/config.json is empty; .*choose another --workdir'):
    rundir.read_config(str(tmp_path))


@pytest.mark.slow
def test_a_run_polled_by_restore_every_second_ends_as_an_unpolled_run(real_mnist, tmp_path):
  """The training checkpoints every 2 steps; a reader restores it (and draws its filters or
  curves) every second meanwhile."""
  import cvjax
  from cvjax import visualize
  workdir = str(tmp_path / 'polled')
  args = [f'--workdir={workdir}', '--dataset=mnist', f'--data_dir={real_mnist["data_dir"]}',
          f'--raw_data_dir={real_mnist["raw_dir"]}', '--batch_size=64', '--num_train_steps=80',
          '--checkpoint_every_steps=2', '--eval_every_steps=1000', '--log_every_steps=10',
          '--keep_checkpoints=2']
  proc = subprocess.Popen([sys.executable, '-m', 'experiments.lenet', *args], env=_env(),
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  polls, restored_steps = 0, set()
  deadline = time.time() + 600
  while proc.poll() is None and time.time() < deadline:
    if os.path.isdir(os.path.join(workdir, 'checkpoints')):
      try:
        restored_steps.add(cvjax.restore(workdir).step)
        polls += 1
      except UserError as e:  # before the first step is complete
        assert 'no restorable checkpoint' in str(e) or 'no config.json' in str(e), e
      else:  # and the pictures of it, as a notebook would draw them
        metrics = os.path.join(workdir, 'metrics.jsonl')
        what = 'curves' if os.path.exists(metrics) and os.path.getsize(metrics) else 'filters'
        assert visualize.main([f'--workdir={workdir}', f'--what={what}',
                               f'--out={tmp_path / "picture.png"}']) == 0
    time.sleep(1.0)
  _, stderr = proc.communicate(timeout=60)
  assert proc.returncode == 0, stderr[-3000:]
  assert polls >= 3 and len(restored_steps) >= 2, (polls, restored_steps)
  with open(os.path.join(workdir, 'results.json')) as f:
    polled = json.load(f)
  with open(os.path.join(workdir, 'config.json')) as f:
    config = TrainConfig.from_json(f.read())
  unpolled = fit(config, str(tmp_path / 'unpolled'))
  for key in ('test_accuracy', 'test_loss', 'step', 'num_params'):
    assert polled[key] == unpolled[key], key


# ---- the workdir lock --------------------------------------------------------------------

def _dead_pid() -> int:
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  return dead.pid


# Run in a small process of its own (only cvjax.locking, no JAX): forking the test process
# itself would copy its whole address space 100 times a round.
STARTERS = r'''
import os, socket, subprocess, sys
from cvjax.errors import UserError
from cvjax.locking import LOCK, WorkdirLock
workdir, starters, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(rounds):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  with open(os.path.join(workdir, LOCK), 'w') as f:   # a stale lock: its process is gone
    f.write(f'{dead.pid} {socket.gethostname()}\n')
  go_r, go_w = os.pipe()
  done_r, done_w = os.pipe()
  out_r, out_w = os.pipe()
  children = []
  for _ in range(starters):
    pid = os.fork()
    if pid == 0:
      status = 0
      try:
        os.close(go_w)
        os.close(done_w)
        os.read(go_r, 1)            # blocks until the parent closes go_w: all start at once
        try:
          with WorkdirLock(workdir):
            os.write(out_w, b'H')
            os.read(done_r, 1)      # holds the lock until everyone has answered
        except UserError:
          os.write(out_w, b'R')
      except BaseException:
        status = 1
      finally:
        os._exit(status)
    children.append(pid)
  os.close(go_w)
  answers = b''
  while len(answers) < starters:
    answers += os.read(out_r, starters)
  os.close(done_w)
  statuses = [os.waitpid(pid, 0)[1] for pid in children]
  for fd in (go_r, done_r, out_r, out_w):
    os.close(fd)
  print(answers.count(b'H'), answers.count(b'R'), sum(s != 0 for s in statuses),
        int(os.path.exists(os.path.join(workdir, LOCK))), flush=True)
'''


def test_of_100_runs_started_together_on_a_stale_lock_exactly_one_holds_it(tmp_path):
  """Each child waits at a barrier, then all try the lock at once; the holder keeps it until
  the parent has heard from all 100. Five rounds, a new stale lock each."""
  done = subprocess.run([sys.executable, '-c', STARTERS, str(tmp_path), '100', '5'], env=_env(),
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  rounds = [tuple(int(v) for v in line.split()) for line in done.stdout.splitlines()]
  # (holders, refused, children that failed, lock file left) in each round
  assert rounds == [(1, 99, 0, 0)] * 5, rounds


@pytest.mark.parametrize('content', [b'', b'\0\0\xff garbage', b'not-a-pid\n'])
def test_an_empty_or_unreadable_lock_is_taken_over_as_stale(tmp_path, content, caplog):
  path = os.path.join(str(tmp_path), rundir.LOCK)
  with open(path, 'wb') as f:
    f.write(content)
  with rundir.WorkdirLock(str(tmp_path)):
    with open(path) as f:
      assert f.read() == f'{os.getpid()} {socket.gethostname()}\n'
  assert not os.path.exists(path)


def test_a_lock_that_cannot_be_written_is_one_error_and_leaves_no_lock(tmp_path, monkeypatch):
  def full(*_):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(os, 'pwrite', full)
  with pytest.raises(UserError, match=r'cannot write the lock file .*\.lock \(No space left on '
                                      r'device\); free space or choose a writable --workdir'):
    with rundir.WorkdirLock(str(tmp_path)):
      pass
  assert not os.path.exists(os.path.join(str(tmp_path), rundir.LOCK))


# ---- stop signals --------------------------------------------------------------------------

def _lenet_args(real_mnist, workdir, *extra):
  return [sys.executable, '-m', 'experiments.lenet', f'--workdir={workdir}', '--dataset=mnist',
          f'--data_dir={real_mnist["data_dir"]}', f'--raw_data_dir={real_mnist["raw_dir"]}',
          '--batch_size=64', *extra]


def _error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith('error:')]


def _wait_until_it_handles_sigint(proc, timeout=120):
  """Returns once `proc` has a handler for SIGINT (its SigCgt mask in /proc)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    with open(f'/proc/{proc.pid}/status') as f:
      caught = next(int(line.split()[1], 16) for line in f if line.startswith('SigCgt:'))
    if caught & (1 << (signal.SIGINT - 1)):
      return
    assert proc.poll() is None
    time.sleep(0.01)
  raise AssertionError('the program installed no SIGINT handler')


@pytest.mark.slow
@pytest.mark.parametrize('after', [0.3, 3.0])
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(real_mnist, tmp_path, after):
  """Whether it lands in the imports, the data or the compilation: `after` seconds from when
  the program handles SIGINT (an xdist worker starts it with SIGINT ignored, and under load
  Python's own start-up alone can take longer than a fixed delay)."""
  workdir = str(tmp_path / 'run')
  proc = subprocess.Popen(_lenet_args(real_mnist, workdir, '--num_train_steps=100000',
                                      '--log_every_steps=1'), env=_env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_until_it_handles_sigint(proc)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
  finally:
    proc.kill()  # a failed run must not go on training behind the suite
  assert proc.returncode == 130, stderr[-3000:]
  assert 'Traceback' not in stderr, stderr[-3000:]
  assert 'interrupted' in stderr
  assert not os.path.exists(os.path.join(workdir, rundir.LOCK))


@pytest.mark.slow
def test_two_quick_ctrl_cs_exit_130_at_once_without_a_traceback(real_mnist, tmp_path):
  workdir = str(tmp_path / 'run')
  proc = subprocess.Popen(_lenet_args(real_mnist, workdir, '--num_train_steps=100000',
                                      '--log_every_steps=1'), env=_env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 300
  while not (os.path.exists(metrics) and os.path.getsize(metrics)) and time.time() < deadline:
    assert proc.poll() is None
    time.sleep(0.1)
  proc.send_signal(signal.SIGINT)
  time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr[-3000:]
  assert 'Traceback' not in stderr and 'Exception ignored' not in stderr, stderr[-3000:]


@pytest.mark.slow
def test_sigterm_in_the_final_evaluation_stops_cleanly_and_the_rerun_evaluates(
    real_mnist, tmp_path, monkeypatch):
  """eval_split='train' makes the test split's evaluation the one after the loop."""
  from cvjax.errors import Preempted
  from cvjax.tasks.classification import ClassificationTask
  config = _lenet(real_mnist, eval_split='train')
  straight = fit(config, str(tmp_path / 'straight'))
  real_eval_batches = ClassificationTask.eval_batches

  def terminated_in_test(self, sharding, split):
    for i, batch in enumerate(real_eval_batches(self, sharding, split)):
      if split == 'test' and i == 1:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  workdir = str(tmp_path / 'run')
  monkeypatch.setattr(ClassificationTask, 'eval_batches', terminated_in_test)
  with pytest.raises(Preempted, match=r'SIGTERM during the evaluation on test: the checkpoint of '
                                      r'step 20 is kept; re-run the same command to evaluate it'):
    fit(config, workdir)
  assert not os.path.exists(os.path.join(workdir, rundir.LOCK))
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  monkeypatch.setattr(ClassificationTask, 'eval_batches', real_eval_batches)
  again = fit(config, workdir)
  for key in ('test_accuracy', 'test_loss', 'step'):
    assert again[key] == straight[key], key


# ---- a filesystem that refuses writes --------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
  """mount(size) -> a fresh tmpfs of `size` (e.g. '2m') under tmp_path; unmounted after.
  Skips where this process may not mount (the injected-error tests cover those machines)."""
  mounted = []

  def mount(size: str, name: str = 'fs') -> str:
    path = str(tmp_path / name)
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', path],
                          capture_output=True, text=True, check=False)
    if done.returncode:
      pytest.skip(f'cannot mount a tmpfs here ({done.stderr.strip()})')
    mounted.append(path)
    return path

  yield mount
  for path in mounted:
    subprocess.run(['umount', '-l', path], check=False)


def _remount(path: str, options: str) -> None:
  subprocess.run(['mount', '-o', f'remount,{options}', path], check=True)


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_is_one_error_line_and_the_rerun_ends_as_usual(
    real_mnist, tmp_path, small_tmpfs):
  disk = small_tmpfs('2m')
  workdir = os.path.join(disk, 'run')
  args = _lenet_args(real_mnist, workdir, '--num_train_steps=20', '--checkpoint_every_steps=5',
                     '--eval_every_steps=1000', '--log_every_steps=5', '--keep_checkpoints=10')
  started = time.time()
  full = subprocess.run(args, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert full.returncode == 2, full.stderr[-3000:]
  assert time.time() - started < 120
  assert 'Traceback' not in full.stderr, full.stderr[-3000:]
  (line,) = _error_lines(full.stderr)
  import re
  found = re.fullmatch(r'error: writing the checkpoint at step (\d+) in (\S+) failed \(No space left '
                       r'on device\); the complete checkpoints \[([\d, ]*)\] are intact: free space '
                       r'or fix the directory, then re-run to resume', line)
  assert found, line
  intact = [int(s) for s in found[3].split(', ') if s]
  assert intact and int(found[1]) == intact[-1] + 5
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
                if d.isdigit()) == intact
  assert not os.path.exists(os.path.join(workdir, rundir.LOCK))
  _remount(disk, 'size=256m')
  with open(os.path.join(workdir, 'config.json')) as f:
    config = TrainConfig.from_json(f.read())
  resumed = fit(config, workdir)   # the same command's run, in this process
  straight = fit(config, str(tmp_path / 'straight'))
  for key in ('test_accuracy', 'test_loss', 'step'):
    assert resumed[key] == straight[key], key


@pytest.mark.slow
def test_a_read_only_checkpoint_folder_names_the_step_it_could_not_write_and_exits_at_once(
    real_mnist, tmp_path, small_tmpfs):
  import shutil
  workdir = str(tmp_path / 'run')
  args = _lenet_args(real_mnist, workdir, '--checkpoint_every_steps=5', '--eval_every_steps=1000',
                     '--log_every_steps=5', '--keep_checkpoints=10')
  first = subprocess.run(args + ['--num_train_steps=10'], env=_env(), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-3000:]
  checkpoints = os.path.join(workdir, 'checkpoints')   # the same files, on a tmpfs made read-only
  os.rename(checkpoints, str(tmp_path / 'written'))
  small_tmpfs('64m', name='run/checkpoints')
  shutil.copytree(str(tmp_path / 'written'), checkpoints, dirs_exist_ok=True)
  _remount(checkpoints, 'ro')
  started = time.time()
  refused = subprocess.run(args + ['--num_train_steps=20'], env=_env(), cwd=REPO,
                           capture_output=True, text=True, timeout=300)
  assert refused.returncode == 2, refused.stderr[-3000:]
  assert time.time() - started < 120
  assert 'Traceback' not in refused.stderr, refused.stderr[-3000:]
  assert _error_lines(refused.stderr) == [
      f'error: writing the checkpoint at step 15 in {checkpoints} failed (Read-only file system); '
      'the complete checkpoints [5, 10] are intact: free space or fix the directory, then re-run '
      'to resume']
  _remount(checkpoints, 'rw')
  with open(os.path.join(workdir, 'config.json')) as f:
    assert fit(TrainConfig.from_json(f.read()), workdir)['step'] == 20


def test_a_tensorstore_write_error_is_a_checkpoint_write_error_naming_its_step(tmp_path,
                                                                               monkeypatch):
  """Where no tmpfs can be mounted: orbax/tensorstore report ENOSPC as a ValueError."""
  import jax.numpy as jnp
  import orbax.checkpoint as ocp
  from cvjax.errors import CheckpointWriteError
  from cvjax.train.checkpoint import Checkpoints
  state = _lenet_state()
  ckpts = Checkpoints(str(tmp_path / 'checkpoints'), keep=5, async_save=False)
  ckpts.save(1, state.replace(step=jnp.asarray(1)), {'step': 1})

  def refused(self, step, *args, **kwargs):
    raise ValueError('RESOURCE_EXHAUSTED: Error writing "params.x/0" in OCDBT database: Failed '
                     "to write 1024 bytes to file 4: No space left on device [os_error_code='28']")
  monkeypatch.setattr(ocp.CheckpointManager, 'save', refused)
  with pytest.raises(CheckpointWriteError, match=r'at step 2 in .* failed \(No space left on '
                                                 r'device\); the complete checkpoints \[1\] are'):
    ckpts.save(2, state.replace(step=jnp.asarray(2)), {'step': 2})
  ckpts.wait()   # after a failure: returns at once
  ckpts.close()

  def a_bug(self, step, *args, **kwargs):
    raise ValueError('a tree mismatch, not a filesystem error')
  monkeypatch.setattr(ocp.CheckpointManager, 'save', a_bug)
  with pytest.raises(ValueError, match='a tree mismatch'):
    Checkpoints(str(tmp_path / 'other'), keep=5, async_save=False).save(1, state, {'step': 1})


# ---- sweeps ----------------------------------------------------------------------------------

SLOW_EXPERIMENT = r'''
import json, os, sys, time
flagfile = [a.split('=', 1)[1] for a in sys.argv[1:] if a.startswith('--flagfile=')][0]
flags = dict(l.strip()[2:].split('=', 1) for l in open(flagfile) if l.startswith('--'))
time.sleep(float(flags.get('sleep', 0)))
with open(os.path.join(flags['workdir'], 'results.json'), 'w') as f:
  json.dump({'step': int(flags['num_train_steps']), 'test_accuracy': float(flags['learning_rate']),
             'test_loss': 0.0, 'train_seconds': 1.0, 'images_per_second': 1.0}, f)
'''


@pytest.mark.slow
def test_a_second_sweep_on_a_busy_sweep_directory_is_refused_and_the_first_reports_its_own(
    tmp_path):
  (tmp_path / 'slow_experiment.py').write_text(SLOW_EXPERIMENT)
  env = {**_env(), 'PYTHONPATH': f'{REPO}{os.pathsep}{tmp_path}', 'CUDA_VISIBLE_DEVICES': ''}
  root = tmp_path / 'sweep'

  def sweep(*extra):
    return [sys.executable, '-m', 'launch.sweep', '--experiment=slow_experiment',
            f'--workdir={root}', '--nocheck_flags', '--grid=learning_rate=0.1,0.01', *extra]
  first = subprocess.Popen(sweep('--num_train_steps=100', '--sleep=4'), cwd=str(tmp_path),
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 60
  while not (root / 'sweep.json').exists() and time.time() < deadline:
    time.sleep(0.05)
  for extra in (['--num_train_steps=150', '--sleep=4'], ['--num_train_steps=100', '--sleep=4']):
    second = subprocess.run(sweep(*extra), cwd=str(tmp_path), env=env, capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 2 and second.stdout == '', second.stdout + second.stderr
    assert second.stderr.strip().splitlines() == [
        f'error: {root} is in use by process {first.pid} on {socket.gethostname()}; wait for '
        'it to finish or choose another --workdir']
  out, err = first.communicate(timeout=120)
  assert first.returncode == 0, out + err
  for trial in ('lr=0.1', 'lr=0.01'):
    assert json.loads((root / trial / 'results.json').read_text())['step'] == 100
    assert '--num_train_steps=100' in (root / trial / 'trial.flags').read_text()
  assert not (root / '.sweep.lock').exists()


@pytest.mark.slow
def test_a_full_disk_at_start_is_one_error_line_and_leaves_no_lock(real_mnist, tmp_path,
                                                                   small_tmpfs):
  disk = small_tmpfs('2m')
  filler = os.path.join(disk, 'filler')
  with open(filler, 'wb', buffering=0) as f:   # fill it up
    try:
      while True:
        f.write(b'\0' * 4096)
    except OSError:
      pass
  workdir = os.path.join(disk, 'run')
  args = _lenet_args(real_mnist, workdir, '--num_train_steps=10', '--eval_every_steps=1000',
                     '--log_every_steps=5')
  full = subprocess.run(args, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert full.returncode == 2, full.stderr[-3000:]
  assert 'Traceback' not in full.stderr, full.stderr[-3000:]
  (line,) = _error_lines(full.stderr)
  assert 'No space left on device' in line and 'free space' in line, line
  assert not os.path.exists(os.path.join(workdir, rundir.LOCK))
  os.remove(filler)
  again = subprocess.run(args, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]


def test_a_reader_of_a_live_run_leaves_out_the_metrics_line_being_written(tmp_path):
  from cvjax import visualize
  complete = '{"step": 1, "train_loss": 2.0}\n{"step": 2, "train_loss": 1.5}\n'
  for cut in range(1, 30):   # the writer is somewhere inside the third line
    (tmp_path / 'metrics.jsonl').write_text(complete + '{"step": 3, "train_loss": 1.25}'[:cut])
    assert [r['step'] for r in visualize.read_metrics(str(tmp_path))] == [1, 2], cut
  (tmp_path / 'metrics.jsonl').write_text(complete + '{"step": 3,\n{"step": 4}\n')
  with pytest.raises(UserError, match=r'metrics.jsonl line 3 is not JSON'):
    visualize.read_metrics(str(tmp_path))
