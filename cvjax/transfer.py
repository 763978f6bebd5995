"""Transfer learning: start from another run's weights, freeze part of the model, fine-tune.

Everything here plugs into the one training loop through `TrainConfig` fields:

  init_from=DIR            every param and BatchNorm statistic of DIR's newest good
                           checkpoint whose path ('layer4_2/conv3/kernel') and shape match
                           this model's is loaded; the rest keeps its fresh initialisation
                           (a head for a new class count has another shape). What was
                           loaded, re-initialised and left unused is logged; nothing
                           matching at all is an error. DIR is any cvjax workdir, e.g. one
                           written by `python -m cvjax.convert`.
  init_exclude='head'      also re-initialise the head when its shape happens to match
                           (Fashion-MNIST's 10 classes -> MNIST's 10 digits); or a regex.
  freeze='all_but_head'    the lecture's phase 1: only the head trains.
  freeze='all_but_top:2'   phase 2: the top 2 stages (ResNet layer3, layer4; VGG block4,
                           block5 ...) and everything after them train, the rest is frozen.
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
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
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
  except re.error as e:
    raise UserError(f'{what}={text!r} is not a valid regular expression ({e})') from None


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


# ------------------------------------------------------------------ init_from


def read_workdir(workdir: str):
  """(TrainConfig, {'params', 'batch_stats'} as numpy, step) of `workdir`'s newest
  checkpoint that restores, without building its model or preparing its dataset."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from cvjax.train.config import TrainConfig  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise UserError(f'init_from={workdir!r} has no config.json; is it a cvjax workdir?')
  with open(config_path) as f:
    config = TrainConfig.from_json(f.read())
  directory = os.path.join(workdir, 'checkpoints')
  steps = sorted((int(d) for d in os.listdir(directory) if d.isdigit()), reverse=True) \
      if os.path.isdir(directory) else []
  checkpointer = ocp.PyTreeCheckpointer()
  for step in steps:
    path = os.path.join(os.path.abspath(directory), str(step), 'state')
    try:
      tree = checkpointer.metadata(path).item_metadata.tree
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('checkpoint %s cannot be read (%s); trying the previous one', path,
                      type(e).__name__)
      continue
    return config, {k: state.get(k) or {} for k in ('params', 'batch_stats')}, step
  raise UserError(f'init_from={workdir!r} has no readable checkpoint under {directory}')


