"""The datasets cvjax knows: names, logical splits, statistics, and getting them prepared.

Every dataset is the stock TFDS dataset of the same name. `dataset_meta` makes sure
it is prepared in `data_dir` (TFDS's default, ~/tensorflow_datasets, unless given),
trying in this order:

1. a prepared copy already in `data_dir`: just load it;
2. `raw_data_dir` given: build the real TFDS dataset from the raw files there
   (`local_files.build_from_local_files`; checksums are not checked, since
   redistributed files, e.g. Debian's re-gzipped Fashion-MNIST, differ in bytes);
   for manual-download datasets (imagenet2012) also from TFDS's own manual_dir,
   <data_dir>/downloads/manual, when the files are there;
3. TFDS download, but only after a network probe (`_download_reachable`) says the
   download hosts answer: offline, TFDS's own attempt does not fail fast — its
   HTTP retries with back-off take about 3.5 minutes (measured: 205 s for mnist)
   before raising `requests.ConnectionError`;
4. the dataset's default raw directory, if it exists (Fashion-MNIST's Debian
   package `dataset-fashion-mnist` puts the IDX files in
   /usr/share/datasets/fashion-mnist);
5. otherwise one `UserError` naming the three ways to get the data.

Logical splits. mnist, fashion_mnist, cifar10, cifar100: 'train' (the full TFDS
train split), 'test', 'validation' (the last 10% of train) and
'train_minus_validation' (the first 90%): asking for 'validation' does not shrink
'train'; train on 'train_minus_validation' to keep them disjoint. tf_flowers (one
TFDS split): 'train' = train[:70%], 'validation' = train[70%:85%],
'test' = train[85%:]. imagenet2012: 'train', 'validation', and 'test' = validation
(the TFDS test split has no labels).

Normalisation: images are scaled to [0, 1], then `(x - mean) / std` per channel with
the numbers in `_SPECS` (train-split statistics; sources beside each entry).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import socket
import threading
import urllib.parse

from absl import logging

from cvjax.errors import UserError, unknown_choice

# Download probe: how long to wait for one host to answer a TCP connect.
_PROBE_TIMEOUT_S = 3.0

_IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision / Keras "torch" mode: ImageNet-1k train set.
_IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_MEAN, IMAGENET_STD = _IMAGENET_MEAN, _IMAGENET_STD  # public: cvjax.data.pipeline (issue 5)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What cvjax needs to know about one TFDS dataset beyond its `DatasetInfo`.

  Attributes:
    splits: logical split name -> TFDS split expression.
    mean, std: per-channel statistics of pixel / 255 (the normalisation).
    default_augment: train augmentation when `augment=None` (op string, see preprocess).
    crop_fraction: eval fit for images larger than the input: resize the shorter
      side to `image_size / crop_fraction`, then centre-crop (0.875: 256 -> 224).
    raw_files: basenames the builder expects in `raw_data_dir`.
    default_raw_dir: where an OS package puts the raw files, if one does.
    in_memory: a whole split fits in each process's RAM (exact per-epoch shuffle
      and O(1) resume); False streams from disk (shuffle buffer, resume re-reads).
  """
  splits: dict[str, str]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  default_augment: str
  crop_fraction: float
  raw_files: tuple[str, ...]
  default_raw_dir: str | None = None
  in_memory: bool = True


def _small_splits() -> dict[str, str]:
  return {'train': 'train', 'validation': 'train[90%:]',
          'train_minus_validation': 'train[:90%]', 'test': 'test'}


_IDX_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
              't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')

