"""YOLOv3: models against Darknet's cfgs, the loss against a per-image reference, decoding,
k-means anchors, data-parallel normalisation, Darknet weights, and training in the one loop."""
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvjax.detection import boxes as box_ops
from cvjax.detection import families, postprocess, yolo
from cvjax.errors import UserError
from cvjax.models import get_model, model_info
from cvjax.models import yolo as yolo_models


def _counts(model, size, batch=1):
  """(trainable count, BatchNorm statistics count, variable shapes, output shapes), traced."""
  out, v = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32))
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  return count(v['params']), count(v.get('batch_stats', {})), v, out


def _flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}/'))
    else:
      out[f'{prefix}{k}'] = tuple(v.shape)
  return out


# ------------------------------------------------------------------------------ models


def test_yolov3_has_darknets_parameter_count_and_three_maps():
  model = get_model('yolov3', 80)
  params, stats, _, maps = _counts(model, 416, batch=2)
  assert (params, stats) == (61_949_149, 52_608)
  assert [m.shape for m in maps] == [(2, 13, 13, 3, 85), (2, 26, 26, 3, 85), (2, 52, 52, 3, 85)]
  wh = model.scale_anchors()   # coarsest map: the three largest COCO anchors
  np.testing.assert_allclose(wh[0] * 416, [[116, 90], [156, 198], [373, 326]], rtol=1e-6)
  np.testing.assert_allclose(wh[2] * 416, [[10, 13], [16, 30], [33, 23]], rtol=1e-6)
  shapes = get_model('yolov3_shapes', 6)
  assert model_info('yolov3_shapes').input_shape == (128, 128, 3)
  assert _counts(shapes, 128)[:2] == (2_259_707, 7_296)


# yolov3-tiny.cfg, layer by layer: (type, filters, size, stride) / route layers / yolo.
TINY_CFG = [('conv', 16, 3, 1), ('max', 2, 2), ('conv', 32, 3, 1), ('max', 2, 2),
            ('conv', 64, 3, 1), ('max', 2, 2), ('conv', 128, 3, 1), ('max', 2, 2),
            ('conv', 256, 3, 1), ('max', 2, 2), ('conv', 512, 3, 1), ('max', 2, 1),
            ('conv', 1024, 3, 1), ('conv', 256, 1, 1), ('conv', 512, 3, 1), ('out', None, 1, 1),
            ('yolo',), ('route', -4), ('conv', 128, 1, 1), ('upsample',), ('route', -1, 8),
            ('conv', 256, 3, 1), ('out', None, 1, 1), ('yolo',)]


