"""Training throughput of cvjax against peers, measured side by side in one run.

  python -m benchmarks.throughput --model=resnet50 --image_size=224 --batch_size=16 --peers=keras
  python -m benchmarks.throughput --model=lenet5 --batch_size=256 --peers=keras --json

Times one optimizer step (forward, backward, SGD-momentum update) on random
data already on the device: cvjax's compiled data-parallel step (the one
`fit` uses) and, for each peer, the same architecture in that framework.
Prints images/s (median of --repeats timed runs of --steps steps each, after
a warm-up that compiles) and the ratio cvjax / peer. Peers that are not
installed, or have no equivalent model, are reported as skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault('KERAS_BACKEND', 'jax')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _median_rate(run_steps, batch_size: int, steps: int, repeats: int) -> float:
  """Median images/s over `repeats` timings of `run_steps(steps)`."""
  run_steps(1)  # compile and warm up
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    run_steps(steps)
    rates.append(steps * batch_size / (time.perf_counter() - start))
  return statistics.median(rates)


def cvjax_rate(model_name: str, image_size: int, batch_size: int, num_classes: int,
               steps: int, repeats: int, model_kwargs: dict | None = None) -> float:
  import jax
  import numpy as np
  import optax
  from cvjax import models
  from cvjax.train import steps as train_steps
  from cvjax.train.state import create_train_state

  channels = models.model_input_shape(model_name)[2]
  mesh = train_steps.make_mesh()
  model = models.get_model(model_name, num_classes=num_classes, bn_axis_name=train_steps.AXIS,
                           **(model_kwargs or {}))
  state = jax.jit(lambda k: create_train_state(model, optax.sgd(0.01, momentum=0.9), k,
                                               (1, image_size, image_size, channels)),
                  out_shardings=train_steps.replicated(mesh))(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batch = jax.device_put(
      {'image': rng.normal(size=(batch_size, image_size, image_size, channels)).astype(np.float32),
       'label': rng.integers(0, num_classes, batch_size).astype(np.int32)},
      train_steps.batch_sharded(mesh))
  step = train_steps.parallel_train_step(mesh)
  holder = [state]

  def run(n):
    s = holder[0]
    for _ in range(n):
      s, metrics = step(s, batch)
    jax.block_until_ready(metrics)
    holder[0] = s

  return _median_rate(run, batch_size, steps, repeats)


def _keras_model(model_name: str, image_size: int, num_classes: int):
  import keras
  apps = {'resnet50': keras.applications.ResNet50, 'resnet101': keras.applications.ResNet101,
          'resnet152': keras.applications.ResNet152, 'vgg16': keras.applications.VGG16,
          'vgg19': keras.applications.VGG19}
  base = model_name.removesuffix('_keras')
  if base in apps:
    return apps[base](weights=None, input_shape=(image_size, image_size, 3),
                      classes=num_classes, classifier_activation=None)
  if model_name == 'lenet5':
    layers = keras.layers
    return keras.Sequential([
        keras.Input((image_size, image_size, 1)),
        layers.Conv2D(6, 5, activation='relu'), layers.MaxPooling2D(2),
        layers.Conv2D(16, 5, activation='relu'), layers.MaxPooling2D(2),
        layers.Conv2D(120, 5, activation='relu'), layers.Flatten(),
        layers.Dense(84, activation='relu'), layers.Dense(num_classes)])
  return None


def keras_rate(model_name: str, image_size: int, batch_size: int, num_classes: int,
               steps: int, repeats: int) -> float | None:
  import keras
  import numpy as np
  model = _keras_model(model_name, image_size, num_classes)
  if model is None:
    return None
  model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=True)
  channels = model.input_shape[-1]
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch_size, image_size, image_size, channels)).astype(np.float32)
  y = rng.integers(0, num_classes, batch_size).astype(np.int32)

  def run(n):
    for _ in range(n):
      model.train_on_batch(x, y)  # returns host floats: synchronous

  return _median_rate(run, batch_size, steps, repeats)


PEERS = {'keras': keras_rate}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='resnet50')
  parser.add_argument('--image_size', type=int, default=None)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--peers', default='keras', help='comma-separated: ' + ','.join(PEERS))
  parser.add_argument('--steps', type=int, default=3, help='steps per timed run')
  parser.add_argument('--repeats', type=int, default=5, help='timed runs; the median is reported')
  parser.add_argument('--model_kwargs', default='',
                      help='cvjax model arguments, e.g. activation=relu,pooling=max (lenet5 vs the\n'
                      'Keras LeNet, which uses relu and max-pooling)')
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)

  from cvjax import models
  from cvjax.errors import UserError, unknown_choice
  from cvjax.train.config import parse_kwargs
  try:
    image_size = args.image_size or models.model_input_shape(args.model)[0]
    peers = [p for p in args.peers.split(',') if p]
    for p in peers:
      if p not in PEERS:
        raise unknown_choice('peer', p, PEERS)
    results = {'model': args.model, 'image_size': image_size, 'batch_size': args.batch_size,
               'cvjax': cvjax_rate(args.model, image_size, args.batch_size, args.num_classes,
                                   args.steps, args.repeats, parse_kwargs(args.model_kwargs))}
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for peer in peers:
    try:
      rate = PEERS[peer](args.model, image_size, args.batch_size, args.num_classes,
                         args.steps, args.repeats)
    except ImportError as e:
      rate, why = None, f'not installed ({e.name})'
    else:
      why = 'no equivalent model'
    results[peer] = rate
    if rate is None:
      results[f'{peer}_skipped'] = why
    else:
      results[f'ratio_vs_{peer}'] = results['cvjax'] / rate
  if args.json:
    print(json.dumps(results))
  else:
    print(f'{args.model} {image_size}² batch {args.batch_size}, train step, images/s (median):')
    print(f'  cvjax  {results["cvjax"]:9.1f}')
    for peer in peers:
      if results[peer] is None:
        print(f'  {peer:6} skipped: {results[f"{peer}_skipped"]}')
      else:
        print(f'  {peer:6} {results[peer]:9.1f}   cvjax/{peer} = {results[f"ratio_vs_{peer}"]:.2f}×')
  return 0


if __name__ == '__main__':
  sys.exit(main())
