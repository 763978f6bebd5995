"""Draws images from a trained generative run, or scores its samples in a classifier's features.

    python -m cvjax.sample --workdir=W --num=64 --out=grid.png [--seed=0] [--steps=50] [--eta=0]
    python -m cvjax.sample --workdir=W --interpolate --out=interp.png       (VAE, autoencoder)
    python -m cvjax.sample --workdir=W --fd_classifier=C [--num=10000] [--steps=50] [--json]
        [--fd_split=validation]

Restores the run's newest good checkpoint (`cvjax.restore`; --step picks another), from
any of the generative tasks (vae, gan, diffusion; an autoencoder only interpolates).

--out: a grid of --num samples drawn with --seed (rows of ⌈√num⌉, 2 white pixels apart).
  Diffusion runs sample ancestrally through all their noise levels, or with --steps by
  DDIM (--eta 0: deterministic); a conditional GAN draws classes 0, 1, ... in turn.
--interpolate: 8 rows of 10 images decoded along straight lines between two codes: for
  a VAE, two draws of the prior N(0, I); for an autoencoder, the codes of two test images.
--fd_classifier=C: the Fréchet distance and KID (the unbiased MMD², not scaled) between
  --num samples and --num images of the run's dataset's test split (--fd_split=validation:
  its validation split, to choose on), both in the
  features of the classification run C (the input of its last dense layer), and the same
  between --num images of the training split and the test split: the real-data floor.
  These are NOT Inception FID/KID (whose weights cannot be downloaded here): numbers are
  comparable only in the same classifier's features.

Bad input: one `error: ...` line on stderr, exit status 2, nothing written.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow only reads the dataset here

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from cvjax import cli  # noqa: E402
from cvjax.errors import UserError  # noqa: E402

GAP = 2             # white pixels between the grid's images
BATCH = 500         # images per sampling and feature batch
INTERPOLATION = (8, 10)  # rows, images per row

FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', None, 'A cvjax generative run directory (task vae, gan, diffusion '
                    'or autoencoder).', flag_values=FLAGS)
flags.DEFINE_integer('num', 64, 'Samples in the grid, or for --fd_classifier on each side.',
                     flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'Seed of the samples.', flag_values=FLAGS)
flags.DEFINE_string('out', None, 'Where to write the grid (by extension: .png, .jpg, ...).',
                    flag_values=FLAGS)
flags.DEFINE_integer('steps', None, 'Diffusion runs: DDIM with this many noise levels '
                     '(default: ancestral sampling through all of them).', flag_values=FLAGS)
flags.DEFINE_float('eta', 0.0, 'Diffusion runs with --steps: DDIM\'s eta (0 deterministic, 1 '
                   'the DDPM posterior\'s noise).', flag_values=FLAGS)
flags.DEFINE_bool('interpolate', False, 'Write a latent interpolation (VAE, autoencoder).',
                  flag_values=FLAGS)
flags.DEFINE_string('fd_classifier', None, 'A classification run whose features score the '
                    'samples (Fréchet distance, KID) against --fd_split.', flag_values=FLAGS)
flags.DEFINE_string('fd_split', 'test', 'The real images --fd_classifier scores against: '
                    'test (the number to report, once) or validation (to choose a run, '
                    'a checkpoint or a setting on).', flag_values=FLAGS)
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest good one).',
                     flag_values=FLAGS)
flags.DEFINE_bool('json', False, 'Print one JSON object.', flag_values=FLAGS)
flags.mark_flags_as_required(['workdir'], flag_values=FLAGS)


def grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
  """uint8[n, H, W, C] → one uint8[rows·(H+GAP)−GAP, cols·(W+GAP)−GAP, C] picture, row by
  row, white between and after the last image."""
  n, h, w, c = images.shape
  cols = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  out = np.full((rows * (h + GAP) - GAP, cols * (w + GAP) - GAP, c), 255, np.uint8)
  for i, image in enumerate(images):
    r, q = divmod(i, cols)
    out[r * (h + GAP):r * (h + GAP) + h, q * (w + GAP):q * (w + GAP) + w] = image
  return out


def write_picture(path: str, picture: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(path)


def split_images(config, split: str, n: int) -> np.ndarray:
  """The first n images of the run's dataset `split`, as stored: uint8[n, H, W, C]."""
  from cvjax.data import datasets, prepare  # pylint: disable=g-import-not-at-top
  try:
    builder = prepare.prepared_builder(config.dataset, data_dir=config.data_dir,
                                       raw_data_dir=config.raw_data_dir, download=False)
    ds = builder.as_dataset(split=datasets.tfds_split(config.dataset, split),
                            shuffle_files=False)
    images = [ex['image'] for ex in ds.take(n).as_numpy_iterator()]
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # TFDS: not prepared here
    raise UserError(f'cannot read {config.dataset} {split} here: {type(e).__name__}') from None
  if len(images) < n:
    raise UserError(f'--num={n} but {config.dataset} {split} has {len(images)} images')
  return np.stack(images)


