"""The Task protocol: what the one training loop needs to know about a kind of problem.

The loop (`cvjax.train.loop.fit`) is task-agnostic. A task is a subclass of `Task`,
built once per run as `TaskClass(config, meta)` with the run's `TrainConfig` and its
resolved `DatasetMeta`, from which it derives its settings (label smoothing, the
detection head and its default boxes, the input shape, ...). It fills in the abstract
hooks and may override the others, whose defaults fit image classification:

  dataset_meta(config)                (classmethod) prepared dataset facts (num_classes,
                                      class_names, split_sizes, image_shape)
  data_spec()                         what the one input pipeline reads (`cvjax.data.DataSpec`)
  train_batches(sharding, start_step) iterator of global train batches from `start_step`
                                      (default: the pipeline with `data_spec()`)
  eval_batches(sharding, split)       iterator of global eval batches, each example once
  loss(outputs, batch, axis_name)     (scalar loss, {name: scalar}), means over the batch
  eval_outputs(outputs, batch)        (sums, per_example): `sums` are summed over devices
                                      (e.g. correct counts); `per_example` arrays keep
                                      their leading batch axis (e.g. detections)
  evaluator()                         an `Evaluator` turning those into metrics

  check(config)                       (classmethod) fail on bad settings before anything
                                      is written or prepared
  build_model(bn_axis_name=...)       the module; default: the model factory
  input_shape                         the model's init input (1, S, S, C)
  model_input(batch)                  what the model is applied to; default batch['image']
  mix_batch(batch, rng)               batch-level train augmentation inside the step
                                      (mixup, cutmix); default: the batch unchanged
  draw_noise(batch, key, axis_name)   the step's per-example random draws (a diffusion's
                                      noise level and noise), the same for any device
                                      count (`per_example`); default: the batch unchanged
  train_apply(apply_fn, variables, batch, rngs, mutable)
                                      the outputs `loss` scores in training; default: the
                                      model on model_input(batch) in train mode
  update(state, batch, key, axis_name) the whole step of a task with `own_update` (a GAN:
                                      two networks, two optimizers, alternate updates)
  optimizer(schedule, freezer)        the optax transformation; default: the run's
                                      (`cvjax.train.optim.make_optimizer`)
  eval_apply(apply_fn, variables, batch)
                                      the eval outputs; default: the model on
                                      model_input(batch) (test-time augmentation goes here)
  warm_start(state, model)            a fresh state's starting weights; default: init_from
  preprocessing()                     the input normalisation, recorded in config.json
  predictor(model, variables)         `predict` of `cvjax.restore`; default: softmax
                                      probabilities of eval-preprocessed images
  generative(model, variables)        the generative functions of `cvjax.restore` (sample,
                                      encode, decode, reconstruct); default: none

The jitted hooks (`loss`, `eval_outputs`, `model_input`) see arrays, the task's own
settings and, inside a data-parallel step, `axis_name`, the mesh axis (None in a plain
single-device step); nothing else of the run. `meta` may be None where no dataset facts
exist (weights without their dataset, unit tests): the class count is then
`config.num_classes`.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Iterator, Protocol

import jax
import numpy as np

from cvjax import data
from cvjax.errors import UserError
from cvjax.train import factory, freeze, optim, rundir, warm_start
from cvjax.train.config import TrainConfig


class Evaluator(Protocol):
  """Accumulates eval measurements over a split; `result()` has the task's main metric
  and 'count' (examples)."""

  def update(self, sums: dict, per_example: dict) -> None:
    ...

  def result(self) -> dict[str, float]:
    ...


class Task(abc.ABC):
  """Base class of every task; see the module doc for the hooks.

  Attributes (set by the constructor from config and meta):
    config: the run's TrainConfig (read-only).
    meta: the resolved `cvjax.data.DatasetMeta`, or None (see the module doc).
    num_classes: the model's outputs: config.num_classes, else the dataset's.
    image_size, channels: the size S and channels C of the images the task reads.
  """
  name: str = ''
  main_metric: str = ''               # what "best checkpoint" and early stopping watch
  main_metric_higher_is_better: bool = True
  example_keys: tuple[str, ...] = ('image', 'label')  # what the augmentation ops see
  own_update: bool = False            # `update` is the whole train step (see its doc)

  def __init__(self, config: TrainConfig, meta: data.DatasetMeta | None):
    self.config = config
    self.meta = meta
    self.num_classes = config.num_classes or (meta.num_classes if meta is not None else None)
    _, self.image_size, _, self.channels = factory.input_shape(config)

  # ----------------------------------------------------------- must override

  @classmethod
  @abc.abstractmethod
  def dataset_meta(cls, config: TrainConfig) -> data.DatasetMeta:
    """The prepared dataset's facts (prepares it when needed)."""

  @abc.abstractmethod
  def data_spec(self) -> data.DataSpec:
    """What the one input pipeline (`cvjax.data.pipeline`) reads for this task."""

  @abc.abstractmethod
  def loss(self, outputs: Any, batch: dict, axis_name: str | None) -> tuple[jax.Array, dict]:
    """(scalar loss, {name: scalar metric}) of this device's share of the batch."""

  @abc.abstractmethod
  def eval_outputs(self, outputs: Any, batch: dict) -> tuple[dict, dict]:
    """(sums, per_example) of one eval batch (see the module doc)."""

  @abc.abstractmethod
  def evaluator(self) -> Evaluator:
    """A fresh `Evaluator` for one pass over a split."""

  # ------------------------------------------------------------ defaults

  def train_batches(self, sharding, start_step: int) -> Iterator[dict]:
    """Global train batches placed with `sharding`, from batch `start_step` on."""
    c = self.config
    return data.pipeline.train_batches(
        self.data_spec(), global_batch_size=c.batch_size, sharding=sharding, seed=c.seed,
        start_step=start_step, augment=c.augment, split=c.train_split, data_dir=c.data_dir,
        num_examples=self.meta.split_sizes[c.train_split])

  def eval_batches(self, sharding, split: str) -> Iterator[dict]:
    """Global eval batches of `split` placed with `sharding`, each example once."""
    c = self.config
    return data.pipeline.eval_batches(self.data_spec(), split=split, sharding=sharding,
                                      global_batch_size=c.eval_batch_size or c.batch_size,
                                      data_dir=c.data_dir)

  @classmethod
  def check(cls, config: TrainConfig) -> None:
    """Raises UserError for settings this task cannot use (before any file is written).
    Default: `config.augment` must parse and suit examples with `example_keys`."""
    data.preprocess.check(config.augment, cls.example_keys, cls.name,
                          image_size=config.image_size)

  @property
  def input_shape(self) -> tuple[int, ...]:
    """The model's init input: (1, S, S, C)."""
    return (1, self.image_size, self.image_size, self.channels)

  def build_model(self, *, bn_axis_name: str | None = factory.DATA_AXIS):
    """The module, from the model factory with `num_classes` outputs. bn_axis_name: the
    data axis for training, None for inference outside a mesh (`cvjax.restore`)."""
    return factory.build_model(self.config, self.num_classes, bn_axis_name=bn_axis_name)

  def model_input(self, batch: dict) -> jax.Array:
    return batch['image']

  def mix_batch(self, batch: dict, rng: jax.Array) -> dict:
    """This device's train batch after batch-level augmentation, drawn with `rng` (inside
    the jitted step, before `model_input` and `loss`). Default: unchanged."""
    del rng
    return batch

  def draw_noise(self, batch: dict, key: jax.Array, axis_name: str | None) -> dict:
    """This device's train batch with the step's random draws added, after `mix_batch`
    inside the jitted step. key: the same on every device; draw with `per_example` so
    that 1 and N devices see the same numbers. Default: unchanged."""
    del key, axis_name
    return batch

  def train_apply(self, apply_fn, variables: dict, batch: dict, *, rngs: dict, mutable):
    """The outputs `loss` scores in training (with `mutable`'s updates when it is a list):
    the model in train mode on `model_input(batch)`."""
    return apply_fn(variables, self.model_input(batch), train=True, rngs=rngs, mutable=mutable)

  def update(self, state, batch: dict, key: jax.Array, axis_name: str | None):
    """(new state, {'loss', ...metrics}): the whole train step, for a task with
    `own_update` (several networks or optimizers in one state). key: the step's key, the
    same on every device (fold in `lax.axis_index` for per-device draws such as dropout);
    gradients must be `pmean`ed over `axis_name` when it is not None. The weight average,
    when the run keeps one, is moved after it."""
    raise NotImplementedError(f'task {self.name!r} has no update of its own')

  def optimizer(self, schedule, freezer=None):
    """The optax transformation of the state's params: the run's optimizer, weight decay
    and clipping (`cvjax.train.optim.make_optimizer`)."""
    return optim.make_optimizer(self.config, schedule, freezer)

  def generative(self, model, variables: dict) -> dict[str, Callable]:
    """Functions `cvjax.restore` adds to a generative run: 'sample' (n, seed) → uint8
    images, and for autoencoders 'encode', 'decode', 'reconstruct'. Default: none."""
    del model, variables
    return {}

  def eval_apply(self, apply_fn, variables: dict, batch: dict) -> Any:
    """The outputs `eval_outputs` scores: the model in inference mode on the batch."""
    return apply_fn(variables, self.model_input(batch), train=False)

  def warm_start(self, state, model):
    """A fresh state's weights: `config.init_from`'s where path and shape match.
    model: the module `state` belongs to (its head, for init_exclude='head')."""
    config = self.config
    if not config.init_from:
      return state
    head = (freeze.head_modules(model, self.input_shape)
            if config.init_exclude == 'head' else ())
    return warm_start.init_from(state, config, head)

  def preprocessing(self) -> str:
    """The normalisation of images scaled to [0, 1], as a `cvjax.data.preprocess` op
    string ('' for none). Default: the classification pipeline's, i.e. the convention
    of `config.preprocessing`, else the dataset's mean/std at the model's channels."""
    from cvjax.data import classification, datasets  # pylint: disable=g-import-not-at-top
    if self.config.preprocessing:
      return classification.PREPROCESSING[self.config.preprocessing]
    mean, std = classification.normalize_stats(datasets.spec(self.config.dataset),
                                               self.channels)
    return f'normalize({mean}, {std})'

  def resolved(self) -> rundir.Resolved:
    """What this run resolved beyond its config, recorded in config.json so that
    `cvjax.restore` needs neither the dataset nor `dataset_meta`."""
    names = self.meta.class_names if self.meta is not None else None
    return rundir.Resolved(num_classes=self.num_classes,
                           class_names=tuple(names) if names else None,
                           image_size=self.image_size, channels=self.channels,
                           preprocessing=self.preprocessing())

  def predictor(self, model, variables: dict, probabilities: Callable | None = None
                ) -> Callable[[np.ndarray], np.ndarray]:
    """predict(uint8[B, H, W, C] images at any size) -> float32[B, ..., classes]
    probabilities (softmax over the last axis), with the run's eval preprocessing.
    probabilities: (variables, f32[B, S, S, C] preprocessed images) -> those probabilities,
    jittable; default: the softmax of the model in inference mode."""
    config = self.config

    def softmax(v, x):
      return jax.nn.softmax(model.apply(v, x, train=False))
    apply = jax.jit(probabilities or softmax)

    def predict_batch(images: np.ndarray) -> np.ndarray:
      x = data.preprocess_for_eval(images, dataset=config.dataset, image_size=self.image_size,
                                   channels=self.channels, preprocessing=config.preprocessing)
      return np.asarray(apply(variables, x))

    def predict(images) -> np.ndarray:
      batches = image_batches(images)
      return np.concatenate([predict_batch(b) for b in batches])
    return predict


