"""Scores an ensemble of classification runs: the mean of their softmax probabilities.

    python -m cvjax.ensemble --workdirs=runs/a,runs/b,runs/c [--split=test] \\
        [--tta=flip|none] [--data_dir=DIR] [--eval_batch_size=N] [--json]

Each member is the newest good checkpoint of its run (its weight average where it kept
one), restored read-only: nothing is written into the workdirs. Every example of the
split of the members' dataset goes through each member's own eval pipeline and
test-time augmentation, as training evaluates (`Task.eval_batches`, `Task.eval_apply`);
the members' softmax probabilities are averaged per example. `--tta=flip` (or `none`)
gives every member that test-time augmentation instead of its own.

Prints each member's accuracy, the ensemble's accuracy and loss (the mean negative log
of the averaged probability of the true class) and the number of examples; with --json
one JSON object: {"split", "examples", "tta", "members": [{"workdir", "step", "accuracy"}],
"ensemble": {"accuracy", "loss"}}. The members must be classification runs of the same
dataset and classes. Bad input: one `error: ...` line on stderr, exit status 2.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Sequence

from absl import flags
import jax
import numpy as np

from cvjax import cli, restoring, tasks
from cvjax.errors import UserError, unknown_choice
from cvjax.train.config import TrainConfig

FLAGS = flags.FlagValues()
flags.DEFINE_string('workdirs', None, 'Comma-separated run directories of classification runs.',
                    flag_values=FLAGS)
flags.DEFINE_string('split', 'test', 'The dataset split to score.', flag_values=FLAGS)
flags.DEFINE_string('data_dir', None, "TFDS data_dir (default: each run's own).",
                    flag_values=FLAGS)
flags.DEFINE_integer('eval_batch_size', None, "Eval batch size (default: each run's own).",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_enum('tta', None, ['flip', 'none'], "Every member's test-time augmentation "
                  "(default: each run's own).", flag_values=FLAGS)
flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.', flag_values=FLAGS)
flags.mark_flags_as_required(['workdirs'], flag_values=FLAGS)


@dataclasses.dataclass
class Scored:
  """One member's pass over a split: probabilities float32[N, K], labels int32[N]."""
  probabilities: np.ndarray
  labels: np.ndarray


def parse_workdirs(text: str) -> list[str]:
  """`--workdirs`' comma-separated directories; a UserError for none or a missing one."""
  workdirs = [w.strip() for w in text.split(',') if w.strip()]
  if not workdirs:
    raise UserError(f'--workdirs={text!r} names no run directory; give one or more, '
                    'comma-separated')
  for workdir in workdirs:
    if not os.path.exists(workdir):
      raise UserError(f'--workdirs: {workdir} does not exist; give the directories of '
                      'trained classification runs, comma-separated')
  return workdirs


def check_same_dataset(workdirs: Sequence[str], configs: Sequence[TrainConfig]) -> None:
  """A UserError unless every run was trained on the first's dataset."""
  for workdir, config in zip(workdirs[1:], configs[1:]):
    if config.dataset != configs[0].dataset:
      raise UserError(f'{workdirs[0]} was trained on {configs[0].dataset} and {workdir} on '
                      f'{config.dataset}; ensemble runs of the same dataset')


def member_task(config: TrainConfig, data_dir: str | None, eval_batch_size: int | None,
                tta: str | None = None):
  """The member's task with its dataset's facts (preparing the dataset as training
  would), reading `data_dir`, batching by `eval_batch_size` and with test-time
  augmentation `tta` ('flip' or 'none') where given."""
  changes = {'data_dir': data_dir, 'eval_batch_size': eval_batch_size}
  config = dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
  if tta is not None:
    config = dataclasses.replace(config, tta=None if tta == 'none' else tta)
  cls = tasks.task_class(config.task)
  return tasks.get_task(config, cls.dataset_meta(config))


