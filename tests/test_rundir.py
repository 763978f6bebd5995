"""The run-directory contract: a workdir holds one run, never silently mixed, relabelled or lost."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cvjax.errors import UserError
from cvjax.tasks import fit
from cvjax.train import TrainConfig, rundir
from cvjax.train.task import image_batches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
  env = dict(os.environ)
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  return env


def _lenet(real_mnist=None, **changes):
  base = dict(model='lenet5', model_kwargs={'activation': 'relu', 'pooling': 'max'},
              dataset='mnist', batch_size=64, num_train_steps=20, optimizer='adam',
              learning_rate=2e-3, log_every_steps=10, eval_every_steps=20,
              checkpoint_every_steps=10, seed=0)
  if real_mnist:
    base.update(data_dir=real_mnist['data_dir'], raw_data_dir=real_mnist['raw_dir'])
  base.update(changes)
  return TrainConfig(**base)


def _fake_run(workdir, config: TrainConfig) -> dict[str, str]:
  """A workdir as a finished run leaves it (config, metrics, results, a checkpoint dir)."""
  os.makedirs(os.path.join(workdir, 'checkpoints', '200'))
  files = {'config.json': config.to_json(), 'metrics.jsonl': '{"step": 200}\n',
           'results.json': '{"step": 200, "test_accuracy": 0.9}'}
  for name, text in files.items():
    with open(os.path.join(workdir, name), 'w') as f:
      f.write(text)
  return files


def _contents(workdir, files):
  out = {}
  for name in files:
    with open(os.path.join(workdir, name)) as f:
      out[name] = f.read()
  return out


# --- identity on resume


def test_resuming_with_another_model_is_refused_field_by_field_and_nothing_is_rewritten(tmp_path):
  workdir = str(tmp_path / 'run')
  files = _fake_run(workdir, TrainConfig(model='resnet20', dataset='cifar10', batch_size=128))
  with pytest.raises(UserError) as e:
    fit(_lenet(), workdir)
  message = str(e.value)
  assert 'model: resnet20 → lenet5' in message
  assert 'dataset: cifar10 → mnist' in message and 'batch_size: 128 → 64' in message
  assert '--set_aside' in message and 'new --workdir' in message
  assert _contents(workdir, files) == files and os.listdir(os.path.join(workdir, 'checkpoints')) == ['200']
  assert not os.path.exists(os.path.join(workdir, rundir.LOCK))  # released after refusing


def test_resuming_with_other_model_options_is_refused_not_mixed(tmp_path):
  workdir = str(tmp_path / 'run')
  files = _fake_run(workdir, _lenet())
  changed = _lenet(model_kwargs={'activation': 'tanh', 'pooling': 'avg'})
  with pytest.raises(UserError, match=r'model_kwargs: activation=relu,pooling=max → '
                                      r'activation=tanh,pooling=avg'):
    fit(changed, workdir)
  assert _contents(workdir, files) == files


def test_length_intervals_and_devices_may_change_on_resume_but_nothing_else():
  old = _lenet()
  longer = old.replace(num_train_steps=400, eval_every_steps=50, num_devices=1, conv_impl='xla')
  assert set(rundir.differences(old, longer)) == {'num_train_steps', 'eval_every_steps',
                                                  'num_devices', 'conv_impl'}
  assert set(rundir.differences(old, longer)) <= TrainConfig.resumable_fields()
  for identity in ('model', 'model_kwargs', 'dataset', 'image_size', 'augment', 'batch_size',
                   'optimizer', 'learning_rate', 'schedule', 'weight_decay', 'half_precision',
                   'freeze', 'init_from', 'seed', 'task', 'grad_accum_steps', 'remat'):
    assert identity not in TrainConfig.resumable_fields(), identity


def test_set_aside_moves_the_old_run_to_a_sibling_and_keeps_every_file(tmp_path):
  workdir = str(tmp_path / 'run')
  files = _fake_run(workdir, TrainConfig(model='resnet20'))
  with rundir.WorkdirLock(workdir):
    moved = rundir.set_aside(workdir)
    assert os.listdir(workdir) == [rundir.LOCK]
  assert os.path.dirname(moved) == str(tmp_path) and os.path.basename(moved).startswith('run.old-')
  assert _contents(moved, files) == files and os.listdir(os.path.join(moved, 'checkpoints')) == ['200']
  assert rundir.check_identity(workdir, _lenet()) == {}  # the workdir is free for the new run


# --- one live run per workdir


# --- command-line errors: one line, exit 2, no traceback


def _run_cli(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'experiments.lenet', *args], env=_env(),
                        cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc):
  lines = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(lines) >= 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  return lines[0]


def test_a_workdir_that_is_a_file_is_one_error_line(tmp_path):
  existing = tmp_path / 'notes.txt'
  existing.write_text('keep me')
  line = _one_error_line(_run_cli(f'--workdir={existing}'))
  assert line == f'error: --workdir={existing} is an existing file, not a directory; choose another --workdir'
  assert existing.read_text() == 'keep me'


def test_a_workdir_that_cannot_be_created_is_one_error_line():
  line = _one_error_line(_run_cli('--workdir=/proc/cvjax/run'))
  assert line.startswith('error: --workdir=/proc/cvjax/run cannot be created (')


@pytest.mark.parametrize('flag, expected', [
    ('--learning_rate=abc', "error: flag --learning_rate=abc: could not convert string to float: 'abc'"),
    ('--lerning_rate=0.1', 'did you mean: learning_rate'),
])
def test_flag_parse_errors_are_one_line_and_exit_2(flag, expected):
  line = _one_error_line(_run_cli(flag))
  assert expected.lower() in line.lower()


def test_helpshort_lists_the_experiments_flags():
  proc = _run_cli('--helpshort')
  assert proc.returncode == 0
  for flag in ('--learning_rate', '--model', '--workdir', '--[no]set_aside', '--conv_impl'):
    assert flag in proc.stdout


@pytest.mark.slow
def test_the_default_runs_model_kwargs_reach_another_model_unless_cleared(real_mnist, tmp_path):
  """experiments.lenet's default flagfile gives LeNet's model_kwargs (activation, pooling):
  --model=resnet20 over it is refused naming the option; with --model_kwargs= the run gets as
  far as the model (here refused by an unmatched --freeze on purpose)."""
  data = [f'--data_dir={real_mnist["data_dir"]}', f'--raw_data_dir={real_mnist["raw_dir"]}']
  kept = _run_cli('--model=resnet20', '--dataset=mnist', *data, f'--workdir={tmp_path / "kept"}')
  assert "model 'resnet20' has no option 'activation'" in _one_error_line(kept)
  proc = _run_cli('--model=resnet20', '--model_kwargs=', '--dataset=mnist', *data,
                  '--freeze=^no_such_layer', f'--workdir={tmp_path / "run"}')
  line = _one_error_line(proc)
  assert line.startswith("error: freeze='^no_such_layer' matches no parameter of CifarResNet")


def test_restoring_a_missing_path_says_it_is_missing(tmp_path):
  import cvjax
  with pytest.raises(UserError, match=f'^{tmp_path / "nope"} does not exist$'):
    cvjax.restore(str(tmp_path / 'nope'))
  with pytest.raises(UserError, match='has no config.json; is it a cvjax workdir'):
    cvjax.restore(str(tmp_path))


# --- predict's input


def test_predict_input_errors_say_what_they_got_and_want():
  with pytest.raises(UserError, match=r'looks like \[B, C, H, W\]: pass images.transpose\(0, 2, 3, 1\)'):
    image_batches(np.zeros((2, 3, 28, 28), np.uint8))
  with pytest.raises(UserError, match=r'wants uint8 pixels \(0-255\), got float32'):
    image_batches(np.zeros((2, 28, 28, 1), np.float32))
  with pytest.raises(UserError, match=r'got shape \[28, 28\]'):
    image_batches(np.zeros((28, 28), np.uint8))
  mixed = [np.zeros((28, 28, 1), np.uint8), np.zeros((28, 28, 1), np.uint8),
           np.zeros((40, 30, 1), np.uint8)]
  assert [b.shape for b in image_batches(mixed)] == [(2, 28, 28, 1), (1, 40, 30, 1)]


# --- finished runs, longer runs, Ctrl-C (real training)


@pytest.mark.slow
def test_a_finished_run_rerun_reports_its_results_and_rewrites_nothing(real_mnist, tmp_path):
  workdir = str(tmp_path / 'run')
  first = fit(_lenet(real_mnist), workdir)
  path = os.path.join(workdir, 'results.json')
  with open(path) as f:
    written = f.read()
  mtime = os.stat(path).st_mtime_ns
  again = fit(_lenet(real_mnist), workdir)
  assert again == json.loads(written) and again['images_per_second'] == first['images_per_second']
  assert os.stat(path).st_mtime_ns == mtime
  longer = fit(_lenet(real_mnist, num_train_steps=30, eval_every_steps=30), workdir)
  assert longer['step'] == 30
  with open(os.path.join(workdir, 'config_history.jsonl')) as f:
    history = [json.loads(line) for line in f]
  assert history == [{'step': 20, 'changed': {'num_train_steps': [20, 30],
                                              'eval_every_steps': [20, 30]}}]
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['num_train_steps'] == 30
  steps = [json.loads(line)['step'] for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert steps == sorted(steps) and steps.count(20) == 2  # train and eval lines, once each


@pytest.mark.slow
def test_restore_needs_only_the_workdir_and_resuming_says_it_needs_the_data(
    real_mnist, tmp_path, monkeypatch):
  """config.json records what the dataset resolved (classes, names, input, normalisation):
  with the run's TFDS data_dir deleted, restore predicts as training measured without
  reading or preparing the dataset and without building an optimizer; resuming and
  --reevaluate still need the data and say so in one line."""
  import shutil

  import tensorflow_datasets as tfds

  import cvjax
  from cvjax import data
  from cvjax.data import prepare
  from cvjax.tasks.classification import ClassificationTask
  from cvjax.train import optim
  from cvjax.train import run as train_run

  data_dir = str(tmp_path / 'tfds')  # the run's own copy: the session's stays
  shutil.copytree(real_mnist['data_dir'], data_dir)
  config = _lenet(data_dir=data_dir, num_train_steps=10, eval_every_steps=10,
                  checkpoint_every_steps=10)
  workdir = str(tmp_path / 'run')
  results = fit(config, workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    written = json.load(f)
  assert written['resolved'] == {
      'num_classes': 10, 'class_names': [str(d) for d in range(10)], 'image_size': 32,
      'channels': 1, 'preprocessing': 'normalize((0.1307,), (0.3081,))'}
  assert rundir.read_config(workdir) == config  # the record is no TrainConfig field

  shutil.rmtree(data_dir)

  def refused(what):
    def fail(*args, **kwargs):
      raise AssertionError(f'restore called {what}')
    return fail
  for owner, name in ((prepare, 'prepared_builder'), (prepare, 'dataset_meta'),
                      (data, 'dataset_meta'), (tfds, 'builder'), (optim, 'make_optimizer'),
                      (train_run, 'build_run')):
    monkeypatch.setattr(owner, name, refused(f'{owner.__name__}.{name}'))
  monkeypatch.setattr(ClassificationTask, 'dataset_meta', classmethod(refused('dataset_meta')))
  restored = cvjax.restore(workdir)
  assert restored.step == 10 and restored.class_names == [str(d) for d in range(10)]
  probs = restored.predict(real_mnist['test_images'])
  accuracy = float(np.mean(probs.argmax(-1) == real_mnist['test_labels']))
  assert accuracy == pytest.approx(results['test_accuracy'], abs=1e-3)
  assert not os.path.exists(data_dir)
  monkeypatch.undo()

  # Raw files that are not there either: building the dataset again fails, in one line.
  empty = tmp_path / 'no_raw_files'
  empty.mkdir()
  longer = config.replace(num_train_steps=20, raw_data_dir=str(empty))  # resumable fields
  with pytest.raises(UserError) as resumed:
    fit(longer, workdir)
  with pytest.raises(UserError) as reevaluated:
    fit(config.replace(raw_data_dir=str(empty)), workdir, reevaluate=True)
  for error, doing in ((resumed, 'resuming'), (reevaluated, 're-evaluating')):
    message = str(error.value)
    assert message.startswith(f"{doing} the run in {workdir} needs its dataset 'mnist'")
    assert 'lacks the raw files of mnist' in message and '\n' not in message
  assert json.load(open(os.path.join(workdir, 'config.json')))['num_train_steps'] == 10

  # A workdir from before the record falls back to the dataset's facts: it needs the data.
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.replace(raw_data_dir=str(empty)).to_json())
  with pytest.raises(UserError, match='lacks the raw files of mnist'):
    cvjax.restore(workdir)
