"""One config source: every TrainConfig field is a flag of the same name, default and help."""
import dataclasses

import pytest
from absl import flags

from cvjax.errors import UserError
from cvjax.train import TrainConfig
from experiments import common


# A FlagValues of its own: parsing the global one would also set absl's logging verbosity
# for every later test in this process.
FLAG_VALUES = flags.FlagValues()
common.define_config_flags('tests.test_config_flags', FLAG_VALUES)


@pytest.fixture
def parse():
  def parse_args(*args):
    FLAG_VALUES.unparse_flags()
    FLAG_VALUES(['prog', *args])
    return common.config_from_flags(FLAG_VALUES)
  yield parse_args
  FLAG_VALUES.unparse_flags()


def test_every_config_field_is_a_flag_with_its_help_and_the_defaults_agree(parse):
  for field in dataclasses.fields(TrainConfig):
    assert field.name in FLAG_VALUES, field.name
    assert field.metadata['help'] in FLAG_VALUES[field.name].help  # enums add their choices
  assert parse() == TrainConfig()


def test_flags_turn_into_config_values_of_the_fields_types(parse):
  config = parse('--model_kwargs=activation=tanh,width=2', '--decay_epochs=30,60',
                 '--preprocessing=', '--half_precision=bf16', '--image_size=64', '--remat',
                 '--num_epochs=2.5', '--optimizer=adam')
  assert config == TrainConfig(model_kwargs={'activation': 'tanh', 'width': 2},
                               decay_epochs=(30.0, 60.0), preprocessing=None,
                               half_precision='bf16', image_size=64, remat=True, num_epochs=2.5,
                               optimizer='adam')
  with pytest.raises(flags.IllegalFlagValueError):
    parse('--optimizer=rmsprop')
  with pytest.raises(UserError, match=r"--decay_epochs must be numbers, got \['30', 'x'\]"):
    parse('--decay_epochs=30,x')


# --- --model_kwargs: the keyword arguments of a Python call (parse_kwargs, via ast).

@pytest.mark.parametrize('text, expected', [
    ('activation=relu,pooling=max', {'activation': 'relu', 'pooling': 'max'}),
    ('zero_init_last_bn=true,aux_head=False,stem=None', {'zero_init_last_bn': True,
                                                        'aux_head': False, 'stem': None}),
    ('dropout_rate=0.1,width=2,bn_epsilon=1e-3,shift=-1', {'dropout_rate': 0.1, 'width': 2,
                                                           'bn_epsilon': 0.001, 'shift': -1}),
    ('anchors=(0.0790,0.0894, 0.1069,0.0965),stage_sizes=[1,2]',
     {'anchors': (0.079, 0.0894, 0.1069, 0.0965), 'stage_sizes': [1, 2]}),
    ("name='a,b',dtype=float16,init=he-normal", {'name': 'a,b', 'dtype': 'float16',
                                                 'init': 'he-normal'}),
    (' a=1 , b=2,', {'a': 1, 'b': 2}),
    ('', {}),
])
def test_model_kwargs_parse_literals_and_bare_words(parse, text, expected):
  config = parse(f'--model_kwargs={text}')
  assert config.model_kwargs == expected
  assert [type(v) for v in config.model_kwargs.values()] == [type(v) for v in expected.values()]


@pytest.mark.parametrize('text, item', [
    ('activation', 'activation'), ('activation=relu,pooling', 'pooling'),
    ('activation:relu', 'activation:relu'), ('=relu', '=relu'), ('a=1,,b=2', ''),
    ('anchors=(0.1,0.2', 'anchors=(0.1,0.2'), ('a=1, b=(1, 2), c', 'c'), ('**extra', '**extra'),
    ('a=', 'a='),
])
def test_a_model_kwargs_item_that_is_not_key_value_is_named(parse, text, item):
  with pytest.raises(UserError) as e:
    parse(f'--model_kwargs={text}')
  assert str(e.value) == f'model_kwargs item {item!r} is not key=value'


# --- Every field checked against its declared range (TrainConfig.validate).

def test_negative_num_epochs_is_refused(parse):
  with pytest.raises(UserError, match=r'^num_epochs must be positive, got -1.0$'):
    parse('--num_epochs=-1').validate()
  with pytest.raises(UserError, match=r'^num_epochs must be a finite number > 0, got inf$'):
    parse('--num_epochs=inf', '--num_train_steps=10').validate()


def test_log_every_steps_zero_is_refused(parse):
  with pytest.raises(UserError, match=r'^log_every_steps must be positive, got 0$'):
    parse('--log_every_steps=0').validate()


@pytest.mark.parametrize('flag', ['learning_rate', 'momentum', 'warmup_epochs', 'decay_factor',
                                  'weight_decay', 'label_smoothing', 'grad_clip_norm'])
@pytest.mark.parametrize('value', ['nan', 'inf', '-inf'])
def test_nan_and_infinite_numbers_are_refused_in_every_float_field(parse, flag, value):
  with pytest.raises(UserError, match=rf'^{flag} must be a finite number .*, got {value}$'):
    parse(f'--{flag}={value}').validate()
  with pytest.raises(UserError, match=rf'^decay_epochs must be finite numbers >= 0, got \(30.0, {value}\)$'):
    parse(f'--decay_epochs=30,{value}').validate()