def init_from(state, config, head: tuple[str, ...] = ()):
  """`state` with every tensor of `config.init_from` whose path and shape match loaded.

  Args:
    state: a fresh TrainState (params and batch_stats placed as the loop wants them).
    config: the run's TrainConfig (init_from, init_exclude, preprocessing).
    head: the model's head modules (used by init_exclude='head').

  Returns:
    The state with loaded params/batch_stats, same shardings and dtypes.

  Raises:
    UserError: unreadable source, mismatched preprocessing, or nothing matched.
  """
  source_config, source, step = read_workdir(config.init_from)
  if source_config.preprocessing != config.preprocessing:
    raise UserError(
        f'init_from={config.init_from!r} was trained on {source_config.preprocessing or "its dataset"}'
        f'-normalised inputs but this run uses {config.preprocessing or "the dataset"}\'s; '
        f'set --preprocessing={source_config.preprocessing or ""} so the weights see what they expect')
  exclude = config.init_exclude or None
  if exclude == 'head':
    excluded = lambda p: p.split('/')[0] in head  # noqa: E731
  elif exclude:
    pattern = compile_pattern(exclude, 'init_exclude')
    excluded = lambda p: bool(pattern.search(p))  # noqa: E731
  else:
    excluded = lambda p: False  # noqa: E731

  report = {'loaded': [], 'excluded': [], 'missing': [], 'mis-shaped': [], 'unused': []}
  new = {}
  for collection in ('params', 'batch_stats'):
    target = flat_paths(getattr(state, collection) or {})
    have = flat_paths(source[collection])
    out = {}
    for path, leaf in target.items():
      key = f'{collection}/{path}'
      if excluded(path):
        report['excluded'].append(key)
      elif path not in have:
        report['missing'].append(key)
      elif tuple(have[path].shape) != tuple(leaf.shape):
        report['mis-shaped'].append(f'{key} {tuple(have[path].shape)}->{tuple(leaf.shape)}')
      else:
        report['loaded'].append(key)
        out[path] = jax.device_put(np.asarray(have[path], leaf.dtype), leaf.sharding)
        continue
      out[path] = leaf
    report['unused'] += [f'{collection}/{p}' for p in have if p not in target]
    new[collection] = traverse_util.unflatten_dict({tuple(p.split('/')): v for p, v in out.items()})
  if not report['loaded']:
    first = next(iter(flat_paths(state.params)), '?')
    raise UserError(
        f'init_from={config.init_from!r} ({source_config.model}) has no tensor matching '
        f'{config.model} by path and shape (e.g. this model has params/{first}, the source '
        f'{", ".join(list(flat_paths(source["params"]))[:2])}); is it the same model family?')
  def listed(kind):
    items = report[kind]
    return f'{kind} {len(items)} ({", ".join(items[:4])}{", ..." if len(items) > 4 else ""})'
  reinit = [listed(k) for k in ('excluded', 'missing', 'mis-shaped') if report[k]]
  logging.info('init_from %s (step %d): loaded %d tensors; re-initialised: %s; %s',
               config.init_from, step, len(report['loaded']), '; '.join(reinit) or 'none',
               listed('unused') + ' of the source' if report['unused'] else 'all of the source used')
  return state.replace(params=new['params'],
                       batch_stats=new['batch_stats'] if state.batch_stats else state.batch_stats)


# ------------------------------------------------------------------ recipes


def two_phase(config, workdir: str, *, phase2_freeze: str = 'all_but_top:2',
              phase2_lr_scale: float = 0.1, phase2_epochs: float | None = None,
              phase2_steps: int | None = None) -> dict[str, Any]:
  """The lecture's fine-tuning recipe with the one loop, in `workdir`/phase1 and /phase2.

  Phase 1 trains `config` as given (typically init_from=DIR, freeze='all_but_head').
  Phase 2 starts from phase 1's weights (head included), unfreezes by `phase2_freeze`
  ('' for everything) and trains with `phase2_lr_scale` × the learning rate (the
  lecture: 10-100× smaller) for `phase2_epochs` or `phase2_steps` (default: as phase 1).
  Each phase is a normal, resumable workdir: re-running continues where it stopped.

  Returns:
    phase 2's results dict (as `fit`'s), plus 'phase1' (phase 1's results) and
    'workdir' (phase 2's).
  """
  from cvjax.train import fit  # pylint: disable=g-import-not-at-top
  if not 0 < phase2_lr_scale <= 1:
    raise UserError(f'phase2_lr_scale must be in (0, 1], got {phase2_lr_scale}')
  first_dir, second_dir = os.path.join(workdir, 'phase1'), os.path.join(workdir, 'phase2')
  phase1 = fit(config, first_dir)
  logging.info('phase 1 (%s frozen): test_accuracy=%.4f', config.freeze or 'nothing',
               phase1['test_accuracy'])
  second = config.replace(
      init_from=first_dir, init_exclude=None, freeze=phase2_freeze,
      learning_rate=config.learning_rate * phase2_lr_scale, warmup_epochs=0.0,
      num_epochs=phase2_epochs if phase2_epochs is not None else config.num_epochs,
      num_train_steps=phase2_steps if phase2_steps is not None else (
          None if phase2_epochs is not None else config.num_train_steps))
  phase2 = fit(second, second_dir)
  return {**phase2, 'phase1': phase1, 'workdir': second_dir}


# --------------------------------------------------------- feature extraction


class _Head(nn.Module):
  """The base model's head alone: features float32[B, ...] -> logits float32[B, K]."""
  num_classes: int
  head: str
  dtype: Any = jnp.float32  # compute dtype (--half_precision); the kernel stays float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name=self.head)(
        x.reshape((x.shape[0], -1)))
    return jnp.asarray(logits, jnp.float32)


