"""Mixup, CutMix and flip test-time augmentation of classification, against timm's semantics.

timm is not a dependency: its formulas (`timm.data.mixup.mixup_target`, `rand_bbox`,
`cutmix_bbox_and_lam`, `timm.loss.SoftTargetCrossEntropy`) are written out in numpy here;
where timm and torch are importable, one test also checks against them.
"""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cvjax
from cvjax import data
from cvjax.tasks import fit, get_task
from cvjax.tasks.classification import cross_entropy, rand_bbox
from cvjax.train import TrainConfig
from cvjax.train.checkpoint import Checkpoints
from cvjax.train.state import init_variables

H, W = 12, 20  # not square, so that swapped axes show


def _task(**changes):
  config = dict(model='lenet5', dataset='mnist', num_classes=10)
  config.update(changes)
  return get_task(TrainConfig(**config), None)


def _batch(n=8, seed=0):
  """Random images f32[n, H, W, 3] (no pixel equals its partner's in the reversed batch
  for even n) and labels int32[n]."""
  rng = np.random.default_rng(seed)
  return {'image': rng.normal(size=(n, H, W, 3)).astype(np.float32),
          'label': rng.integers(0, 10, n).astype(np.int32)}


def _draws(key, alpha):
  """The draws `mix_batch` makes from `key`: (mixed?, cutmix chosen?, lambda ~ Beta(alpha,
  alpha), box key), from the four keys of jax.random.split(key, 4)."""
  apply_key, kind_key, lam_key, box_key = jax.random.split(key, 4)
  return (float(jax.random.uniform(apply_key)), float(jax.random.uniform(kind_key)),
          float(jax.random.beta(lam_key, alpha, alpha)), box_key)


def _timm_rand_bbox(height, width, lam, cy, cx):
  """timm's rand_bbox (margin 0) given its centre draw: (y0, y1, x0, x1)."""
  ratio = np.sqrt(1 - lam)
  cut_h, cut_w = int(height * ratio), int(width * ratio)
  return (int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height)),
          int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width)))


def _centre(box_key):
  y_key, x_key = jax.random.split(box_key)
  return int(jax.random.randint(y_key, (), 0, H)), int(jax.random.randint(x_key, (), 0, W))


def _timm_mixup_target(labels, num_classes, lam, smoothing):
  off = smoothing / num_classes
  on = 1.0 - smoothing + off
  y1 = np.full((len(labels), num_classes), off)
  y1[np.arange(len(labels)), labels] = on
  y2 = y1[::-1]
  return y1 * lam + y2 * (1.0 - lam)


