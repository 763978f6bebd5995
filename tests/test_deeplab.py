"""DeepLabv3: torchvision's parameter counts, its atrous layout, its weights, predict and the CLI.

Counts and shapes come from `jax.eval_shape` (no compute). The torchvision parity
test runs torch in its own process (see test_pretrained.py) and skips without it.
"""
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cvjax
from cvjax import pretrained
from cvjax.errors import UserError
from cvjax.models import deeplab, get_model, model_info

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _trace(name, size, **kwargs):
  """(logits, variables) as shapes for x float32[1, size, size, 3]."""
  model = get_model(name, model_info(name).num_classes, **kwargs)
  return jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x),
                        jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))


# (name, aux_head, params, BatchNorm statistics): torchvision
# deeplabv3_resnet{50,101}(num_classes=21, aux_loss=False / True) count the same params.
COUNTS = [
    ('deeplabv3_resnet50', False, 39_638_869, 56_704),
    ('deeplabv3_resnet50', True, 42_004_074, 57_216),
    ('deeplabv3_resnet101', False, 58_630_997, 108_928),
    ('deeplabv3_resnet101', True, 60_996_202, 109_440),
    # ResNet-10 at 16-128 filters 309,024 (+ BN) + ASPP 64 and head: by the same code.
    ('deeplabv3_tiny', False, 605_719, 2_336),
]


@pytest.mark.parametrize('name, aux, params, stats', COUNTS,
                         ids=[f'{c[0]}{"_aux" if c[1] else ""}' for c in COUNTS])
def test_parameter_counts_match_torchvision(name, aux, params, stats):
  logits, variables = _trace(name, 64, aux_head=aux)
  assert (_count(variables['params']), _count(variables['batch_stats'])) == (params, stats)
  assert logits.shape == (1, 64, 64, model_info(name).num_classes)


def test_registry_declares_the_three_segmenters():
  assert model_info('deeplabv3_resnet50').input_shape == (520, 520, 3)  # torchvision's eval size
  assert model_info('deeplabv3_tiny').input_shape == (128, 128, 3)
  for name in ('deeplabv3_resnet50', 'deeplabv3_resnet101', 'deeplabv3_tiny'):
    info = model_info(name)
    assert info.task == 'segmentation' and info.batch_norm and info.supports_remat


def test_dilated_stages_follow_torchvision_make_layer():
  """replace_stride_with_dilation: the first block of a dilated stage keeps the previous
  dilation (stride 1), the rest get the new one."""
  stages = (3, 4, 6, 3)
  assert deeplab.stage_dilations(stages, 8) == [
      [(1, 1)] * 3, [(2, 1)] + [(1, 1)] * 3, [(1, 1)] + [(1, 2)] * 5, [(1, 2)] + [(1, 4)] * 2]
  assert deeplab.stage_dilations(stages, 16) == [
      [(1, 1)] * 3, [(2, 1)] + [(1, 1)] * 3, [(2, 1)] + [(1, 1)] * 5, [(1, 1)] + [(1, 2)] * 2]


def test_logits_come_at_any_input_size_and_the_aux_head_is_sown():
  model = get_model('deeplabv3_tiny', 5, aux_head=True, output_stride=16)
  x = jax.ShapeDtypeStruct((2, 100, 76, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  logits, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, mutable=['intermediates']), variables, x)
  assert logits.shape == (2, 100, 76, 5) and logits.dtype == jnp.float32
  assert state['intermediates']['aux_logits'][0].shape == (2, 100, 76, 5)
  assert variables['params']['aspp2_conv']['kernel'].shape == (3, 3, 128, 64)
  with pytest.raises(UserError, match='output_stride 32'):
    get_model('deeplabv3_tiny', 5, output_stride=32).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def test_upsampling_is_torch_bilinear_without_corner_alignment():
  """jax.image.resize 'bilinear' enlarging = torch interpolate(align_corners=False):
  source coordinate (i + 0.5) / s − 0.5, clamped at the edges."""
  n, s = 5, 8
  x = np.random.default_rng(0).normal(size=(n,)).astype(np.float32)
  y = np.asarray(jax.image.resize(jnp.asarray(x)[None, :, None, None], (1, n * s, 1, 1),
                                  'bilinear'))[0, :, 0, 0]
  src = np.clip((np.arange(n * s) + 0.5) / s - 0.5, 0, n - 1)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, n - 1)
  np.testing.assert_allclose(y, x[lo] + (src - lo) * (x[hi] - x[lo]), atol=1e-6)


# --------------------------------------------------------------- torchvision weights


def _bn(name, c):
  return {f'{name}.weight': (c,), f'{name}.bias': (c,), f'{name}.running_mean': (c,),
          f'{name}.running_var': (c,), f'{name}.num_batches_tracked': ()}


