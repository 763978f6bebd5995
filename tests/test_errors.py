"""The wording of the errors a user sees for a value that is not among the choices."""
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
