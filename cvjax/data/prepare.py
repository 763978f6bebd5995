"""Getting a dataset of `cvjax.data.datasets` prepared, and its `DatasetMeta`.

Every dataset is the stock TFDS dataset of the same name. `dataset_meta` makes sure
it is prepared in `data_dir` (TFDS's default, ~/tensorflow_datasets, unless given),
trying in this order:

1. a prepared copy already in `data_dir`: just load it;
2. `raw_data_dir` given: build the real TFDS dataset from the raw files there
   (`local_files.build_from_local_files`; checksums are not checked, since
   redistributed files, e.g. Debian's re-gzipped Fashion-MNIST, differ in bytes);
   for manual-download datasets (imagenet2012) also from TFDS's own manual_dir,
   <data_dir>/downloads/manual, when the files are there;
3. TFDS download, but only after `download.unreachable` says the download hosts
   answer (offline, TFDS's own attempt retries for minutes before failing);
4. the dataset's default raw directory, if it exists (Fashion-MNIST's Debian
   package `dataset-fashion-mnist` puts the IDX files in
   /usr/share/datasets/fashion-mnist);
5. otherwise one `UserError` naming the three ways to get the data.
"""
from __future__ import annotations

import os

from absl import logging
import tensorflow_datasets as tfds

from cvjax.data import datasets
from cvjax.data import download as download_lib
from cvjax.data import local_files
from cvjax.data import shapes_video  # noqa: F401  (registers the cvjax_shapes_crops builder)
from cvjax.errors import UserError


def dataset_meta(name: str, *, data_dir: str | None = None, raw_data_dir: str | None = None,
                 download: bool | None = None) -> datasets.DatasetMeta:
  """Makes sure dataset `name` is prepared in `data_dir` and returns its facts.

  Args:
    name: TFDS name, one of `datasets.DATASETS`.
    data_dir: TFDS data directory; None for TFDS's default (~/tensorflow_datasets,
      or $TFDS_DATA_DIR).
    raw_data_dir: directory with the dataset's raw files (`DatasetSpec.raw_files`);
      when given and the dataset is not prepared, it is built from them.
    download: None: let TFDS download if a quick probe reaches the download hosts;
      True: let TFDS try without the probe; False: never download.
  """
  builder = prepared_builder(name, data_dir=data_dir, raw_data_dir=raw_data_dir,
                             download=download)
  info = builder.info
  shape = info.features['image'].shape
  sizes = {split: info.splits[expr].num_examples
           for split, expr in datasets.spec(name).splits.items()
           if expr.split('[')[0] in info.splits}
  label = info.features['label']
  return datasets.DatasetMeta(name=name, num_classes=label.num_classes,
                              image_shape=tuple(shape), split_sizes=sizes,
                              class_names=tuple(label.names))


def prepared_builder(name: str, *, data_dir=None, raw_data_dir=None, download=None):
  """A TFDS builder for `name` whose data is prepared in `data_dir` (see module doc)."""
  dataset_spec = datasets.spec(name)
  datasets.tensorflow()

  def build_from(raw_dir):
    local_files.build_from_local_files(name, raw_dir, data_dir=data_dir,
                                       raw_files=dataset_spec.raw_files)
    return tfds.builder(name, data_dir=data_dir)

  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  if dataset_spec.generated:
    builder.download_and_prepare()
    return builder
  if raw_data_dir is not None:
    return build_from(raw_data_dir)

  stock = tfds.builder_cls(name)
  manual = bool(getattr(stock, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None))
  hosts = download_lib.download_hosts(stock)
  why_not = None
  if manual:
    # TFDS's own place for manually downloaded files: <data_dir>/downloads/manual.
    manual_dir = os.path.join(os.fspath(builder.data_dir_root), 'downloads', 'manual')
    if all(os.path.exists(os.path.join(manual_dir, f)) for f in dataset_spec.raw_files):
      return build_from(manual_dir)
    why_not = 'TFDS cannot download it (manual download only)'
  elif download is False:
    why_not = 'download is disabled'
  elif download is None and not hosts:
    why_not = 'TFDS records no download URL for it'
  elif download is None:
    unreachable = download_lib.unreachable(hosts)
    if unreachable:
      why_not = f'{", ".join(unreachable)} cannot be reached'
  if why_not is None:
    logging.info('%s is not prepared in %s; downloading it with TFDS.', name, builder.data_dir)
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      why_not = f'the TFDS download failed ({type(e).__name__}: {_first_line(e)})'
    else:
      return builder

  default_raw = dataset_spec.default_raw_dir
  if default_raw and os.path.isdir(default_raw):
    logging.info('%s is not prepared and %s; building it from %s.', name, why_not, default_raw)
    return build_from(default_raw)

  raise not_available_error(name, data_root=os.fspath(builder.data_dir_root), why_not=why_not,
                            hosts=[] if manual else list(hosts))


def not_available_error(name: str, *, data_root: str, why_not: str, hosts) -> UserError:
  """The one-line error for a dataset that is neither prepared, downloadable nor buildable."""
  files = ', '.join(datasets.spec(name).raw_files)
  if hosts:
    way2 = f'run once where {", ".join(hosts)} can be reached so TFDS can download it'
  else:  # Manual-download datasets: TFDS builds them from its manual_dir.
    way2 = f'put its raw files in {data_root}/downloads/manual, where TFDS looks for them'
  return UserError(
      f'dataset {name!r} is not prepared in {data_root} and {why_not}; get it one of three '
      f'ways: (1) prepare it elsewhere with `tfds build {name} --data_dir=DIR` and copy '
      f'DIR/{name} to {data_root}/{name}, (2) {way2}, or (3) pass --raw_data_dir=DIR with its '
      f'raw files ({files}) in DIR')


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return text[0][:200] if text else ''
