"""Detection in the one loop: data-parallel MultiBox steps, fit on cvjax_shapes, restore, detect."""
import functools
import json
import os

import jax
import numpy as np
import optax
import pytest
from PIL import Image

import cvjax
from cvjax.data import pipeline
from cvjax.detection import data, families
from cvjax.models import default_boxes
from cvjax.tasks.detection import DetectionTask
from cvjax.models import resnet, ssd
from cvjax.tasks import fit
from cvjax.train import TrainConfig, steps
from cvjax.train.state import create_train_state

pytestmark = pytest.mark.slow  # Detection steps and a detector trained through fit.


def _tiny_ssd():
  """A 3-map SSD on a 2-stage BasicBlock ResNet (BatchNorm) for 32² inputs."""
  backbone = functools.partial(ssd.ResNetFeatures, block_cls=resnet.BasicBlock,
                               stage_sizes=(1, 1), stage_strides=(1, 2), outputs=(0, 1),
                               num_filters=4, extras=(ssd.Extra(4, 8),))
  spec = default_boxes.AnchorSpec(scales=(0.2, 0.4, 0.7, 1.0), aspect_ratios=((2,), (2,), (2,)))
  return ssd.SSD(backbone=backbone, anchor_spec=spec, num_classes=3, input_size=32,
                 pixel_mean=ssd.IMAGENET_MEAN, pixel_std=ssd.IMAGENET_STD,
                 bn_axis_name=steps.AXIS)


def _batch(rng, n=16, size=32, dtype=np.float32):
  corner = rng.uniform(0, 0.6, (n, 4, 2))
  extent = rng.uniform(0.15, 0.4, (n, 4, 2))
  return {'image': rng.uniform(size=(n, size, size, 3)).astype(dtype),
          'boxes': np.concatenate([corner, corner + extent], -1).astype(dtype),
          'labels': rng.integers(0, 3, (n, 4)).astype(np.int32),
          'box_mask': rng.uniform(size=(n, 4)) < 0.6}


def test_detection_step_on_eight_devices_equals_one_device():
  """The loss normalisation (global positives, × devices) makes 8 devices train like 1
  on the same global batch, BatchNorm included. Normalising by each device's own
  positives, or by the global positives without the device factor, fails these
  tolerances (checked); float32 summation order stays well inside them."""
  model = _tiny_ssd()
  task = DetectionTask(TrainConfig(task='detection', model='ssd128_resnet18_slim', image_size=32),
                       None, head=families.family_for(model, 32))  # the loss reads the head
  init = jax.jit(lambda key: create_train_state(model, optax.sgd(0.05, momentum=0.9), key,
                                                (1, 32, 32, 3)))
  key = jax.random.key(0, impl='rbg')  # rbg: threefry's init compiles slowly on CPU
  initial = jax.device_get(init(key).params)
  results = []
  for devices in (1, 8):
    mesh = steps.make_mesh(devices)
    state = jax.device_put(init(key), steps.replicated(mesh))  # fresh: the step donates it
    step = steps.parallel_train_step(mesh, task)
    rng = np.random.default_rng(0)
    history = []
    for _ in range(2):
      batch = jax.device_put(_batch(rng), steps.batch_sharded(mesh))
      state, metrics = step(state, batch)
      history.append(jax.device_get(metrics))
    results.append((jax.device_get(state), history))
  (one, h1), (eight, h8) = results
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), initial, one.params)
  diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), one.params, eight.params)
  assert max(jax.tree.leaves(diff)) < 1e-5 < 1e-3 < max(jax.tree.leaves(moved))
  stats = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), one.batch_stats, eight.batch_stats)
  assert max(jax.tree.leaves(stats)) < 1e-5
  for k in ('loss', 'loc_loss', 'conf_loss', 'positives'):
    np.testing.assert_allclose([h[k] for h in h1], [h[k] for h in h8], rtol=1e-5)
  assert h1[0]['positives'] > 0 and h1[1]['loss'] != h1[0]['loss']


