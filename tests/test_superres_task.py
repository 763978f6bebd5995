"""The superres task: the pipeline's `repeat`, windows of padded photographs, LR/HR
batches of `cvjax_sr_photos`, config checks, loss and eval sums, the models' init scale,
uint8 predict, and a run that resumes exactly through fit.

The dataset is the prepared `cvjax_sr_photos` in the default TFDS directory (built
offline from scikit-image's photographs on first use).
"""
import functools
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import cvjax
from cvjax.data import pipeline, preprocess, sr_photos
from cvjax.errors import UserError
from cvjax.models import get_model
from cvjax.models.superres import bicubic_upscale
from cvjax.superresolution import data as sr_data
from cvjax.superresolution import metrics
from cvjax.superresolution import predict as sr_predict
from cvjax.tasks import fit, get_task
from cvjax.tasks import superres as sr_task
from cvjax.train import TrainConfig

DATASET = 'cvjax_sr_photos'
SKIMAGE_TRAIN = set(sr_photos.SKIMAGE_SPLITS['train'])


def _photos(split):
  """[(name, uint8[H, W, 3])] of `split` in file order, read straight from TFDS."""
  builder = sr_data.builder(DATASET)
  return [(ex['name'].decode(), ex['image'])
          for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))]


@pytest.fixture(scope='module', autouse=True)
def meta():
  """The photographs' meta; autouse, since preparing the dataset is what every test here
  that reads TFDS needs first, whichever of them a worker runs first."""
  return sr_data.dataset_meta(DATASET)


# ------------------------------------------------------------------- pipeline: repeat


def _positional_spec(repeat):
  """An in-memory DataSpec over the first 3 training photographs whose image encodes where
  each pixel is (channel 0: row, channel 1: column) and which photograph it stands for
  (channel 2, and 'label'), so that a window says which example and offset it came from."""
  rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing='ij')
  grid = tf.constant(np.stack([rows, cols], -1).astype(np.uint8))

  def read(ex, train):
    del train
    label = tf.cast(tf.strings.to_hash_bucket_fast(ex['name'], 251), tf.int32)
    which = tf.fill([32, 32, 1], tf.cast(label, tf.uint8))
    return {'image': tf.concat([grid, which], -1), 'label': label}

  return pipeline.DataSpec(parts={'train': ((DATASET, 'train[:3]'),)}, read=read, tail='',
                           train_keys=('image', 'label'), eval_keys=('image',),
                           in_memory=True, repeat=repeat)


def _decode(batch):
  """[(label, (top, left))] of a batch of `_positional_spec` windows."""
  levels = np.round(batch['image'][:, 0, 0] * 255).astype(int)
  np.testing.assert_array_equal(levels[:, 2], batch['label'])  # one photograph per window
  return [(int(label), (int(top), int(left))) for label, (top, left, _) in
          zip(batch['label'], levels)]


def test_repeat_visits_each_stored_example_repeat_times_per_epoch_with_fresh_windows():
  spec = _positional_spec(repeat=4)
  kwargs = dict(global_batch_size=4, seed=3, augment='random_crop(8)', num_examples=12)
  source = pipeline.local_train_batches(spec, **kwargs)
  batches = [next(source) for _ in range(6)]                  # 12 visits / 4 = 3 steps
  for epoch in (batches[:3], batches[3:]):
    visits = [v for b in epoch for v in _decode(b)]
    labels = [label for label, _ in visits]
    assert len(set(labels)) == 3                              # 3 distinct photographs
    assert sorted(labels.count(label) for label in set(labels)) == [4, 4, 4]
    for label in set(labels):                                 # each visit its own window
      windows = [where for lab, where in visits if lab == label]
      assert len(set(windows)) == 4, windows
      assert all(0 <= t <= 24 and 0 <= l <= 24 for t, l in windows)
  assert [_decode(b) for b in batches[:3]] != [_decode(b) for b in batches[3:]]
  for k in (2, 4):                                            # resumed at k: the same batch
    resumed = next(pipeline.local_train_batches(spec, start_step=k, **kwargs))
    for key in batches[k]:
      np.testing.assert_array_equal(resumed[key], batches[k][key])
  # repeat 1: one visit per photograph, too few for a batch of 4
  with pytest.raises(UserError, match='has 3 train examples, fewer than the 4 per step'):
    pipeline.local_train_batches(_positional_spec(repeat=1), **kwargs)


