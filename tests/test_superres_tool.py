"""`python -m cvjax.superres`: upscaling a file, --compare, --evaluate, and bad input.

One tiny real run (ESPCN ×2, 2 steps on 8² LR windows of cvjax_sr_photos) serves the module.
"""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from cvjax import superres
from cvjax.superresolution import evaluate, metrics
from cvjax.tasks import fit
from cvjax.train.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALE = 2
_SCORE = re.compile(r'(bicubic|model)\s+PSNR-Y\s+(-?[\d.]+) dB  SSIM-Y (-?[\d.]+)')


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A real 2-step superres run; evaluated once, on test, at its end."""
  path = str(tmp_path_factory.mktemp('sr_tool') / 'run')
  config = TrainConfig(task='superres', model='espcn_x2', dataset='cvjax_sr_photos', image_size=8,
                       batch_size=8, num_train_steps=2, eval_split='test', eval_every_steps=2,
                       log_every_steps=2, num_devices=1, seed=0)
  fit(config, path)
  return path


@pytest.fixture(scope='module')
def photo():
  """A 61×75 crop of skimage's astronaut: odd sides, so --compare modcrops it to 60×74."""
  import skimage.data
  return skimage.data.astronaut()[150:211, 160:235]


def _save(tmp_path, name, pixels):
  path = str(tmp_path / name)
  Image.fromarray(pixels).save(path)
  return path