@pytest.mark.parametrize('flag', ['eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
                                  'early_stopping_patience', 'num_devices', 'image_size',
                                  'eval_batch_size', 'num_train_steps', 'num_classes'])
@pytest.mark.parametrize('value', ['0', '-32'])
def test_intervals_and_sizes_must_be_positive_when_set(parse, flag, value):
  with pytest.raises(UserError, match=rf'^{flag} must be positive, got {value}$'):
    parse(f'--{flag}={value}').validate()


@pytest.mark.parametrize('changes, message', [
    (dict(momentum=1.0), 'momentum must be in [0, 1), got 1.0'),
    (dict(momentum=-0.1), 'momentum must be in [0, 1), got -0.1'),
    (dict(decay_factor=0.0), 'decay_factor must be in (0, 1], got 0.0'),
    (dict(decay_factor=2.0), 'decay_factor must be in (0, 1], got 2.0'),
    (dict(warmup_epochs=-1.0), 'warmup_epochs must be 0 or more, got -1.0'),
    (dict(decay_epochs=(30.0, -1.0)), 'decay_epochs must each be 0 or more, got (30.0, -1.0)'),
    (dict(weight_decay=-5e-4), 'weight_decay must be 0 or more, got -0.0005'),
    (dict(grad_clip_norm=0.0), 'grad_clip_norm must be positive, got 0.0'),
    (dict(seed=-1), 'seed must be in [0, 4294967295], got -1'),
    (dict(seed=2**32), 'seed must be in [0, 4294967295], got 4294967296'),
    (dict(seed=1.5), 'seed must be an integer in [0, 4294967295], got 1.5'),
    (dict(batch_size='64'), "batch_size must be an integer > 0, got '64'"),
    (dict(batch_size=True), 'batch_size must be an integer > 0, got True'),
    (dict(remat='yes'), "remat must be true or false, got 'yes'"),
    (dict(model_kwargs=[1]), 'model_kwargs must be a dict of model arguments {name: value}, got [1]'),
    (dict(optimizer=3), 'optimizer must be one of sgd, momentum, nesterov, adam, adamw, got 3'),
    (dict(num_epochs=None), 'set num_train_steps or a positive num_epochs'),
])
def test_every_setting_outside_its_range_names_the_range(changes, message):
  with pytest.raises(UserError) as e:
    TrainConfig(**changes).validate()
  assert str(e.value) == message


def test_the_declared_ranges_accept_their_edges():
  TrainConfig(momentum=0.0, decay_factor=1.0, warmup_epochs=0.0, weight_decay=0.0,
              decay_epochs=(0.0,), seed=2**32 - 1, label_smoothing=0.0, num_epochs=1e-3).validate()


@pytest.mark.parametrize('content, message', [
    ('', 'is empty; expected a JSON object of TrainConfig fields'),
    ('{\n  "batch_size": 64,\n  oops\n}', r'is not JSON \(Expecting property name enclosed in '
                                          r'double quotes at line 3, column 3\)'),
    ('[1, 2]', 'holds a JSON array; expected a JSON object of TrainConfig fields'),
    ('{"batch_size": "x"}', "batch_size must be an integer > 0, got 'x'"),
    ('{"batch_size": [64]}', r'batch_size must be an integer > 0, got \[64\]'),
    ('{"batch_size": 64, "colour": "red"}', r"has unknown fields \['colour'\]"),
    ('{"learning_rate": NaN}', 'learning_rate must be a finite number > 0, got nan'),
    ('{"decay_epochs": 30}', 'decay_epochs must be a list of numbers >= 0, got 30'),
    (b'\xff\xfe{}', r'is not UTF-8 text \(byte 0xff on line 1\)'),
])
def test_a_malformed_config_json_is_a_user_error_naming_the_file_and_the_key(tmp_path, content,
                                                                             message):
  path = tmp_path / 'config.json'
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content)
  with pytest.raises(UserError, match=f'^{path}[: ].*{message}'):
    TrainConfig.from_file(str(path))


def test_a_config_json_that_is_missing_or_a_directory_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match=f'^{tmp_path}/nope.json does not exist$'):
    TrainConfig.from_file(str(tmp_path / 'nope.json'))
  with pytest.raises(UserError, match=f'^{tmp_path} is a directory; give a file$'):
    TrainConfig.from_file(str(tmp_path))


@pytest.mark.slow
def test_nan_learning_rate_is_refused_with_one_line(tmp_path):
  """An experiment given --learning_rate=nan stops before training (it trained with a NaN
  loss before): exit 2, one `error:` line, and no workdir written."""
  import os
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get('PYTHONPATH', ''))
  done = subprocess.run([sys.executable, '-m', 'experiments.lenet', '--learning_rate=nan',
                         f'--workdir={tmp_path / "run"}', '--num_train_steps=5'],
                        cwd=repo, env=env, capture_output=True, text=True, timeout=300)
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2, done.stderr[-2000:]
  assert lines[-1] == 'error: learning_rate must be a finite number > 0, got nan', lines
  assert 'Traceback' not in done.stderr
  assert not (tmp_path / 'run').exists()