def test_reading_padded_photographs_into_memory_batches_few_at_a_time():
  """tf.data's fused map-and-batch allocates a whole read batch ahead: 1024 photographs
  padded to 1404² asked for 6 GB to hold the 9 training photographs."""
  padded = {'image': tf.TensorSpec([1404, 1404, 3], tf.uint8),
            preprocess.IMAGE_HW: tf.TensorSpec([2], tf.int32)}
  assert pipeline.read_batch_size(padded) == (64 << 20) // (1404 * 1404 * 3 + 8) == 11
  assert pipeline.read_batch_size({'image': tf.TensorSpec([28, 28, 1], tf.uint8),
                                   'label': tf.TensorSpec([], tf.int64)}) == 1024
  assert pipeline.read_batch_size({'image': tf.TensorSpec([], tf.string)}) == 1024
  assert pipeline.read_batch_size({'image': tf.TensorSpec([9000, 9000, 3], tf.uint8)}) == 1


# ------------------------------------------------------------- random_crop + IMAGE_HW


def test_random_crop_of_a_padded_image_stays_inside_its_true_size_and_drops_the_key():
  h, w, size = 13, 17, 8
  rng = np.random.default_rng(0)
  true = rng.integers(1, 256, (h, w, 3)).astype(np.float32) / 255   # no zero anywhere
  padded = np.zeros((20, 24, 3), np.float32)
  padded[:h, :w] = true
  ex = {'image': tf.constant(padded), preprocess.IMAGE_HW: tf.constant([h, w], tf.int32),
        'label': tf.constant(5)}
  chain = tf.function(preprocess.build(f'random_crop({size})'))   # as the pipeline runs it
  offsets = set()
  for seed in range(300):
    out = chain(ex, tf.constant([1, seed], tf.int64))
    assert set(out) == {'image', 'label'}
    window = out['image'].numpy()
    assert window.shape == (size, size, 3) and (window > 0).all()   # never the padding
    (top, left), = [(i, j) for i in range(h - size + 1) for j in range(w - size + 1)
                    if np.array_equal(true[i:i + size, j:j + size], window)]
    offsets.add((top, left))
  tops, lefts = {t for t, _ in offsets}, {l for _, l in offsets}
  assert tops == set(range(h - size + 1)) and lefts == set(range(w - size + 1))
  # The true size, not the padded one, must hold the window.
  small = {**ex, preprocess.IMAGE_HW: tf.constant([7, 17], tf.int32)}
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'random_crop\(8\) needs images'):
    chain(small, tf.constant([1, 0], tf.int64))


# ------------------------------------------------------------------------ SR data


def test_dataset_meta_counts_train_windows_and_eval_photographs(meta):
  train = [name for name, _ in _photos('train')]
  assert SKIMAGE_TRAIN <= set(train)
  # OpenCV's samples, where installed when the dataset was built, add train photographs only
  assert all(name.startswith('opencv/') for name in set(train) - SKIMAGE_TRAIN)
  assert meta.split_sizes == {'train': len(train) * sr_data.PATCHES_PER_IMAGE,
                              'validation': 2, 'test': 5}
  if set(train) == SKIMAGE_TRAIN:  # built where scikit-image's photographs were all there was
    assert meta.split_sizes['train'] == 9 * 64
  assert meta.num_classes == 3 and meta.image_shape == (None, None, 3)


def _train_batch(model_channels, augment, meta, *, size=8, scale=2, batch=8, seed=0):
  spec = sr_data.data_spec(DATASET, scale=scale, channels=model_channels)
  return next(pipeline.local_train_batches(
      spec, global_batch_size=batch, seed=seed, num_examples=meta.split_sizes['train'],
      augment=sr_data.train_augment(augment, input_size=size, scale=scale)))


def _bicubic_lr(hr, scale):
  lr = tf.image.resize(hr, [hr.shape[1] // scale, hr.shape[2] // scale], method='bicubic',
                       antialias=True).numpy()
  return np.round(np.clip(lr, 0, 1) * 255) / 255


def _on_the_8_bit_grid(x):
  np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-4)


