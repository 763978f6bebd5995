"""Freezing part of a model: which params a `freeze` setting selects, and how they stay fixed.

  freeze='all_but_head'    only the head trains (the lecture's phase 1).
  freeze='all_but_top:2'   the top 2 stages (ResNet layer3, layer4; VGG block4, block5 ...)
                           and everything after them train, the rest is frozen.
  freeze=REGEX             params whose '/'-joined path matches (re.search) are frozen.

The head is found, for any model, as the top-level modules whose params change shape
with `num_classes`. Stages are the top-level modules in call order, grouped by a
`layer<i>` / `block<i>` / `stage<i>` prefix (one group per module for models without
one, e.g. LeNet).

A frozen param is frozen three ways, which together make it provably unchanged:
  1. optimizer: `optax.multi_transform` sends it to `optax.set_to_zero()` (no update, no
     optimizer state, no weight decay);
  2. step: its gradient is stopped (`lax.stop_gradient`), so backprop does not even run
     through a frozen base;
  3. BatchNorm: a BN layer whose params are all frozen runs in inference mode (running
     statistics, which it neither uses from the batch nor updates), as Keras does for
     `trainable=False`. This is done by a flax method interceptor around the train
     step's forward pass (`bn_inference`), so every model gets it without an option.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from cvjax.errors import UserError

_STAGE = re.compile(r'^((?:layer|block|stage)\d+)(?:_|$)')


# ----------------------------------------------------------------- freeze specs


@dataclasses.dataclass(frozen=True)
class FreezeSpec:
  """A parsed `freeze` setting: the top `top` stages train (kind 'top'), or a regex."""
  kind: str  # 'top' | 'regex'
  top: int = 0
  pattern: re.Pattern | None = None


def compile_pattern(text: str, what: str) -> re.Pattern:
  """`re.compile(text)`, or a UserError naming the setting `what`."""
  try:
    return re.compile(text)
  except (re.error, OverflowError, RecursionError) as e:  # a{99999999999}, ((((...
    raise UserError(f'{what}={text[:60]!r} is not a valid regular expression '
                    f'({e or type(e).__name__})') from None


def parse_freeze(text: str | None) -> FreezeSpec | None:
  """'' -> None; 'all_but_head'; 'all_but_top:N'; anything else a regex on param paths."""
  if not text:
    return None
  if text == 'all_but_head':
    return FreezeSpec('top', 0)
  if text.startswith('all_but_top'):
    match = re.fullmatch(r'all_but_top:(\d+)', text)
    if not match:
      raise UserError(f'freeze={text!r}: write all_but_top:N with N the number of top stages '
                      'that stay trainable, e.g. all_but_top:2')
    return FreezeSpec('top', int(match.group(1)))
  return FreezeSpec('regex', pattern=compile_pattern(text, 'freeze'))


# ------------------------------------------------------------ model structure


def variable_shapes(model: nn.Module, input_shape) -> dict:
  """`model.init`'s variables as ShapeDtypeStructs, for input float32`input_shape`; no compute."""
  return jax.eval_shape(lambda: model.init(
      {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(0)},
      jnp.zeros(input_shape, jnp.float32), train=False))


