"""Segmentation probabilities at the input's own size: torchvision's numbers for DeepLab,
FCN padded to a multiple of 32 and cropped back, one array per image of a list.

The torchvision parity test runs torch in its own process (as test_deeplab.py) and skips
without it.
"""
import importlib.util
import subprocess
import sys
from functools import partial

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cvjax import pretrained
from cvjax.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from cvjax.errors import UserError
from cvjax.models import get_model
from cvjax.segmentation import predict

STATS = {'mean': IMAGENET_MEAN, 'std': IMAGENET_STD}


def _normalize(images: np.ndarray) -> np.ndarray:
  return ((images.astype(np.float32) / 255 - np.asarray(IMAGENET_MEAN, np.float32))
          / np.asarray(IMAGENET_STD, np.float32))


def _random_model(name: str, num_classes: int, seed: int = 0):
  """(model, variables) with every parameter and BN statistic drawn at random: the FCN's
  score layers start at zero, which would make every probability 1/K."""
  model = get_model(name, num_classes)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  flat = flax.traverse_util.flatten_dict(jax.device_get(variables), sep='/')
  rng = np.random.default_rng(seed)
  for path, v in flat.items():
    if path.endswith('/var'):
      flat[path] = rng.uniform(0.5, 2.0, v.shape).astype(np.float32)
    elif path.endswith(('/scale', '/mean', '/bias')):
      flat[path] = (path.endswith('/scale') + rng.uniform(-0.2, 0.2, v.shape)).astype(np.float32)
    else:  # kernels: He-like scale so the logits neither vanish nor blow up
      fan_in = np.prod(v.shape[:-1])
      flat[path] = (rng.standard_normal(v.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
  return model, flax.traverse_util.unflatten_dict(flat, sep='/')


def _images(seed, *shape) -> np.ndarray:
  images = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
  images[..., shape[-3] // 4:shape[-3] // 2, :, :] //= 3  # some structure
  return images


@pytest.fixture(scope='module')
def fcn():
  return _random_model('fcn8s_tiny', 7)


@pytest.fixture(scope='module')
def deeplab():
  return _random_model('deeplabv3_tiny', 5)


def test_fcn_needs_multiples_of_32_and_deeplab_any_size(fcn, deeplab):
  model, variables = fcn
  assert predict.size_multiple(model) == 32 and predict.size_multiple(deeplab[0]) == 1
  # 16 is not enough: the FCN's five stride-2 stages need 32.
  with pytest.raises(UserError, match=r'multiples of 32, got 48×48'):
    jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 48, 48, 3), jnp.float32))
  assert [predict.padded_size(n, 32) for n in (1, 32, 33, 50, 70)] == [32, 32, 64, 64, 96]
  assert predict.padded_size(97, 1) == 97


def test_fcn_pads_bottom_right_with_the_mean_colour_and_crops_back(fcn):
  """50×70 images: normalised, zero-padded to 64×96 at the bottom and right, run, the
  top-left 50×70 of the softmax kept."""
  model, variables = fcn
  images = _images(1, 2, 50, 70, 3)
  probs = predict.probabilities(partial(model.apply, train=False), variables, images,
                                size_multiple=32, **STATS)
  assert probs.shape == (2, 50, 70, 7) and probs.dtype == np.float32
  np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)
  assert probs.max() > 0.9  # peaked: the comparisons below see the weights

  pad = ((0, 0), (0, 14), (0, 26), (0, 0))
  run = lambda x: np.asarray(jax.nn.softmax(model.apply(variables, x, train=False)))[:, :50, :70]
  np.testing.assert_allclose(probs, run(np.pad(_normalize(images), pad)), atol=1e-5)
  # The pad value and side matter near the edges, so the assertion above pins them.
  edge = run(np.pad(_normalize(images), pad, mode='edge'))
  assert np.abs(probs - edge).max() > 1e-2
  flipped = np.pad(_normalize(images), ((0, 0), (14, 0), (26, 0), (0, 0)))
  top_left = np.asarray(jax.nn.softmax(model.apply(variables, flipped)))[:, 14:, 26:]
  assert np.abs(probs - top_left).max() > 1e-2


def test_deeplab_runs_at_the_input_size_unpadded_and_gray_becomes_rgb(deeplab):
  model, variables = deeplab
  gray = _images(2, 1, 37, 53, 1)
  probs = predict.probabilities(partial(model.apply, train=False), variables, gray,
                                size_multiple=1, **STATS)
  assert probs.shape == (1, 37, 53, 5)
  expected = jax.nn.softmax(model.apply(variables, _normalize(np.repeat(gray, 3, -1))))
  np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_a_list_of_two_sizes_gives_one_array_per_image_at_its_size(deeplab):
  model, variables = deeplab
  apply = partial(model.apply, train=False)
  run = partial(predict.predict, apply, variables, size_multiple=1, **STATS)
  a, b = _images(3, 40, 56, 3), _images(4, 2, 33, 33, 3)
  out = run([a, b, a])
  assert isinstance(out, list)
  assert [p.shape for p in out] == [(40, 56, 5), (33, 33, 5), (33, 33, 5), (40, 56, 5)]
  np.testing.assert_allclose(out[0], run(a)[0], atol=1e-6)
  np.testing.assert_allclose(np.stack(out[1:3]), run(b), atol=1e-6)
  np.testing.assert_array_equal(out[0], out[3])
  assert run(a).shape == (1, 40, 56, 5) and run(b).shape == (2, 33, 33, 5)  # arrays stay arrays


