"""Imported weights: Keras and torchvision models give cvjax the same probabilities, with
their own preprocessing carried in the checkpoint; bad files fail by name, writing nothing."""
import os
import re
import subprocess
import sys

os.environ.setdefault('KERAS_BACKEND', 'jax')

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import cvjax  # noqa: E402
from cvjax import pretrained  # noqa: E402
from cvjax.errors import UserError  # noqa: E402
from cvjax.pretrained import common  # noqa: E402
from cvjax.pretrained import keras as keras_weights  # noqa: E402
from cvjax.pretrained import keras_layers  # noqa: E402

pytestmark = pytest.mark.slow  # Weight import checked against Keras outputs on full-size models.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _photos(size: int, count: int = 3) -> np.ndarray:
  """uint8[count, size, size, 3]: skimage's astronaut, coffee and cat, resized."""
  from skimage import data, transform
  photos = [data.astronaut(), data.coffee(), data.chelsea()][:count]
  return np.stack([(transform.resize(p, (size, size), anti_aliasing=True) * 255).round()
                   .astype(np.uint8) for p in photos])


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _keras_model(name: str, size: int, images: np.ndarray, path: str):
  """A keras.applications model with random weights (`_keras_app`), its head scaled so that
  the probabilities are peaked (a 1e-4 check on near-uniform ones would be toothless),
  saved to `path`. Returns Keras' probabilities on `images` (caffe preprocessing)."""
  import keras
  build = {'vgg16': 'VGG16', 'resnet50': 'ResNet50'}[name]
  preprocess = {'vgg16': keras.applications.vgg16.preprocess_input,
                'resnet50': keras.applications.resnet50.preprocess_input}[name]
  model = _keras_app(build, size, classes=10)
  logits = _keras_logits(model, preprocess(images.astype(np.float32)))
  head = model.get_layer('predictions')
  scale = 4.0 / logits.std()
  head.set_weights([w * scale for w in head.get_weights()])  # logits × scale
  model.save_weights(path)
  return model, _softmax(logits.astype(np.float64) * scale)


@pytest.fixture(scope='module')
def keras_resnet50(tmp_path_factory):
  """Keras ResNet50 at 32×32 (its smallest input), 10 classes, random weights."""
  pytest.importorskip('keras')
  path = str(tmp_path_factory.mktemp('keras') / 'resnet50.weights.h5')
  images = _photos(32)
  model, probs = _keras_model('resnet50', 32, images, path)
  return {'model': model, 'path': path, 'images': images, 'probs': probs}


def test_keras_resnet50_probabilities_match_keras_with_caffe_preprocessing(keras_resnet50, tmp_path):
  out = pretrained.convert('keras', 'ResNet50', keras_resnet50['path'], str(tmp_path / 'r50'),
                           image_size=32)
  restored = cvjax.restore(out)
  assert restored.config.model == 'resnet50_keras' and restored.config.preprocessing == 'caffe'
  probs = restored.predict(keras_resnet50['images'])  # uint8 photos in, caffe mode inside
  assert keras_resnet50['probs'].max() > 0.5  # peaked, so the comparison has teeth
  assert np.abs(probs - keras_resnet50['probs']).max() <= 1e-4
  np.testing.assert_array_equal(probs.argmax(-1), keras_resnet50['probs'].argmax(-1))


def test_keras_legacy_h5_gives_the_same_tensors_as_weights_h5(keras_resnet50, tmp_path):
  legacy = str(tmp_path / 'resnet50.h5')
  keras_resnet50['model'].save(legacy)  # Keras' legacy HDF5 layout (layer_names attributes)
  _, from_legacy = keras_weights.load(legacy, 'resnet50', 32)
  _, from_v3 = keras_weights.load(keras_resnet50['path'], 'resnet50', 32)
  assert sorted(from_legacy) == sorted(from_v3) and len(from_v3) == 53 * 2 + 53 * 4 + 2
  for path, array in from_v3.items():
    np.testing.assert_array_equal(from_legacy[path], array, err_msg=path)


def _edit_h5(source: str, target: str, edit) -> str:
  import shutil
  import h5py
  shutil.copyfile(source, target)
  with h5py.File(target, 'r+') as f:
    groups = {f['layers'][k]['vars'].attrs.get('name'): k for k in f['layers']
              if 'vars' in f['layers'][k] and 'name' in f['layers'][k]['vars'].attrs}
    edit(f['layers'], groups)
  return target