def draw(restored, n: int, seed: int, steps: int | None, eta: float) -> np.ndarray:
  """n samples, in batches of BATCH (batch i drawn with seed·10⁶ + i)."""
  options = {'steps': steps, 'eta': eta} if restored.config.task == 'diffusion' else {}
  out = []
  for i, start in enumerate(range(0, n, BATCH)):
    out.append(restored.sample(min(BATCH, n - start), seed=seed * 1_000_000 + i, **options))
  return np.concatenate(out)


def interpolation(restored, seed: int) -> np.ndarray:
  """INTERPOLATION rows of decoded codes on straight lines between two end codes."""
  rows, cols = INTERPOLATION
  if restored.config.task == 'vae':
    import jax  # pylint: disable=g-import-not-at-top
    latent = restored.encode(np.zeros((1,) + _image_shape(restored), np.uint8)).shape[-1]
    ends = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (2, rows, latent)))
  else:
    test = split_images(restored.config, 'test', 2 * rows)
    ends = restored.encode(test).reshape(2, rows, -1)
  weights = np.linspace(0.0, 1.0, cols)[None, :, None]
  codes = ends[0][:, None] * (1 - weights) + ends[1][:, None] * weights     # [rows, cols, L]
  return restored.decode(codes.reshape(rows * cols, -1).astype(np.float32))


def _image_shape(restored) -> tuple[int, int, int]:
  from cvjax.train import factory  # pylint: disable=g-import-not-at-top
  _, size, _, channels = factory.input_shape(restored.config)
  return (size, size, channels)


def classifier_features(classifier_dir: str):
  """features(uint8[n, H, W, C]) → f32[n, D] in the classification run's features."""
  from cvjax import data, restoring  # pylint: disable=g-import-not-at-top
  from cvjax.generation import frechet  # pylint: disable=g-import-not-at-top
  from cvjax.train import factory  # pylint: disable=g-import-not-at-top
  clf = restoring.restore(classifier_dir)
  if clf.config.task != 'classification':
    raise UserError(f'--fd_classifier={classifier_dir} is a {clf.config.task} run, not a '
                    'classification run')
  _, size, _, channels = factory.input_shape(clf.config)
  extract = frechet.feature_extractor(clf.model, clf.variables)

  def features(images: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(images), BATCH):
      x = data.preprocess_for_eval(images[start:start + BATCH], dataset=clf.config.dataset,
                                   image_size=size, channels=channels,
                                   preprocessing=clf.config.preprocessing)
      out.append(np.asarray(extract(x), np.float64))
    return np.concatenate(out)
  return features


