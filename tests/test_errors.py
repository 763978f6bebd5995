"""The wording of the errors a user sees: a value not among the choices, a file a tool cannot use."""
import re

import pytest

from cvjax.errors import unknown_choice

MODELS = [f'resnet{d}' for d in (18, 20, 34, 50, 56, 101, 152)] + \
    [f'vgg{d}' for d in (11, 13, 16, 19)] + ['alexnet', 'lenet5', 'mobilenet_v2', 'densenet121']


def test_many_choices_name_the_closest_ones_instead_of_listing_them_all():
  assert str(unknown_choice('model', 'resnt50', MODELS)) == \
      "unknown model 'resnt50'; did you mean 'resnet50', 'resnet20', 'resnet56'?"
  assert str(unknown_choice('model', 'AlexNet', MODELS)) == \
      "unknown model 'AlexNet'; did you mean 'alexnet', 'lenet5'?"
  assert str(unknown_choice('model', 'inception', MODELS)) == (
      "unknown model 'inception'; none of the 15 choices is close "
      "(the first are alexnet, densenet121, lenet5, mobilenet_v2, ...)")
  assert str(unknown_choice('model', 'inception', MODELS, listing='list_models() lists them')) \
      == "unknown model 'inception'; none of the 15 choices is close (list_models() lists them)"


def test_few_choices_are_listed_with_the_closest_first():
  assert str(unknown_choice('optimizer', 'adm', ['sgd', 'adamw', 'adam'])) == \
      "unknown optimizer 'adm'; did you mean 'adam', 'adamw'? (valid choices: adam, adamw, sgd)"
  assert str(unknown_choice('optimizer', 'rmsprop', ('sgd', 'adam'))) == \
      "unknown optimizer 'rmsprop'; valid choices: adam, sgd"


def test_tools_read_images_and_name_the_flag_of_a_bad_one(tmp_path):
  import numpy as np
  import pytest
  from PIL import Image
  from cvjax import cli
  from cvjax.errors import UserError
  rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  Image.fromarray(rgb).save(tmp_path / 'a.png')
  np.testing.assert_array_equal(cli.read_image(str(tmp_path / 'a.png')), rgb)
  grey = cli.read_image(str(tmp_path / 'a.png'), mode='L')
  assert grey.shape == (4, 6, 1) and grey.dtype == np.uint8
  with pytest.raises(UserError, match=f'^--image={tmp_path}/b.png does not exist$'):
    cli.read_image(str(tmp_path / 'b.png'))
  (tmp_path / 'c.png').write_text('not an image')
  with pytest.raises(UserError, match=f'^{tmp_path}/c.png is not an image PIL can read'):
    cli.read_image(str(tmp_path / 'c.png'), flag=None)
  cli.check_image_out('boxes.jpg')
  with pytest.raises(UserError, match=r"^--picture=p\.txt: unknown image extension '\.txt'; use "):
    cli.check_image_out('p.txt', flag='picture')


def test_scores_and_opacities_must_lie_in_the_unit_interval():
  import pytest
  from cvjax import cli
  from cvjax.errors import UserError
  cli.check_unit_interval('alpha', 0.0)
  cli.check_unit_interval('alpha', 1.0)
  with pytest.raises(UserError, match=r'^--min_score must be in \[0, 1\], got 1.5$'):
    cli.check_unit_interval('min_score', 1.5)


# --- Every file a tool reads: malformed content is one `error:` line naming the file.

def _one_error_line(capsys) -> str:
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in err, err
  return lines[0]


def _png_header(width: int, height: int) -> bytes:
  """A PNG that claims width × height greyscale pixels (and holds one row)."""
  import struct
  import zlib

  def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0))
          + chunk(b'IDAT', zlib.compress(b'\0' * (width + 1))) + chunk(b'IEND', b''))


def test_decompression_bomb_png_is_one_error_line(tmp_path, capsys):
  """A 20,000² PNG header (400 M pixels, over PIL's limit): PIL's DecompressionBombError
  was a traceback."""
  from cvjax import detect, segment
  bomb = tmp_path / 'bomb.png'
  bomb.write_bytes(_png_header(20000, 20000))
  for main in (detect.main, segment.main):
    assert main([f'--workdir={tmp_path}', f'--image={bomb}']) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f'error: --image={bomb} has more pixels than PIL decodes safely (Image '
                           'size (400000000 pixels) exceeds limit'), line


