"""The benchmark peers are the same networks as cvjax's, and bad flags are one-line errors."""
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import checkpoint_cost, keras_peer, ssd_inference, throughput

pytestmark = pytest.mark.slow  # The benchmarks run their timed rounds.

# Trainable parameters at 10 classes (cvjax's model docstrings; tests/test_models.py).
COUNTS = {'lenet5': 61_706, 'resnet20': 269_722}


@pytest.mark.parametrize('name', sorted(COUNTS))
def test_keras_peer_has_cvjax_parameter_count(name):
  model = keras_peer.build_model(name, 32, 10, {})
  assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == COUNTS[name]


# deep_cnn at 28×28×1, 10 classes, by widths (cvjax/models/deep_cnn.py's docstring).
DEEP_CNN_COUNTS = {(32, 64, 128): 882_858, (16, 32, 64): 373_082}


def _cvjax_trainable_count(name, image_size, channels, **kwargs):
  import jax
  from cvjax import models
  model = models.get_model(name, num_classes=10, **kwargs)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct((1, image_size, image_size, channels), np.float32))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes['params']))


@pytest.mark.parametrize('widths', sorted(DEEP_CNN_COUNTS))
def test_keras_peer_deep_cnn_has_cvjax_parameter_count_for_its_widths(widths):
  model = keras_peer.build_model('deep_cnn', 28, 10, {'widths': widths})
  keras_count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
  assert keras_count == _cvjax_trainable_count('deep_cnn', 28, 1, widths=widths)
  assert keras_count == DEEP_CNN_COUNTS[widths]


def test_keras_peer_deep_cnn_with_cvjax_weights_gives_cvjax_inference_logits():
  pytest.importorskip('keras')
  import jax
  from cvjax import models
  model = models.get_model('deep_cnn', num_classes=10)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 28, 28, 1)).astype(np.float32)
  variables = model.init(jax.random.key(0), x[:1])
  params = {k: {n: np.asarray(v) for n, v in p.items()} for k, p in variables['params'].items()}
  # Non-trivial BatchNorm: random gamma, beta, running mean and (positive) running variance.
  stats = {}
  for k, p in params.items():
    if k.startswith('bn'):
      c = p['scale'].shape
      p['scale'], p['bias'] = rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c)
      stats[k] = {'mean': rng.normal(0, 0.1, c), 'var': rng.uniform(0.5, 2.0, c)}
  params, stats = jax.tree.map(lambda a: a.astype(np.float32), (params, stats))
  peer = keras_peer.build_model('deep_cnn', 28, 10, {})
  loaded = set()
  for layer in peer.layers:
    if layer.name in params:
      p = params[layer.name]
      if layer.name.startswith('bn'):  # Keras: [gamma, beta, moving_mean, moving_variance]
        layer.set_weights([p['scale'], p['bias'], stats[layer.name]['mean'],
                           stats[layer.name]['var']])
      else:  # Conv2D HWIO and Dense [in, out], as flax's
        layer.set_weights([p['kernel']] + ([p['bias']] if 'bias' in p else []))
      loaded.add(layer.name)
  assert loaded == set(params)
  want = model.apply({'params': params, 'batch_stats': stats}, x, train=False)
  got = np.asarray(peer(x, training=False))
  assert np.abs(want).max() > 0.1  # the logits are not all near zero
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_keras_peer_for_torchvision_style_resnet50_is_skipped_not_keras_v1():
  assert keras_peer.build_model('resnet50', 224, 1000, {}) is None


def test_torch_peers_have_cvjax_parameter_counts():
  if not (importlib.util.find_spec('torch') and importlib.util.find_spec('torchvision')):
    pytest.skip('torch is an optional extra (pip install .[bench])')
  # Its own process: torch can crash a process that already loaded TensorFlow and JAX.
  code = ('import json; from benchmarks import torch_peer; print(json.dumps({n: sum(p.numel() '
          'for p in torch_peer.build_model(n, 10, {}).parameters()) for n in ("lenet5", "resnet20")}))')
  out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True,
                       timeout=300).stdout
  assert json.loads(out.splitlines()[-1]) == COUNTS


def test_torch_peer_deep_cnn_has_cvjax_parameter_count_for_its_widths():
  if not (importlib.util.find_spec('torch') and importlib.util.find_spec('torchvision')):
    pytest.skip('torch is an optional extra (pip install .[bench])')
  code = ('import json; from benchmarks import torch_peer; print(json.dumps([sum(p.numel() for p in '
          'torch_peer.build_model("deep_cnn", 10, {"widths": w}, 28).parameters() if p.requires_grad) '
          f'for w in {sorted(DEEP_CNN_COUNTS)}]))')
  out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True,
                       timeout=300).stdout
  assert json.loads(out.splitlines()[-1]) == [DEEP_CNN_COUNTS[w] for w in sorted(DEEP_CNN_COUNTS)]


