"""Does the input pipeline keep up with the train step? Both measured in one run.

  python -m benchmarks.input_pipeline --dataset=fashion_mnist --model=lenet5 \\
      --model_kwargs=activation=relu,pooling=max --batch_size=128
  python -m benchmarks.input_pipeline --dataset=fashion_mnist --model=resnet50 --image_size=224 \\
      --augment='inception_crop|flip_lr' --batch_size=16 --batches=40 --steps=1 --repeats=3

Prints the images/s that `cvjax.data.train_batches` delivers as device arrays
(augmentation included, nothing consuming them) and the images/s the compiled
train step consumes on random data, and their ratio; the target is ≥ 3×.
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
from cvjax import cli, data, models  # noqa: E402
from cvjax.train import steps  # noqa: E402
from cvjax.train.config import parse_kwargs  # noqa: E402

FLAGS = flags.FlagValues()
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


def pipeline_rate(dataset: str, batch_size: int, image_size: int, channels: int,
                  augment: str | None, batches: int, data_dir: str | None) -> float:
  mesh = steps.make_mesh()
  it = data.train_batches(dataset, global_batch_size=batch_size, image_size=image_size,
                          channels=channels, sharding=steps.batch_sharded(mesh), seed=0,
                          augment=augment, data_dir=data_dir)
  for _ in range(5):  # reading the dataset into memory, tf.data warm-up
    jax.block_until_ready(next(it))
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  jax.block_until_ready(batch)
  return batches * batch_size / (time.perf_counter() - start)


def run(f: flags.FlagValues) -> int:
  height, _, channels = models.model_input_shape(f.model)
  image_size = f.image_size or height
  num_classes = data.dataset_meta(f.dataset, data_dir=f.data_dir).num_classes
  feed = pipeline_rate(f.dataset, f.batch_size, image_size, channels, f.augment, f.batches,
                       f.data_dir)
  step = cvjax_rate(f.model, image_size, f.batch_size, num_classes, steps=f.steps,
                    repeats=f.repeats, model_kwargs=parse_kwargs(f.model_kwargs))
  result = {'dataset': f.dataset, 'model': f.model, 'batch_size': f.batch_size,
            'image_size': image_size, 'augment': f.augment, 'load_average': os.getloadavg(),
            'pipeline_images_per_second': feed,
            'train_step_images_per_second': step, 'ratio': feed / step}
  if f.json:
    print(json.dumps(result))
  else:
    print(f'{f.dataset} → {f.model} {image_size}² batch {f.batch_size}:')
    print(f'  input pipeline  {feed:10.0f} images/s')
    print(f'  train step      {step:10.0f} images/s')
    print(f'  pipeline / step {feed / step:10.1f}×  (target ≥ 3×); '
          f'load average {" ".join(f"{x:.2f}" for x in result["load_average"])}')
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