def _drop_layer(layers, groups):
  del layers[groups['conv5_block3_3_bn']]


def _add_layer(layers, groups):
  del groups
  variables = layers.create_group('extra').create_group('vars')
  variables.attrs['name'] = 'extra_dense'
  variables['0'] = np.zeros((4, 4), np.float32)
  variables['1'] = np.zeros((4,), np.float32)


def _narrow_conv1(layers, groups):
  variables = layers[groups['conv1_conv']]['vars']
  del variables['0']
  variables['0'] = np.zeros((7, 7, 3, 32), np.float32)


@pytest.mark.parametrize('edit, message', [
    (_drop_layer, r'missing tensor conv5_block3_3_bn/beta \(cvjax params/layer4_2/bn3/bias, '
                  r'shape \(2048,\)\)'),
    (_add_layer, r"unexpected tensor extra_dense/kernel in the Keras weights: layer "
                 r"'extra_dense' has no place in cvjax resnet50_keras"),
    (_narrow_conv1, r'tensor conv1_conv/kernel has shape \(7, 7, 3, 32\), cvjax '
                    r'params/conv1/kernel needs \(7, 7, 3, 64\)'),
])
def test_keras_converter_names_the_first_bad_tensor_and_writes_nothing(
    keras_resnet50, tmp_path, edit, message):
  bad = _edit_h5(keras_resnet50['path'], str(tmp_path / 'bad.weights.h5'), edit)
  with pytest.raises(UserError, match=message):
    pretrained.convert('keras', 'resnet50', bad, str(tmp_path / 'out'), image_size=32)
  assert os.listdir(tmp_path) == ['bad.weights.h5']


def test_keras_vgg16_probabilities_match_keras_with_caffe_preprocessing(tmp_path):
  """At 224², as VGG's dense head needs; two photos keep it to one small forward."""
  pytest.importorskip('keras')
  images = _photos(224, count=2)
  _, reference = _keras_model('vgg16', 224, images, str(tmp_path / 'vgg16.weights.h5'))
  out = pretrained.convert('keras', 'vgg16', str(tmp_path / 'vgg16.weights.h5'),
                           str(tmp_path / 'vgg16'))
  probs = cvjax.restore(out).predict(images)
  assert reference.max() > 0.5
  assert np.abs(probs - reference).max() <= 1e-4


# ------------------------------------- InceptionV3, Xception, DenseNet, MobileNets, EfficientNet


def _keras_app(name: str, size: int, seed: int = 0, classes: int = 7, **kwargs):
  """keras.applications `name` (weights=None, `classes` logits) holding random weights:
  He-scaled kernels, BN γ, β, mean and variance all random (a mix-up of any two would
  show); EfficientNet's Normalization holds the ImageNet mean and true variance (std²).
  Built shape-only, then initialised with these values: seconds instead of a minute of
  Keras' random initialisers (compiled shape by shape)."""
  import keras
  with keras.StatelessScope(initialize_variables=False):
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classes=classes, classifier_activation=None,
        **kwargs)
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    for w in layer.weights:
      shape, leaf = tuple(w.shape), w.path.rsplit('/', 1)[-1]
      if type(layer).__name__ == 'Normalization':
        value = {'mean': keras_layers.IMAGENET_MEAN, 'count': 0,
                 'variance': np.square(keras_layers.IMAGENET_STD)}[leaf]
        value = np.broadcast_to(value, shape)
      elif leaf in ('moving_variance', 'gamma'):
        value = rng.uniform(0.5, 1.5, shape)
      elif leaf in ('moving_mean', 'beta', 'bias'):
        value = rng.normal(0, 0.1, shape)
      else:  # kernels; a depthwise [k, k, C, 1] has fan-in k²
        fan_in = np.prod(shape[:2]) if len(shape) == 4 and shape[-1] == 1 else np.prod(shape[:-1])
        value = rng.normal(0, np.sqrt(2 / fan_in), shape)
      value = np.asarray(value, w.dtype)
      w._initializer = lambda shape, dtype=None, value=value: value  # pylint: disable=protected-access
  with keras.StatelessScope():  # leaving it initialises the deferred variables (Keras 3)
    pass
  for layer in model.layers:
    if isinstance(layer, keras.layers.Normalization):
      layer.finalize_state()  # its mean/variance constants, from the new values
  return model


