"""Hyperparameter sweeps of an experiment, on this machine or on SLURM.

  python -m launch.sweep --experiment=experiments.resnet \\
      --flagfile=experiments/configs/resnet20_cifar10.flags \\
      --grid="learning_rate=0.1,0.05;batch_size=128,256" --workdir=runs/sweep_r20 \\
      [--backend=local|slurm] [--devices_per_trial=1] [--max_parallel=N] [--dry_run] \\
      [--num_train_steps=2000 ...any other experiment flag, given to every trial]
  python -m launch.sweep ... --random="learning_rate=loguniform(1e-4,1e-1);weight_decay=uniform(0,1e-3)" \\
      --num_trials=16 --sweep_seed=0

`--flagfile` names the experiment's base flags (the launcher does not read them as its
own). Every flag the launcher does not define is passed to every trial. Trial `T`
lives in ROOT/T (readable names like `lr=0.1,bs=128`, the mapping in ROOT/sweep.json)
with its own `trial.flags`: base flags, passthrough flags, the trial's values and
`--workdir=ROOT/T`, in that order (later lines win). `python -m EXPERIMENT
--flagfile=ROOT/T/trial.flags` re-runs one trial by hand.

Re-running the same command skips finished trials (those with results.json) and
resumes the others from their checkpoints. It may add trials (another --grid), but
once a trial has started (or was submitted to SLURM) it may not change the flags
every trial gets (base flagfile lines and passthrough flags): trials keep what they
ran, so that is refused. One launcher at a time works on ROOT (ROOT/.sweep.lock); a
second one started meanwhile is refused with one error line. Backends: `local` (see launch.local) and `slurm` (see launch.slurm). The
summary (launch.summarize) is written at the end of a local sweep and by a follow-up
job on SLURM. Exit status: 0 when every trial is done, 1 when any failed, 2 for bad
arguments, 143/130 when the sweep was stopped.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

from absl import app, flags

from cvjax.errors import UserError
from cvjax.locking import WorkdirLock
from launch import space
from launch import trials as trials_lib
from launch.trials import Trial

FLAGS = flags.FLAGS
SWEEP_LOCK = '.sweep.lock'  # held by the launcher working on ROOT
_FLAGFILE = re.compile(r'^--?flagfile(=|$)')


def _define_flags() -> None:
  f = flags
  f.DEFINE_string('experiment', None, 'Experiment module to run, e.g. experiments.resnet.')
  f.DEFINE_string('workdir', None, 'Sweep directory ROOT: one sub-directory per trial.')
  f.DEFINE_multi_string('grid', [], '"flag=v1,v2;flag=v1,v2": the product of the lists. '
                        'Repeat --grid for the union of several grids.')
  f.DEFINE_string('random', None, 'Random search: "flag=loguniform(1e-4,1e-1);flag=uniform(0,1);'
                  'flag=randint(1,4);flag=choice(a,b)", drawn --num_trials times.')
  f.DEFINE_integer('num_trials', 0, 'Random draws (crossed with --grid when both are given).')
  f.DEFINE_integer('sweep_seed', 0, 'Seed of the random draws (the trials\' own --seed is '
                   'an experiment flag: sweep or pass it like any other).')
  f.DEFINE_enum('backend', 'local', ['local', 'slurm'], 'Where trials run.')
  f.DEFINE_integer('devices_per_trial', 1, 'GPUs per trial (local: CUDA_VISIBLE_DEVICES '
                   'groups; slurm: srun tasks, one process per GPU, across nodes if needed).')
  f.DEFINE_integer('max_parallel', None, 'Trials at once (local default: every GPU group, '
                   'or 1 without GPUs; slurm: the array\'s %N limit).')
  f.DEFINE_boolean('dry_run', False, 'Write the trial flagfiles (and the sbatch script) and '
                   'print what would run; start nothing.')
  f.DEFINE_boolean('check_flags', True, 'Check swept and passthrough flag names against '
                   'the experiment\'s flags (runs it once with --helpxml) before starting.')
  f.DEFINE_string('summary_metric', 'test_accuracy', 'results.json key the summary ranks by.')
  f.DEFINE_enum('summary_mode', None, ['max', 'min'], 'Best is max or min of the metric '
                '(default: min for *loss*, else max).')
  f.DEFINE_integer('slurm_gpus_per_node', 8, 'GPUs per node of the SLURM partition.')
  f.DEFINE_string('slurm_partition', None, 'sbatch --partition.')
  f.DEFINE_string('slurm_time', None, 'sbatch --time per trial, e.g. 1-00:00:00.')
  f.DEFINE_string('slurm_account', None, 'sbatch --account.')
  f.DEFINE_string('slurm_qos', None, 'sbatch --qos.')
  f.DEFINE_integer('slurm_cpus_per_task', None, 'sbatch --cpus-per-task.')
  f.DEFINE_string('slurm_mem', None, 'sbatch --mem, e.g. 64G.')
  f.DEFINE_multi_string('slurm_options', [], 'Any other sbatch option, e.g. --constraint=a100 '
                        '(repeatable).')
  f.DEFINE_multi_string('slurm_setup', [], 'Shell line run before each trial, e.g. '
                        '"source .venv/bin/activate" (repeatable).')
  f.DEFINE_string('slurm_job_name', None, 'sbatch --job-name (default: sweep-<ROOT name>).')


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
  """(argv without --flagfile, the base flagfiles): absl must not expand those itself."""
  rest, base = [argv[0]], []
  args = iter(argv[1:])
  for arg in args:
    if _FLAGFILE.match(arg):
      value = arg.split('=', 1)[1] if '=' in arg else next(args, '')
      if not value:
        raise UserError('--flagfile needs a path: --flagfile=BASE.flags')
      base.append(value)
    else:
      rest.append(arg)
  return rest, base


def _parse(argv: list[str]) -> list[str]:
  """absl flags_parser: known flags are the launcher's; returns [prog, --flagfile=..., rest]."""
  try:
    rest, base = split_argv(argv)
    unparsed = FLAGS(rest, known_only=True)
  except (UserError, flags.Error) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  return [unparsed[0], *(f'--flagfile={b}' for b in base), *unparsed[1:]]


