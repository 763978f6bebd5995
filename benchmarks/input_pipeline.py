"""Does the input pipeline keep up with the train step? Both measured in one run.

  python -m benchmarks.input_pipeline --dataset=fashion_mnist --model=lenet5 \\
      --model_kwargs=activation=relu,pooling=max --batch_size=128
  python -m benchmarks.input_pipeline --dataset=fashion_mnist --model=resnet50 --image_size=224 \\
      --augment='inception_crop|flip_lr' --batch_size=16 --batches=40 --steps=1 --repeats=3
  python -m benchmarks.input_pipeline --task=detection --dataset=cvjax_shapes \\
      --model=ssd128_resnet18_slim --batch_size=32 --augment=ssd --batches=100

Prints the images/s that the task's train pipeline (`Task.train_batches`, the one
`cvjax.data.pipeline`) delivers as device arrays (augmentation included, nothing
consuming them) and, for classification, the images/s the compiled train step
consumes on random data, and their ratio; the target is ≥ 3×.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402
import jax  # noqa: E402

from benchmarks.throughput import cvjax_rate  # noqa: E402
from cvjax import cli, data, models, tasks  # noqa: E402
from cvjax.train import steps  # noqa: E402
from cvjax.train.config import TrainConfig, parse_kwargs  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_string('task', 'classification', 'A cvjax task.', flag_values=FLAGS)
flags.DEFINE_string('dataset', 'fashion_mnist', 'A cvjax dataset.', flag_values=FLAGS)
flags.DEFINE_string('model', 'lenet5', 'A registered model.', flag_values=FLAGS)
flags.DEFINE_string('model_kwargs', '', 'Model options, k=v,k=v.', flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 128, 'Global batch size.', flag_values=FLAGS)
flags.DEFINE_integer('image_size', None, "Default: the model's.", flag_values=FLAGS)
flags.DEFINE_string('augment', None, "Default: the dataset's; '' for none.", flag_values=FLAGS)
flags.DEFINE_integer('batches', 200, 'Batches timed from the pipeline.', flag_values=FLAGS)
flags.DEFINE_integer('steps', 10, 'Train steps per timed round.', flag_values=FLAGS)
flags.DEFINE_integer('repeats', 5, 'Timed rounds of the train step.', flag_values=FLAGS)
flags.DEFINE_string('data_dir', None, 'TFDS data directory.', flag_values=FLAGS)
flags.DEFINE_bool('json', False, 'Print one JSON object.', flag_values=FLAGS)


def pipeline_rate(config: TrainConfig, batches: int) -> float:
  """Images/s of `config`'s task's train pipeline, after a warm-up of 5 batches."""
  task_class = tasks.task_class(config.task)
  task = tasks.get_task(config, task_class.dataset_meta(config))
  it = task.train_batches(steps.batch_sharded(steps.make_mesh()), 0)
  for _ in range(5):  # reading the dataset into memory, tf.data warm-up
    jax.block_until_ready(next(it))
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  jax.block_until_ready(batch)
  it.close()
  return batches * config.batch_size / (time.perf_counter() - start)


def run(f: flags.FlagValues) -> int:
  height, _, channels = models.model_input_shape(f.model)
  image_size = f.image_size or height
  config = TrainConfig(task=f.task, model=f.model, model_kwargs=parse_kwargs(f.model_kwargs),
                       dataset=f.dataset, image_size=f.image_size, batch_size=f.batch_size,
                       augment=f.augment, data_dir=f.data_dir)
  feed = pipeline_rate(config, f.batches)
  step = None
  if f.task == 'classification':
    num_classes = data.dataset_meta(f.dataset, data_dir=f.data_dir).num_classes
    step = cvjax_rate(f.model, image_size, f.batch_size, num_classes, steps=f.steps,
                      repeats=f.repeats, model_kwargs=parse_kwargs(f.model_kwargs))
  result = {'task': f.task, 'dataset': f.dataset, 'model': f.model,
            'batch_size': f.batch_size, 'image_size': image_size, 'augment': f.augment,
            'load_average': os.getloadavg(), 'pipeline_images_per_second': feed,
            'train_step_images_per_second': step, 'ratio': step and feed / step}
  if f.json:
    print(json.dumps(result))
  else:
    print(f'{f.dataset} → {f.model} {image_size}² batch {f.batch_size}:')
    print(f'  input pipeline  {feed:10.0f} images/s ({f.task})')
    if step:
      print(f'  train step      {step:10.0f} images/s')
      print(f'  pipeline / step {feed / step:10.1f}×  (target ≥ 3×)')
    print(f'  load average {" ".join(f"{x:.2f}" for x in result["load_average"])}')
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
