"""Converts Keras or torchvision weights into a cvjax workdir.

  python -m cvjax.convert --source=keras --model=resnet50 --weights=resnet50.weights.h5 \
      --out=runs/resnet50_keras
  python -m cvjax.convert --source=torchvision --model=resnet18 --weights=resnet18.npz \
      --out=runs/resnet18_torchvision

DIR then works with `cvjax.restore(DIR)` (predict applies the source's preprocessing)
and `--init_from=DIR`. Bad input ends with one `error: ...` line and exit status 2;
nothing is written then.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


class _Parser(argparse.ArgumentParser):
  """argparse that reports bad arguments as one `error:` line (exit 2)."""

  def error(self, message):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  parser = _Parser(prog='python -m cvjax.convert', description=__doc__.splitlines()[0])
  parser.add_argument('--source', required=True, help='keras or torchvision')
  parser.add_argument('--model', required=True,
                      help='the source\'s model name: keras vgg16, vgg19, resnet50, resnet101, '
                           'resnet152, InceptionV3, Xception, DenseNet121/169/201, MobileNet, '
                           'MobileNetV2, EfficientNetB0-B7; torchvision resnet18-152, '
                           'vgg11-19(_bn), alexnet')
  parser.add_argument('--weights', required=True,
                      help='keras .weights.h5 / .h5; torchvision .pth (needs torch) or .npz')
  parser.add_argument('--out', required=True, help='new workdir to write (must not exist)')
  parser.add_argument('--image_size', type=int, default=None,
                      help='input size the model will be used at; default: its natural size')
  args = parser.parse_args(argv)
  from cvjax import pretrained  # pylint: disable=g-import-not-at-top
  from cvjax.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    if not os.path.isfile(args.weights):
      raise UserError(f'--weights={args.weights} does not exist')
    out = pretrained.convert(args.source, args.model, args.weights, args.out, args.image_size)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {out} ({args.source} {args.model}); use cvjax.restore({out!r}) or '
        f'--init_from={out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
