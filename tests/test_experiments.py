"""The experiment programs as a user runs them: kill -9 and resume, SIGTERM, bad input; and
their one config source: the flagfiles in experiments/configs/ over TrainConfig's defaults."""
import glob
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from absl import flags

from cvjax.models import list_models, model_options
from cvjax.tasks import fit
from cvjax.train import TrainConfig
from cvjax.train.checkpoint import Checkpoints
from experiments import common, lenet, transfer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = sorted(glob.glob(os.path.join(REPO, 'experiments', 'configs', '*.flags')))
# The default run (`make demo`, README "Results": test accuracy 0.9059 on Fashion-MNIST).
DEMO = TrainConfig(model='lenet5', model_kwargs={'activation': 'relu', 'pooling': 'max'},
                   dataset='fashion_mnist', batch_size=128, num_epochs=10.0, optimizer='adam',
                   learning_rate=2e-3, schedule='cosine')


def _parse(program, argv):
  """(TrainConfig, --workdir) of `python -m experiments.<program> *argv`, without running it:
  the shared flags, the run flags, the program's own, and its default flagfile."""
  values = flags.FlagValues()
  common.define_config_flags('experiments', values)
  common.define_run_flags('experiments', values)
  if program == 'transfer':
    transfer.define_flags(values)
  default = lenet.DEFAULT_FLAGFILE if program == 'lenet' else None
  values(common.with_default_flagfile([program, *argv], default))
  return common.config_from_flags(values), values.workdir


def test_the_default_run_is_the_demo_flagfile_over_trainconfig_defaults():
  assert _parse('lenet', []) == (DEMO, None)   # workdir: runs/lenet5_fashion_mnist
  assert _parse('lenet', ['--dataset=mnist', '--num_epochs=3']) == (
      DEMO.replace(dataset='mnist', num_epochs=3.0), None)
  classic = os.path.join(REPO, 'experiments/configs/lenet_classic_mnist.flags')
  assert _parse('lenet', [f'--flagfile={classic}']) == (TrainConfig(   # replaces the default
      model='lenet5', model_kwargs={'activation': 'tanh', 'pooling': 'avg'}, dataset='mnist',
      batch_size=128, num_epochs=10.0, optimizer='momentum', learning_rate=0.05,
      schedule='cosine'), 'runs/lenet5_classic_mnist')
  for program in ('resnet', 'vgg', 'models', 'ssd', 'transfer'):   # no defaults of their own
    assert _parse(program, []) == (TrainConfig(), None), program


@pytest.mark.parametrize('path', FLAGFILES, ids=os.path.basename)
def test_every_flagfile_states_its_command_and_result_and_parses_to_a_valid_config(path):
  with open(path) as f:
    lines = f.read().splitlines()
  comments = lines[:next(i for i, line in enumerate(lines) if line.startswith('--'))]
  assert comments and all(line.startswith('#') for line in comments), path
  command = next(line for line in comments if line.startswith('# python -m experiments.'))
  program = re.match(r'# python -m experiments\.(\w+) ', command)[1]
  assert f' --flagfile=experiments/configs/{os.path.basename(path)}' in command, command
  assert importlib.util.find_spec(f'experiments.{program}'), command
  assert re.search(r'[Ee]xpect|measured|Results|Reference', ' '.join(comments)), path
  config, _ = _parse(program, [f'--flagfile={path}'])
  config.validate()
  assert config.model in list_models(None)
  assert set(config.model_kwargs) <= set(model_options(config.model)), config.model_kwargs


def test_the_yolo_flagfile_anchors_parse_to_nine_width_height_pairs():
  config, _ = _parse('yolo', [f'--flagfile={REPO}/experiments/configs/yolov3_shapes_cpu.flags'])
  anchors = config.model_kwargs['anchors']
  assert isinstance(anchors, tuple) and len(anchors) == 18
  assert (anchors[0], anchors[1], anchors[-1]) == (0.0790, 0.0894, 0.3776)


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
    config = TrainConfig.from_json(f.read())
  # The program read its default flagfile (the demo) under the command line's flags.
  assert config == DEMO.replace(dataset='mnist', data_dir=real_mnist['data_dir'],
                                raw_data_dir=real_mnist['raw_dir'], batch_size=64,
                                num_train_steps=30, checkpoint_every_steps=5, eval_every_steps=15,
                                log_every_steps=10, keep_checkpoints=20)
  fit(config, straight)
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
    'malformed_model_kwargs': (['--model_kwargs=activation:relu'],
                               "error: model_kwargs item 'activation:relu' is not key=value"),
}


@pytest.mark.slow
def test_bad_input_gives_one_clear_line_and_a_nonzero_exit_without_traceback(real_mnist, tmp_path):
  procs = {}
  for name, (args, _) in BAD_INPUTS.items():  # in parallel: each start-up costs seconds
    command = _command(real_mnist, str(tmp_path / name), *args)
    procs[name] = subprocess.Popen(command, env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
  for name, proc in procs.items():
    _, stderr = proc.communicate(timeout=300)
    expected = BAD_INPUTS[name][1]
    assert proc.returncode != 0, name
    assert 'Traceback' not in stderr, f'{name}: {stderr[-3000:]}'
    assert expected in stderr, f'{name}: {stderr[-3000:]}'
    assert not os.path.exists(tmp_path / name / 'checkpoints'), name
