"""keras.applications weights -> cvjax: VGG16, VGG19, ResNet50/101/152 (v1) here;
InceptionV3, Xception, DenseNet121/169/201, MobileNet, MobileNetV2, EfficientNetB0-B7
through `keras_layers` (cvjax names those layers as Keras does, so they map by name
and, where Keras leaves a layer unnamed, by creation order).

Reads both HDF5 layouts Keras writes:
  * Keras 3 `.weights.h5` (`model.save_weights`): `layers/<auto name>/vars/<i>`, the
    layer's own name in the `name` attribute of its `vars` group;
  * legacy `.h5` (the ImageNet files keras.applications downloads, Keras 2
    `save_weights`, `model.save('x.h5')`): the layer names in the `layer_names`
    attribute of the root (or of `model_weights`), each layer's datasets listed in
    order by its `weight_names` attribute.
Per layer the weights come in Keras' order: Conv2D / Dense [kernel, bias],
BatchNormalization [gamma, beta, moving_mean, moving_variance]. Keras' kernels are
already HWIO / (in, out) and its Flatten is NHWC, as in cvjax: nothing is transposed.

    keras name                          cvjax path
    block{s}_conv{i}                    block{s}_conv{i}          (VGG)
    fc1, fc2, predictions               fc1, fc2, fc3             (VGG)
    conv1_conv, conv1_bn                conv1, bn1                (ResNet v1: resnet*_keras)
    conv{s}_block{b}_{k}_conv / _bn     layer{s-1}_{b-1}/conv{k} / bn{k}
    conv{s}_block{b}_0_conv / _bn       layer{s-1}_{b-1}/downsample_conv / downsample_bn
    predictions                         fc                        (ResNet)

The inputs VGG and ResNet weights expect are Keras' 'caffe' mode (`preprocess_input`):
BGR, 0-255, minus the ImageNet BGR means; the converted config says preprocessing='caffe'
(the other families: `keras_layers.PREPROCESSING`).
"""
from __future__ import annotations

import re

import numpy as np

from cvjax import models
from cvjax.errors import UserError, unknown_choice
from cvjax.pretrained import common, keras_layers

# keras.applications name (lower case, '_' dropped: 'MobileNetV2', 'mobilenet_v2') -> cvjax model.
MODELS = {
    'vgg16': 'vgg16',
    'vgg19': 'vgg19',
    'resnet50': 'resnet50_keras',
    'resnet101': 'resnet101_keras',
    'resnet152': 'resnet152_keras',
    **keras_layers.MODELS,
}
PREPROCESSING = 'caffe'

_DENSE_OR_CONV = ('kernel', 'bias')
_BN = ('gamma', 'beta', 'moving_mean', 'moving_variance')
# Keras BN weight -> (cvjax collection, cvjax name).
_BN_TO_CVJAX = {'gamma': ('params', 'scale'), 'beta': ('params', 'bias'),
                'moving_mean': ('batch_stats', 'mean'), 'moving_variance': ('batch_stats', 'var')}


def read_h5(path: str) -> dict[str, list[np.ndarray]]:
  """Keras layer name -> its weight arrays in Keras' order, from either HDF5 layout."""
  import h5py  # pylint: disable=g-import-not-at-top
  try:
    f = h5py.File(path, 'r')
  except OSError as e:
    raise UserError(f'cannot read Keras weights {path}: {e}') from None
  with f:
    root = f['model_weights'] if 'model_weights' in f else f
    if 'layer_names' in root.attrs:  # legacy layout
      out = {}
      for name in root.attrs['layer_names']:
        name = name.decode() if isinstance(name, bytes) else str(name)
        group = root[name]
        weight_names = [w.decode() if isinstance(w, bytes) else str(w)
                        for w in group.attrs.get('weight_names', [])]
        if weight_names:
          out[name] = [np.asarray(group[w]) for w in weight_names]
      return out
    if 'layers' in root:  # Keras 3 .weights.h5
      out = {}
      _collect_keras3(root['layers'], out, path)
      return out
  raise UserError(f'{path} is neither a Keras 3 .weights.h5 file (no "layers" group) nor a '
                  'legacy Keras .h5 file (no "layer_names" attribute)')


def _collect_keras3(layers, out: dict, path: str) -> None:
  for key in layers:
    group = layers[key]
    variables = group.get('vars')
    if variables is not None and len(variables):
      name = variables.attrs.get('name')
      if name is None:
        raise UserError(f'{path}: layer group {key!r} records no layer name; re-save the '
                        'weights with a current Keras 3 (`model.save_weights(...)`)')
      name = name.decode() if isinstance(name, bytes) else str(name)
      out[name] = [np.asarray(variables[str(i)]) for i in range(len(variables))]
    if 'layers' in group:  # nested models (e.g. a functional base inside a Sequential)
      _collect_keras3(group['layers'], out, path)


def _vgg_path(name: str) -> str | None:
  if re.fullmatch(r'block\d+_conv\d+|fc1|fc2', name):
    return name
  return 'fc3' if name == 'predictions' else None


def _resnet_path(name: str) -> str | None:
  if name in ('conv1_conv', 'conv1_bn'):
    return 'conv1' if name.endswith('conv') else 'bn1'
  if name == 'predictions':
    return 'fc'
  m = re.fullmatch(r'conv(\d+)_block(\d+)_(\d+)_(conv|bn)', name)
  if not m:
    return None
  stage, block, k, kind = int(m.group(1)) - 1, int(m.group(2)) - 1, int(m.group(3)), m.group(4)
  layer = f'{kind}{k}' if k else f'downsample_{kind}'
  return f'layer{stage}_{block}/{layer}'


