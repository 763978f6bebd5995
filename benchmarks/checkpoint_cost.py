"""What async checkpointing costs the training loop, with and without saves, in one process.

  python -m benchmarks.checkpoint_cost --model=lenet5 --num_train_steps=1000 --every=50
  python -m benchmarks.checkpoint_cost --mode=steps --model=resnet50 --batch_size=16 --every=10

--mode=fit (default): the real loop, `cvjax.train.loop.fit` (data pipeline, compiled step,
per-step NaN check, one evaluation at the end, orbax saves started asynchronously and
waited for at the end), with a checkpoint every --every steps against only the final one,
in fresh work directories, --repeats pairs in ABBA order so load from other processes hits
both alike. `fit`'s images/s (compilation excluded) gives each arm's step time. The final
evaluation is inside that time, so keep --mode=fit to models that evaluate quickly.
--mode=steps: the compiled data-parallel train step `fit` uses, on random data, and the same
`cvjax.train.checkpoint.Checkpoints` saves: rounds of --every steps, every other round
starting with a save, interleaved --repeats times; the save's synchronous part and its
background writing during the following steps are both inside the round.
It also times 5 saves alone (save + wait, no training): their wall and CPU seconds, the
cost a save adds wherever it lands when both cores are busy training.
Either way the cost is the extra time per step of the checkpointing arm, in % of the step
time, and the same per save in seconds. The target is < 5%.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from cvjax import cli, models  # noqa: E402
from cvjax.errors import UserError  # noqa: E402
from cvjax.train import factory  # noqa: E402
from cvjax.train import steps as train_steps  # noqa: E402
from cvjax.train.checkpoint import Checkpoints  # noqa: E402
from cvjax.train.config import TrainConfig, parse_kwargs  # noqa: E402
from cvjax.tasks import fit, get_task  # noqa: E402
from cvjax.train.state import create_train_state  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_enum('mode', 'fit', ['fit', 'steps'], 'fit: the real training loop; steps: the '
                  'compiled train step on random data.', flag_values=FLAGS)
flags.DEFINE_string('model', 'lenet5', 'A registered model.', flag_values=FLAGS)
flags.DEFINE_string('model_kwargs', '', 'Model options, k=v,k=v.', flag_values=FLAGS)
flags.DEFINE_string('dataset', 'fashion_mnist', 'A cvjax dataset (--mode=fit).',
                    flag_values=FLAGS)
flags.DEFINE_integer('image_size', None, "Default: the model's.", flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 128, 'Global batch size.', flag_values=FLAGS)
flags.DEFINE_integer('num_train_steps', 1000, 'Steps of each fit run (--mode=fit).',
                     flag_values=FLAGS)
flags.DEFINE_integer('every', 50, 'Checkpoint every N steps.', flag_values=FLAGS)
flags.DEFINE_integer('repeats', 4, 'Alternating pairs; medians.', flag_values=FLAGS)
flags.DEFINE_integer('steps_repeats', 7, '--mode=steps: rounds per arm; medians.',
                     flag_values=FLAGS)
flags.DEFINE_bool('json', False, 'Print one JSON object.', flag_values=FLAGS)


def run_pair(model: str, dataset: str, batch_size: int, num_train_steps: int, every: int,
             repeats: int, model_kwargs: dict, image_size: int | None = None) -> dict:
  logging.set_verbosity(logging.WARNING)
  base = dict(model=model, dataset=dataset, batch_size=batch_size, model_kwargs=model_kwargs,
              image_size=image_size,
              num_train_steps=num_train_steps, num_epochs=None, eval_every_steps=num_train_steps,
              log_every_steps=num_train_steps, learning_rate=0.01)
  arms = {'every': every, 'final_only': num_train_steps}
  seconds = {arm: [] for arm in arms}
  for r in range(repeats):
    for arm in (list(arms) if r % 2 == 0 else list(arms)[::-1]):  # ABBA: no order bias
      ckpt_every = arms[arm]
      with tempfile.TemporaryDirectory() as workdir:
        config = TrainConfig(**base, checkpoint_every_steps=ckpt_every)
        result = fit(config, workdir)
      seconds[arm].append(batch_size / result['images_per_second'])
  step = {arm: statistics.median(v) for arm, v in seconds.items()}
  saves = num_train_steps // every
  extra = step['every'] - step['final_only']
  return {'model': model, 'dataset': dataset, 'image_size': image_size, 'batch_size': batch_size,
          'num_train_steps': num_train_steps, 'checkpoint_every_steps': every,
          'saves': saves, 'repeats': repeats, 'seconds_per_step': step, 'runs': seconds,
          'cost_percent_of_step': 100 * extra / step['final_only'],
          'seconds_per_save': extra * num_train_steps / max(saves - 1, 1),
          'load_average': os.getloadavg()}


def run_steps(model: str, batch_size: int, every: int, repeats: int, model_kwargs: dict,
              image_size: int | None = None) -> dict:
  """--mode=steps: rounds of `every` compiled steps, with and without a save at the start."""
  height, _, channels = models.model_input_shape(model)
  size = image_size or height
  num_classes = models.model_num_classes(model)
  mesh = train_steps.make_mesh()
  net = factory.build_model(TrainConfig(model=model, model_kwargs=model_kwargs), num_classes)
  holder = [jax.jit(lambda k: create_train_state(net, optax.sgd(0.01, momentum=0.9), k,
                                                 (1, size, size, channels)),
                    out_shardings=train_steps.replicated(mesh))(jax.random.PRNGKey(0))]
  rng = np.random.default_rng(0)
  batch = jax.device_put(
      {'image': rng.normal(size=(batch_size, size, size, channels)).astype(np.float32),
       'label': rng.integers(0, num_classes, batch_size).astype(np.int32)},
      train_steps.batch_sharded(mesh))
  step = train_steps.parallel_train_step(mesh, get_task(TrainConfig(model=model), None))
  count = [0]
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(holder[0]))

  with tempfile.TemporaryDirectory() as workdir:
    ckpts = Checkpoints(workdir, keep=3)

    def one_round(save: bool) -> float:
      start = time.perf_counter()
      if save:
        ckpts.save(count[0], holder[0], {'step': count[0]})
      s = holder[0]
      for _ in range(every):
        s, metrics = step(s, batch)
        jax.device_get(metrics)  # fit reads the metrics every step (its NaN check)
      holder[0] = s
      count[0] += every
      return (time.perf_counter() - start) / every

    one_round(True)  # compile, and orbax's first save
    one_round(False)
    seconds = {'every': [], 'never': []}
    for r in range(repeats):
      for arm in (['every', 'never'] if r % 2 == 0 else ['never', 'every']):
        seconds[arm].append(one_round(arm == 'every'))
    ckpts.wait()
    isolated = []  # (wall, CPU) seconds of one save and its background writing, nothing else
    for _ in range(5):
      wall, cpu = time.perf_counter(), _cpu_seconds()
      ckpts.save(count[0], holder[0], {'step': count[0]})
      ckpts.wait()
      isolated.append((time.perf_counter() - wall, _cpu_seconds() - cpu))
      count[0] += 1
  per_step = {arm: statistics.median(v) for arm, v in seconds.items()}
  extra = per_step['every'] - per_step['never']
  return {'mode': 'steps', 'model': model, 'image_size': size, 'batch_size': batch_size,
          'checkpoint_every_steps': every, 'state_mib': state_bytes / 2**20, 'repeats': repeats,
          'seconds_per_step': per_step, 'runs': seconds,
          'cost_percent_of_step': 100 * extra / per_step['never'],
          'seconds_per_save': extra * every,
          'isolated_save_wall_seconds': statistics.median(w for w, _ in isolated),
          'isolated_save_cpu_seconds': statistics.median(c for _, c in isolated),
          'load_average': os.getloadavg()}


def _cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system


def run(f: flags.FlagValues) -> int:
  for flag in ('batch_size', 'num_train_steps', 'every', 'repeats', 'steps_repeats'):
    if getattr(f, flag) < 1:
      raise UserError(f'--{flag} must be a positive integer, got {getattr(f, flag)}')
  if f.mode == 'steps':
    r = run_steps(f.model, f.batch_size, f.every, f.steps_repeats, parse_kwargs(f.model_kwargs),
                  f.image_size)
  elif f.every >= f.num_train_steps:
    raise UserError(f'--every={f.every} must be below --num_train_steps={f.num_train_steps} '
                    'to save more than the final checkpoint')
  else:
    r = run_pair(f.model, f.dataset, f.batch_size, f.num_train_steps, f.every, f.repeats,
                 parse_kwargs(f.model_kwargs), f.image_size)
  if f.json:
    print(json.dumps(r))
  else:
    s = r['seconds_per_step']
    if r.get('mode') == 'steps':
      print(f'{r["model"]} {r["image_size"]}² batch {r["batch_size"]}, compiled step, '
            f'{r["state_mib"]:.1f} MiB of state, median of {r["repeats"]} rounds per arm:')
      with_save, without = f'a save every {r["checkpoint_every_steps"]} steps', 'no save'
      base = s['never']
    else:
      print(f'{r["model"]} on {r["dataset"]}, batch {r["batch_size"]}, {r["num_train_steps"]} '
            f'steps with fit, median of {r["repeats"]} alternating pairs:')
      with_save = f'checkpoint every {r["checkpoint_every_steps"]} steps ({r["saves"]} saves)'
      without, base = 'final checkpoint only', s['final_only']
    print(f'  {with_save:40} {s["every"] * 1e3:9.1f} ms/step')
    print(f'  {without:40} {base * 1e3:9.1f} ms/step')
    if 'isolated_save_cpu_seconds' in r:
      print(f'  one save alone (5 saves, median): {r["isolated_save_wall_seconds"] * 1e3:.0f} ms wall, '
            f'{r["isolated_save_cpu_seconds"] * 1e3:.0f} ms CPU')
    print(f'  cost {r["cost_percent_of_step"]:+.1f}% of the step time '
          f'({r["seconds_per_save"] * 1e3:+.0f} ms per save; target < 5%); load average '
          + ' '.join(f'{x:.2f}' for x in r['load_average']))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