def fd_report(restored, workdir: str, classifier_dir: str, n: int, seed: int, steps, eta,
              split: str = 'test') -> dict:
  """Fréchet distance and KID of n samples and of n training images (the floor), each
  against the first n images of `split` (test, or validation to choose on), in the
  classifier's features."""
  from cvjax.generation import frechet  # pylint: disable=g-import-not-at-top
  features = classifier_features(classifier_dir)
  config = restored.config
  started = time.time()
  fake = draw(restored, n, seed, steps, eta)
  sampling_seconds = time.time() - started
  real = features(split_images(config, split, n))
  train = features(split_images(config, config.train_split, n))
  real_stats = frechet.statistics(real)

  def scores(f):
    kid, kid_std = frechet.kernel_distance(f, real, seed=seed)
    return {'fd': frechet.frechet_distance(*frechet.statistics(f), *real_stats),
            'kid': kid, 'kid_std': kid_std}
  return {'workdir': workdir, 'model': config.model, 'step': restored.step,
          'classifier': classifier_dir, 'num': n, 'seed': seed, 'steps': steps,
          'against': split,
          'samples': scores(features(fake)), 'real_floor': scores(train),
          'floor_split': config.train_split, 'sampling_seconds': round(sampling_seconds, 1)}


def _check(f: flags.FlagValues) -> None:
  if f.num < 1:
    raise UserError(f'--num must be at least 1, got {f.num}')
  if f.fd_split not in ('test', 'validation'):
    raise UserError(f'--fd_split must be test or validation, got {f.fd_split!r}')
  if f.steps is not None and f.steps < 1:
    raise UserError(f'--steps must be at least 1, got {f.steps}')
  modes = [m for m in ('out', 'fd_classifier') if getattr(f, m)]
  if not modes:
    raise UserError('say what to do: --out=grid.png (with --interpolate for an interpolation) '
                    'or --fd_classifier=RUN')
  if len(modes) > 1:
    raise UserError('--out and --fd_classifier are separate commands: give one of them')
  if f.out:
    cli.check_image_out(f.out)
  if f.interpolate and not f.out:
    raise UserError('--interpolate writes a picture: add --out=interp.png')


def run(f: flags.FlagValues) -> int:
  _check(f)
  from cvjax import restoring  # pylint: disable=g-import-not-at-top
  restored = restoring.restore(f.workdir, f.step)
  if restored.sample is None:
    raise UserError(f'--workdir={f.workdir} is a {restored.config.task} run, not a generative '
                    'one (vae, gan, diffusion, autoencoder)')
  if f.steps is not None and restored.config.task != 'diffusion':
    raise UserError(f'--steps is for diffusion runs; {f.workdir} is a {restored.config.task} run')
  if f.fd_classifier:
    report = fd_report(restored, f.workdir, f.fd_classifier, f.num, f.seed, f.steps, f.eta,
                       f.fd_split)
    if f.json:
      print(json.dumps(report))
      return 0
    print(f'{report["model"]} at step {report["step"]}: {f.num} samples against {f.num} '
          f'{f.fd_split} images, in the features of {f.fd_classifier} (not Inception FID)')
    for name, key in (('samples', 'samples'), (f'{report["floor_split"]} images', 'real_floor')):
      s = report[key]
      print(f'{name:<28} Fréchet distance {s["fd"]:10.3f}   KID {s["kid"]:.5f} ± '
            f'{s["kid_std"]:.5f}')
    return 0
  if f.interpolate:
    if restored.decode is None:
      raise UserError(f'--interpolate needs an autoencoder or VAE run; {f.workdir} is a '
                      f'{restored.config.task} run')
    picture = grid(interpolation(restored, f.seed), columns=INTERPOLATION[1])
    what = f'{INTERPOLATION[0]} interpolations of {INTERPOLATION[1]} images'
  else:
    picture = grid(draw(restored, f.num, f.seed, f.steps, f.eta))
    what = f'{f.num} samples (seed {f.seed})'
  write_picture(f.out, picture)
  if f.json:
    print(json.dumps({'out': f.out, 'step': restored.step, 'what': what}))
  else:
    print(f'{what} of {restored.config.model} at step {restored.step}, written to {f.out}')
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
