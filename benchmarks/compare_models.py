"""Choose the right CNN by accuracy vs speed: the small variants of every family, side by side.

  python -m benchmarks.compare_models
  python -m benchmarks.compare_models --models=lenet5,resnet20 --train_steps=100 --json

For each model, at 32×32×1 inputs and 10 classes:
  params     trainable parameters (BatchNorm statistics not included);
  MACs       multiply-adds per image (`cvjax.summary`; ViT adds its attention products);
  images/s   CPU inference: the compiled forward pass in eval mode on batches of
             --infer_batch random images, median of --repeats timed runs, on this
             machine's CPU as it is (other processes included: run it on a quiet machine);
  accuracy   Fashion-MNIST test accuracy on the first --eval_examples test images after a
             short fixed budget: --train_steps steps of --batch_size images (28² padded to
             32²), the same data order for every model, Adam with cosine decay from
             --learning_rate, no augmentation; the library's `create_train_state`,
             `steps.train_step` / `steps.eval_step` and `cvjax.data` batches on one device.
A fixed number of training images, not of seconds, so the accuracies do not depend on the
machine's load; slow models simply take longer. Every model with BatchNorm runs with BN
momentum 0.9: the Keras ports default to 0.99 (MobileNet v2: 0.999), whose running
statistics after a hundred steps are still mostly their initial values, so their eval-mode
accuracy is near chance (measured after 150 steps with Keras' momenta: MobileNet v1 0.09,
MobileNet v2 0.18, EfficientNet-B0 0.09, DenseNet-121 0.35).
The ImageNet layouts (GoogLeNet, DenseNet-121, MobileNets, EfficientNet-B0) run at 32² as
they are, down to 1×1 maps. Writes <out_dir>/model_comparison.md (the table) and
<out_dir>/model_comparison.png (accuracy vs images/s, log scale, marker area ∝ params).

Budget: 6,400 training images and 2,000 test images per model for the defaults; the wall
time of a run, with its load, is in docs/models.md beside the committed table.
Fashion-MNIST must be prepared (`make fashion-mnist`; any run then builds the TFDS copy offline).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

from absl import flags

from cvjax import cli

# One per family; the mobile and ImageNet layouts run at 32² as they are (their early strides
# leave 1×1 maps at the end: cheap, and what the lecture means by "small images hurt them").
DEFAULT_MODELS = ('lenet5', 'resnet20', 'se_resnet20', 'googlenet', 'densenet121',
                  'mobilenet_v1', 'mobilenet_v2', 'efficientnet_b0', 'vit_tiny_cifar')
FAMILY = {
    'lenet5': 'LeNet', 'resnet20': 'ResNet (CIFAR)', 'se_resnet20': 'SENet (CIFAR)',
    'googlenet': 'Inception v1', 'googlenet_cifar': 'Inception v1 (CIFAR stem)',
    'densenet121': 'DenseNet', 'densenet_bc100_cifar': 'DenseNet-BC (CIFAR)',
    'mobilenet_v1': 'MobileNet v1', 'mobilenet_v1_cifar': 'MobileNet v1 (CIFAR)',
    'mobilenet_v2': 'MobileNet v2', 'mobilenet_v2_cifar': 'MobileNet v2 (CIFAR)',
    'efficientnet_b0': 'EfficientNet', 'efficientnet_b0_cifar': 'EfficientNet (CIFAR)',
    'vit_tiny_cifar': 'ViT (4×4 patches)', 'resnext50_32x4d': 'ResNeXt',
    'vgg11_bn_cifar': 'VGG',
}
IMAGE = (32, 32, 1)
NUM_CLASSES = 10


def static_costs(name: str) -> dict:
  """params and MACs per image at 32×32×1 (traced, no compute)."""
  from cvjax import summary
  from cvjax.models import get_model, vit
  model = get_model(name, NUM_CLASSES)  # the counts do not depend on conv_impl
  s = summary.summarize(model, (1, *IMAGE))
  macs = s['macs_per_example']
  if isinstance(model, vit.ViT):  # Q·Kᵀ and A·V are not layers
    macs += vit.attention_macs(IMAGE[0], model.patch_size, model.hidden_size, model.depth)
  return {'params': s['total_params'], 'macs': macs}


def inference_rate(name: str, batch: int, repeats: int, conv_impl: str = 'auto') -> float:
  """Median images/s of the compiled eval-mode forward pass on random inputs."""
  import jax
  import numpy as np
  from cvjax.models import get_model
  model = get_model(name, NUM_CLASSES, conv_impl=conv_impl)
  x = jax.numpy.asarray(np.random.default_rng(0).normal(size=(batch, *IMAGE)), np.float32)
  variables = jax.jit(model.init)(jax.random.key(0), x[:1])
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  forward(variables, x).block_until_ready()  # compile
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    forward(variables, x).block_until_ready()
    rates.append(batch / (time.perf_counter() - start))
  return statistics.median(rates)


def bn_options(name: str) -> dict:
  """BatchNorm momentum 0.9 for every model that has BatchNorm (see the module docstring)."""
  from cvjax.models import model_options
  return {'bn_momentum': 0.9} if 'bn_momentum' in model_options(name) else {}


def short_run(name: str, *, steps: int, batch_size: int, learning_rate: float, seed: int,
              eval_examples: int, data_dir: str | None, conv_impl: str = 'auto') -> dict:
  """Trains `name` on Fashion-MNIST for `steps` steps; accuracy on the first test images.

  The library's own pieces, on one device: `create_train_state`, the pure
  `steps.train_step` / `steps.eval_step` (classification task), `cvjax.data` batches.
  """
  import functools
  import jax
  import numpy as np
  import optax
  from cvjax import data
  from cvjax.models import get_model
  from cvjax.tasks import get_task
  from cvjax.train import TrainConfig
  from cvjax.train import steps as train_steps
  from cvjax.train.state import create_train_state
  mesh = train_steps.make_mesh(1)
  sharding = train_steps.batch_sharded(mesh)
  task = get_task(TrainConfig(model=name), None)  # classification, default settings
  model = get_model(name, NUM_CLASSES, conv_impl=conv_impl, **bn_options(name))
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  # rbg keys: XLA:CPU compiles threefry's initialisation of a large model slowly.
  state = jax.jit(functools.partial(create_train_state, model, tx, input_shape=(1, *IMAGE)))(
      jax.random.key(seed, impl='rbg'))
  step = jax.jit(functools.partial(train_steps.train_step, task=task, axis_name=None),
                 donate_argnums=0)
  evaluate = jax.jit(functools.partial(train_steps.eval_step, task=task, axis_name=None))
  meta = data.dataset_meta('fashion_mnist', data_dir=data_dir)
  spec = data.classification.data_spec('fashion_mnist', meta, image_size=IMAGE[0])
  batches = data.pipeline.train_batches(spec, global_batch_size=batch_size, sharding=sharding,
                                        seed=seed, augment='', data_dir=data_dir,
                                        num_examples=meta.split_sizes['train'])
  start = time.time()
  for _ in range(steps):
    state, metrics = step(state, next(batches))
  loss = float(metrics['loss'])
  train_seconds = time.time() - start
  batches.close()
  if not np.isfinite(loss):
    raise RuntimeError(f'{name}: the training loss is {loss}')
  correct = count = 0.0
  test = data.pipeline.eval_batches(spec, split='test', global_batch_size=250,
                                    sharding=sharding, data_dir=data_dir)
  for batch in test:
    sums, _ = jax.device_get(evaluate(state, batch))
    correct, count = correct + float(sums['correct']), count + float(sums['count'])
    if count >= eval_examples:
      break
  test.close()
  return {'accuracy': correct / count, 'eval_examples': int(count), 'final_loss': loss,
          'train_seconds': train_seconds}


def _fmt_count(n: float) -> str:
  for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
    if n >= scale:
      return f'{n / scale:.2f}{unit}'
  return str(int(n))


def markdown(rows: list[dict], args) -> str:
  lines = [
      f'All at 32×32×1, 10 classes. Accuracy: the first {args.eval_examples:,} Fashion-MNIST '
      f'test images, after {args.train_steps} steps × {args.batch_size} training images (Adam '
      f'{args.learning_rate:g}, cosine decay, no augmentation, seed {args.seed}). images/s: CPU '
      f'inference, batch {args.infer_batch}, median of {args.repeats} runs. MACs per image '
      f'(ViT: with the attention products). Produced by `python -m benchmarks.compare_models`.',
      '',
      '| model | family | params | MACs / image | CPU images/s | Fashion-MNIST accuracy '
      '| train s |',
      '|---|---|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f"| {r['model']} | {FAMILY.get(r['model'], '')} | {r['params']:,} | "
                 f"{_fmt_count(r['macs'])} | {r['images_per_second']:,.0f} | "
                 f"{r['accuracy']:.4f} | {r['train_seconds']:.0f} |")
  return '\n'.join(lines) + '\n'


def scatter(rows: list[dict], path: str, args) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7.5, 5), dpi=150)
  for i, r in enumerate(sorted(rows, key=lambda r: r['images_per_second'])):
    ax.scatter(r['images_per_second'], r['accuracy'], s=20 + r['params'] / 2e4, alpha=0.6)
    ax.annotate(r['model'], (r['images_per_second'], r['accuracy']), fontsize=8,
                xytext=(5, 5 if i % 2 else -11), textcoords='offset points')  # neighbours apart
  ax.set_xscale('log')
  ax.set_xlabel(f'CPU inference images/s (batch {args.infer_batch}, log scale)')
  ax.set_ylabel(f'Fashion-MNIST test accuracy after {args.train_steps} steps')
  ax.set_title('Accuracy vs speed (marker area ∝ parameters)')
  ax.grid(True, which='both', alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


FLAGS = flags.FlagValues()
flags.DEFINE_string('models', ','.join(DEFAULT_MODELS),
                    'Comma-separated registered classification models.', flag_values=FLAGS)
flags.DEFINE_integer('train_steps', 100, 'Training steps per model.', flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 64, 'Training images per step.', flag_values=FLAGS)
flags.DEFINE_float('learning_rate', 2e-3, 'Adam peak learning rate.', flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'Initialisation and data-order seed.', flag_values=FLAGS)
flags.DEFINE_integer('eval_examples', 2000,
                     'Test images scored (the first ones of the split, in order).',
                     flag_values=FLAGS)
flags.DEFINE_integer('infer_batch', 256, 'Images per timed inference call.', flag_values=FLAGS)
flags.DEFINE_integer('repeats', 5, 'Timed inference runs; the median is reported.',
                     flag_values=FLAGS)
flags.DEFINE_string('data_dir', None, "TFDS data_dir (default: TFDS's).", flag_values=FLAGS)
flags.DEFINE_string('out_dir', 'docs/images', 'Where the table and the plot go.',
                    flag_values=FLAGS)
flags.DEFINE_string('conv_impl', 'auto', 'cvjax conv impl of every model: auto or xla.',
                    flag_values=FLAGS)
flags.DEFINE_boolean('json', False, 'Also print the rows as JSON.', flag_values=FLAGS)


def run(f: flags.FlagValues) -> int:
  from cvjax.errors import UserError, unknown_choice
  from cvjax.models import CONV_IMPLS, list_models
  names = [m for m in f.models.split(',') if m]
  for n in names:
    if n not in list_models():
      raise unknown_choice('model', n, list_models())
  for flag in ('train_steps', 'batch_size', 'infer_batch', 'repeats', 'eval_examples'):
    if f[flag].value < 1:
      raise UserError(f'--{flag} must be a positive integer, got {f[flag].value}')
  if not names:
    raise UserError('--models is empty; name at least one model')
  if f.conv_impl not in CONV_IMPLS:
    raise unknown_choice('conv impl', f.conv_impl, CONV_IMPLS)
  rows = []
  for n in names:
    start = time.time()
    row = {'model': n, **static_costs(n),
           'images_per_second': inference_rate(n, f.infer_batch, f.repeats, f.conv_impl)}
    row.update(short_run(n, steps=f.train_steps, batch_size=f.batch_size,
                         learning_rate=f.learning_rate, seed=f.seed,
                         eval_examples=f.eval_examples, data_dir=f.data_dir,
                         conv_impl=f.conv_impl))
    row['total_seconds'] = time.time() - start
    rows.append(row)
    print(f"{n:24s} params {row['params']:>10,}  MACs {_fmt_count(row['macs']):>8}  "
          f"{row['images_per_second']:8.0f} img/s  accuracy {row['accuracy']:.4f}  "
          f"({row['total_seconds']:.0f} s)", flush=True)
  os.makedirs(f.out_dir, exist_ok=True)
  table = os.path.join(f.out_dir, 'model_comparison.md')
  with open(table, 'w') as out:
    out.write(markdown(rows, f))
  plot = os.path.join(f.out_dir, 'model_comparison.png')
  scatter(rows, plot, f)
  print(f'wrote {table} and {plot}')
  if f.json:
    print(json.dumps(rows))
  return 0


def main(argv=None) -> int:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
