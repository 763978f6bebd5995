"""Detection data: mocked VOC/COCO loading, SSD augmentation geometry, the cvjax_shapes builder."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cvjax.data import cvjax_shapes as shapes
from cvjax.data import pipeline, preprocess
from cvjax.detection import data
from cvjax.errors import UserError


def _write_split_metadata(name, data_dir, sizes):
  """Marks `name` as prepared in data_dir with the given split sizes (its real features), so
  that `tfds.testing.mock_data` serves it and the loaders know the split sizes."""
  builder = tfds.builder(name, data_dir=data_dir)
  template = tfds.core.ShardedFileTemplate(data_dir=builder.data_path, dataset_name=builder.name,
                                           filetype_suffix='tfrecord')
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0,
                          filename_template=template.replace(split=s)) for s, n in sizes.items()]))
  builder.data_path.mkdir(parents=True, exist_ok=True)
  builder.info.write_to_directory(builder.data_path)


@pytest.mark.parametrize('name, tfds_name, flag', [('voc/2007', 'voc/2007', 'difficult'),
                                                   ('coco/2017', 'coco/2017', 'crowd')])
def test_mock_voc_and_coco_load_despite_ragged_objects_and_unordered_coordinates(
    name, tfds_name, flag, tmp_path):
  n = 6
  _write_split_metadata(tfds_name, tmp_path, {'train': n, 'validation': n, 'test': n})
  with tfds.testing.mock_data(num_examples=n, data_dir=str(tmp_path)):
    meta = data.dataset_meta(name, data_dir=str(tmp_path))
    assert meta.num_classes == (20 if name.startswith('voc') else 80)
    raw = list(tfds.as_numpy(tfds.builder(tfds_name, data_dir=str(tmp_path)).as_dataset(
        split='test')))
    parsed = list(data.load_split(name, 'test', data_dir=str(tmp_path)).as_numpy_iterator())
    spec = data.data_spec(name, image_size=48, data_dir=str(tmp_path))
    batches = list(pipeline.local_eval_batches(spec, split='test', global_batch_size=4,
                                               data_dir=str(tmp_path)))
  assert len(raw) == len(parsed) == n
  lengths = [{len(v) for v in ex['objects'].values()} for ex in raw]
  assert any(len(s) > 1 for s in lengths), 'the mock should give ragged objects'
  max_boxes = data.spec(name).max_boxes
  for ex, p in zip(raw, parsed):
    count = min(min(len(v) for v in ex['objects'].values()), max_boxes)
    b = ex['objects']['bbox'][:count]
    ordered = np.stack([np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
                        np.maximum(b[:, 0], b[:, 2]), np.maximum(b[:, 1], b[:, 3])], -1)
    real = (ordered[:, 2] > ordered[:, 0]) & (ordered[:, 3] > ordered[:, 1])
    np.testing.assert_array_equal(p['box_mask'][:count], real)
    assert not p['box_mask'][count:].any()
    np.testing.assert_allclose(p['boxes'][:count][real], ordered[real])
    assert (p['boxes'][:, 2] >= p['boxes'][:, 0]).all() and (p['boxes'][:, 3] >= p['boxes'][:, 1]).all()
    np.testing.assert_array_equal(p['labels'][:count], ex['objects']['label'][:count])
    key = 'is_difficult' if flag == 'difficult' else 'is_crowd'
    np.testing.assert_array_equal(p[flag][:count], ex['objects'][key][:count])
    assert tuple(p['image_size']) == ex['image'].shape[:2]
  # Eval batches: fixed shapes, every example once, real boxes first, padding masked.
  assert [b['mask'].sum() for b in batches] == [4, 2]
  last = batches[-1]
  assert last['image'].shape == (4, 48, 48, 3) and last['boxes'].shape == (4, max_boxes, 4)
  assert not last['box_mask'][2:].any() and (last['image'][2:] == 0).all()
  for b in batches:
    for m in b['box_mask']:
      assert not np.any(m[np.argmin(m):]) if not m.all() else True   # no gaps
  # Training drops crowd boxes, keeps difficult ones.
  with tfds.testing.mock_data(num_examples=n, data_dir=str(tmp_path)):
    train = next(pipeline.local_train_batches(spec, global_batch_size=2, seed=0,
                                              data_dir=str(tmp_path), num_examples=n))
  assert train['image'].shape == (2, 48, 48, 3) and train['boxes'].shape == (2, max_boxes, 4)


def test_unknown_detection_dataset_split_and_augment_are_refused():
  """Detection speaks the one op grammar: 'ssd' is a preset, 'flip' an alias of flip_lr."""
  with pytest.raises(UserError, match="unknown detection dataset 'voc/2009'"):
    data.spec('voc/2009')
  with pytest.raises(UserError, match="unknown split of voc/2007 'val'"):
    data.parts('voc/2007', 'val')
  with pytest.raises(UserError, match="unknown augmentation op 'rotat'"):
    preprocess.check('flip|rotat', ('image', 'boxes', 'box_mask', 'labels'), 'detection')
  with pytest.raises(UserError, match='augmentation op iou_crop needs boxes'):
    preprocess.check('flip_lr|iou_crop', ('image', 'label'), 'classification')
  preprocess.check('ssd|rotate(5)', ('image', 'boxes', 'box_mask', 'labels'), 'detection')
  assert [name for name, _, _ in preprocess.parse('ssd|flip')] == [
      'photometric', 'zoom_out', 'iou_crop', 'flip_lr', 'flip_lr']

def _scene():
  """A 90×120 image with four flat-coloured rectangles and their exact boxes."""
  colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)
  pixel_boxes = [(10, 10, 40, 50), (20, 60, 70, 110), (50, 5, 85, 40), (5, 80, 25, 115)]
  image = np.full((90, 120, 3), 0.5, np.float32)
  for c, (y0, x0, y1, x1) in zip(colours, pixel_boxes):
    image[y0:y1, x0:x1] = c
  norm = np.array([[y0 / 90, x0 / 120, y1 / 90, x1 / 120] for y0, x0, y1, x1 in pixel_boxes],
                  np.float32)
  return image, norm, colours


def ssd_augment(image, boxes, mask, seed, *, size, ops='zoom_out|iou_crop|flip_lr'):
  """The SSD ops of the one registry on one example, then the eval resize."""
  chain = preprocess.build(f'{ops}|resize({size}, antialias=False)')
  out = chain({'image': image, 'boxes': boxes, 'box_mask': mask}, seed)
  return out['image'], out['boxes'], out['box_mask']


def _colour_extent(image, colour, tol=0.2):
  """Normalised extent of the pixels within `tol` of `colour` (None if there are none)."""
  hit = np.all(np.abs(image - colour) < tol, axis=-1)
  if not hit.any():
    return None
  ys, xs = np.nonzero(hit)
  s = image.shape[0]
  return np.array([ys.min() / s, xs.min() / s, (ys.max() + 1) / s, (xs.max() + 1) / s])


def test_augmented_boxes_stay_on_their_objects():
  """Zoom-out, IoU crop, flip and resize move boxes with the pixels: every kept box is
  the extent of its object's colour in the output (to a pixel), for 40 random draws."""
  image, norm, colours = _scene()
  mask = np.ones(4, bool)
  size = 96
  run = tf.function(lambda seed: ssd_augment(
      tf.constant(image), tf.constant(norm), tf.constant(mask), seed, size=size))
  cropped = zoomed = flipped = 0
  for seed in range(40):
    out, out_boxes, keep = (x.numpy() for x in run(tf.constant([7, seed], tf.int64)))
    assert out.shape == (size, size, 3) and keep.any()
    for k in np.flatnonzero(keep):
      extent = _colour_extent(out, colours[k])
      assert extent is not None, (seed, k)
      np.testing.assert_allclose(out_boxes[k], extent, atol=1.6 / size, err_msg=f'{seed} {k}')
    cropped += not keep.all()
    zoomed += np.isclose(out, preprocess.MEAN_FILL, atol=0.01).all(-1).mean() > 0.2
    flipped += keep[0] and out_boxes[0, 1] > 0.5
  assert cropped and zoomed and flipped   # each geometric step happened at least once
  # Photometric distortion keeps [0, 1] and changes colours but not geometry.
  out, out_boxes, keep = (x.numpy() for x in ssd_augment(
      tf.constant(image), tf.constant(norm), tf.constant(mask), tf.constant([1, 2], tf.int64),
      size=size, ops='photometric'))
  assert 0 <= out.min() and out.max() <= 1 and keep.all()
  np.testing.assert_allclose(out_boxes, norm, atol=1e-6)


