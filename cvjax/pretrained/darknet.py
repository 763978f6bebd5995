"""Darknet `.weights` → a cvjax workdir (YOLOv3 and YOLOv3-tiny, for `cvjax.restore`/`--init_from`).

    python -m cvjax.convert --source=darknet --model=yolov3 --weights=yolov3.weights \\
        --out=runs/yolov3_coco

The file (Darknet's `save_weights`): int32 major, minor, revision; images seen, int64
when major·10 + minor ≥ 2 and major, minor < 1000, else int32; then float32 arrays,
for every convolutional layer in cfg order: with batch norm, its beta (bias), gamma
(scale), running mean and running variance, [out] each; without, its bias [out]; then
the kernel [out, in, kh, kw]. Nothing else: the file must be used up exactly.

cvjax's YOLO models name their layers by cfg index (`conv{i}`, `bn{i}`;
`cvjax.models.yolo`), so the i-th convolution of the file is the i-th `conv{i}` by
index. The class count is read off the file's size (Darknet's COCO files: 80, the
TFDS `coco/2017` labels, in the same category-id order as Darknet's coco.names);
`--num_classes` checks it.

Two differences from Darknet at inference, neither changes which weights go where:
images are resized to the square input without letterboxing, and batch norm divides by
sqrt(var + 1e-5) where Darknet divides by sqrt(var) + 1e-6.
"""
from __future__ import annotations

import re

import numpy as np

from cvjax import models
from cvjax.errors import UserError, unknown_choice
from cvjax.pretrained import common
from cvjax.train.config import TrainConfig

# Accepted --model names → registered cvjax models (Darknet's cfg names too).
MODELS = {'yolov3': 'yolov3', 'yolov3_tiny': 'yolov3_tiny', 'yolov3-tiny': 'yolov3_tiny',
          'yolov3_shapes': 'yolov3_shapes'}
_CONV = re.compile(r'^params/((?:.*/)?)conv(\d+)/kernel$')


def read_weights(path: str) -> tuple[tuple[int, int, int, int], np.ndarray]:
  """((major, minor, revision, seen), float32[n] every array of the file, in order)."""
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except OSError as e:
    raise UserError(f'--weights={path}: cannot read it ({e.strerror})') from None
  if len(raw) < 16:
    raise UserError(f'--weights={path} has {len(raw)} bytes, too few for a Darknet header')
  major, minor, revision = (int(v) for v in np.frombuffer(raw, '<i4', 3))
  if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
    seen, offset = int(np.frombuffer(raw, '<i8', 1, 12)[0]), 20
  else:
    seen, offset = int(np.frombuffer(raw, '<i4', 1, 12)[0]), 16
  if (len(raw) - offset) % 4:
    raise UserError(f'--weights={path}: {len(raw) - offset} bytes after the header are not '
                    'whole float32 values; is it a Darknet .weights file?')
  return (major, minor, revision, seen), np.frombuffer(raw, '<f4', offset=offset)


def conv_layers(shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, str | None, tuple]]:
  """The convolutions of a cvjax YOLO model in Darknet's order: (conv path, BN path or None,
  kernel shape (kh, kw, in, out)), from `common.model_shapes`."""
  found = []
  for path, shape in shapes.items():
    m = _CONV.match(path)
    if m:
      prefix, index = m.group(1), int(m.group(2))
      bn = f'{prefix}bn{index}'
      found.append((index, f'{prefix}conv{index}',
                    bn if f'params/{bn}/scale' in shapes else None, shape))
  return [(conv, bn, shape) for _, conv, bn, shape in sorted(found)]


def _float_count(model: str, num_classes: int, image_size: int) -> int:
  shapes = common.model_shapes(models.get_model(model, num_classes), image_size)
  return sum(int(np.prod(s)) for s in shapes.values())


def arrays_from_floats(floats: np.ndarray, shapes: dict[str, tuple[int, ...]]
                       ) -> dict[str, np.ndarray]:
  """{'params/conv0/kernel': …, 'batch_stats/bn0/mean': …} from the file's floats, in the
  layout of `shapes` (Darknet OIHW kernels → HWIO). Raises UserError when they run out."""
  out, at = {}, 0

  def take(n: int, what: str) -> np.ndarray:
    nonlocal at
    if at + n > len(floats):
      raise UserError(f'the weights end after {len(floats)} floats, reading {what} needs '
                      f'{at + n}; is the file for this model and class count?')
    at += n
    return np.array(floats[at - n:at])

  for conv, bn, (kh, kw, cin, cout) in conv_layers(shapes):
    if bn:
      out[f'params/{bn}/bias'] = take(cout, f'{bn} beta')
      out[f'params/{bn}/scale'] = take(cout, f'{bn} gamma')
      out[f'batch_stats/{bn}/mean'] = take(cout, f'{bn} mean')
      out[f'batch_stats/{bn}/var'] = take(cout, f'{bn} variance')
    else:
      out[f'params/{conv}/bias'] = take(cout, f'{conv} bias')
    kernel = take(cout * cin * kh * kw, f'{conv} weights').reshape(cout, cin, kh, kw)
    out[f'params/{conv}/kernel'] = common.conv_kernel_from_oihw(kernel)
  if at != len(floats):
    raise UserError(f'{len(floats) - at} floats are left after the last convolution '
                    f'({at} used); is the file for this model and class count?')
  return out


def load(weights: str, model: str, image_size: int | None = None,
         num_classes: int | None = None):
  """(TrainConfig of a 'detection' run on coco/2017, {cvjax path: float32 array}).

  Args:
    weights: a Darknet `.weights` file.
    model: 'yolov3', 'yolov3_tiny' (or 'yolov3-tiny'), 'yolov3_shapes'.
    image_size: the input size the model will be used at (default: its natural 416).
    num_classes: checked against the class count the file's size gives.

  Raises:
    UserError: unknown model, unreadable file, a size that fits no class count or not
      `num_classes`, or arrays that do not match the model.
  """
  if model not in MODELS:
    raise unknown_choice('darknet model', model, MODELS)
  name = MODELS[model]
  size = image_size or models.model_input_shape(name)[0]
  _, floats = read_weights(weights)
  base = _float_count(name, 1, size)
  per_class = _float_count(name, 2, size) - base
  classes, rest = divmod(len(floats) - base + per_class, per_class)
  if rest or classes < 1:
    raise UserError(f'--weights={weights} holds {len(floats)} floats; {name} with C classes '
                    f'needs {base - per_class} + {per_class}·C, which no C fits; is it a '
                    f'{name} file?')
  if num_classes not in (None, classes):
    raise UserError(f'--num_classes={num_classes}, but the file holds {name} with {classes} '
                    'classes; leave --num_classes unset')
  shapes = common.model_shapes(models.get_model(name, classes), size)
  arrays = arrays_from_floats(floats, shapes)
  common.check_against(arrays, shapes, what=f'darknet weights {weights} for {name}')
  config = TrainConfig(task='detection', model=name, dataset='coco/2017', num_classes=classes,
                       image_size=image_size, batch_size=1, num_train_steps=1, optimizer='sgd',
                       schedule='constant', learning_rate=0.01, keep_checkpoints=1)
  return config, arrays
