"""torchvision SSD weights → a cvjax workdir (for `--init_from` or `cvjax.restore`).

    python -m cvjax.convert --source=torchvision --model=vgg16_features \\
        --weights=vgg16_features-amdegroot-88682ab5.pth --out=runs/ssd300_vgg16_backbone
    python -m cvjax.convert --source=torchvision --model=ssd300_vgg16 \\
        --weights=ssd300_vgg16_coco-b556d3b4.pth --out=runs/ssd300_vgg16_coco

`cvjax.pretrained.convert('torchvision', model, ...)` comes here for the two `MODELS`:

vgg16_features: the ImageNet VGG-16 convolutions torchvision's `ssd300_vgg16` starts
  from (its `backbone_urls['vgg16_features']`, amdegroot's port of the paper's Caffe
  VGG-16: RGB, pixel·255 − mean, as `SSD300VGG16` normalises). Only conv1_1..conv5_3
  are written; `--init_from=DIR` loads them into `ssd300_vgg16`/`ssd512_vgg16` and
  leaves fc6, fc7, the extras and the heads to their Xavier initialisation, which is
  torchvision's recipe.
ssd300_vgg16: torchvision's whole COCO detector (`SSD300_VGG16_Weights.COCO_V1`). Its
  91 class columns (background + COCO category ids 1..90 with gaps) become the 80 TFDS
  `coco/2017` labels plus background (num_classes=80), so the workdir evaluates on TFDS COCO.

.pth files need torch installed; a `.npz` of the state dict (`numpy.savez(path,
**{k: v.numpy() for k, v in sd.items()})`) needs nothing.
"""
from __future__ import annotations

import numpy as np

from cvjax import models
from cvjax.errors import UserError, unknown_choice
from cvjax.models import ssd
from cvjax.pretrained import common, torchvision
from cvjax.pretrained.names import SSD_MODELS as MODELS
from cvjax.train.config import TrainConfig

IMAGE_SIZE = 300
# COCO category ids of TFDS coco/2017 labels 0..79 (the 80 of 1..90 in use).
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91)
                          if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
_VGG_CONVS = [f'conv{s}_{i}' for s, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
              for i in range(1, n + 1)]


def _conv(weight: np.ndarray) -> np.ndarray:
  """torch OIHW → flax HWIO."""
  return np.transpose(np.asarray(weight), (2, 3, 1, 0))


def vgg16_features_arrays(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """'params/backbone/conv1_1/kernel' ... for the 13 VGG-16 convs of a `features` state
  dict (keys '0.weight' ... '28.bias', with or without a 'features.' prefix)."""
  sd = {k.removeprefix('features.'): v for k, v in state_dict.items()}
  indices = sorted({int(k.split('.')[0]) for k in sd if k.endswith('.weight')})
  if len(indices) != 13:
    raise UserError(f'expected the 13 convolutions of VGG-16 features, found {len(indices)} '
                    f'weights ({", ".join(sorted(sd)[:4])} ...)')
  out = {}
  for name, i in zip(_VGG_CONVS, indices):
    out[f'params/backbone/{name}/kernel'] = _conv(sd[f'{i}.weight'])
    out[f'params/backbone/{name}/bias'] = np.asarray(sd[f'{i}.bias'])
  return out


def _select_classes(weight, bias, boxes_per_cell: int, columns: list[int]):
  """Keeps class `columns` of each box's block in a head conv (torch OIHW layout)."""
  total = weight.shape[0] // boxes_per_cell
  rows = [a * total + c for a in range(boxes_per_cell) for c in columns]
  return weight[rows], bias[rows]


def ssd300_coco_arrays(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """All params of `ssd300_vgg16` (num_classes=80) from torchvision's COCO checkpoint."""
  def tensor(name: str) -> np.ndarray:
    if name not in state_dict:
      raise UserError(f'the state dict has no {name!r}; is it torchvision\'s ssd300_vgg16?')
    return np.asarray(state_dict[name])

  columns = [0] + list(COCO_CATEGORY_IDS)
  boxes = ssd.SSD300_ANCHORS.boxes_per_location()
  out = {}
  for path, prefix in ssd.TORCHVISION_SSD300_VGG16.items():
    if path == 'backbone/l2norm':
      out['params/backbone/l2norm/scale'] = tensor(prefix)
      continue
    weight, bias = tensor(f'{prefix}.weight'), tensor(f'{prefix}.bias')
    if path.startswith('cls_head_'):
      weight, bias = _select_classes(weight, bias, boxes[int(path.rsplit('_', 1)[1])], columns)
    out[f'params/{path}/kernel'] = _conv(weight)
    out[f'params/{path}/bias'] = bias
  return out


def load(weights: str, model: str, image_size: int | None = None,
         num_classes: int | None = None):
  """(TrainConfig of `ssd300_vgg16`, {cvjax path: array}) of torchvision SSD `model`.

  Args:
    weights: `.pth` (needs torch) or `.npz` state dict.
    model: 'vgg16_features' (the backbone: 13 convs) or 'ssd300_vgg16' (the COCO detector).
    image_size: None or 300; SSD300's anchors are laid out for 300².
    num_classes: vgg16_features: object classes of the detector the backbone is for
      (default 20, PASCAL VOC); ssd300_vgg16 always has the 80 of TFDS `coco/2017`.

  Raises:
    UserError: unknown model, another image size or class count, unreadable file,
      a missing or mis-shaped tensor.
  """
  if model not in MODELS:
    raise unknown_choice('torchvision SSD model', model, MODELS)
  if image_size not in (None, IMAGE_SIZE):
    raise UserError(f'--image_size={image_size}: {model} converts for ssd300_vgg16, whose '
                    f'input is {IMAGE_SIZE}×{IMAGE_SIZE}; leave --image_size unset')
  state_dict = torchvision.read_state_dict(weights)
  if model == 'vgg16_features':
    num_classes = 20 if num_classes is None else num_classes
    if num_classes < 1:
      raise UserError(f'--num_classes must be a positive integer, got {num_classes}')
    arrays, dataset = vgg16_features_arrays(state_dict), 'voc/07+12'
  else:
    if num_classes not in (None, len(COCO_CATEGORY_IDS)):
      raise UserError(f'--num_classes={num_classes}: torchvision\'s ssd300_vgg16 detects the '
                      f'{len(COCO_CATEGORY_IDS)} COCO classes; leave --num_classes unset')
    arrays, dataset, num_classes = ssd300_coco_arrays(state_dict), 'coco/2017', 80
  expected = common.model_shapes(models.get_model('ssd300_vgg16', num_classes), IMAGE_SIZE)
  for key, value in arrays.items():
    name = key.removeprefix('params/')
    if name in expected and tuple(expected[name]) != tuple(value.shape):
      raise UserError(f'{key} has shape {tuple(value.shape)}, ssd300_vgg16 wants '
                      f'{tuple(expected[name])}')
  config = TrainConfig(task='detection', model='ssd300_vgg16', dataset=dataset,
                       num_classes=num_classes, batch_size=1, num_train_steps=1,
                       optimizer='sgd', schedule='constant', learning_rate=0.01,
                       keep_checkpoints=1)
  return config, arrays