def test_luma_train_batches_are_8_bit_bicubic_lr_of_the_y_window(meta):
  batch = _train_batch(1, None, meta)  # espcn_x2 at image_size 8, the eight symmetries
  assert batch['image'].shape == (8, 8, 8, 1) and batch['target'].shape == (8, 16, 16, 1)
  assert batch['image'].dtype == batch['target'].dtype == np.float32
  np.testing.assert_allclose(batch['image'], _bicubic_lr(batch['target'], 2), atol=1e-6)
  _on_the_8_bit_grid(batch['image'])
  # Y of 8-bit RGB: within MATLAB's [16, 235] / 255 (not itself rounded to 8 bits)
  assert batch['target'].min() >= 16 / 255 - 1e-6 and batch['target'].max() <= 235 / 255 + 1e-6


def _find_window(photos, window):
  """(photo index, top, left) of the places where `window` (uint8[s, s, 3]) is a window."""
  s = window.shape[0]
  found = []
  for i, photo in enumerate(photos):
    first = (photo[:-s + 1, :-s + 1] == window[0, 0]).all(-1)
    last = (photo[s - 1:, s - 1:] == window[-1, -1]).all(-1)
    for top, left in np.argwhere(first & last):
      if np.array_equal(photo[top:top + s, left:left + s], window):
        found.append((i, int(top), int(left)))
  return found


def test_rgb_train_targets_are_windows_of_the_true_photographs_never_the_padding(meta):
  batch = _train_batch(3, '', meta, batch=16, seed=1)  # edsr_baseline_x2: no symmetries
  assert batch['image'].shape == (16, 8, 8, 3) and batch['target'].shape == (16, 16, 16, 3)
  np.testing.assert_allclose(batch['image'], _bicubic_lr(batch['target'], 2), atol=1e-6)
  _on_the_8_bit_grid(batch['image'])
  _on_the_8_bit_grid(batch['target'])
  photos = [image for _, image in _photos('train')]
  sources = set()
  for target in batch['target']:
    places = _find_window(photos, np.round(target * 255).astype(np.uint8))
    assert places, 'a train window that is not inside any photograph'
    sources.add(places[0][0])
  assert len(sources) >= 4  # 16 windows drawn from the 9+ photographs


