"""torchvision state_dicts -> cvjax: resnet18/34/50/101/152, vgg11-19 (+bn), alexnet.

Accepts a `.pth`/`.pt` file (needs torch; `torch.load(weights_only=True)`, a bare
state_dict or one under 'state_dict' / 'model') or, without torch, an `.npz` of
state_dict name -> array, made where torch is installed with

    numpy.savez('resnet18.npz', **{k: v.numpy() for k, v in model.state_dict().items()})

(`export_npz` does exactly that). Layouts: conv weight OIHW -> kernel HWIO; Linear
weight (out, in) -> kernel (in, out); BatchNorm weight/bias -> params scale/bias,
running_mean/var -> batch_stats mean/var (num_batches_tracked is dropped); the first
Linear after a conv stack (VGG classifier.0, AlexNet classifier.1) has its inputs
re-ordered from torch's C·H·W flatten to cvjax's H·W·C.

    torchvision name                      cvjax path
    conv1, bn1, fc                        conv1, bn1, fc                       (ResNet)
    layer{i}.{j}.conv{k} / bn{k}          layer{i}_{j}/conv{k} / bn{k}
    layer{i}.{j}.downsample.0 / .1        layer{i}_{j}/downsample_conv / downsample_bn
    features.{n} (conv, bn)               block{s}_conv{i}, block{s}_bn{i}     (VGG)
    classifier.0 / .3 / .6                fc1 / fc2 / fc3
    features.0/3/6/8/10                   conv1 ... conv5                      (AlexNet)
    classifier.1 / .4 / .6                fc6 / fc7 / fc8

These weights expect torchvision's inputs: RGB in [0, 1] normalised with the ImageNet
mean/std; the converted config says preprocessing='torch'.
"""
from __future__ import annotations

import os
import re

import numpy as np

from cvjax import models
from cvjax.errors import UserError, unknown_choice
from cvjax.pretrained import common

MODELS = {f'resnet{d}': f'resnet{d}' for d in (18, 34, 50, 101, 152)}
MODELS.update({f'vgg{d}{bn}': f'vgg{d}{bn}' for d in (11, 13, 16, 19) for bn in ('', '_bn')})
MODELS['alexnet'] = 'alexnet_torchvision'
PREPROCESSING = 'torch'

# Layout of one tensor: how to bring it to cvjax, and its torch shape from the cvjax one.
_LAYOUTS = {
    'conv': (common.conv_kernel_from_oihw, lambda s: (s[3], s[2], s[0], s[1])),
    'dense': (common.dense_kernel_from_oi, lambda s: (s[1], s[0])),
    'same': (lambda w: w, lambda s: s),
}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """name -> float array from a `.npz`, or from a `.pth`/`.pt` when torch is installed."""
  if not os.path.isfile(path):
    raise UserError(f'--weights={path} does not exist')
  if path.endswith('.npz'):
    try:
      with np.load(path) as f:
        return {k: np.asarray(f[k]) for k in f.files}
    except Exception as e:  # pylint: disable=broad-except  # zip, zlib and .npy errors alike
      raise UserError(f'cannot read {path} as an .npz of state_dict arrays: '
                      f'{type(e).__name__}: {str(e)[:100]}') from None
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f'reading {path} needs torch, which is not installed; install it, or '
                    'export the state_dict to .npz where torch is (see '
                    'cvjax.pretrained.torchvision.export_npz)') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'cannot read {path} with torch.load: {type(e).__name__}: '
                    f'{str(e).splitlines()[0] if str(e) else ""}') from None
  for key in ('state_dict', 'model'):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
  if not isinstance(obj, dict):
    raise UserError(f'{path} holds a {type(obj).__name__}, not a state_dict')
  return {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, 'detach')}


def export_npz(state_dict, path: str) -> None:
  """Saves a torch state_dict as the torch-free `.npz` this converter reads."""
  np.savez(path, **{k: v.detach().cpu().numpy() for k, v in state_dict.items()})


def _bn(torch_name: str, cvjax_name: str) -> dict:
  return {f'{torch_name}.weight': (f'params/{cvjax_name}/scale', 'same'),
          f'{torch_name}.bias': (f'params/{cvjax_name}/bias', 'same'),
          f'{torch_name}.running_mean': (f'batch_stats/{cvjax_name}/mean', 'same'),
          f'{torch_name}.running_var': (f'batch_stats/{cvjax_name}/var', 'same')}


def _layer(torch_name: str, cvjax_name: str, kind: str, bias: bool = True) -> dict:
  out = {f'{torch_name}.weight': (f'params/{cvjax_name}/kernel', kind)}
  if bias:
    out[f'{torch_name}.bias'] = (f'params/{cvjax_name}/bias', 'same')
  return out


def _resnet_map(params: set[str]) -> dict:
  """torch name -> (cvjax path, layout), for the blocks the cvjax model has."""
  out = {**_layer('conv1', 'conv1', 'conv', bias=False), **_bn('bn1', 'bn1'),
         **_layer('fc', 'fc', 'dense')}
  for module in sorted(params):
    m = re.fullmatch(r'layer(\d+)_(\d+)', module)
    if not m:
      continue
    torch_block = f'layer{m.group(1)}.{m.group(2)}'
    for k in (1, 2, 3):
      out.update(_layer(f'{torch_block}.conv{k}', f'{module}/conv{k}', 'conv', bias=False))
      out.update(_bn(f'{torch_block}.bn{k}', f'{module}/bn{k}'))
    out.update(_layer(f'{torch_block}.downsample.0', f'{module}/downsample_conv', 'conv',
                      bias=False))
    out.update(_bn(f'{torch_block}.downsample.1', f'{module}/downsample_bn'))
  return out


