"""Fuzzing every reader of a user's files and every tool's command line.

    .venv/bin/python -m pytest tests/test_fuzz.py -q -p no:xdist                  # ~30 examples a test, the same each run
    CVJAX_FUZZ=soak .venv/bin/python -m pytest tests/test_fuzz.py -q -p no:xdist  # thousands a test, fresh seeds

The contract pinned here (cvjax.cli): a reader given malformed content raises a `UserError`
whose message names the file, never another exception; a tool given bad flags or files
returns 2 and prints exactly one `error: ...` line on stderr, no traceback. The inputs are
random bytes and mutations of valid files: truncations, bit flips, inserted, deleted and
replaced bytes, JSON values swapped for values of other types, keys removed. The profiles
(example counts) are in tests/conftest.py. Nothing here compiles a JAX program: every tool
fails on its input before it would build a model.
"""
import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import struct
import tempfile
import zlib

import numpy as np
import pytest

pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cvjax import cli  # noqa: E402
from cvjax.errors import UserError  # noqa: E402
from cvjax.train.config import TrainConfig, field_types  # noqa: E402

# Tests that take capsys or monkeypatch reuse them across examples (each example reads
# the captured output first, so nothing leaks from one to the next).
WITH_FIXTURES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
# Plotting costs ~0.3 s an example: a fifth of the profile's examples.
FEWER = settings(max_examples=max(5, settings.default.max_examples // 5),
                 suppress_health_check=[HealthCheck.function_scoped_fixture])

# ----------------------------------------------------------------------------- inputs

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=5)
INTERESTING_BYTES = b'"\',:;{}[]\\\n\r\t\0\xff\xfe-+.eE09 #='