def _lr_bicubic(hr: np.ndarray, scale: int):
  """The protocol written out independently: TF's antialiased bicubic ×1/scale rounded to
  8 bits, then JAX's bicubic ×scale clipped and rounded."""
  import tensorflow as tf
  lr = tf.image.resize(hr.astype(np.float32) / 255.0, [hr.shape[0] // scale, hr.shape[1] // scale],
                       method='bicubic', antialias=True).numpy()
  lr = np.round(np.clip(lr, 0.0, 1.0) * 255.0).astype(np.uint8)
  h, w, c = lr.shape
  up = jax.image.resize(lr.astype(np.float32) / 255.0, (h * scale, w * scale, c), method='bicubic')
  return lr, np.round(np.clip(np.asarray(up), 0.0, 1.0) * 255.0).astype(np.uint8)


def _psnr_y(a: np.ndarray, b: np.ndarray, scale: int) -> float:
  return float(metrics.psnr_y(a[None] / 255.0, b[None] / 255.0, scale)[0])


# ---------------------------------------------------------------- upscaling a file


def test_rgb_and_gray_pngs_come_back_scale_times_larger_in_their_own_mode(workdir, tmp_path,
                                                                          capsys):
  rng = np.random.default_rng(0)
  rgb = _save(tmp_path, 'rgb.png', rng.integers(0, 256, (13, 21, 3), dtype=np.uint8))
  gray = _save(tmp_path, 'gray.png', rng.integers(0, 256, (13, 21), dtype=np.uint8))
  rgba = _save(tmp_path, 'rgba.png', rng.integers(0, 256, (5, 7, 4), dtype=np.uint8))
  for image, mode in ((rgb, 'RGB'), (gray, 'L'), (rgba, 'RGB')):
    out = str(tmp_path / f'big_{os.path.basename(image)}')
    assert superres.main([f'--workdir={workdir}', f'--image={image}', f'--out={out}']) == 0
    with Image.open(image) as small, Image.open(out) as big:
      assert big.size == (SCALE * small.size[0], SCALE * small.size[1]) and big.mode == mode
    w, h = Image.open(image).size
    assert capsys.readouterr().out == (f'{w}x{h} upscaled x2 by espcn_x2 to {2 * w}x{2 * h}, '
                                       f'written to {out}\n')
  out = str(tmp_path / 'big.jpg')
  assert superres.main([f'--workdir={workdir}', f'--image={rgb}', f'--out={out}', '--json']) == 0
  assert json.loads(capsys.readouterr().out) == {
      'image': rgb, 'out': out, 'scale': 2, 'model': 'espcn_x2', 'input_size': [21, 13],
      'output_size': [42, 26]}


# ---------------------------------------------------------------- --compare


def test_compare_writes_bicubic_model_original_side_by_side_and_prints_two_score_lines(
    workdir, photo, tmp_path, capsys):
  import cvjax
  image = _save(tmp_path, 'photo.png', photo)
  out = str(tmp_path / 'compare.png')
  assert superres.main([f'--workdir={workdir}', f'--image={image}', f'--out={out}',
                        '--compare']) == 0
  lines = capsys.readouterr().out.splitlines()
  hr = photo[:60, :74]  # modcropped to multiples of 2
  picture = np.asarray(Image.open(out))
  assert picture.shape == (60, 3 * 74 + 2 * superres.GAP, 3)
  panels = [picture[:, i * (74 + superres.GAP):i * (74 + superres.GAP) + 74] for i in range(3)]
  assert (picture[:, 74:74 + superres.GAP] == 255).all()
  assert (picture[:, 2 * 74 + superres.GAP:2 * 74 + 2 * superres.GAP] == 255).all()
  lr, bicubic = _lr_bicubic(hr, SCALE)
  np.testing.assert_array_equal(panels[0], bicubic)
  np.testing.assert_array_equal(panels[1], cvjax.restore(workdir).predict(lr[None])[0])
  np.testing.assert_array_equal(panels[2], hr)

  assert len(lines) == 3 and lines[2] == f'bicubic | model | original, 74x60 each, written to {out}'
  scores = [_SCORE.fullmatch(line) for line in lines[:2]]
  assert all(scores), lines
  assert [m[1] for m in scores] == ['bicubic', 'model']
  for m, panel in zip(scores, panels[:2]):
    a, b = panel[None] / 255.0, hr[None] / 255.0
    assert m[2] == f'{float(metrics.psnr_y(a, b, SCALE)[0]):.3f}'
    assert m[3] == f'{float(metrics.ssim_y(a, b, SCALE)[0]):.4f}'


def test_compare_of_several_runs_gives_one_panel_and_one_line_each_and_crops(
    workdir, photo, tmp_path, capsys):
  import cvjax
  image = _save(tmp_path, 'photo.png', photo)
  out = str(tmp_path / 'compare3.png')
  assert superres.main([f'--workdir={workdir},{workdir}', f'--image={image}', f'--out={out}',
                        '--compare', '--crop=10,20,32']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [line.split()[0] for line in lines[:3]] == ['bicubic', 'espcn_x2', 'espcn_x2']
  assert lines[1][8:] == lines[2][8:]  # the same run scored twice
  assert lines[3] == ('bicubic | espcn_x2 | espcn_x2 | original, 74x60 each, the 32x32 square at '
                      f'row 10, column 20 of each, written to {out}')
  picture = np.asarray(Image.open(out))
  assert picture.shape == (32, 4 * 32 + 3 * superres.GAP, 3)
  hr = photo[:60, :74]
  lr, bicubic = _lr_bicubic(hr, SCALE)
  model = cvjax.restore(workdir).predict(lr[None])[0]
  step = 32 + superres.GAP
  for i, full in enumerate((bicubic, model, model, hr)):
    np.testing.assert_array_equal(picture[:, i * step:i * step + 32], full[10:42, 20:52])


def test_compare_scores_a_gray_image_as_its_rgb_copy(workdir, photo, tmp_path, capsys):
  gray = photo[..., 1]
  out = {}
  for name, pixels in (('gray.png', gray), ('rgb.png', np.repeat(gray[..., None], 3, -1))):
    image = _save(tmp_path, name, pixels)
    assert superres.main([f'--workdir={workdir}', f'--image={image}', '--compare', '--json']) == 0
    out[name] = json.loads(capsys.readouterr().out)
  for key in evaluate.SCORE_KEYS:
    assert out['gray.png'][key] == pytest.approx(out['rgb.png'][key], abs=1e-4), key
  assert out['gray.png']['out'] is None and out['gray.png']['panel_size'] == [74, 60]


# ---------------------------------------------------------------- --evaluate


def test_evaluate_json_scores_the_five_whole_test_photographs(workdir, capsys):
  assert superres.main([f'--workdir={workdir}', '--evaluate', '--json']) == 0
  result = json.loads(capsys.readouterr().out)
  assert set(result) == {'split', 'scale', 'model', 'images', 'mean'}
  assert (result['split'], result['scale'], result['model']) == ('test', 2, 'espcn_x2')
  names = [r['name'] for r in result['images']]
  assert names == ['astronaut', 'camera', 'chelsea', 'coffee', 'stereo_motorcycle']
  photos = dict(evaluate.photographs('cvjax_sr_photos', 'test'))
  for row in result['images']:
    hr = photos[row['name']]
    assert hr.shape[0] % 12 == 0 and hr.shape[1] % 12 == 0  # whole, not the 288² window
    _, bicubic = _lr_bicubic(hr, SCALE)
    assert row['bicubic_psnr_y'] == pytest.approx(_psnr_y(bicubic, hr, SCALE), abs=1e-5)
    assert 25 < row['bicubic_psnr_y'] < 40 and 0 < row['bicubic_ssim_y'] <= 1
  for key in evaluate.SCORE_KEYS:
    assert result['mean'][key] == pytest.approx(np.mean([r[key] for r in result['images']]))


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope='module')
def bad(workdir, tmp_path_factory):
  """Files for the bad-input cases: {name: path}."""
  root = tmp_path_factory.mktemp('bad')
  (root / 'notes.png').write_text('not an image\n')
  classification = root / 'classification'
  classification.mkdir()
  config = TrainConfig(task='classification', model='resnet20', dataset='cifar10')
  (classification / 'config.json').write_text(config.to_json())
  return {'root': str(root), 'notes': str(root / 'notes.png'),
          'tiny': _save(root, 'tiny.png', np.zeros((15, 40, 3), np.uint8)),
          'ok': _save(root, 'ok.png', np.zeros((16, 16, 3), np.uint8)),
          'classification': str(classification)}


def _bad_cases(workdir, b):
  out = f'{b["root"]}/out.png'
  w = f'--workdir={workdir}'
  return [
      ([w, f'--image={b["notes"]}', f'--out={out}'],
       f'--image={b["notes"]} is not an image PIL can read (cannot identify image file '
       f"'{b['notes']}')"),
      ([w, f'--image={b["root"]}/missing.png', f'--out={out}'],
       f'--image={b["root"]}/missing.png does not exist'),
      ([w, f'--image={b["tiny"]}', f'--out={out}', '--compare'],
       f'--image={b["tiny"]} is 40x15 pixels; --compare takes it as the original and downscales '
       'it x1/2, so its sides must be at least 16 pixels (8 x the scale 2): give a larger image, '
       'or drop --compare to upscale it'),
      ([f'--workdir={b["classification"]}', f'--image={b["ok"]}', f'--out={out}'],
       f'--workdir={b["classification"]} is a classification run (model resnet20), not a '
       'super-resolution one; give the workdir of a --task=superres run'),
      ([w, f'--image={b["ok"]}', f'--out={b["root"]}/no/such/dir/out.png'],
       f'--out={b["root"]}/no/such/dir/out.png: the directory {b["root"]}/no/such/dir does not '
       'exist; create it first or write elsewhere'),
      ([w], 'give --image=PATH --out=PATH to upscale an image (with --compare to score it as an '
            'original), or --evaluate to score the run on its test photographs'),
      ([w, f'--image={b["ok"]}'],
       f'--image={b["ok"]} needs --out=PATH, where the upscaled image is written (or --compare '
       'to print scores)'),
      ([w, f'--image={b["ok"]}', '--evaluate'],
       f'--image={b["ok"]} and --evaluate are two modes; give one'),
      ([w, '--evaluate', f'--out={out}'],
       '--evaluate writes no picture and compares every photograph itself; drop --out'),
      ([w, f'--image={b["ok"]}', f'--out={out}', '--split=validation'],
       '--split=validation goes with --evaluate; add --evaluate or drop --split'),
      ([f'--workdir={workdir},{workdir}', f'--image={b["ok"]}', f'--out={out}'],
       f'--workdir={workdir},{workdir} names several runs, which only --compare takes; give one '
       'workdir'),
      ([w, f'--image={b["ok"]}', '--compare', '--crop=0,0,8'],
       '--crop=0,0,8 crops the picture --compare writes; add --compare and --out, or drop --crop'),
      ([w, f'--image={b["ok"]}', '--compare', f'--out={out}', '--crop=0,0'],
       '--crop=0,0 must be three integers TOP,LEFT,SIZE, e.g. 0,0,96'),
      ([w, f'--image={b["ok"]}', '--compare', f'--out={out}', '--crop=4,0,13'],
       '--crop=4,0,13 is not inside the 16x16 original; give TOP + SIZE <= 16 and LEFT + SIZE <= 16'),
      ([w, '--evaluate', '--split=tset'],
       "unknown split of cvjax_sr_photos 'tset'; did you mean 'test'? "
       '(valid choices: test, train, validation)'),
  ]


def test_each_bad_input_is_one_error_line_exit_2_and_nothing_written(workdir, bad, capsys):
  for argv, message in _bad_cases(workdir, bad):
    assert superres.main(argv) == 2, argv
    captured = capsys.readouterr()
    assert captured.err == f'error: {message}\n' and captured.out == '', argv
    assert sorted(os.listdir(bad['root'])) == ['classification', 'notes.png', 'ok.png',
                                                'tiny.png'], argv


@pytest.mark.slow
def test_the_program_exits_2_with_one_error_line_and_no_traceback(workdir, bad):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  cases = _bad_cases(workdir, bad)
  for argv, message in (cases[0], cases[5]):  # not an image; no mode (both before JAX loads)
    done = subprocess.run([sys.executable, '-m', 'cvjax.superres', *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == f'error: {message}', done.stderr[-2000:]
    assert 'Traceback' not in done.stderr and done.stdout == ''
  assert not os.path.exists(f'{bad["root"]}/out.png')


def test_help_says_what_compare_does():
  from cvjax import cli
  text = cli.help_text(superres.FLAGS, superres.__doc__)
  assert 'taken as the high-resolution ORIGINAL' in ' '.join(text.split())
  listed = re.findall(r'^  (--[\w\[\]]+):', text, re.MULTILINE)
  assert listed == ['--[no]compare', '--crop', '--[no]evaluate', '--image', '--[no]json', '--out',
                    '--split', '--step', '--workdir'], listed
