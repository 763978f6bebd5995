"""Detection core: box coding, default boxes, matching, MultiBox loss, NMS, metrics, SSD models."""
import contextlib
import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvjax.detection import boxes, matching, metrics, multibox, postprocess
from cvjax.models import get_model, list_models, model_input_shape, ssd


def _random_boxes(rng, n, lo=0.02, hi=0.6):
  """f32[n, 4] (ymin, xmin, ymax, xmax) inside the unit square."""
  size = rng.uniform(lo, hi, (n, 2))
  corner = rng.uniform(0, 1 - size)
  return np.concatenate([corner, corner + size], -1).astype(np.float32)


# --------------------------------------------------------------------- box coding


def test_encode_decode_round_trip_and_torchvision_scale():
  rng = np.random.default_rng(0)
  gt, prior = _random_boxes(rng, 500), _random_boxes(rng, 500)
  codes = boxes.encode(gt, prior)
  np.testing.assert_allclose(boxes.decode(codes, prior), gt, atol=2e-6)
  # A box shifted right by 10% of the anchor's width and twice as tall: dx = 1, dh = log(2)/0.2.
  anchor = np.array([[0.2, 0.2, 0.4, 0.6]], np.float32)          # w 0.4, h 0.2, centre (0.4, 0.3)
  box = np.array([[0.1, 0.24, 0.5, 0.64]], np.float32)           # centre (0.44, 0.3), h 0.4
  np.testing.assert_allclose(boxes.encode(box, anchor), [[1.0, 0.0, 0.0, math.log(2) / 0.2]],
                             atol=1e-5)


def test_decode_caps_the_size_exponent_like_torchvision():
  anchor = np.array([[0.4, 0.4, 0.6, 0.6]], np.float32)
  huge = boxes.decode(np.array([[0.0, 0.0, 100.0, 0.0]], np.float32), anchor)
  assert float(huge[0, 3] - huge[0, 1]) == pytest.approx(0.2 * 1000 / 16, rel=1e-4)


def test_iou_values():
  a = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.float32)
  b = np.array([[0, 0, 1, 1], [0, 0.5, 1, 1.5], [2, 2, 3, 3]], np.float32)
  np.testing.assert_allclose(boxes.iou(a, b), [[1, 1 / 3, 0], [1, 1 / 3, 0]], atol=1e-6)


# ------------------------------------------------------------------ default boxes


def test_ssd300_default_boxes_are_torchvisions():
  model = get_model('ssd300_vgg16', 20)
  priors = model.default_boxes()
  assert priors.shape == (8732, 4)
  # Map 0, cell (0, 0): centre (0.5 · 8/300), boxes s=0.07, s'=√(0.07·0.15), ratio 2 and 1/2.
  c, s, s2, r = 4 / 300, 0.07, math.sqrt(0.07 * 0.15), math.sqrt(2)
  expect = [(s, s), (s2, s2), (s * r, s / r), (s / r, s * r)]            # (w, h)
  np.testing.assert_allclose(priors[:4], [[c - h / 2, c - w / 2, c + h / 2, c + w / 2]
                                          for w, h in expect], atol=1e-6)
  # The 1×1 map: centred, sizes clipped to 1 (0.87·√2 > 1).
  np.testing.assert_allclose(priors[-2], [0.5 - 0.87 / r / 2, 0, 0.5 + 0.87 / r / 2, 1], atol=1e-6)
  # Cell (0, 1) of map 1 follows cell (0, 0): x moves by the step 16/300.
  first = 38 * 38 * 4
  assert priors[first + 6, 1] - priors[first, 1] == pytest.approx(16 / 300, abs=1e-6)


@pytest.mark.parametrize('name, count, maps', [
    ('ssd300_vgg16', 8732, [38, 19, 10, 5, 3, 1]),
    ('ssd512_vgg16', 24564, [64, 32, 16, 8, 4, 2, 1]),
    ('ssd300_resnet50', 8732, [38, 19, 10, 5, 3, 1]),
    ('ssd128_resnet18_slim', 1524, [16, 8, 4, 2, 1])])