@pytest.fixture(scope='module')
def shapes_dir(tmp_path_factory):
  """cvjax_shapes/tiny (64 / 16 / 32 images of 96²) built into a fresh TFDS data_dir."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  meta = data.dataset_meta('cvjax_shapes/tiny', data_dir=data_dir)
  assert meta.split_sizes == {'train': 64, 'validation': 16, 'test': 32}
  assert meta.class_names == ('circle', 'square', 'triangle', 'star', 'cross', 'ring')
  return data_dir


def test_train_batch_k_is_the_same_whether_resumed_at_k_or_reached(shapes_dir):
  spec = data.data_spec('cvjax_shapes/tiny', image_size=64, data_dir=shapes_dir)
  kwargs = dict(global_batch_size=8, seed=3, data_dir=shapes_dir, num_examples=64)
  it = pipeline.local_train_batches(spec, **kwargs)
  reached = [next(it) for _ in range(10)][-1]                 # step 9: the second epoch
  resumed = next(pipeline.local_train_batches(spec, start_step=9, **kwargs))
  for k in reached:
    np.testing.assert_array_equal(reached[k], resumed[k])
  assert reached['box_mask'].any(1).all()   # every augmented image keeps an object


@pytest.fixture(scope='module')
def tiny_model():
  """'ssd_test_tiny', the SSD of `_tiny_ssd` at 48², registered for this module only: the
  loop builds models by name, and the slim CPU model's compilation alone would cost a
  minute of the suite."""
  from cvjax.models import registry
  spec = default_boxes.AnchorSpec(scales=(0.15, 0.3, 0.6, 0.9), aspect_ratios=((2,), (2,), (2,)))
  backbone = functools.partial(ssd.ResNetFeatures, block_cls=resnet.BasicBlock,
                               stage_sizes=(1, 1), stage_strides=(1, 2), outputs=(0, 1),
                               num_filters=8, extras=(ssd.Extra(8, 16),))
  registry._add(  # pylint: disable=protected-access
      'ssd_test_tiny',
      functools.partial(ssd.SSD, backbone=backbone, anchor_spec=spec, input_size=48,
                        pixel_mean=ssd.IMAGENET_MEAN, pixel_std=ssd.IMAGENET_STD,
                        max_detections=50, candidates_per_class=50),
      (48, 48, 3), 6, task='detection')
  yield 'ssd_test_tiny'
  del registry._MODELS['ssd_test_tiny']  # pylint: disable=protected-access


@pytest.fixture(scope='module')
def trained(shapes_dir, tiny_model, tmp_path_factory):
  """A few steps of a small SSD with the one loop, on 8 simulated devices."""
  workdir = str(tmp_path_factory.mktemp('ssd') / 'run')
  config = TrainConfig(task='detection', model=tiny_model, dataset='cvjax_shapes/tiny',
                       data_dir=shapes_dir, batch_size=16, num_train_steps=8,
                       optimizer='adam', learning_rate=3e-3, schedule='constant',
                       log_every_steps=4, eval_every_steps=8, checkpoint_every_steps=8,
                       eval_split='validation', model_kwargs={'score_threshold': 0.05})
  return workdir, fit(config, workdir)


def test_fit_trains_the_detector_and_reports_map(trained):
  workdir, results = trained
  assert results['step'] == 8 and results['test_examples'] == 32
  for key in ('test_map50', 'test_map', 'test_map75', 'test_loss'):
    assert np.isfinite(results[key]), key
  assert 0 <= results['test_map'] <= results['test_map50'] <= 1
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['test_map50'] == results['test_map50']
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(l) for l in f]
  train = [l for l in lines if 'train_loss' in l]
  assert [l['step'] for l in train] == [4, 8]
  assert train[-1]['train_loss'] < train[0]['train_loss']     # learning
  assert {'train_loc_loss', 'train_conf_loss', 'train_positives'} <= set(train[0])
  assert any('eval_map50' in l for l in lines)


@pytest.mark.slow
def test_the_classification_ops_train_the_detector(shapes_dir, tiny_model, tmp_path):
  """--augment speaks one grammar: ResNet-20's ops train an SSD, boxes moving with pixels."""
  config = TrainConfig(task='detection', model=tiny_model, dataset='cvjax_shapes/tiny',
                       data_dir=shapes_dir, batch_size=16, num_train_steps=4,
                       optimizer='adam', learning_rate=3e-3, schedule='constant',
                       log_every_steps=2, eval_every_steps=4, eval_split='validation',
                       augment='flip_lr|pad_crop(4)', model_kwargs={'score_threshold': 0.05})
  results = fit(config, str(tmp_path / 'run'))
  assert results['step'] == 4 and np.isfinite(results['test_loss'])
  with open(os.path.join(str(tmp_path / 'run'), 'metrics.jsonl')) as f:
    train = [json.loads(l) for l in f if 'train_loss' in l]
  assert all(l['train_positives'] > 0 for l in train)   # shifted boxes still match


