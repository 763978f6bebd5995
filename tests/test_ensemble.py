"""Ensembles of classification runs: `cvjax.restore_ensemble` and `python -m cvjax.ensemble`."""
import json
import os
import shutil

import numpy as np
import pytest

import cvjax
from cvjax import ensemble
from cvjax.errors import UserError
from cvjax.tasks import fit
from cvjax.train import TrainConfig

pytestmark = pytest.mark.slow  # Trains LeNet-5 through fit on real digits.


def _config(real_mnist, **changes):
  base = dict(model='lenet5', model_kwargs={'activation': 'relu', 'pooling': 'max'},
              dataset='mnist', data_dir=real_mnist['data_dir'], raw_data_dir=real_mnist['raw_dir'],
              batch_size=32, num_train_steps=10, optimizer='adam', learning_rate=2e-3,
              schedule='cosine', log_every_steps=10, eval_every_steps=10,
              checkpoint_every_steps=10, num_devices=1, seed=0)
  base.update(changes)
  return TrainConfig(**base)


@pytest.fixture(scope='module')
def two_runs(real_mnist, tmp_path_factory):
  """Two 10-step runs that differ only in their seed: [(workdir, results), ...]."""
  root = tmp_path_factory.mktemp('ensemble')
  runs = []
  for seed in (0, 1):
    workdir = str(root / f'seed{seed}')
    runs.append((workdir, fit(_config(real_mnist, seed=seed), workdir)))
  return runs


def _edited_copy(workdir, to, **changes):
  """A copy of `workdir` at `to` whose config.json has `changes`."""
  shutil.copytree(workdir, to)
  path = os.path.join(to, 'config.json')
  with open(path) as f:
    config = json.load(f)
  with open(path, 'w') as f:
    json.dump({**config, **changes}, f)
  return str(to)


def _files(workdir):
  """{path: (size, mtime)} of every file under `workdir`."""
  return {os.path.join(root, n): (os.stat(os.path.join(root, n)).st_size,
                                  os.stat(os.path.join(root, n)).st_mtime_ns)
          for root, _, names in os.walk(workdir) for n in names}


def _mean_nll(probabilities, labels):
  return -np.mean(np.log(probabilities[np.arange(len(labels)), labels].astype(np.float64)))


def test_a_one_member_ensemble_predicts_as_its_run(two_runs, real_mnist):
  (a, _), _ = two_runs
  images = real_mnist['test_images'][:64]
  np.testing.assert_array_equal(cvjax.restore_ensemble([a]).predict(images),
                                cvjax.restore(a).predict(images))


def test_a_two_member_ensemble_predicts_the_mean_of_its_members(two_runs, real_mnist):
  (a, _), (b, _) = two_runs
  images = real_mnist['test_images'][:64]
  members = [cvjax.restore(a).predict(images), cvjax.restore(b).predict(images)]
  assert not np.allclose(members[0], members[1], atol=1e-3)  # the seeds made two models
  pair = cvjax.restore_ensemble([a, b])
  probabilities = pair.predict(images)
  assert probabilities.shape == (64, 10) and probabilities.dtype == np.float32
  np.testing.assert_allclose(probabilities, (members[0] + members[1]) / 2, rtol=1e-6)
  assert pair.num_classes == 10 and pair.class_names == cvjax.restore(a).class_names


def test_the_cli_scores_each_member_as_its_run_and_the_ensemble_by_the_mean_probabilities(
    two_runs, real_mnist, capsys):
  (a, results_a), (b, results_b) = two_runs
  before = [_files(a), _files(b)]
  assert ensemble.main([f'--workdirs={a},{b}', '--split=test', '--json']) == 0
  result = json.loads(capsys.readouterr().out)
  assert [_files(a), _files(b)] == before  # read-only
  labels = real_mnist['test_labels']
  mean = (cvjax.restore(a).predict(real_mnist['test_images'])
          + cvjax.restore(b).predict(real_mnist['test_images'])) / 2
  assert result['split'] == 'test' and result['examples'] == 1000
  assert result['ensemble']['accuracy'] == np.mean(mean.argmax(-1) == labels)
  assert result['ensemble']['loss'] == pytest.approx(_mean_nll(mean, labels), rel=1e-4)
  assert [m['workdir'] for m in result['members']] == [a, b]
  assert [m['step'] for m in result['members']] == [10, 10]
  assert [m['accuracy'] for m in result['members']] == [results_a['test_accuracy'],
                                                        results_b['test_accuracy']]
  table = ensemble.format_table(result).splitlines()
  assert table[0] == '1000 test examples'
  assert table[-1].endswith('ensemble of 2 (loss %.4f)' % result['ensemble']['loss'])


