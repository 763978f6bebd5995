"""`cvjax_shapes`: a TFDS dataset of coloured shapes composited over real photographs.

An offline detection (and segmentation) benchmark: every image is a random crop
of one of the photographs that ship with scikit-image (`skimage.data`), with
1-6 filled shapes of 6 classes drawn over it at random sizes (by default 10%-45% of the
image side), rotations, colours and positions. Later shapes may partly cover
earlier ones (occlusion), but a placement that would leave an earlier shape less
than 60% visible is re-drawn. Boxes are exact: the extent of each shape's
visible pixels. Everything is a pure function of (split, index), so two builds
are identical.

Features:
  image:          uint8[S, S, 3] (JPEG)
  objects/bbox:   the visible extent, tfds BBox (ymin, xmin, ymax, xmax), normalised
  objects/label:  circle, square, triangle, star, cross, ring
  objects/area:   visible pixels
  instances:      uint8[S, S, 1] (PNG): 0 background, i + 1 where object i is visible
  segmentation:   uint8[S, S, 1] (PNG): 0 background, label + 1 (semantic classes)

Configs: 'default' — 256², 6,000 train / 500 validation / 1,000 test;
'tiny' — 96², 64 / 16 / 32 (tests); one shape per image, for classification +
localisation (`cvjax.tasks.localization`), each 25%-60% of the side across:
'single' — 96², 4,000 / 500 / 500; 'single_tiny' — 64², 48 / 16 / 16 (tests).

    import cvjax.data.cvjax_shapes  # registers the builder
    tfds.builder('cvjax_shapes').download_and_prepare()   # generated here, no network
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

CLASSES = ('circle', 'square', 'triangle', 'star', 'cross', 'ring')
# Photographs in skimage.data that need no download (grayscale ones are tinted).
BACKGROUNDS = ('astronaut', 'brick', 'camera', 'chelsea', 'clock', 'coffee', 'coins', 'grass',
               'gravel', 'hubble_deep_field', 'immunohistochemistry', 'moon', 'page', 'rocket',
               'text', 'retina', 'stereo_motorcycle')
_SPLIT_SEEDS = {'train': 0, 'validation': 1, 'test': 2}
MIN_VISIBLE = 0.6  # of a shape's own pixels, after later shapes are drawn


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  image_size: int = 256
  num_train: int = 6000
  num_validation: int = 500
  num_test: int = 1000
  max_objects: int = 6
  size_range: tuple[float, float] = (0.1, 0.45)  # a shape's extent, in image sides


def _load_backgrounds() -> list[np.ndarray]:
  """uint8[H, W, 3] photographs (RGB; gray ones repeated)."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  images = []
  for name in BACKGROUNDS:
    image = getattr(data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
      image = image[0]
    image = np.asarray(image)
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=-1)
    images.append(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
  return images


def _background(rng: np.random.Generator, photos: list[np.ndarray], size: int) -> np.ndarray:
  """A random square crop (35%-100% of the shorter side) of a random photo, resized,
  randomly mirrored, gray photos tinted: float32[size, size, 3] in [0, 1]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  photo = photos[rng.integers(len(photos))]
  h, w = photo.shape[:2]
  side = int(min(h, w) * rng.uniform(0.35, 1.0))
  top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
  crop = Image.fromarray(photo[top:top + side, left:left + side])
  image = np.asarray(crop.resize((size, size), Image.BILINEAR), np.float32) / 255
  if rng.uniform() < 0.5:
    image = image[:, ::-1]
  if np.allclose(photo[..., 0], photo[..., 1]) and rng.uniform() < 0.7:
    image = image * rng.uniform(0.6, 1.0, size=3)
  return image


def _polygon(kind: str, rng: np.random.Generator) -> np.ndarray:
  """Unit-size outline of `kind` as float[n, 2] (y, x) around 0, radius ≤ 1, rotated."""
  angle = rng.uniform(0, 2 * np.pi)
  if kind == 'square':
    t = np.pi / 4 + np.arange(4) * np.pi / 2
    r = np.ones(4)
  elif kind == 'triangle':
    t = np.arange(3) * 2 * np.pi / 3
    r = np.ones(3)
  elif kind == 'star':
    t = np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
  else:  # cross: a plus sign of arm half-width 0.3
    a = 0.3
    pts = np.array([(a, 1), (a, a), (1, a), (1, -a), (a, -a), (a, -1), (-a, -1), (-a, -a),
                    (-1, -a), (-1, a), (-a, a), (-a, 1)], np.float64) / np.sqrt(1 + a * a)
    t = np.arctan2(pts[:, 0], pts[:, 1])
    r = np.hypot(pts[:, 0], pts[:, 1])
  t = t + angle
  return np.stack([r * np.sin(t), r * np.cos(t)], axis=-1)


def _shape_mask(kind: str, rng: np.random.Generator, size: int,
                size_range: tuple[float, float] = (0.1, 0.45)) -> np.ndarray:
  """bool[size, size]: one shape of `kind`, `size_range` (log-uniform) of the side
  across, anywhere (at least half of its extent inside the image)."""
  from skimage import draw  # pylint: disable=g-import-not-at-top
  radius = size * np.exp(rng.uniform(np.log(size_range[0] / 2), np.log(size_range[1] / 2)))
  cy, cx = rng.uniform(0, size, size=2)
  mask = np.zeros((size, size), bool)
  if kind in ('circle', 'ring'):
    rr, cc = draw.disk((cy, cx), radius, shape=mask.shape)
    mask[rr, cc] = True
    if kind == 'ring':
      rr, cc = draw.disk((cy, cx), radius * rng.uniform(0.45, 0.65), shape=mask.shape)
      mask[rr, cc] = False
  else:
    points = _polygon(kind, rng) * radius + (cy, cx)
    rr, cc = draw.polygon(points[:, 0], points[:, 1], shape=mask.shape)
    mask[rr, cc] = True
  return mask


def _colour(rng: np.random.Generator) -> np.ndarray:
  """A saturated random colour, float32[3] in [0, 1]."""
  import colorsys  # pylint: disable=g-import-not-at-top
  return np.asarray(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1.0),
                                        rng.uniform(0.45, 1.0)), np.float32)


def generate(split: str, index: int, config: ShapesConfig,
             photos: list[np.ndarray]) -> dict:
  """Example `index` of `split`: a pure function of its arguments."""
  size = config.image_size
  rng = np.random.default_rng([_SPLIT_SEEDS[split], index, size])
  image = _background(rng, photos, size)
  instances = np.zeros((size, size), np.int32)   # 0 background, i + 1 object i
  labels, own_areas = [], []
  for _ in range(rng.integers(1, config.max_objects + 1)):
    for _ in range(10):  # tries to place this shape without hiding others too much
      label = int(rng.integers(len(CLASSES)))
      mask = _shape_mask(CLASSES[label], rng, size, config.size_range)
      if mask.sum() < 16:
        continue
      covered = np.bincount(instances[mask], minlength=len(labels) + 1)[1:]
      visible = np.bincount(instances.ravel(), minlength=len(labels) + 1)[1:] - covered
      if all(v >= MIN_VISIBLE * a for v, a in zip(visible, own_areas)):
        break
    else:
      continue
    colour = _colour(rng)
    shading = 1 + 0.15 * np.linspace(-1, 1, size)[:, None] * rng.uniform(-1, 1)
    texture = colour * shading[..., None] + rng.normal(0, 0.03, (size, size, 3))
    image[mask] = np.clip(texture[mask], 0, 1)
    labels.append(label)
    own_areas.append(int(mask.sum()))
    instances[mask] = len(labels)
  boxes, areas = [], []
  for i in range(1, len(labels) + 1):
    ys, xs = np.nonzero(instances == i)
    boxes.append(tfds.features.BBox(ymin=ys.min() / size, xmin=xs.min() / size,
                                    ymax=(ys.max() + 1) / size, xmax=(xs.max() + 1) / size))
    areas.append(len(ys))
  semantic = np.where(instances > 0, np.asarray([0] + labels)[instances] + 1, 0)
  return {
      'image': (image * 255 + 0.5).astype(np.uint8),
      'image/id': index,
      'objects': {'bbox': boxes, 'label': labels, 'area': areas},
      'instances': instances.astype(np.uint8)[..., None],
      'segmentation': semantic.astype(np.uint8)[..., None],
  }


class CvjaxShapes(tfds.core.GeneratorBasedBuilder):
  """Shapes over photographs with exact boxes and masks (see module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [
      ShapesConfig(name='default', description='256x256, 6000/500/1000 images.'),
      ShapesConfig(name='tiny', description='96x96, 64/16/32 images, for tests.',
                   image_size=96, num_train=64, num_validation=16, num_test=32),
      ShapesConfig(name='single', description='96x96, one shape each, 4000/500/500 images.',
                   image_size=96, num_train=4000, num_validation=500, num_test=500,
                   max_objects=1, size_range=(0.25, 0.6)),
      ShapesConfig(name='single_tiny', description='64x64, one shape each, 48/16/16 images, '
                   'for tests.', image_size=64, num_train=48, num_validation=16, num_test=16,
                   max_objects=1, size_range=(0.25, 0.6)),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(size, size, 3), encoding_format='jpeg'),
            'image/id': np.int64,
            'objects': tfds.features.Sequence({
                'bbox': tfds.features.BBoxFeature(),
                'label': tfds.features.ClassLabel(names=CLASSES),
                'area': np.int64,
            }),
            'instances': tfds.features.Image(shape=(size, size, 1)),
            'segmentation': tfds.features.Image(shape=(size, size, 1)),
        }),
        supervised_keys=None,
        homepage='https://scikit-image.org/docs/stable/api/skimage.data.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is generated
    config = self.builder_config
    return {'train': self._generate_examples('train', config.num_train),
            'validation': self._generate_examples('validation', config.num_validation),
            'test': self._generate_examples('test', config.num_test)}

  def _generate_examples(self, split: str, count: int):
    photos = _load_backgrounds()
    for index in range(count):
      yield index, generate(split, index, self.builder_config, photos)
