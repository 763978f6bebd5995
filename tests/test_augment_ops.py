"""The one augmentation registry: geometric ops move boxes and masks exactly as the pixels.

A scene of flat-coloured rectangles on a grey background, its semantic mask (object k is
class k + 1) and its boxes go through every geometric op; the output's pixels, mask and
boxes must still describe the same objects.
"""
import numpy as np
import pytest
import tensorflow as tf

from cvjax.data import preprocess
from cvjax.errors import UserError

COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
# (y0, x0, y1, x1) of 64×80, at least 12 pixels from the borders: rotate and zoom reflect the
# borders, and a reflected copy of an object would carry its class but no box.
PIXEL_BOXES = [(12, 14, 30, 40), (20, 44, 50, 66), (36, 14, 52, 32)]
GEOMETRIC = ['flip_lr', 'pad_crop(6)', 'rotate(10)', 'zoom(0.15)', 'inception_crop(48)',
             'pad_to(88)', 'resize(40)', 'resize_small(48)', 'central_crop(56)', 'fit(56)',
             'zoom_out|resize(64)', 'iou_crop|resize(64)', 'zoom_out|iou_crop|flip_lr|resize(64)']
# Ops that move pixels by whole pixels: every output pixel keeps its colour and class exactly.
EXACT = {'flip_lr', 'pad_crop(6)', 'pad_to(88)', 'central_crop(56)'}


def _scene():
  image = np.full((64, 80, 3), 0.5, np.float32)
  mask = np.zeros((64, 80, 1), np.int32)
  for k, (y0, x0, y1, x1) in enumerate(PIXEL_BOXES):
    image[y0:y1, x0:x1] = COLOURS[k]
    mask[y0:y1, x0:x1] = k + 1
  boxes = np.array([[y0 / 64, x0 / 80, y1 / 64, x1 / 80] for y0, x0, y1, x1 in PIXEL_BOXES],
                   np.float32)
  return {'image': tf.constant(image), 'segmentation': tf.constant(mask),
          'boxes': tf.constant(boxes), 'box_mask': tf.constant([True, True, True]),
          'label': tf.constant(7)}


def _apply(ops, seed):
  out = preprocess.build(ops)(_scene(), tf.constant([11, seed], tf.int64))
  return {k: v.numpy() for k, v in out.items()}


def _interior(mask, r=2):
  """Pixels whose (2r + 1)² neighbourhood has one class (away from resampled edges)."""
  m = np.pad(mask, r, constant_values=-1)  # the image border is an edge too
  same = np.ones_like(mask, bool)
  for dy in range(2 * r + 1):
    for dx in range(2 * r + 1):
      same &= m[dy:dy + mask.shape[0], dx:dx + mask.shape[1]] == mask
  return same


@pytest.mark.parametrize('ops', GEOMETRIC)
def test_geometric_ops_move_mask_and_boxes_with_the_pixels(ops):
  for seed in range(6):
    out = _apply(ops, seed)
    image, mask, boxes, keep = out['image'], out['segmentation'][..., 0], out['boxes'], out['box_mask']
    assert out['label'] == 7 and mask.shape == image.shape[:2]
    # A mask pixel's class follows its pixel: class k + 1 where the colour is object k's.
    # Away from edges by more than one source pixel in output pixels (upsampling blends wider).
    source = np.array([[y1 - y0, x1 - x0] for y0, x0, y1, x1 in PIXEL_BOXES], np.float32)
    scale = max([1.0] + [float(np.max((boxes[k, 2:] - boxes[k, :2]) * mask.shape / source[k]))
                         for k in np.flatnonzero(keep) if (boxes[k, 2:] < 1).all()
                         and (boxes[k, :2] > 0).all()])
    where = np.ones_like(mask, bool) if ops in EXACT else _interior(mask, int(np.ceil(scale)) + 1)
    for k in range(3):
      np.testing.assert_allclose(image[where & (mask == k + 1)], np.broadcast_to(
          COLOURS[k], image[where & (mask == k + 1)].shape), atol=0.06, err_msg=f'{ops} {seed} {k}')
    # Boxes stay inside the image; a kept box is its object's extent (rotate: contains it).
    assert (boxes >= 0).all() and (boxes <= 1).all()
    height, width = mask.shape
    for k in np.flatnonzero(keep):
      ys, xs = np.nonzero(mask == k + 1)
      if not len(ys):
        continue  # reflected or cropped away at sub-pixel size
      extent = np.array([ys.min() / height, xs.min() / width,
                         (ys.max() + 1) / height, (xs.max() + 1) / width])
      if ops.startswith('rotate'):
        assert (boxes[k, :2] <= extent[:2] + 1.5 / height).all(), (ops, seed, k)
        assert (boxes[k, 2:] >= extent[2:] - 1.5 / height).all(), (ops, seed, k)
      else:
        np.testing.assert_allclose(boxes[k], extent, atol=1.6 / min(height, width),
                                   err_msg=f'{ops} seed {seed} box {k}')
    if ops in EXACT:  # whole-pixel moves of objects away from the border drop no box
      assert keep.all()


