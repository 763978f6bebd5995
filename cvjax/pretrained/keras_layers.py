"""keras.applications InceptionV3, Xception, DenseNet121/169/201, MobileNet, MobileNetV2 and
EfficientNetB0-B7 -> cvjax, layer by layer.

cvjax builds these families as Keras does and names each layer as Keras does,
with '/' where Keras writes '_' (`block_3/expand_BN` is Keras' `block_3_expand_BN`).
So the mapping needs no table: trace the cvjax model (shapes only), list the
modules that hold variables in the order the forward pass first calls them, and
give each the Keras layer called by its path joined with '_'. A `SeparableConv`'s
`depthwise` and `pointwise` are one Keras `SeparableConv2D`. Layers Keras leaves
unnamed (InceptionV3's every `conv2d_bn`, Xception's four shortcut convs) are
`conv2d`, `conv2d_1`, ... and `batch_normalization`, `batch_normalization_1`, ...
in creation order, which is cvjax's call order: they are matched by that number,
whatever it starts at (Keras keeps counting across the models of one process).

Within a layer Keras' weights come as: Conv2D / Dense [kernel, bias?];
DepthwiseConv2D [kernel]; SeparableConv2D [depthwise_kernel, pointwise_kernel,
bias?]; BatchNormalization [gamma?, beta?, moving_mean, moving_variance] (InceptionV3's
have no gamma). Depthwise kernels are [k, k, C, 1] in Keras and [k, k, 1, C] in
cvjax (a grouped `nn.Conv`): the same numbers in the same order, so a reshape.

Inputs. Keras' `preprocess_input` is mode 'tf' ([-1, 1]) for InceptionV3, Xception
and the MobileNets and 'torch' (ImageNet mean/std) for DenseNet; both are cvjax
`preprocessing` conventions. EfficientNet normalises inside the model: Rescaling(1/255),
then a Normalization layer whose mean and variance are stored in the weights file,
then (only when built with weights='imagenet') Rescaling(1/√[0.229, 0.224, 0.225]).
Keras' ImageNet files store the standard deviations as the "variance", so that model
computes (x/255 − mean)/std: 'torch'. cvjax's EfficientNet has no such layer, so
`preprocessing()` reads the Normalization tensors and accepts those that mean 'torch'
(the ImageNet mean with variance = std, as Keras' files, or = std², the true
variance); any other values (e.g. a weights=None model's untouched mean 0, variance
1) raise UserError, since no cvjax convention reproduces them exactly (folding them
into the stem conv would be wrong along the zero-padded border).
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Sequence

import numpy as np

from cvjax import models
from cvjax.errors import UserError
from cvjax.models import blocks, mobilenet
from cvjax.pretrained import common
from cvjax.train import freeze

# keras.applications name (lower case, no '_') -> cvjax model.
MODELS = {
    'inceptionv3': 'inception_v3',
    'xception': 'xception',
    'densenet121': 'densenet121',
    'densenet169': 'densenet169',
    'densenet201': 'densenet201',
    'mobilenet': 'mobilenet_v1',
    'mobilenetv1': 'mobilenet_v1',
    'mobilenetv2': 'mobilenet_v2',
    **{f'efficientnetb{i}': f'efficientnet_b{i}' for i in range(8)},
}
# Keras' preprocess_input modes, as cvjax `preprocessing`.
PREPROCESSING = {'inception_v3': 'tf', 'xception': 'tf', 'mobilenet_v1': 'tf',
                 'mobilenet_v2': 'tf', 'densenet121': 'torch', 'densenet169': 'torch',
                 'densenet201': 'torch', **{f'efficientnet_b{i}': 'torch' for i in range(8)}}
# The classifier layer (its kernel's last axis is the class count).
_HEAD = {'mobilenet_v1': 'conv_preds'}
# Keras' published alphas, and the layer whose output width tells them apart.
_ALPHAS = {'mobilenet_v1': ((0.25, 0.5, 0.75, 1.0), 'conv_pw_13'),
           'mobilenet_v2': ((0.35, 0.5, 0.75, 1.0, 1.3, 1.4), 'block_16_project')}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# cvjax slot -> Keras weight name, for messages.
_BN_NAMES = {'params/scale': 'gamma', 'params/bias': 'beta', 'batch_stats/mean': 'moving_mean',
             'batch_stats/var': 'moving_variance'}


@dataclasses.dataclass(frozen=True)
class Layer:
  """One Keras layer's place in cvjax.

  name: the Keras name if Keras names it ('block_3_expand_BN'); kind: the prefix
  Keras gives it when unnamed ('conv2d', 'batch_normalization', ...); slots:
  [(cvjax path, Keras weight name, is a depthwise kernel)] in Keras' weight order.
  """
  name: str
  kind: str
  slots: tuple[tuple[str, str, bool], ...]


def model_layers(model, image_size: int) -> tuple[list[Layer], dict[str, tuple[int, ...]]]:
  """The cvjax model's variable-holding layers as Keras layers, in call order, and its
  variables' shapes by path (as `common.model_shapes`), from one shape-only trace."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  calls = {}  # module path -> (Keras layer path, module type), in first-call order

  def record(next_fun, args, kwargs, context):
    m = context.module
    if context.method_name == '__call__' and m.path not in calls:
      separable = isinstance(m.parent, blocks.SeparableConv)
      calls[m.path] = (m.path[:-1] if separable else m.path,
                       blocks.SeparableConv if separable else type(m))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    shapes = freeze.variable_shapes(model, (1, image_size, image_size, 3))
  owned, expected = {}, {}  # module path -> ['params/kernel', ...]; path -> shape
  for collection in ('params', 'batch_stats'):
    for path, leaf in freeze.flat_paths(shapes.get(collection, {})).items():
      *module, name = path.split('/')
      owned.setdefault(tuple(module), []).append(f'{collection}/{name}')
      expected[f'{collection}/{path}'] = tuple(leaf.shape)

  layers = {}  # Keras layer path -> [kind, slots]
  for path, (keras_path, module_type) in calls.items():
    if path not in owned:
      continue
    full = functools.partial(_full_path, module='/'.join(path))
    if 'batch_stats/mean' in owned[path]:
      slots = [(full(s), _BN_NAMES[s], False) for s in _BN_NAMES if s in owned[path]]
      kind = 'batch_normalization'
    elif module_type is blocks.SeparableConv:
      sub = path[-1]
      names = {'depthwise': ['depthwise_kernel'], 'pointwise': ['pointwise_kernel', 'bias']}[sub]
      slots = [(full(s), n, sub == 'depthwise') for s, n in
               zip(('params/kernel', 'params/bias'), names) if s in owned[path]]
      kind = 'separable_conv2d'
    else:
      depthwise = issubclass(module_type, blocks.DepthwiseConv)
      slots = [(full(s), s.split('/')[1], depthwise) for s in ('params/kernel', 'params/bias')
               if s in owned[path]]
      kind = ('depthwise_conv2d' if depthwise else 'dense' if issubclass(module_type, nn.Dense)
              else 'conv2d')
    if len(slots) != len(owned[path]):
      raise ValueError(f'cvjax layer {"/".join(path)} holds {owned[path]}: not a Keras layer')
    entry = layers.setdefault(keras_path, [kind, []])
    entry[1] += slots
  return ([Layer('_'.join(p), kind, tuple(slots)) for p, (kind, slots) in layers.items()],
          expected)