def _walk_cfg(cfg, size, num_classes):
  """Darknet's parser on `cfg`: {conv index: (kernel (k, k, in, out), batch norm?)} and
  the [yolo] layers' grid sizes."""
  outputs, convs, grids = [], {}, []
  h, c = size, 3
  for i, layer in enumerate(cfg):
    kind = layer[0]
    if kind in ('conv', 'out'):
      _, filters, k, s = layer
      filters = filters or 3 * (5 + num_classes)
      convs[i] = ((k, k, c, filters), kind == 'conv')
      h, c = (h + 2 * (k // 2) - k) // s + 1, filters
    elif kind == 'max':
      _, k, s = layer
      h = (h + k - 1 - k) // s + 1
    elif kind == 'upsample':
      h *= 2
    elif kind == 'route':
      picked = [outputs[j] if j >= 0 else outputs[i + j] for j in layer[1:]]
      h, c = picked[0][0], sum(p[1] for p in picked)
    elif kind == 'yolo':
      grids.append(h)
    outputs.append((h, c))
  return convs, grids


def test_yolov3_tiny_is_its_cfg_layer_by_layer():
  """Every conv of yolov3-tiny.cfg (index i → `conv{i}`, `bn{i}`; backbone/ below 13) with
  the cfg's shapes, nothing else; the stride-1 maxpool keeps 13×13."""
  model = get_model('yolov3_tiny', 80)
  params, stats, v, maps = _counts(model, 416)
  convs, grids = _walk_cfg(TINY_CFG, 416, 80)
  expected = {}
  for i, (kernel, bn) in convs.items():
    prefix = 'backbone/' if i < 13 else ''
    expected[f'{prefix}conv{i}/kernel'] = kernel
    if bn:
      expected[f'{prefix}bn{i}/scale'] = expected[f'{prefix}bn{i}/bias'] = (kernel[-1],)
    else:
      expected[f'{prefix}conv{i}/bias'] = (kernel[-1],)
  assert _flat(v['params']) == expected
  assert params == sum(int(np.prod(s)) for s in expected.values()) == 8_852_366
  assert stats == 2 * sum(k[-1] for k, bn in convs.values() if bn) == 6_368
  assert [m.shape[1] for m in maps] == grids == [13, 26]


def test_darknet_maxpool_windows_start_at_zero_and_pad_bottom_right():
  x = np.random.default_rng(0).normal(size=(1, 5, 5, 2)).astype(np.float32)
  got = np.asarray(yolo_models.DarknetMaxPool(2, 1)(jnp.asarray(x)))
  padded = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-np.inf)
  ref = np.max([padded[:, a:a + 5, b:b + 5] for a in (0, 1) for b in (0, 1)], axis=0)
  np.testing.assert_array_equal(got, ref)
  assert yolo_models.DarknetMaxPool(2, 2)(jnp.zeros((1, 13, 13, 1))).shape == (1, 7, 7, 1)


def test_bad_anchors_are_refused_with_the_fix():
  with pytest.raises(UserError, match='the same number for each of the 3 maps; got 8 numbers'):
    get_model('yolov3_shapes', 6, anchors=(0.1, 0.2) * 4)
  assert get_model('yolov3_shapes', 6, anchors=[[0.1, 0.2]] * 9).anchors == (0.1, 0.2) * 9


# ------------------------------------------------------------------------ loss, decoding


def _bce(x, t):
  return max(x, 0) - x * t + math.log1p(math.exp(-abs(x)))


def _sigmoid(x):
  return 1 / (1 + math.exp(-x))


def _iou(a, b):
  ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
  iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
  inter = ih * iw
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union


def _reference_loss(maps, anchors, boxes, labels, mask, threshold):
  """The module doc's loss, one image and one prediction at a time, in float64."""
  flat = [(k, a, wh) for k, group in enumerate(anchors) for a, wh in enumerate(group)]
  out = []
  for b in range(boxes.shape[0]):
    owner = {}
    for m in np.flatnonzero(mask[b]):
      y0, x0, y1, x1 = boxes[b, m].astype(np.float64)
      w, h = x1 - x0, y1 - y0
      shape_iou = [min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah))
                   for _, _, (aw, ah) in flat]
      k, a, _ = flat[int(np.argmax(shape_iou))]
      rows, cols = maps[k].shape[1:3]
      i, j = min(int((y0 + h / 2) * rows), rows - 1), min(int((x0 + w / 2) * cols), cols - 1)
      owner.setdefault((k, i, j, a), []).append(m)
    box = obj = cls = positives = ignored = 0.0
    for k, raw in enumerate(maps):
      rows, cols, num_anchors = raw.shape[1:4]
      for i in range(rows):
        for j in range(cols):
          for a in range(num_anchors):
            p = raw[b, i, j, a].astype(np.float64)
            aw, ah = anchors[k][a]
            cx, cy = (j + _sigmoid(p[0])) / cols, (i + _sigmoid(p[1])) / rows
            pw, ph = aw * math.exp(p[2]), ah * math.exp(p[3])
            pred = (cy - ph / 2, cx - pw / 2, cy + ph / 2, cx + pw / 2)
            best = max([_iou(pred, boxes[b, m]) for m in np.flatnonzero(mask[b])], default=0)
            if (k, i, j, a) in owner:
              ms = owner[(k, i, j, a)]
              y0, x0, y1, x1 = boxes[b, ms[-1]].astype(np.float64)
              w, h = x1 - x0, y1 - y0
              tx, ty = (x0 + w / 2) * cols - j, (y0 + h / 2) * rows - i
              box += (2 - w * h) * (_bce(p[0], tx) + _bce(p[1], ty)
                                    + 0.5 * (p[2] - math.log(w / aw)) ** 2
                                    + 0.5 * (p[3] - math.log(h / ah)) ** 2)
              obj += _bce(p[4], 1.0)
              targets = {int(labels[b, m]) for m in ms}
              cls += sum(_bce(p[5 + c], float(c in targets)) for c in range(raw.shape[-1] - 5))
              positives += 1
            elif best > threshold:
              ignored += 1
            else:
              obj += _bce(p[4], 0.0)
    out.append((box, obj, cls, positives, ignored))
  return np.array(out)