@pytest.mark.parametrize('channels', [1, 3])
def test_eval_batches_are_the_central_window_of_each_validation_photograph(channels):
  spec = sr_data.data_spec(DATASET, scale=2, channels=channels)
  batches = list(pipeline.local_eval_batches(spec, split='validation', global_batch_size=4))
  assert len(batches) == 1
  (batch,) = batches
  e = sr_data.EVAL_CROP
  assert batch['image'].shape == (4, e // 2, e // 2, channels)
  assert batch['target'].shape == (4, e, e, channels)
  np.testing.assert_array_equal(batch['mask'], [True, True, False, False])
  for i, (name, photo) in enumerate(_photos('validation')):
    top, left = (photo.shape[0] - e) // 2, (photo.shape[1] - e) // 2
    hr = photo[top:top + e, left:left + e].astype(np.float32) / 255
    if channels == 1:
      hr = np.asarray(metrics.rgb_to_y(hr))
    np.testing.assert_allclose(batch['target'][i], hr, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(batch['image'][:2], _bicubic_lr(batch['target'][:2], 2), atol=1e-6)
  assert not batch['image'][2:].any() and not batch['target'][2:].any()  # padding is zeros


# ---------------------------------------------------------------------- config checks


BASE = dict(task='superres', model='espcn_x2', dataset=DATASET, image_size=8, batch_size=8,
            num_train_steps=1)


@pytest.mark.parametrize('changes, message', [
    (dict(dataset='fashion_mnist'),
     "the superres task trains on whole photographs, cvjax_sr_photos; got dataset "
     "'fashion_mnist': use --dataset=cvjax_sr_photos"),
    (dict(mixup_alpha=0.2),
     'task=superres learns images, not labels: --mixup_alpha mixes labels; drop it'),
    (dict(label_smoothing=0.1),
     'task=superres learns images, not labels: --label_smoothing smooths labels; drop it'),
    (dict(model='resnet20'),
     'task=superres needs a super-resolution model (srcnn_915, espcn_x2, edsr_baseline_x2, '
     '...), got resnet20'),
    (dict(model='srcnn_915', model_kwargs={'scale': 1}),
     'task=superres needs a model that upscales by an integer scale >= 2; srcnn_915 has '
     'scale 1 (e.g. --model_kwargs=scale=2)'),
    (dict(augment='dihedral|bogus'),
     "unknown augmentation op 'bogus'; none of the 28 choices is close (the first are "
     "brightness, caffe, central_crop, contrast, ...)"),
])
def test_settings_that_cannot_work_are_refused_before_the_workdir_is_written(
    changes, message, tmp_path):
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match=f'^{re.escape(message)}$'):
    fit(TrainConfig(**{**BASE, **changes}), str(workdir))
  assert not workdir.exists() or not any(workdir.iterdir())  # nothing written in it


def test_a_window_larger_than_the_smallest_training_photograph_is_refused(tmp_path):
  """random_crop would stop the run with a TensorFlow error at the first step that drew
  that photograph (coins, 300 × 384, for --image_size=151 at ×2: step 4 with seed 0)."""
  shortest = min(min(image.shape[:2]) for _, image in _photos('train'))
  size = shortest // 2 + 1
  message = (f'--image_size={size} at scale 2 takes {2 * size} x {2 * size} windows of the '
             f'training photographs, but the smallest of {DATASET} has a side of {shortest} '
             f'pixels; use --image_size={shortest // 2} or less')
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match=f'^{re.escape(message)}$'):
    fit(TrainConfig(**{**BASE, 'image_size': size}), str(workdir))
  assert not workdir.exists() or not any(workdir.iterdir())
  sr_data.check_window(DATASET, input_size=shortest // 2, scale=2)  # the largest that fits


@pytest.mark.slow
def test_the_experiment_prints_one_error_line_for_a_classification_dataset(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get('PYTHONPATH', ''))
  done = subprocess.run(
      [sys.executable, '-m', 'experiments.superres', '--task=superres', '--model=espcn_x2',
       '--dataset=fashion_mnist', f'--workdir={tmp_path / "run"}'],
      cwd=repo, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.strip().splitlines()[-1] == (
      "error: the superres task trains on whole photographs, cvjax_sr_photos; got dataset "
      "'fashion_mnist': use --dataset=cvjax_sr_photos")
  assert 'Traceback' not in done.stderr
  assert not (tmp_path / 'run').exists() or not any((tmp_path / 'run').iterdir())


# ---------------------------------------------------------------- loss and eval sums


def _task(model='espcn_x2', **changes):
  return get_task(TrainConfig(task='superres', model=model, dataset=DATASET, **changes), None)


def test_pixel_losses_on_small_arrays():
  sr = jnp.array([[0.0, 1.0], [2.0, -3.0]])
  hr = jnp.zeros((2, 2))
  assert float(sr_task.pixel_loss(sr, hr, 'l1')) == 1.5   # (0 + 1 + 2 + 3) / 4
  assert float(sr_task.pixel_loss(sr, hr, 'l2')) == 3.5   # (0 + 1 + 4 + 9) / 4
  assert float(sr_task.pixel_loss(sr + 0.25, sr, 'l1')) == 0.25
  task = _task(pixel_loss='l2')
  assert task.scale == 2 and task.channels == 1 and task.main_metric == 'psnr_y'
  loss, logged = task.loss(jnp.full((1, 4, 4, 1), 0.5), {'target': jnp.zeros((1, 4, 4, 1))}, None)
  assert float(loss) == 0.25
  np.testing.assert_allclose(logged['psnr'], 10 * np.log10(1 / 0.25), rtol=1e-6)


@pytest.mark.parametrize('padding_output', ['zeros', 'noise'])
def test_eval_sums_count_only_real_examples_and_psnr_y_is_of_the_8_bit_output(padding_output):
  task = _task()
  rng = np.random.default_rng(0)
  hr = rng.random((2, 24, 24, 1), np.float32)
  lr = np.asarray(_bicubic_lr(hr, 2), np.float32)
  out = np.clip(hr + rng.normal(0, 0.05, hr.shape), -0.1, 1.1).astype(np.float32)
  pad_out = np.zeros((1, 24, 24, 1), np.float32) if padding_output == 'zeros' else \
      rng.random((1, 24, 24, 1), np.float32)
  batch = {'image': np.concatenate([lr, np.zeros((1, 12, 12, 1), np.float32)]),
           'target': np.concatenate([hr, np.zeros((1, 24, 24, 1), np.float32)]),
           'mask': np.array([True, True, False])}
  sums, _ = task.eval_outputs(jnp.asarray(np.concatenate([out, pad_out])), batch)
  real, _ = task.eval_outputs(jnp.asarray(out), {'image': lr, 'target': hr,
                                                  'mask': np.array([True, True])})
  assert set(sums) == {'psnr_y', 'ssim_y', 'bicubic_psnr_y', 'loss', 'count'}
  for k in sums:
    assert np.isfinite(sums[k]), k
    np.testing.assert_allclose(sums[k], real[k], rtol=1e-6, err_msg=k)
  assert float(sums['count']) == 2
  quantized = np.round(np.clip(out, 0, 1) * 255) / 255
  np.testing.assert_allclose(sums['psnr_y'], np.sum(metrics.psnr_y(quantized, hr, 2)), rtol=1e-6)
  np.testing.assert_allclose(sums['loss'], 2 * np.mean(np.abs(out - hr)), rtol=1e-5)
  evaluator = task.evaluator()
  evaluator.update(sums, {})
  result = evaluator.result()
  assert result['count'] == 2
  np.testing.assert_allclose(result['psnr_y'], float(sums['psnr_y']) / 2, rtol=1e-6)


# ------------------------------------------------------------------------------ init


def test_edsr_baseline_at_init_keeps_the_input_scale():
  """At PyTorch's default init (variance 1/(3·fan_in)) each residual block adds a small
  update, so the output's spread stays near the input's: measured 0.07 against 0.29 for
  U[0, 1] input. He init (variance 2/fan_in) roughly doubles the variance in each of the 16
  unnormalised blocks and gave outputs with a std in the thousands, which L1 training
  from scratch has to unlearn first."""
  model = get_model('edsr_baseline_x2', 3)
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  y = jax.jit(model.apply)(variables, x)
  assert y.shape == (2, 32, 32, 3)
  spread, reference = float(jnp.std(y)), float(jnp.std(x))
  assert 0.1 * reference < spread < 10 * reference, (spread, reference)
  assert float(jnp.abs(y).max()) < 3.0


def test_srcnn_refines_its_own_bicubic_upscale():
  x = jax.random.uniform(jax.random.key(2), (1, 7, 9, 1))
  small = dict(widths=(8, 4))
  scaled = get_model('srcnn_915', 1, scale=2, **small)
  plain = get_model('srcnn_915', 1, scale=1, **small)
  variables = scaled.init(jax.random.key(0), x)
  y = scaled.apply(variables, x)
  assert y.shape == (1, 14, 18, 1)
  # the same convs, applied by hand to the bicubic ×2 input, give the same output
  np.testing.assert_allclose(y, plain.apply(variables, bicubic_upscale(x, 2)), atol=1e-6)
  constant = bicubic_upscale(jnp.full((1, 5, 6, 2), 0.3), 2)
  assert constant.shape == (1, 10, 12, 2)
  np.testing.assert_allclose(constant, 0.3, atol=1e-6)


# --------------------------------------------------------------------------- predict


@functools.cache
def _tiny(name, **kwargs):
  model = get_model(name, 1, **kwargs)
  channels = 3 if name.startswith('edsr') else 1
  variables = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, channels)))
  return functools.partial(model.apply, train=False), variables, channels