_SPECS: dict[str, DatasetSpec] = {
    # The classic MNIST numbers (train set, as in PyTorch's MNIST example).
    'mnist': DatasetSpec(_small_splits(), (0.1307,), (0.3081,), '', 1.0, _IDX_FILES),
    # Computed here over the 60,000 real train images (Debian's IDX files):
    # mean 0.28604, std 0.35302; tests/test_data.py re-checks them when the files exist.
    'fashion_mnist': DatasetSpec(_small_splits(), (0.2860,), (0.3530,), '', 1.0, _IDX_FILES,
                                 default_raw_dir='/usr/share/datasets/fashion-mnist'),
    # Per-channel mean/std over all pixels of the 50,000 train images (the often-quoted
    # std (0.2023, 0.1994, 0.2010) is a mean of per-image stds, not the pixel std).
    'cifar10': DatasetSpec(_small_splits(), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           'pad_crop(4)|flip_lr', 1.0, ('cifar-10-binary.tar.gz',)),
    'cifar100': DatasetSpec(_small_splits(), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            'pad_crop(4)|flip_lr', 1.0, ('cifar-100-binary.tar.gz',)),
    # Flowers are used with ImageNet-pretrained networks: ImageNet statistics.
    'tf_flowers': DatasetSpec(
        {'train': 'train[:70%]', 'validation': 'train[70%:85%]', 'test': 'train[85%:]'},
        _IMAGENET_MEAN, _IMAGENET_STD, 'inception_crop|flip_lr', 0.875, ('flower_photos.tgz',)),
    'imagenet2012': DatasetSpec(
        {'train': 'train', 'validation': 'validation', 'test': 'validation'},
        _IMAGENET_MEAN, _IMAGENET_STD, 'inception_crop|flip_lr', 0.875,
        ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar'), in_memory=False),
}

DATASETS = tuple(sorted(_SPECS))


def spec(name: str) -> DatasetSpec:
  """The `DatasetSpec` of a dataset; `UserError` for an unknown name."""
  if name not in _SPECS:
    raise unknown_choice('dataset', name, _SPECS)
  return _SPECS[name]


def tfds_split(name: str, split: str) -> str:
  """The TFDS split expression of logical split `split` of dataset `name`."""
  splits = spec(name).splits
  if split not in splits:
    raise unknown_choice(f'split of {name}', split, splits)
  return splits[split]


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """Facts about a prepared dataset that a trainer needs.

  Attributes:
    name: the TFDS name.
    num_classes: number of labels.
    image_shape: native (H, W, C); H and W are None for variable-size datasets
      (tf_flowers, imagenet2012), C is always known.
    split_sizes: logical split -> number of examples (whole split, all processes).
    class_names: label index -> name, from the TFDS `ClassLabel`.
  """
  name: str
  num_classes: int
  image_shape: tuple[int | None, int | None, int]
  split_sizes: dict[str, int]
  class_names: tuple[str, ...] | None = None


def tensorflow():
  """Returns the `tensorflow` module with accelerators hidden from it.

  TensorFlow is only TFDS's engine here: if it saw a GPU it would reserve its memory
  for itself. Called by every public entry point before any TF op.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  _hide_accelerators()
  return tf


@functools.cache
def _hide_accelerators() -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF's runtime already started (someone ran a TF op first).
    if tf.config.get_visible_devices('GPU'):
      logging.warning('TensorFlow was initialised before cvjax.data could hide the GPUs '
                      'from it; it may hold accelerator memory.')


def dataset_meta(name: str, *, data_dir: str | None = None, raw_data_dir: str | None = None,
                 download: bool | None = None) -> DatasetMeta:
  """Makes sure dataset `name` is prepared in `data_dir` and returns its facts.

  Args:
    name: TFDS name, one of `DATASETS`.
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
  sizes = {split: info.splits[expr].num_examples for split, expr in spec(name).splits.items()
           if expr.split('[')[0] in info.splits}
  label = info.features['label']
  return DatasetMeta(name=name, num_classes=label.num_classes, image_shape=tuple(shape),
                     split_sizes=sizes, class_names=tuple(label.names))


def steps_per_epoch(meta: DatasetMeta, global_batch_size: int, split: str = 'train') -> int:
  """Number of full global batches in one pass over `split` (the remainder is dropped)."""
  if split not in meta.split_sizes:
    raise unknown_choice(f'split of {meta.name}', split, meta.split_sizes)
  steps = meta.split_sizes[split] // global_batch_size
  if steps == 0:
    raise UserError(f'global batch size {global_batch_size} is larger than the '
                    f'{meta.split_sizes[split]} examples of {meta.name} {split!r}; use a '
                    'smaller --batch_size')
  return steps


def prepared_builder(name: str, *, data_dir=None, raw_data_dir=None, download=None):
  """A TFDS builder for `name` whose data is prepared in `data_dir` (see module doc)."""
  dataset_spec = spec(name)
  tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from cvjax.data import local_files  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  if raw_data_dir is not None:
    local_files.build_from_local_files(name, raw_data_dir, data_dir=data_dir)
    return tfds.builder(name, data_dir=data_dir)

  stock = tfds.builder_cls(name)
  manual = bool(getattr(stock, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None))
  hosts = _download_hosts(stock)
  why_not = None
  if manual:
    # TFDS's own place for manually downloaded files: <data_dir>/downloads/manual.
    manual_dir = os.path.join(os.fspath(builder.data_dir_root), 'downloads', 'manual')
    if all(os.path.exists(os.path.join(manual_dir, f)) for f in dataset_spec.raw_files):
      local_files.build_from_local_files(name, manual_dir, data_dir=data_dir)
      return tfds.builder(name, data_dir=data_dir)
    why_not = 'TFDS cannot download it (manual download only)'
  elif download is False:
    why_not = 'download is disabled'
  elif download is None and not hosts:
    why_not = 'TFDS records no download URL for it'
  elif download is None:
    unreachable = [h for h, port in hosts.items() if not _reachable(h, port)]
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
    local_files.build_from_local_files(name, default_raw, data_dir=data_dir)
    return tfds.builder(name, data_dir=data_dir)

  raise not_available_error(name, data_root=os.fspath(builder.data_dir_root), why_not=why_not,
                            hosts=[] if manual else list(hosts))


def not_available_error(name: str, *, data_root: str, why_not: str, hosts) -> UserError:
  """The one-line error for a dataset that is neither prepared, downloadable nor buildable."""
  files = ', '.join(spec(name).raw_files)
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


def _download_hosts(stock_cls) -> dict[str, int]:
  """Host -> port of the URLs in the builder's recorded checksums."""
  try:
    urls = stock_cls.url_infos or {}
  except Exception:  # pylint: disable=broad-except
    urls = {}
  hosts = {}
  for url in urls:
    parts = urllib.parse.urlparse(url)
    if parts.hostname:
      hosts[parts.hostname] = parts.port or (80 if parts.scheme == 'http' else 443)
  return dict(sorted(hosts.items()))


def _reachable(host: str, port: int) -> bool:
  """Whether a TCP connection to host:port opens within the probe timeout.

  Runs in a daemon thread so that a hanging DNS lookup cannot stall the caller.
  """
  result = []

  def probe():
    try:
      with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
        result.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(_PROBE_TIMEOUT_S + 1.0)
  return bool(result)