def test_yolo_loss_equals_a_per_image_reference():
  """Two maps (3², 6²), two anchors each, three classes; two boxes of one image share
  their responsible prediction (the later one's coordinates, both classes); padding
  boxes ignored; some predictions overlap a box by IoU > 0.5 and lose their no-object term."""
  rng = np.random.default_rng(0)
  anchors = [np.array([[0.5, 0.4], [0.3, 0.6]], np.float32),
             np.array([[0.1, 0.12], [0.2, 0.15]], np.float32)]
  maps = [rng.normal(0, 0.7, (2, 3, 3, 2, 8)).astype(np.float32),
          rng.normal(0, 0.7, (2, 6, 6, 2, 8)).astype(np.float32)]
  centre = rng.uniform(0.2, 0.8, (2, 5, 2))
  size = rng.uniform(0.08, 0.5, (2, 5, 2))
  boxes = np.concatenate([centre - size / 2, centre + size / 2], -1).astype(np.float32)
  boxes[0, 1] = boxes[0, 0] + 0.01   # same shape, same cell: one prediction, two boxes
  labels = rng.integers(0, 3, (2, 5)).astype(np.int32)
  labels[0, :2] = (0, 2)
  mask = np.array([[1, 1, 1, 0, 1], [1, 1, 0, 0, 0]], bool)
  y0, x0, y1, x1 = boxes[1, 0].astype(np.float64)   # every anchor at its cell predicts it
  for k, raw in enumerate(maps):
    rows, cols = raw.shape[1:3]
    cy, cx = (y0 + y1) / 2 * rows, (x0 + x1) / 2 * cols
    i, j = int(cy), int(cx)
    for a, (aw, ah) in enumerate(anchors[k]):
      raw[1, i, j, a, :4] = (math.log((cx - j) / (1 - cx + j)), math.log((cy - i) / (1 - cy + i)),
                             math.log((x1 - x0) / aw), math.log((y1 - y0) / ah))
  got = jax.jit(lambda *a: yolo.yolo_loss(a[0], anchors, *a[1:], ignore_threshold=0.5))(
      [jnp.asarray(m) for m in maps], boxes, labels, mask)
  ref = _reference_loss(maps, anchors, boxes, labels, mask, 0.5)
  for col, key in enumerate(('box', 'objectness', 'class', 'num_positive')):
    np.testing.assert_allclose(got[key], ref[:, col], rtol=2e-5, err_msg=key)
  assert ref[0, 3] == 3 and ref[1, 4] >= 3     # the shared prediction; the ignored