def test_truncated_or_directory_images_are_user_errors(tmp_path):
  import io
  import numpy as np
  import pytest
  from PIL import Image
  from cvjax import cli
  from cvjax.errors import UserError
  out = io.BytesIO()
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(out, format='JPEG')
  (tmp_path / 'cut.jpg').write_bytes(out.getvalue()[:200])
  with pytest.raises(UserError, match=f'^--image={tmp_path}/cut.jpg is not an image PIL can read'):
    cli.read_image(str(tmp_path / 'cut.jpg'))
  with pytest.raises(UserError, match=f'^--image={tmp_path} is a directory; give an image file$'):
    cli.read_image(str(tmp_path))


def test_empty_config_json_is_one_error_line_in_every_tool(tmp_path, capsys):
  """detect, segment, visualize and export (and cvjax.restore) read a workdir's config.json:
  an empty one was a JSONDecodeError traceback."""
  import numpy as np
  import pytest
  from PIL import Image
  import cvjax
  from cvjax import detect, export, segment, visualize
  from cvjax.errors import UserError
  (tmp_path / 'config.json').write_text('')
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'a.png')
  expected = f'error: {tmp_path}/config.json is empty; expected a JSON object of TrainConfig fields'
  for main, argv in [(detect.main, [f'--image={tmp_path}/a.png']),
                     (segment.main, [f'--image={tmp_path}/a.png']),
                     (visualize.main, ['--what=filters', f'--out={tmp_path}/f.png']),
                     (export.main, ['--format=stablehlo', f'--out={tmp_path}/exported'])]:
    assert main([f'--workdir={tmp_path}', *argv]) == 2
    assert _one_error_line(capsys) == expected
  with pytest.raises(UserError, match='config.json is empty'):
    cvjax.restore(str(tmp_path))
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "train_loss": 2.0}\n')
  assert visualize.main([f'--workdir={tmp_path}', '--what=curves', f'--out={tmp_path}/c.png']) == 2
  assert _one_error_line(capsys) == expected


