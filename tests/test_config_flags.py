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
