"""Preprocessing ops for super-resolution: random patches, the eight symmetries, luma and
bicubic LR/HR pairs.

Geometric ops are checked pixel for pixel against numpy on a random image (every pixel
distinct), with a segmentation map that is a function of the pixel position and boxes
that must keep describing the same pixels; `sr_pair`'s resampler against `resize_right`,
a numpy reimplementation of MATLAB's `imresize`.
"""
import warnings

import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from cvjax.data import preprocess
from cvjax.superresolution import metrics

H, W = 24, 30
# (y0, x0, y1, x1) in pixels of H × W.
PIXEL_BOXES = [(2, 3, 10, 12), (12, 15, 22, 28)]


def _example():
  rng = np.random.default_rng(0)
  image = rng.random((H, W, 3), np.float32)
  mask = (np.arange(H * W) % 251).reshape(H, W, 1).astype(np.int32)  # class = position
  boxes = np.array([[y0 / H, x0 / W, y1 / H, x1 / W] for y0, x0, y1, x1 in PIXEL_BOXES],
                   np.float32)
  return {'image': tf.constant(image), 'segmentation': tf.constant(mask),
          'boxes': tf.constant(boxes), 'box_mask': tf.constant([True, True]),
          'label': tf.constant(7)}


def _apply(ops, seed, example=None, **kwargs):
  out = preprocess.build(ops, **kwargs)(example or _example(), tf.constant([3, seed], tf.int64))
  return {k: v.numpy() for k, v in out.items()}


def _pixel_boxes(boxes, shape):
  """Normalised boxes → pixel (y0, x0, y1, x1) of an image of `shape`."""
  return np.round(boxes * np.tile(shape[:2], 2)).astype(int)


def _box_pixels(array, box):
  y0, x0, y1, x1 = box
  return array[y0:y1, x0:x1]


def _find(big, small):
  """The offsets (top, left) where `small` is a window of `big`."""
  s, t = small.shape[:2]
  return [(i, j) for i in range(big.shape[0] - s + 1) for j in range(big.shape[1] - t + 1)
          if np.array_equal(big[i:i + s, j:j + t], small)]


# ------------------------------------------------------------------------- random_crop


def test_random_crop_is_a_window_moving_mask_and_boxes_with_it():
  ex = {k: v.numpy() for k, v in _example().items()}
  offsets = []
  for seed in range(12):
    out = _apply('random_crop(16)', seed)
    assert out['image'].shape == (16, 16, 3) and out['segmentation'].shape == (16, 16, 1)
    (top, left), = _find(ex['image'], out['image'])
    assert 0 <= top <= H - 16 and 0 <= left <= W - 16
    np.testing.assert_array_equal(out['segmentation'],
                                  ex['segmentation'][top:top + 16, left:left + 16])
    # Boxes: moved by the offset, in the crop's normalised coordinates, clipped to it.
    for k, (y0, x0, y1, x1) in enumerate(PIXEL_BOXES):
      moved = np.clip([y0 - top, x0 - left, y1 - top, x1 - left], 0, 16)
      keep = moved[2] > moved[0] and moved[3] > moved[1]
      assert out['box_mask'][k] == keep
      if keep:
        np.testing.assert_allclose(out['boxes'][k] * 16, moved, atol=1e-4)
    assert out['label'] == 7
    offsets.append((top, left))
  assert len(set(offsets)) >= 8                     # different seeds, different crops
  again = [_find(ex['image'], _apply('random_crop(16)', seed)['image'])[0] for seed in range(12)]
  assert again == offsets                           # same seed, same crop


def test_random_crop_reaches_every_offset_and_refuses_small_images():
  ex = {'image': tf.constant(np.random.default_rng(1).random((8, 9, 1), np.float32))}
  image = ex['image'].numpy()
  seen = {_find(image, _apply('random_crop(6)', seed, ex)['image'])[0] for seed in range(200)}
  assert seen == {(i, j) for i in range(3) for j in range(4)}
  # The default size is the model's input size, as for the other ops with `size`.
  assert _apply('random_crop', 0, ex, image_size=5)['image'].shape == (5, 5, 1)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'random_crop\(10\)'):
    _apply('random_crop(10)', 0, ex)


# ------------------------------------------------------------------------------ flips