@st.composite
def mutated(draw, valid: bytes) -> bytes:
  """`valid` truncated, with bits flipped, bytes inserted, deleted or replaced; or random."""
  n = len(valid)
  kind = draw(st.sampled_from(['truncate', 'flip', 'insert', 'delete', 'replace', 'random']))
  if kind == 'truncate':
    return valid[:draw(st.integers(0, max(n - 1, 0)))]
  if kind == 'random':
    return draw(st.binary(max_size=256))
  out = bytearray(valid)
  for _ in range(draw(st.integers(1, 4))):
    i = draw(st.integers(0, len(out)))
    if kind == 'flip' and i < len(out):
      out[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == 'insert':
      out[i:i] = draw(st.binary(min_size=1, max_size=8))
    elif kind == 'delete':
      del out[i:i + draw(st.integers(1, 8))]
    elif kind == 'replace' and i < len(out):
      out[i] = draw(st.sampled_from(INTERESTING_BYTES))
  return bytes(out)


def _paths(doc, prefix=()):
  yield prefix
  items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
  for key, value in items:
    yield from _paths(value, prefix + (key,))


NUMBERS = st.integers(-2**70, 2**70) | st.floats() | st.sampled_from([0, -1, 0.0, -0.0, 1e308])


@st.composite
def json_mutated(draw, doc):
  """`doc` with 1-3 of its values replaced by any JSON value or by a number, removed,
  wrapped in a list, or (list items) repeated."""
  doc = copy.deepcopy(doc)
  for _ in range(draw(st.integers(1, 3))):
    path = draw(st.sampled_from(list(_paths(doc))))
    action = draw(st.sampled_from(['replace', 'number', 'delete', 'wrap', 'repeat']))
    if not path:
      doc = draw(JSON_VALUES) if action in ('replace', 'number') else [doc]
      continue
    parent = doc
    for key in path[:-1]:
      parent = parent[key]
    key = path[-1]
    if action == 'replace':
      parent[key] = draw(JSON_VALUES)
    elif action == 'number':
      parent[key] = draw(NUMBERS)
    elif action == 'delete':
      del parent[key]
    elif action == 'wrap':
      parent[key] = [parent[key]]
    elif isinstance(parent, list):
      parent.insert(key, copy.deepcopy(parent[key]))
  return doc


def json_contents(doc) -> st.SearchStrategy[bytes]:
  """Bytes of a JSON file near `doc`: itself, its JSON mutated, or its text mutated."""
  text = json.dumps(doc, indent=1).encode()
  return st.one_of(st.just(text), json_mutated(doc).map(lambda d: json.dumps(d).encode()),
                   mutated(text))


@contextlib.contextmanager
def files(contents: dict):
  """A temporary directory holding {relative path: bytes}."""
  with tempfile.TemporaryDirectory() as directory:
    for name, data in contents.items():
      path = os.path.join(directory, name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'wb') as f:
        f.write(data)
    yield directory


def assert_names(error: UserError, *paths: str) -> None:
  message = str(error)
  assert any(p in message for p in paths), f'{message!r} names none of {paths}'


def assert_one_error_line(code: int, capsys) -> str | None:
  """None when the tool succeeded (exit 0); else checks that it exited 2 with exactly one
  `error: ...` line on stderr and returns that line."""
  captured = capsys.readouterr()
  assert 'Traceback' not in captured.err, captured.err
  if code == 0:
    return None
  lines = captured.err.splitlines()
  assert code == 2 and len(lines) == 1 and lines[0].startswith('error: '), (code, captured.err)
  return lines[0]


# ------------------------------------------------------------------------- TrainConfig

POSITIVE_SIZES = ('batch_size', 'eval_batch_size', 'num_train_steps', 'image_size',
                  'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
                  'keep_checkpoints', 'early_stopping_patience', 'num_devices', 'num_classes',
                  'grad_accum_steps')


def assert_sane(c: TrainConfig) -> None:
  """What every validated config holds, written out (not read off the field metadata)."""
  for name in POSITIVE_SIZES:
    value = getattr(c, name)
    assert value is None or (type(value) is int and value > 0), (name, value)  # noqa: E721
  for f in dataclasses.fields(c):
    value = getattr(c, f.name)
    if isinstance(value, float):
      assert math.isfinite(value), (f.name, value)
  assert c.num_train_steps is not None or c.num_epochs > 0
  assert c.learning_rate > 0 and 0 <= c.momentum < 1 and 0 < c.decay_factor <= 1
  assert c.weight_decay >= 0 and c.warmup_epochs >= 0 and 0 <= c.label_smoothing < 1
  assert all(math.isfinite(e) and e >= 0 for e in c.decay_epochs)
  assert c.grad_clip_norm is None or c.grad_clip_norm > 0
  assert type(c.seed) is int and 0 <= c.seed < 2**32  # noqa: E721


def _field_values(name: str) -> st.SearchStrategy:
  kind, optional = field_types()[name]
  f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
  typed = {
      int: st.integers(-3, 300) | st.sampled_from([2**32 - 1, 2**32, 2**63, -2**40]),
      float: st.floats() | st.integers(-5, 5) | st.sampled_from([0.0, -0.0, 1.0, 1e-300]),
      bool: st.booleans(),
      str: (st.sampled_from(f.metadata['choices']) if f.metadata['choices'] else st.nothing())
           | st.text(max_size=10),
      tuple: st.lists(st.floats() | st.integers(-3, 100), max_size=3).map(tuple),
      dict: st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5)
                            | st.booleans(), max_size=3),
  }[kind]
  return st.one_of(typed, st.none() if optional else st.nothing(), JSON_VALUES)


@given(st.fixed_dictionaries({}, optional={f.name: _field_values(f.name)
                                           for f in dataclasses.fields(TrainConfig)}))
def test_any_field_values_validate_or_raise_a_user_error_and_validated_ones_are_sane(changes):
  try:
    config = TrainConfig(**changes)
    config.validate()
  except UserError as e:
    assert '\n' not in str(e)
    return
  assert_sane(config)
  again = TrainConfig.from_json(config.to_json())
  again.validate()
  assert again.replace(model_kwargs={}) == config.replace(model_kwargs={})


