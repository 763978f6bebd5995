"""launch/: sweep expansion, the local queue, SLURM scripts, summaries, and multi-host equality.

The fast tests drive the launcher with a stand-in experiment (a few lines of Python that
read their trial.flags); the slow ones run the real LeNet experiment on real MNIST digits.
"""
import csv
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from cvjax.errors import UserError
from launch import local, slurm, space, summarize
from launch import trials as trials_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A stand-in experiment: reads its trial.flags like absl would (later lines win), sleeps
# --sleep seconds (or $FAKE_SLEEP), fails like cvjax does for learning_rate <= 0, handles
# SIGTERM like `fit` (exit 143), and writes results.json whose accuracy peaks at learning_rate 0.01.
FAKE_EXPERIMENT = r'''
import json, math, os, signal, sys, time
flagfile = [a.split('=', 1)[1] for a in sys.argv[1:] if a.startswith('--flagfile=')][0]
lines = [l.strip() for l in open(flagfile) if l.strip() and not l.startswith('#')]
flags = dict(l[2:].split('=', 1) for l in lines)
workdir = flags['workdir']
sleep = float(os.environ.get('FAKE_SLEEP', flags.get('sleep', 0)))
def term(*_):
  print('preempted: SIGTERM at step 3: checkpoint written', file=sys.stderr)
  sys.exit(143)
signal.signal(signal.SIGTERM, term)
with open(os.path.join(workdir, 'events.txt'), 'a') as f:
  f.write(f'{time.time()} {time.time() + sleep}\n')
print('training', flush=True)
time.sleep(sleep)
lr = float(flags['learning_rate'])
if lr <= 0:
  print(f'error: learning_rate must be positive, got {lr}', file=sys.stderr)
  sys.exit(2)
accuracy = 0.9 - 0.1 * abs(math.log10(lr / 0.01)) - 0.001 * int(flags.get('batch_size', 0)) / 32
with open(os.path.join(workdir, 'results.json'), 'w') as f:
  json.dump({'step': int(flags.get('num_train_steps', 1)), 'test_accuracy': accuracy,
             'test_loss': 1 - accuracy, 'train_seconds': 1.0, 'images_per_second': 100.0}, f)
'''


def _env(**extra):
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([REPO, *extra.pop('paths', []), env.get('PYTHONPATH', '')])
  env.update(extra)
  return env


def _fake(tmp_path):
  (tmp_path / 'fake_experiment.py').write_text(FAKE_EXPERIMENT)
  return str(tmp_path)


