"""`cvjax_shapes_video`: short videos of shapes moving over a photograph, with
MOTChallenge ground truth — an offline multi-object tracking benchmark.

Sequence `index` of seed `seed` is a pure function of the two: a static background (a
crop of a scikit-image photograph, as in `cvjax.data.cvjax_shapes`) and 3-8 filled shapes
of `shapes.CLASSES`, each with its own colour, size and depth. Shapes move at constant
velocity (1-4 px/frame, plus a small random walk). They come in pairs aimed at a
shared point at a shared time, so pairs cross, and the nearer one hides the farther;
many start or end outside the frame (they enter and leave it).

Ground truth per frame and object with at least one pixel inside the frame:
frame (from 1), id (from 1), the full box of the shape clipped to the frame (left,
top, width, height in pixels, occluded parts included, as MOTChallenge), consider
flag 1, class (label + 1) and visibility (visible fraction of its in-frame pixels).

    seq = generate_sequence(index=0, seed=0)       # frames uint8[T, H, W, 3], gt f64[N, 10]
    write_sequence('data/shapes_video/seq-0000', index=0, seed=0)   # img1/, gt/gt.txt, seqinfo.ini
    det = noisy_detections(seq['gt'], seed=0)      # MOTChallenge det rows

`cvjax_shapes_crops` (the TFDS builder `CvjaxShapesCrops`, a classification dataset of
`cvjax.data.datasets`): 32² crops of the objects of such videos labelled by shape class ×
hue bin, what DeepSORT's appearance embedder (`appearance_cnn`) trains on.
"""
from __future__ import annotations

import configparser
import dataclasses
import functools
import os

import numpy as np
import tensorflow_datasets as tfds

from cvjax.data import cvjax_shapes as shapes
from cvjax.tracking import mot


@dataclasses.dataclass(frozen=True)
class VideoConfig:
  """Sequence size: frames `num_frames` of height × width pixels, `min_objects`..
  `max_objects` shapes of radius `min_radius`..`max_radius` pixels."""
  width: int = 320
  height: int = 240
  num_frames: int = 60
  min_objects: int = 3
  max_objects: int = 8
  min_radius: float = 12.0
  max_radius: float = 28.0
  frame_rate: int = 10


TINY = VideoConfig(width=128, height=96, num_frames=16, min_objects=2, max_objects=4,
                   min_radius=8.0, max_radius=14.0)




@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
  return tuple(shapes._load_backgrounds())  # pylint: disable=protected-access


def _objects(rng: np.random.Generator, config: VideoConfig) -> list[dict]:
  """Each object's class, colour, radius, outline and centre f64[T, 2] (x, y) per frame."""
  t = np.arange(config.num_frames, dtype=np.float64)
  objects = []
  count = int(rng.integers(config.min_objects, config.max_objects + 1))
  for i in range(count):
    if i % 2 == 0:  # a new pair: where and when its two shapes cross
      meet = rng.uniform([0.2 * config.width, 0.2 * config.height],
                         [0.8 * config.width, 0.8 * config.height])
      meet_time = rng.uniform(0.25, 0.75) * config.num_frames
      angle = rng.uniform(0, 2 * np.pi)
    else:  # the partner comes from another direction
      angle = angle + rng.uniform(np.pi / 3, np.pi)
    label = int(rng.integers(len(shapes.CLASSES)))
    kind = shapes.CLASSES[label]
    radius = rng.uniform(config.min_radius, config.max_radius)
    velocity = rng.uniform(1.0, 4.0) * np.array([np.cos(angle), np.sin(angle)])
    walk = np.cumsum(rng.normal(0, 0.15, (config.num_frames, 2)), axis=0)  # velocity noise
    centre = (meet + rng.normal(0, radius / 3, 2) + velocity * (t[:, None] - meet_time)
              + np.cumsum(walk, axis=0) * 0.1)
    objects.append({
        'label': label, 'kind': kind, 'radius': radius, 'centre': centre,
        'outline': None if kind in ('circle', 'ring') else shapes._polygon(kind, rng),  # pylint: disable=protected-access
        'hole': rng.uniform(0.45, 0.65), 'colour': shapes._colour(rng),  # pylint: disable=protected-access
    })
  return objects