def test_one_image_size_compiles_once(deeplab):
  model, variables = deeplab
  apply = partial(model.apply, train=False)
  before = predict._probabilities._cache_size()  # pylint: disable=protected-access
  for size in (24, 24, 30, 24, 30):
    predict.probabilities(apply, variables, _images(5, 1, size, size, 3), size_multiple=1, **STATS)
  assert predict._probabilities._cache_size() - before == 2  # pylint: disable=protected-access


def test_bad_inputs_are_user_errors_naming_the_value(deeplab):
  model, variables = deeplab
  run = partial(predict.probabilities, partial(model.apply, train=False), variables)
  images = _images(6, 1, 8, 8, 3)
  with pytest.raises(UserError, match=r'^size_multiple must be a positive int, got 0$'):
    run(images, size_multiple=0, **STATS)
  with pytest.raises(UserError, match=r'^mean and std must have 3 values \(R, G, B\), got mean '
                                      r'\[0\.5\] and std \[0\.229, 0\.224, 0\.225\]$'):
    run(images, size_multiple=1, mean=(0.5,), std=IMAGENET_STD)
  with pytest.raises(UserError, match=r'^probabilities wants images uint8\[B, H, W, 1 or 3\], '
                                      r'got float32\[1, 8, 8, 3\]$'):
    run(images.astype(np.float32), size_multiple=1, **STATS)
  with pytest.raises(UserError, match='^predict got an empty list of images$'):
    predict.predict(partial(model.apply, train=False), variables, [], size_multiple=1, **STATS)


# ---------------------------------------------------------------- torchvision parity

_TORCH_REFERENCE = """
import sys, numpy as np, torch
from torchvision.models import segmentation
directory, count = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                        aux_loss=False).eval()
mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
tensor = lambda images: torch.tensor(((images / 255.0 - mean) / std).transpose(0, 3, 1, 2),
                                     dtype=torch.float32)
images = [np.load(f'{directory}/image{i}.npy') for i in range(count)]
with torch.no_grad():
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):  # statistics that matter
      module.running_mean.uniform_(-0.5, 0.5)
      module.running_var.uniform_(0.5, 2.0)
      module.weight.uniform_(0.5, 1.5)
      module.bias.uniform_(-0.2, 0.2)
  head = model.classifier[4]
  scale = 4.0 / float(model(tensor(images[0]))['out'].std())  # peaked probabilities
  head.weight.mul_(scale)
  head.bias.mul_(scale)
  np.savez(f'{directory}/deeplab.npz', **{k: v.numpy() for k, v in model.state_dict().items()})
  for i, x in enumerate(images):
    probs = torch.softmax(model(tensor(x))['out'], 1).numpy().transpose(0, 2, 3, 1)
    np.save(f'{directory}/reference{i}.npy', probs)
"""


@pytest.mark.slow
def test_deeplab_probabilities_match_torchvision_at_the_inputs_own_odd_sizes(tmp_path):
  """torchvision's deeplabv3_resnet50 (weights=None, perturbed BN statistics), its state_dict
  converted by cvjax.pretrained (for 520² inputs): on a 97×131 and a 64×64 photo,
  softmax(model(x)['out']) at the photo's own size within 1e-4."""
  if not (importlib.util.find_spec('torch') and importlib.util.find_spec('torchvision')):
    pytest.skip('torch is optional and not installed (pip install torch torchvision)')
  images = [_images(7, 1, 97, 131, 3), _images(8, 1, 64, 64, 3)]
  for i, x in enumerate(images):
    np.save(tmp_path / f'image{i}.npy', x)
  subprocess.run([sys.executable, '-c', _TORCH_REFERENCE, str(tmp_path), str(len(images))],
                 check=True, timeout=600)
  reference = [np.load(tmp_path / f'reference{i}.npy')[0] for i in range(len(images))]
  config, arrays = pretrained.load('torchvision', 'deeplabv3_resnet50', str(tmp_path / 'deeplab.npz'))
  assert config.image_size == 520 and config.preprocessing == 'torch'
  model = get_model(config.model, config.num_classes, **config.model_kwargs)
  variables = flax.traverse_util.unflatten_dict(arrays, sep='/')
  probs = predict.predict(partial(model.apply, train=False), variables, [x[0] for x in images],
                          size_multiple=predict.size_multiple(model), **STATS)
  assert [p.shape for p in probs] == [(97, 131, 21), (64, 64, 21)]
  for p, r in zip(probs, reference):
    assert r.max() > 0.5
    assert np.abs(p - r).max() <= 1e-4