def _sweep(*args, cwd=REPO, env=None, timeout=300):
  return subprocess.run([sys.executable, '-m', 'launch.sweep', *args], cwd=cwd,
                        env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _csv(root):
  with open(os.path.join(root, 'summary.csv')) as f:
    return list(csv.DictReader(f))


# ------------------------------------------------------------------ space


def test_grid_expands_to_the_product_and_repeated_grids_to_the_union():
  grid = space.parse_grid(' learning_rate=0.1,0.05 ; batch_size=128,256 ')
  trials = space.expand([grid, space.parse_grid('learning_rate=0.01;optimizer=sgd')])
  assert trials == [
      {'learning_rate': '0.1', 'batch_size': '128'}, {'learning_rate': '0.1', 'batch_size': '256'},
      {'learning_rate': '0.05', 'batch_size': '128'}, {'learning_rate': '0.05', 'batch_size': '256'},
      {'learning_rate': '0.01', 'optimizer': 'sgd'}]
  assert space.trial_names(trials) == ['lr=0.1,bs=128', 'lr=0.1,bs=256', 'lr=0.05,bs=128',
                                       'lr=0.05,bs=256', 'lr=0.01,o=sgd']
  # Initials that collide (momentum, model) fall back to full names; odd characters get a hash.
  assert space.trial_names([{'momentum': '0.9', 'model': 'resnet20'}]) == ['momentum=0.9,model=resnet20']
  name, = space.trial_names([{'model_kwargs': 'activation=relu,pooling=max'}])
  assert name.startswith('mk=activation_relu_pooling_max-') and len(name.rsplit('-', 1)[1]) == 6


def test_random_search_is_seeded_and_stays_in_its_ranges():
  spec = space.parse_random('learning_rate=loguniform(1e-4,1e-1); weight_decay=uniform(0,1e-3);'
                            'depth=randint(2,4);optimizer=choice(adam,sgd)')
  first = space.expand([], spec, num_trials=40, seed=3)
  assert first == space.expand([], spec, num_trials=40, seed=3)
  assert first != space.expand([], spec, num_trials=40, seed=4)
  lrs = np.array([float(t['learning_rate']) for t in first])
  assert 1e-4 <= lrs.min() and lrs.max() <= 1e-1
  assert (np.log10(lrs) < -2.5).sum() > 10   # log-uniform: many below the linear midpoint's 0.05
  assert all(0 <= float(t['weight_decay']) <= 1e-3 for t in first)
  assert {t['depth'] for t in first} == {'2', '3', '4'}
  assert {t['optimizer'] for t in first} == {'adam', 'sgd'}
  assert all(t['learning_rate'] == f'{float(t["learning_rate"]):.4g}' for t in first)
  crossed = space.expand([space.parse_grid('batch_size=32,64')], spec, num_trials=3, seed=3)
  assert len(crossed) == 6 and [t['learning_rate'] for t in crossed[:3]] == \
      [t['learning_rate'] for t in first[:3]]


@pytest.mark.parametrize('grid, random, num_trials, message', [
    ('learning_rate', None, 0, 'has no "="'),
    ('learning_rate=0.1,,0.2', None, 0, 'empty value'),
    ('learning_rate=0.1,0.1', None, 0, 'repeats a value'),
    ('lr=1;lr=2', None, 0, "names 'lr' twice"),
    ('learning_rate=0.1', 'learning_rate=uniform(0,1)', 2, 'both in --grid and in --random'),
    (None, 'learning_rate=normal(0,1)', 2, "unknown distribution 'normal'"),
    (None, 'learning_rate=loguniform(0,1)', 2, 'needs 0 < low'),
    (None, 'learning_rate=uniform(1,0)', 2, 'low must be below high'),
    (None, 'learning_rate=uniform(0,1)', 0, 'needs --num_trials >= 1'),
    (None, None, 0, 'nothing to sweep'),
])
def test_bad_sweep_specs_say_what_is_wrong(grid, random, num_trials, message):
  with pytest.raises(UserError, match=message):
    space.expand([space.parse_grid(grid)] if grid else [],
                 space.parse_random(random) if random else None, num_trials)


# ------------------------------------------------------------------ local queue


def test_local_slots_hand_out_gpu_groups_or_cpu_processes(tmp_path):
  slots = local.make_slots(['0', '1', '2', '3', '4'], devices_per_trial=2, max_parallel=None)
  assert [s.env for s in slots] == [{'CUDA_VISIBLE_DEVICES': '0,1'}, {'CUDA_VISIBLE_DEVICES': '2,3'}]
  assert len(local.make_slots(['0', '1'], 1, max_parallel=1)) == 1
  assert [s.env for s in local.make_slots([], 4, max_parallel=3)] == [{}, {}, {}]
  with pytest.raises(UserError, match='devices_per_trial=4 but this machine has 2 GPUs'):
    local.make_slots(['0', '1'], 4, None)
  assert local.detect_gpus({'CUDA_VISIBLE_DEVICES': '3,5'}) == ['3', '5']
  assert local.detect_gpus({'CUDA_VISIBLE_DEVICES': ''}) == []
  fake = tmp_path / 'nvidia-smi'  # no override: nvidia-smi -L decides
  fake.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100 (UUID: GPU-a)"\n'
                  'echo "GPU 1: NVIDIA H100 (UUID: GPU-b)"\n')
  fake.chmod(0o755)
  assert local.detect_gpus({'PATH': str(tmp_path)}) == []  # os.environ's PATH is not consulted
  old = os.environ['PATH']
  try:
    os.environ['PATH'] = f'{tmp_path}{os.pathsep}{old}'
    assert local.detect_gpus({}) == ['0', '1']
  finally:
    os.environ['PATH'] = old


