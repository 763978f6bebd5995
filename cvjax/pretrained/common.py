"""What the Keras and torchvision converters share: checks, layout maps, the config.

A converter turns a source file into `{'params': ..., 'batch_stats': ...}` (numpy, cvjax
paths and layouts), checks it against the cvjax model's own shapes (`check_against`),
and `cvjax.train.rundir.write_workdir` stores it as a normal cvjax run directory:

  DIR/config.json               TrainConfig: model, num_classes, image_size, preprocessing,
                                dataset 'imagenet2012' (what the weights were trained on),
                                and "resolved" (classes, input size, normalisation)
  DIR/checkpoints/0/{state,meta}  a TrainState at step 0 (optimizer 'sgd': no slots), meta
                                with `converted_from` (source, file, sha256)

so that `cvjax.restore(DIR)` predicts with the source's preprocessing and
`--init_from=DIR` fine-tunes from it.
"""
from __future__ import annotations

import hashlib

import numpy as np

from cvjax.errors import UserError
from cvjax.train import freeze
from cvjax.train.config import TrainConfig

Arrays = dict[str, np.ndarray]  # '/'-joined cvjax path ('params/conv1/kernel') -> array


# ----------------------------------------------------------------- layouts


def conv_kernel_from_oihw(w: np.ndarray) -> np.ndarray:
  """torch conv weight float[O, I, kH, kW] -> flax kernel float[kH, kW, I, O]."""
  return np.transpose(w, (2, 3, 1, 0))


def dense_kernel_from_oi(w: np.ndarray) -> np.ndarray:
  """torch Linear weight float[O, I] -> flax kernel float[I, O]."""
  return np.transpose(w, (1, 0))


def dense_kernel_from_nchw_flatten(w: np.ndarray, channels: int, height: int,
                                   width: int) -> np.ndarray:
  """torch Linear weight float[O, C·H·W] after an NCHW flatten -> flax kernel
  float[H·W·C, O] for cvjax's NHWC flatten: input row h·W·C + w·C + c of the result is
  torch column c·H·W + h·W + w."""
  out = w.shape[0]
  if w.shape[1] != channels * height * width:
    raise UserError(f'dense weight has {w.shape[1]} inputs, expected C·H·W = '
                    f'{channels}·{height}·{width} = {channels * height * width}')
  return w.reshape(out, channels, height, width).transpose(2, 3, 1, 0).reshape(-1, out)


# ------------------------------------------------------------------ checking


def model_shapes(model, image_size: int, channels: int = 3) -> dict[str, tuple[int, ...]]:
  """'params/...' and 'batch_stats/...' paths of `model` -> shapes (no arrays allocated)."""
  shapes = freeze.variable_shapes(model, (1, image_size, image_size, channels))
  out = {}
  for collection in ('params', 'batch_stats'):
    for path, leaf in freeze.flat_paths(shapes.get(collection, {})).items():
      out[f'{collection}/{path}'] = tuple(leaf.shape)
  return out


def check_against(arrays: Arrays, expected: dict[str, tuple[int, ...]], *, what: str,
                  source_name=lambda path: path) -> None:
  """Raises UserError naming the first missing, unexpected or mis-shaped tensor.

  arrays: converted tensors by cvjax path; expected: the model's shapes by path;
  what: e.g. "keras weights /x/vgg16.h5 for vgg16"; source_name(path): the tensor's
  name in the source file, for the message.
  """
  for path, shape in expected.items():
    if path not in arrays:
      raise UserError(f'{what}: missing tensor {source_name(path)} (cvjax {path}, shape '
                      f'{shape}); is the file for this model?')
  for path in arrays:
    if path not in expected:
      raise UserError(f'{what}: unexpected tensor {source_name(path)} (would be cvjax {path}); '
                      'is the file for this model?')
  for path, shape in expected.items():
    if tuple(arrays[path].shape) != shape:
      raise UserError(f'{what}: tensor {source_name(path)} has shape '
                      f'{tuple(arrays[path].shape)}, cvjax {path} needs {shape}')


def num_classes_from_head(arrays: Arrays, head_kernel: str, default: int = 1000) -> int:
  """Class count read off the head's kernel float[features, classes]."""
  kernel = arrays.get(head_kernel)
  return int(kernel.shape[-1]) if kernel is not None and kernel.ndim == 2 else default


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


# ------------------------------------------------------------------- writing


def converted_config(*, model: str, num_classes: int, image_size: int | None,
                     preprocessing: str, model_kwargs: dict | None = None):
  """The TrainConfig written with converted weights (ImageNet, no data needed)."""
  return TrainConfig(model=model, model_kwargs=dict(model_kwargs or {}), dataset='imagenet2012',
                     num_classes=num_classes, image_size=image_size,
                     preprocessing=preprocessing, optimizer='sgd', schedule='constant',
                     learning_rate=0.01, batch_size=1, num_train_steps=1, keep_checkpoints=1)
