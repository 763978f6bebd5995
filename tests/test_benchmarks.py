"""The benchmark peers are the same networks as cvjax's, and bad flags are one-line errors."""
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import checkpoint_cost, keras_peer, throughput

# Trainable parameters at 10 classes (cvjax's model docstrings; tests/test_models.py).
COUNTS = {'lenet5': 61_706, 'resnet20': 269_722}


@pytest.mark.parametrize('name', sorted(COUNTS))
def test_keras_peer_has_cvjax_parameter_count(name):
  model = keras_peer.build_model(name, 32, 10, {})
  assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == COUNTS[name]


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


@pytest.mark.parametrize('argv, message', [
    (['--model=lenet5', '--peers=caffe'], "error: unknown peer 'caffe'"),
    (['--model=lenet5', '--modes=backward'], "error: unknown mode 'backward'"),
    (['--model=lenet5', '--conv_impl=fast'], "error: unknown conv impl 'fast'"),
    (['--model=lenet5', '--batch_size=0'], 'error: --batch_size must be a positive integer, got 0'),
    (['--model=lenet6'], "error: unknown model 'lenet6'"),
])
def test_throughput_bad_flags_are_one_line_errors(argv, message, capsys):
  assert throughput.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith(message) and err.count('\n') == 1


def test_checkpoint_cost_needs_more_steps_than_the_interval(capsys):
  assert checkpoint_cost.main(['--num_train_steps=50', '--every=50']) == 2
  assert capsys.readouterr().err == ('error: --every=50 must be below --num_train_steps=50 to '
                                     'save more than the final checkpoint\n')