def _torchvision_names(blocks=(3, 4, 6, 3), classes=21) -> dict[str, tuple]:
  """torchvision deeplabv3_resnet50(aux_loss=True).state_dict() names → shapes, by hand."""
  out = {'backbone.conv1.weight': (64, 3, 7, 7), **_bn('backbone.bn1', 64)}
  inplanes = 64
  for i, n in enumerate(blocks, start=1):
    planes = 64 * 2**(i - 1)
    for j in range(n):
      p = f'backbone.layer{i}.{j}'
      out[f'{p}.conv1.weight'] = (planes, inplanes if j == 0 else 4 * planes, 1, 1)
      out[f'{p}.conv2.weight'] = (planes, planes, 3, 3)
      out[f'{p}.conv3.weight'] = (4 * planes, planes, 1, 1)
      for k in (1, 2, 3):
        out.update(_bn(f'{p}.bn{k}', 4 * planes if k == 3 else planes))
      if j == 0:
        out[f'{p}.downsample.0.weight'] = (4 * planes, inplanes, 1, 1)
        out.update(_bn(f'{p}.downsample.1', 4 * planes))
    inplanes = 4 * planes
  aspp = 'classifier.0'
  out[f'{aspp}.convs.0.0.weight'] = (256, 2048, 1, 1)
  out.update(_bn(f'{aspp}.convs.0.1', 256))
  for k in (1, 2, 3):
    out[f'{aspp}.convs.{k}.0.weight'] = (256, 2048, 3, 3)
    out.update(_bn(f'{aspp}.convs.{k}.1', 256))
  out[f'{aspp}.convs.4.1.weight'] = (256, 2048, 1, 1)
  out.update(_bn(f'{aspp}.convs.4.2', 256))
  out[f'{aspp}.project.0.weight'] = (256, 1280, 1, 1)
  out.update(_bn(f'{aspp}.project.1', 256))
  out['classifier.1.weight'] = (256, 256, 3, 3)
  out.update(_bn('classifier.2', 256))
  out.update({'classifier.4.weight': (classes, 256, 1, 1), 'classifier.4.bias': (classes,)})
  out['aux_classifier.0.weight'] = (256, 1024, 3, 3)
  out.update(_bn('aux_classifier.1', 256))
  out.update({'aux_classifier.4.weight': (classes, 256, 1, 1),
              'aux_classifier.4.bias': (classes,)})
  return out


def test_a_torchvision_state_dict_lands_on_the_right_paths(tmp_path):
  rng = np.random.default_rng(0)
  state = {k: (np.array(7) if not s else rng.standard_normal(s, dtype=np.float32))
           for k, s in _torchvision_names().items()}
  np.savez(tmp_path / 'deeplab.npz', **state)
  config, arrays = pretrained.load('torchvision', 'deeplabv3_resnet50', str(tmp_path / 'deeplab.npz'))
  assert (config.task, config.model, config.num_classes, config.image_size) == (
      'segmentation', 'deeplabv3_resnet50', 21, 520)
  assert config.model_kwargs == {'aux_head': True} and config.preprocessing == 'torch'
  assert sum(a.size for k, a in arrays.items() if k.startswith('params/')) == 42_004_074
  assert len(arrays) == sum(1 for k in state if not k.endswith('num_batches_tracked'))
  oihw = lambda k: state[k].transpose(2, 3, 1, 0)
  for path, name in [('params/layer4_0/downsample_conv/kernel', 'backbone.layer4.0.downsample.0.weight'),
                     ('params/layer3_5/conv2/kernel', 'backbone.layer3.5.conv2.weight'),
                     ('params/aspp_pool_conv/kernel', 'classifier.0.convs.4.1.weight'),
                     ('params/aspp3_conv/kernel', 'classifier.0.convs.3.0.weight'),
                     ('params/head_conv/kernel', 'classifier.1.weight'),
                     ('params/aux_classifier/kernel', 'aux_classifier.4.weight')]:
    np.testing.assert_array_equal(arrays[path], oihw(name))
  for path, name in [('batch_stats/aspp_project_bn/var', 'classifier.0.project.1.running_var'),
                     ('params/head_bn/scale', 'classifier.2.weight'),
                     ('batch_stats/aux_bn/mean', 'aux_classifier.1.running_mean'),
                     ('params/classifier/bias', 'classifier.4.bias')]:
    np.testing.assert_array_equal(arrays[path], state[name])
  with pytest.raises(UserError, match=r'for deeplabv3_resnet101: missing tensor '
                                      r'backbone\.layer3\.6\.bn1\.bias \(cvjax '):
    pretrained.load('torchvision', 'deeplabv3_resnet101', str(tmp_path / 'deeplab.npz'))


