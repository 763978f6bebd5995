"""`cvjax_sr_photos`: an offline set of whole photographs for super-resolution (SR).

DIV2K / Set5 cannot be downloaded here, so this builder stores the natural
photographs that ship with scikit-image (`skimage.data`, no download) at full
resolution, plus, when installed, OpenCV's sample photographs from the Debian
packages (`opencv-doc` / OpenCV's samples data). Low-resolution inputs are made
from these by the SR pipeline (bicubic downscaling), as with DIV2K's HR images.

Features:
  image:  uint8[H, W, 3] (PNG, lossless). Gray photographs are repeated to RGB.
          'modcrop': the bottom rows and right columns are cut so that H and W are
          multiples of 12, hence divisible by every scale ×2, ×3 and ×4.
  name:   the source, e.g. 'astronaut' (skimage.data) or 'opencv/baboon'.

Splits are BY IMAGE: no photograph contributes crops to two splits. The
skimage images have fixed splits (sizes after modcrop, H × W):
  test (5):        astronaut 504×504, camera 504×504 (gray), chelsea 300×444,
                   coffee 396×600, stereo_motorcycle 492×732 (left view)
  validation (2):  clock 300×396 (gray), rocket 420×636
  train (9):       brick 504×504 (gray), cell 660×540 (gray), coins 300×384 (gray),
                   grass 504×504 (gray), gravel 504×504 (gray), hubble_deep_field 864×996,
                   immunohistochemistry 504×504, moon 504×504 (gray), retina 1404×1404
OpenCV's sample photographs (`OPENCV_PHOTOS`, looked for in `OPENCV_DIRS`, the
first directory holding a file wins) go to 'train' only, so 'test' and
'validation' are the same on every machine; 'train' has 9 images on a machine
with scikit-image alone. Photographs with a side under 256 pixels are skipped.
The content is a pure function of the installed files: two builds are identical.

    import cvjax.data.sr_photos  # registers the builder
    tfds.builder('cvjax_sr_photos').download_and_prepare()   # no network
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

MODCROP = 12  # sides are cut to multiples of this: lcm of the scales 2, 3, 4
MIN_SIDE = 256  # photographs with a smaller side (before modcrop) are not used

# skimage.data photographs that need no download, (H, W) before modcrop. Left out:
# cat (the same file as chelsea), page and text (under 256 high), colorwheel, logo,
# horse, checkerboard, binary_blobs, shepp_logan_phantom (drawn, not photographed),
# microaneurysms (102²), and eagle, lily, skin, kidney, ... (download on first use).
SKIMAGE_SPLITS = {
    'test': ('astronaut',          # 512 × 512 RGB
             'camera',             # 512 × 512 gray
             'chelsea',            # 300 × 451 RGB
             'coffee',             # 400 × 600 RGB
             'stereo_motorcycle'),  # 500 × 741 RGB (left view)
    'validation': ('clock',        # 300 × 400 gray
                   'rocket'),      # 427 × 640 RGB
    'train': ('brick',             # 512 × 512 gray
              'cell',              # 660 × 550 gray
              'coins',             # 303 × 384 gray
              'grass',             # 512 × 512 gray
              'gravel',            # 512 × 512 gray
              'hubble_deep_field',  # 872 × 1000 RGB
              'immunohistochemistry',  # 512 × 512 RGB
              'moon',              # 512 × 512 gray
              'retina'),           # 1411 × 1411 RGB
}
# Debian's copies of OpenCV's samples/data; photographs only (no charts, no drawings).
OPENCV_DIRS = ('/usr/share/doc/opencv-doc/examples/data', '/usr/share/opencv4/samples/data',
               '/usr/share/opencv/samples/data')
OPENCV_PHOTOS = ('aero1.jpg', 'aero3.jpg', 'baboon.jpg', 'building.jpg', 'fruits.jpg',
                 'graf1.png', 'home.jpg', 'lena.jpg', 'messi5.jpg')


def modcrop(image: np.ndarray, scale: int = MODCROP) -> np.ndarray:
  """image[:H - H % scale, :W - W % scale]: the SR papers' crop (bottom and right)."""
  h, w = image.shape[:2]
  return image[:h - h % scale, :w - w % scale]


def _rgb(image: np.ndarray) -> np.ndarray:
  """uint8[H, W, 3] from a gray [H, W], RGB or RGBA photograph."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'expected a uint8 photograph, got {image.dtype}')
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return np.ascontiguousarray(image[..., :3])


def skimage_photo(name: str) -> np.ndarray:
  """uint8[H, W, 3], full resolution (no modcrop), of `skimage.data.<name>`."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  image = getattr(data, name)()
  if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
    image = image[0]
  return _rgb(image)


def opencv_photo_paths(dirs: tuple[str, ...] = OPENCV_DIRS) -> list[tuple[str, str]]:
  """[(name, path)] of the `OPENCV_PHOTOS` present in `dirs`, in `OPENCV_PHOTOS` order."""
  found = []
  for filename in OPENCV_PHOTOS:
    for directory in dirs:
      path = os.path.join(directory, filename)
      if os.path.isfile(path):
        found.append((f'opencv/{os.path.splitext(filename)[0]}', path))
        break
  return found


def _file_photo(path: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    return _rgb(np.asarray(image.convert('RGB')))


def split_photos(split: str, opencv_dirs: tuple[str, ...] = OPENCV_DIRS):
  """Yields (name, uint8[H, W, 3]) of `split`, modcropped, photographs under `MIN_SIDE` skipped."""
  sources = [(name, lambda n=name: skimage_photo(n)) for name in SKIMAGE_SPLITS[split]]
  if split == 'train':
    sources += [(name, lambda p=path: _file_photo(p)) for name, path in opencv_photo_paths(opencv_dirs)]
  for name, load in sources:
    image = load()
    if min(image.shape[:2]) >= MIN_SIDE:
      yield name, modcrop(image)


class CvjaxSrPhotos(tfds.core.GeneratorBasedBuilder):
  """Whole photographs for super-resolution, split by image (see module docstring)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: 16 skimage photographs (+ OpenCV samples in train).'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='png'),
            'name': tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage='https://scikit-image.org/docs/stable/api/skimage.data.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is on disk already
    return {split: self._generate_examples(split) for split in ('train', 'validation', 'test')}

  def _generate_examples(self, split: str):
    for name, image in split_photos(split, OPENCV_DIRS):  # read here: tests point it elsewhere
      yield name, {'image': image, 'name': name}