def test_restore_predicts_boxes_and_detect_draws_them(trained, shapes_dir, tmp_path, capsys):
  from cvjax import detect
  workdir, _ = trained
  restored = cvjax.restore(workdir)
  assert restored.class_names[0] == 'circle'
  images = [np.full((50, 70, 3), 128, np.uint8), np.zeros((96, 96, 3), np.uint8)]
  found = restored.predict(images)
  assert len(found) == 2
  for f in found:
    n = len(f['scores'])
    assert f['boxes'].shape == (n, 4) and f['classes'].shape == (n,)
    assert (np.diff(f['scores']) <= 0).all() and (f['scores'] > 0.05).all()
    assert ((0 <= f['boxes']) & (f['boxes'] <= 1)).all()
  picture = tmp_path / 'in.png'
  Image.fromarray(np.full((80, 100, 3), 90, np.uint8)).save(picture)
  out = tmp_path / 'boxes.png'
  assert detect.main([f'--workdir={workdir}', f'--image={picture}', f'--out={out}',
                      '--min_score=0', '--json']) == 0
  printed = json.loads(capsys.readouterr().out)
  assert Image.open(out).size == (100, 80)
  for r in printed['detections']:
    x1, y1, x2, y2 = r['box']
    assert 0 <= x1 <= x2 <= 100 and 0 <= y1 <= y2 <= 80 and r['label'] in restored.class_names
  assert detect.main([f'--workdir={workdir}', f'--image={tmp_path / "missing.jpg"}']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and 'does not exist' in err[0]


def test_detection_config_errors_name_the_fix(shapes_dir, tmp_path):
  from cvjax.errors import UserError
  base = dict(task='detection', dataset='cvjax_shapes/tiny', data_dir=shapes_dir, batch_size=8,
              num_train_steps=1)
  with pytest.raises(UserError, match="task 'detection' needs a detection model, got 'resnet18'"):
    fit(TrainConfig(model='resnet18', **base), str(tmp_path / 'a'))
  with pytest.raises(UserError, match="unknown detection dataset 'voc2007'"):
    fit(TrainConfig(model='ssd300_vgg16', **{**base, 'dataset': 'voc2007'}),
        str(tmp_path / 'b'))
  assert not os.path.exists(tmp_path / 'a' / 'checkpoints')


def test_track_runs_the_trained_detector_on_every_frame(trained, tmp_path, capsys):
  """`cvjax.track --detector=WORKDIR --frames=DIR`: det rows are restore().predict's boxes in
  pixels, one frame number per image, and the trackers follow them."""
  pytest.importorskip('skimage')
  from cvjax import cli, track
  from cvjax.data import shapes_video as sv
  from cvjax.tracking import mot
  workdir, _ = trained
  seq_dir = str(tmp_path / 'seq')
  sv.write_sequence(seq_dir, index=0, seed=0, config=sv.TINY)
  paths = track.frame_paths(seq_dir)
  assert len(paths) == sv.TINY.num_frames
  rows = track.frame_detections(track.load_detector(workdir),
                                [cli.read_image(p, flag=None) for p in paths], min_score=0.0)
  found = cvjax.restore(workdir).predict(cli.read_image(paths[2], flag=None))[0]  # the JPEG as written
  third = rows[rows[:, 0] == 3]
  assert len(third) == len(found['scores']) > 0
  y0, x0, y1, x1 = found['boxes'][0]
  np.testing.assert_allclose(third[0, 2:8], [x0 * 128, y0 * 96, (x1 - x0) * 128,
                                             (y1 - y0) * 96, found['scores'][0],
                                             found['classes'][0]], rtol=1e-6)
  assert set(rows[:, 0]) <= set(range(1, 17)) and (rows[:, 1] == -1).all()
  out = str(tmp_path / 'tracks.txt')
  assert track.main([f'--detector={workdir}', f'--frames={seq_dir}', '--min_score=0',
                     '--n_init=1', f'--out={out}', f'--ground_truth={seq_dir}/gt/gt.txt']) == 0
  printed = capsys.readouterr().out
  assert 'sort: ' in printed and 'mota' in printed
  tracks = mot.read(out)
  assert len(tracks) and (tracks[:, 1] >= 1).all() and set(tracks[:, 0]) <= set(rows[:, 0])
  assert track.main([f'--detector={workdir}', f'--frames={seq_dir}', '--min_score=2']) == 2
  assert capsys.readouterr().err == 'error: --min_score must be in [0, 1], got 2.0\n'
  from benchmarks import tracking as bench
  assert bench.main(['--config=tiny', '--sequences=1', '--peers=', f'--detector={workdir}',
                     '--min_score=0', '--json']) == 0
  table = json.loads(capsys.readouterr().out)
  assert {'cvjax sort', 'cvjax deepsort'} <= set(table)
  assert all(0 <= t['precision'] <= 1 and t['frames_per_s'] > 0 for t in table.values())
  mot.write(str(tmp_path / 'det.txt'), rows)
  assert track.main([f'--detections={tmp_path}/det.txt', f'--frames={seq_dir}',
                     '--tracker=deepsort', f'--embedder={workdir}']) == 2
  assert capsys.readouterr().err == (
      f'error: --embedder={workdir} is a detection run; give a classification run\n')