class FeatureTask:
  """Classification on base features computed once: plain feature extraction.

  config.init_from is the base (a workdir); config.model/model_kwargs/image_size/
  preprocessing must describe it. Each split's images go once through the base in
  inference mode (eval preprocessing, no augmentation); the input of its head module
  is kept in memory, and the loop trains a fresh head (same module name, new class
  count) on those features. `attach_head` then makes a normal full-model workdir.
  Batches: {'image': float32[B, 1, D, 1] features (a 1×D grey strip, so image hooks such as
  TensorBoard's input grid still work), 'label': int32[B]} (+ 'mask' in eval).
  """
  name = 'features'
  main_metric = 'accuracy'
  main_metric_higher_is_better = True

  def __init__(self):
    from cvjax.train.tasks import ClassificationTask  # pylint: disable=g-import-not-at-top
    self._classification = ClassificationTask()
    self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    self._base = None

  def loss(self, outputs, batch, label_smoothing=0.0):
    return self._classification.loss(outputs, batch, label_smoothing)

  def eval_outputs(self, outputs, batch):
    return self._classification.eval_outputs(outputs, batch)

  def evaluator(self):
    return self._classification.evaluator()

  def dataset_meta(self, config):
    if not config.init_from:
      raise UserError('task=features needs --init_from=DIR, the base whose features to use')
    return self._classification.dataset_meta(config)

  def base(self, config):
    """(base model, its variables, head module name, input shape (1, S, S, C))."""
    if self._base is None:
      from cvjax import models  # pylint: disable=g-import-not-at-top
      source_config, arrays, _ = read_workdir(config.init_from)
      if source_config.model != config.model:
        raise UserError(f'task=features: --model={config.model} but init_from '
                        f'{config.init_from!r} holds a {source_config.model}')
      height, _, channels = models.model_input_shape(config.model)
      size = config.image_size or source_config.image_size or height
      shape = (1, size, size, channels)
      head = head_modules(models.get_model(config.model, num_classes=1, **config.model_kwargs),
                          shape)
      if len(head) != 1:
        raise UserError(f'task=features needs a one-module head; {config.model} has {head}')
      num_classes = int(arrays['params'][head[0]]['kernel'].shape[-1])
      from cvjax.train.loop import model_kwargs  # pylint: disable=g-import-not-at-top
      model = models.get_model(config.model, num_classes=num_classes, **model_kwargs(config))
      variables = {k: v for k, v in arrays.items() if v}
      self._base = (model, variables, head[0], shape)
    return self._base

  def build_model(self, config, meta):
    """The loop's model hook: a fresh head on features, and its init shape (1, 1, D, 1)."""
    model, variables, head, shape = self.base(config)
    dim = int(np.prod(jax.eval_shape(_feature_fn(model, head), variables,
                                     jnp.zeros(shape, jnp.float32)).shape[1:]))
    dtype = getattr(model, 'dtype', jnp.float32)  # --half_precision's compute dtype
    return _Head(meta.num_classes, head, dtype=dtype), (1, 1, dim, 1)

  def features(self, run, split: str) -> tuple[np.ndarray, np.ndarray]:
    """float32[N, D] features and int32[N] labels of `split`, computed once."""
    if split not in self._cache:
      from cvjax import data  # pylint: disable=g-import-not-at-top
      from cvjax.train import steps  # pylint: disable=g-import-not-at-top
      c = run.config
      model, variables, head, shape = self.base(c)
      mesh = steps.make_mesh(1)
      fn = jax.jit(_feature_fn(model, head))
      feats, labels = [], []
      for batch in data.eval_batches(
          c.dataset, split=split, global_batch_size=c.eval_batch_size or c.batch_size,
          image_size=shape[1], channels=shape[3], sharding=steps.batch_sharded(mesh),
          data_dir=c.data_dir, raw_data_dir=c.raw_data_dir, preprocessing=c.preprocessing):
        mask = np.asarray(batch['mask'])
        feats.append(np.asarray(fn(variables, batch['image']))[mask])
        labels.append(np.asarray(batch['label'])[mask])
      self._cache[split] = (np.concatenate(feats).reshape(sum(map(len, labels)), -1),
                            np.concatenate(labels).astype(np.int32))
      logging.info('features of %s %s: %s, computed once', c.dataset, split,
                   self._cache[split][0].shape)
    return self._cache[split]

  def train_batches(self, run, start_step):
    from cvjax.train import steps  # pylint: disable=g-import-not-at-top
    feats, labels = self.features(run, 'train')
    batch, per_epoch = run.config.batch_size, run.steps_per_epoch
    sharding = steps.batch_sharded(run.mesh)
    step = start_step
    while True:  # the order of step k depends only on (seed, epoch of k): exact resume
      epoch, within = divmod(step, per_epoch)
      order = np.random.default_rng([run.config.seed, epoch]).permutation(len(labels))
      index = order[within * batch:(within + 1) * batch]
      yield {'image': jax.device_put(feats[index][:, None, :, None], sharding),
             'label': jax.device_put(labels[index], sharding)}
      step += 1

  def eval_batches(self, run, split):
    from cvjax.train import steps  # pylint: disable=g-import-not-at-top
    feats, labels = self.features(run, split)
    batch = run.config.eval_batch_size or run.config.batch_size
    sharding = steps.batch_sharded(run.mesh)
    for start in range(0, len(labels), batch):
      n = min(batch, len(labels) - start)
      pad = batch - n
      yield {'image': jax.device_put(np.pad(feats[start:start + n], ((0, pad), (0, 0)))
                                     [:, None, :, None], sharding),
             'label': jax.device_put(np.pad(labels[start:start + n], (0, pad)), sharding),
             'mask': jax.device_put(np.arange(batch) < n, sharding)}