def check_split(workdirs: Sequence[str], members: Sequence, split: str) -> None:
  """A UserError unless every member's dataset has `split`, and all of the same size."""
  sizes = members[0].meta.split_sizes
  if split not in sizes:
    raise unknown_choice('split', split, sizes)
  for workdir, task in zip(workdirs[1:], members[1:]):
    if task.meta.split_sizes != sizes:
      raise UserError(f'{workdirs[0]} and {workdir} read datasets of different split sizes '
                      f'({sizes} vs {task.meta.split_sizes}); give --data_dir so that '
                      'every member reads the same data')


def score(task, model, variables: dict, split: str) -> Scored:
  """The softmax of `task.eval_apply` on every example of `split`, padding dropped, on
  the first device (no mesh)."""
  apply = jax.jit(lambda v, batch: jax.nn.softmax(
      task.eval_apply(model.apply, v, batch).astype(np.float32), axis=-1))
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  probabilities, labels = [], []
  for batch in task.eval_batches(sharding, split):
    keep = np.asarray(batch['mask'])
    probabilities.append(np.asarray(apply(variables, batch))[keep])
    labels.append(np.asarray(batch['label'])[keep])
  return Scored(np.concatenate(probabilities), np.concatenate(labels))


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
  """The fraction of rows of float32[N, K] whose argmax is int[N] `labels`."""
  return float(np.mean(np.argmax(probabilities, -1) == labels))


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
  """The mean of -log p[label] over the rows of float32[N, K] (p floored at float32's
  smallest normal, so a confident mistake costs ~87, not infinity)."""
  p = probabilities[np.arange(len(labels)), labels].astype(np.float64)
  return float(-np.mean(np.log(np.maximum(p, np.finfo(np.float32).tiny))))


def check_same_examples(workdirs: Sequence[str], scored: Sequence[Scored], split: str) -> None:
  """A UserError unless every member read the first's labels in the first's order."""
  for workdir, s in zip(workdirs[1:], scored[1:]):
    if not np.array_equal(s.labels, scored[0].labels):
      raise UserError(f'{workdirs[0]} and {workdir} read different {split} examples (their '
                      'labels differ); give --data_dir so that every member reads the same '
                      'data')


def evaluate(workdirs: Sequence[str], split: str = 'test', data_dir: str | None = None,
             eval_batch_size: int | None = None, tta: str | None = None) -> dict:
  """What `main` prints, as a dict (see the module doc)."""
  configs = [restoring.read_config(w) for w in workdirs]
  restoring.check_classification(workdirs, configs)
  check_same_dataset(workdirs, configs)
  ensemble = restoring.restore_ensemble(workdirs)
  member_tasks = [member_task(m.config, data_dir, eval_batch_size, tta)
                  for m in ensemble.members]
  check_split(workdirs, member_tasks, split)
  scored = [score(t, m.model, m.variables, split)
            for t, m in zip(member_tasks, ensemble.members)]
  check_same_examples(workdirs, scored, split)
  labels = scored[0].labels
  mean = sum(s.probabilities for s in scored) / np.float32(len(scored))
  return {'split': split, 'examples': len(labels), 'tta': tta,
          'members': [{'workdir': w, 'step': m.step, 'accuracy': accuracy(s.probabilities, labels)}
                      for w, m, s in zip(workdirs, ensemble.members, scored)],
          'ensemble': {'accuracy': accuracy(mean, labels), 'loss': nll(mean, labels)}}


def format_table(result: dict) -> str:
  lines = [f'{result["examples"]} {result["split"]} examples', 'accuracy  run']
  lines += [f'{m["accuracy"]:8.4f}  {m["workdir"]} (step {m["step"]})'
            for m in result['members']]
  e = result['ensemble']
  lines.append(f'{e["accuracy"]:8.4f}  ensemble of {len(result["members"])} '
               f'(loss {e["loss"]:.4f})')
  return '\n'.join(lines)


def run(f: flags.FlagValues) -> int:
  result = evaluate(parse_workdirs(f.workdirs), f.split, f.data_dir, f.eval_batch_size, f.tta)
  print(json.dumps(result) if f.json else format_table(result))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