def passthrough_flags(args: list[str]) -> list[str]:
  """`--name=value` / `--name` / `--noname` arguments, normalised to two dashes."""
  out = []
  for arg in args:
    if arg == '--':
      continue
    if not re.match(r'^--?[A-Za-z_][A-Za-z0-9_]*(=|$)', arg):
      raise UserError(f'unexpected argument {arg!r}; flags for the trials look like '
                      '--name=value')
    out.append('--' + arg.lstrip('-'))
  return out


def _flag_name(arg: str) -> str:
  return arg.lstrip('-').split('=', 1)[0]


def experiment_flags(experiment: str, python: str = sys.executable) -> set[str]:
  """Flag names the experiment defines (from its --helpxml; imports it once)."""
  done = subprocess.run([python, '-m', experiment, '--helpxml'], capture_output=True,
                        text=True, check=False, env={**os.environ, 'CUDA_VISIBLE_DEVICES': ''})
  try:
    root = ET.fromstring(done.stdout)
  except ET.ParseError:
    last = (done.stderr.strip().splitlines() or ['no output'])[-1]
    raise UserError(f'cannot list the flags of {experiment} ({last}); fix it or pass '
                    '--nocheck_flags') from None
  names = {n.text for n in root.iter('name')} | {n.text for n in root.iter('short_name')}
  return {n for n in names if n}


def check_names(experiment: str, defined: set[str], swept: list[str], passthrough: list[str],
                base_lines: list[str]) -> None:
  """UserError naming the first flag the experiment does not define."""
  for where, names in (('swept', swept), ('passed to every trial', map(_flag_name, passthrough)),
                       ('in the base flagfile', map(_flag_name, base_lines))):
    for name in names:
      if name in defined or name in ('flagfile', 'undefok') or (
          name.startswith('no') and name[2:] in defined):
        continue
      close = difflib.get_close_matches(name, sorted(defined), n=1)
      hint = f'; did you mean --{close[0]}?' if close else ''
      raise UserError(f'--{name} ({where}) is not a flag of {experiment}{hint}')


