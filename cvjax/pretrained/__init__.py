"""Pretrained weights from Keras and torchvision, as normal cvjax workdirs.

    from cvjax import pretrained
    out = pretrained.convert('keras', 'resnet50', 'resnet50.weights.h5', 'runs/resnet50_keras')
    restored = cvjax.restore(out)          # predicts with Keras' own preprocessing
    # or fine-tune: python -m experiments.transfer --init_from=runs/resnet50_keras ...

Same from a shell: `python -m cvjax.convert --source=keras --model=resnet50
--weights=FILE --out=DIR`. Sources: 'keras' (`cvjax.pretrained.keras`: VGG16, VGG19,
ResNet50/101/152, InceptionV3, Xception, DenseNet121/169/201, MobileNet, MobileNetV2,
EfficientNetB0-B7 from .weights.h5 or legacy .h5) and 'torchvision'
(`cvjax.pretrained.torchvision`: resnet18-152, vgg11-19(+bn), alexnet from .pth or .npz;
`cvjax.pretrained.ssd`: SSD's vgg16_features backbone and the ssd300_vgg16 COCO detector;
`cvjax.pretrained.deeplab`: deeplabv3_resnet50/101 segmenters).
Importing this package loads neither h5py, torch nor TensorFlow (the converters do).
"""
from __future__ import annotations

import importlib
import os

from cvjax.errors import UserError, unknown_choice
from cvjax.pretrained.names import DEEPLAB_MODELS, SOURCES, SSD_MODELS


def load(source: str, model: str, weights: str, image_size: int | None = None,
         num_classes: int | None = None):
  """(TrainConfig, {cvjax path: float32 array}) of a source's weights file, checked
  name by name and shape by shape against the cvjax model; nothing is written.

  num_classes: only for torchvision's vgg16_features (the SSD backbone), the classes of
  the detector it is for; a classifier's weights fix its classes.
  """
  if source not in SOURCES:
    raise unknown_choice('source', source, SOURCES)
  if source == 'torchvision' and model in SSD_MODELS:
    from cvjax.pretrained import ssd  # loads orbax
    return ssd.load(weights, model, image_size, num_classes)
  if source == 'darknet':
    from cvjax.pretrained import darknet  # loads orbax
    return darknet.load(weights, model, image_size, num_classes)
  if num_classes is not None:
    raise UserError(f'--num_classes is for torchvision vgg16_features only; {source} {model} '
                    'takes its classes from the weights')
  if source == 'torchvision' and model in DEEPLAB_MODELS:
    from cvjax.pretrained import deeplab  # loads orbax
    return deeplab.load(weights, model, image_size)
  return importlib.import_module(f'cvjax.pretrained.{source}').load(weights, model, image_size)


def convert(source: str, model: str, weights: str, out: str,
            image_size: int | None = None, num_classes: int | None = None) -> str:
  """Converts `weights` of `source` model `model` into the new cvjax workdir `out`.

  Args:
    source: 'keras' or 'torchvision'.
    model: the source's model name ('resnet50', 'VGG16', 'vgg16_bn', 'alexnet',
      'ssd300_vgg16', 'vgg16_features', ...).
    weights: the weights file (see the source modules for formats).
    out: directory to create; must not exist. Written atomically.
    image_size: input size the model will be used at (default: its natural 224).
    num_classes: torchvision vgg16_features only (see `load`; default 20).

  Returns:
    The absolute path of `out`, ready for `cvjax.restore` and `--init_from`.

  Raises:
    UserError: a bad name or file, or the first missing / unexpected / mis-shaped tensor;
      nothing is written then.
  """
  from cvjax import tasks  # loads JAX, Flax and orbax
  from cvjax.pretrained import common
  from cvjax.train import rundir
  if os.path.exists(out):  # fail before reading a large file
    raise UserError(f'--out={out} already exists; choose a new directory')
  config, arrays = load(source, model, weights, image_size, num_classes)
  meta = {'converted_from': {'source': source, 'model': model,
                             'weights': os.path.abspath(weights),
                             'sha256': common.sha256(weights)}}
  # No dataset: config.num_classes gives the classes (class names unknown).
  return rundir.write_workdir(out, tasks.get_task(config, None), arrays, meta)
