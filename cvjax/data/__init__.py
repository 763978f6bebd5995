"""cvjax input data: TFDS datasets, augmentation ops, tf.data -> global jax.Array batches.

  meta = cvjax.data.dataset_meta('fashion_mnist')          # prepares it if needed
  spec = cvjax.data.classification.data_spec('fashion_mnist', meta, image_size=32)
  it = cvjax.data.pipeline.train_batches(spec, global_batch_size=256, sharding=sharding,
                                         seed=0, start_step=step,
                                         num_examples=meta.split_sizes['train'])
  batch = next(it)   # {'image': float32[256, 32, 32, 1], 'label': int32[256]}

Modules: `datasets` (names, splits, statistics: the catalogue), `prepare`
(getting a dataset prepared, `dataset_meta`), `download` (download hosts and a
fast reachability probe), `local_files` (building a stock TFDS dataset from raw
files on disk), `shapes` (the `cvjax_shapes` TFDS builder), `shapes_views` (its segmentation and
localization views), `detection_datasets` (VOC, COCO, cvjax_shapes for detection), `shapes_video` (shape videos
with MOTChallenge ground truth for tracking; the `cvjax_shapes_crops` builder), `sr_photos` (the
`cvjax_sr_photos` builder: whole photographs for super-resolution), `preprocess` (the op
registry), `batching` (process share of a global batch, device prefetch into
global jax.Arrays, epoch seeds), `pipeline` (the one input pipeline, `DataSpec`), `classification` (the
classification datasets' specs and eval preprocessing).

Importing this package does no I/O and loads neither TensorFlow nor TFDS: the names
below are resolved from their modules on first use.
"""
import importlib

_EXPORTS = {
    'DATASETS': 'datasets',
    'DatasetMeta': 'datasets',
    'dataset_meta': 'prepare',
    'steps_per_epoch': 'datasets',
    'DataSpec': 'pipeline',
    'preprocess_for_eval': 'classification',
}

_SUBMODULES = ('batching', 'classification', 'datasets', 'detection_datasets', 'download',
               'local_files', 'pipeline', 'prepare', 'shapes_views',
               'preprocess', 'cvjax_shapes', 'shapes_video', 'sr_photos')

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    value = getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
    globals()[name] = value
    return value
  if name in _SUBMODULES:
    return importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))