def test_every_ssd_has_its_maps_anchors_and_output_shapes(name, count, maps):
  model = get_model(name, 6)
  size = model_input_shape(name)[0]
  assert [h for h, _ in model.feature_sizes()] == maps
  out, _ = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
  assert out[0].shape == (2, count, 4) and out[1].shape == (2, count, 7)
  assert model.default_boxes().shape == (count, 4)
  assert name in list_models('detection') and name not in list_models()


def test_ssd300_vgg16_has_torchvisions_parameter_count_and_name_table():
  model = get_model('ssd300_vgg16', 90)  # torchvision: 91 COCO columns incl. background
  _, variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x),
                                jax.ShapeDtypeStruct((1, 300, 300, 3), jnp.float32))
  params = variables['params']
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  assert sum(math.prod(x.shape) for _, x in leaves) == 35_641_826   # torchvision's documented count
  modules = {'/'.join(k.key for k in path[:-1]) for path, _ in leaves}
  assert modules == set(ssd.TORCHVISION_SSD300_VGG16)                   # every layer has a torch name
  assert ssd.TORCHVISION_SSD300_VGG16['backbone/conv4_3'] == 'backbone.features.21'
  assert ssd.TORCHVISION_SSD300_VGG16['backbone/fc7'] == 'backbone.extra.0.7.3'


# ---------------------------------------------------------------------- matching


def test_matching_forces_each_ground_truths_best_prior_then_thresholds():
  priors = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0],
                     [0.0, 0.0, 0.55, 0.55]], np.float32)
  gt = np.array([[0.6, 0.6, 0.7, 0.7],      # tiny: IoU 0.04 with prior 1, below 0.5 yet forced
                 [0.0, 0.0, 0.52, 0.52],    # IoU ≥ 0.5 with priors 0 and 3
                 [9, 9, 9, 9]], np.float32)  # padding
  mask = np.array([True, True, False])
  m = np.asarray(matching.match(gt, mask, priors))
  assert m.tolist() == [1, 0, -1, 1]
  # Two objects whose best prior is the same: the later one keeps it (torchvision's
  # assignment order); the other still gets its threshold matches.
  gt2 = np.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.49, 0.49]], np.float32)
  m2 = np.asarray(matching.match(gt2, np.array([True, True]), priors))
  assert m2[0] == 1
  assert not np.isin(m2, [2]).any() and (m2 >= -1).all()


# --------------------------------------------------------------- hard negatives


def test_hard_negative_mining_takes_three_negatives_per_positive_with_the_largest_loss():
  rng = np.random.default_rng(0)
  ce = rng.uniform(0, 5, (3, 50)).astype(np.float32)
  positive = np.zeros((3, 50), bool)
  positive[0, [3, 7]] = True                  # 2 positives → 6 negatives
  positive[1, :20] = True                     # 20 positives → 60 > 30 negatives available
  neg = np.asarray(multibox.hard_negatives(ce, positive))
  assert neg.sum(1).tolist() == [6, 30, 0]   # image 2 has no positives: no negatives
  expected = np.argsort(-np.where(positive[0], -np.inf, ce[0]))[:6]
  assert set(np.flatnonzero(neg[0])) == set(expected)
  assert not (neg & positive).any()


def _reference_multibox(locs, logits, priors, gt_boxes, gt_labels, gt_mask):
  """torchvision's SSD.compute_loss in numpy, one image at a time (sums, unnormalised)."""
  out = []
  for b in range(len(locs)):
    g = gt_boxes[b][gt_mask[b]]
    iou = np.asarray(boxes.iou(g, priors))
    match = np.where(iou.max(0) >= 0.5, iou.argmax(0), -1)
    match[iou.argmax(1)] = np.arange(len(g))
    fg = match >= 0
    target = np.asarray(boxes.encode(g[match[fg]], priors[fg]))
    diff = np.abs(locs[b][fg] - target)
    loc = np.where(diff < 1, 0.5 * diff**2, diff - 0.5).sum()
    cls = np.zeros(len(priors), int)
    cls[fg] = gt_labels[b][gt_mask[b]][match[fg]] + 1
    logp = logits[b] - np.log(np.exp(logits[b]).sum(-1, keepdims=True))
    ce = -logp[np.arange(len(priors)), cls]
    neg_loss = np.where(fg, -np.inf, ce)
    neg = np.argsort(-neg_loss, kind='stable')[:3 * fg.sum()]
    out.append((loc, ce[fg].sum() + ce[neg].sum(), fg.sum()))
  return np.array(out)


