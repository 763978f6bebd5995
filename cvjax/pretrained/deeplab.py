"""torchvision DeepLabv3 state_dicts → a cvjax workdir (`cvjax.restore`, `--init_from`).

    python -m cvjax.convert --source=torchvision --model=deeplabv3_resnet50 \\
        --weights=deeplabv3_resnet50_coco-cd0a2569.pth --out=runs/deeplabv3_resnet50_voc

`cvjax.pretrained.convert('torchvision', model, ...)` comes here for the two `MODELS`,
torchvision's `deeplabv3_resnet50` / `deeplabv3_resnet101` (output stride 8, ASPP rates
12/24/36; `cvjax.models.deeplab`). Tensors, torch name → cvjax path:

    backbone.conv1, backbone.bn1, backbone.layer{i}.{j}.*   conv1, bn1, layer{i}_{j}/*
                                                            (as cvjax.pretrained.torchvision)
    classifier.0.convs.0.0 / .0.1                           aspp0_conv / aspp0_bn
    classifier.0.convs.{1,2,3}.0 / .1                       aspp{1,2,3}_conv / _bn
    classifier.0.convs.4.1 / .4.2                           aspp_pool_conv / aspp_pool_bn
    classifier.0.project.0 / .1                             aspp_project_conv / _bn
    classifier.1 / .2 / .4                                  head_conv / head_bn / classifier
    aux_classifier.0 / .1 / .4                              aux_conv / aux_bn / aux_classifier

The auxiliary FCN head is kept when the file has it (torchvision's published
weights do): the workdir's model then has `aux_head=True`, which adds parameters
but not outputs (`cvjax.models.deeplab`). The class count comes from
`classifier.4` (21 for torchvision's COCO-with-VOC-labels weights: background + the
20 VOC classes, dataset 'voc' here). Inputs: RGB in [0, 1] with the ImageNet
mean/std (preprocessing 'torch'), at 520² by default (torchvision resizes the
short side to 520 for evaluation; `--image_size` picks another).

.pth files need torch installed; a `.npz` of the state dict needs nothing.
"""
from __future__ import annotations

import re

from cvjax import models
from cvjax.errors import UserError, unknown_choice
from cvjax.pretrained import common, torchvision
from cvjax.pretrained.names import DEEPLAB_MODELS as MODELS
from cvjax.train.config import TrainConfig

DATASET = 'voc'  # torchvision's 21 classes: background + the PASCAL VOC 20 (predict only)


def _head_map() -> dict:
  """torch name → (cvjax path, layout) for ASPP, the head and the aux head."""
  out, bn, layer = {}, torchvision._bn, torchvision._layer  # pylint: disable=protected-access
  aspp = 'classifier.0'
  for k in range(4):
    out.update(layer(f'{aspp}.convs.{k}.0', f'aspp{k}_conv', 'conv', bias=False))
    out.update(bn(f'{aspp}.convs.{k}.1', f'aspp{k}_bn'))
  out.update(layer(f'{aspp}.convs.4.1', 'aspp_pool_conv', 'conv', bias=False))
  out.update(bn(f'{aspp}.convs.4.2', 'aspp_pool_bn'))
  out.update(layer(f'{aspp}.project.0', 'aspp_project_conv', 'conv', bias=False))
  out.update(bn(f'{aspp}.project.1', 'aspp_project_bn'))
  out.update(layer('classifier.1', 'head_conv', 'conv', bias=False))
  out.update(bn('classifier.2', 'head_bn'))
  out.update(layer('classifier.4', 'classifier', 'conv'))
  out.update(layer('aux_classifier.0', 'aux_conv', 'conv', bias=False))
  out.update(bn('aux_classifier.1', 'aux_bn'))
  out.update(layer('aux_classifier.4', 'aux_classifier', 'conv'))
  return out


def tensor_map(expected_paths) -> dict:
  """torch name → (cvjax path, layout) for every cvjax path in `expected_paths`."""
  modules = {p.split('/')[1] for p in expected_paths}
  backbone = torchvision._resnet_map(modules)  # pylint: disable=protected-access
  mapping = {f'backbone.{k}': v for k, v in backbone.items()}
  mapping.update(_head_map())
  return {k: v for k, v in mapping.items() if v[0] in expected_paths}


def load(weights: str, model: str, image_size: int | None = None):
  """(TrainConfig, {cvjax path: float32 array}) of torchvision DeepLabv3 `model`.

  Args:
    weights: `.pth`/`.pt` (needs torch) or `.npz` state_dict.
    model: 'deeplabv3_resnet50' or 'deeplabv3_resnet101'.
    image_size: input size the converted model is used at (default: 520).

  Raises:
    UserError: unknown model, unreadable file, the first missing / unexpected /
      mis-shaped tensor.
  """
  if model not in MODELS:
    raise unknown_choice('torchvision DeepLab model', model, MODELS)
  state = torchvision.read_state_dict(weights)
  what = f'torchvision weights {weights} for {model}'
  if 'classifier.4.weight' not in state:
    raise UserError(f'{what}: missing tensor classifier.4.weight (the classifier); is the file '
                    'for this model?')
  num_classes = int(state['classifier.4.weight'].shape[0])
  aux = any(k.startswith('aux_classifier.') for k in state)
  kwargs = {'aux_head': True} if aux else {}
  size = image_size or models.model_input_shape(model)[0]
  # The shapes do not depend on the input size: trace a small one.
  expected = common.model_shapes(models.get_model(model, num_classes=num_classes, **kwargs), 64)
  mapping = tensor_map(set(expected))
  # Natural order (layer3.6 before layer3.10), so an error names the first tensor missing.
  natural = lambda name: [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]
  mapping = dict(sorted(mapping.items(), key=lambda item: natural(item[0])))
  arrays = torchvision.convert_state(state, mapping, expected, what=what)
  config = TrainConfig(task='segmentation', model=model, model_kwargs=kwargs, dataset=DATASET,
                       num_classes=num_classes, image_size=size, preprocessing='torch',
                       optimizer='sgd', schedule='constant', learning_rate=0.01, batch_size=1,
                       num_train_steps=1, keep_checkpoints=1)
  return config, arrays