VALID_CONFIG = json.loads(TrainConfig(model='resnet20', dataset='cifar10', decay_epochs=(30, 60),
                                      image_size=32, grad_clip_norm=1.0,
                                      model_kwargs={'width': 2}).to_json())


@given(json_contents(VALID_CONFIG))
def test_config_file_reader_raises_only_user_errors_naming_the_file(content):
  with files({'config.json': content}) as directory:
    path = os.path.join(directory, 'config.json')
    try:
      config = TrainConfig.from_file(path)
    except UserError as e:
      assert_names(e, path)
      assert '\n' not in str(e)
    else:
      assert_sane(config)


def test_config_file_truncated_at_every_byte_is_a_user_error_naming_it(tmp_path):
  text = json.dumps(VALID_CONFIG, indent=2).encode()
  path = str(tmp_path / 'config.json')
  for end in range(len(text) - 1):  # all but the closing brace (and the whole file)
    with open(path, 'wb') as f:
      f.write(text[:end])
    with pytest.raises(UserError) as e:
      TrainConfig.from_file(path)
    assert_names(e.value, path)


# ------------------------------------------------------------------------------ images


def _png(width: int, height: int, rows: bytes = b'') -> bytes:
  """A greyscale PNG whose header says width × height; its data only `rows`."""
  def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
  header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(rows))
          + chunk(b'IEND', b''))


def _encoded(fmt: str) -> bytes:
  from PIL import Image
  out = io.BytesIO()
  pixels = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)
  Image.fromarray(pixels).save(out, format=fmt)
  return out.getvalue()


IMAGES = {fmt: _encoded(fmt) for fmt in ('PNG', 'JPEG', 'GIF', 'BMP')}


@contextlib.contextmanager
def small_bomb_limit(pixels: int = 1_000_000):
  """PIL's decompression-bomb limit lowered, so a mutated header cannot claim gigabytes."""
  import warnings
  from PIL import Image
  old = Image.MAX_IMAGE_PIXELS
  Image.MAX_IMAGE_PIXELS = pixels
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      yield
  finally:
    Image.MAX_IMAGE_PIXELS = old


@given(st.one_of(*(mutated(data) for data in IMAGES.values()),
                 st.builds(_png, st.integers(0, 5000), st.integers(0, 5000), st.binary(max_size=64))))
def test_image_reader_returns_pixels_or_a_user_error_naming_the_file(content):
  with files({'image': content}) as directory, small_bomb_limit():
    path = os.path.join(directory, 'image')
    try:
      pixels = cli.read_image(path, flag=None)
    except UserError as e:
      assert_names(e, path)
    else:
      assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
      assert pixels.size > 0


# -------------------------------------------------------------------------------- COCO

COCO_GT = {'images': [{'id': 1, 'width': 64, 'height': 48}, {'id': 2}],
           'annotations': [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [4, 5, 20, 10],
                            'area': 200, 'iscrowd': 0},
                           {'id': 2, 'image_id': 2, 'category_id': 2, 'bbox': [0, 0, 8.5, 8],
                            'difficult': 1}],
           'categories': [{'id': 1, 'name': 'cat'}, {'id': 2, 'name': 'dog'}]}
COCO_DT = [{'image_id': 1, 'category_id': 1, 'bbox': [5, 5, 19, 11], 'score': 0.9},
           {'image_id': 2, 'category_id': 2, 'bbox': [1, 0, 8, 8], 'score': 0.4}]


@given(gt=json_contents(COCO_GT), dt=json_contents(COCO_DT),
       metric=st.sampled_from(['coco', 'voc07', 'voc12']))
def test_coco_readers_raise_only_user_errors_naming_the_file(gt, dt, metric):
  from cvjax import evaluate
  with files({'gt.json': gt, 'dt.json': dt}) as directory:
    paths = [os.path.join(directory, n) for n in ('gt.json', 'dt.json')]
    try:
      result = evaluate.evaluate_files(*paths, metric)
    except UserError as e:
      assert_names(e, *paths)
    else:
      assert all(isinstance(v, float) for v in result.values() if not isinstance(v, dict))