def _feature_fn(model: nn.Module, head: str):
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


def feature_extraction(config, workdir: str) -> dict[str, Any]:
  """Trains a new head on cached base features, then writes the full model.

  `config` as for fine-tuning (init_from=DIR, model = DIR's model, the new dataset;
  augment is not used: each image's features are computed once). The head trains
  with the one loop in `workdir`/head (task 'features'); `workdir`/model is then a
  normal workdir holding the base's weights with the trained head, for
  `cvjax.restore` / `--init_from`.

  Returns:
    the head run's results, plus 'model_workdir'.
  """
  from cvjax.pretrained import common  # pylint: disable=g-import-not-at-top
  from cvjax.train import fit  # pylint: disable=g-import-not-at-top
  from cvjax.train.restore import restore  # pylint: disable=g-import-not-at-top
  head_dir, model_dir = os.path.join(workdir, 'head'), os.path.join(workdir, 'model')
  results = fit(config.replace(task='features', freeze=''), head_dir)
  if not os.path.exists(model_dir):
    source_config, arrays, _ = read_workdir(config.init_from)
    head = restore(head_dir)
    joined = {f'{k}/{p}': np.asarray(v) for k in ('params', 'batch_stats')
              for p, v in flat_paths(arrays[k]).items()}
    head_params = flat_paths(head.variables['params'])
    name = next(iter(head_params)).split('/')[0]
    joined = {p: v for p, v in joined.items() if p.split('/')[1] != name}
    joined.update({f'params/{p}': np.asarray(v) for p, v in head_params.items()})
    num_classes = int(head_params[f'{name}/kernel'].shape[-1])
    full = config.replace(task='classification', freeze='', init_from=None, init_exclude=None,
                          num_classes=num_classes,
                          image_size=config.image_size or source_config.image_size)
    common.write_workdir(model_dir, full, joined,
                         {'feature_extraction': {'base': os.path.abspath(config.init_from),
                                                 'head': os.path.abspath(head_dir)}})
  return {**results, 'model_workdir': model_dir}


def _register() -> None:
  from cvjax.train.tasks import register_task  # pylint: disable=g-import-not-at-top
  register_task('features', FeatureTask)


_register()