def cvjax_model(name: str) -> str:
  """The cvjax model for a keras.applications name ('ResNet50', 'MobileNetV2', 'mobilenet_v2')."""
  key = name.lower().replace('_', '')
  if key not in MODELS:
    raise unknown_choice('Keras model', name, MODELS)
  return MODELS[key]


def to_cvjax(layers: dict[str, list[np.ndarray]], model: str) -> tuple[common.Arrays, dict]:
  """Keras layer weights -> ({cvjax path: array}, {cvjax path: keras name}).

  Raises UserError for a layer that has no place in the cvjax model.
  """
  path_of = _vgg_path if model.startswith('vgg') else _resnet_path
  arrays, names = {}, {}
  for layer, weights in layers.items():
    base = path_of(layer)
    if base is None:
      raise UserError(f'unexpected tensor {layer}/{_BN[0] if len(weights) == 4 else "kernel"} '
                      f'in the Keras weights: layer {layer!r} has no place in cvjax {model}')
    if len(weights) == 2:
      for w, kind in zip(weights, _DENSE_OR_CONV):
        arrays[f'params/{base}/{kind}'] = w
        names[f'params/{base}/{kind}'] = f'{layer}/{kind}'
    elif len(weights) == 4:
      for w, kind in zip(weights, _BN):
        collection, field = _BN_TO_CVJAX[kind]
        arrays[f'{collection}/{base}/{field}'] = w
        names[f'{collection}/{base}/{field}'] = f'{layer}/{kind}'
    else:
      raise UserError(f'unexpected tensor {layer}/{len(weights)} weights: cvjax {model} expects '
                      '2 (kernel, bias) or 4 (BatchNorm)')
  return arrays, names


def _keras_name(path: str, model: str) -> str:
  """The Keras tensor name of a cvjax path (for messages about missing tensors)."""
  collection, rest = path.split('/', 1)
  base, field = rest.rsplit('/', 1)
  if model.startswith('vgg'):
    layer = 'predictions' if base == 'fc3' else base
  elif base in ('conv1', 'bn1', 'fc'):
    layer = {'conv1': 'conv1_conv', 'bn1': 'conv1_bn', 'fc': 'predictions'}[base]
  else:
    m = re.fullmatch(r'layer(\d+)_(\d+)/(?:(conv|bn)(\d)|downsample_(conv|bn))', base)
    if not m:
      return path
    kind = m.group(3) or m.group(5)
    layer = f'conv{int(m.group(1)) + 1}_block{int(m.group(2)) + 1}_{m.group(4) or 0}_{kind}'
  inverse = {('params', 'scale'): 'gamma', ('params', 'bias'): 'beta' if 'bn' in base else 'bias',
             ('batch_stats', 'mean'): 'moving_mean', ('batch_stats', 'var'): 'moving_variance'}
  return f'{layer}/{inverse.get((collection, field), field)}'


def load(weights: str, model: str, image_size: int | None = None):
  """Reads and checks Keras weights for keras.applications model `model`.

  Args:
    weights: path of a `.weights.h5` or legacy `.h5` file.
    model: a keras.applications name (`MODELS`): 'vgg16', 'ResNet50', 'InceptionV3',
      'xception', 'DenseNet121', 'MobileNet', 'MobileNetV2', 'EfficientNetB0', ...
    image_size: the input size the converted model is used at (default: the model's
      natural size, 224 / 299 / EfficientNet's per variant). VGG's dense head fixes it
      at 224 (fc1 takes 7·7·512 inputs).

  Returns:
    (TrainConfig, {cvjax path: float32 array}) ready for `cvjax.train.rundir.write_workdir`.

  Raises:
    UserError: unreadable file, or the first missing / unexpected / mis-shaped tensor.
  """
  return load_layers(read_h5(weights), model, image_size, what=f'Keras weights {weights} for {model}')


def load_layers(layers: dict[str, list[np.ndarray]], model: str, image_size: int | None = None,
                *, what: str = 'Keras weights'):
  """`load` of weights already read ({Keras layer name: its weights}, as `read_h5` gives)."""
  name = cvjax_model(model)
  size = image_size or models.model_input_shape(name)[0]
  if name in keras_layers.PREPROCESSING:  # by layer name and order; MobileNets' alpha read off
    kwargs = keras_layers.model_kwargs(layers, name, what=what)
    arrays, _ = keras_layers.to_cvjax(layers, name, size, kwargs, what=what)
    num_classes = keras_layers.num_classes(layers, name)
    preprocessing = keras_layers.preprocessing(layers, name, what=what)
  else:
    kwargs, preprocessing = {}, PREPROCESSING
    arrays, names = to_cvjax(layers, name)
    num_classes = common.num_classes_from_head(
        arrays, 'params/fc3/kernel' if name.startswith('vgg') else 'params/fc/kernel')
    expected = common.model_shapes(models.get_model(name, num_classes=num_classes), size)
    common.check_against(arrays, expected, what=what,
                         source_name=lambda p: names.get(p) or _keras_name(p, name))
  config = common.converted_config(model=name, num_classes=num_classes, image_size=size,
                                   preprocessing=preprocessing, model_kwargs=kwargs)
  return config, {k: np.asarray(v, np.float32) for k, v in arrays.items()}