@pytest.mark.parametrize('argv, message', [
    (['--model=lenet5', '--peers=caffe'], "error: unknown peer 'caffe'"),
    (['--model=lenet5', '--modes=backward'], "error: unknown mode 'backward'"),
    (['--model=lenet5', '--conv_impl=fast'], "error: unknown conv impl 'fast'"),
    (['--model=lenet5', '--batch_size=0'], 'error: --batch_size must be a positive integer, got 0'),
    (['--model=lenet6'], "error: unknown model 'lenet6'"),
    (['--model=lenet5', '--half_precision=fp16'], 'error: --half_precision=fp16 is not timed'),
    (['--model=lenet5', '--peak_tflops=0'], 'error: --peak_tflops must be positive, got 0.0'),
])
def test_throughput_bad_flags_are_one_line_errors(argv, message, capsys):
  assert throughput.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith(message) and err.count('\n') == 1


def test_checkpoint_cost_needs_more_steps_than_the_interval(capsys):
  assert checkpoint_cost.main(['--num_train_steps=50', '--every=50']) == 2
  assert capsys.readouterr().err == ('error: --every=50 must be below --num_train_steps=50 to '
                                     'save more than the final checkpoint\n')


def test_keras_peer_in_bf16_computes_in_bfloat16_and_restores_the_global_policy():
  import keras
  model = keras_peer.build_model('lenet5', 32, 10, {}, half_precision='bf16')
  dense = model.layers[-1]
  assert dense.compute_dtype == 'bfloat16' and dense.kernel.dtype == 'float32'
  assert keras.config.dtype_policy().name == 'float32'
  assert keras_peer.build_model('lenet5', 32, 10, {}).layers[-1].compute_dtype == 'float32'


def test_torch_peer_autocasts_to_bf16_only_when_asked():
  if not importlib.util.find_spec('torch'):
    pytest.skip('torch is an optional extra (pip install .[bench])')
  code = ('import torch; from benchmarks import torch_peer\n'
          'lin = torch.nn.Linear(4, 3)\n'
          'for half in ("bf16", None):\n'
          '  device, autocast = torch_peer.device_and_autocast(half)\n'
          '  with autocast(): print(device, lin.to(device)(torch.ones(2, 4, device=device)).dtype)')
  out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True,
                       timeout=300).stdout.split()
  assert out[1::2] == ['torch.bfloat16', 'torch.float32']


def test_throughput_in_bf16_reports_the_compute_dtype_a_bf16_peak_and_mfu(capsys):
  assert throughput.main(['--model=lenet5', '--batch_size=8', '--steps=1', '--repeats=1',
                          '--peers=keras', '--peak_size=256', '--half_precision=bf16',
                          '--peak_tflops=2', '--json']) == 0
  out = capsys.readouterr().out
  r = json.loads(out.splitlines()[-1])
  assert r['compute_dtype'] == 'bfloat16' and r['half_precision'] == 'bf16'
  assert r['backend'] == 'cpu' and set(r['results']) == {'cvjax', 'keras'}
  for res in r['results'].values():
    for v in res.values():
      assert v['images_per_second'] > 0
      assert v['mfu'] == pytest.approx(v['gflops'] / 2e3)


def test_ssd_inference_times_the_detector_with_nms_in_bf16(capsys):
  assert ssd_inference.main(['--model=ssd128_resnet18_slim', '--batch_size=2', '--steps=1',
                             '--repeats=1', '--peers=', '--half_precision=bf16', '--json']) == 0
  out = capsys.readouterr().out
  r = json.loads(out.splitlines()[-1])
  assert r['half_precision'] == 'bf16' and r['image_size'] == 128
  assert r['images_per_second']['cvjax'] > 0 and r['ratio'] == {}


@pytest.mark.parametrize('argv, message', [
    (['--model=resnet50'], "error: unknown detector 'resnet50'"),
    (['--model=ssd300_vgg16', '--half_precision=fp16'], 'error: --half_precision=fp16 is not'),
])
def test_ssd_inference_bad_flags_are_one_line_errors(argv, message, capsys):
  assert ssd_inference.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith(message) and err.count('\n') == 1
