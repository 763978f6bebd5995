"""The training loop end to end on real digits: learning, files, resume, failures."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

import cvjax
from cvjax.errors import TrainingDiverged, UserError
from cvjax.tasks import fit
from cvjax.train import TrainConfig
from cvjax.train.checkpoint import Checkpoints

pytestmark = pytest.mark.slow  # Each test trains LeNet-5 through fit on real digits.


def _config(real_mnist, **changes):
  base = dict(model='lenet5', model_kwargs={'activation': 'relu', 'pooling': 'max'},
              dataset='mnist', data_dir=real_mnist['data_dir'], raw_data_dir=real_mnist['raw_dir'],
              batch_size=64, num_train_steps=40, optimizer='adam', learning_rate=2e-3,
              schedule='cosine', log_every_steps=10, eval_every_steps=20,
              checkpoint_every_steps=10, keep_checkpoints=10, seed=0)
  base.update(changes)
  return TrainConfig(**base)


def _params(workdir):
  return jax.device_get(cvjax.restore(workdir).variables['params'])


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def finished_run(real_mnist, tmp_path_factory):
  """One uninterrupted 40-step run that several tests compare against."""
  workdir = str(tmp_path_factory.mktemp('run') / 'straight')
  results = fit(_config(real_mnist), workdir)
  return workdir, results


def test_fit_learns_real_digits_and_writes_the_run_files(finished_run):
  workdir, results = finished_run
  assert results['step'] == 40
  assert results['test_examples'] == 1000   # every test digit counted exactly once
  assert results['test_accuracy'] > 0.75     # 40 steps of 64 real digits; chance is 0.1
  assert results['images_per_second'] > 0
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['test_accuracy'] == results['test_accuracy']
  assert TrainConfig.from_json(open(os.path.join(workdir, 'config.json')).read()).model == 'lenet5'
  lines = _lines(os.path.join(workdir, 'metrics.jsonl'))
  train = [l for l in lines if 'train_loss' in l]
  assert [l['step'] for l in train] == [10, 20, 30, 40]
  assert train[-1]['train_loss'] < 0.5 * train[0]['train_loss']
  assert [l['step'] for l in lines if 'eval_accuracy' in l] == [20, 40]
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(workdir, 'tensorboard')))
  assert Checkpoints(os.path.join(workdir, 'checkpoints')).all_steps() == [10, 20, 30, 40]


def test_resume_from_a_midway_checkpoint_matches_the_uninterrupted_run(finished_run, real_mnist, tmp_path):
  """As if killed after step 20's checkpoint: re-running continues exactly."""
  straight, results = finished_run
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(straight, resumed)
  for step in ('30', '40'):
    shutil.rmtree(os.path.join(resumed, 'checkpoints', step))
  os.remove(os.path.join(resumed, 'results.json'))
  again = fit(_config(real_mnist), resumed)
  assert again['test_accuracy'] == results['test_accuracy']
  assert again['test_loss'] == results['test_loss']
  jax.tree.map(np.testing.assert_array_equal, _params(resumed), _params(straight))
  # metrics.jsonl has no duplicated steps after the resume and equals the original.
  assert _lines(os.path.join(resumed, 'metrics.jsonl')) == _lines(os.path.join(straight, 'metrics.jsonl'))


def test_a_corrupt_newest_checkpoint_is_skipped_for_the_previous_one(finished_run, tmp_path):
  straight, _ = finished_run
  workdir = str(tmp_path / 'corrupt')
  shutil.copytree(straight, workdir)
  newest = os.path.join(workdir, 'checkpoints', '40', 'state')
  for root, _, files in os.walk(newest):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'not a checkpoint')
  restored = cvjax.restore(workdir)
  assert restored.step == 30


def test_restore_predicts_the_test_digits_as_well_as_training_measured(finished_run, real_mnist):
  workdir, results = finished_run
  restored = cvjax.restore(workdir)
  assert restored.step == 40 and restored.config.model == 'lenet5'
  probs = restored.predict(real_mnist['test_images'])   # uint8 [1000, 28, 28, 1]
  assert probs.shape == (1000, 10)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  accuracy = float(np.mean(probs.argmax(-1) == real_mnist['test_labels']))
  assert accuracy == pytest.approx(results['test_accuracy'], abs=1e-3)