def test_local_queue_runs_at_most_max_parallel_and_goes_on_after_a_failure(tmp_path):
  paths = _fake(tmp_path)
  root = tmp_path / 'sweep'
  args = ['--experiment=fake_experiment', f'--workdir={root}', '--nocheck_flags',
          '--grid=learning_rate=0.1,0.01,0.003', '--grid=learning_rate=0', '--max_parallel=2',
          '--sleep=0.6']
  started = time.time()
  done = _sweep(*args, cwd=paths, env=_env(paths=[paths], CUDA_VISIBLE_DEVICES=''))
  assert done.returncode == 1, done.stderr
  assert '[FAIL ] lr=0: exit 2' in done.stdout
  assert 'error: learning_rate must be positive, got 0.0' in done.stdout
  assert f'log: {root}/lr=0/log.txt' in done.stdout
  spans = sorted(tuple(map(float, line.split())) for name in ('lr=0.1', 'lr=0.01', 'lr=0.003', 'lr=0')
                 for line in (root / name / 'events.txt').read_text().splitlines())
  at_once = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
  assert at_once == 2 and time.time() - started < 60
  rows = _csv(root)
  assert [r['trial'] for r in rows] == ['lr=0.01', 'lr=0.003', 'lr=0.1', 'lr=0']  # best first
  assert [r['rank'] for r in rows] == ['1', '2', '3', '']
  assert rows[3]['status'] == 'failed (exit 2)' and 'must be positive' in rows[3]['error']
  # Re-run: finished trials are skipped (no new attempt in their logs), the failed one re-runs.
  again = _sweep(*args, cwd=paths, env=_env(paths=[paths], CUDA_VISIBLE_DEVICES=''))
  assert again.returncode == 1
  assert again.stdout.count('[skip ]') == 3 and again.stdout.count('[start]') == 1
  assert (root / 'lr=0.1' / 'log.txt').read_text().count(trials_lib.ATTEMPT_HEADER) == 1
  assert (root / 'lr=0' / 'log.txt').read_text().count(trials_lib.ATTEMPT_HEADER) == 2


