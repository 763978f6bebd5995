"""cvjax.summary: MACs against torchvision's figures, shapes against the lecture
tables and the output-size formula, memory arithmetic, and the command line."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from cvjax import errors, summary
from cvjax.models import get_model, model_input_shape


def _hwc(layer):
  return tuple(layer['output_shape'][1:])


# torchvision's model cards ("GFLOPS", which count multiply-adds) at 224², 1000 classes.
@pytest.mark.parametrize('name, gmacs', [
    ('resnet18', 1.81), ('resnet50', 4.09), ('vgg16', 15.47),
    ('resnet34', 3.66), ('resnet152', 11.51), ('vgg19', 19.63),
    ('alexnet_torchvision', 0.71)])
def test_macs_within_2_percent_of_torchvision(name, gmacs):
  s = summary.summary(name)
  assert abs(s['macs'] / 1e9 - gmacs) / gmacs < 0.02
  assert s['flops'] == 2 * s['macs']


def test_exact_macs_for_hand_counted_lenet5():
  # conv1 28²·6·25, conv2 10²·16·6·25, conv3 120·16·25, fc 120·84 + 84·10.
  s = summary.summary('lenet5')
  want = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 6 * 25 + 120 * 16 * 25 + 120 * 84 + 84 * 10
  assert s['macs'] == want == 416_520


def test_macs_and_activations_scale_with_batch_and_params_do_not():
  one, four = summary.summary('resnet20'), summary.summary('resnet20', batch_size=4)
  assert four['macs'] == 4 * one['macs'] and four['macs_per_example'] == one['macs']
  assert four['activation_bytes'] == 4 * one['activation_bytes']
  assert four['total_params'] == one['total_params'] == 269_722


def test_layer_params_add_up_to_the_total():
  for name in ('resnet50', 'vgg16_bn', 'alexnet', 'resnet56'):
    s = summary.summary(name)
    assert sum(l['params'] for l in s['layers']) == s['total_params']
    assert s['param_bytes'] == 4 * s['total_params']


def test_activation_bytes_sum_each_layer_output_in_the_model_dtype():
  s = summary.summary('lenet5')
  # 28²·6 + 14²·6 + 10²·16 + 5²·16 + 120 + 84 + 10 float32 values.
  assert s['activation_bytes'] == 4 * 8_094 == 32_376
  half = summary.summary('resnet18', dtype='bfloat16')
  assert half['dtype'] == 'bfloat16'
  assert 2 * half['activation_bytes'] == summary.summary('resnet18')['activation_bytes']
  assert half['param_bytes'] == 4 * half['total_params']  # params stay float32


def test_lenet_shapes_follow_the_lecture_table():
  for size in (32, 28):  # 28×28 is zero-padded to 32×32 first
    s = summary.summary('lenet5', image_size=size)
    shapes = [(l['name'], _hwc(l)) for l in s['layers']]
    assert shapes == [('conv1', (28, 28, 6)), ('pool1', (14, 14, 6)),
                      ('conv2', (10, 10, 16)), ('pool2', (5, 5, 16)),
                      ('conv3', (1, 1, 120)), ('fc1', (84,)), ('fc2', (10,))]
    assert s['total_params'] == 61_706


def test_alexnet_shapes_follow_the_lecture_table():
  s = summary.summary('alexnet')
  shapes = {l['name']: _hwc(l) for l in s['layers']}
  assert [shapes[n] for n in ('conv1', 'pool1', 'conv2', 'pool2', 'conv3',
                              'conv4', 'conv5', 'pool5', 'fc6', 'fc7', 'fc8')] == [
      (55, 55, 96), (27, 27, 96), (27, 27, 256), (13, 13, 256), (13, 13, 384),
      (13, 13, 384), (13, 13, 256), (6, 6, 256), (4096,), (4096,), (1000,)]
  assert s['total_params'] == 62_378_344


def test_resnet50_stage_shapes_at_224():
  shapes = {l['name']: _hwc(l) for l in summary.summary('resnet50')['layers']}
  assert shapes['conv1'] == (112, 112, 64) and shapes['maxpool'] == (56, 56, 64)
  assert shapes['layer1_2/conv3'] == (56, 56, 256)
  assert shapes['layer2_3/conv3'] == (28, 28, 512)
  assert shapes['layer3_5/conv3'] == (14, 14, 1024)
  assert shapes['layer4_2/conv3'] == (7, 7, 2048)
  assert shapes['avgpool'] == (2048,)


@pytest.mark.parametrize('name, size', [
    ('alexnet', 227), ('alexnet_torchvision', 224), ('vgg16', 224),
    ('resnet50', 224), ('resnet18', 193), ('resnet50_keras', 225),
    ('resnet20', 32), ('lenet5', 32)])
def test_every_window_obeys_the_output_size_formula(name, size):
  """O = floor((W − F + 2P) / S) + 1 for every conv and pool, along H and W."""
  checked = 0
  for l in summary.summary(name, image_size=size)['layers']:
    if 'kernel' not in l:
      continue
    for axis in (0, 1):
      w, f, s = l['input_shape'][1 + axis], l['kernel'][axis], l['stride'][axis]
      lo, hi = l['padding'][axis]
      assert lo == hi, l  # explicit, symmetric padding everywhere
      assert l['output_shape'][1 + axis] == (w - f + 2 * lo) // s + 1, l
    checked += 1
  assert checked >= 5  # LeNet has the fewest: 3 convs, 2 pools


def test_keras_v1_costs_less_because_it_strides_the_first_1x1():
  v1, v15 = summary.summary('resnet50_keras'), summary.summary('resnet50')
  layer = lambda s, n: next(l for l in s['layers'] if l['name'] == n)
  assert layer(v1, 'layer2_0/conv1')['stride'] == [2, 2]
  assert layer(v15, 'layer2_0/conv2')['stride'] == [2, 2]
  assert 3.8e9 < v1['macs'] < v15['macs']


def test_xla_cost_analysis_agrees_roughly():
  # XLA counts 2 FLOPs per multiply-add but skips those against padding zeros
  # and adds elementwise ops, so it is a sanity check, not the reference.
  for name, tolerance in [('lenet5', 0.03), ('resnet18', 0.10)]:
    model = get_model(name, 10, conv_impl='xla')  # XLA's convolutions, not the CPU's forms
    x = jax.ShapeDtypeStruct((1, *model_input_shape(name)), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    xla = jax.jit(model.apply).lower(variables, x).cost_analysis()['flops']
    ours = summary.summarize(model, x.shape)['flops']
    assert abs(xla - ours) / ours < tolerance, (name, xla, ours)


def test_input_too_small_is_a_user_error_naming_the_layer():
  with pytest.raises(errors.UserError, match='pool5'):
    summary.summary('alexnet', image_size=40)
  with pytest.raises(errors.UserError, match='image_size'):
    summary.summary('resnet18', image_size=0)


def test_table_lists_layers_and_totals(capsys):
  assert summary.main(['--model=lenet5']) == 0
  out = capsys.readouterr().out
  assert 'conv1' in out and '28×28×6' in out and '5×5 s1 p0' in out
  assert '61,706' in out and '416,520' in out


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'cvjax.summary', *args],
                        capture_output=True, text=True, env=env, timeout=120)


def test_cli_json_is_one_valid_object():
  run = _cli('--model=resnet18', '--num_classes=10', '--image_size=64',
             '--batch_size=2', '--json')
  assert run.returncode == 0, run.stderr
  s = json.loads(run.stdout)
  for key in ('total_params', 'macs', 'flops', 'activation_bytes'):
    assert isinstance(s[key], int), key
  assert s['flops'] == 2 * s['macs']
  assert s['total_params'] == 11_689_512 - 513_000 + 5_130  # fc 512→10
  assert s['input_shape'] == [2, 64, 64, 3]
  assert isinstance(s['layers'], list) and s['layers'][0]['name'] == 'conv1'


def test_cli_unknown_model_is_one_line_on_stderr_with_exit_code_2():
  run = _cli('--model=resnet51')
  assert run.returncode == 2
  assert run.stdout == ''
  lines = run.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in run.stderr
  assert "unknown model 'resnet51'" in lines[0] and 'resnet50' in lines[0]


def test_backward_memory_remat_keeps_a_fraction_of_the_activations_and_scales_with_batch():
  """remat keeps each block's input, not its inside (traced; no compilation)."""
  one = summary.backward_memory('resnet20', batch_size=1, compiled=False)
  four = summary.backward_memory('resnet20', batch_size=4, compiled=False)
  assert one['remat'] and one['xla_temp_bytes'] is None
  # Per-image activations, plus a few per-channel BatchNorm values that do not grow.
  assert four['saved_bytes'] == pytest.approx(4 * one['saved_bytes'], rel=0.01)
  assert four['saved_bytes_remat'] == pytest.approx(4 * one['saved_bytes_remat'], rel=0.01)
  # Without remat well above the 1.4 MiB of leaf-layer outputs per image; with it under a third.
  assert one['saved_bytes'] > summary.summary('resnet20')['activation_bytes']
  assert one['saved_bytes_remat'] < one['saved_bytes'] / 3


def test_backward_memory_table_says_what_it_measured(capsys):
  assert summary.main(['--model=lenet5', '--batch_size=2', '--backward_memory']) == 0
  out = capsys.readouterr().out
  assert 'backward pass (one training-mode gradient, batch 2), no remat option for this model:' in out
  assert 'saved activations (autodiff)' in out and 'XLA temp buffers (cpu, compiled)' in out
  m = summary.backward_memory('lenet5', batch_size=2)
  assert not m['remat'] and 'saved_bytes_remat' not in m and m['xla_temp_bytes'] > 0