@WITH_FIXTURES
@given(gt=json_contents(COCO_GT), dt=json_contents(COCO_DT),
       extra=st.lists(st.sampled_from(['--metric=coco', '--metric=voc12', '--metric=', '--json',
                                       '--json=maybe', '--metric=nan', '--nojson', 'stray']),
                      max_size=2))
def test_evaluate_tool_on_fuzzed_files_exits_0_or_prints_one_error_line(gt, dt, extra, capsys):
  from cvjax import evaluate
  capsys.readouterr()
  with files({'gt.json': gt, 'dt.json': dt}) as d:
    code = evaluate.main([f'--ground_truth={d}/gt.json', f'--detections={d}/dt.json', *extra])
    assert_one_error_line(code, capsys)


# --------------------------------------------------------------------------------- MOT

MOT_TEXT = b'1,-1,10,20,30,40,0.9,-1,-1,-1\n1,-1,50,60,10,10,0.8\n2,-1,11,21,30,40,0.95\n' \
           b'3,-1,12,22,30,40,0.7,-1,-1,-1\n3,-1,52.5,60,10,10,0.6\n'
MOT_GT = b'1,1,10,20,30,40,1,1,1\n2,1,11,21,30,40,1,1,1\n3,1,12,22,30,40,1,1,0.5\n'
MOT_VALUES = st.one_of(
    st.sampled_from(['1', '2', '3', '-1', '0', '0.5', '1e6', '1e7', '3e38', 'nan', 'inf', '-inf',
                     '', 'x']),
    st.floats().map(repr), st.integers(-10, 10).map(str))
MOT_ROWS = st.lists(st.lists(MOT_VALUES, min_size=4, max_size=11).map(','.join), max_size=6).map(
    lambda rows: '\n'.join(rows).encode())
MOT_FILES = st.one_of(mutated(MOT_TEXT), MOT_ROWS)


@given(MOT_FILES)
def test_mot_reader_returns_finite_rows_or_a_user_error_naming_the_file(content):
  from cvjax.tracking import mot
  with files({'det.txt': content}) as directory:
    path = os.path.join(directory, 'det.txt')
    try:
      rows = mot.read(path)
    except UserError as e:
      assert_names(e, path)
    else:
      assert rows.shape[1] == 10 and np.isfinite(rows).all()
      assert (rows[:, 0] >= 1).all() and (rows[:, 0] == np.round(rows[:, 0])).all()
      assert (rows[:, 4:6] >= 0).all()


@pytest.mark.filterwarnings('error::RuntimeWarning')  # on the command line: lines on stderr
@WITH_FIXTURES
@given(det=MOT_FILES, gt=st.one_of(mutated(MOT_GT), MOT_ROWS),
       extra=st.lists(st.sampled_from(['--max_age=-1', '--max_age=0', '--n_init=0', '--n_init=2',
                                       '--iou_threshold=nan', '--iou_threshold=2',
                                       '--iou_threshold=0.3', '--min_score=-1', '--tracker=sort',
                                       '--tracker=x', '--n_init=1e9']), max_size=2),
       evaluate=st.booleans())
def test_track_tool_on_fuzzed_files_exits_0_or_prints_one_error_line(det, gt, extra, evaluate,
                                                                      capsys):
  pytest.importorskip('motmetrics')
  from cvjax import track
  capsys.readouterr()
  with files({'det.txt': det, 'gt.txt': gt}) as d:
    if evaluate:
      argv = ['--evaluate', f'--ground_truth={d}/gt.txt', f'--tracks={d}/det.txt']
    else:
      argv = [f'--detections={d}/det.txt', f'--out={d}/tracks.txt']
    assert_one_error_line(track.main(argv + extra), capsys)


