"""Classification + localisation: the localizer models, loss, metrics, data and a fit through the loop."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
import pytest

import cvjax
from cvjax.errors import UserError
from cvjax.models import get_model, list_models, model_info
from cvjax.tasks import fit, get_task
from cvjax.tasks import localization as loc
from cvjax.data import pipeline
from cvjax.tasks import localization_data as data
from cvjax.train import TrainConfig


def _params(name, num_classes, size):
  model = get_model(name, num_classes)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  return sum(x.size for x in jax.tree.leaves(variables['params'])), variables, model


def test_localizers_are_registered_with_pinned_parameter_counts_and_two_outputs():
  assert list_models('localization') == ['localizer_resnet18', 'localizer_shapes']
  assert model_info('localizer_shapes') == cvjax.models.ModelInfo(
      'localization', (96, 96, 3), 6, supports_remat=False, batch_norm=True)
  count, variables, model = _params('localizer_shapes', 6, 96)
  assert count == 389_370
  head = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in variables['params'].items()
          if k.startswith('box') or k == 'fc'}
  assert head == {'fc': 774, 'box_conv': 4_128, 'box_fc1': 73_984, 'box_fc2': 1_028}
  logits, box = jax.eval_shape(lambda v, x: model.apply(v, x), variables,
                               jnp.zeros((2, 96, 96, 3)))
  assert (logits.shape, box.shape, box.dtype) == ((2, 6), (2, 4), jnp.float32)
  # ResNet-18 backbone = torchvision's 11,689,512 without its 513,000 fc; the box head
  # pools to 3×3, so its size does not depend on the input's.
  assert _params('localizer_resnet18', 1000, 224)[0] == 11_176_512 + 513_000 + 91_428
  assert _params('localizer_resnet18', 1000, 160)[0] == 11_780_940


def _task():
  """The localization task of a default localizer config, no dataset facts."""
  return get_task(TrainConfig(task='localization', model='localizer_shapes'), None)


def test_loss_on_a_hand_made_batch():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
  true = jnp.array([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.8]])
  # example 0: every coordinate off by 0.2 (linear part: 0.2 − 0.05 = 0.15 each);
  # example 1: off by 0.05 in ymin only (quadratic part: 0.05² / 0.2 = 0.0125)
  box = true + jnp.array([[0.2, 0.2, 0.2, 0.2], [0.05, 0, 0, 0]])
  batch = {'label': jnp.array([0, 1]), 'box': true}
  np.testing.assert_allclose(loc.box_loss(box, true), [0.6, 0.0125], rtol=1e-5)
  loss, metrics = _task().loss((logits, box), batch, None)
  expected = np.mean([-np.log(0.5) + 5 * 0.6, -np.log(0.8) + 5 * 0.0125])
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert float(metrics['accuracy']) == 1.0
  np.testing.assert_allclose(metrics['box_loss'], 0.30625, rtol=1e-5)


def test_evaluator_metrics_on_hand_made_boxes():
  true = np.array([[0.0, 0.0, 0.5, 0.5]] * 4 + [[0.2, 0.2, 0.4, 0.4]], np.float32)
  predicted = np.array([
      [0.0, 0.0, 0.5, 0.5],     # IoU 1, class right
      [0.0, 0.0, 0.5, 0.25],    # IoU 0.5 (half of it), class right: counts (≥ 0.5)
      [0.0, 0.0, 0.25, 0.25],   # IoU 0.25, class right
      [0.0, 0.0, 0.5, 0.5],     # IoU 1, class wrong
      [0.4, 0.4, 0.2, 0.2]],    # inverted box: IoU 0; and a padding example (mask False)
      np.float32)
  labels = np.array([1, 2, 0, 3, 1])
  logits = jax.nn.one_hot(np.array([1, 2, 0, 4, 1]), 6)
  np.testing.assert_allclose(loc.paired_iou(jnp.asarray(predicted), jnp.asarray(true)),
                             [1, 0.5, 0.25, 1, 0], atol=1e-6)
  task = _task()
  evaluator = task.evaluator()
  batch = {'label': labels, 'box': true, 'mask': np.array([True] * 4 + [False])}
  sums, _ = task.eval_outputs((logits, jnp.asarray(predicted)), batch)
  evaluator.update(sums, {})
  # a second batch: only the inverted box, real this time
  batch2 = {'label': labels[4:], 'box': true[4:], 'mask': np.array([True])}
  evaluator.update(task.eval_outputs((logits[4:], jnp.asarray(predicted[4:])), batch2)[0], {})
  r = evaluator.result()
  assert r['count'] == 5 and task.main_metric == 'loc_accuracy'
  np.testing.assert_allclose([r['accuracy'], r['mean_iou'], r['iou50'], r['loc_accuracy']],
                             [4 / 5, 2.75 / 5, 3 / 5, 2 / 5], rtol=1e-6)
  assert np.isfinite(r['loss'])


def test_single_shape_configs_leave_the_others_unchanged():
  from cvjax.data import cvjax_shapes as shapes
  photos = shapes._load_backgrounds()  # pylint: disable=protected-access
  # labels and pixel boxes of two examples as generated before the 'single' configs existed
  for config, index, labels, boxes in [
      (shapes.ShapesConfig(name='default'), 0, [5, 2, 1, 5],
       [(78, 208, 145, 256), (241, 11, 256, 33), (0, 77, 57, 156), (177, 173, 210, 206)]),
      (shapes.ShapesConfig(name='tiny', image_size=96), 3, [0, 3, 5],
       [(45, 50, 60, 65), (67, 25, 82, 40), (18, 31, 45, 58)])]:
    ex = shapes.generate('train', index, config, photos)
    s = config.image_size
    assert ex['objects']['label'] == labels
    assert [tuple(round(v * s) for v in (b.ymin, b.xmin, b.ymax, b.xmax))
            for b in ex['objects']['bbox']] == boxes
  single = {c.name: c for c in shapes.CvjaxShapes.BUILDER_CONFIGS}['single']
  for index in range(5):
    ex = shapes.generate('validation', index, single, photos)
    (box,) = ex['objects']['bbox']
    assert max(box.ymax - box.ymin, box.xmax - box.xmin) <= 0.61


@pytest.fixture(scope='module')
def single_dir(tmp_path_factory):
  """cvjax_shapes/single_tiny (48 / 16 / 16 images of 64², one shape each) in a fresh dir."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  meta = data.dataset_meta('cvjax_shapes/single_tiny', data_dir)
  assert meta.split_sizes == {'train': 48, 'validation': 16, 'test': 16}
  assert meta.num_classes == 6 and meta.class_names[0] == 'circle'
  return data_dir