def test_flip_ud_mirrors_image_mask_and_boxes_together_half_the_time():
  ex = {k: v.numpy() for k, v in _example().items()}
  flipped = []
  for seed in range(16):
    out = _apply('flip_ud', seed)
    flip = not np.array_equal(out['image'], ex['image'])
    if flip:
      np.testing.assert_array_equal(out['image'], ex['image'][::-1])
      np.testing.assert_array_equal(out['segmentation'], ex['segmentation'][::-1])
      np.testing.assert_allclose(out['boxes'], np.stack(
          [1 - ex['boxes'][:, 2], ex['boxes'][:, 1], 1 - ex['boxes'][:, 0], ex['boxes'][:, 3]], -1),
          atol=1e-6)
    else:
      np.testing.assert_array_equal(out['segmentation'], ex['segmentation'])
      np.testing.assert_allclose(out['boxes'], ex['boxes'])
    for k, box in enumerate(_pixel_boxes(out['boxes'], out['image'].shape)):
      y0, x0, y1, x1 = PIXEL_BOXES[k]
      region = ex['image'][y0:y1, x0:x1]
      np.testing.assert_array_equal(_box_pixels(out['image'], box), region[::-1] if flip else region)
    flipped.append(flip)
  assert any(flipped) and not all(flipped)


SYMMETRIES = {  # the 8 symmetries of the square, as numpy transforms of [H, W, C]
    'identity': lambda x: x, 'lr': lambda x: x[:, ::-1], 'ud': lambda x: x[::-1],
    'rot180': lambda x: x[::-1, ::-1], 'transpose': lambda x: x.transpose(1, 0, 2),
    'rot90': lambda x: x.transpose(1, 0, 2)[::-1], 'rot270': lambda x: x.transpose(1, 0, 2)[:, ::-1],
    'antitranspose': lambda x: x.transpose(1, 0, 2)[::-1, ::-1]}


def test_dihedral_draws_all_eight_symmetries_and_moves_mask_and_boxes():
  ex = {k: v.numpy() for k, v in _example().items()}
  seen = {}
  for seed in range(64):
    out = _apply('dihedral', seed)
    name, = [n for n, f in SYMMETRIES.items()
             if f(ex['image']).shape == out['image'].shape and np.array_equal(f(ex['image']), out['image'])]
    np.testing.assert_array_equal(out['segmentation'], SYMMETRIES[name](ex['segmentation']))
    # Every box covers its object's pixels, moved by the same symmetry.
    for k, box in enumerate(_pixel_boxes(out['boxes'], out['image'].shape)):
      region = _box_pixels(ex['image'], PIXEL_BOXES[k])
      np.testing.assert_array_equal(_box_pixels(out['image'], box), SYMMETRIES[name](region),
                                    err_msg=f'{name} box {k}')
    assert out['box_mask'].all() and out['label'] == 7
    seen[name] = seen.get(name, 0) + 1
  assert set(seen) == set(SYMMETRIES), seen


def test_dihedral_transposes_boxes_y_and_x():
  ex = {k: v.numpy() for k, v in _example().items()}
  transposed = [out for out in (_apply('dihedral', seed) for seed in range(32))
                if np.array_equal(out['image'], ex['image'].transpose(1, 0, 2))]
  assert transposed and transposed[0]['image'].shape == (W, H, 3)
  np.testing.assert_allclose(transposed[0]['boxes'], ex['boxes'][:, [1, 0, 3, 2]])


# ------------------------------------------------------------------------------- to_y