def test_upscale_keeps_uint8_channels_and_gray_stays_gray():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (2, 10, 12, 3), dtype=np.uint8)
  gray = rng.integers(0, 256, (2, 10, 12, 1), dtype=np.uint8)
  for apply, variables, channels in (_tiny('espcn_x2'),
                                     _tiny('edsr_baseline_x2', features=8, n_resblocks=1)):
    up = functools.partial(sr_predict.upscale, apply, variables, scale=2, channels=channels)
    for images in (rgb, gray):
      out = up(images)
      assert out.dtype == np.uint8 and out.shape == (2, 20, 24, images.shape[-1])
    if channels == 3:  # RGB models see the image in [0, 1]; the output is rounded
      expected = sr_predict.to_uint8(apply(variables, rgb.astype(np.float32) / 255))
      np.testing.assert_array_equal(up(rgb), expected)
  # A luma model upscales Y and bicubic chroma: a gray photograph stays neutral.
  apply, variables, _ = _tiny('espcn_x2')
  as_rgb = np.repeat(gray, 3, axis=-1)
  out = sr_predict.upscale(apply, variables, as_rgb, scale=2, channels=1).astype(int)
  assert np.abs(out[..., 0] - out[..., 1]).max() <= 1
  assert np.abs(out[..., 0] - out[..., 2]).max() <= 1
  gray_out = sr_predict.upscale(apply, variables, gray, scale=2, channels=1).astype(int)
  assert np.abs(gray_out[..., 0] - out[..., 0]).max() == 0
  # and its luma is the model's output on the 8-bit Y
  y = np.asarray(metrics.rgb_to_y(as_rgb.astype(np.float32) / 255))
  model_y = apply(variables, np.round(y * 255) / 255)
  out_y = np.asarray(metrics.rgb_to_y(out.astype(np.float32) / 255))
  inside = (model_y > 16 / 255) & (model_y < 235 / 255)   # clipping aside
  np.testing.assert_allclose(out_y[inside], np.asarray(model_y)[inside], atol=1.5 / 255)
  bicubic = sr_predict.bicubic(gray, 2)
  assert bicubic.dtype == np.uint8 and bicubic.shape == (2, 20, 24, 1)