def _keras_logits(model, x: np.ndarray) -> np.ndarray:
  """Keras' inference logits, compiled (10× faster than an eager call)."""
  forward = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=False)[0])
  return np.asarray(forward([v.value for v in model.trainable_variables],
                            [v.value for v in model.non_trainable_variables], x))


def _cvjax_logits(out: str, images: np.ndarray) -> np.ndarray:
  """The restored workdir's logits on uint8 images, through its own eval preprocessing."""
  from cvjax import data
  restored = cvjax.restore(out)
  x = data.preprocess_for_eval(images, dataset=restored.config.dataset,
                               image_size=restored.config.image_size,
                               preprocessing=restored.config.preprocessing)
  apply = jax.jit(lambda v, x: restored.model.apply(v, x, train=False))
  return np.asarray(apply(restored.variables, x))


def _assert_logits_close(got, want):
  assert np.abs(want).max() > 0.1 and not np.allclose(want[0], want[1], rtol=1e-2)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_keras_mobilenet_v2_converts_through_the_cli_with_its_alpha_and_tf_inputs(tmp_path):
  """alpha 0.35 (read off the file), 64², depthwise [k,k,C,1] kernels, mode 'tf'."""
  pytest.importorskip('keras')
  import keras
  from cvjax import convert
  model = _keras_app('MobileNetV2', 64, alpha=0.35)
  model.save_weights(str(tmp_path / 'm.weights.h5'))
  images = _photos(64, count=2)
  want = _keras_logits(model, keras.applications.mobilenet_v2.preprocess_input(
      images.astype(np.float32)))
  assert convert.main(['--source=keras', '--model=MobileNetV2', '--image_size=64',
                       f'--weights={tmp_path / "m.weights.h5"}', f'--out={tmp_path / "m"}']) == 0
  config = cvjax.restore(str(tmp_path / 'm')).config
  assert (config.model, config.model_kwargs, config.num_classes, config.preprocessing) == (
      'mobilenet_v2', {'alpha': 0.35}, 7, 'tf')
  _assert_logits_close(_cvjax_logits(str(tmp_path / 'm'), images), want)


def test_keras_efficientnet_b0_legacy_h5_converts_with_its_normalization_as_torch(tmp_path):
  """Keras' EfficientNet takes 0-255 pixels and normalises inside (Rescaling, Normalization);
  cvjax reads the Normalization tensors and normalises in the pipeline ('torch')."""
  pytest.importorskip('keras')
  model = _keras_app('EfficientNetB0', 67)  # odd: Keras' asymmetric 'same' pads
  model.save(str(tmp_path / 'b0.h5'))  # legacy HDF5 layout
  images = _photos(67, count=2)
  want = _keras_logits(model, images.astype(np.float32))  # preprocess_input: pass-through
  out = pretrained.convert('keras', 'efficientnet_b0', str(tmp_path / 'b0.h5'),
                           str(tmp_path / 'b0'), image_size=67)
  assert cvjax.restore(out).config.preprocessing == 'torch'
  _assert_logits_close(_cvjax_logits(out, images), want)


def test_keras_unnamed_layers_map_by_creation_order_from_any_offset(tmp_path):
  """Xception's four shortcut convs are `conv2d[_N]` / `batch_normalization[_N]`, numbered
  from wherever the process's counter stood: the same weights convert alike."""
  pytest.importorskip('keras')
  import keras
  first = _keras_app('Xception', 71)
  for _ in range(3):  # move Keras' name counters on
    keras.layers.Conv2D(1, 1), keras.layers.BatchNormalization()
  second = _keras_app('Xception', 71)
  convs = lambda m: sorted((l for l in m.layers if re.fullmatch(r'conv2d(_\d+)?', l.name)),
                          key=lambda l: int(l.name[len('conv2d_'):] or 0))
  number = lambda l: int(l.name[len('conv2d_'):] or 0)
  assert len(convs(second)) == 4 and number(convs(second)[0]) >= number(convs(first)[-1]) + 4
  converted = []
  for i, model in enumerate((first, second)):
    model.save_weights(str(tmp_path / f'{i}.weights.h5'))
    converted.append(keras_weights.load(str(tmp_path / f'{i}.weights.h5'), 'Xception', 71)[1])
  assert sorted(converted[0]) == sorted(converted[1])
  for path, array in converted[0].items():
    np.testing.assert_array_equal(converted[1][path], array, err_msg=path)
  residual = convs(first)[1].get_weights()[0]  # block3's shortcut
  np.testing.assert_array_equal(converted[0]['params/block3_residual/kernel'], residual)