def plan(argv: list[str]) -> dict:
  """Everything the sweep will do, validated, before anything is written."""
  if not FLAGS.experiment:
    raise UserError('--experiment is required, e.g. --experiment=experiments.lenet')
  if not FLAGS.workdir:
    raise UserError('--workdir (the sweep directory ROOT) is required')
  try:
    found = importlib.util.find_spec(FLAGS.experiment)
  except (ImportError, ValueError):
    found = None
  if found is None:
    raise UserError(f'--experiment={FLAGS.experiment}: no such module (run from the repository '
                    'root; e.g. experiments.lenet)')
  base = [a.split('=', 1)[1] for a in argv[1:] if a.startswith('--flagfile=')]
  passthrough = passthrough_flags([a for a in argv[1:] if not a.startswith('--flagfile=')])
  base_lines = [line for path in base for line in trials_lib.read_flag_lines(path)]
  grids = [space.parse_grid(g) for g in FLAGS.grid]
  random = space.parse_random(FLAGS.random) if FLAGS.random else {}
  overrides = space.expand(grids, random, FLAGS.num_trials, FLAGS.sweep_seed)
  swept = space.swept_flags(overrides)
  for arg in passthrough:
    name = _flag_name(arg)
    if name in swept:
      raise UserError(f'--{name} is swept and also passed to every trial; drop one')
    if name == 'workdir':
      raise UserError('--workdir is the sweep directory; each trial gets ROOT/<trial>')
  root = os.path.abspath(FLAGS.workdir)
  names = space.trial_names(overrides)
  trials = [Trial(n, o) for n, o in zip(names, overrides)]
  return {'experiment': FLAGS.experiment, 'root': root,
          'base_flagfiles': base, 'base_lines': base_lines, 'passthrough': passthrough,
          'swept': swept, 'log_scale': sorted(n for n, d in random.items() if d.log_scale),
          'trials': trials}


def check_same_flags(root: str, workdir: str, base_lines: list[str],
                     passthrough: list[str]) -> None:
  """UserError when ROOT's started trials got other flags than this command gives all."""
  old = trials_lib.load_sweep(root, missing_ok=True)
  if old is None:
    return
  before = trials_lib.by_name(old.get('base_lines', base_lines) + old.get('passthrough', []))
  now = trials_lib.by_name(base_lines + passthrough)
  changed = [n for n in dict.fromkeys([*before, *now]) if before.get(n) != now.get(n)]
  # Trials submitted to SLURM read their trial.flags when they start: already committed.
  started = bool(old.get('slurm_jobs')) or any(
      trials_lib.status(t, root)['status'] != 'not started' for t in trials_lib.trials_of(old))
  if not changed or not started:  # e.g. after a --dry_run: nothing ran with the old flags
    return
  value = trials_lib.flag_value
  shown = ', '.join(f'--{n} {value(before.get(n), "unset")} → {value(now.get(n), "unset")}'
                    for n in changed)
  new = {n: value(now[n]) for n in changed if n in now}
  fresh = f'{workdir.rstrip("/")}-{space.trial_names([new])[0] if new else "2"}'
  raise UserError(f'{root} holds a sweep whose trials ran with other flags ({shown}); finished '
                  'trials are not relabelled, so repeat its flags to resume it, or start a '
                  f'new sweep for these: --workdir={fresh}')


def write_trials(p: dict, say=print) -> None:
  """ROOT/<trial>/trial.flags for every trial, and ROOT/sweep.json."""
  root = p['root']
  for trial in p['trials']:
    text = trials_lib.flagfile_text(trial, root, experiment=p['experiment'],
                                    base_flagfiles=p['base_flagfiles'],
                                    passthrough=p['passthrough'])
    if trials_lib.write_flagfile(trial, root, text) and trials_lib.is_finished(trial, root):
      say(f'note: {trial.name} finished earlier with other flags (kept in its '
          f'{trials_lib.FLAGFILE}) and is skipped; delete '
          f'{os.path.join(trial.directory(root), trials_lib.RESULTS)} to run it again')
  trials_lib.save_sweep(root, {
      'experiment': p['experiment'], 'base_flagfiles': p['base_flagfiles'],
      'base_lines': p['base_lines'], 'passthrough': p['passthrough'], 'swept': p['swept'],
      'log_scale': p['log_scale'],
      'command': shlex.join([os.path.basename(sys.executable), '-m', 'launch.sweep', *sys.argv[1:]]),
      'trials': [{'name': t.name, 'overrides': t.overrides} for t in p['trials']]})


def _summary_flags() -> tuple[str, ...]:
  mode = (f'--mode={FLAGS.summary_mode}',) if FLAGS.summary_mode else ()
  return (f'--metric={FLAGS.summary_metric}', *mode)


def _summarize(root: str) -> dict | None:
  from launch import summarize  # pylint: disable=import-outside-toplevel
  table = summarize.summarize(root, FLAGS.summary_metric, FLAGS.summary_mode)
  print(summarize.markdown(table), end='')
  print(f'summary: {os.path.join(root, "summary.md")} (.csv, .png)')
  return table