def test_ycbcr_round_trips_and_its_y_is_the_metrics_luma():
  rgb = np.random.default_rng(0).random((3, 5, 7, 3)).astype(np.float32)
  ycbcr = sr_predict.rgb_to_ycbcr(rgb)
  np.testing.assert_allclose(sr_predict.ycbcr_to_rgb(ycbcr), rgb, atol=1e-5)
  np.testing.assert_allclose(ycbcr[..., :1], metrics.rgb_to_y(rgb), atol=1e-6)
  np.testing.assert_allclose(sr_predict.rgb_to_ycbcr(jnp.ones(3)), np.array([235, 128, 128]) / 255,
                             atol=1e-6)
  np.testing.assert_allclose(sr_predict.rgb_to_ycbcr(jnp.zeros(3)), np.array([16, 128, 128]) / 255,
                             atol=1e-6)


# ------------------------------------------------------------------ fit, resume, restore


def _config(**changes):
  base = dict(task='superres', model='espcn_x2', dataset=DATASET, image_size=8, batch_size=8,
              num_train_steps=6, optimizer='adam', learning_rate=1e-3, schedule='constant',
              pixel_loss='l2', log_every_steps=3, eval_every_steps=3, checkpoint_every_steps=3,
              keep_checkpoints=5, eval_split='validation', conv_impl='xla', seed=0)
  return TrainConfig(**{**base, **changes})


def _params(workdir):
  return jax.device_get(cvjax.restore(workdir).variables['params'])


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_a_run_resumed_after_step_3_equals_the_uninterrupted_run_and_predicts(tmp_path):
  straight = str(tmp_path / 'straight')
  results = fit(_config(), straight)
  assert results['step'] == 6 and results['test_examples'] == 5
  assert np.isfinite(results['test_psnr_y']) and results['test_bicubic_psnr_y'] > 20
  # As if killed after step 3's checkpoint: re-running continues exactly.
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '6'))
  os.remove(os.path.join(resumed, 'results.json'))
  again = fit(_config(), resumed)
  jax.tree.map(np.testing.assert_array_equal, _params(resumed), _params(straight))
  assert again['test_psnr_y'] == results['test_psnr_y']
  assert _lines(os.path.join(resumed, 'metrics.jsonl')) == \
      _lines(os.path.join(straight, 'metrics.jsonl'))

  restored = cvjax.restore(resumed)
  image = np.random.default_rng(0).integers(0, 256, (30, 22, 3), dtype=np.uint8)
  out = restored.predict(image)
  assert out.dtype == np.uint8 and out.shape == (1, 60, 44, 3)
  gray = restored.predict([np.full((9, 11, 1), 77, np.uint8), image])
  assert [g.shape for g in gray] == [(18, 22, 1), (60, 44, 3)]
  np.testing.assert_array_equal(gray[1], out[0])
