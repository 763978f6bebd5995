"""The wording of the errors a user sees: a value not among the choices, an image file a tool cannot use."""
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