def _full_path(slot: str, module: str) -> str:
  """('params/kernel', 'block_1/expand') -> 'params/block_1/expand/kernel'."""
  collection, leaf = slot.split('/')
  return f'{collection}/{module}/{leaf}'


def _number(name: str, kind: str) -> int:
  suffix = name[len(kind) + 1:]
  return int(suffix) if suffix else 0


def _unnamed(names, kind: str) -> list[str]:
  """Keras' auto names of `kind` among `names`, in creation order (by their number)."""
  found = [n for n in names if re.fullmatch(re.escape(kind) + r'(_\d+)?', n)]
  return sorted(found, key=lambda n: _number(n, kind))


def _to_cvjax_layout(w: np.ndarray, depthwise: bool) -> np.ndarray:
  if depthwise and w.ndim == 4 and w.shape[-1] == 1:  # [k, k, C, 1] -> [k, k, 1, C]
    return w.reshape(w.shape[0], w.shape[1], 1, w.shape[2])
  return w


def model_kwargs(layers: dict[str, Sequence[np.ndarray]], model: str, *,
                 what: str = 'Keras weights') -> dict:
  """The cvjax options the file implies: MobileNets' `alpha`, read off a layer's width.

  Raises UserError when no published alpha gives that width.
  """
  if model not in _ALPHAS:
    return {}
  alphas, probe = _ALPHAS[model]
  weights = layers.get(probe)
  if not weights:
    raise UserError(f'{what}: missing tensor {probe}/kernel: the MobileNet width (alpha) is read '
                    'off it; is the file for this model?')
  base = {'mobilenet_v1': 1024, 'mobilenet_v2': 320}[model]
  width = lambda a: (int(base * a) if model == 'mobilenet_v1'
                     else mobilenet.make_divisible(int(base * a)))
  found = [a for a in alphas if width(a) == weights[0].shape[-1]]
  if not found:
    raise UserError(f'{what}: tensor {probe}/kernel has {weights[0].shape[-1]} filters, which no '
                    f'Keras alpha gives ({", ".join(f"{a}: {width(a)}" for a in alphas)})')
  return {} if found[0] == 1.0 else {'alpha': found[0]}


def num_classes(layers: dict[str, Sequence[np.ndarray]], model: str) -> int:
  """Class count read off the head's kernel (default 1000 when the head is absent)."""
  head = layers.get(_HEAD.get(model, 'predictions'))
  return int(head[0].shape[-1]) if head else 1000