def _vgg_map(model) -> dict:
  out, index = {}, 0
  for s, filters in enumerate(model.stages, start=1):
    for i, _ in enumerate(filters, start=1):
      out.update(_layer(f'features.{index}', f'block{s}_conv{i}', 'conv'))
      if model.batch_norm:
        out.update(_bn(f'features.{index + 1}', f'block{s}_bn{i}'))
      index += 3 if model.batch_norm else 2  # conv, (bn,) relu
    index += 1  # max-pool
  out.update(_layer('classifier.0', 'fc1', 'nchw_dense:512:7:7'))
  out.update(_layer('classifier.3', 'fc2', 'dense'))
  out.update(_layer('classifier.6', 'fc3', 'dense'))
  return out


def _alexnet_map() -> dict:
  out = {}
  for index, k in zip((0, 3, 6, 8, 10), range(1, 6)):
    out.update(_layer(f'features.{index}', f'conv{k}', 'conv'))
  out.update(_layer('classifier.1', 'fc6', 'nchw_dense:256:6:6'))
  out.update(_layer('classifier.4', 'fc7', 'dense'))
  out.update(_layer('classifier.6', 'fc8', 'dense'))
  return out


def convert_state(state: dict[str, np.ndarray], mapping: dict[str, tuple[str, str]],
                  expected: dict[str, tuple[int, ...]], *, what: str) -> dict[str, np.ndarray]:
  """{cvjax path: float32 array} of a torch state_dict, checked tensor by tensor.

  state: torch name -> array (`read_state_dict`; num_batches_tracked is dropped here);
  mapping: torch name -> (cvjax path, layout name), in the order the checks name a
  first missing tensor; expected: cvjax path -> shape (`common.model_shapes`); what:
  e.g. "torchvision weights X.pth for resnet18", the head of every message.

  Raises:
    UserError: the first tensor of `mapping` missing from `state`, the first of `state`
      not in `mapping`, the first whose shape is not its cvjax shape in torch layout;
      then `common.check_against`'s errors, named by torch name.
  """
  state = {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}
  for torch_name, (path, _) in mapping.items():
    if torch_name not in state:
      raise UserError(f'{what}: missing tensor {torch_name} (cvjax {path}); is the file for '
                      'this model?')
  for torch_name in state:
    if torch_name not in mapping:
      raise UserError(f'{what}: unexpected tensor {torch_name}; is the file for this model?')
  arrays = {}
  for torch_name, (path, kind) in mapping.items():
    to_cvjax, torch_shape = _layout(kind)
    want = tuple(torch_shape(expected[path]))
    if tuple(state[torch_name].shape) != want:
      raise UserError(f'{what}: tensor {torch_name} has shape {tuple(state[torch_name].shape)}, '
                      f'cvjax {path} needs {want} in torch layout')
    arrays[path] = np.asarray(to_cvjax(np.asarray(state[torch_name], np.float32)))
  inverse = {path: torch_name for torch_name, (path, _) in mapping.items()}
  common.check_against(arrays, expected, what=what, source_name=lambda p: inverse.get(p, p))
  return arrays


def _layout(kind: str):
  """(to_cvjax, torch_shape_from_cvjax_shape) of a layout name."""
  if kind.startswith('nchw_dense:'):
    c, h, w = (int(x) for x in kind.split(':')[1:])
    return (lambda a: common.dense_kernel_from_nchw_flatten(a, c, h, w),
            lambda s: (s[1], s[0]))
  return _LAYOUTS[kind]


def cvjax_model(name: str) -> str:
  """The cvjax model for a torchvision model name."""
  if name.lower() not in MODELS:
    raise unknown_choice('torchvision model', name, MODELS)
  return MODELS[name.lower()]


def load(weights: str, model: str, image_size: int | None = None):
  """Reads and checks a torchvision state_dict for torchvision model `model`.

  Args:
    weights: `.pth`/`.pt` (needs torch) or `.npz` path.
    model: torchvision name, e.g. 'resnet18', 'vgg16_bn', 'alexnet'.
    image_size: input size the converted model is used at (default: 224).

  Returns:
    (TrainConfig, {cvjax path: float32 array}).

  Raises:
    UserError: unreadable file, or the first missing / unexpected / mis-shaped tensor.
  """
  name = cvjax_model(model)
  state = read_state_dict(weights)
  head = 'fc' if name.startswith('resnet') else 'classifier.6'
  num_classes = int(state[f'{head}.weight'].shape[0]) if f'{head}.weight' in state else 1000
  size = image_size or models.model_input_shape(name)[0]
  cvjax_net = models.get_model(name, num_classes=num_classes)
  expected = common.model_shapes(cvjax_net, size)
  if name.startswith('resnet'):
    mapping = _resnet_map({p.split('/')[1] for p in expected})
  elif name.startswith('vgg'):
    mapping = _vgg_map(cvjax_net)
  else:
    mapping = _alexnet_map()
  mapping = {k: v for k, v in mapping.items() if v[0] in expected}  # e.g. blocks w/o downsample
  arrays = convert_state(state, mapping, expected,
                         what=f'torchvision weights {weights} for {model}')
  config = common.converted_config(model=name, num_classes=num_classes, image_size=size,
                                   preprocessing=PREPROCESSING)
  return config, arrays