def test_detect_finds_the_boxes_a_perfect_map_encodes():
  """Raw maps that encode two boxes exactly (and nothing else) decode, through
  threshold/NMS/top-k, to those boxes, classes and objectness × class scores."""
  anchors = [np.array([[0.5, 0.5], [0.7, 0.3]], np.float32),
             np.array([[0.1, 0.1], [0.2, 0.3]], np.float32)]
  maps = [np.full((1, 2, 2, 2, 7), -12.0, np.float32), np.full((1, 4, 4, 2, 7), -12.0, np.float32)]
  logit = lambda p: math.log(p / (1 - p))
  wanted = [(0, 1, 0, 1, 0.64, 0.30, 0.5, 0.4, 1, 0.9), (1, 2, 3, 0, 0.55, 0.85, 0.12, 0.08, 0, 0.8)]
  for k, i, j, a, cy, cx, w, h, c, p in wanted:
    rows, cols = maps[k].shape[1:3]
    aw, ah = anchors[k][a]
    maps[k][0, i, j, a, :5] = (logit(cx * cols - j), logit(cy * rows - i), math.log(w / aw),
                               math.log(h / ah), 12.0)
    maps[k][0, i, j, a, 5 + c] = logit(p)
  config = postprocess.PostprocessConfig(score_threshold=0.1, max_detections=5)
  det = jax.device_get(jax.jit(lambda m: yolo.detect(m, anchors, config))(maps))
  assert det.valid[0].sum() == 2
  for row, (*_, cy, cx, w, h, c, p) in enumerate(wanted):
    box = np.clip([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 0, 1)
    np.testing.assert_allclose(det.boxes[0, row], box, atol=1e-5)
    assert det.classes[0, row] == c and det.scores[0, row] == pytest.approx(p, rel=1e-4)


def test_loss_normalisation_makes_eight_devices_one():
  """Per device n_devices · Σ / (images of the global batch): the mean over 8 devices (what
  pmean of the gradients averages) is the one-device loss of the whole batch; without the
  device factor it would be 8 times too small."""
  from cvjax.tasks.detection import DetectionTask
  from cvjax.detection import families
  from cvjax.train import TrainConfig
  model = yolo_models.YOLOv3Tiny(num_classes=3)
  rng = np.random.default_rng(1)
  maps = [rng.normal(0, 1, (16, s, s, 3, 8)).astype(np.float32) for s in (2, 4)]
  centre, size = rng.uniform(0.2, 0.8, (16, 4, 2)), rng.uniform(0.05, 0.4, (16, 4, 2))
  batch = {'boxes': np.concatenate([centre - size / 2, centre + size / 2], -1).astype(np.float32),
           'labels': rng.integers(0, 3, (16, 4)).astype(np.int32),
           'box_mask': rng.uniform(size=(16, 4)) < 0.6}
  task = DetectionTask(TrainConfig(task='detection', model='yolov3_tiny', image_size=64), None,
                       head=families.family_for(model, 64))
  loss = lambda axis: (lambda maps, batch: task.loss(maps, batch, axis)[0])
  one = jax.jit(loss(None))(maps, batch)
  shard = lambda x: x.reshape((8, -1) + x.shape[1:])
  per_device = np.asarray(jax.pmap(loss('data'), axis_name='data')(
      [shard(m) for m in maps], {k: shard(v) for k, v in batch.items()}))
  np.testing.assert_allclose(per_device.mean(), one, rtol=1e-5)
  assert np.ptp(per_device) > 0.1 * one      # the devices' shares do differ


# ----------------------------------------------------------------------------- anchors


def test_kmeans_anchors_recover_planted_shapes_under_iou_distance():
  rng = np.random.default_rng(0)
  planted = np.array([[0.05, 0.08], [0.3, 0.1], [0.2, 0.45], [0.7, 0.6]])
  wh = np.concatenate([p * rng.uniform(0.9, 1.1, (200, 2)) for p in planted])
  got = yolo.kmeans_anchors(wh, 4, seed=3)
  assert got.dtype == np.float32 and got.shape == (4, 2)
  np.testing.assert_allclose(got, planted[np.argsort(planted.prod(1))], rtol=0.05)
  assert np.array_equal(got, yolo.kmeans_anchors(wh, 4, seed=3))
  assert yolo.mean_best_iou(wh, got) > 0.9 > yolo.mean_best_iou(wh, got[:1])
  with pytest.raises(UserError, match='k=5 anchors need at least 5 distinct box shapes, got 4'):
    yolo.kmeans_anchors(planted, 5)


def test_model_kwargs_parse_a_list_of_anchors():
  from cvjax.train.config import parse_kwargs
  from cvjax.train.rundir import differences
  from cvjax.train import TrainConfig
  kwargs = parse_kwargs('anchors=(0.1,0.2, 0.3,0.4),score_threshold=0.05,stage_sizes=[1,2]')
  assert kwargs == {'anchors': (0.1, 0.2, 0.3, 0.4), 'score_threshold': 0.05,
                    'stage_sizes': [1, 2]}
  config = TrainConfig(model='yolov3_shapes', model_kwargs=kwargs)
  assert differences(TrainConfig.from_json(config.to_json()), config) == {}   # resumable


# --------------------------------------------------------------------------- darknet


def _darknet_file(path, cfg, num_classes, rng, major=0, minor=2):
  """A .weights file for `cfg` from random arrays; {conv index: arrays in file order}."""
  convs, _ = _walk_cfg(cfg, 416, num_classes)
  header = np.array([major, minor, 0], '<i4').tobytes()
  header += np.array([12345], '<i8' if major * 10 + minor >= 2 else '<i4').tobytes()
  written = {}
  with open(path, 'wb') as f:
    f.write(header)
    for i, ((k, _, cin, cout), bn) in sorted(convs.items()):
      arrays = [rng.normal(size=cout), rng.uniform(0.5, 2, cout)] if bn else [rng.normal(size=cout)]
      if bn:
        arrays += [rng.normal(0, 0.1, cout), rng.uniform(0.5, 2, cout)]
      arrays.append(rng.normal(0, 0.1, (cout, cin, k, k)))
      written[i] = [a.astype(np.float32) for a in arrays]
      for a in written[i]:
        f.write(a.astype('<f4').tobytes())
  return written


@pytest.mark.slow
def test_darknet_weights_land_where_the_cfg_puts_them(tmp_path, capsys):
  """`python -m cvjax.convert --source=darknet` on a yolov3-tiny file with 3 classes written
  from the cfg: every array at conv{i}/bn{i} (OIHW → HWIO), the class count read off the
  size, the first layer equal to a reference conv + BN + leaky ReLU, and predict works."""
  import cvjax
  from cvjax import convert
  rng = np.random.default_rng(0)
  path = tmp_path / 'tiny.weights'
  written = _darknet_file(path, TINY_CFG, 3, rng)
  out = tmp_path / 'w'
  assert convert.main(['--source=darknet', '--model=yolov3-tiny', f'--weights={path}',
                       f'--out={out}', '--image_size=64']) == 0
  restored = cvjax.restore(str(out))
  assert (restored.config.model, restored.config.num_classes) == ('yolov3_tiny', 3)
  params, stats = restored.variables['params'], restored.variables['batch_stats']
  for i, arrays in written.items():
    scope = (lambda tree: tree['backbone']) if i < 13 else (lambda tree: tree)
    np.testing.assert_array_equal(scope(params)[f'conv{i}']['kernel'],
                                  np.transpose(arrays[-1], (2, 3, 1, 0)))
    if len(arrays) == 5:
      beta, gamma, mean, var, _ = arrays
      bn, bs = scope(params)[f'bn{i}'], scope(stats)[f'bn{i}']
      for got, want in [(bn['bias'], beta), (bn['scale'], gamma), (bs['mean'], mean),
                        (bs['var'], var)]:
        np.testing.assert_array_equal(got, want)
    else:
      np.testing.assert_array_equal(scope(params)[f'conv{i}']['bias'], arrays[0])
  x = rng.uniform(size=(1, 64, 64, 3)).astype(np.float32)
  _, inter = jax.jit(lambda v, x: restored.model.apply(  # eagerly, every op would compile
      v, x, capture_intermediates=True, mutable=['intermediates']))(restored.variables, x)
  beta, gamma, mean, var, w = written[0]
  conv = jax.lax.conv_general_dilated(x.transpose(0, 3, 1, 2), w, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
  ref = np.asarray(conv).transpose(0, 2, 3, 1)
  ref = (ref - mean) / np.sqrt(var + 1e-5) * gamma + beta
  np.testing.assert_allclose(inter['intermediates']['backbone']['bn0']['__call__'][0], ref,
                             rtol=1e-4, atol=1e-4)
  found = restored.predict(np.zeros((50, 70, 3), np.uint8))
  assert len(found) == 1 and found[0]['boxes'].shape[1:] == (4,)
  capsys.readouterr()
  raw = path.read_bytes()
  (tmp_path / 'short.weights').write_bytes(raw[:-4])
  (tmp_path / 'v1.weights').write_bytes(np.array([0, 1, 0, 7], '<i4').tobytes() + raw[20:])
  for weights, extra, message in [
      ('short.weights', [], 'error: --weights='),
      ('tiny.weights', ['--num_classes=80'], 'error: --num_classes=80, but the file holds '
                                            'yolov3_tiny with 3 classes'),
      ('tiny.weights', ['--model=yolov4'], "error: unknown darknet model 'yolov4'")]:
    argv = ['--source=darknet', '--model=yolov3_tiny', f'--weights={tmp_path / weights}',
            f'--out={tmp_path / "o"}', *extra]
    assert convert.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
  assert not (tmp_path / 'o').exists()
  # A version-0.1 header (int32 `seen`) reads the same floats.
  from cvjax.pretrained import darknet
  assert np.array_equal(darknet.read_weights(str(tmp_path / 'v1.weights'))[1],
                        darknet.read_weights(str(path))[1])


# ----------------------------------------------------------------- the one loop, tools


@pytest.fixture(scope='module')
def shapes_dir(tmp_path_factory):
  from cvjax.detection import data
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  data.dataset_meta('cvjax_shapes/tiny', data_dir=data_dir)
  return data_dir


@pytest.fixture(scope='module')
def tiny_yolo():
  """'yolo_test_tiny': Darknet-53's layout at width 4 with one block per stage, 64²."""
  from cvjax.models import registry
  registry._add('yolo_test_tiny', functools.partial(  # pylint: disable=protected-access
      yolo_models.YOLOv3, width=4, stage_sizes=(1, 1, 1, 1, 1), input_size=64,
      max_detections=50, candidates_per_class=50), (64, 64, 3), 6, task='detection')
  yield 'yolo_test_tiny'
  del registry._MODELS['yolo_test_tiny']  # pylint: disable=protected-access


@pytest.mark.slow
def test_yolo_trains_in_the_one_loop_restores_detects_and_gets_anchors(
    shapes_dir, tiny_yolo, tmp_path, capsys):
  """k-means anchors from `python -m cvjax.anchors` → --model_kwargs → fit (8 devices) with
  mAP → restore().predict (what `python -m cvjax.detect` draws)."""
  from cvjax import anchors
  from cvjax.tasks import fit
  from cvjax.train import TrainConfig
  from cvjax.train.config import parse_kwargs
  assert anchors.main(['--dataset=cvjax_shapes/tiny', '--k=9', f'--data_dir={shapes_dir}']) == 0
  printed = capsys.readouterr().out.strip().splitlines()
  assert printed[-1].startswith('--model_kwargs=anchors=(')
  kwargs = parse_kwargs(printed[-1].removeprefix('--model_kwargs='))
  assert len(kwargs['anchors']) == 18
  workdir = str(tmp_path / 'run')
  config = TrainConfig(task='detection', model=tiny_yolo, dataset='cvjax_shapes/tiny',
                       data_dir=shapes_dir, batch_size=16, num_train_steps=8, optimizer='adam',
                       learning_rate=3e-3, schedule='constant', log_every_steps=4,
                       eval_every_steps=8, checkpoint_every_steps=8, eval_split='validation',
                       model_kwargs={**kwargs, 'score_threshold': 0.05},
                       conv_impl='xla')  # the loop is under test here, not the CPU lowerings
  results = fit(config, workdir)
  assert results['step'] == 8 and results['test_examples'] == 32
  assert 0 <= results['test_map'] <= results['test_map50'] <= 1 and np.isfinite(results['test_loss'])
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    train = [line for line in map(json.loads, f) if 'train_loss' in line]
  assert {'train_box_loss', 'train_obj_loss', 'train_cls_loss', 'train_positives'} <= set(train[0])
  assert train[-1]['train_loss'] < train[0]['train_loss']
  import cvjax
  restored = cvjax.restore(workdir)
  assert restored.model.anchors == tuple(kwargs['anchors'])
  found = restored.predict([np.full((50, 70, 3), 128, np.uint8), np.zeros((96, 96, 3), np.uint8)])
  assert len(found) == 2
  for f in found:
    assert (np.diff(f['scores']) <= 0).all() and (f['scores'] > 0.05).all()
    assert ((0 <= f['boxes']) & (f['boxes'] <= 1)).all()
  assert anchors.main(['--dataset=cvjax_shapes/tiny', '--k=0', f'--data_dir={shapes_dir}']) == 2
  assert capsys.readouterr().err.strip().splitlines()[-1] == 'error: --k must be a positive integer, got 0'


def test_heads_are_chosen_by_the_model_family():
  assert isinstance(families.family_for(get_model('yolov3_shapes', 6)), families.YOLOFamily)
  assert isinstance(families.family_for(get_model('ssd128_resnet18_slim', 6)), families.SSDFamily)
  with pytest.raises(UserError, match='ResNet is not a detector cvjax.detection knows'):
    families.family_for(get_model('resnet18', 10))


def test_decode_map_is_the_papers_formula():
  raw = np.random.default_rng(4).normal(size=(1, 2, 3, 1, 6)).astype(np.float32)
  got = np.asarray(yolo.decode_map(jnp.asarray(raw), jnp.asarray([[0.2, 0.4]])))
  t = raw[0, 1, 2, 0]
  cx, cy = (2 + 1 / (1 + np.exp(-t[0]))) / 3, (1 + 1 / (1 + np.exp(-t[1]))) / 2
  w, h = 0.2 * np.exp(t[2]), 0.4 * np.exp(t[3])
  np.testing.assert_allclose(got[0, 1, 2, 0], box_ops.from_center(cx, cy, w, h), rtol=1e-5)
