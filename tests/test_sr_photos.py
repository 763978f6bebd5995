"""The cvjax_sr_photos builder: whole photographs, split by image, modcropped to 12, reproducible."""
import hashlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cvjax.data import sr_photos

_TEST_IMAGES = {'astronaut', 'camera', 'chelsea', 'coffee', 'stereo_motorcycle'}


def _build(data_dir, opencv_dir):
  """{split: [(name, uint8 image)]} and {shard file: sha256} of a fresh build in data_dir."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(sr_photos, 'OPENCV_DIRS', (str(opencv_dir),))
    builder = tfds.builder('cvjax_sr_photos', data_dir=str(data_dir))
    builder.download_and_prepare()
  splits = {split: [(ex['name'].decode(), ex['image'])
                    for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))]
            for split in ('train', 'validation', 'test')}
  shards = {}
  for root, _, files in os.walk(builder.data_dir):
    for f in files:
      if '.tfrecord' in f:
        with open(os.path.join(root, f), 'rb') as fh:
          shards[f] = hashlib.sha256(fh.read()).hexdigest()
  return splits, shards


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """One build with scikit-image's photographs only (no OpenCV samples), as on CI."""
  return _build(tmp_path_factory.mktemp('tfds'), tmp_path_factory.mktemp('no_opencv'))


def test_splits_are_disjoint_by_image_and_test_holds_the_documented_photos(built):
  splits, _ = built
  names = {split: [n for n, _ in examples] for split, examples in splits.items()}
  assert set(names['test']) == _TEST_IMAGES
  assert set(names['validation']) == {'clock', 'rocket'}
  assert len(names['train']) == 9
  every = names['train'] + names['validation'] + names['test']
  assert len(every) == len(set(every)) == 16


def test_images_are_uint8_rgb_modcropped_to_12_at_full_resolution(built):
  splits, _ = built
  shapes = {}
  for examples in splits.values():
    for name, image in examples:
      h, w, c = image.shape
      assert image.dtype == np.uint8 and c == 3, name
      assert h % 12 == 0 and w % 12 == 0 and min(h, w) >= 120, (name, image.shape)
      shapes[name] = (h, w)
  # Full resolution, cut only at the bottom and right: exact sizes someone could get wrong.
  assert shapes['chelsea'] == (300, 444) and shapes['retina'] == (1404, 1404)
  assert shapes['hubble_deep_field'] == (864, 996) and shapes['stereo_motorcycle'] == (492, 732)
  astronaut = dict(splits['test'])['astronaut']
  np.testing.assert_array_equal(astronaut, sr_photos.skimage_photo('astronaut')[:504, :504])
  camera = dict(splits['test'])['camera']  # gray, repeated to RGB
  assert (camera[..., 0] == camera[..., 1]).all() and (camera[..., 1] == camera[..., 2]).all()


def test_two_builds_are_byte_identical(built, tmp_path):
  splits, shards = built
  again, again_shards = _build(tmp_path / 'tfds', tmp_path / 'no_opencv')
  assert shards and shards == again_shards
  for split in splits:
    assert [n for n, _ in splits[split]] == [n for n, _ in again[split]]
    for (_, a), (_, b) in zip(splits[split], again[split]):
      assert a.tobytes() == b.tobytes()


def test_opencv_samples_join_train_only_and_small_ones_are_skipped(tmp_path):
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (301, 407, 3), dtype=np.uint8)).save(tmp_path / 'baboon.jpg')
  Image.fromarray(rng.integers(0, 256, (200, 400, 3), dtype=np.uint8)).save(tmp_path / 'lena.jpg')
  Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(tmp_path / 'chart.jpg')
  assert sr_photos.opencv_photo_paths((str(tmp_path),)) == [
      ('opencv/baboon', str(tmp_path / 'baboon.jpg')), ('opencv/lena', str(tmp_path / 'lena.jpg'))]
  train = dict(sr_photos.split_photos('train', (str(tmp_path),)))
  assert train['opencv/baboon'].shape == (300, 396, 3)
  assert 'opencv/lena' not in train  # 200 high: under MIN_SIDE
  test = [n for n, _ in sr_photos.split_photos('test', (str(tmp_path),))]
  assert set(test) == _TEST_IMAGES