def test_a_classification_run_embeds_crops_for_deepsort(finished_run, real_mnist, tmp_path,
                                                        capsys):
  """`cvjax.track --embedder=WORKDIR`: the run's penultimate features, L2-normalised, of RGB
  crops of any size (here grey digits); a batch's padding changes no embedding."""
  pytest.importorskip('skimage')
  from cvjax import track
  from cvjax.data import shapes_video as sv
  from cvjax.tracking import mot
  workdir, _ = finished_run
  embed = track.workdir_embedder(workdir)
  digits = [np.repeat(d, 3, axis=-1) for d in real_mnist['test_images'][:3]]
  digits[2] = digits[2][3:25, 5:20]                       # a 22×15 crop, resized to 32²
  together = embed(digits)
  assert together.shape == (3, 84) and together.dtype == np.float32   # LeNet's F6 layer
  np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.concatenate([embed(digits[:1]), embed(digits[1:])]), together,
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(together[0], together[1], atol=1e-2)
  seq_dir = str(tmp_path / 'seq')
  seq = sv.write_sequence(seq_dir, index=0, seed=0, config=sv.TINY)
  mot.write(str(tmp_path / 'det.txt'), sv.noisy_detections(seq['gt'], seed=0))
  out = str(tmp_path / 'tracks.txt')
  assert track.main([f'--detections={tmp_path}/det.txt', f'--frames={seq_dir}',
                     '--tracker=deepsort', f'--embedder={workdir}', f'--out={out}']) == 0
  assert capsys.readouterr().out.startswith('deepsort: ')
  assert len(mot.read(out)) > 0
  assert track.main([f'--detector={workdir}', f'--frames={seq_dir}']) == 2
  assert capsys.readouterr().err == (
      f'error: --detector={workdir} is a classification run, not a detector\n')


def test_one_and_eight_devices_train_to_the_same_numbers(real_mnist, tmp_path):
  # The loop's sharding of data and eval sums; test_steps runs the step with either conv impl.
  conv_impl = 'xla'
  one = fit(_config(real_mnist, num_train_steps=20, num_devices=1, conv_impl=conv_impl),
            str(tmp_path / 'one'))
  eight = fit(_config(real_mnist, num_train_steps=20, num_devices=8, conv_impl=conv_impl),
              str(tmp_path / 'eight'))
  assert eight['test_loss'] == pytest.approx(one['test_loss'], rel=1e-4)
  assert abs(eight['test_accuracy'] - one['test_accuracy']) <= 0.002  # at most 2 of 1,000 digits flip


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(real_mnist, tmp_path):
  workdir = str(tmp_path / 'nan')
  config = _config(real_mnist, optimizer='sgd', learning_rate=1e4, checkpoint_every_steps=1,
                   schedule='constant')
  with pytest.raises(TrainingDiverged, match=r'loss is (nan|inf) at step (\d+); stopped') as info:
    fit(config, workdir)
  bad_step = int(info.value.args[0].split('at step ')[1].split(';')[0])
  kept = Checkpoints(os.path.join(workdir, 'checkpoints')).all_steps()
  assert kept and max(kept) == bad_step - 1
  assert f'(step {bad_step - 1})' in str(info.value)
  restored = cvjax.restore(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored.variables))


def test_early_stopping_ends_the_run_after_patience_evaluations_without_improvement(real_mnist, tmp_path):
  config = _config(real_mnist, learning_rate=1e-12, schedule='constant', eval_every_steps=5,
                   early_stopping_patience=2, num_train_steps=100)
  results = fit(config, str(tmp_path / 'early'))
  # Evaluations at 5 (best), 10 and 15 (no better): stop at 15.
  assert results['early_stopped'] and results['step'] == 15


def test_batch_size_that_does_not_split_over_the_devices_is_refused(real_mnist, tmp_path):
  with pytest.raises(UserError, match=r'batch_size=12 cannot be split over 8 devices; use a multiple of 8 \(e.g. 16\)'):
    fit(_config(real_mnist, batch_size=12), str(tmp_path / 'bad'))


def test_batch_larger_than_the_dataset_is_refused(real_mnist, tmp_path):
  with pytest.raises(UserError, match=r"global batch size 8000 is larger than the 4000 examples of mnist 'train'; use a smaller --batch_size"):
    fit(_config(real_mnist, batch_size=8000), str(tmp_path / 'bad'))


def test_the_train_split_sets_the_epoch_and_an_unknown_one_is_refused(real_mnist):
  """'train_minus_validation' is the first 90 % of train: 3,600 of the 4,000 digits."""
  from cvjax.tasks.classification import ClassificationTask
  from cvjax.train.run import build_run
  run = build_run(_config(real_mnist, train_split='train_minus_validation'), ClassificationTask)
  assert run.dataset.split_sizes['train_minus_validation'] == 3600
  assert run.steps_per_epoch == 3600 // 64
  with pytest.raises(UserError, match=r"unknown train_split of mnist 'tain'; did you mean "
                     r"'train'\?"):
    build_run(_config(real_mnist, train_split='tain'), ClassificationTask)