# ---------------------------------------------------------- a run's metrics and config

METRICS_TEXT = (b'{"step": 10, "train_loss": 2.1, "learning_rate": 0.1}\n'
                b'{"step": 20, "train_loss": 1.5, "learning_rate": 0.05}\n'
                b'{"step": 20, "eval_accuracy": 0.61, "eval_loss": 1.2}\n')


@given(st.one_of(mutated(METRICS_TEXT), st.lists(JSON_VALUES, max_size=3).map(
    lambda rs: '\n'.join(json.dumps(r) for r in rs).encode())))
def test_metrics_reader_returns_numeric_records_or_a_user_error_naming_the_file(content):
  from cvjax import visualize
  with files({'metrics.jsonl': content}) as directory:
    try:
      records = visualize.read_metrics(directory)
    except UserError as e:
      assert_names(e, os.path.join(directory, 'metrics.jsonl'))
    else:
      assert records and all(type(r['step']) is int for r in records)  # noqa: E721


@FEWER
@given(metrics=mutated(METRICS_TEXT), config=st.one_of(st.none(), json_contents(VALID_CONFIG)))
def test_curves_of_fuzzed_metrics_and_config_draw_or_print_one_error_line(metrics, config, capsys):
  from cvjax import visualize
  capsys.readouterr()
  written = {'metrics.jsonl': metrics} | ({} if config is None else {'config.json': config})
  with files(written) as d:
    code = visualize.main([f'--workdir={d}', '--what=curves', f'--out={d}/curves.png'])
    assert_one_error_line(code, capsys)


def _invalid_config(content: bytes) -> bool:
  with files({'config.json': content}) as directory:
    try:
      TrainConfig.from_file(os.path.join(directory, 'config.json'))
    except UserError:
      return True
  return False


@WITH_FIXTURES
@given(config=json_contents(VALID_CONFIG),
       tool=st.sampled_from(['detect', 'segment', 'export', 'visualize']))
def test_tools_on_a_workdir_with_a_broken_config_print_one_error_line_naming_it(config, tool,
                                                                                capsys):
  import importlib
  assume(_invalid_config(config))  # a valid config would go on to build the model
  main = importlib.import_module(f'cvjax.{tool}').main
  capsys.readouterr()
  with files({'config.json': config, 'image.png': IMAGES['PNG']}) as d:
    argv = {'detect': [f'--workdir={d}', f'--image={d}/image.png'],
            'segment': [f'--workdir={d}', f'--image={d}/image.png'],
            'export': [f'--workdir={d}', '--format=stablehlo', f'--out={d}/out'],
            'visualize': [f'--workdir={d}', '--what=filters', f'--out={d}/f.png']}[tool]
    line = assert_one_error_line(main(argv), capsys)
    assert line is not None and os.path.join(d, 'config.json') in line, line


EXPORT_INFO = {'format': 'stablehlo', 'files': ['model.jax_export'], 'step': 3,
               'input': {'shape': ['b', 28, 28, 1], 'dtype': 'float32'}}


@given(json_contents(EXPORT_INFO), st.binary(max_size=64))
def test_export_loader_raises_only_user_errors_naming_the_directory(info, model):
  from cvjax import export
  with files({'cvjax_export.json': info, 'model.jax_export': model}) as directory:
    with pytest.raises(UserError) as e:
      export.load(directory)
    assert_names(e.value, directory)


# ------------------------------------------------------------------------ sweep records

SWEEP = {'experiment': 'experiments.lenet', 'base_flagfiles': [], 'base_lines': ['--seed=1'],
         'passthrough': ['--num_epochs=1'], 'swept': ['learning_rate'], 'log_scale': [],
         'trials': [{'name': 'lr=0.1', 'overrides': {'learning_rate': '0.1'}},
                    {'name': 'lr=0.01', 'overrides': {'learning_rate': '0.01'}}]}
RESULTS = {'test_accuracy': 0.9, 'test_loss': 0.3, 'step': 100, 'train_seconds': 12.5}


