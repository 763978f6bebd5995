"""cvjax: convolutional computer vision in JAX/Flax.

Importing cvjax does no I/O, parses no flags and queries no devices; the heavy
pieces (TensorFlow for data, orbax for checkpoints) load on first use.
"""

__version__ = '0.1.0'


def restore(workdir: str, step: int | None = None):
  """Restores a training run for notebook use.

  Returns a `Restored` with `model`, `variables`, `config`, `step` and
  `predict(images: uint8[B, H, W, C]) -> float32[B, num_classes]`.
  """
  from cvjax.train.restore import restore as _restore
  return _restore(workdir, step)