def _draw(obj: dict, t: int, shape: tuple[int, int]) -> tuple[np.ndarray, tuple]:
  """bool[H, W] mask of `obj` at frame t and its full (unclipped) box (x0, y0, x1, y1)."""
  from skimage import draw  # pylint: disable=g-import-not-at-top
  cx, cy = obj['centre'][t]
  r = obj['radius']
  mask = np.zeros(shape, bool)
  if obj['outline'] is None:
    rr, cc = draw.disk((cy, cx), r, shape=shape)
    mask[rr, cc] = True
    if obj['kind'] == 'ring':
      rr, cc = draw.disk((cy, cx), r * obj['hole'], shape=shape)
      mask[rr, cc] = False
    return mask, (cx - r, cy - r, cx + r, cy + r)
  points = obj['outline'] * r + (cy, cx)  # (y, x)
  rr, cc = draw.polygon(points[:, 0], points[:, 1], shape=shape)
  mask[rr, cc] = True
  return mask, (points[:, 1].min(), points[:, 0].min(), points[:, 1].max(), points[:, 0].max())


def generate_sequence(index: int, seed: int = 0, config: VideoConfig = VideoConfig()) -> dict:
  """Sequence `index` of `seed`: {'frames': uint8[T, H, W, 3] RGB, 'gt': f64[N, 10]
  MOTChallenge ground truth (module docstring), 'labels': int[K] class and
  'colours': f32[K, 3] RGB colour in [0, 1] of object id k + 1}. A pure function of its arguments."""
  rng = np.random.default_rng([seed, index, config.width, config.height, config.num_frames])
  size = max(config.width, config.height)
  background = shapes._background(rng, list(_photos()), size)[:config.height, :config.width]  # pylint: disable=protected-access
  objects = _objects(rng, config)
  depth = rng.permutation(len(objects))  # drawn far to near
  frames = np.empty((config.num_frames, config.height, config.width, 3), np.uint8)
  rows = []
  shape = (config.height, config.width)
  for t in range(config.num_frames):
    image = background.copy()
    owner = np.zeros(shape, np.int32)
    drawn = {}
    for k in depth:
      mask, box = _draw(objects[k], t, shape)
      noise = rng.normal(0, 0.03, (int(mask.sum()), 3))
      image[mask] = np.clip(objects[k]['colour'] + noise, 0, 1)
      owner[mask] = k + 1
      drawn[k] = (int(mask.sum()), box)
    visible = np.bincount(owner.ravel(), minlength=len(objects) + 1)
    for k in range(len(objects)):
      pixels, (x0, y0, x1, y1) = drawn[k]
      if pixels == 0:
        continue
      x0, y0 = max(x0, 0.0), max(y0, 0.0)
      x1, y1 = min(x1, float(config.width)), min(y1, float(config.height))
      rows.append([t + 1, k + 1, x0, y0, x1 - x0, y1 - y0, 1, objects[k]['label'] + 1,
                   visible[k + 1] / pixels, -1])
    frames[t] = (image * 255 + 0.5).astype(np.uint8)
  gt = np.asarray(rows, np.float64).reshape(-1, 10)
  return {'frames': frames, 'gt': gt[np.lexsort((gt[:, 1], gt[:, 0]))],
          'labels': np.array([o['label'] for o in objects]),
          'colours': np.array([o['colour'] for o in objects])}


