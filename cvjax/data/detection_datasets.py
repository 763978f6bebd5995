"""The detection datasets cvjax knows: names, logical splits, preparation, `DatasetMeta`.

Logical splits → TFDS splits (read one after the other):
  voc/2007      train: voc/2007 train+validation (trainval), validation, test
  voc/2012      train: voc/2012 train, validation and test: voc/2012 validation (the
                TFDS test split has no boxes)
  voc/07+12     the paper's: train = voc/2007 trainval + voc/2012 trainval (16,551
                images), test = voc/2007 test (4,952); validation = voc/2007 validation
  coco/2017     train, validation; test = validation (test-dev has no boxes)
  cvjax_shapes  train, validation, test (and cvjax_shapes/tiny for tests)

Reading them is `cvjax.detection.data`.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import tensorflow_datasets as tfds

from cvjax.data import datasets
from cvjax.data import download as download_lib
from cvjax.data import local_files
from cvjax.data import cvjax_shapes as shapes  # noqa: F401  (registers the cvjax_shapes builder)
from cvjax.errors import UserError, unknown_choice


@dataclasses.dataclass(frozen=True)
class DetectionDataSpec:
  """parts: logical split → ((TFDS name, TFDS split), ...) read one after the other.
  max_boxes: M, the padded number of boxes per image (more are cut).
  voc_metric: how `map50` is computed: 'voc07' (11-point) or 'voc12' (area).
  in_memory: the train split is held in RAM (encoded), else streamed.
  raw_files: basenames of the original archives, for --raw_data_dir."""
  parts: dict[str, tuple[tuple[str, str], ...]]
  max_boxes: int
  voc_metric: str = 'voc12'
  in_memory: bool = False
  raw_files: tuple[str, ...] = ()


def _voc07(split):
  return (('voc/2007', split),)


_VOC07_RAW = ('VOCtrainval_06-Nov-2007.tar', 'VOCtest_06-Nov-2007.tar')
_VOC12_RAW = ('VOCtrainval_11-May-2012.tar',)
_SHAPES_SPLITS = lambda name: {s: ((name, s),) for s in ('train', 'validation', 'test')}

SPECS: dict[str, DetectionDataSpec] = {
    'voc/2007': DetectionDataSpec(
        {'train': _voc07('train+validation'), 'validation': _voc07('validation'),
         'test': _voc07('test')}, max_boxes=64, voc_metric='voc07', raw_files=_VOC07_RAW),
    'voc/2012': DetectionDataSpec(
        {'train': (('voc/2012', 'train'),), 'validation': (('voc/2012', 'validation'),),
         'test': (('voc/2012', 'validation'),)}, max_boxes=64, raw_files=_VOC12_RAW),
    'voc/07+12': DetectionDataSpec(
        {'train': (('voc/2007', 'train+validation'), ('voc/2012', 'train+validation')),
         'validation': _voc07('validation'), 'test': _voc07('test')},
        max_boxes=64, voc_metric='voc07', raw_files=_VOC07_RAW + _VOC12_RAW),
    'coco/2017': DetectionDataSpec(
        {'train': (('coco/2017', 'train'),), 'validation': (('coco/2017', 'validation'),),
         'test': (('coco/2017', 'validation'),)}, max_boxes=100,
        raw_files=('train2017.zip', 'val2017.zip', 'test2017.zip',
                   'annotations_trainval2017.zip', 'image_info_test2017.zip')),
    'cvjax_shapes': DetectionDataSpec(_SHAPES_SPLITS('cvjax_shapes'), max_boxes=16,
                                      in_memory=True),
    'cvjax_shapes/tiny': DetectionDataSpec(_SHAPES_SPLITS('cvjax_shapes/tiny'), max_boxes=16,
                                           in_memory=True),
}
DATASETS = tuple(sorted(SPECS))


def is_detection_dataset(name: str) -> bool:
  return name in SPECS


def spec(name: str) -> DetectionDataSpec:
  if name not in SPECS:
    raise unknown_choice('detection dataset', name, SPECS)
  return SPECS[name]


def parts(name: str, split: str) -> tuple[tuple[str, str], ...]:
  splits = spec(name).parts
  if split not in splits:
    raise unknown_choice(f'split of {name}', split, splits)
  return splits[split]


# --------------------------------------------------------------------- preparing


@functools.lru_cache(maxsize=None)
def _prepared(tfds_name: str, data_dir, raw_data_dir, download):
  """A builder of `tfds_name` whose data is prepared in `data_dir` (see dataset_meta)."""
  datasets.tensorflow()
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  root = os.fspath(builder.data_dir_root)
  if tfds_name.startswith('cvjax_shapes'):  # generated, no network
    builder.download_and_prepare()
    return builder
  if raw_data_dir is not None:
    local_files.build_from_local_files(tfds_name, raw_data_dir, data_dir=data_dir)
    return tfds.builder(tfds_name, data_dir=data_dir)
  hosts = download_lib.download_hosts(tfds.builder_cls(tfds_name.split('/')[0]))
  why = None
  if download is False:
    why = 'download is disabled'
  elif download is None and any(not download_lib.reachable(h, p) for h, p in hosts.items()):
    why = f'{", ".join(hosts)} cannot be reached'
  if why is None:
    try:
      builder.download_and_prepare()
      return builder
    except Exception as e:  # pylint: disable=broad-except
      why = f'the TFDS download failed ({type(e).__name__})'
  raise UserError(
      f'dataset {tfds_name!r} is not prepared in {root} and {why}; prepare it where the '
      f'internet can be reached with `tfds build {tfds_name} --data_dir=DIR` and copy '
      f'DIR/{tfds_name.split("/")[0]} to {root}/, or pass --raw_data_dir=DIR with its '
      f'original archives in DIR')


def dataset_meta(name: str, *, data_dir=None, raw_data_dir=None, download=None):
  """Prepares detection dataset `name` (every TFDS dataset it reads) and returns a
  `cvjax.data.DatasetMeta`: num_classes (object classes, no background),
  class_names, split_sizes (logical splits), image_shape (None, None, 3).

  Not prepared: cvjax_shapes is generated (offline); VOC/COCO are built
  from `raw_data_dir` when given (the original archives, `spec(name).raw_files`),
  else downloaded by TFDS when its hosts answer (`download`: None probe first,
  True just try, False never), else a `UserError` says how to get them.
  """
  s = spec(name)
  names = sorted({t for p in s.parts.values() for t, _ in p})
  builders = {t: _prepared(t, data_dir, raw_data_dir, download) for t in names}
  label = builders[names[0]].info.features['objects']['label']
  sizes = {}
  for split, part in s.parts.items():
    try:
      sizes[split] = sum(builders[t].info.splits[expr].num_examples for t, expr in part)
    except (KeyError, ValueError):
      pass
  return datasets.DatasetMeta(name=name, num_classes=label.num_classes,
                              image_shape=(None, None, 3), split_sizes=sizes,
                              class_names=tuple(label.names))
