"""Feature extraction: a new head trained on a frozen base's features, computed once.

config.init_from is the base (a workdir); config.model/model_kwargs/image_size/
preprocessing must describe it. Each split's images go once through the base in
inference mode (eval preprocessing, no augmentation); the input of its head module
is kept in memory, and the loop trains a fresh head (same module name, new class
count) on those features. `cvjax.transfer.feature_extraction` then writes a normal
full-model workdir.

Batches: {'features': float32[B, D], 'label': int32[B]} (+ 'mask': bool[B] in eval).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cvjax import data, models
from cvjax.errors import UserError
from cvjax.tasks.classification import ClassificationTask
from cvjax.train import factory, freeze, steps, warm_start


class Head(nn.Module):
  """The base model's head alone: features float32[B, D] -> logits float32[B, K]."""
  num_classes: int
  head: str
  dtype: Any = jnp.float32  # compute dtype (--half_precision); the kernel stays float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name=self.head)(
        x.reshape((x.shape[0], -1)))
    return jnp.asarray(logits, jnp.float32)


def feature_fn(model: nn.Module, head: str):
  """(variables, x float32[B, S, S, C]) -> the head's input float32[B, D] (inference)."""
  def features(variables, x):
    captured = []

    def grab(next_fun, args, kwargs, context):
      if context.method_name == '__call__' and context.module.path == (head,):
        captured.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
      model.apply(variables, x, train=False)
    return jnp.asarray(captured[0].reshape((x.shape[0], -1)), jnp.float32)
  return features


class FeatureTask(ClassificationTask):
  """Classification of cached base features (task 'features'); loss and metrics as
  classification's. The base and each split's features are computed once per task
  object and memoised (`_base`, `_features`): a cache, not state any hook relies on."""
  name = 'features'

  def __init__(self):
    self._base: dict[tuple, tuple] = {}
    self._features: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

  def check(self, config):
    if not config.init_from:
      raise UserError('task=features needs --init_from=DIR, the base whose features to use')

  def base(self, config):
    """(base model, its variables, head module name, input shape (1, S, S, C))."""
    key = (config.init_from, config.model, repr(config.model_kwargs), config.image_size,
           config.half_precision)
    if key not in self._base:
      source_config, arrays, _ = warm_start.read_workdir(config.init_from)
      if source_config.model != config.model:
        raise UserError(f'task=features: --model={config.model} but init_from '
                        f'{config.init_from!r} holds a {source_config.model}')
      height, _, channels = models.model_input_shape(config.model)
      size = config.image_size or source_config.image_size or height
      shape = (1, size, size, channels)
      head = freeze.head_modules(factory.build_model(config, 1, bn_axis_name=None), shape)
      if len(head) != 1:
        raise UserError(f'task=features needs a one-module head; {config.model} has {head}')
      num_classes = int(arrays['params'][head[0]]['kernel'].shape[-1])
      model = factory.build_model(config, num_classes, bn_axis_name=None)
      variables = {k: v for k, v in arrays.items() if v}
      self._base[key] = (model, variables, head[0], shape)
    return self._base[key]

  def build_model(self, config, meta):
    """A fresh head on features, and its init input shape (1, D)."""
    model, variables, head, shape = self.base(config)
    dim = int(np.prod(jax.eval_shape(feature_fn(model, head), variables,
                                     jnp.zeros(shape, jnp.float32)).shape[1:]))
    dtype = getattr(model, 'dtype', jnp.float32)  # --half_precision's compute dtype
    return Head(meta.num_classes, head, dtype=dtype), (1, dim)

  def model_input(self, batch):
    return batch['features']

  def warm_start(self, state, run):
    return state  # the base's weights are used through its features, not loaded

  def features(self, run, split: str) -> tuple[np.ndarray, np.ndarray]:
    """float32[N, D] features and int32[N] labels of `split`, computed once."""
    c = run.config
    key = (c.init_from, c.dataset, split, c.image_size, c.preprocessing, c.half_precision)
    if key not in self._features:
      model, variables, head, shape = self.base(c)
      mesh = steps.make_mesh(1)
      fn = jax.jit(feature_fn(model, head))
      feats, labels = [], []
      for batch in data.eval_batches(
          c.dataset, split=split, global_batch_size=c.eval_batch_size or c.batch_size,
          image_size=shape[1], channels=shape[3], sharding=steps.batch_sharded(mesh),
          data_dir=c.data_dir, raw_data_dir=c.raw_data_dir, preprocessing=c.preprocessing):
        mask = np.asarray(batch['mask'])
        feats.append(np.asarray(fn(variables, batch['image']))[mask])
        labels.append(np.asarray(batch['label'])[mask])
      self._features[key] = (np.concatenate(feats).reshape(sum(map(len, labels)), -1),
                             np.concatenate(labels).astype(np.int32))
      logging.info('features of %s %s: %s, computed once', c.dataset, split,
                   self._features[key][0].shape)
    return self._features[key]

  def train_batches(self, run, start_step):
    feats, labels = self.features(run, 'train')
    batch, per_epoch = run.config.batch_size, run.steps_per_epoch
    sharding = steps.batch_sharded(run.mesh)
    step = start_step
    while True:  # the order of step k depends only on (seed, epoch of k): exact resume
      epoch, within = divmod(step, per_epoch)
      order = np.random.default_rng([run.config.seed, epoch]).permutation(len(labels))
      index = order[within * batch:(within + 1) * batch]
      yield {'features': jax.device_put(feats[index], sharding),
             'label': jax.device_put(labels[index], sharding)}
      step += 1

  def eval_batches(self, run, split):
    feats, labels = self.features(run, split)
    batch = run.config.eval_batch_size or run.config.batch_size
    sharding = steps.batch_sharded(run.mesh)
    for start in range(0, len(labels), batch):
      n = min(batch, len(labels) - start)
      pad = batch - n
      yield {'features': jax.device_put(np.pad(feats[start:start + n], ((0, pad), (0, 0))),
                                        sharding),
             'label': jax.device_put(np.pad(labels[start:start + n], (0, pad)), sharding),
             'mask': jax.device_put(np.arange(batch) < n, sharding)}

  def predictor(self, run, model, variables):
    """predict(features float32[B, D]) -> float32[B, classes] probabilities."""
    apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False)))
    return lambda features: np.asarray(apply(variables, jnp.asarray(features, jnp.float32)))