@pytest.fixture(scope='module')
def mobilenet_layers():
  """{Keras layer: weights} of a random MobileNetV2 (alpha 0.35), as read_h5 gives them."""
  pytest.importorskip('keras')
  model = _keras_app('MobileNetV2', 32, alpha=0.35)
  return {l.name: [np.asarray(w.value) for w in l.weights] for l in model.layers if l.weights}


def _edited(layers, name, weights=None):
  out = dict(layers)
  if weights is None:
    del out[name]
  else:
    out[name] = weights
  return out


@pytest.mark.parametrize('edit, message', [
    (lambda l: _edited(l, 'block_5_depthwise_BN'),
     r'missing tensor block_5_depthwise_BN/beta \(cvjax params/block_5/depthwise_BN/bias'),
    (lambda l: _edited(l, 'extra_conv', [np.zeros((1, 1, 8, 8), np.float32)]),
     r"unexpected tensor extra_conv/kernel in the Keras weights: layer 'extra_conv' has no "
     r'place in cvjax mobilenet_v2'),
    (lambda l: _edited(l, 'block_5_depthwise', [np.zeros((5, 5, 96, 1), np.float32)]),
     r'tensor block_5_depthwise/kernel has shape \(5, 5, 1, 96\), cvjax '
     r'params/block_5/depthwise/kernel needs \(3, 3, 1, 96\)'),
    (lambda l: _edited(l, 'Conv1', l['Conv1'] + [np.zeros(16, np.float32)]),
     r"Keras layer 'Conv1' holds 2 tensors where cvjax mobilenet_v2 expects 1 \(Conv1/kernel\)"),
    (lambda l: _edited(l, 'block_16_project', [np.zeros((1, 1, 192, 100), np.float32)]),
     r'tensor block_16_project/kernel has 100 filters, which no Keras alpha gives'),
])
def test_keras_layer_mapping_names_the_first_bad_tensor(mobilenet_layers, edit, message):
  with pytest.raises(UserError, match=message):
    keras_weights.load_layers(edit(mobilenet_layers), 'mobilenet_v2', 32)


def test_keras_efficientnet_normalization_other_than_imagenet_s_is_refused():
  std = np.asarray(keras_layers.IMAGENET_STD)
  layers = lambda mean, variance: {'normalization_3': [np.asarray(mean), np.asarray(variance),
                                                       np.asarray(0)]}
  for variance in (std, std ** 2):  # Keras' ImageNet files hold the std; the true variance
    assert keras_layers.preprocessing(layers(keras_layers.IMAGENET_MEAN, variance),
                                      'efficientnet_b3') == 'torch'
  with pytest.raises(UserError, match=r'normalization_3/mean, normalization_3/variance = '
                                      r'\[0.0, 0.0, 0.0\], \[1.0, 1.0, 1.0\]'):
    keras_layers.preprocessing(layers([0.0] * 3, [1.0] * 3), 'efficientnet_b0')
  with pytest.raises(UserError, match='missing tensor normalization/mean'):
    keras_layers.preprocessing({}, 'efficientnet_b0')
  assert keras_layers.preprocessing({}, 'densenet121') == 'torch'
  assert keras_layers.preprocessing({}, 'xception') == 'tf'


# ---------------------------------------------------------------- torchvision


