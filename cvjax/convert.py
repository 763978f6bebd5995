"""Converts Keras or torchvision weights into a cvjax workdir.

  python -m cvjax.convert --source=keras --model=resnet50 --weights=resnet50.weights.h5 \\
      --out=runs/resnet50_keras
  python -m cvjax.convert --source=torchvision --model=resnet18 --weights=resnet18.npz \\
      --out=runs/resnet18_torchvision
  python -m cvjax.convert --source=torchvision --model=vgg16_features \\
      --weights=vgg16_features-amdegroot-88682ab5.pth --out=runs/ssd300_vgg16_backbone \\
      [--num_classes=20]
  python -m cvjax.convert --source=torchvision --model=ssd300_vgg16 \\
      --weights=ssd300_vgg16_coco-b556d3b4.pth --out=runs/ssd300_vgg16_coco
  python -m cvjax.convert --source=darknet --model=yolov3 --weights=yolov3.weights \\
      --out=runs/yolov3_coco
  python -m cvjax.convert --source=torchvision --model=deeplabv3_resnet50 \\
      --weights=deeplabv3_resnet50_coco-cd0a2569.pth --out=runs/deeplabv3_resnet50_voc

DIR then works with `cvjax.restore(DIR)` (predict applies the source's preprocessing)
and `--init_from=DIR`. torchvision's SSD weights (`cvjax.pretrained.ssd`):
vgg16_features is the ImageNet VGG-16 backbone SSD300 trains from (`--num_classes`:
the classes of the detector it is for, default 20), ssd300_vgg16 the COCO detector
(80 TFDS coco/2017 classes). deeplabv3_resnet50/101 (`cvjax.pretrained.deeplab`):
torchvision's 21-class segmenters, restored as segmentation runs. Bad input ends
with one `error: ...` line and exit status 2; nothing is written then.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import flags

from cvjax import cli, pretrained
from cvjax.errors import UserError

FLAGS = flags.FlagValues()
flags.DEFINE_string('source', None, 'keras, torchvision or darknet.', flag_values=FLAGS)
flags.DEFINE_string(
    'model', None, "The source's model name: keras vgg16, vgg19, resnet50, resnet101, "
    'resnet152, InceptionV3, Xception, DenseNet121/169/201, MobileNet, MobileNetV2, '
    'EfficientNetB0-B7; torchvision resnet18-152, vgg11-19(_bn), alexnet, and SSD\'s '
    'vgg16_features (backbone) and ssd300_vgg16 (COCO detector), deeplabv3_resnet50/101 '
    '(segmenters); darknet yolov3, yolov3_tiny.', flag_values=FLAGS)
flags.DEFINE_string('weights', None, 'keras .weights.h5 / .h5; torchvision .pth (needs torch) '
                    'or .npz; darknet .weights.', flag_values=FLAGS)
flags.DEFINE_string('out', None, 'New workdir to write (must not exist).', flag_values=FLAGS)
flags.DEFINE_integer('image_size', None, "Input size the model will be used at; default: its "
                     'natural size.', flag_values=FLAGS)
flags.DEFINE_integer('num_classes', None, 'torchvision vgg16_features only: object classes of '
                     'the detector the backbone is for (default 20).', flag_values=FLAGS)
flags.mark_flags_as_required(['source', 'model', 'weights', 'out'], flag_values=FLAGS)


def run(f: flags.FlagValues) -> int:
  if not os.path.isfile(f.weights):
    raise UserError(f'--weights={f.weights} does not exist')
  out = pretrained.convert(f.source, f.model, f.weights, f.out, f.image_size, f.num_classes)
  print(f'wrote {out} ({f.source} {f.model}); use cvjax.restore({out!r}) or '
        f'--init_from={out}')
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
