"""The SLURM backend: an sbatch array job, one task per unfinished trial.

The script comes from `array.sbatch` next to this file (a `string.Template`: `$$`
is a literal `$`); `render` fills it in, `submit` hands it to `sbatch` together
with a small job (`summarize.sbatch`) that writes the sweep's summary once the
array has ended (`--dependency=afterany`).

Resources of one trial of `devices_per_trial` GPUs on nodes of `gpus_per_node`:
  devices_per_trial <= gpus_per_node: 1 node, ntasks-per-node = gres gpu = devices_per_trial
  otherwise (a multiple of gpus_per_node): devices_per_trial / gpus_per_node nodes,
  ntasks-per-node = gres gpu = gpus_per_node.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import string
import subprocess
import sys

from cvjax.errors import UserError
from launch.trials import Trial

_HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = 'sweep.sbatch'
SUMMARY_SCRIPT = 'summarize.sbatch'


@dataclasses.dataclass(frozen=True)
class Options:
  """sbatch settings: None leaves a setting to the cluster's defaults."""
  gpus_per_node: int = 8
  partition: str | None = None
  time: str | None = None
  account: str | None = None
  qos: str | None = None
  cpus_per_task: int | None = None
  mem: str | None = None
  extra: tuple[str, ...] = ()     # more sbatch options, e.g. ('--constraint=a100',)
  setup: tuple[str, ...] = ()     # shell lines run before the trial (module load, venv)
  job_name: str | None = None


def resources(devices_per_trial: int, gpus_per_node: int) -> tuple[int, int]:
  """(nodes, tasks and GPUs per node) of one trial."""
  if devices_per_trial < 1 or gpus_per_node < 1:
    raise UserError(f'--devices_per_trial ({devices_per_trial}) and --slurm_gpus_per_node '
                    f'({gpus_per_node}) must be at least 1')
  if devices_per_trial <= gpus_per_node:
    return 1, devices_per_trial
  if devices_per_trial % gpus_per_node:
    fix = (devices_per_trial // gpus_per_node + 1) * gpus_per_node
    raise UserError(f'--devices_per_trial={devices_per_trial} spans nodes of '
                    f'{gpus_per_node} GPUs and must then be a multiple of {gpus_per_node} '
                    f'(e.g. {fix})')
  return devices_per_trial // gpus_per_node, gpus_per_node


def _template(name: str) -> string.Template:
  with open(os.path.join(_HERE, name)) as f:
    return string.Template(f.read())


def _option_lines(options: Options, with_time: bool = True) -> list[str]:
  pairs = [('partition', options.partition), ('account', options.account),
           ('qos', options.qos), ('time', options.time if with_time else None),
           ('cpus-per-task', options.cpus_per_task), ('mem', options.mem)]
  lines = [f'#SBATCH --{k}={v}' for k, v in pairs if v is not None]
  for extra in options.extra:
    extra = extra.strip()
    if not re.match(r'--?[A-Za-z]', extra) or '\n' in extra:
      raise UserError(f'--slurm_options {extra!r} is not an sbatch option like --constraint=a100')
    lines.append(f'#SBATCH {extra}')
  return lines


def render(trials: list[Trial], root: str, *, experiment: str, devices_per_trial: int,
           max_parallel: int | None, options: Options, python: str = sys.executable,
           cwd: str | None = None, summarize_flags: tuple[str, ...] = ()) -> tuple[str, str]:
  """(array script, summary script) for `trials` (already without finished ones)."""
  if not trials:
    raise UserError('no trials to submit')
  nodes, per_node = resources(devices_per_trial, options.gpus_per_node)
  root, cwd = os.path.abspath(root), os.path.abspath(cwd or os.getcwd())
  if re.search(r'\s|%', root):
    raise UserError(f'the sweep directory {root!r} holds a space or "%", which #SBATCH '
                    '--output cannot; choose another --workdir')
  array = f'0-{len(trials) - 1}' + (f'%{max_parallel}' if max_parallel else '')
  name = options.job_name or f'sweep-{os.path.basename(root.rstrip("/"))}'
  common = dict(root=shlex.quote(root), cwd=shlex.quote(cwd), python=shlex.quote(python),
                experiment=shlex.quote(experiment), job_name=_job_name(name),
                setup='\n'.join(options.setup))
  script = _template('array.sbatch').substitute(
      common, num_trials=len(trials), script=shlex.quote(os.path.join(root, SCRIPT)),
      array=array, nodes=nodes, tasks_per_node=per_node, gpus_per_node=per_node,
      output=os.path.join(root, 'slurm-%A_%a.out'),
      sbatch_options='\n'.join(_option_lines(options)),
      trial_list='\n'.join(f'  {shlex.quote(t.name)}' for t in trials))
  summary = _template(SUMMARY_SCRIPT).substitute(
      common, summary_output=os.path.join(root, 'slurm-summary-%j.out'),
      summary_sbatch_options='\n'.join(_option_lines(options, with_time=False)
                                       + ['#SBATCH --time=00:15:00']),
      summarize_flags=' '.join(shlex.quote(f) for f in summarize_flags))
  return script, summary


def _job_name(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9._=,+-]', '_', name)[:100]


def write(root: str, script: str, summary: str) -> tuple[str, str]:
  paths = os.path.join(root, SCRIPT), os.path.join(root, SUMMARY_SCRIPT)
  for path, text in zip(paths, (script, summary)):
    with open(path, 'w') as f:
      f.write(text)
    os.chmod(path, 0o755)
  return paths


def submit(script_path: str, summary_path: str) -> tuple[str, str]:
  """sbatch's job ids of the array and of the summary job that waits for it."""
  sbatch = shutil.which('sbatch')
  if sbatch is None:
    raise UserError(f'sbatch is not on PATH: submit from a SLURM login node, or look at '
                    f'the script written to {script_path} (--dry_run prints it)')
  job = _sbatch([sbatch, '--parsable', script_path])
  summary = _sbatch([sbatch, '--parsable', f'--dependency=afterany:{job}', summary_path])
  return job, summary


def _sbatch(command: list[str]) -> str:
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  if done.returncode:
    last = (done.stderr.strip().splitlines() or ['(no message)'])[-1]
    raise UserError(f'{shlex.join(command)} failed (exit {done.returncode}): {last}')
  return done.stdout.strip().split(';')[0]  # --parsable: "jobid[;cluster]"