def run_local(p: dict) -> int:
  from launch import local  # pylint: disable=import-outside-toplevel
  slots = local.make_slots(local.detect_gpus(), FLAGS.devices_per_trial, FLAGS.max_parallel)
  if FLAGS.devices_per_trial > 1 and slots[0].label.startswith('cpu'):
    print(f'note: no GPUs here; --devices_per_trial={FLAGS.devices_per_trial} does not apply '
          'to CPU trials')
  root, todo = p['root'], [t for t in p['trials'] if not trials_lib.is_finished(t, p['root'])]
  print(f'sweep of {len(p["trials"])} trials of {p["experiment"]} in {root}: '
        f'{len(p["trials"]) - len(todo)} finished earlier, {len(todo)} to run, '
        f'{len(slots)} at a time ({"; ".join(s.label for s in slots)})')
  if FLAGS.dry_run:
    for trial in todo:
      print(f'would run: {shlex.join([sys.executable, "-m", p["experiment"], "--flagfile=" + trial.flagfile(root)])}')
    return 0
  outcomes = local.run(p['trials'], root, experiment=p['experiment'], slots=slots)
  stopped = outcomes.pop('__signal__', None)
  _summarize(root)
  failed = [n for n, o in outcomes.items() if o['status'] == 'failed']
  if failed:
    print(f'{len(failed)} of {len(outcomes)} trials failed: {", ".join(failed)}', file=sys.stderr)
  if stopped:
    return 130 if stopped['signal'] == signal.SIGINT else 143
  return 1 if failed else 0


def run_slurm(p: dict) -> int:
  from launch import slurm  # pylint: disable=import-outside-toplevel
  root = p['root']
  todo = [t for t in p['trials'] if not trials_lib.is_finished(t, root)]
  print(f'sweep of {len(p["trials"])} trials of {p["experiment"]} in {root}: '
        f'{len(p["trials"]) - len(todo)} finished earlier, {len(todo)} to submit')
  if not todo:
    _summarize(root)
    return 0
  options = slurm.Options(
      gpus_per_node=FLAGS.slurm_gpus_per_node, partition=FLAGS.slurm_partition,
      time=FLAGS.slurm_time, account=FLAGS.slurm_account, qos=FLAGS.slurm_qos,
      cpus_per_task=FLAGS.slurm_cpus_per_task, mem=FLAGS.slurm_mem,
      extra=tuple(FLAGS.slurm_options), setup=tuple(FLAGS.slurm_setup),
      job_name=FLAGS.slurm_job_name)
  script, summary = slurm.render(todo, root, experiment=p['experiment'],
                                 devices_per_trial=FLAGS.devices_per_trial,
                                 max_parallel=FLAGS.max_parallel, options=options,
                                 summarize_flags=_summary_flags())
  script_path, summary_path = slurm.write(root, script, summary)
  if FLAGS.dry_run:
    print(script, end='')
    print(f'# dry run: wrote {script_path} and {summary_path}; nothing submitted')
    return 0
  job, summary_job = slurm.submit(script_path, summary_path)
  record = trials_lib.load_sweep(root)
  record.setdefault('slurm_jobs', []).append({'array': job, 'summary': summary_job,
                                              'trials': [t.name for t in todo]})
  trials_lib.save_sweep(root, record)
  print(f'submitted array job {job} ({len(todo)} tasks) and summary job {summary_job}; '
        f'logs in {root}/<trial>/log.txt, summary in {root}/summary.md when it ends')
  return 0


def sweep_lock(root: str) -> WorkdirLock:
  """The lock one launcher holds on ROOT from reading it to its last trial: a second launcher
  on the same ROOT (other flags, or the same command twice) is refused at once, so no trial
  is written, run or reported by two launchers."""
  try:
    os.makedirs(root, exist_ok=True)
  except OSError as e:
    raise UserError(f'--workdir={root} cannot be created ({e.strerror}); choose a writable '
                    'location') from None
  return WorkdirLock(root, filename=SWEEP_LOCK)


def main(argv: list[str]) -> None:
  try:
    p = plan(argv)
    if FLAGS.check_flags:  # before anything is written
      defined = experiment_flags(p['experiment'])
      check_names(p['experiment'], defined, p['swept'], p['passthrough'], p['base_lines'])
    with sweep_lock(p['root']):
      check_same_flags(p['root'], FLAGS.workdir, p['base_lines'], p['passthrough'])
      write_trials(p)
      code = run_local(p) if FLAGS.backend == 'local' else run_slurm(p)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  sys.exit(code)


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=_parse)
