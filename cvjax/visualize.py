"""Pictures of a training run: first-layer filters, feature maps, training curves.

    python -m cvjax.visualize --workdir=W --what=filters      --out=filters.png
    python -m cvjax.visualize --workdir=W --what=feature_maps --out=maps.png
        [--image=photo.png | --index=0] [--layer=conv2]
    python -m cvjax.visualize --workdir=W --what=curves       --out=curves.png
    python -m cvjax.visualize --workdir=W1,W2,... --what=curves --out=compare.png
        [--labels=name1,name2,...]   # several runs' curves in one picture
    python -m cvjax.visualize --readme [--workdir=runs/lenet5_fashion_mnist]
        [--out_dir=docs/images] [--no_profile]   # regenerates the README's pictures

filters:      the first convolution's kernels, one tile per output channel,
              each scaled symmetrically about zero (grey = 0; for RGB kernels
              each colour channel is a colour channel of the tile).
feature_maps: the output of layer `--layer` (default: the first convolution)
              for one image, one tile per channel (up to 64), each min-max
              scaled. Layers are the model's modules, as `python -m
              cvjax.summary` lists them; activation functions are not modules,
              so a conv's map is its pre-activation output. The image is
              `--image` (a PNG/JPEG file), else test image `--index` of the
              run's dataset (else, if that dataset is not prepared here,
              scikit-image's camera / astronaut photo); it is preprocessed
              exactly as `cvjax.restore(W).predict` does.
curves:       losses, metrics in [0, 1] (accuracy, mAP), other metrics and
              the learning rate against the step, one panel each, read from
              `<workdir>/metrics.jsonl` (train: means over each logging
              window; eval: whole split).
              With several comma-separated workdirs (curves only: the other
              pictures are per run), their runs are overlaid in the same
              panels, one colour per run, named in the legend by each
              workdir's directory name or by `--labels` (one per workdir, same
              order); eval metrics are lines with markers, train metrics thin
              lines. The x axis is the epoch when the steps per epoch of every
              run are known here (`steps_per_epoch`: its dataset is prepared
              where its config.json says), else the step.

PNG sizes are fixed by `FIGSIZE` × dpi (inches × dots per inch), so scripts
and tests can rely on them. The library functions return matplotlib Figures
(no pyplot state, so they display inline in a notebook) and plain arrays:
`filter_grid`, `feature_map_grid`, `activations`, `read_metrics`,
`steps_per_epoch`, `test_images`; `plot_compared_curves` draws several runs.
Detection runs (SSD) work too: their images come from `cvjax.detection.data`
and are resized to the model input as their `predict` does; their boxes are
drawn by `cvjax.detection.draw`.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Sequence

from absl import flags
import jax
import numpy as np

from cvjax import cli, data, errors, profile, summary
from cvjax.data import datasets
from cvjax.models import registry
from cvjax.train.config import TrainConfig

WHATS = ('filters', 'feature_maps', 'curves')
FIGSIZE = {'filters': (7.0, 3.6), 'feature_maps': (10.0, 5.0), 'curves': (12.0, 3.6)}
DPI = 100
MAX_MAPS = 64
README_WORKDIR = os.path.join('runs', 'lenet5_fashion_mnist')
README_PICTURES = {'curves': 'training_curves.png', 'filters': 'filters.png',
                   'feature_maps': 'feature_maps.png'}
README_PROFILE = ('alexnet_profile.png', dict(batch_size=8, backward=True, repeats=3))

FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', None, 'A training run directory (with --readme default: '
                    f'{README_WORKDIR}); for --what=curves, several comma-separated ones '
                    'are compared in one picture.', flag_values=FLAGS)
flags.DEFINE_string('labels', None, 'curves of several workdirs: their names in the legend, '
                    'comma-separated, one per workdir (default: the directory names).',
                    flag_values=FLAGS)
flags.DEFINE_string('what', None, ' | '.join(WHATS), flag_values=FLAGS)
flags.DEFINE_string('out', None, 'PNG file to write.', flag_values=FLAGS)
flags.DEFINE_string('image', None, 'feature_maps: a PNG/JPEG input image.', flag_values=FLAGS)
flags.DEFINE_integer('index', 0, 'feature_maps without --image: which test image of the dataset.',
                     flag_values=FLAGS)
flags.DEFINE_string('layer', None, 'feature_maps: layer name (default: the first conv).',
                    flag_values=FLAGS)
flags.DEFINE_integer('dpi', DPI, 'Dots per inch of the PNG (its size is FIGSIZE × dpi).',
                     flag_values=FLAGS)
flags.DEFINE_bool('readme', False, 'Regenerate the README pictures (training_curves.png, '
                  'filters.png, feature_maps.png, alexnet_profile.png) in --out_dir.',
                  flag_values=FLAGS)
flags.DEFINE_string('out_dir', os.path.join('docs', 'images'), 'With --readme: where the '
                    'pictures go.', flag_values=FLAGS)
flags.DEFINE_bool('no_profile', False, 'With --readme: skip the (minutes-long) AlexNet timing '
                  'picture.', flag_values=FLAGS)


# ------------------------------------------------------------------------ arrays


def tile(images: np.ndarray, *, cols: int | None = None, pad: int = 1,
         pad_value: float = 1.0) -> np.ndarray:
  """Lays images out in a grid: float[N, h, w, C] → float[R·(h+pad)+pad, cols·(w+pad)+pad, C].

  R = ceil(N / cols), cols defaults to ceil(sqrt(N)); empty cells and the
  `pad`-pixel borders get `pad_value`.
  """
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  cols = cols or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, np.float32)
  for i in range(n):
    r, q = divmod(i, cols)
    y, x = pad + r * (h + pad), pad + q * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def best_cols(n: int, aspect: float) -> int:
  """Columns for n square tiles in a width/height = `aspect` box, largest tiles first."""
  return max(range(1, n + 1), key=lambda c: (min(aspect / c, 1 / math.ceil(n / c)), -c))


def filter_grid(kernel: np.ndarray, *, pad: int = 1, cols: int | None = None) -> np.ndarray:
  """A conv kernel's filters as one picture.

  Args:
    kernel: float[kh, kw, C_in, C_out] (flax `nn.Conv` layout).
    pad: pixels between tiles.
    cols: tiles per row; default ceil(sqrt(C_out)).

  Returns:
    float32[R·(kh+pad)+pad, cols·(kw+pad)+pad, 3] in [0, 1]: one tile per output
    channel, 0.5 + 0.5 · w / max|w| of that filter (grey is zero). C_in = 3 is
    shown as RGB; any other C_in as grey levels of the mean over input channels.
  """
  k = np.asarray(kernel, np.float32)
  if k.ndim != 4:
    raise errors.UserError(f'filter_grid wants a conv kernel [kh, kw, C_in, C_out], '
                           f'got shape {k.shape}')
  if k.shape[2] != 3:
    k = k.mean(axis=2, keepdims=True)
  k = np.moveaxis(k, 3, 0)  # [C_out, kh, kw, C]
  scale = np.abs(k).max(axis=(1, 2, 3), keepdims=True)
  k = 0.5 + 0.5 * k / np.where(scale > 0, scale, 1.0)
  if k.shape[-1] == 1:
    k = np.repeat(k, 3, axis=-1)
  return tile(k, pad=pad, cols=cols)


def feature_map_grid(maps: np.ndarray, *, max_maps: int = MAX_MAPS, pad: int = 1) -> np.ndarray:
  """Channels of one activation as one picture.

  Args:
    maps: float[h, w, C] (one example's layer output) or float[C] (a dense
      layer's output: one pixel per unit in a square, scaled jointly).
    max_maps: at most this many channels, the first ones.
    pad: pixels between tiles.

  Returns:
    float32[H', W'] in [0, 1]: one tile per channel, each min-max scaled
    (a constant channel is 0); borders are NaN (drawn transparent).
  """
  a = np.asarray(maps, np.float32)
  if a.ndim == 1:  # a dense layer: one pixel per unit, scaled jointly, in a square
    side = math.ceil(math.sqrt(a.size))
    span = float(a.max() - a.min())
    v = (a - a.min()) / span if span > 0 else np.zeros_like(a)
    v = np.concatenate([v, np.full(side * side - a.size, np.nan, np.float32)])
    return v.reshape(side, side)
  if a.ndim != 3:
    raise errors.UserError(f'feature_map_grid wants [h, w, C] or [C], got shape {a.shape}')
  a = np.moveaxis(a[..., :max_maps], -1, 0)[..., None]  # [C, h, w, 1]
  lo = a.min(axis=(1, 2, 3), keepdims=True)
  span = a.max(axis=(1, 2, 3), keepdims=True) - lo
  a = np.where(span > 0, (a - lo) / np.where(span > 0, span, 1.0), 0.0)
  return tile(a, pad=pad, pad_value=np.nan)[..., 0]


# -------------------------------------------------------------------- run access


def restore(workdir: str):
  """`cvjax.restore(workdir)`, with a one-line `UserError` if there is no run there."""
  from cvjax import restoring  # loads JAX, Flax and orbax
  if not os.path.isdir(workdir):
    raise errors.UserError(f'workdir {workdir} does not exist; give the directory of a '
                           'training run (it holds config.json and checkpoints/)')
  return restoring.restore(workdir)


def input_shape(run) -> tuple[int, int, int]:
  """The (S, S, C) the restored run's model takes."""
  h, _, c = registry.model_input_shape(run.config.model)
  s = run.config.image_size or h
  return s, s, c


def layers(run) -> list[dict[str, Any]]:
  """The model's leaf layers (`cvjax.summary` rows: name, type, output_shape, ...)."""
  return summary.summarize(run.model, (1, *input_shape(run)))['layers']


def first_conv(run) -> tuple[str, np.ndarray]:
  """(name, kernel float32[kh, kw, C_in, C_out]) of the model's first convolution."""
  for layer in layers(run):
    if layer['type'] == 'Conv':
      tree = run.variables['params']
      for key in layer['name'].split('/'):
        tree = tree[key]
      return layer['name'], np.asarray(tree['kernel'], np.float32)
  raise errors.UserError(f'model {run.config.model} has no convolution')


def preprocess(run, images: np.ndarray) -> np.ndarray:
  """uint8[B, H, W, C] → the model's input float32[B, S, S, C'], as `run.predict` does it.

  Classification: `cvjax.data.preprocess_for_eval` with the run's dataset
  normalisation. Detection: RGB in [0, 1] resized to S×S (the SSD models
  normalise their input themselves).
  """
  s, _, c = input_shape(run)
  if run.config.task == 'detection':
    tf = datasets.tensorflow()
    x = tf.image.convert_image_dtype(tf.constant(np.asarray(images, np.uint8)), tf.float32)
    if x.shape[-1] == 1:
      x = tf.image.grayscale_to_rgb(x)
    return tf.image.resize(x, [s, s], antialias=False).numpy()
  return data.preprocess_for_eval(np.asarray(images), dataset=run.config.dataset,
                                  image_size=s, channels=c,
                                  preprocessing=run.config.preprocessing)


def activations(run, image: np.ndarray, layer: str | None = None) -> tuple[str, np.ndarray]:
  """The output of one layer for one image.

  Args:
    run: a `cvjax.restore` result.
    image: uint8[H, W, C] (any size; preprocessed like `run.predict`).
    layer: a layer name from `layers(run)` ('/'-joined path, e.g. 'conv2' or
      'stage1/block0/conv1'); None: the first convolution.

  Returns:
    (layer name, float32[h, w, C_out] or float32[C_out] for dense layers).

  Raises:
    UserError: unknown layer name (the message lists the valid ones).
  """
  names = [l['name'] for l in layers(run)]
  if layer is None:
    layer = first_conv(run)[0]
  if layer not in names:
    raise errors.unknown_choice('layer', layer, names)
  path = tuple(layer.split('/'))
  x = preprocess(run, np.asarray(image)[None])

  def capture(module, method_name):
    return method_name == '__call__' and tuple(module.path) == path

  _, state = jax.jit(lambda v, x: run.model.apply(
      v, x, train=False, capture_intermediates=capture, mutable=['intermediates']))(
          run.variables, x)
  tree = state['intermediates']
  for key in path:
    tree = tree[key]
  out = jax.tree.leaves(tree['__call__'])[0]
  return layer, np.asarray(out[0], np.float32)


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The records of `<workdir>/metrics.jsonl`: [{'step': int, name: value, ...}, ...].

  A line that is not a JSON object of an integer 'step' ≥ 0 and numbers (NaN allowed:
  a diverged run logs it) is a `UserError` naming the file and the line, except an
  unfinished last line (no newline yet): a live run is writing it, or a kill tore it
  (the resumed run drops it), so it is left out.
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    raise errors.UserError(f'{path} does not exist; is {workdir} a cvjax training run?')
  records = []
  lines = cli.read_text(path).split('\n')
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except (ValueError, RecursionError):
      if i == len(lines):  # the unfinished last line
        continue
      raise errors.UserError(f'{path} line {i} is not JSON: {line.strip()[:60]!r}') from None
    step = record.get('step') if isinstance(record, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
      raise errors.UserError(f'{path} line {i}: expected an object with an integer "step" >= 0, '
                             f'got {line.strip()[:60]!r}')
    bad = [k for k, v in record.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
      raise errors.UserError(f'{path} line {i}: {bad[0]!r} must be a number, got '
                             f'{str(record[bad[0]])[:40]!r}')
    records.append(record)
  if not records:
    raise errors.UserError(f'{path} is empty: the run has not logged a step yet')
  return records


def steps_per_epoch(config: TrainConfig) -> int | None:
  """Optimizer steps per epoch of a run with this config, if that can be known here.

  config.json records no epoch length: it is what the loop computes, the examples of
  `config.train_split` // (batch_size × grad_accum_steps), the split's size read from
  the dataset's TFDS record where `config.data_dir` holds it prepared (nothing is
  built or downloaded). None for a dataset outside `cvjax.data.datasets` (detection,
  segmentation) or one not prepared on this machine.
  """
  if config.dataset not in datasets.DATASETS:
    return None
  try:
    expr = datasets.tfds_split(config.dataset, config.train_split)
  except errors.UserError:
    return None
  datasets.tensorflow()  # hides accelerators from TF before TFDS loads it
  from cvjax.data import prepare  # noqa: F401  (loads TFDS; registers cvjax's builders)
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(config.dataset, data_dir=config.data_dir)
    if not builder.is_prepared():
      return None
    examples = builder.info.splits[expr].num_examples
  except Exception:  # pylint: disable=broad-except  # an unreadable record: not known here
    return None
  return examples // (config.batch_size * config.grad_accum_steps) or None


def test_images(run, n: int = 16, *, split: str | None = None,
                offset: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
  """Examples `offset … offset+n-1` of the run's dataset `split`, as stored (uint8).

  split: default 'test' for classification, the run's eval split for detection.

  Returns:
    (images: n arrays uint8[H, W, C] (sizes may differ for tf_flowers, imagenet,
     detection datasets), labels: int64[n], -1 for detection runs, whose
     examples have boxes instead).

  Raises:
    UserError: the dataset is not prepared (and cannot be built) here.
  """
  c = run.config
  if c.task == 'detection':
    from cvjax.detection import data as detection_data  # loads TensorFlow
    try:
      ds = detection_data.load_split(c.dataset, split or c.eval_split, data_dir=c.data_dir,
                                     shard_for_process=False)
      images = [ex['image'] for ex in ds.skip(offset).take(n).as_numpy_iterator()]
    except errors.UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # TFDS: not prepared here
      raise errors.UserError(f'cannot read {c.dataset} here: {type(e).__name__}') from None
    return images, np.full(len(images), -1, np.int64)
  split = split or 'test'
  from cvjax.data import prepare  # loads TensorFlow Datasets
  builder = prepare.prepared_builder(c.dataset, data_dir=c.data_dir,
                                     raw_data_dir=c.raw_data_dir, download=False)
  ds = builder.as_dataset(split=datasets.tfds_split(c.dataset, split), shuffle_files=False)
  images, labels = [], []
  for ex in ds.skip(offset).take(n).as_numpy_iterator():
    images.append(ex['image'])
    labels.append(ex['label'])
  return images, np.asarray(labels, np.int64)


def default_image(run, index: int = 0) -> tuple[np.ndarray, str]:
  """(uint8[H, W, C], caption): test image `index` of the run's dataset, else a photo."""
  try:
    images, labels = test_images(run, 1, offset=index)
    if images:
      if labels[0] < 0:  # detection: no single label
        return images[0], f'{run.config.dataset} {run.config.eval_split} image {index}'
      names = run.class_names
      label = names[labels[0]] if names else str(labels[0])
      return images[0], f'{run.config.dataset} test image {index} ({label})'
  except errors.UserError:
    pass
  from skimage import data as skdata  # optional (cvjax[test]): only this fallback
  c = input_shape(run)[2]
  if c == 1:
    return skdata.camera()[..., None], 'scikit-image camera photo'
  return skdata.astronaut(), 'scikit-image astronaut photo'


# ---------------------------------------------------------------------- figures


def _figure(what: str, dpi: int):
  from matplotlib.figure import Figure
  return Figure(figsize=FIGSIZE[what], dpi=dpi)


def plot_filters(run, *, dpi: int = DPI):
  """Figure: the first convolution's filters (`filter_grid`), FIGSIZE['filters'] inches."""
  name, kernel = first_conv(run)
  fig = _figure('filters', dpi)
  box = (0.01, 0.01, 0.98, 0.87)
  ax = fig.add_axes(box)
  w, h = FIGSIZE['filters']
  cols = best_cols(kernel.shape[-1], (w * box[2]) / (h * box[3]))
  ax.imshow(filter_grid(kernel, cols=cols), interpolation='nearest')
  ax.set_axis_off()
  kh, kw, cin, cout = kernel.shape
  fig.suptitle(f'{run.config.model} {name}: {cout} filters {kh}×{kw}×{cin} '
               f'(step {run.step}; grey = 0)', fontsize=11)
  return fig


def plot_feature_maps(run, image: np.ndarray, layer: str | None = None, *,
                      caption: str = '', dpi: int = DPI):
  """Figure: the model input (left) and layer `layer`'s channels for it (right)."""
  name, maps = activations(run, image, layer)
  kind = next(l['type'] for l in layers(run) if l['name'] == name)
  x = preprocess(run, np.asarray(image)[None])[0]
  fig = _figure('feature_maps', dpi)
  left = fig.add_axes((0.02, 0.08, 0.28, 0.76))
  shown = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
  left.imshow(shown[..., 0] if shown.shape[-1] == 1 else shown,
              cmap='gray', interpolation='nearest')
  left.set_title('model input' + (f'\n{caption}' if caption else ''), fontsize=9)
  left.set_axis_off()
  right = fig.add_axes((0.33, 0.03, 0.65, 0.83))
  right.imshow(feature_map_grid(maps), cmap='viridis', interpolation='nearest')
  right.set_axis_off()
  channels = maps.shape[-1]
  if maps.ndim == 1:
    how = f'{channels} units, one pixel each, scaled jointly'
  else:
    how = (f'first {MAX_MAPS} of {channels} channels, ' if channels > MAX_MAPS else '') + \
        'each channel min-max scaled'
  before = ', before the activation' if kind in ('Conv', 'Dense') else ''
  fig.suptitle(f'{run.config.model} layer {name} ({kind}{before}): output '
               f'{"×".join(map(str, maps.shape))} ({how})', fontsize=11)
  return fig


def _curve_panels(runs: Sequence[list[dict[str, float]]]) -> list[tuple[str, list[str]]]:
  """(title, metric keys) of the curve panels over the records of one or more runs:
  losses, metrics in [0, 1] (in every run), other metrics, the learning rate;
  empty panels are left out."""
  records = [r for rs in runs for r in rs]
  keys = sorted({k for r in records for k in r} - {'step'})
  losses = [k for k in keys if k.endswith('loss')]
  lr = [k for k in keys if k == 'learning_rate']
  others = [k for k in keys if k not in losses and k not in lr]
  def in_unit_range(k):
    return all(0.0 <= r[k] <= 1.0 for r in records if k in r)

  def panel_title(ks):
    return ', '.join(sorted({k.split('_', 1)[-1] for k in ks}))

  rates = [k for k in others if in_unit_range(k)]  # accuracy, mAP, ...
  counts = [k for k in others if k not in rates]   # e.g. detection's matched anchors
  panels = [('loss', losses), (panel_title(rates), rates), (panel_title(counts), counts),
            ('learning rate', lr)]
  return [(t, ks) for t, ks in panels if ks]


def plot_curves(workdir: str, *, dpi: int = DPI, title: str | None = None):
  """Figure: losses, other metrics and the learning rate from metrics.jsonl."""
  records = read_metrics(workdir)
  panels = _curve_panels([records])
  fig = _figure('curves', dpi)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (label, ks) in zip(axes, panels):
    for k in ks:
      pts = [(r['step'], r[k]) for r in records if k in r]
      steps, values = zip(*pts)
      ax.plot(steps, values, marker='o' if len(pts) < 30 else None, markersize=3,
              label=k.replace('_', ' '))
    ax.set_xlabel('step')
    ax.set_title(label, fontsize=10)
    ax.grid(alpha=0.3)
    if len(ks) > 1 or label != 'learning rate':
      ax.legend(fontsize=8)
  if title is None:
    title = workdir
    config_path = os.path.join(workdir, 'config.json')
    if os.path.exists(config_path):
      c = TrainConfig.from_file(config_path)
      title = f'{c.model} on {c.dataset} ({workdir})'
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  return fig


LINESTYLES = ('-', '--', ':', '-.')


def _metric_name(key: str) -> str:
  """'eval_accuracy' → 'accuracy': what a train and an eval curve have in common."""
  for prefix in ('train_', 'eval_'):
    if key.startswith(prefix):
      return key[len(prefix):]
  return key


def _run_colours(n: int) -> list[tuple[float, ...]]:
  """n distinct colours: matplotlib's tab10 (its default cycle), tab20 beyond 10 runs."""
  from matplotlib import colormaps
  palette = colormaps['tab10' if n <= 10 else 'tab20'].colors
  return [palette[i % len(palette)] for i in range(n)]


def run_labels(workdirs: Sequence[str]) -> list[str]:
  """The legend names of runs: each workdir's directory name, or, when two share one,
  the workdirs as given."""
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return names if len(set(names)) == len(names) else list(workdirs)


def plot_compared_curves(workdirs: Sequence[str], labels: Sequence[str] | None = None, *,
                         dpi: int = DPI, title: str | None = None):
  """Figure: the curves of several runs overlaid, FIGSIZE['curves'] inches.

  The panels of `plot_curves` over the metrics of all runs (a metric is a rate when
  it lies in [0, 1] in every run). Run i has colour i, named in the figure's legend
  (right) by `labels[i]` (default `run_labels(workdirs)`); its eval metrics (eval_*)
  are lines with markers, its train metrics and learning rate thin lines; metrics
  sharing a panel differ by line style (the panel's own legend). The x axis is the
  epoch, step / `steps_per_epoch(config)` of each run, when that is known for every
  run, else the step. Each line's label is '<run label>: <metric with spaces>'.

  Raises:
    UserError: `labels` not one per workdir; a workdir that does not exist or has no
      readable metrics.jsonl, or a bad config.json (the message names it).
  """
  from matplotlib.lines import Line2D
  workdirs = list(workdirs)
  if labels is None:
    labels = run_labels(workdirs)
  elif len(labels) != len(workdirs):
    def count(n, word):
      return f'{n} {word}' + 's' * (n != 1)
    raise errors.UserError(f'--labels has {count(len(labels), "label")} for '
                           f'{count(len(workdirs), "workdir")} in --workdir; give one label per '
                           'workdir, in the same order')
  for workdir in workdirs:
    if not os.path.isdir(workdir):
      raise errors.UserError(f'workdir {workdir} does not exist; give the directory of a '
                             'training run (it holds config.json and metrics.jsonl)')
  runs = [read_metrics(w) for w in workdirs]
  configs = [TrainConfig.from_file(os.path.join(w, 'config.json'))
             if os.path.exists(os.path.join(w, 'config.json')) else None for w in workdirs]
  per_epoch = [steps_per_epoch(c) if c is not None else None for c in configs]
  in_epochs = all(n is not None for n in per_epoch)
  colours = _run_colours(len(workdirs))
  panels = _curve_panels(runs)
  fig = _figure('curves', dpi)
  fig.set_layout_engine('constrained')
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (panel, ks) in zip(axes, panels):
    names = sorted({_metric_name(k) for k in ks})
    style = {n: LINESTYLES[i % len(LINESTYLES)] for i, n in enumerate(names)}
    for records, label, colour, n in zip(runs, labels, colours, per_epoch):
      for k in ks:
        pts = [(r['step'], r[k]) for r in records if k in r]
        if not pts:
          continue
        steps, values = zip(*pts)
        x = [s / n for s in steps] if in_epochs else list(steps)
        evaluated = k.startswith('eval_')
        ax.plot(x, values, color=colour, linestyle=style[_metric_name(k)],
                linewidth=1.5 if evaluated else 0.8, marker='o' if evaluated else None,
                markersize=3, label=f'{label}: {k.replace("_", " ")}')
    ax.set_xlabel('epoch' if in_epochs else 'step')
    ax.set_title(panel, fontsize=10)
    ax.grid(alpha=0.3)
    if len(names) > 1:
      ax.legend(handles=[Line2D([], [], color='0.3', linestyle=style[n],
                                label=n.replace('_', ' ')) for n in names], fontsize=7)
  fig.legend(handles=[Line2D([], [], color=c, linewidth=2, label=label)
                      for c, label in zip(colours, labels)],
             loc='outside right center', fontsize=8, frameon=False)
  if title is None:
    data_names = sorted({c.dataset for c in configs if c is not None})
    title = (f'{len(workdirs)} runs' + (f' on {", ".join(data_names)}' if data_names else '')
             + ': eval metrics with markers, train metrics thin, by '
             + ('epoch' if in_epochs else 'step'))
  fig.suptitle(title, fontsize=11)
  return fig


def save(fig, path: str) -> str:
  """Writes `fig` as PNG to `path` at the figure's own size and dpi; returns path."""
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise errors.UserError(f'--out={path}: directory {parent} does not exist')
  fig.savefig(path, dpi=fig.dpi, format='png')
  return path


def picture(what: str, workdir: str | Sequence[str], out: str, *, image: str | None = None,
            index: int = 0, layer: str | None = None, dpi: int = DPI,
            labels: Sequence[str] | None = None) -> str:
  """One picture `what` (one of WHATS) of run `workdir`, written to PNG `out`.

  `workdir` a sequence (what=curves only): the runs compared by `plot_compared_curves`,
  named by `labels`.
  """
  if what not in WHATS:
    raise errors.unknown_choice('--what', what, WHATS)
  if not isinstance(workdir, str) and what != 'curves':
    raise errors.UserError(f'--what={what} draws one run, got {len(workdir)} workdirs '
                           f'({", ".join(workdir)}); give one --workdir, or compare runs '
                           'with --what=curves')
  if labels is not None and what != 'curves':
    raise errors.UserError(f'--labels names the runs compared by --what=curves; --what={what} '
                           'draws one run, named by its workdir')
  if not isinstance(workdir, str) or labels is not None:
    workdirs = [workdir] if isinstance(workdir, str) else list(workdir)
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
      raise errors.UserError(f'--out={out}: directory {parent} does not exist')
    return save(plot_compared_curves(workdirs, labels, dpi=dpi), out)
  if not os.path.isdir(workdir):
    raise errors.UserError(f'workdir {workdir} does not exist; give the directory of a '
                           'training run (it holds config.json and metrics.jsonl)')
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise errors.UserError(f'--out={out}: directory {parent} does not exist')
  if what == 'curves':
    return save(plot_curves(workdir, dpi=dpi), out)
  run = restore(workdir)
  if what == 'filters':
    return save(plot_filters(run, dpi=dpi), out)
  if image is not None:
    mode = 'L' if input_shape(run)[2] == 1 else 'RGB'
    img, caption = cli.read_image(image, mode=mode), os.path.basename(image)
  else:
    img, caption = default_image(run, index)
  return save(plot_feature_maps(run, img, layer, caption=caption, dpi=dpi), out)


def readme_pictures(workdir: str = README_WORKDIR, out_dir: str = os.path.join('docs', 'images'),
                    *, layer: str | None = None, index: int = 0,
                    with_profile: bool = True) -> list[str]:
  """Regenerates the README's pictures in `out_dir`; returns their paths.

  From run `workdir`: training_curves.png (curves), filters.png (first-layer
  filters), feature_maps.png (first conv's maps for test image `index`).
  With `with_profile`, also alexnet_profile.png: `cvjax.profile` of AlexNet at
  227², batch 8, forward and forward+backward, timed on this backend; its table
  is printed.
  """
  if not os.path.isdir(workdir):
    raise errors.UserError(f'workdir {workdir} does not exist; train the default run first '
                           '(python -m experiments.lenet) or pass --workdir')
  os.makedirs(out_dir, exist_ok=True)
  paths = [picture(what, workdir, os.path.join(out_dir, name), index=index, layer=layer)
           for what, name in README_PICTURES.items()]
  if with_profile:
    name, kwargs = README_PROFILE
    p = profile.profile('alexnet', **kwargs)
    print(profile.format_table(p))
    paths.append(os.path.join(out_dir, name))
    profile.plot(p, paths[-1])
  return paths


def split_list(flag: str, value: str) -> list[str]:
  """'a,b,c' → ['a', 'b', 'c'] for comma-separated flag `flag`; an empty entry is a UserError."""
  items = value.split(',')
  if not all(items):
    raise errors.UserError(f'{flag}={value} has an empty entry; separate the entries by '
                           'single commas')
  return items


def run(f: flags.FlagValues) -> int:
  if f.readme:
    paths = readme_pictures(f.workdir or README_WORKDIR, f.out_dir, layer=f.layer,
                            index=f.index, with_profile=not f.no_profile)
  else:
    missing = [f'--{k}' for k in ('workdir', 'what', 'out') if getattr(f, k) is None]
    if missing:
      raise errors.UserError(f'{" and ".join(missing)} required (or --readme)')
    if f.index < 0:
      raise errors.UserError(f'--index must be 0 or more, got {f.index}')
    if f.dpi < 10:
      raise errors.UserError(f'--dpi must be at least 10, got {f.dpi}')
    workdir = split_list('--workdir', f.workdir) if ',' in f.workdir else f.workdir
    labels = split_list('--labels', f.labels) if f.labels is not None else None
    paths = [picture(f.what, workdir, f.out, image=f.image, index=f.index, layer=f.layer,
                     dpi=f.dpi, labels=labels)]
  for p in paths:
    print(p)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