@pytest.mark.parametrize('ground_truth, detections, message', [
    ('', [], 'gt.json is empty; expected a COCO annotation file'),
    ({'images': 3, 'annotations': [], 'categories': []}, [],
     'gt.json: "images" must be a list of objects, got 3'),
    ({'images': [{}], 'annotations': [], 'categories': []}, [], 'gt.json: images[0] has no "id"'),
    ({'images': [{'id': 1}, {'id': 1}], 'annotations': [], 'categories': []}, [],
     'gt.json: images: id 1 appears twice; ids must be unique'),
    ({'images': [{'id': 1}], 'annotations': [{'image_id': 7, 'category_id': 1, 'bbox': [0, 0, 1, 1]}],
      'categories': [{'id': 1}]}, [],
     'gt.json: annotations[0].image_id 7 is not the id of an entry of "images"'),
    ({'images': [{'id': 1}], 'annotations': [{'image_id': 1, 'category_id': 1, 'bbox': [0, 0, -1, 1]}],
      'categories': [{'id': 1}]}, [],
     'gt.json: annotations[0].bbox must be [x, y, width, height]: finite numbers, width and height '
     '>= 0; got [0, 0, -1, 1]'),
    ({'images': [{'id': 1}], 'annotations': [], 'categories': {'1': 'cat'}}, [],
     'gt.json: "categories" must be a list of objects'),
    ({'images': [{'id': 1}], 'annotations': [], 'categories': []},
     [{'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 1, 1], 'score': 'high'}],
     "dets.json: [0].score must be a finite number, got 'high'"),
    ({'images': [{'id': 1}], 'annotations': [], 'categories': []},
     '[{"image_id": 1, "category_id": 1, "bbox": [NaN, 0, 1, 1], "score": 0.5}]',
     'dets.json: [0].bbox must be [x, y, width, height]'),
    ({'images': [{'id': 1}], 'annotations': [], 'categories': []}, [3],
     'dets.json: [0] must be an object, got 3'),
    ({'images': [{'id': 1}], 'annotations': [], 'categories': []},
     [{'image_id': [1], 'category_id': 1, 'bbox': [0, 0, 1, 1], 'score': 0.5}],
     'dets.json: [0].image_id must be an integer, got [1]'),
])
def test_malformed_coco_is_one_error_line(tmp_path, capsys, ground_truth, detections, message):
  """Each case was a KeyError, TypeError or ValueError traceback, or scored without a word."""
  import json
  from cvjax import evaluate
  for name, content in (('gt.json', ground_truth), ('dets.json', detections)):
    (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
  assert evaluate.main([f'--ground_truth={tmp_path}/gt.json',
                        f'--detections={tmp_path}/dets.json']) == 2
  line = _one_error_line(capsys)
  assert f'{tmp_path}/{message}' in line, line


@pytest.mark.parametrize('row, message', [
    ('1,-1,nan,0,5,5,0.9', 'with finite numbers'),
    ('1,-1,0,0,inf,5,0.9', 'with finite numbers'),
    ('0,-1,0,0,5,5,0.9', 'the frame must be an integer from 1 to 1,000,000'),
    ('1e12,-1,0,0,5,5,0.9', 'the frame must be an integer from 1 to 1,000,000'),
    ('1,0.5,0,0,5,5,0.9', 'the id must be an integer'),
    ('1,-1,0,0,-5,5,0.9', 'width and height must be 0 or more'),
])
def test_mot_rows_with_nan_inf_or_impossible_frames_are_refused_naming_the_line(tmp_path, capsys,
                                                                                row, message):
  """NaN and inf boxes were tracked; frame 10^12 made the tracker step through 10^12 frames."""
  from cvjax import track
  (tmp_path / 'det.txt').write_text(f'1,-1,0,0,5,5,0.9\n{row}\n')
  assert track.main([f'--detections={tmp_path}/det.txt']) == 2
  line = _one_error_line(capsys)
  assert line.startswith(f'error: {tmp_path}/det.txt:2: ') and message in line, line
  (tmp_path / 'bin.txt').write_bytes(b'\xff\xfe1,2\n')
  assert track.main([f'--detections={tmp_path}/bin.txt']) == 2
  assert _one_error_line(capsys) == (f'error: {tmp_path}/bin.txt is not UTF-8 text (byte 0xff on '
                                     'line 1); expected a text file')


def test_a_missing_directory_or_binary_flagfile_is_one_error_line(tmp_path, capsys):
  """absl's message for a missing flagfile was 'ERROR:: Unable to open flagfile: [Errno 2]
  ...'; a binary one was a UnicodeDecodeError traceback."""
  from absl import flags
  from cvjax import cli
  values = flags.FlagValues()
  flags.DEFINE_string('name', None, 'A string.', flag_values=values)
  (tmp_path / 'bin.flags').write_bytes(bytes(range(256)))
  (tmp_path / 'nested.flags').write_text(f'--flagfile={tmp_path}/bin.flags\n')
  for argv, message in [
      ([f'--flagfile={tmp_path}/nope.flags'], f'--flagfile={tmp_path}/nope.flags does not exist'),
      ([f'--flagfile={tmp_path}'], f'--flagfile={tmp_path} is a directory; give a file'),
      ([f'--flagfile={tmp_path}/bin.flags'],
       f'--flagfile={tmp_path}/bin.flags is not UTF-8 text (byte 0x80 on line 2)'),
      ([f'--flagfile={tmp_path}/nested.flags'], 'a file named by --flagfile is not UTF-8 text')]:
    assert cli.main(lambda f: 0, values, argv) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f'error: {message}'), line


@pytest.mark.slow
def test_an_experiment_given_a_binary_flagfile_prints_one_error_line(tmp_path):
  import os
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  (tmp_path / 'bin.flags').write_bytes(bytes(range(256)))
  env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get('PYTHONPATH', ''))
  done = subprocess.run([sys.executable, '-m', 'experiments.lenet',
                         f'--flagfile={tmp_path}/bin.flags'], cwd=repo, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2 and 'Traceback' not in done.stderr, done.stderr[-2000:]
  assert done.stderr.strip().splitlines()[-1].startswith(
      f'error: --flagfile={tmp_path}/bin.flags is not UTF-8 text'), done.stderr


def test_error_messages_with_line_breaks_are_printed_on_one_line(capsys):
  from cvjax import cli
  assert cli.fail('bad --out=a\nb.png\r\n') == 2
  assert capsys.readouterr().err == 'error: bad --out=a b.png\n'


@pytest.mark.parametrize('content, message', [
    ('', 'sweep.json is empty'),
    ('[]', 'sweep.json holds a list, not an object'),
    ('{}', 'sweep.json: "trials" must be a list of {"name", "overrides"}'),
    ('{"trials": [{"name": "a"}]}', 'sweep.json: trials[0].overrides must map flag names to strings'),
    ('{"trials": [{"name": "../..", "overrides": {}}]}',
     "sweep.json: trials[0].name must be a directory name, got '../..'"),
    ('{"trials": [], "swept": "lr"}', 'sweep.json: "swept" must be a list of strings'),
])
def test_sweep_records_of_the_wrong_shape_name_the_file(tmp_path, content, message):
  """Each was a KeyError, TypeError or AttributeError traceback in launch.summarize."""
  import pytest
  from cvjax.errors import UserError
  from launch import summarize
  (tmp_path / 'sweep.json').write_text(content)
  with pytest.raises(UserError, match='^' + re.escape(f'{tmp_path}/{message}')):
    summarize.collect(str(tmp_path))


def test_trial_files_of_the_wrong_shape_name_the_file(tmp_path):
  import json
  import pytest
  from cvjax.errors import UserError
  from launch import summarize
  (tmp_path / 'sweep.json').write_text(json.dumps(
      {'trials': [{'name': 'a', 'overrides': {}}, {'name': 'b', 'overrides': {}}]}))
  (tmp_path / 'b').mkdir()
  (tmp_path / 'b' / 'trial.flags').write_bytes(b'\xff--seed=1\n')
  with pytest.raises(UserError, match=f'^{tmp_path}/b/trial.flags is not UTF-8 text'):
    summarize.collect(str(tmp_path))
  (tmp_path / 'b' / 'trial.flags').write_text('--seed=1\n')
  (tmp_path / 'a').mkdir()
  for content, message in [('', 'is empty'), ('[1]', 'holds a list, not the results object')]:
    (tmp_path / 'a' / 'results.json').write_text(content)
    with pytest.raises(UserError, match=f'^{tmp_path}/a/results.json {message}'):
      summarize.collect(str(tmp_path))


def test_metrics_and_export_records_of_the_wrong_shape_name_the_file(tmp_path):
  import pytest
  from cvjax import export, visualize
  from cvjax.errors import UserError
  for line, message in [('[1, 2]', 'line 1: expected an object with an integer "step" >= 0'),
                        ('{"loss": 1.0}', 'line 1: expected an object with an integer "step"'),
                        ('{"step": 1, "loss": "x"}', "line 1: 'loss' must be a number, got 'x'")]:
    (tmp_path / 'metrics.jsonl').write_text(line + '\n')
    with pytest.raises(UserError, match='^' + re.escape(f'{tmp_path}/metrics.jsonl {message}')):
      visualize.read_metrics(str(tmp_path))
  for content, message in [('', 'cvjax_export.json is empty'),
                           ('{}', 'cvjax_export.json: expected an object whose "format" is one of')]:
    (tmp_path / 'cvjax_export.json').write_text(content)
    with pytest.raises(UserError, match='^' + re.escape(f'{tmp_path}/{message}')):
      export.load(str(tmp_path))
  (tmp_path / 'cvjax_export.json').write_text('{"format": "stablehlo"}')
  (tmp_path / 'model.jax_export').write_bytes(b'junk')
  with pytest.raises(UserError, match=f'^{tmp_path}/model.jax_export is not a serialized '):
    export.load(str(tmp_path))


def test_truncated_npz_weights_are_a_user_error(tmp_path):
  """zipfile's BadZipFile was a traceback in python -m cvjax.convert."""
  import io
  import numpy as np
  import pytest
  from cvjax.errors import UserError
  from cvjax.pretrained import torchvision
  out = io.BytesIO()
  np.savez(out, weight=np.ones(3))
  (tmp_path / 'w.npz').write_bytes(out.getvalue()[:40])
  with pytest.raises(UserError, match=f'^cannot read {tmp_path}/w.npz as an .npz of state_dict '):
    torchvision.read_state_dict(str(tmp_path / 'w.npz'))
