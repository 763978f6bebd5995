"""Upscales an image file with a trained super-resolution run, or scores the run on whole photographs.

    python -m cvjax.superres --workdir=runs/edsr_x2 --image=small.png --out=big.png [--json]
    python -m cvjax.superres --workdir=runs/edsr_x2 --image=photo.png --compare [--out=cmp.png]
    python -m cvjax.superres --workdir=A,B,C --image=photo.png --compare --out=cmp.png --crop=0,0,96
    python -m cvjax.superres --workdir=runs/edsr_x2 --evaluate [--split=test] [--json]

Restores the run's newest good checkpoint (`cvjax.restore`; --step picks another); the
scale r is its model's.

--image --out: the image (PNG, JPEG, ...; gray stays gray, RGBA drops its alpha) upscaled
  xr by the model, written to --out (format by extension). Any size of 1 pixel or more.
--compare: the image is NOT upscaled; it is taken as the high-resolution ORIGINAL, and the
  protocol of the SR benchmarks is run on it: it is modcropped (its bottom rows and right
  columns cut to multiples of r), downscaled x1/r exactly as training makes its inputs
  (bicubic, antialiased, rounded to 8 bits), and that low-resolution image is upscaled
  again by bicubic and by the model. Prints the PSNR-Y (dB) and SSIM-Y of each against
  the original (Y of MATLAB's rgb2ycbcr, r pixels shaved), one line per method
  ('bicubic', 'model'); with --out writes the three panels bicubic | model | original
  side by side, 4 white pixels apart. Its sides must be at least 8·r pixels. Several
  runs of one scale (--workdir=A,B,C) give bicubic | A | B | C | original, one score
  line each, labelled by model; --crop=TOP,LEFT,SIZE writes only that square of every
  panel (pixels of the modcropped original; the scores stay those of whole images).
--evaluate: the same protocol on every photograph of the run's dataset split (--split,
  default test), whole, not the central windows training evaluates: one line per
  photograph and the means; with --json one JSON object {"split", "scale", "model",
  "images": [{"name", "bicubic_psnr_y", "psnr_y", "bicubic_ssim_y", "ssim_y"}], "mean"}.

Bad input: one `error: ...` line on stderr, exit status 2, nothing written.
The protocol: `cvjax.superresolution.evaluate`.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow only resizes and reads here

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from cvjax import cli  # noqa: E402
from cvjax.errors import UserError  # noqa: E402

GAP = 4            # white pixels between the panels of --compare
MIN_COMPARE = 8    # --compare: the LR input's sides, at least; the original's: MIN_COMPARE·r
_GRAY_MODES = frozenset({'1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'})

FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', None, 'A cvjax super-resolution run directory (--task=superres); '
                    'with --compare, several separated by commas.', flag_values=FLAGS)
flags.DEFINE_string('image', None, 'Image file (PNG, JPEG, ...) to upscale, or with --compare '
                    'the high-resolution original.', flag_values=FLAGS)
flags.DEFINE_string('out', None, 'Where to write the upscaled image, or with --compare the '
                    'bicubic | model | original picture (format by extension: .png, .jpg, ...).',
                    flag_values=FLAGS)
flags.DEFINE_bool('compare', False, 'Treat --image as the high-resolution original: downscale '
                  'it as training does, upscale by bicubic and by the model, print each one\'s '
                  'PSNR-Y and SSIM-Y against it.', flag_values=FLAGS)
flags.DEFINE_bool('evaluate', False, 'Score bicubic and the model on every whole photograph of '
                  'the run\'s dataset split (--split), as --compare does one.', flag_values=FLAGS)
flags.DEFINE_string('crop', None, '--compare --out: TOP,LEFT,SIZE, the square of each panel '
                    'written (pixels of the original).', flag_values=FLAGS)
flags.DEFINE_string('split', 'test', 'The split --evaluate scores.', flag_values=FLAGS)
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest good one).',
                     flag_values=FLAGS)
flags.DEFINE_bool('json', False, 'Print one JSON object.', flag_values=FLAGS)
flags.mark_flags_as_required(['workdir'], flag_values=FLAGS)


# ---------------------------------------------------------------- inputs


def read_image(path: str) -> np.ndarray:
  """uint8[H, W, 1] for a gray image file, uint8[H, W, 3] otherwise (RGBA drops its alpha,
  a palette becomes RGB); `cli.read_image`'s errors for a file that is not one."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  mode = 'RGB'
  try:
    with Image.open(path) as image:
      mode = 'L' if image.mode in _GRAY_MODES else 'RGB'
  except Exception:  # pylint: disable=broad-except  # cli.read_image says what is wrong
    pass
  return cli.read_image(path, 'image', mode)


def check_out(path: str) -> None:
  """`UserError` unless an image can be written at `path`: a known extension, in a
  directory that exists."""
  cli.check_image_out(path)
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise UserError(f'--out={path}: the directory {parent} does not exist; create it first '
                    'or write elsewhere')
  if os.path.isdir(path):
    raise UserError(f'--out={path} is a directory; give an image file path')


