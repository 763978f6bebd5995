"""The Task protocol: what the one training loop needs to know about a kind of problem.

The loop (`cvjax.train.loop.fit`) is task-agnostic. A task is a subclass of `Task`
that fills in the five abstract hooks and may override the others, whose defaults fit
image classification:

  dataset_meta(config)                prepared dataset facts (num_classes, split_sizes)
  train_batches(run, start_step)      iterator of global train batches from `start_step`
  eval_batches(run, split)            iterator of global eval batches, each example once
  loss(outputs, batch, run, axis)     (scalar loss, {name: scalar}), means over the batch
  eval_outputs(outputs, batch, run)   (sums, per_example): `sums` are summed over devices
                                      (e.g. correct counts); `per_example` arrays keep
                                      their leading batch axis (e.g. detections)
  evaluator(run)                      an `Evaluator` turning those into metrics

  check(config)                       fail on bad settings before anything is written
  build_model(config, meta)           (module, init input shape); default: the model factory
  model_input(batch)                  what the model is applied to; default batch['image']
  warm_start(state, run)              a fresh state's starting weights; default: init_from
  predictor(run, model, variables)    `predict` of `cvjax.restore`; default: softmax
                                      probabilities of eval-preprocessed images

Tasks hold no state: everything a hook needs comes from its arguments (`run` is the
`cvjax.train.run.Run` of the training run, read-only). Inside a data-parallel step
`axis_name` names the mesh axis; it is None in a plain single-device step.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import jax
import numpy as np

from cvjax import data
from cvjax.errors import UserError
from cvjax.train import factory, freeze, warm_start


class Evaluator(Protocol):
  """Accumulates eval measurements over a split; `result()` has the task's main metric
  and 'count' (examples)."""

  def update(self, sums: dict, per_example: dict) -> None:
    ...

  def result(self) -> dict[str, float]:
    ...


class Task:
  """Base class of every task; see the module doc for the hooks."""
  name: str = ''
  main_metric: str = ''               # what "best checkpoint" and early stopping watch
  main_metric_higher_is_better: bool = True

  # ----------------------------------------------------------- must override

  def dataset_meta(self, config) -> data.DatasetMeta:
    raise NotImplementedError

  def train_batches(self, run, start_step: int) -> Iterator[dict]:
    raise NotImplementedError

  def eval_batches(self, run, split: str) -> Iterator[dict]:
    raise NotImplementedError

  def loss(self, outputs: Any, batch: dict, run, axis_name: str | None) -> tuple[jax.Array, dict]:
    raise NotImplementedError

  def eval_outputs(self, outputs: Any, batch: dict, run) -> tuple[dict, dict]:
    raise NotImplementedError

  def evaluator(self, run) -> Evaluator:
    raise NotImplementedError

  # ------------------------------------------------------------ defaults

  def check(self, config) -> None:
    """Raises UserError for settings this task cannot use (before any file is written)."""
    del config

  def build_model(self, config, meta) -> tuple[Any, tuple[int, ...]]:
    """(module, init input shape (1, S, S, C)) from the model factory."""
    return (factory.build_model(config, config.num_classes or meta.num_classes),
            factory.input_shape(config))

  def model_input(self, batch: dict) -> jax.Array:
    return batch['image']

  def warm_start(self, state, run):
    """A fresh state's weights: `config.init_from`'s where path and shape match."""
    config = run.config
    if not config.init_from:
      return state
    head = (freeze.head_modules(run.model, run.input_shape)
            if config.init_exclude == 'head' else ())
    return warm_start.init_from(state, config, head)

  def predictor(self, run, model, variables: dict) -> Callable[[np.ndarray], np.ndarray]:
    """predict(uint8[B, H, W, C] images at any size) -> float32[B, ..., classes]
    probabilities (softmax over the last axis), with the run's eval preprocessing."""
    config = run.config
    apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x, train=False)))

    def predict_batch(images: np.ndarray) -> np.ndarray:
      x = data.preprocess_for_eval(images, dataset=config.dataset, image_size=run.image_size,
                                   channels=run.channels, preprocessing=config.preprocessing)
      return np.asarray(apply(variables, x))

    def predict(images) -> np.ndarray:
      batches = image_batches(images)
      return np.concatenate([predict_batch(b) for b in batches])
    return predict


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