def flat_paths(tree) -> dict[str, Any]:
  """{'a/b/c': leaf} of a nested dict."""
  return {'/'.join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def module_order(model: nn.Module, input_shape) -> list[str]:
  """Top-level submodule names in the order the forward pass first calls them."""
  order = []

  def record(next_fun, args, kwargs, context):
    path = context.module.path
    if context.method_name == '__call__' and len(path) == 1 and path[0] not in order:
      order.append(path[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    variable_shapes(model, input_shape)
  return order


def head_modules(model: nn.Module, input_shape) -> tuple[str, ...]:
  """Top-level modules whose params change shape with num_classes: the classifier head."""
  if not hasattr(model, 'num_classes'):
    raise UserError(f'{type(model).__name__} has no num_classes, so it has no head to find')
  shapes = [flat_paths(variable_shapes(m, input_shape)['params'])
            for m in (model, model.clone(num_classes=model.num_classes + 1))]
  head = sorted({p.split('/')[0] for p, s in shapes[0].items()
                 if p not in shapes[1] or shapes[1][p].shape != s.shape})
  if not head:
    raise UserError(f'cannot find the head of {type(model).__name__}: no parameter depends on '
                    'num_classes')
  return tuple(head)


def stages(order: list[str], head: tuple[str, ...], params: set[str]) -> list[list[str]]:
  """Top-level modules with params (head excluded), grouped into stages, bottom first."""
  groups, keys = [], []
  names = [n for n in order if n in params and n not in head]
  staged = any(_STAGE.match(n) for n in names)
  for name in names:
    match = _STAGE.match(name)
    key = match.group(1) if (staged and match) else name
    if keys and keys[-1] == key:
      groups[-1].append(name)
    else:
      keys.append(key)
      groups.append([name])
  if staged:  # stem and in-between modules (conv1, bn1) are not stages of their own
    groups = [g for g in groups if _STAGE.match(g[0])]
  return groups


# -------------------------------------------------------------------- freezing


@dataclasses.dataclass(frozen=True, eq=False)
class Freezer:
  """Which params are frozen, by '/'-joined path, and how that is enforced.

  frozen:          paths of frozen params, e.g. 'layer1_0/conv1/kernel'.
  frozen_modules:  paths of modules all of whose params are frozen (their BN layers run
                   in inference mode).
  """
  frozen: frozenset[str]
  frozen_modules: frozenset[str]
  description: str = ''

  @classmethod
  def from_paths(cls, frozen: set[str], all_paths, description: str = '') -> 'Freezer':
    modules = {}
    for path in all_paths:
      parts = path.split('/')
      for i in range(1, len(parts)):
        prefix = '/'.join(parts[:i])
        modules[prefix] = modules.get(prefix, True) and path in frozen
    return cls(frozenset(frozen), frozenset(m for m, f in modules.items() if f), description)

  def mask(self, params) -> Any:
    """Bool pytree like `params`: True where frozen."""
    flat = traverse_util.flatten_dict(dict(params))
    return traverse_util.unflatten_dict({k: '/'.join(k) in self.frozen for k in flat})

  def labels(self, params) -> Any:
    """'frozen' / 'trainable' per param, for `optax.multi_transform`."""
    return jax.tree.map(lambda f: 'frozen' if f else 'trainable', self.mask(params))

  def wrap_optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` for trainable params; `set_to_zero` (no update, no state) for frozen ones."""
    return optax.multi_transform({'trainable': tx, 'frozen': optax.set_to_zero()}, self.labels)

  def stop_gradient(self, params) -> Any:
    """params with `lax.stop_gradient` on the frozen ones (no backprop into them)."""
    flat = traverse_util.flatten_dict(dict(params))
    return traverse_util.unflatten_dict(
        {k: jax.lax.stop_gradient(v) if '/'.join(k) in self.frozen else v
         for k, v in flat.items()})

  def bn_inference(self):
    """Context: frozen BatchNorm layers run in inference mode inside `model.apply`.

    Such a layer normalises with its running statistics and leaves them unchanged, even
    when the model is applied with train=True and mutable=['batch_stats'].
    """
    frozen_modules = self.frozen_modules

    def interceptor(next_fun, args, kwargs, context):
      module = context.module
      if (context.method_name == '__call__' and isinstance(module, nn.BatchNorm)
          and not module.use_running_average
          and '/'.join(module.path) in frozen_modules):
        inference = module.clone(parent=None, use_running_average=True)
        variables = {k: module.variables[k] for k in ('params', 'batch_stats')
                     if k in module.variables}
        return inference.apply(variables, *args, **kwargs)
      return next_fun(*args, **kwargs)

    return nn.intercept_methods(interceptor)


def make_freezer(freeze: str | None, model: nn.Module, input_shape) -> Freezer | None:
  """The `Freezer` for a `freeze` setting (see module doc), or None when nothing is frozen.

  Raises UserError when the setting freezes nothing, everything, or asks for more
  stages than the model has.
  """
  spec = parse_freeze(freeze)
  if spec is None:
    return None
  params = flat_paths(variable_shapes(model, input_shape)['params'])
  name = type(model).__name__
  if spec.kind == 'regex':
    frozen = {p for p in params if spec.pattern.search(p)}
    if not frozen:
      raise UserError(f'freeze={freeze!r} matches no parameter of {name}; paths look like '
                      f'{", ".join(list(params)[:3])}')
    description = f'matching {freeze!r}'
  else:
    head = head_modules(model, input_shape)
    order = module_order(model, input_shape)
    groups = stages(order, head, {p.split('/')[0] for p in params})
    if spec.top > len(groups):
      raise UserError(f'freeze={freeze!r}: {name} has only {len(groups)} stages '
                      f'({", ".join(g[0] for g in groups)})')
    if spec.top:
      first = order.index(groups[-spec.top][0])
      trainable = set(order[first:]) | set(head)
    else:
      trainable = set(head)
    frozen = {p for p in params if p.split('/')[0] not in trainable}
    owners = {p.split('/')[0] for p in params}
    description = f'all but {", ".join(n for n in order if n in trainable and n in owners)}'
  if len(frozen) == len(params):
    raise UserError(f'freeze={freeze!r} freezes every parameter of {name}; nothing would train')
  return Freezer.from_paths(frozen, params, description)