def test_train_batches_flip_boxes_with_images_and_resume(single_dir):
  spec = data.data_spec('cvjax_shapes/single_tiny', image_size=64)
  kwargs = dict(global_batch_size=8, seed=1, data_dir=single_dir, num_examples=48)
  plain = pipeline.local_train_batches(spec, augment='', **kwargs)
  flipped = pipeline.local_train_batches(spec, **kwargs)
  a, b = next(plain), next(flipped)
  assert a['image'].shape == (8, 64, 64, 3) and a['label'].dtype == np.int32
  assert a['box'].shape == (8, 4) and a['box'].dtype == np.float32
  np.testing.assert_array_equal(a['label'], b['label'])
  same = (a['box'] == b['box']).all(1)
  assert 0 < same.sum() < 8                           # some flipped, some not
  np.testing.assert_array_equal(b['image'][~same], a['image'][~same][:, :, ::-1])
  box = a['box'][~same]
  np.testing.assert_allclose(b['box'][~same], np.stack(
      [box[:, 0], 1 - box[:, 3], box[:, 2], 1 - box[:, 1]], -1), atol=1e-6)
  reached = [next(flipped) for _ in range(7)][-1]     # step 7: the second epoch
  resumed = next(pipeline.local_train_batches(spec, start_step=7, **kwargs))
  for k in reached:
    np.testing.assert_array_equal(reached[k], resumed[k])