def per_example(key: jax.Array, draw: Callable[[jax.Array], Any], local_batch: int,
                axis_name: str | None) -> Any:
  """draw(key_i) for each example i of this device's share of the global batch, key_i =
  fold_in(key, the example's global index): 1 and N devices draw the same numbers."""
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_batch
  index = offset + jax.numpy.arange(local_batch)
  return jax.vmap(lambda i: draw(jax.random.fold_in(key, i)))(index)


def image_batches(images) -> list[np.ndarray]:
  """`predict`'s input as uint8[B, H, W, C] batches: one batch for an array (a single
  [H, W, C] image becomes [1, H, W, C]); for a list, one batch per run of equally sized
  images, in order. Raises UserError saying what it got and what it wants."""
  if isinstance(images, (list, tuple)):
    arrays = [_check_images(np.asarray(i)[None] if np.ndim(i) == 3 else np.asarray(i))
              for i in images]
    if not arrays:
      raise UserError('predict got an empty list of images')
    groups = [arrays[0]]
    for a in arrays[1:]:
      if a.shape[1:] == groups[-1].shape[1:]:
        groups[-1] = np.concatenate([groups[-1], a])
      else:
        groups.append(a)
    return groups
  images = np.asarray(images)
  return [_check_images(images[None] if images.ndim == 3 else images)]


def _check_images(images: np.ndarray) -> np.ndarray:
  if images.ndim != 4:
    raise UserError(f'predict wants images uint8[B, H, W, C] or uint8[H, W, C], got shape '
                    f'{list(images.shape)}')
  if images.shape[-1] not in (1, 3):
    if images.shape[1] in (1, 3):
      raise UserError(f'predict wants channels last, uint8[B, H, W, C]; got shape '
                      f'{list(images.shape)}, which looks like [B, C, H, W]: pass '
                      'images.transpose(0, 2, 3, 1)')
    raise UserError(f'predict wants 1 or 3 channels last, uint8[B, H, W, C]; got shape '
                    f'{list(images.shape)}')
  if images.dtype != np.uint8:
    raise UserError(f'predict wants uint8 pixels (0-255), got {images.dtype}; e.g. pass '
                    '(images * 255).round().astype(np.uint8) for floats in [0, 1]')
  return images