def _torchvision_resnet18_state_dict(num_classes=10, seed=0) -> dict[str, np.ndarray]:
  """Random tensors under torchvision's resnet18 names and OIHW / (out, in) layouts
  (names written out here from torchvision's model, not from the converter)."""
  rng = np.random.default_rng(seed)
  state = {}

  def conv(name, o, i, k):
    state[f'{name}.weight'] = rng.normal(0, 0.1, (o, i, k, k)).astype(np.float32)

  def bn(name, c):
    state[f'{name}.weight'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    state[f'{name}.bias'] = rng.normal(0, 0.1, c).astype(np.float32)
    state[f'{name}.running_mean'] = rng.normal(0, 0.1, c).astype(np.float32)
    state[f'{name}.running_var'] = rng.uniform(0.5, 2, c).astype(np.float32)
    state[f'{name}.num_batches_tracked'] = np.array(7)

  conv('conv1', 64, 3, 7)
  bn('bn1', 64)
  channels = 64
  for i, width in enumerate((64, 128, 256, 512), start=1):
    for j in range(2):
      block = f'layer{i}.{j}'
      conv(f'{block}.conv1', width, channels, 3)
      bn(f'{block}.bn1', width)
      conv(f'{block}.conv2', width, width, 3)
      bn(f'{block}.bn2', width)
      if j == 0 and i > 1:
        conv(f'{block}.downsample.0', width, channels, 1)
        bn(f'{block}.downsample.1', width)
      channels = width
  state['fc.weight'] = rng.normal(0, 0.1, (num_classes, 512)).astype(np.float32)
  state['fc.bias'] = rng.normal(0, 0.1, num_classes).astype(np.float32)
  return state


def test_torchvision_npz_converts_without_torch_with_transposed_layouts(tmp_path):
  state = _torchvision_resnet18_state_dict()
  np.savez(tmp_path / 'resnet18.npz', **state)
  config, arrays = pretrained.load('torchvision', 'resnet18', str(tmp_path / 'resnet18.npz'), 64)
  assert config.num_classes == 10 and config.preprocessing == 'torch'
  np.testing.assert_array_equal(arrays['params/layer2_0/conv1/kernel'],
                                state['layer2.0.conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(arrays['params/fc/kernel'], state['fc.weight'].T)
  np.testing.assert_array_equal(arrays['batch_stats/layer3_0/downsample_bn/var'],
                                state['layer3.0.downsample.1.running_var'])
  np.testing.assert_array_equal(arrays['params/bn1/scale'], state['bn1.weight'])


def test_nchw_flatten_reorder_matches_torch_order():
  """A dense layer after flatten: torch's C·H·W columns become cvjax's H·W·C rows."""
  c, h, w, out = 3, 2, 4, 5
  rng = np.random.default_rng(0)
  weight = rng.normal(size=(out, c * h * w))
  features = rng.normal(size=(c, h, w))
  kernel = common.dense_kernel_from_nchw_flatten(weight, c, h, w)
  np.testing.assert_allclose(features.transpose(1, 2, 0).reshape(-1) @ kernel,
                             weight @ features.reshape(-1))


def _without(state, key):
  return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize('change, message', [
    (lambda s: _without(s, 'layer3.1.bn2.running_var'),
     r'missing tensor layer3.1.bn2.running_var \(cvjax batch_stats/layer3_1/bn2/var\)'),
    (lambda s: {**s, 'layer5.0.conv1.weight': np.zeros((1, 1, 1, 1), np.float32)},
     r'unexpected tensor layer5.0.conv1.weight'),
    (lambda s: {**s, 'fc.weight': np.zeros((10, 256), np.float32)},
     r'tensor fc.weight has shape \(10, 256\), cvjax params/fc/kernel needs \(10, 512\) in '
     r'torch layout'),
])
def test_torchvision_converter_names_the_first_bad_tensor_and_writes_nothing(
    tmp_path, change, message):
  np.savez(tmp_path / 'bad.npz', **change(_torchvision_resnet18_state_dict()))
  with pytest.raises(UserError, match=message):
    pretrained.convert('torchvision', 'resnet18', str(tmp_path / 'bad.npz'), str(tmp_path / 'out'))
  assert os.listdir(tmp_path) == ['bad.npz']


def test_a_failure_while_writing_leaves_no_directory(tmp_path, monkeypatch):
  np.savez(tmp_path / 'resnet18.npz', **_torchvision_resnet18_state_dict())
  from cvjax.train import checkpoint

  def broken_save(*args, **kwargs):
    raise OSError('disk full')
  monkeypatch.setattr(checkpoint.Checkpoints, 'save', broken_save)
  with pytest.raises(OSError, match='disk full'):
    pretrained.convert('torchvision', 'resnet18', str(tmp_path / 'resnet18.npz'),
                       str(tmp_path / 'out'), image_size=32)
  assert os.listdir(tmp_path) == ['resnet18.npz']


# Runs in its own process: torch (its triton import) can crash a process that already
# loaded TensorFlow and JAX, and cvjax must not depend on torch anyway.
_TORCH_REFERENCE = """
import sys, numpy as np, torch, torchvision
name, directory = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
with torch.no_grad():
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial BN statistics
      module.running_mean.uniform_(-0.5, 0.5)
      module.running_var.uniform_(0.5, 2.0)
      module.weight.uniform_(0.5, 1.5)
      module.bias.uniform_(-0.2, 0.2)
  images = np.load(f'{directory}/images.npy')
  x = (images / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  x = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32)
  head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
  scale = 4.0 / float(model(x).std())  # peaked probabilities
  head.weight.mul_(scale)
  head.bias.mul_(scale)
  torch.save(model.state_dict(), f'{directory}/{name}.pth')
  np.save(f'{directory}/reference.npy', torch.softmax(model(x), -1).numpy())
"""


@pytest.mark.parametrize('name, size', [
    ('resnet18', 64), ('alexnet', 64),  # BN and downsample names; the C·H·W -> H·W·C reorder
    pytest.param('vgg11_bn', 32, marks=pytest.mark.slow),  # 133M params: ~1 min on 2 cores
])
def test_torchvision_probabilities_match_torch(name, size, tmp_path):
  """torch's own model (weights=None, non-trivial BN statistics) vs the converted .pth."""
  import importlib.util
  if not (importlib.util.find_spec('torch') and importlib.util.find_spec('torchvision')):
    pytest.skip('torch is optional and not installed (pip install torch torchvision)')
  images = _photos(size, count=2)
  np.save(tmp_path / 'images.npy', images)
  subprocess.run([sys.executable, '-c', _TORCH_REFERENCE, name, str(tmp_path)], check=True,
                 timeout=600)
  reference = np.load(tmp_path / 'reference.npy')
  out = pretrained.convert('torchvision', name, str(tmp_path / f'{name}.pth'),
                           str(tmp_path / name), image_size=size)
  probs = cvjax.restore(out).predict(images)
  assert reference.max() > 0.5
  assert np.abs(probs - reference).max() <= 1e-4


# ------------------------------------------------------------------------ CLI


@pytest.mark.parametrize('args, message', [
    (['--source=caffe', '--model=vgg16', '--weights=BAD', '--out=o'],
     "error: unknown source 'caffe'; valid choices: darknet, keras, torchvision"),
    (['--source=keras', '--model=vgg16', '--weights=x.h5'],
     'error: --out is required'),
    (['--source=keras', '--model=vgg16', '--weights=/nonexistent.h5', '--out=o'],
     'error: --weights=/nonexistent.h5 does not exist'),
    (['--source=torchvision', '--model=resnet18', '--weights=BAD', '--out=OUT'],
     'error: torchvision weights BAD for resnet18: tensor fc.weight has shape (10, 256)'),
])
def test_convert_cli_reports_bad_input_as_one_error_line(args, message, tmp_path, capsys,
                                                         monkeypatch):
  state = _torchvision_resnet18_state_dict()
  state['fc.weight'] = np.zeros((10, 256), np.float32)
  np.savez(tmp_path / 'bad.npz', **state)
  args = [a.replace('BAD', str(tmp_path / 'bad.npz')).replace('OUT', str(tmp_path / 'out'))
          for a in args]
  message = message.replace('BAD', str(tmp_path / 'bad.npz'))
  if args[0] == '--source=caffe':  # one case as a real process: no traceback reaches stderr
    env = {**os.environ, 'PYTHONPATH': REPO + os.pathsep + os.environ.get('PYTHONPATH', '')}
    proc = subprocess.run([sys.executable, '-m', 'cvjax.convert', *args], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=300)
    status, stderr = proc.returncode, proc.stderr
  else:  # the same main() that `python -m cvjax.convert` runs
    from cvjax import convert
    monkeypatch.chdir(tmp_path)
    status, stderr = convert.main(args), capsys.readouterr().err
  lines = [line for line in stderr.splitlines() if line.startswith('error:')]
  assert status == 2, stderr
  assert len(lines) == 1 and lines[0].startswith(message), stderr
  assert 'Traceback' not in stderr
  assert not os.path.exists(tmp_path / 'out') and not os.path.exists(tmp_path / 'o')