def superres_config(workdir: str):
  """The TrainConfig of `workdir` and its model's scale; a `UserError` unless it is a
  super-resolution run."""
  from cvjax import restoring  # pylint: disable=g-import-not-at-top  # loads JAX
  from cvjax.tasks import superres as task  # pylint: disable=g-import-not-at-top
  config = restoring.read_config(workdir)
  if config.task != 'superres':
    raise UserError(f'--workdir={workdir} is a {config.task} run (model {config.model}), not a '
                    'super-resolution one; give the workdir of a --task=superres run')
  return config, task.model_scale(config)


def check_compare_size(path: str, image: np.ndarray, scale: int) -> None:
  h, w = image.shape[:2]
  least = MIN_COMPARE * scale
  if min(h, w) < least:
    raise UserError(f'--image={path} is {w}x{h} pixels; --compare takes it as the original and '
                    f'downscales it x1/{scale}, so its sides must be at least {least} pixels '
                    f'({MIN_COMPARE} x the scale {scale}): give a larger image, or drop '
                    '--compare to upscale it')


def _mode_flags(f: flags.FlagValues) -> None:
  """`UserError` for a combination of flags that names no mode or two."""
  if f.image is None and not f.evaluate:
    raise UserError('give --image=PATH --out=PATH to upscale an image (with --compare to score '
                    'it as an original), or --evaluate to score the run on its test photographs')
  if f.image is not None and f.evaluate:
    raise UserError(f'--image={f.image} and --evaluate are two modes; give one')
  if f.evaluate and (f.out is not None or f.compare):
    raise UserError('--evaluate writes no picture and compares every photograph itself; drop '
                    + ('--out' if f.out is not None else '--compare'))
  if not f.evaluate and f['split'].present:
    raise UserError(f'--split={f.split} goes with --evaluate; add --evaluate or drop --split')
  if ',' in f.workdir and not f.compare:
    raise UserError(f'--workdir={f.workdir} names several runs, which only --compare takes; '
                    'give one workdir')
  if f.crop is not None and (not f.compare or f.out is None):
    raise UserError(f'--crop={f.crop} crops the picture --compare writes; add --compare and '
                    '--out, or drop --crop')
  if f.image is not None and not f.compare and f.out is None:
    raise UserError(f'--image={f.image} needs --out=PATH, where the upscaled image is written '
                    '(or --compare to print scores)')


# ---------------------------------------------------------------- work