def _soft_target_cross_entropy(logits, target):
  logits = np.asarray(logits, np.float64)
  log_softmax = logits - logits.max(-1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
  return float(np.mean(np.sum(-target * log_softmax, -1)))


def _pasted_box(out, batch):
  """bool[H, W]: the pixels where every image of `out` holds its reversed partner's."""
  x = batch['image']
  return np.all(np.asarray(out['image']) == x[::-1], axis=(0, 3))


# --------------------------------------------------------------------------------- mixup


def test_mixup_blends_each_image_with_the_reversed_batch_by_a_beta_lambda():
  task = _task(mixup_alpha=0.4)
  batch, key = _batch(), jax.random.PRNGKey(3)
  out = jax.jit(task.mix_batch)(batch, key)
  _, _, lam, _ = _draws(key, 0.4)
  assert 0 < lam < 1
  assert float(out['mix_weight']) == pytest.approx(lam, abs=1e-7)
  assert out['mix_weight'].shape == () and out['mix_weight'].dtype == jnp.float32
  x = batch['image']
  np.testing.assert_allclose(out['image'], lam * x + (1 - lam) * x[::-1], atol=1e-6)
  np.testing.assert_array_equal(out['label'], batch['label'])
  np.testing.assert_array_equal(out['label_mix'], batch['label'][::-1])


def test_the_mixed_loss_is_soft_target_cross_entropy_on_timms_mixup_target():
  """timm's mixup_target with label smoothing 0.1 (on = 1 - 0.1 + 0.1/K, off = 0.1/K for
  each label, weighted lam and 1 - lam), then the mean of -sum(target · log_softmax)."""
  task = _task(mixup_alpha=0.4, label_smoothing=0.1)
  batch = task.mix_batch(_batch(), jax.random.PRNGKey(3))
  logits = np.random.default_rng(1).normal(size=(8, 10)).astype(np.float32) * 3
  loss, metrics = jax.jit(lambda l, b: task.loss(l, b, None))(logits, batch)
  lam = float(batch['mix_weight'])
  target = _timm_mixup_target(batch['label'], 10, lam, 0.1)
  assert float(loss) == pytest.approx(_soft_target_cross_entropy(logits, target), rel=1e-6)
  predicted = logits.argmax(-1)
  accuracy = (lam * np.mean(predicted == batch['label'])
              + (1 - lam) * np.mean(predicted == batch['label'][::-1]))
  assert float(metrics['accuracy']) == pytest.approx(accuracy, abs=1e-6)


def test_the_mixed_loss_matches_timm_itself_where_installed():
  timm_mixup = pytest.importorskip('timm.data.mixup')
  timm_loss = pytest.importorskip('timm.loss')
  torch = pytest.importorskip('torch')
  task = _task(mixup_alpha=0.4, label_smoothing=0.1)
  batch = task.mix_batch(_batch(), jax.random.PRNGKey(3))
  logits = np.random.default_rng(1).normal(size=(8, 10)).astype(np.float32) * 3
  loss, _ = task.loss(logits, batch, None)
  target = timm_mixup.mixup_target(torch.tensor(np.asarray(batch['label'])), 10,
                                   float(batch['mix_weight']), 0.1, device='cpu')
  expected = timm_loss.SoftTargetCrossEntropy()(torch.tensor(logits), target)
  assert float(loss) == pytest.approx(float(expected), rel=1e-5)


# -------------------------------------------------------------------------------- cutmix


def test_rand_bbox_gives_timms_box_for_a_known_lambda():
  """lam 0.75 on 12 × 20: cut_rat = 0.5, sides 6 and 10, the box cy ± 3, cx ± 5, clipped.
  lam with H·√(1-lam) = 5.5: cut_h = 5, and timm's box is cy ± 2, 4 rows, not 5."""
  key = jax.random.PRNGKey(7)
  cy, cx = _centre(key)
  box = [int(v) for v in rand_bbox(H, W, jnp.float32(0.75), key)]
  assert box == [max(cy - 3, 0), min(cy + 3, H), max(cx - 5, 0), min(cx + 5, W)]
  lam = 1 - (5.5 / H) ** 2
  y0, y1, _, _ = [int(v) for v in rand_bbox(H, W, jnp.float32(lam), key)]
  assert (y0, y1) == (max(cy - 2, 0), min(cy + 2, H))


def test_cutmix_pastes_the_reversed_batch_into_timms_box_and_corrects_lambda():
  task = _task(cutmix_alpha=1.0)
  batch = _batch()
  x = batch['image']
  mix = jax.jit(task.mix_batch)
  unclipped = 0
  for seed in range(30):
    key = jax.random.PRNGKey(seed)
    out = mix(batch, key)
    _, _, lam, box_key = _draws(key, 1.0)
    y0, y1, x0, x1 = _timm_rand_bbox(H, W, lam, *_centre(box_key))
    inside = np.zeros((H, W), bool)
    inside[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(_pasted_box(out, batch), inside)
    image = np.asarray(out['image'])
    np.testing.assert_array_equal(image[:, ~inside], x[:, ~inside])
    np.testing.assert_array_equal(image[:, inside], x[::-1][:, inside])
    assert float(out['mix_weight']) == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (H * W),
                                                     abs=1e-6)
    if 0 < y0 and y1 < H:  # not clipped: the side is timm's 2·⌊⌊H·√(1-lam)⌋ / 2⌋
      unclipped += 1
      assert y1 - y0 == 2 * (int(H * np.sqrt(1 - lam)) // 2)
  assert unclipped >= 5


# --------------------------------------------------------------------- when and which kind


def test_without_alphas_the_batch_is_returned_as_it_is_and_the_loss_unchanged():
  task = _task(label_smoothing=0.1)
  batch = _batch()
  assert task.mix_batch(batch, jax.random.PRNGKey(0)) is batch
  logits = np.random.default_rng(1).normal(size=(8, 10)).astype(np.float32)
  loss, metrics = task.loss(logits, batch, None)
  assert float(loss) == float(cross_entropy(logits, batch['label'], 0.1).mean())
  assert float(metrics['accuracy']) == float(np.mean(logits.argmax(-1) == batch['label']))


def test_mix_prob_0_leaves_every_batch_unmixed_with_weight_1():
  task = _task(mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=0.0)
  batch = _batch()
  mix = jax.jit(task.mix_batch)
  logits = np.random.default_rng(1).normal(size=(8, 10)).astype(np.float32)
  for seed in range(10):
    out = mix(batch, jax.random.PRNGKey(seed))
    np.testing.assert_array_equal(out['image'], batch['image'])
    assert float(out['mix_weight']) == 1.0
    mixed_loss, _ = task.loss(logits, out, None)
    assert float(mixed_loss) == pytest.approx(float(task.loss(logits, batch, None)[0]),
                                              rel=1e-7)


def test_mix_prob_mixes_that_share_of_batches():
  task = _task(mixup_alpha=1.0, mix_prob=0.3)
  batch = _batch()
  mix = jax.jit(task.mix_batch)
  for seed in range(20):
    key = jax.random.PRNGKey(seed)
    applied, _, _, _ = _draws(key, 1.0)
    unchanged = np.array_equal(mix(batch, key)['image'], batch['image'])
    assert unchanged == (applied >= 0.3)


def test_with_both_alphas_each_batch_uses_cutmix_or_mixup_as_its_switch_draw_says():
  task = _task(mixup_alpha=0.4, cutmix_alpha=1.0)
  batch = _batch()
  x = batch['image']
  mix = jax.jit(task.mix_batch)
  kinds = []
  for seed in range(30):
    key = jax.random.PRNGKey(seed)
    out = mix(batch, key)
    image = np.asarray(out['image'])
    _, switch, _, _ = _draws(key, 1.0)
    is_cutmix = switch < 0.5
    _, _, lam, _ = _draws(key, 1.0 if is_cutmix else 0.4)
    pasted = np.all((image == x) | (image == x[::-1]))
    assert pasted == is_cutmix
    if not is_cutmix:
      assert float(out['mix_weight']) == pytest.approx(lam, abs=1e-7)
      np.testing.assert_allclose(image, lam * x + (1 - lam) * x[::-1], atol=1e-6)
    kinds.append(is_cutmix)
  assert 5 <= sum(kinds) <= 25


# ---------------------------------------------------------------------- flip test-time aug


@pytest.fixture(scope='module')
def lenet():
  """(task with tta='flip', model, variables) of an untrained LeNet-5."""
  task = _task(tta='flip')
  model = task.build_model(bn_axis_name=None)
  variables = jax.jit(lambda k: init_variables(model, k, task.input_shape))(
      jax.random.PRNGKey(0))
  return task, model, variables


def _mean_softmax(model, variables, x):
  """The mean of softmax(model(x)) and softmax(model(x mirrored)): f32[B, K]."""
  softmax = jax.jit(lambda im: jax.nn.softmax(model.apply(variables, im, train=False)))
  return 0.5 * (np.asarray(softmax(x)) + np.asarray(softmax(x[:, :, ::-1, :])))


def test_flip_tta_evaluates_the_log_of_the_mean_softmax_of_image_and_mirror(lenet):
  task, model, variables = lenet
  _, size, _, channels = task.input_shape
  x = np.random.default_rng(0).normal(size=(4, size, size, channels)).astype(np.float32)
  batch = {'image': x, 'label': np.arange(4, dtype=np.int32), 'mask': np.ones(4, bool)}
  outputs = jax.jit(lambda v, b: task.eval_apply(model.apply, v, b))(variables, batch)
  expected = np.log(_mean_softmax(model, variables, x))
  np.testing.assert_allclose(outputs, expected, atol=1e-5)
  plain = _task().eval_apply(model.apply, variables, batch)
  assert np.max(np.abs(jax.nn.log_softmax(plain) - expected)) > 1e-3  # the mirror counts
  sums, _ = task.eval_outputs(outputs, batch)
  labels = batch['label']
  assert float(sums['correct']) == np.sum(expected.argmax(-1) == labels)
  nll = -np.sum(expected[np.arange(4), labels])
  assert float(sums['loss_sum']) == pytest.approx(nll, rel=1e-5)


def test_flip_tta_predict_averages_the_probabilities_of_image_and_mirror(lenet):
  task, model, variables = lenet
  images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1)).astype(np.uint8)
  probs = task.predictor(model, variables)(images)
  x = data.preprocess_for_eval(images, dataset='mnist', image_size=task.image_size,
                               channels=task.channels, preprocessing=None)
  np.testing.assert_allclose(probs, _mean_softmax(model, variables, x), atol=1e-6)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  plain = _task().predictor(model, variables)(images)
  softmax = jax.jit(lambda im: jax.nn.softmax(model.apply(variables, im, train=False)))
  np.testing.assert_allclose(plain, softmax(x), atol=1e-6)