def test_the_cli_gives_every_member_flip_tta_when_asked(two_runs, real_mnist, capsys):
  """--tta=flip: each member averages an image's and its mirror's probabilities."""
  (a, _), (b, _) = two_runs
  assert ensemble.main([f'--workdirs={a},{b}', '--tta=flip', '--json']) == 0
  result = json.loads(capsys.readouterr().out)
  images, labels = real_mnist['test_images'], real_mnist['test_labels']
  mirrored = images[:, :, ::-1]
  members = [(cvjax.restore(w).predict(images) + cvjax.restore(w).predict(mirrored)) / 2
             for w in (a, b)]
  assert result['tta'] == 'flip'
  assert [m['accuracy'] for m in result['members']] == [np.mean(p.argmax(-1) == labels)
                                                        for p in members]
  assert result['ensemble']['accuracy'] == np.mean(sum(members).argmax(-1) == labels)


def test_the_cli_refuses_a_missing_workdir(two_runs, tmp_path, capsys):
  (a, _), _ = two_runs
  missing = str(tmp_path / 'nope')
  assert ensemble.main([f'--workdirs={a},{missing}']) == 2
  assert capsys.readouterr().err == (f'error: --workdirs: {missing} does not exist; give the '
                                     'directories of trained classification runs, '
                                     'comma-separated\n')
  assert ensemble.main(['--workdirs=,']) == 2
  assert capsys.readouterr().err == ("error: --workdirs=',' names no run directory; give one or "
                                     'more, comma-separated\n')


def test_the_cli_refuses_members_of_different_datasets(two_runs, tmp_path, capsys):
  (a, _), (b, _) = two_runs
  other = _edited_copy(b, tmp_path / 'fashion', dataset='fashion_mnist')
  assert ensemble.main([f'--workdirs={a},{other}']) == 2
  assert capsys.readouterr().err == (f'error: {a} was trained on mnist and {other} on '
                                     'fashion_mnist; ensemble runs of the same dataset\n')


def test_restore_ensemble_refuses_a_run_of_another_task(two_runs, tmp_path):
  (a, _), (b, _) = two_runs
  other = _edited_copy(b, tmp_path / 'features', task='features')
  with pytest.raises(UserError) as caught:
    cvjax.restore_ensemble([a, other])
  assert str(caught.value) == (f"{a} and {other} differ in task ('classification' vs "
                               "'features'); an ensemble averages classification runs")
  with pytest.raises(UserError) as caught:
    cvjax.restore_ensemble([other, a])
  assert str(caught.value) == (f'{other} is a features run; an ensemble averages the class '
                               'probabilities of classification runs')


def test_the_cli_refuses_members_of_different_class_counts(two_runs, real_mnist, tmp_path,
                                                          capsys):
  (a, _), _ = two_runs
  twelve = str(tmp_path / 'twelve')
  fit(_config(real_mnist, num_classes=12, num_train_steps=1, log_every_steps=1), twelve)
  assert ensemble.main([f'--workdirs={a},{twelve}']) == 2
  assert capsys.readouterr().err == (f'error: {a} and {twelve} differ in class count (10 vs '
                                     '12); ensemble runs trained on the same classes\n')


def test_the_cli_refuses_an_unknown_split(two_runs, capsys):
  (a, _), _ = two_runs
  assert ensemble.main([f'--workdirs={a}', '--split=tset']) == 2
  assert capsys.readouterr().err == ("error: unknown split 'tset'; did you mean 'test'? "
                                     '(valid choices: test, train, train_minus_validation, '
                                     'validation)\n')