def test_flip_twice_is_the_identity_and_photometric_ops_leave_targets_alone():
  flip = preprocess.OPS['flip_lr'].factory()
  scene = _scene()
  for seed in range(4):
    s = tf.constant([5, seed], tf.int64)
    twice = flip(flip(scene, s), s)
    for key in scene:  # boxes: x ↦ 1 − (1 − x) rounds in float32
      np.testing.assert_allclose(twice[key].numpy(), scene[key].numpy(), atol=1e-7, rtol=0)
  for ops in ('brightness(0.3)', 'contrast(0.3)', 'photometric', 'normalize((0.5,), (0.2,))'):
    out = _apply(ops, 3)
    np.testing.assert_array_equal(out['segmentation'], scene['segmentation'].numpy())
    np.testing.assert_array_equal(out['boxes'], scene['boxes'].numpy())


def test_padding_is_ignored_in_the_mask_and_dropped_boxes_lose_their_mask():
  out = _apply('pad_to(88)', 0)
  mask = out['segmentation'][..., 0]
  assert (mask[:4] == preprocess.IGNORE).all() and (mask[-4:] == preprocess.IGNORE).all()
  crops = [_apply('iou_crop|resize(64)', seed) for seed in range(20)]
  assert any(not c['box_mask'].all() for c in crops)


def test_one_grammar_and_refusals_name_the_op():
  detection = ('image', 'boxes', 'box_mask', 'labels')
  for keys, task in ((('image', 'label'), 'classification'), (detection, 'detection'),
                     (('image', 'segmentation'), 'segmentation'),
                     (('image', 'label', 'boxes', 'box_mask'), 'localization')):
    preprocess.check('flip_lr|pad_crop(4)|rotate(10)|inception_crop', keys, task, image_size=32)
  with pytest.raises(UserError, match=r"^augmentation op iou_crop needs boxes, which the "
                                      r"segmentation task's examples \(image, segmentation\) do "
                                      r"not have; drop it from --augment$"):
    preprocess.check('flip_lr|iou_crop', ('image', 'segmentation'), 'segmentation')
  with pytest.raises(UserError, match="unknown augmentation op 'flip_rl'"):
    preprocess.check('flip_rl', detection, 'detection')


def _erased(ops, seed, shape=(40, 48, 3)):
  """The boolean map of pixels an op changed on a constant 2.0 image (its fills are < 2)."""
  image = tf.fill(shape, 2.0)
  out = preprocess.build(ops)({'image': image}, tf.constant([5, seed], tf.int64))['image'].numpy()
  return out, np.any(out != 2.0, axis=-1)


def _box_of(changed):
  rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
  box = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
  assert changed[box[0]:box[2], box[1]:box[3]].all() and changed.sum() == \
      (box[2] - box[0]) * (box[3] - box[1])  # one solid axis-aligned rectangle
  return box


def test_random_erasing_follows_zhong_et_al():
  """p = 0.5; area 2-40% of the image; aspect h/w in [0.3, 1/0.3]; uniform random values."""
  erased, areas, aspects, values, tops = 0, [], [], [], []
  for seed in range(300):
    out, changed = _erased('random_erasing', seed)
    if not changed.any():
      continue
    erased += 1
    y0, x0, y1, x1 = _box_of(changed)
    h, w = y1 - y0, x1 - x0
    areas.append(h * w / (40 * 48))
    aspects.append(h / w)
    tops.append(y0 / (40 - h) if h < 40 else 0.0)
    values.append(out[changed])
  # Binomial(300, 0.5): 150 ± 26 at 3 sigma.
  assert 124 <= erased <= 176
  # h and w are rounded to whole pixels: the area and aspect bounds hold up to that rounding.
  assert 0.02 * 0.8 <= min(areas) and max(areas) <= 0.4 * 1.15 and np.median(areas) < 0.3
  assert 0.3 * 0.8 <= min(aspects) and max(aspects) <= (1 / 0.3) * 1.25
  assert min(aspects) < 0.6 and max(aspects) > 1.7  # the whole log-uniform range is drawn
  values = np.concatenate(values)
  assert values.min() >= 0 and values.max() < 1 and abs(values.mean() - 0.5) < 0.01
  assert min(tops) < 0.2 and max(tops) > 0.8  # positions spread over the image
  never, _ = _erased('random_erasing(p=0.0)', 0)
  assert (never == 2.0).all()
  always = [_erased('random_erasing(p=1.0)', s)[1].any() for s in range(20)]
  assert all(always)


def test_cutout_cuts_a_square_clipped_at_the_borders():
  sides = []
  for seed in range(200):
    out, changed = _erased('cutout(size=10, fill=0.25)', seed)
    y0, x0, y1, x1 = _box_of(changed)
    assert (out[changed] == 0.25).all()
    assert y1 - y0 <= 10 and x1 - x0 <= 10
    # Only a border can shorten a side: a side < 10 touches the image edge.
    assert y1 - y0 == 10 or y0 == 0 or y1 == 40
    assert x1 - x0 == 10 or x0 == 0 or x1 == 48
    sides.append((y1 - y0, x1 - x0))
  assert (10, 10) in sides and any(s != (10, 10) for s in sides)
  tf_image = tf.fill((8, 8, 1), 2.0)
  out = preprocess.build('cutout(size=20)')({'image': tf_image}, tf.constant([1, 2], tf.int64))
  assert (out['image'].numpy() == 0.0).all()  # larger than the image: all of it