def test_multibox_loss_equals_a_per_image_reference():
  rng = np.random.default_rng(1)
  priors = get_model('ssd128_resnet18_slim', 4).default_boxes()
  n = len(priors)
  locs = rng.normal(0, 1, (2, n, 4)).astype(np.float32)
  logits = rng.normal(0, 2, (2, n, 5)).astype(np.float32)
  gt = np.stack([_random_boxes(rng, 6, 0.1, 0.5) for _ in range(2)])
  labels = rng.integers(0, 4, (2, 6)).astype(np.int32)
  mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  got = jax.jit(multibox.multibox_loss)(locs, logits, priors, gt, labels, mask)
  ref = _reference_multibox(locs, logits, priors, gt, labels, mask)
  np.testing.assert_allclose(got['localization'], ref[:, 0], rtol=1e-4)
  np.testing.assert_allclose(got['confidence'], ref[:, 1], rtol=1e-4)
  np.testing.assert_array_equal(got['num_positive'], ref[:, 2])
  np.testing.assert_array_equal(got['num_negative'], 3 * ref[:, 2])


# --------------------------------------------------------------------------- NMS


def _greedy_nms(b, s, threshold):
  order = np.argsort(-s, kind='stable')
  iou = metrics.box_iou(b.astype(np.float64), b.astype(np.float64))  # same IoU, numpy
  keep = []
  for i in order:
    if all(iou[i, j] <= threshold for j in keep):
      keep.append(i)
  return keep


def test_nms_equals_brute_force_greedy_suppression():
  rng = np.random.default_rng(2)
  for trial in range(5):
    b = _random_boxes(rng, 60, 0.1, 0.4)
    b[30:] = b[:30] + rng.normal(0, 0.02, (30, 4)).astype(np.float32)  # near-duplicates
    s = rng.uniform(size=60).astype(np.float32)
    order = np.argsort(-s, kind='stable')
    keep = np.asarray(postprocess.nms(b[order], np.ones(60, bool), 0.45))
    assert sorted(order[keep].tolist()) == sorted(_greedy_nms(b, s, 0.45)), trial


def test_detect_equals_torchvisions_postprocess_reference():
  rng = np.random.default_rng(3)
  priors = _random_boxes(rng, 300, 0.05, 0.5)
  codes = rng.normal(0, 0.5, (2, 300, 4)).astype(np.float32)
  logits = rng.normal(0, 2, (2, 300, 4)).astype(np.float32)
  config = postprocess.PostprocessConfig(score_threshold=0.2, nms_threshold=0.45,
                                         max_detections=25, candidates_per_class=40)
  det = jax.device_get(jax.jit(lambda c, l: postprocess.detect(c, l, priors, config))(codes, logits))
  for i in range(2):
    decoded = np.clip(np.asarray(boxes.decode(codes[i], priors)), 0, 1)
    probs = np.exp(logits[i]) / np.exp(logits[i]).sum(-1, keepdims=True)
    found = []
    for c in range(1, 4):
      score = probs[:, c]
      idx = np.flatnonzero(score > 0.2)
      idx = idx[np.argsort(-score[idx], kind='stable')][:40]
      for j in _greedy_nms(decoded[idx], score[idx], 0.45):
        found.append((score[idx[j]], c - 1, tuple(decoded[idx[j]])))
    found = sorted(found, key=lambda f: -f[0])[:25]
    valid = det.valid[i]
    assert valid.sum() == len(found)
    np.testing.assert_allclose(det.scores[i][valid], [f[0] for f in found], rtol=1e-5)
    assert det.classes[i][valid].tolist() == [f[1] for f in found]
    np.testing.assert_allclose(det.boxes[i][valid], [f[2] for f in found], atol=1e-5)
    assert not det.valid[i][len(found):].any() and (det.scores[i][~valid] == 0).all()