_TORCH_REFERENCE = """
import sys, numpy as np, torch
from torchvision.models import segmentation
name, weights, directory = sys.argv[1:]
torch.manual_seed(0)
model = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=21,
                                    aux_loss=False).eval()
with torch.no_grad():
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):  # statistics that matter
      module.running_mean.uniform_(-0.5, 0.5)
      module.running_var.uniform_(0.5, 2.0)
      module.weight.uniform_(0.5, 1.5)
      module.bias.uniform_(-0.2, 0.2)
  images = np.load(f'{directory}/images.npy')
  x = (images / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  x = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float32)
  head = model.classifier[4]
  scale = 4.0 / float(model(x)['out'].std())  # peaked probabilities
  head.weight.mul_(scale)
  head.bias.mul_(scale)
  if weights.endswith('.pth'):
    torch.save(model.state_dict(), f'{directory}/{weights}')
  else:
    np.savez(f'{directory}/{weights}', **{k: v.numpy() for k, v in model.state_dict().items()})
  probs = torch.softmax(model(x)['out'], 1).numpy().transpose(0, 2, 3, 1)
  np.save(f'{directory}/reference.npy', probs)
"""


@pytest.mark.slow
@pytest.mark.parametrize('name, weights', [('deeplabv3_resnet50', 'deeplab.npz'),
                                           ('deeplabv3_resnet101', 'deeplab.pth')])
def test_deeplabv3_probabilities_match_torchvision(name, weights, tmp_path):
  """torchvision's own model (weights=None, perturbed BN statistics), its state_dict saved
  as .npz or by torch.save, converted, restored: per-pixel class probabilities on 64²
  photos within 1e-4."""
  import importlib.util
  if not (importlib.util.find_spec('torch') and importlib.util.find_spec('torchvision')):
    pytest.skip('torch is optional and not installed (pip install torch torchvision)')
  images = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
  images[:, 16:48, 16:48] //= 3  # some structure for the atrous convs to see
  np.save(tmp_path / 'images.npy', images)
  subprocess.run([sys.executable, '-c', _TORCH_REFERENCE, name, weights, str(tmp_path)],
                 check=True, timeout=600)
  reference = np.load(tmp_path / 'reference.npy')
  out = pretrained.convert('torchvision', name, str(tmp_path / weights), str(tmp_path / 'run'),
                           image_size=64)
  probs = cvjax.restore(out).predict(images)
  assert probs.shape == (1, 64, 64, 21) and probs.dtype == np.float32
  assert reference.max() > 0.5
  assert np.abs(probs - reference).max() <= 1e-4


# ------------------------------------------------------------------ predict and CLI


@pytest.mark.slow
def test_restored_tiny_segmenter_predicts_probabilities_and_segment_draws_them(tmp_path, capsys):
  from PIL import Image
  from cvjax import segment
  from cvjax.segmentation import data
  from cvjax.tasks import get_task
  from cvjax.train import freeze, rundir
  from cvjax.train.config import TrainConfig
  model = get_model('deeplabv3_tiny', 7)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  arrays = {f'{c}/{p}': np.asarray(v) for c in ('params', 'batch_stats')
            for p, v in freeze.flat_paths(variables[c]).items()}
  config = TrainConfig(task='segmentation', model='deeplabv3_tiny', dataset='cvjax_shapes/tiny',
                       num_classes=7, image_size=64, batch_size=1, num_train_steps=1)
  workdir = rundir.write_workdir(str(tmp_path / 'run'), get_task(config, None), arrays, {})
  images = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
  predict = cvjax.restore(workdir).predict
  probs = predict(images)
  assert probs.shape == (1, 64, 64, 7) and probs.dtype == np.float32
  expected = jax.nn.softmax(jax.jit(model.apply)(variables, data.normalize(images)))
  np.testing.assert_allclose(probs, expected, atol=1e-5)
  (small,) = predict([images[0, :48, :40]])  # at the input's own size, as torchvision
  assert small.shape == (48, 40, 7)

  Image.fromarray(images[0, :50]).save(tmp_path / 'photo.png')  # 50×64: drawn at its own size
  args = [f'--workdir={workdir}', f'--image={tmp_path / "photo.png"}']
  assert segment.main(args + [f'--out={tmp_path / "mask.png"}', '--json']) == 0
  assert Image.open(tmp_path / 'mask.png').size == (64, 50)
  assert '"label": "' in capsys.readouterr().out
  assert segment.main(args + ['--alpha=2']) == 2
  assert capsys.readouterr().err.strip() == 'error: --alpha must be in [0, 1], got 2.0'
  assert segment.main([f'--workdir={workdir}', '--image=/nonexistent.png']) == 2
  assert capsys.readouterr().err.strip() == 'error: --image=/nonexistent.png does not exist'


def test_segment_and_detect_help_lists_the_shared_and_own_flags_as_one_sorted_list():
  """The flags cvjax.cli declares for both image tools count as each tool's own: --help
  lists them with --alpha / --min_score alphabetically, --workdir naming the task."""
  from cvjax import cli, detect, segment
  for tool, own, task in ((segment, '--alpha', 'segmentation'), (detect, '--min_score', 'detection')):
    lines = cli.help_text(tool.FLAGS, tool.__doc__).splitlines()
    listed = [line.split(':')[0].strip() for line in lines if line.startswith('  --')]
    assert listed == sorted([own, '--image', '--[no]json', '--out', '--step', '--workdir'],
                            key=lambda name: name.replace('[no]', '')), listed
    assert f'  --workdir: A cvjax {task} run directory.' in lines