# ------------------------------------------------------------------------ training, resume


def _config(real_mnist, **changes):
  base = dict(model='lenet5', model_kwargs={'activation': 'relu', 'pooling': 'max'},
              dataset='mnist', data_dir=real_mnist['data_dir'], raw_data_dir=real_mnist['raw_dir'],
              batch_size=64, num_train_steps=20, optimizer='adam', learning_rate=2e-3,
              schedule='cosine', log_every_steps=10, eval_every_steps=10,
              checkpoint_every_steps=10, keep_checkpoints=10, seed=0, mixup_alpha=0.2,
              cutmix_alpha=1.0, ema_decay=0.9, tta='flip')
  base.update(changes)
  return TrainConfig(**base)


def _params_and_ema(workdir):
  """(raw params, the weight average's variables) of the newest checkpoint."""
  ema = jax.device_get(cvjax.restore(workdir).variables)
  ckpts = Checkpoints(os.path.join(workdir, 'checkpoints'), read_only=True)
  try:
    raw, _ = ckpts.restore_variables(ema)
  finally:
    ckpts.close()
  return jax.device_get(raw['params']), ema


@pytest.mark.slow
def test_mixed_training_with_ema_resumes_from_a_midway_checkpoint_bit_exactly(real_mnist,
                                                                               tmp_path):
  """Mixup and CutMix (their draws keyed by the step) and the weight average: a run killed
  after step 10's checkpoint and re-run ends with the uninterrupted run's params and EMA."""
  straight = str(tmp_path / 'straight')
  results = fit(_config(real_mnist), straight)
  assert results['step'] == 20 and np.isfinite(results['test_loss'])
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, 'checkpoints', '20'))
  os.remove(os.path.join(resumed, 'results.json'))
  again = fit(_config(real_mnist), resumed)
  assert again['test_accuracy'] == results['test_accuracy']
  assert again['test_loss'] == results['test_loss']
  params, ema = _params_and_ema(resumed)
  params_straight, ema_straight = _params_and_ema(straight)
  jax.tree.map(np.testing.assert_array_equal, params, params_straight)
  jax.tree.map(np.testing.assert_array_equal, ema, ema_straight)
  gaps = jax.tree.map(lambda p, e: np.max(np.abs(p - e)), params, ema['params'])
  assert max(jax.tree.leaves(gaps)) > 0  # the EMA is an average, not the params again