# ------------------------------------------------------------------------ metrics


def _coco_files(seed, noise=0.06, images=40, classes=5, crowd=0.08):
  """Random COCO ground truth and detections: jittered true boxes, random false
  positives (some with tied scores), crowd boxes, and one image with 260 detections."""
  rng = np.random.default_rng(seed)
  ims = [{'id': int(i), 'width': 640, 'height': 480}
         for i in rng.choice(10_000, images, replace=False)]
  cats = [{'id': int(c), 'name': f'c{c}'} for c in sorted(rng.choice(90, classes, replace=False) + 1)]
  anns, dets = [], []
  for k, im in enumerate(ims):
    for _ in range(rng.integers(0, 12)):
      w, h = np.exp(rng.uniform(np.log(4), np.log(300), 2))
      x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
      c = cats[rng.integers(classes)]['id']
      anns.append({'id': len(anns) + 1, 'image_id': im['id'], 'category_id': c,
                   'bbox': [x, y, w, h], 'area': float(w * h * rng.uniform(0.5, 1)),
                   'iscrowd': int(rng.uniform() < crowd)})
      for _ in range(rng.integers(0, 4)):
        j = rng.normal(0, noise, 4) * [w, h, w, h]
        cc = c if rng.uniform() < 0.85 else cats[rng.integers(classes)]['id']
        dets.append({'image_id': im['id'], 'category_id': cc, 'score': float(rng.uniform()),
                     'bbox': [x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1)]})
    for _ in range(260 if k == 0 else rng.integers(0, 20)):
      w, h = np.exp(rng.uniform(np.log(4), np.log(300), 2))
      dets.append({'image_id': im['id'], 'category_id': cats[rng.integers(classes)]['id'],
                   'bbox': [rng.uniform(0, 600), rng.uniform(0, 440), w, h],
                   'score': float(np.round(rng.uniform(), 2))})
  return {'images': ims, 'annotations': anns, 'categories': cats}, dets


def _pycocotools(gt, dets):
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    if dets:
      coco_dt = coco_gt.loadRes(dets)
    else:  # loadRes([]) raises IndexError: an empty results set built by hand
      coco_dt = COCO()
      coco_dt.dataset = {'images': gt['images'], 'categories': gt['categories'],
                         'annotations': []}
      coco_dt.createIndex()
    ev = COCOeval(coco_gt, coco_dt, 'bbox')
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return dict(zip(metrics.COCO_KEYS, ev.stats))


@pytest.mark.parametrize('seed, noise', [(0, 0.02), (1, 0.06), (2, 0.2)])
def test_coco_metrics_equal_pycocotools(seed, noise):
  from cvjax import evaluate
  gt, dets = _coco_files(seed, noise)
  ours = evaluate.evaluate(gt, dets, 'coco')
  ref = _pycocotools(gt, dets)
  assert set(ours) == set(metrics.COCO_KEYS)
  for k in metrics.COCO_KEYS:
    assert ours[k] == pytest.approx(ref[k], abs=1e-4), k
  assert ours['AP50'] > 0.05   # a non-trivial case


@pytest.mark.parametrize('case', ['no_detections', 'only_absent_categories',
                                  'no_ground_truth_boxes'])
def test_coco_metrics_of_nothing_to_match_equal_pycocotools(case, tmp_path, capsys):
  """A detector that finds nothing scores 0 (−1 where the ground truth has no box, COCOeval's
  "undefined"), and so does one whose every class is absent from the ground truth."""
  from cvjax import evaluate
  gt, dets = _coco_files(3, images=6)
  if case == 'no_detections':
    dets = []
  elif case == 'only_absent_categories':
    absent = max(c['id'] for c in gt['categories']) + 1
    dets = [{**d, 'category_id': absent} for d in dets]
  else:
    gt = {**gt, 'annotations': []}
  ref = _pycocotools(gt, dets)
  ours = evaluate.evaluate(gt, dets, 'coco')
  for k in metrics.COCO_KEYS:
    assert ours[k] == pytest.approx(ref[k], abs=1e-12), k
  assert ours['AP'] == (-1.0 if case == 'no_ground_truth_boxes' else 0.0)
  (tmp_path / 'gt.json').write_text(json.dumps(gt))
  (tmp_path / 'dets.json').write_text(json.dumps(dets))
  args = [f'--ground_truth={tmp_path / "gt.json"}', f'--detections={tmp_path / "dets.json"}']
  assert evaluate.main(args + ['--metric=coco', '--json']) == 0
  assert json.loads(capsys.readouterr().out) == pytest.approx(ref, abs=1e-12)
  assert evaluate.main(args + ['--metric=voc07', '--json']) == 0
  voc = json.loads(capsys.readouterr().out)
  assert voc['mAP'] == (None if case == 'no_ground_truth_boxes' else 0.0)