def test_config_errors_name_the_fix(single_dir, tmp_path):
  base = dict(task='localization', data_dir=single_dir, batch_size=8, num_train_steps=1)
  with pytest.raises(UserError, match="task 'localization' needs a localization model, got "
                     "'resnet20'; choose one of localizer_resnet18, localizer_shapes"):
    fit(TrainConfig(model='resnet20', dataset='cvjax_shapes/single_tiny', **base),
        str(tmp_path / 'a'))
  with pytest.raises(UserError, match="got dataset 'cvjax_shapes/tiny': use "
                     '--dataset=cvjax_shapes/single'):
    fit(TrainConfig(model='localizer_shapes', dataset='cvjax_shapes/tiny', **base),
        str(tmp_path / 'b'))
  assert not os.path.exists(tmp_path / 'a' / 'checkpoints')


@pytest.mark.slow
def test_fit_a_few_steps_then_restore_predicts_class_probabilities_and_box(single_dir,
                                                                            tmp_path):
  workdir = str(tmp_path / 'run')
  config = TrainConfig(task='localization', model='localizer_shapes',
                       model_kwargs={'width': 8, 'box_hidden': 32},
                       dataset='cvjax_shapes/single_tiny', data_dir=single_dir, image_size=64,
                       batch_size=8, num_train_steps=4, optimizer='adam', learning_rate=3e-3,
                       schedule='constant', log_every_steps=2, eval_every_steps=4,
                       checkpoint_every_steps=4, eval_split='validation', conv_impl='xla')
  results = fit(config, workdir)
  assert results["step"] == 4 and results['test_examples'] == 16
  for key in ('test_loc_accuracy', 'test_accuracy', 'test_mean_iou', 'test_iou50'):
    assert 0 <= results[key] <= 1, key
  assert results['test_loc_accuracy'] <= min(results['test_accuracy'], results['test_iou50'])
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    train = [line for line in map(json.loads, f) if 'train_loss' in line]
  assert [t['step'] for t in train] == [2, 4]
  assert {'train_accuracy', 'train_box_loss', 'train_mean_iou'} <= set(train[0])

  restored = cvjax.restore(workdir)
  assert list(restored.class_names[:2]) == ['circle', 'square']
  images = [np.full((50, 70, 3), 128, np.uint8), np.zeros((64, 64, 1), np.uint8)]
  out = restored.predict(images)
  assert len(out) == 2
  for o in out:
    assert set(o) == {'class', 'probabilities', 'box'}
    assert o['probabilities'].shape == (6,) and o['class'] == int(np.argmax(o['probabilities']))
    np.testing.assert_allclose(o['probabilities'].sum(), 1, rtol=1e-5)
    assert o['box'].shape == (4,) and ((0 <= o['box']) & (o['box'] <= 1)).all()
  # the predictor and the eval pipeline agree on a test image
  spec = data.data_spec('cvjax_shapes/single_tiny', image_size=64)
  first = next(pipeline.local_eval_batches(spec, split='test', global_batch_size=2,
                                           data_dir=single_dir))
  images = np.stack([ex['image'] for ex in tfds.as_numpy(tfds.builder(
      'cvjax_shapes/single_tiny', data_dir=single_dir).as_dataset(split='test').take(2))])
  apply = jax.jit(lambda v, x: restored.model.apply(v, x, train=False))
  logits, box = apply(restored.variables, first['image'])
  again = restored.predict(images[:2])
  np.testing.assert_allclose(again[1]['box'], box[1], atol=1e-5)
  np.testing.assert_allclose(again[0]['probabilities'], jax.nn.softmax(logits[0]), atol=1e-5)