def side_by_side(panels: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
  """uint8[H, n·W + (n − 1)·gap, K] of n panels uint8[H, W, K], white between them."""
  h, _, k = panels[0].shape
  white = np.full((h, gap, k), 255, np.uint8)
  parts = []
  for i, panel in enumerate(panels):
    parts.extend([white, panel] if i else [panel])
  return np.concatenate(parts, axis=1)


def save(image: np.ndarray, path: str) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pixels = image[..., 0] if image.shape[-1] == 1 else image
  try:
    Image.fromarray(pixels).save(path)
  except (OSError, ValueError) as e:
    raise UserError(f'--out={path} cannot be written ({getattr(e, "strerror", None) or e})'
                    ) from None


def upscale(workdir: str, image_path: str, out: str, step: int | None = None) -> dict:
  """The image at `image_path` upscaled by the run in `workdir`, written to `out`."""
  image = read_image(image_path)
  check_out(out)
  config, scale = superres_config(workdir)
  from cvjax import restoring  # pylint: disable=g-import-not-at-top
  restored = restoring.restore(workdir, step)
  big = restored.predict(image[None])[0]
  save(big, out)
  (h, w), (bh, bw) = image.shape[:2], big.shape[:2]
  return {'image': image_path, 'out': out, 'scale': scale, 'model': config.model,
          'input_size': [w, h], 'output_size': [bw, bh]}


def parse_crop(crop: str | None, hr_shape) -> tuple[int, int, int] | None:
  """--crop=TOP,LEFT,SIZE as ints inside an image of `hr_shape`; a `UserError` otherwise."""
  if crop is None:
    return None
  try:
    top, left, size = (int(v) for v in crop.split(','))
  except ValueError:
    raise UserError(f'--crop={crop} must be three integers TOP,LEFT,SIZE, e.g. 0,0,96') from None
  h, w = hr_shape[:2]
  if top < 0 or left < 0 or size < 1 or top + size > h or left + size > w:
    raise UserError(f'--crop={crop} is not inside the {w}x{h} original; give TOP + SIZE <= {h} '
                    f'and LEFT + SIZE <= {w}')
  return top, left, size


def compare(workdir: str, image_path: str, out: str | None, step: int | None = None,
            crop: str | None = None) -> dict:
  """--compare: the image at `image_path` as the original; the scores of bicubic and each
  run's model (`cvjax.superresolution.evaluate.score`); the panels written to `out`.
  `workdir`: one run, or several of one scale separated by commas."""
  image = read_image(image_path)
  if out is not None:
    check_out(out)
  workdirs = workdir.split(',')
  configs = [superres_config(w) for w in workdirs]
  scale = configs[0][1]
  for w, (_, s) in zip(workdirs, configs):
    if s != scale:
      raise UserError(f'--workdir: {w} upscales x{s} but {workdirs[0]} x{scale}; compare runs '
                      'of one scale')
  check_compare_size(image_path, image, scale)
  from cvjax import restoring  # pylint: disable=g-import-not-at-top
  from cvjax.superresolution import evaluate  # pylint: disable=g-import-not-at-top
  results = [evaluate.score(restoring.restore(w, step).predict, image, scale) for w in workdirs]
  first = results[0]
  window = parse_crop(crop, first['hr'].shape)
  if out is not None:
    panels = [first['bicubic'], *(r['sr'] for r in results), first['hr']]
    if window is not None:
      top, left, size = window
      panels = [p[top:top + size, left:left + size] for p in panels]
    save(side_by_side(panels), out)
  h, w = first['hr'].shape[:2]
  result = {'image': image_path, 'out': out, 'scale': scale, 'model': configs[0][0].model,
            'panel_size': [w, h], **{k: first[k] for k in evaluate.SCORE_KEYS}}
  if len(workdirs) > 1:
    result['models'] = [{'workdir': wd, 'model': c.model, 'psnr_y': r['psnr_y'],
                         'ssim_y': r['ssim_y']}
                        for wd, (c, _), r in zip(workdirs, configs, results)]
  return result


def evaluate_split(workdir: str, split: str = 'test', step: int | None = None) -> dict:
  """--evaluate: the scores of bicubic and the model on every photograph of `split`."""
  config, scale = superres_config(workdir)
  from cvjax import restoring  # pylint: disable=g-import-not-at-top
  from cvjax.superresolution import evaluate  # pylint: disable=g-import-not-at-top
  photos = list(evaluate.photographs(config.dataset, split, config.data_dir))  # checks split
  restored = restoring.restore(workdir, step)
  result = evaluate.evaluate(restored.predict, photos, scale)
  return {'split': split, 'scale': scale, 'model': config.model, 'dataset': config.dataset,
          **result}


# ---------------------------------------------------------------- output


def score_line(label: str, psnr_y: float, ssim_y: float) -> str:
  return f'{label:<8} PSNR-Y {psnr_y:7.3f} dB  SSIM-Y {ssim_y:.4f}'


def run(f: flags.FlagValues) -> int:
  _mode_flags(f)
  if f.evaluate:
    result = evaluate_split(f.workdir, f.split, f.step)
    if f.json:
      print(json.dumps({k: result[k] for k in ('split', 'scale', 'model', 'images', 'mean')}))
      return 0
    print(f'{result["model"]} x{result["scale"]} on {result["dataset"]} {result["split"]}, '
          f'whole photographs: PSNR-Y (dB) and SSIM-Y, {result["scale"]} pixels shaved')
    print(f'{"name":<24} {"bicubic PSNR-Y":>14} {"PSNR-Y":>8} {"bicubic SSIM-Y":>14} {"SSIM-Y":>8}')
    rows = result['images'] + [{'name': f'mean of {len(result["images"])}', **result['mean']}]
    for r in rows:
      print(f'{r["name"]:<24} {r["bicubic_psnr_y"]:14.3f} {r["psnr_y"]:8.3f} '
            f'{r["bicubic_ssim_y"]:14.4f} {r["ssim_y"]:8.4f}')
    return 0
  if f.compare:
    result = compare(f.workdir, f.image, f.out, f.step, f.crop)
    if f.json:
      print(json.dumps(result))
      return 0
    print(score_line('bicubic', result['bicubic_psnr_y'], result['bicubic_ssim_y']))
    models = result.get('models')
    if models is None:
      print(score_line('model', result['psnr_y'], result['ssim_y']))
    else:
      for m in models:
        print(score_line(m['model'], m['psnr_y'], m['ssim_y']))
    if f.out is not None:
      w, h = result['panel_size']
      names = ' | '.join(m['model'] for m in models) if models else 'model'
      where = ''
      if f.crop:
        top, left, size = f.crop.split(',')
        where = f', the {size}x{size} square at row {top}, column {left} of each'
      print(f'bicubic | {names} | original, {w}x{h} each{where}, written to {f.out}')
    return 0
  result = upscale(f.workdir, f.image, f.out, f.step)
  if f.json:
    print(json.dumps(result))
  else:
    (w, h), (bw, bh) = result['input_size'], result['output_size']
    print(f'{w}x{h} upscaled x{result["scale"]} by {result["model"]} to {bw}x{bh}, '
          f'written to {f.out}')
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