def write_sequence(directory: str, index: int, seed: int = 0,
                   config: VideoConfig = VideoConfig()) -> dict:
  """Writes sequence (index, seed) as a MOTChallenge directory: img1/000001.jpg ...,
  gt/gt.txt, seqinfo.ini. Returns generate_sequence's dict."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  seq = generate_sequence(index, seed, config)
  os.makedirs(os.path.join(directory, 'img1'), exist_ok=True)
  for t, frame in enumerate(seq['frames']):
    Image.fromarray(frame).save(os.path.join(directory, 'img1', f'{t + 1:06d}.jpg'), quality=95)
  mot.write(os.path.join(directory, 'gt', 'gt.txt'), seq['gt'])
  info = configparser.ConfigParser()
  info.optionxform = str  # MOTChallenge's keys are camelCase
  info['Sequence'] = {'name': os.path.basename(os.path.normpath(directory)), 'imDir': 'img1',
                      'frameRate': str(config.frame_rate), 'seqLength': str(config.num_frames),
                      'imWidth': str(config.width), 'imHeight': str(config.height),
                      'imExt': '.jpg'}
  with open(os.path.join(directory, 'seqinfo.ini'), 'w') as f:
    info.write(f, space_around_delimiters=False)
  return seq


def noisy_detections(gt: np.ndarray, seed: int = 0, *, miss_rate: float = 0.1,
                     min_visibility: float = 0.4, jitter: float = 0.05,
                     false_positives: float = 0.3, image_size: tuple[int, int] | None = None
                     ) -> np.ndarray:
  """A detector's output simulated from ground truth rows f[N, 10]: MOTChallenge det
  rows f[M, 10] (id -1), sorted by frame.

  Objects less than `min_visibility` visible are missed, the others with probability
  `miss_rate`; box edges move by normal noise of std `jitter` × the box size;
  each frame gets Poisson(`false_positives`) boxes of typical size at random places
  inside `image_size` (width, height; default: the extent of the ground truth).
  Confidences: U(0.5, 1) true, U(0.3, 0.7) false.
  """
  rng = np.random.default_rng([seed, 7])
  gt = np.asarray(gt, np.float64).reshape(-1, 10)
  if image_size is None:
    image_size = (float((gt[:, 2] + gt[:, 4]).max(initial=1)),
                  float((gt[:, 3] + gt[:, 5]).max(initial=1)))
  rows = []
  for row in gt:
    if row[8] < min_visibility or rng.uniform() < miss_rate:
      continue
    left, top, w, h = row[2:6]
    x0, x1 = np.array([left, left + w]) + rng.normal(0, jitter * w, 2)
    y0, y1 = np.array([top, top + h]) + rng.normal(0, jitter * h, 2)
    if x1 - x0 > 1 and y1 - y0 > 1:
      rows.append([row[0], -1, x0, y0, x1 - x0, y1 - y0, rng.uniform(0.5, 1.0), -1, -1, -1])
  sizes = gt[:, 4:6] if len(gt) else np.array([[20.0, 20.0]])
  for frame in np.unique(gt[:, 0]):
    for _ in range(rng.poisson(false_positives)):
      w, h = sizes[rng.integers(len(sizes))]
      x, y = rng.uniform(0, max(image_size[0] - w, 1)), rng.uniform(0, max(image_size[1] - h, 1))
      rows.append([frame, -1, x, y, w, h, rng.uniform(0.3, 0.7), -1, -1, -1])
  det = np.asarray(rows, np.float64).reshape(-1, 10)
  return det[np.argsort(det[:, 0], kind='stable')]


# Appearance classes of the crops dataset: shape class × hue bin.
HUE_NAMES = ('red', 'yellow', 'green', 'cyan', 'blue', 'magenta')
CROP_CLASSES = tuple(f'{c}_{h}' for c in shapes.CLASSES for h in HUE_NAMES)
CROPS_VIDEO = VideoConfig(width=160, height=120, num_frames=20, min_objects=2, max_objects=5,
                          min_radius=8.0, max_radius=18.0)
_CROPS_SPLITS = {'train': (100, 150), 'validation': (101, 20), 'test': (102, 20)}  # seed, count


def appearance_class(label: int, colour: np.ndarray) -> int:
  """Index into CROP_CLASSES of a shape of class `label` and RGB `colour` in [0, 1]."""
  import colorsys  # pylint: disable=g-import-not-at-top
  hue = colorsys.rgb_to_hsv(*(float(c) for c in colour))[0]
  return label * len(HUE_NAMES) + int(hue * len(HUE_NAMES) + 0.5) % len(HUE_NAMES)


def object_crops(index: int, seed: int, config: VideoConfig = CROPS_VIDEO, size: int = 32,
                 min_visibility: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """Every ground-truth box at least `min_visibility` visible in sequence (index, seed),
  cut out and resized: uint8[N, size, size, 3] crops and int[N] appearance classes."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  seq = generate_sequence(index, seed, config)
  crops, classes = [], []
  for row in seq['gt']:
    x0, y0 = int(row[2]), int(row[3])
    x1, y1 = int(np.ceil(row[2] + row[4])), int(np.ceil(row[3] + row[5]))
    if row[8] < min_visibility or x1 - x0 < 4 or y1 - y0 < 4:
      continue
    k = int(row[1]) - 1
    crop = seq['frames'][int(row[0]) - 1, y0:y1, x0:x1]
    crops.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR)))
    classes.append(appearance_class(int(seq['labels'][k]), seq['colours'][k]))
  return (np.asarray(crops, np.uint8).reshape(-1, size, size, 3), np.asarray(classes, np.int64))


class CvjaxShapesCrops(tfds.core.GeneratorBasedBuilder):
  """`cvjax_shapes_crops`: 32² crops of the objects of generated shape videos, labelled by
  appearance (shape class × hue bin, CROP_CLASSES): the training set of the appearance
  embedder DeepSORT can use. Splits: train (150 sequences), validation and test (20 each),
  of different seeds; each sequence gives every frame's crop of every object at least
  half visible."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(32, 32, 3)),
            'label': tfds.features.ClassLabel(names=CROP_CLASSES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-image.org/docs/stable/api/skimage.data.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is generated
    return {split: self._generate_examples(seed, count)
            for split, (seed, count) in _CROPS_SPLITS.items()}

  def _generate_examples(self, seed: int, count: int):
    for index in range(count):
      crops, classes = object_crops(index, seed)
      for i, (crop, label) in enumerate(zip(crops, classes)):
        yield f'{index}-{i}', {'image': crop, 'label': int(label)}
