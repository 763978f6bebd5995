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

import functools
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
  classification's. The base is read when the task is built; each split's features are
  computed once and memoised (`_features`): a cache, not state any hook relies on.
  `image_size` and `channels` are the base's input; `input_shape` is the head's, (1, D)."""
  name = 'features'

  def __init__(self, config, meta):
    super().__init__(config, meta)
    self._base = None
    self._features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    _, _, _, shape = self.base()
    self.image_size, self.channels = shape[1], shape[3]

  @classmethod
  def check(cls, config):
    if not config.init_from:
      raise UserError('task=features needs --init_from=DIR, the base whose features to use')
    for name in ('mixup_alpha', 'cutmix_alpha', 'tta'):
      if getattr(config, name):
        raise UserError(f'task=features trains on stored features, not images: {name} does '
                        f'not apply; drop --{name}')

  def base(self):
    """(base model, its variables, head module name, input shape (1, S, S, C)), read once
    from `config.init_from`."""
    if self._base is None:
      config = self.config
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
      self._base = (model, variables, head[0], shape)
    return self._base

  @functools.cached_property
  def input_shape(self):
    """The head's init input (1, D): D features of the base."""
    model, variables, head, shape = self.base()
    dim = int(np.prod(jax.eval_shape(feature_fn(model, head), variables,
                                     jnp.zeros(shape, jnp.float32)).shape[1:]))
    return (1, dim)

  def build_model(self, *, bn_axis_name=factory.DATA_AXIS):
    """A fresh head on features (no BatchNorm: `bn_axis_name` does not apply)."""
    del bn_axis_name
    model, _, head, _ = self.base()
    dtype = getattr(model, 'dtype', jnp.float32)  # --half_precision's compute dtype
    return Head(self.num_classes, head, dtype=dtype)

  def model_input(self, batch):
    return batch['features']

  def warm_start(self, state, model):
    return state  # the base's weights are used through its features, not loaded

  def features(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """float32[N, D] features and int32[N] labels of `split`, computed once."""
    c = self.config
    if split not in self._features:
      model, variables, head, shape = self.base()
      mesh = steps.make_mesh(1)
      fn = jax.jit(feature_fn(model, head))
      feats, labels = [], []
      for batch in data.pipeline.eval_batches(
          self.data_spec(), split=split, global_batch_size=c.eval_batch_size or c.batch_size,
          sharding=steps.batch_sharded(mesh), data_dir=c.data_dir):
        mask = np.asarray(batch['mask'])
        feats.append(np.asarray(fn(variables, batch['image']))[mask])
        labels.append(np.asarray(batch['label'])[mask])
      self._features[split] = (np.concatenate(feats).reshape(sum(map(len, labels)), -1),
                               np.concatenate(labels).astype(np.int32))
      logging.info('features of %s %s: %s, computed once', c.dataset, split,
                   self._features[split][0].shape)
    return self._features[split]

  def train_batches(self, sharding, start_step):
    feats, labels = self.features('train')
    batch = self.config.batch_size
    per_epoch = data.steps_per_epoch(self.meta, batch * self.config.grad_accum_steps)
    step = start_step
    while True:  # the order of step k depends only on (seed, epoch of k): exact resume
      epoch, within = divmod(step, per_epoch)
      order = np.random.default_rng([self.config.seed, epoch]).permutation(len(labels))
      index = order[within * batch:(within + 1) * batch]
      yield {'features': jax.device_put(feats[index], sharding),
             'label': jax.device_put(labels[index], sharding)}
      step += 1

  def eval_batches(self, sharding, split):
    feats, labels = self.features(split)
    batch = self.config.eval_batch_size or self.config.batch_size
    for start in range(0, len(labels), batch):
      n = min(batch, len(labels) - start)
      pad = batch - n
      yield {'features': jax.device_put(np.pad(feats[start:start + n], ((0, pad), (0, 0))),
                                        sharding),
             'label': jax.device_put(np.pad(labels[start:start + n], (0, pad)), sharding),
             'mask': jax.device_put(np.arange(batch) < n, sharding)}

  def predictor(self, model, variables):
    """predict(features float32[B, D]) -> float32[B, classes] probabilities."""
    apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False)))
    return lambda features: np.asarray(apply(variables, jnp.asarray(features, jnp.float32)))