def test_sigterm_to_the_sweep_stops_trials_with_a_checkpoint_and_resumes_them(tmp_path):
  paths = _fake(tmp_path)
  root = tmp_path / 'sweep'
  args = ['--experiment=fake_experiment', f'--workdir={root}', '--nocheck_flags',
          '--grid=learning_rate=0.1,0.01,0.001', '--max_parallel=2']
  env = _env(paths=[paths], CUDA_VISIBLE_DEVICES='')
  proc = subprocess.Popen([sys.executable, '-m', 'launch.sweep', *args], cwd=paths,
                          env={**env, 'FAKE_SLEEP': '60'}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 60
  while sum((root / n / 'events.txt').exists() for n in ('lr=0.1', 'lr=0.01')) < 2:
    assert time.time() < deadline and proc.poll() is None
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 143
  status = {t.name: trials_lib.status(t, str(root))['status']
            for t in trials_lib.trials_of(trials_lib.load_sweep(str(root)))}
  assert status == {'lr=0.1': 'preempted', 'lr=0.01': 'preempted', 'lr=0.001': 'not started'}
  assert 'preempted: SIGTERM at step 3' in out
  again = _sweep(*args, cwd=paths, env=env)   # the same command resumes them
  assert again.returncode == 0, again.stdout + again.stderr
  assert [r['status'] for r in _csv(root)] == ['done'] * 3


# ------------------------------------------------------------------ SLURM


def _slurm_args(root, *extra):
  return ['--experiment=fake_experiment', f'--workdir={root}', '--nocheck_flags', '--backend=slurm',
          '--grid=learning_rate=0.1,0.01;batch_size=32,64', '--max_parallel=3',
          '--slurm_partition=gpu', '--slurm_time=02:00:00', '--slurm_account=vision',
          '--slurm_options=--constraint=h100', *extra]


def test_slurm_dry_run_is_valid_bash_with_the_right_sbatch_lines(tmp_path):
  paths = _fake(tmp_path)
  root = tmp_path / 'sweep'
  done = _sweep(*_slurm_args(root, '--devices_per_trial=16', '--dry_run'), cwd=paths,
                env=_env(paths=[paths]))
  assert done.returncode == 0, done.stderr
  script = (root / 'sweep.sbatch').read_text()
  assert script in done.stdout
  sbatch = [line for line in script.splitlines() if line.startswith('#SBATCH')]
  assert sbatch == ['#SBATCH --job-name=sweep-sweep', '#SBATCH --array=0-3%3',
                    '#SBATCH --nodes=2', '#SBATCH --ntasks-per-node=8', '#SBATCH --gres=gpu:8',
                    f'#SBATCH --output={root}/slurm-%A_%a.out', '#SBATCH --partition=gpu',
                    '#SBATCH --account=vision', '#SBATCH --time=02:00:00',
                    '#SBATCH --constraint=h100']
  for name in ('sweep.sbatch', 'summarize.sbatch'):
    check = subprocess.run(['bash', '-n', str(root / name)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
  assert 'srun --kill-on-bad-exit=1' in script and '-m fake_experiment' in script
  assert [slurm.resources(k, 8) for k in (1, 4, 8, 16, 32)] == [(1, 1), (1, 4), (1, 8), (2, 8), (4, 8)]
  one_gpu = _sweep(*_slurm_args(tmp_path / 'one', '--dry_run'), cwd=paths, env=_env(paths=[paths]))
  assert '#SBATCH --nodes=1\n#SBATCH --ntasks-per-node=1\n#SBATCH --gres=gpu:1' in one_gpu.stdout
  odd = _sweep(*_slurm_args(tmp_path / 'odd', '--devices_per_trial=12', '--dry_run'), cwd=paths,
               env=_env(paths=[paths]))
  assert odd.returncode == 2 and odd.stderr.startswith('error: --devices_per_trial=12 spans nodes')


def test_slurm_array_tasks_run_their_trials_and_resubmission_skips_finished_ones(tmp_path):
  paths = _fake(tmp_path)
  root = tmp_path / 'sweep'
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'sbatch').write_text('#!/bin/bash\necho "$@" >> "$SBATCH_LOG"\n'
                                  'echo "$((100 + $(wc -l < "$SBATCH_LOG")));cluster"\n')
  (bin_dir / 'srun').write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
  for tool in ('sbatch', 'srun'):
    (bin_dir / tool).chmod(0o755)
  env = _env(paths=[paths], PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
             SBATCH_LOG=str(tmp_path / 'sbatch.log'))
  done = _sweep(*_slurm_args(root), cwd=paths, env=env)
  assert done.returncode == 0, done.stderr
  assert 'submitted array job 101 (4 tasks) and summary job 102' in done.stdout
  calls = (tmp_path / 'sbatch.log').read_text().splitlines()
  assert calls == [f'--parsable {root}/sweep.sbatch',
                   f'--parsable --dependency=afterany:101 {root}/summarize.sbatch']
  for task in (0, 3):  # what SLURM would do for two of the array's tasks
    run = subprocess.run(['bash', str(root / 'sweep.sbatch')], capture_output=True, text=True,
                         env={**env, 'SLURM_ARRAY_TASK_ID': str(task), 'SLURM_ARRAY_JOB_ID': '101'})
    assert run.returncode == 0, run.stderr
  assert (root / 'lr=0.1,bs=32' / 'exit_code').read_text() == '0\n'
  assert 'slurm job 101_3' in (root / 'lr=0.01,bs=64' / 'log.txt').read_text()
  summary = subprocess.run(['bash', str(root / 'summarize.sbatch')], capture_output=True,
                           text=True, env=env)
  assert summary.returncode == 0, summary.stderr
  assert [(r['trial'], r['status']) for r in _csv(root)] == [
      ('lr=0.01,bs=64', 'done'), ('lr=0.1,bs=32', 'done'),
      ('lr=0.1,bs=64', 'not started'), ('lr=0.01,bs=32', 'not started')]
  again = _sweep(*_slurm_args(root, '--dry_run'), cwd=paths, env=env)
  assert '2 finished earlier, 2 to submit' in again.stdout
  assert '#SBATCH --array=0-1%3' in again.stdout
  assert 'TRIALS=(\n  lr=0.1,bs=64\n  lr=0.01,bs=32\n)' in again.stdout
  no_sbatch = _sweep(*_slurm_args(tmp_path / 'nosb'), cwd=paths,
                     env={**env, 'PATH': os.path.dirname(sys.executable) + ':/usr/bin:/bin'})
  assert no_sbatch.returncode == 2
  assert no_sbatch.stderr.strip().splitlines() == [
      f'error: sbatch is not on PATH: submit from a SLURM login node, or look at the script '
      f'written to {tmp_path}/nosb/sweep.sbatch (--dry_run prints it)']


# ------------------------------------------------------------------ flags and summary


def test_passthrough_flags_reach_every_trial_after_the_base_flags_and_typos_are_caught(tmp_path):
  base = tmp_path / 'base.flags'
  base.write_text('# a base config\n--num_train_steps=30\n--learning_rate=0.5\n--seed=4\n')
  root = tmp_path / 'sweep'
  done = _sweep('--experiment=experiments.lenet', f'--flagfile={base}', f'--workdir={root}',
                '--grid=learning_rate=0.1,0.05', '--num_train_steps=20', '--log_every_steps=5',
                '--dry_run', '--nocheck_flags', '--sweep_seed=9')
  assert done.returncode == 0, done.stderr
  lines = [l for l in (root / 'lr=0.1' / 'trial.flags').read_text().splitlines()
           if not l.startswith('#')]
  assert lines == ['--num_train_steps=30', '--learning_rate=0.5', '--seed=4',
                   '--num_train_steps=20', '--log_every_steps=5', '--learning_rate=0.1',
                   f'--workdir={root}/lr=0.1']
  from absl import flags  # later lines win, as absl reads them
  values = flags.FlagValues()
  flags.DEFINE_integer('num_train_steps', None, '', flag_values=values)
  flags.DEFINE_float('learning_rate', None, '', flag_values=values)
  flags.DEFINE_integer('seed', 0, '', flag_values=values)
  flags.DEFINE_integer('log_every_steps', 100, '', flag_values=values)
  flags.DEFINE_string('workdir', None, '', flag_values=values)
  values(['prog', f'--flagfile={root}/lr=0.1/trial.flags'])
  assert (values.num_train_steps, values.learning_rate, values.seed) == (20, 0.1, 4)
  assert (values.log_every_steps, values.workdir) == (5, f'{root}/lr=0.1')
  record = trials_lib.load_sweep(str(root))
  assert record['passthrough'] == ['--num_train_steps=20', '--log_every_steps=5']
  assert [t['name'] for t in record['trials']] == ['lr=0.1', 'lr=0.05']
  # The real experiment's flags are checked before anything is written.
  typo = _sweep('--experiment=experiments.lenet', f'--workdir={tmp_path / "typo"}',
                '--grid=learning_rat=0.1,0.05', '--dry_run')
  assert typo.returncode == 2
  assert typo.stderr.strip() == ('error: --learning_rat (swept) is not a flag of '
                                 'experiments.lenet; did you mean --learning_rate?')
  assert not (tmp_path / 'typo').exists()
  clash = _sweep('--experiment=experiments.lenet', f'--workdir={tmp_path / "clash"}',
                 '--grid=learning_rate=0.1', '--learning_rate=0.2', '--nocheck_flags')
  assert clash.stderr.strip() == 'error: --learning_rate is swept and also passed to every trial; drop one'


def test_summary_ranks_best_first_and_plots_log_spaced_flags_on_a_log_axis(tmp_path):
  root = str(tmp_path)
  overrides = [{'learning_rate': lr, 'optimizer': opt}
               for lr in ('0.1', '0.01', '0.001') for opt in ('adam', 'sgd')]
  names = space.trial_names(overrides)
  trials_lib.save_sweep(root, {'experiment': 'experiments.lenet', 'base_flagfiles': [],
                               'passthrough': [], 'swept': ['learning_rate', 'optimizer'],
                               'log_scale': [],
                               'trials': [{'name': n, 'overrides': o} for n, o in zip(names, overrides)]})
  losses = {}
  for i, name in enumerate(names):
    os.makedirs(os.path.join(root, name))
    if i == 4:  # unfinished: a log and no exit code
      open(os.path.join(root, name, 'log.txt'), 'w').close()
      continue
    losses[name] = 1.0 + ((i * 7) % 5) / 10
    with open(os.path.join(root, name, 'results.json'), 'w') as f:
      json.dump({'test_loss': losses[name], 'test_accuracy': 0.5, 'step': 10}, f)
  table = summarize.summarize(root, metric='test_loss')   # *loss*: lower is better
  order = sorted(losses, key=losses.get)
  assert [r['trial'] for r in _csv(root)] == order + [names[4]]
  assert [float(r['test_loss']) for r in _csv(root)[:5]] == sorted(losses.values())
  assert _csv(root)[5]['status'] == 'unfinished'
  md = open(os.path.join(root, 'summary.md')).read()
  assert f'Best by test_loss (min): **{order[0]}**' in md
  assert [l.split('|')[2].strip(' `') for l in md.splitlines() if l.startswith('| ')][1:] == \
      order + [names[4]]
  png = open(os.path.join(root, 'summary.png'), 'rb').read()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10_000
  assert table['mode'] == 'min'
  assert summarize._log_spaced([0.1, 0.01, 0.001], False)       # pylint: disable=protected-access
  assert summarize._log_spaced([32, 64, 128, 256], False)       # pylint: disable=protected-access
  assert not summarize._log_spaced([0.1, 0.2, 0.3, 0.4], False)  # pylint: disable=protected-access
  bad = subprocess.run([sys.executable, '-m', 'launch.summarize', root, '--metric=test_acc'],
                       env=_env(), cwd=REPO, capture_output=True, text=True)
  assert bad.returncode == 2 and bad.stderr.startswith("error: no results.json in")


def test_rerun_with_other_flags_for_every_trial_is_refused_and_relabels_nothing(tmp_path):
  paths = _fake(tmp_path)
  env = _env(paths=[paths], CUDA_VISIBLE_DEVICES='')
  base = tmp_path / 'base.flags'
  base.write_text('--batch_size=32\n')
  root = tmp_path / 'sweep'

  def sweep(workdir, *extra):
    return _sweep('--experiment=fake_experiment', f'--flagfile={base}', f'--workdir={workdir}',
                  '--nocheck_flags', '--grid=learning_rate=0.1,0.01', *extra, cwd=paths, env=env)
  first = sweep(root, '--num_train_steps=100')
  assert first.returncode == 0, first.stdout + first.stderr
  kept = ['sweep.json', 'summary.md', 'summary.csv', 'lr=0.1/trial.flags', 'lr=0.01/trial.flags',
          'lr=0.1/log.txt', 'lr=0.1/results.json']
  before = {name: (root / name).read_bytes() for name in kept}
  again = sweep(root, '--num_train_steps=150')
  assert again.returncode == 2 and again.stdout == ''
  assert again.stderr.strip().splitlines() == [
      f'error: {root} holds a sweep whose trials ran with other flags (--num_train_steps '
      '100 → 150); finished trials are not relabelled, so repeat its flags to resume it, or '
      f'start a new sweep for these: --workdir={root}-nts=150']
  base.write_text('--batch_size=64\n')   # an edited base flagfile changes every trial too
  edited = sweep(root, '--num_train_steps=100', '--dry_run')
  assert edited.returncode == 2 and '(--batch_size 32 → 64)' in edited.stderr
  assert {name: (root / name).read_bytes() for name in kept} == before
  assert '`--num_train_steps=100`' in before['summary.md'].decode()
  base.write_text('--batch_size=32\n')
  # The suggested directory runs the new setting; the old sweep still takes new trials.
  fresh = sweep(f'{root}-nts=150', '--num_train_steps=150')
  assert fresh.returncode == 0, fresh.stderr
  results = json.loads((tmp_path / 'sweep-nts=150' / 'lr=0.1' / 'results.json').read_text())
  assert results['step'] == 150
  more = sweep(root, '--num_train_steps=100', '--grid=learning_rate=0.001')
  assert more.returncode == 0, more.stderr
  assert more.stdout.count('[skip ]') == 2 and more.stdout.count('[start]') == 1
  # Before any trial has started (a --dry_run), the flags may still change.
  planned = tmp_path / 'planned'
  assert sweep(planned, '--num_train_steps=100', '--dry_run').returncode == 0
  changed = sweep(planned, '--num_train_steps=150', '--dry_run')
  assert changed.returncode == 0, changed.stderr
  assert '--num_train_steps=150' in (planned / 'lr=0.1' / 'trial.flags').read_text()


def test_summary_reports_the_flags_each_trial_recorded_not_the_latest_command(tmp_path):
  root = str(tmp_path)
  trials = [trials_lib.Trial('lr=0.1', {'learning_rate': '0.1'}),
            trials_lib.Trial('lr=0.01', {'learning_rate': '0.01'})]
  # A sweep directory whose sweep.json claims 150 steps, as older launchers left it.
  trials_lib.save_sweep(root, {'experiment': 'fake_experiment', 'base_flagfiles': [],
                               'passthrough': ['--num_train_steps=150', '--seed=3'],
                               'swept': ['learning_rate'], 'log_scale': [],
                               'trials': [{'name': t.name, 'overrides': t.overrides}
                                          for t in trials]})
  for trial, steps in zip(trials, (100, 150)):
    os.makedirs(trial.directory(root))
    text = trials_lib.flagfile_text(trial, root, experiment='fake_experiment', base_flagfiles=[],
                                    passthrough=[f'--num_train_steps={steps}', '--seed=3'])
    trials_lib.write_flagfile(trial, root, text)
    with open(os.path.join(trial.directory(root), 'results.json'), 'w') as f:
      json.dump({'step': steps, 'test_accuracy': steps / 1000}, f)
  summarize.summarize(root)
  assert [(r['trial'], r['learning_rate'], r['num_train_steps'], r['step']) for r in _csv(root)] \
      == [('lr=0.01', '0.01', '150', '150'), ('lr=0.1', '0.1', '100', '100')]
  md = open(os.path.join(root, 'summary.md')).read()
  assert ('passed to every trial: `--seed=3`; differing between trials: num_train_steps '
          '(as each trial.flags records them)') in md
  assert '--num_train_steps=150' not in md
  # A finished trial's trial.flags is never rewritten.
  text = trials_lib.flagfile_text(trials[0], root, experiment='fake_experiment',
                                  base_flagfiles=[], passthrough=['--num_train_steps=150'])
  assert trials_lib.write_flagfile(trials[0], root, text)
  assert '--num_train_steps=100' in open(trials[0].flagfile(root)).read()


# ------------------------------------------------------------------ real runs


def _trial_env(devices):
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+',  # conftest's other flags stay
                 f'--xla_force_host_platform_device_count={devices}', os.environ['XLA_FLAGS'])
  return _env(XLA_FLAGS=flags,
              CUDA_VISIBLE_DEVICES='', JAX_PLATFORMS='cpu')


@pytest.mark.slow
def test_real_local_sweep_summarises_ranks_skips_and_resumes(real_mnist, tmp_path):
  base = tmp_path / 'base.flags'
  base.write_text(f'--dataset=mnist\n--data_dir={real_mnist["data_dir"]}\n'
                  f'--raw_data_dir={real_mnist["raw_dir"]}\n--num_train_steps=40\n')
  root = tmp_path / 'sweep'
  args = ['--experiment=experiments.lenet', f'--flagfile={base}', f'--workdir={root}',
          '--grid=learning_rate=0.01,0.002;batch_size=64', '--grid=learning_rate=0;batch_size=32',
          '--max_parallel=2', '--nocheck_flags', '--num_train_steps=10', '--log_every_steps=5']
  started = time.time()
  done = _sweep(*args, env=_trial_env(1), timeout=400)
  wall = time.time() - started
  assert done.returncode == 1, done.stdout + done.stderr   # the deliberately failing trial
  good = ['lr=0.01,bs=64', 'lr=0.002,bs=64']
  assert '[FAIL ] lr=0,bs=32: exit 2' in done.stdout
  assert 'error: learning_rate must be positive, got 0.0' in done.stdout
  results = {}
  for name in good:
    with open(root / name / 'results.json') as f:
      results[name] = json.load(f)
    assert results[name]['step'] == 10   # passthrough beats the base flagfile's 40
  rows = _csv(root)
  ranked = sorted(good, key=lambda n: (-results[n]['test_accuracy'], good.index(n)))
  assert [r['trial'] for r in rows] == ranked + ['lr=0,bs=32']
  for row in rows[:2]:
    for key in ('test_accuracy', 'test_loss', 'step', 'train_seconds'):
      assert float(row[key]) == results[row['trial']][key], (row['trial'], key)
    assert (row['learning_rate'], row['batch_size']) == tuple(
        v.split('=')[1] for v in row['trial'].split(','))
  assert rows[2]['status'] == 'failed (exit 2)' and rows[2]['test_accuracy'] == ''
  md = (root / 'summary.md').read_text()
  assert [l.split('|')[2].strip(' `') for l in md.splitlines() if l.startswith('| ')][1:] == \
      [r['trial'] for r in rows]
  assert (root / 'summary.png').read_bytes()[:4] == b'\x89PNG'
  assert max(r['test_accuracy'] for r in results.values()) > 0.3  # it did learn in 10 steps
  print(f'\nsweep wall time {wall:.1f} s\n{md}')

  # Re-run the first grid after losing one trial's results.json (as if killed before the
  # end): the finished trials are skipped, that one resumes from its step-10 checkpoint.
  # (Re-running the failed trial too is pinned with the stand-in experiment above.)
  lost = ranked[-1]
  os.remove(root / lost / 'results.json')
  os.remove(root / lost / 'exit_code')
  again = _sweep(*[a for a in args if a != '--grid=learning_rate=0;batch_size=32'],
                 env=_trial_env(1), timeout=400)
  assert again.returncode == 0, again.stdout + again.stderr
  assert again.stdout.count('[skip ]') == 1 and again.stdout.count('[start]') == 1
  assert [r['trial'] for r in _csv(root)][-1] == 'lr=0,bs=32'  # still listed (sweep.json)
  assert 'resumed from step 10' in (root / lost / 'log.txt').read_text().split(
      trials_lib.ATTEMPT_HEADER)[-1]
  with open(root / lost / 'results.json') as f:
    resumed = json.load(f)
  assert (resumed['test_accuracy'], resumed['test_loss']) == (
      results[lost]['test_accuracy'], results[lost]['test_loss'])
  for name in set(good) - {lost}:
    assert (root / name / 'log.txt').read_text().count(trials_lib.ATTEMPT_HEADER) == 1


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _checkpoint(step_dir):
  """The saved TrainState of a checkpoint step as numpy arrays (no model or config needed)."""
  import orbax.checkpoint as ocp
  import jax
  with ocp.StandardCheckpointer() as checkpointer:
    tree = checkpointer.metadata(step_dir / 'state').item_metadata.tree
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
    return checkpointer.restore(step_dir / 'state', target)


@pytest.mark.slow
def test_two_processes_on_loopback_match_one_process_with_two_devices(real_mnist, tmp_path):
  """jax.distributed over 127.0.0.1 (gloo CPU collectives), one device per process."""
  flags = ['-m', 'experiments.lenet', '--dataset=mnist', f'--data_dir={real_mnist["data_dir"]}',
           f'--raw_data_dir={real_mnist["raw_dir"]}', '--batch_size=64', '--num_train_steps=10',
           '--eval_every_steps=5', '--checkpoint_every_steps=5', '--log_every_steps=5']
  single, multi = tmp_path / 'single', tmp_path / 'multi'
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, *flags, f'--workdir={multi}', f'--coordinator_address=127.0.0.1:{port}',
       '--num_processes=2', f'--process_id={i}'], cwd=REPO,
      env={**_trial_env(1), 'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo'},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=400)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert 'process 0 of 2, 1 local / 2 global devices' in outputs[0]
  assert 'process 1 of 2, 1 local / 2 global devices' in outputs[1]
  # The one-process reference: the run's own config on 2 of this process's devices.
  from cvjax.tasks import fit
  from cvjax.train import TrainConfig
  config = TrainConfig.from_json((multi / 'config.json').read_text())
  assert config.num_devices is None
  fit(dataclasses.replace(config, num_devices=2), str(single))

  def final(workdir):
    with open(workdir / 'results.json') as f:
      results = json.load(f)
    with open(workdir / 'metrics.jsonl') as f:
      return results, [json.loads(line) for line in f]
  (r1, m1), (r2, m2) = final(single), final(multi)
  assert r1['num_devices'] == r2['num_devices'] == 2
  assert (r1['step'], r1['test_accuracy'], r1['test_examples']) == \
      (r2['step'], r2['test_accuracy'], r2['test_examples'])
  # Eval losses are psums over differently split test sets: equal up to float rounding.
  assert r2['test_loss'] == pytest.approx(r1['test_loss'], rel=1e-6)
  assert len(m1) == len(m2) == 4
  for a, b in zip(m1, m2):
    assert a.keys() == b.keys()
    for key in a:  # training metrics bit for bit (same global batches); eval to 1e-6
      assert b[key] == (a[key] if key.startswith(('train_', 'learning_rate', 'step'))
                        else pytest.approx(a[key], rel=1e-6)), key
  s1, s2 = _checkpoint(single / 'checkpoints' / '10'), _checkpoint(multi / 'checkpoints' / '10')
  import jax
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), s1, s2))
  assert len(diffs) > 20 and max(diffs) <= 1e-6, max(diffs)   # params, Adam moments, step, rng
  assert int(s1['step']) == 10
  assert sorted(os.listdir(multi / 'checkpoints')) == ['10', '5']  # orbax saved from both