def _devkit_voc_ap(gt, dets, category, use_07):
  """The VOC devkit's voc_eval loop (continuous IoU) on COCO-style records."""
  recs = {}
  for a in gt['annotations']:
    if a['category_id'] == category:
      recs.setdefault(a['image_id'], []).append(a)
  npos = sum(not a.get('difficult', 0) for r in recs.values() for a in r)
  ds = sorted((d for d in dets if d['category_id'] == category), key=lambda d: -d['score'])
  seen = {i: [False] * len(r) for i, r in recs.items()}
  tp, fp = [], []
  for d in ds:
    r = recs.get(d['image_id'], [])
    best, j = -np.inf, -1
    for n, a in enumerate(r):
      x1, y1 = max(a['bbox'][0], d['bbox'][0]), max(a['bbox'][1], d['bbox'][1])
      x2 = min(a['bbox'][0] + a['bbox'][2], d['bbox'][0] + d['bbox'][2])
      y2 = min(a['bbox'][1] + a['bbox'][3], d['bbox'][1] + d['bbox'][3])
      inter = max(x2 - x1, 0) * max(y2 - y1, 0)
      iou = inter / (a['bbox'][2] * a['bbox'][3] + d['bbox'][2] * d['bbox'][3] - inter)
      if iou > best:
        best, j = iou, n
    if best > 0.5:
      if r[j].get('difficult', 0):
        tp.append(0), fp.append(0)
      elif not seen[d['image_id']][j]:
        seen[d['image_id']][j] = True
        tp.append(1), fp.append(0)
      else:
        tp.append(0), fp.append(1)
    else:
      tp.append(0), fp.append(1)
  tp, fp = np.cumsum(tp), np.cumsum(fp)
  rec = tp / npos
  prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  return metrics.voc_ap(rec, prec, use_07)


@pytest.mark.parametrize('use_07', [True, False])
def test_voc_metrics_equal_the_devkit_loop(use_07):
  from cvjax import evaluate
  gt, dets = _coco_files(4, noise=0.05, crowd=0.0)
  rng = np.random.default_rng(5)
  for a in gt['annotations']:
    a['difficult'] = int(rng.uniform() < 0.15)
  ours = evaluate.evaluate(gt, dets, 'voc07' if use_07 else 'voc12')
  names = {c['id']: c['name'] for c in gt['categories']}
  for c in names:
    assert ours['per_class'][names[c]] == pytest.approx(_devkit_voc_ap(gt, dets, c, use_07),
                                                        abs=1e-9)
  assert ours['mAP'] == pytest.approx(np.mean(list(ours['per_class'].values())))
  # 11-point AP is a mean of 11 precision values: a multiple of 1/11 per class would not
  # hold in general, but it never exceeds 1 and ranks the same classes first.
  assert 0.1 < ours['mAP'] <= 1.0