def test_to_y_is_matlab_rgb2ycbcr_luma_and_agrees_with_the_metrics():
  rgb = np.random.default_rng(2).random((2, 5, 7, 3), np.float32)
  y = preprocess.build('to_y')(tf.constant(rgb)).numpy()       # a batch
  assert y.shape == (2, 5, 7, 1)
  expected = (16 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255
  np.testing.assert_allclose(y[..., 0], expected, rtol=0, atol=1e-6)
  np.testing.assert_allclose(preprocess.build('to_y')(tf.zeros([2, 3, 3])),
                             16 / 255, atol=1e-7)
  assert preprocess.Y_WEIGHTS == metrics._Y_WEIGHTS and preprocess.Y_OFFSET == metrics._Y_OFFSET
  photo = skimage.data.astronaut().astype(np.float32) / 255
  np.testing.assert_allclose(preprocess.build('to_y')(tf.constant(photo)).numpy(),
                             np.asarray(metrics.rgb_to_y(photo)), rtol=0, atol=1e-6)
  grey = rgb[0, ..., :1]
  np.testing.assert_array_equal(preprocess.build('to_y')(tf.constant(grey)).numpy(), grey)


# ---------------------------------------------------------------------------- sr_pair


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_sr_pair_makes_an_8_bit_lr_image_and_keeps_the_hr_target(scale):
  hr = np.random.default_rng(scale).random((48, 60, 3), np.float32)
  out = _apply(f'sr_pair({scale})', 0, {'image': tf.constant(hr), 'label': tf.constant(7)})
  assert out['image'].shape == (48 // scale, 60 // scale, 3) and out['image'].dtype == np.float32
  np.testing.assert_array_equal(out['target'], hr)
  assert out['label'] == 7
  levels = out['image'] * 255
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
  assert out['image'].min() >= 0 and out['image'].max() <= 1
  lr = tf.image.resize(hr, (48 // scale, 60 // scale), 'bicubic', antialias=True).numpy()
  np.testing.assert_allclose(out['image'], np.round(np.clip(lr, 0, 1) * 255) / 255, atol=1e-6)
  constant = preprocess.build(f'sr_pair({scale})')({'image': tf.fill([48, 60, 3], 100 / 255)})
  np.testing.assert_allclose(constant['image'], 100 / 255, atol=1e-6)
  batch = preprocess.build(f'sr_pair({scale})')({'image': tf.constant(np.stack([hr, hr[::-1]]))})
  assert batch['image'].shape == (2, 48 // scale, 60 // scale, 3)
  np.testing.assert_allclose(batch['image'][0], out['image'], atol=1e-6)
  np.testing.assert_array_equal(batch['target'][1], hr[::-1])


def test_sr_pair_refuses_sizes_that_are_not_multiples_of_the_scale():
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'sr_pair\(3\).*multiples of 3'):
    preprocess.build('sr_pair(3)')({'image': tf.zeros([48, 61, 3])})


def test_the_sr_recipe_composes_eagerly_and_in_a_graph():
  chain = preprocess.build('to_y|random_crop(12)|dihedral|sr_pair(2)')
  seed = tf.constant([3, 4], tf.int64)
  eager = chain(_example(), seed)
  assert eager['image'].shape == (6, 6, 1) and eager['target'].shape == (12, 12, 1)
  graph = tf.function(chain)(_example(), seed)
  for key in eager:   # the same crop and symmetry; /255 may compile to ·(1/255)
    np.testing.assert_allclose(graph[key], eager[key], rtol=0, atol=1e-7)


# ------------------------------------------------------------------- MATLAB parity

# Measured (float64 resize_right vs float32 TF, astronaut 504×504 and chelsea 300×444):
# interior (2 LR pixels shaved) ≤ 3.5e-7 at every scale; whole image, resize_right with
# MATLAB's symmetric padding: max 0.048, PSNR 58.1–74.1 dB; with its default zero
# padding: max 0.109, PSNR 41.5–46.9 dB. Bounds with a little margin:
INTERIOR_MAX = 1e-6
SYMMETRIC_MAX, SYMMETRIC_PSNR = 0.05, 57.0
ZERO_PAD_MAX, ZERO_PAD_PSNR = 0.12, 40.0


def _resize_right():
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')   # "No PyTorch found, will work only with Numpy"
    return pytest.importorskip('resize_right')


@pytest.mark.parametrize('name', ['astronaut', 'chelsea'])
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_sr_pair_resampler_is_matlab_imresize_away_from_the_border(name, scale):
  resize_right = _resize_right()
  photo = getattr(skimage.data, name)().astype(np.float64) / 255
  height, width = photo.shape[0] // 12 * 12, photo.shape[1] // 12 * 12
  photo = photo[:height, :width]
  size = (height // scale, width // scale)
  ours = tf.image.resize(tf.constant(photo, tf.float32), size, 'bicubic', antialias=True).numpy()

  def psnr(a, b):
    return 10 * np.log10(1 / np.mean((a - b) ** 2))

  # The cubic kernel stretched by `scale` reaches 2 LR pixels: beyond them no border rule
  # matters; within, TF renormalises the taps inside the image, MATLAB mirrors it.
  for pad_mode, max_diff, min_psnr in [('symmetric', SYMMETRIC_MAX, SYMMETRIC_PSNR),
                                       ('constant', ZERO_PAD_MAX, ZERO_PAD_PSNR)]:
    matlab = resize_right.resize(photo, scale_factors=[1 / scale, 1 / scale], out_shape=size,
                                 interp_method=resize_right.interp_methods.cubic,
                                 antialiasing=True, pad_mode=pad_mode)
    assert matlab.shape == ours.shape
    diff = np.abs(ours - matlab)
    assert diff[2:-2, 2:-2].max() < INTERIOR_MAX, pad_mode
    assert diff[1:-1, 1:-1].max() > 1e-3, pad_mode   # 2 pixels are needed, not 1
    assert diff.max() < max_diff and psnr(ours, matlab) > min_psnr, pad_mode
  # And the only difference is that border rule: renormalised zero padding is TF exactly.
  def zero_padded(x):
    return resize_right.resize(x, scale_factors=[1 / scale, 1 / scale], out_shape=size,
                               interp_method=resize_right.interp_methods.cubic, antialiasing=True)
  np.testing.assert_allclose(ours, zero_padded(photo) / zero_padded(np.ones_like(photo)),
                             rtol=0, atol=INTERIOR_MAX)