@given(sweep=json_contents(SWEEP), results=json_contents(RESULTS),
       flags=mutated(b'# trial\n--seed=1\n--learning_rate=0.1\n--workdir=x\n'),
       exit_code=mutated(b'2\n'))
def test_sweep_readers_raise_only_user_errors_naming_the_file(sweep, results, flags, exit_code):
  from launch import summarize
  written = {'sweep.json': sweep, 'lr=0.1/results.json': results,
             'lr=0.01/trial.flags': flags, 'lr=0.01/exit_code': exit_code}
  with files(written) as root:
    try:
      table = summarize.collect(root)
      summarize.markdown(table)
    except UserError as e:
      assert_names(e, root)


@given(mutated(b'# base\n--batch_size=64\n\n--learning_rate=0.1\n// note\n'))
def test_flag_lines_reader_returns_lines_or_a_user_error_naming_the_file(content):
  from launch import trials
  with files({'base.flags': content}) as directory:
    path = os.path.join(directory, 'base.flags')
    try:
      lines = trials.read_flag_lines(path)
    except UserError as e:
      assert_names(e, path)
    else:
      assert all(line and line == line.strip() for line in lines)


# ------------------------------------------------------------------------ command lines


def _toy_flags():
  from absl import flags
  values = flags.FlagValues()
  flags.DEFINE_string('name', None, 'A string.', flag_values=values)
  flags.DEFINE_integer('count', 1, 'An integer.', flag_values=values)
  flags.DEFINE_float('rate', 0.5, 'A float.', flag_values=values)
  flags.DEFINE_bool('verbose', False, 'A bool.', flag_values=values)
  flags.DEFINE_enum('mode', 'a', ['a', 'b'], 'An enum.', flag_values=values)
  return values


TOY_FLAGS = _toy_flags()


@WITH_FIXTURES
@given(content=mutated(b'# flags\n--name=x\n--count=3\n--rate=0.25\n--verbose\n--mode=b\n'))
def test_a_fuzzed_flagfile_parses_or_prints_one_error_line(content, capsys):
  capsys.readouterr()
  with files({'f.flags': content}) as d:
    assert_one_error_line(cli.main(lambda f: 0, TOY_FLAGS, [f'--flagfile={d}/f.flags']), capsys)


TOOLS = ('evaluate', 'track', 'detect', 'segment', 'visualize', 'export', 'convert', 'anchors',
         'summary', 'ensemble')
FLAG_VALUES = st.one_of(
    st.sampled_from(['', '0', '-1', '1', 'nan', 'inf', '-inf', '1e309', 'true', 'false', 'x',
                     '.', '/', '/nonexistent/x', 'junk.bin', 'empty.json', 'image.png',
                     'dir', 'out.png', 'out.txt']),
    st.text(max_size=12))


@WITH_FIXTURES
@given(tool=st.sampled_from(TOOLS), data=st.data())
def test_every_tool_given_fuzzed_flag_values_prints_one_error_line(tool, data, capsys,
                                                                    tmp_path, monkeypatch):
  """Random values for a random subset of the tool's own flags, in a directory holding a
  junk file, an empty JSON file, an image and a directory (no workdir a tool can use)."""
  import importlib
  module = importlib.import_module(f'cvjax.{tool}')
  (tmp_path / 'junk.bin').write_bytes(b'\0\xff junk')
  (tmp_path / 'empty.json').write_bytes(b'')
  (tmp_path / 'image.png').write_bytes(IMAGES['PNG'])
  (tmp_path / 'dir').mkdir(exist_ok=True)
  monkeypatch.chdir(tmp_path)
  names = data.draw(st.lists(st.sampled_from(sorted(module.FLAGS)), max_size=5), 'flags')
  argv = [f'--{name}={data.draw(FLAG_VALUES, name)}' for name in names]
  capsys.readouterr()
  assert_one_error_line(module.main(argv), capsys)