def test_evaluate_cli_prints_json_and_rejects_bad_input(tmp_path, capsys):
  from cvjax import evaluate
  gt, dets = _coco_files(0, 0.02, images=10)
  (tmp_path / 'gt.json').write_text(json.dumps(gt))
  (tmp_path / 'dets.json').write_text(json.dumps(dets))
  args = [f'--ground_truth={tmp_path / "gt.json"}', f'--detections={tmp_path / "dets.json"}']
  assert evaluate.main(args + ['--metric=coco', '--json']) == 0
  out = json.loads(capsys.readouterr().out)
  assert out['AP'] == pytest.approx(_pycocotools(gt, dets)['AP'], abs=1e-4)
  assert evaluate.main(args + ['--metric=voc12']) == 0
  assert capsys.readouterr().out.strip().splitlines()[-1].startswith('mAP')
  bad = [(args + ['--metric=voc10'], "error: unknown metric 'voc10'"),
         ([args[0], f'--detections={tmp_path / "nope.json"}'], 'does not exist'),
         ([args[0], f'--detections={tmp_path / "gt.json"}'], 'COCO results list')]
  (tmp_path / 'other.json').write_text(json.dumps([{**dets[0], 'image_id': -5}]))
  bad.append(([args[0], f'--detections={tmp_path / "other.json"}'], 'not in the ground truth'))
  for argv, message in bad:
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and message in err[0], err
  for argv, message in [([args[0]], 'error: --detections is required'),
                        (args + ['--metrc=voc07'], "error: Unknown command line flag 'metrc'"),
                        (args + ['--json=maybe'], 'error: flag --json=maybe')]:
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_torchvision_backbone_converts_to_a_workdir_init_from_reads(tmp_path, capsys):
  """vgg16_features (torchvision's SSD backbone) → params/backbone/conv*_* (OIHW → HWIO),
  through `python -m cvjax.convert --source=torchvision`."""
  from cvjax import convert
  from cvjax.pretrained import ssd as weights
  from cvjax.train.warm_start import read_workdir
  rng = np.random.default_rng(0)
  channels = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]   # VGG-16 `features` convs
  state_dict = {}
  for i, cin, cout in zip(indices, channels[:-1], channels[1:]):
    state_dict[f'{i}.weight'] = rng.normal(size=(cout, cin, 3, 3)).astype(np.float32)
    state_dict[f'{i}.bias'] = rng.normal(size=cout).astype(np.float32)
  np.savez(tmp_path / 'vgg16_features.npz', **state_dict)
  out = tmp_path / 'backbone'
  assert convert.main(['--source=torchvision', '--model=vgg16_features',
                       f'--weights={tmp_path / "vgg16_features.npz"}', f'--out={out}']) == 0
  config, arrays, _ = read_workdir(str(out))
  assert config.model == 'ssd300_vgg16' and config.task == 'detection'
  assert config.num_classes == 20 and config.dataset == 'voc/07+12'
  backbone = arrays['params']['backbone']
  assert len(backbone) == 13 and 'fc6' not in backbone
  np.testing.assert_array_equal(backbone['conv4_3']['kernel'],
                                np.transpose(state_dict['21.weight'], (2, 3, 1, 0)))
  np.testing.assert_array_equal(backbone['conv5_3']['bias'], state_dict['28.bias'])
  # COCO heads: each box's 91 torchvision columns → background + the 80 TFDS labels.
  assert len(weights.COCO_CATEGORY_IDS) == 80 and weights.COCO_CATEGORY_IDS[-1] == 90
  w = np.arange(2 * 91, dtype=np.float32)[:, None, None, None]
  kept, _ = weights._select_classes(w, w[:, 0, 0, 0], 2, [0] + list(weights.COCO_CATEGORY_IDS))
  assert kept[:, 0, 0, 0].tolist() == ([0] + list(weights.COCO_CATEGORY_IDS)
                                       + [91] + [91 + c for c in weights.COCO_CATEGORY_IDS])
  capsys.readouterr()
  npz = f'--weights={tmp_path / "vgg16_features.npz"}'
  for argv, message in [
      (['--model=ssd300_vgg16', npz], "error: the state dict has no 'backbone.features.0.weight'"),
      (['--model=vgg16_features', npz, '--image_size=512'], 'error: --image_size=512: '),
      (['--model=resnet18', npz, '--num_classes=3'], 'error: --num_classes is for torchvision '
                                                     'vgg16_features only')]:
    assert convert.main(['--source=torchvision', *argv, f'--out={tmp_path / "o"}']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
  assert not (tmp_path / 'o').exists()