def preprocessing(layers: dict[str, Sequence[np.ndarray]], model: str, *,
                  what: str = 'Keras weights') -> str:
  """The cvjax `preprocessing` that gives these weights the inputs Keras gives them.

  EfficientNet: from its Normalization layer's (mean, variance); see the module
  docstring. Raises UserError for a missing or unconvertible Normalization.
  """
  if not model.startswith('efficientnet'):
    return PREPROCESSING[model]
  found = _unnamed(layers, 'normalization')
  if not found:
    raise UserError(f'{what}: missing tensor normalization/mean: Keras EfficientNet keeps its input '
                    'normalisation in a Normalization layer; is the file for this model?')
  if len(found) > 1:
    raise UserError(f'{what}: unexpected tensor {found[1]}/mean: Keras EfficientNet has one '
                    f'Normalization layer, the file has {len(found)} ({", ".join(found)})')
  mean, variance = (np.asarray(w, np.float64).reshape(-1) for w in layers[found[0]][:2])
  close = lambda a, b: a.shape == (3,) and np.allclose(a, b, rtol=1e-3, atol=1e-6)
  std = np.asarray(IMAGENET_STD)
  if close(mean, IMAGENET_MEAN) and (close(variance, std) or close(variance, std ** 2)):
    return 'torch'
  raise UserError(
      f'{what}: tensors {found[0]}/mean, {found[0]}/variance = {np.round(mean, 4).tolist()}, '
      f'{np.round(variance, 4).tolist()}: cvjax normalises EfficientNet inputs in the data '
      f'pipeline and converts only Keras\' ImageNet normalisation, mean {IMAGENET_MEAN} with '
      f'variance {IMAGENET_STD} (as Keras\' files store it) or its square, as preprocessing '
      '\'torch\'; a weights=None model\'s mean 0, variance 1 (bare [0, 1] pixels) has no cvjax '
      'equivalent')


def to_cvjax(layers: dict[str, Sequence[np.ndarray]], model: str, image_size: int,
             kwargs: dict | None = None, *, what: str = 'Keras weights'
             ) -> tuple[common.Arrays, dict[str, str]]:
  """Keras layer weights -> ({cvjax path: array in cvjax layout}, {cvjax path: Keras tensor}).

  Args:
    layers: Keras layer name -> its weights in Keras' order (`keras.read_h5`).
    model: the cvjax model ('inception_v3', 'mobilenet_v2', ...).
    image_size: the input size the converted model is used at.
    kwargs: cvjax model options (default: `model_kwargs(layers, model)`).
    what: the source, for messages.

  EfficientNet's input Normalization is left to `preprocessing`. Raises UserError
  naming the first missing, unexpected or mis-shaped tensor.
  """
  kwargs = model_kwargs(layers, model) if kwargs is None else kwargs
  net = models.get_model(model, num_classes=num_classes(layers, model), **kwargs)
  wanted, expected = model_layers(net, image_size)
  left = {n: w for n, w in layers.items() if len(w)}
  if model.startswith('efficientnet'):
    for n in _unnamed(left, 'normalization'):
      del left[n]
  named = {layer.name for layer in wanted if layer.name in left}
  pools = {kind: [n for n in _unnamed(left, kind) if n not in named]
           for kind in {layer.kind for layer in wanted}}
  has_unnamed = {kind for kind, pool in pools.items() if pool}
  arrays, names = {}, {}
  for layer in wanted:
    if layer.name in named:
      source = layer.name
    elif pools[layer.kind]:
      source = pools[layer.kind].pop(0)
    else:  # nothing left to take: check_against reports the first slot as missing
      for path, weight, _ in layer.slots:
        names[path] = (f'{layer.name}/{weight} (or an unnamed {layer.kind}_N/{weight})'
                       if layer.kind in has_unnamed else f'{layer.name}/{weight}')
      continue
    weights = left.pop(source)
    for path, weight, _ in layer.slots:
      names[path] = f'{source}/{weight}'
    if len(weights) != len(layer.slots):
      listed = ', '.join(f'{source}/{w}' for _, w, _ in layer.slots)
      raise UserError(f'{what}: Keras layer {source!r} holds {len(weights)} tensors where cvjax '
                      f'{model} expects {len(layer.slots)} ({listed}); is the file for '
                      'this model?')
    for w, (path, _, depthwise) in zip(weights, layer.slots):
      arrays[path] = _to_cvjax_layout(np.asarray(w), depthwise)
  common.check_against(arrays, expected, what=what, source_name=lambda p: names.get(p, p))
  if left:
    extra, weights = next(iter(left.items()))
    first = {4: 'gamma', 3: 'beta'}.get(len(weights), 'kernel')
    raise UserError(f'{what}: unexpected tensor {extra}/{first} in the Keras weights: layer '
                    f'{extra!r} has no place in cvjax {model}; is the file for this model?')
  return arrays, names
