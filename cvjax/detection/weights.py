"""torchvision SSD weights → a cvjax workdir (for `--init_from` or `cvjax.restore`).

    python -m cvjax.detection.weights --source=vgg16_features \\
        --weights=vgg16_features-amdegroot-88682ab5.pth --out=runs/ssd300_vgg16_backbone
    python -m cvjax.detection.weights --source=ssd300_vgg16_coco \\
        --weights=ssd300_vgg16_coco-b556d3b4.pth --out=runs/ssd300_vgg16_coco

vgg16_features: the ImageNet VGG-16 convolutions torchvision's `ssd300_vgg16` starts
  from (its `backbone_urls['vgg16_features']`, amdegroot's port of the paper's Caffe
  VGG-16: RGB, pixel·255 − mean, as `SSD300VGG16` normalises). Only conv1_1..conv5_3
  are written; `--init_from=DIR` loads them into `ssd300_vgg16`/`ssd512_vgg16` and
  leaves fc6, fc7, the extras and the heads to their Xavier initialisation, which is
  torchvision's recipe.
ssd300_vgg16_coco: torchvision's whole COCO detector. Its 91 class columns
  (background + COCO category ids 1..90 with gaps) become the 80 TFDS `coco/2017`
  labels plus background (num_classes=80), so the workdir evaluates on TFDS COCO.

.pth files need torch installed; a `.npz` of the state dict (`numpy.savez(path,
**{k: v.numpy() for k, v in sd.items()})`) needs nothing. Bad input: one
`error: ...` line, exit status 2.
"""
from __future__ import annotations

import sys

import numpy as np

from cvjax.errors import UserError
from cvjax.evaluate import ArgumentParser

SOURCES = ('vgg16_features', 'ssd300_vgg16_coco')
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
  from cvjax.models import ssd  # pylint: disable=g-import-not-at-top
  columns = [0] + list(COCO_CATEGORY_IDS)
  boxes = ssd.SSD300_ANCHORS.boxes_per_location()
  out = {}
  for path, prefix in ssd.TORCHVISION_SSD300_VGG16.items():
    if path == 'backbone/l2norm':
      out['params/backbone/l2norm/scale'] = np.asarray(state_dict[prefix])
      continue
    try:
      weight, bias = np.asarray(state_dict[f'{prefix}.weight']), np.asarray(state_dict[f'{prefix}.bias'])
    except KeyError as e:
      raise UserError(f'the state dict has no {e.args[0]!r}; is it torchvision\'s '
                      'ssd300_vgg16?') from None
    if path.startswith('cls_head_'):
      weight, bias = _select_classes(weight, bias, boxes[int(path.rsplit('_', 1)[1])], columns)
    out[f'params/{path}/kernel'] = _conv(weight)
    out[f'params/{path}/bias'] = bias
  return out


def convert(source: str, weights: str, out: str, num_classes: int = 20) -> str:
  """Writes the workdir `out` (see module doc); returns its path."""
  from cvjax.pretrained import common, torchvision  # pylint: disable=g-import-not-at-top
  from cvjax.train.config import TrainConfig  # pylint: disable=g-import-not-at-top
  if source not in SOURCES:
    raise UserError(f'unknown source {source!r}; valid choices: {", ".join(SOURCES)}')
  state_dict = torchvision.read_state_dict(weights)
  if source == 'vgg16_features':
    arrays, dataset = vgg16_features_arrays(state_dict), 'voc/07+12'
  else:
    arrays, dataset, num_classes = ssd300_coco_arrays(state_dict), 'coco/2017', 80
  expected = common.model_shapes(_model(num_classes), 300)
  for key, value in arrays.items():
    name = key.removeprefix('params/')
    if name in expected and tuple(expected[name]) != tuple(value.shape):
      raise UserError(f'{key} has shape {tuple(value.shape)}, ssd300_vgg16 wants '
                      f'{tuple(expected[name])}')
  config = TrainConfig(task='detection', model='ssd300_vgg16', dataset=dataset,
                       num_classes=num_classes, batch_size=1, num_train_steps=1,
                       optimizer='sgd', schedule='constant', learning_rate=0.01,
                       keep_checkpoints=1)
  return common.write_workdir(out, config, arrays, {'source': source,
                                                     'weights_sha256': common.sha256(weights)})


def _model(num_classes: int):
  from cvjax.models import get_model  # pylint: disable=g-import-not-at-top
  return get_model('ssd300_vgg16', num_classes)


def main(argv=None) -> int:
  parser = ArgumentParser(prog='python -m cvjax.detection.weights',
                          description='torchvision SSD weights to a cvjax workdir.')
  parser.add_argument('--source', required=True, help=', '.join(SOURCES))
  parser.add_argument('--weights', required=True, help='.pth (needs torch) or .npz state dict')
  parser.add_argument('--out', required=True, help='new workdir (must not exist)')
  parser.add_argument('--num_classes', type=int, default=20,
                      help='object classes of the detector the backbone is for (vgg16_features)')
  args = parser.parse_args(argv)
  import os  # pylint: disable=g-import-not-at-top
  try:
    if not os.path.isfile(args.weights):
      raise UserError(f'--weights={args.weights} does not exist')
    out = convert(args.source, args.weights, args.out, args.num_classes)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {out}; train from it with --init_from={out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
