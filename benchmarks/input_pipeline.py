"""Does the input pipeline keep up with the train step? Both measured in one run.

  python -m benchmarks.input_pipeline --dataset=fashion_mnist --model=lenet5 \
      --model_kwargs=activation=relu,pooling=max --batch_size=128
  python -m benchmarks.input_pipeline --dataset=fashion_mnist --model=resnet50 --image_size=224 \
      --augment='inception_crop|flip_lr' --batch_size=16 --batches=40 --steps=1 --repeats=3

Prints the images/s that `cvjax.data.train_batches` delivers as device arrays
(augmentation included, nothing consuming them) and the images/s the compiled
train step consumes on random data, and their ratio; the target is ≥ 3×.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def pipeline_rate(dataset: str, batch_size: int, image_size: int, channels: int,
                  augment: str | None, batches: int, data_dir: str | None) -> float:
  import jax
  from cvjax import data
  from cvjax.train import steps
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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', default='fashion_mnist')
  parser.add_argument('--model', default='lenet5')
  parser.add_argument('--model_kwargs', default='')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--image_size', type=int, default=None)
  parser.add_argument('--augment', default=None, help="default: the dataset's; '' for none")
  parser.add_argument('--batches', type=int, default=200, help='batches timed from the pipeline')
  parser.add_argument('--steps', type=int, default=10, help='train steps per timed round')
  parser.add_argument('--repeats', type=int, default=5, help='timed rounds of the train step')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)

  from benchmarks.throughput import cvjax_rate
  from cvjax import data, models
  from cvjax.errors import UserError
  from cvjax.train.config import parse_kwargs
  try:
    height, _, channels = models.model_input_shape(args.model)
    image_size = args.image_size or height
    num_classes = data.dataset_meta(args.dataset, data_dir=args.data_dir).num_classes
    feed = pipeline_rate(args.dataset, args.batch_size, image_size, channels, args.augment,
                         args.batches, args.data_dir)
    step = cvjax_rate(args.model, image_size, args.batch_size, num_classes, steps=args.steps,
                      repeats=args.repeats, model_kwargs=parse_kwargs(args.model_kwargs))
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  result = {'dataset': args.dataset, 'model': args.model, 'batch_size': args.batch_size,
            'image_size': image_size, 'augment': args.augment, 'load_average': os.getloadavg(),
            'pipeline_images_per_second': feed,
            'train_step_images_per_second': step, 'ratio': feed / step}
  if args.json:
    print(json.dumps(result))
  else:
    print(f'{args.dataset} → {args.model} {image_size}² batch {args.batch_size}:')
    print(f'  input pipeline  {feed:10.0f} images/s')
    print(f'  train step      {step:10.0f} images/s')
    print(f'  pipeline / step {feed / step:10.1f}×  (target ≥ 3×); '
          f'load average {" ".join(f"{x:.2f}" for x in result["load_average"])}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