def test_augmentation_is_a_pure_function_of_the_seed():
  image, norm, _ = _scene()
  args = (tf.constant(image), tf.constant(norm), tf.constant(np.ones(4, bool)))
  a = ssd_augment(*args, tf.constant([3, 4], tf.int64), size=64, ops='ssd')
  b = ssd_augment(*args, tf.constant([3, 4], tf.int64), size=64, ops='ssd')
  c = ssd_augment(*args, tf.constant([3, 5], tf.int64), size=64, ops='ssd')
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.numpy(), y.numpy())
  assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_shapes_examples_have_exact_boxes_masks_and_are_deterministic():
  config = shapes.ShapesConfig(name='t', image_size=96)
  photos = shapes._load_backgrounds()
  for index in range(6):
    ex = shapes.generate('train', index, config, photos)
    again = shapes.generate('train', index, config, photos)
    np.testing.assert_array_equal(ex['image'], again['image'])
    labels = ex['objects']['label']
    assert 1 <= len(labels) <= config.max_objects and all(0 <= l < 6 for l in labels)
    instances, semantic = ex['instances'][..., 0], ex['segmentation'][..., 0]
    for i, (box, label, area) in enumerate(zip(ex['objects']['bbox'], labels,
                                               ex['objects']['area'])):
      ys, xs = np.nonzero(instances == i + 1)
      assert len(ys) == area > 0
      assert (box.ymin, box.xmin, box.ymax, box.xmax) == pytest.approx(
          (ys.min() / 96, xs.min() / 96, (ys.max() + 1) / 96, (xs.max() + 1) / 96))
      assert (semantic[instances == i + 1] == label + 1).all()
    assert ((semantic == 0) == (instances == 0)).all()
  assert not np.array_equal(shapes.generate('test', 0, config, photos)['image'],
                            shapes.generate('train', 0, config, photos)['image'])
