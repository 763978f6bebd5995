"""`SuperResolutionTask`: the training loop's view of single-image super-resolution (task 'superres').

    python -m experiments.superres --flagfile=experiments/configs/edsr_baseline_x2_sr_photos.flags

Models (`cvjax.models.superres`: SRCNN, ESPCN, EDSR-baseline) map a low-resolution image
f32[B, s, s, C] to f32[B, s·r, s·r, C], r = the model's `scale`; C = 1 (the luma Y) or 3
(RGB), values in [0, 1]. `--image_size` is s, the input (LR) patch side; the HR window
is s·r. Batches and data: `cvjax.superresolution.data`.
Loss: `--pixel_loss`, 'l1' (mean |SR − HR|) or 'l2' (mean squared error), over the pixels.
Eval reports `psnr_y` (the main metric, dB) and `ssim_y` of the output clipped and
rounded to 8 bits, on the Y channel with `r` pixels shaved (`cvjax.superresolution.metrics`),
`bicubic_psnr_y` of bicubic upsampling of the same inputs, `loss` and `count`, averaged
over the eval photographs' central windows. `predict` of a restored run: uint8 images
upscaled ×r at any size (`cvjax.superresolution.predict`).

Task 'superres' of `cvjax.tasks`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cvjax import data, models
from cvjax.errors import UserError
from cvjax.models.superres import bicubic_upscale
from cvjax.superresolution import metrics
from cvjax.tasks.means import MeanEvaluator, masked_sums
from cvjax.train import factory
from cvjax.train.task import Task, image_batches

# Settings of image classification that have no meaning for image-to-image training.
_NOT_FOR_SUPERRES = {'mixup_alpha': 'mixes labels', 'cutmix_alpha': 'mixes labels',
                     'tta': 'averages class probabilities', 'label_smoothing': 'smooths labels'}


def _data():
  """`cvjax.superresolution.data`, imported on first use: it loads TensorFlow, which a run
  refused for a bad flag never needs."""
  from cvjax.superresolution import data  # pylint: disable=g-import-not-at-top
  return data


def model_scale(config) -> int:
  """The upscaling factor r of `config`'s model (its `scale` field, model_kwargs included)."""
  module = factory.build_model(config, models.model_info(config.model).num_classes,
                               bn_axis_name=None)
  scale = getattr(module, 'scale', None)
  if not isinstance(scale, int) or scale < 2:
    raise UserError(f'task=superres needs a model that upscales by an integer scale >= 2; '
                    f'{config.model} has scale {scale!r} (e.g. --model_kwargs=scale=2)')
  return scale


def pixel_loss(sr: jax.Array, hr: jax.Array, kind: str) -> jax.Array:
  """Mean over every pixel and channel of |sr − hr| ('l1') or (sr − hr)² ('l2')."""
  diff = sr.astype(jnp.float32) - hr.astype(jnp.float32)
  return jnp.mean(jnp.abs(diff)) if kind == 'l1' else jnp.mean(jnp.square(diff))


def quantize(x: jax.Array) -> jax.Array:
  """f32 images clipped to [0, 1] and rounded to the 8-bit levels, as saved or shown."""
  return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0


class SuperResolutionTask(Task):
  """Low-resolution image → the image ×r; L1/L2 loss; PSNR-Y and SSIM-Y."""
  name = 'superres'
  main_metric = 'psnr_y'
  main_metric_higher_is_better = True
  example_keys = ('image',)  # the ops run on the HR photograph; the tail makes the pair

  def __init__(self, config, meta):
    super().__init__(config, meta)
    self.scale = model_scale(config)
    self.pixel_loss = config.pixel_loss

  @classmethod
  def check(cls, config):
    _data().check_dataset(config.dataset)
    for name, why in _NOT_FOR_SUPERRES.items():
      if getattr(config, name):
        raise UserError(f'task=superres learns images, not labels: --{name} {why}; drop it')
    if models.model_task(config.model) != 'superres':
      raise UserError(f'task=superres needs a super-resolution model (srcnn_915, espcn_x2, '
                      f'edsr_baseline_x2, ...), got {config.model}')
    scale = model_scale(config)
    height = config.image_size or models.model_input_shape(config.model)[0]
    _data().check_scale(scale)
    pipeline_augment = _data().train_augment(config.augment, input_size=height, scale=scale)
    from cvjax.data import preprocess  # pylint: disable=g-import-not-at-top
    preprocess.check(pipeline_augment, cls.example_keys, cls.name, image_size=height * scale)

  # ---------------------------------------------------------------- data

  @classmethod
  def dataset_meta(cls, config):
    meta = _data().dataset_meta(config.dataset, config.data_dir)
    height = config.image_size or models.model_input_shape(config.model)[0]
    _data().check_window(config.dataset, input_size=height, scale=model_scale(config),
                         data_dir=config.data_dir)
    return meta

  def data_spec(self):
    return _data().data_spec(self.config.dataset, scale=self.scale, channels=self.channels,
                             data_dir=self.config.data_dir)

  def train_batches(self, sharding, start_step: int):
    c = self.config
    augment = _data().train_augment(c.augment, input_size=self.image_size, scale=self.scale)
    return data.pipeline.train_batches(
        self.data_spec(), global_batch_size=c.batch_size, sharding=sharding, seed=c.seed,
        start_step=start_step, augment=augment, split=c.train_split, data_dir=c.data_dir,
        num_examples=self.meta.split_sizes[c.train_split])

  def preprocessing(self):
    return ''  # images in [0, 1]; EDSR's mean shift is inside the model

  # ---------------------------------------------------------------- step

  def loss(self, outputs, batch, axis_name):
    del axis_name
    hr = batch['target']
    loss = pixel_loss(outputs, hr, self.pixel_loss)
    psnr = metrics.psnr(jnp.clip(outputs, 0.0, 1.0), hr)
    return loss, {'psnr': jnp.mean(jnp.minimum(psnr, 100.0))}

  def eval_outputs(self, outputs, batch):
    hr = batch['target']
    sr = quantize(outputs)
    bicubic = quantize(bicubic_upscale(batch['image'], self.scale))
    per_image = {
        'psnr_y': metrics.psnr_y(sr, hr, self.scale),
        'ssim_y': metrics.ssim_y(sr, hr, self.scale),
        'bicubic_psnr_y': metrics.psnr_y(bicubic, hr, self.scale),
        'loss': jax.vmap(functools.partial(pixel_loss, kind=self.pixel_loss))(outputs, hr),
    }
    # padding examples are all zeros: their PSNR is +inf, which masked_sums drops
    return masked_sums(per_image, batch), {}

  def evaluator(self):
    return MeanEvaluator(('psnr_y', 'ssim_y', 'bicubic_psnr_y', 'loss'))

  # ---------------------------------------------------------------- inference

  def predictor(self, model, variables, probabilities=None):
    """predict(uint8[B, h, w, K] images, or a list of images of any sizes; K = 1 or 3) →
    uint8[B, h·r, w·r, K], the images upscaled ×r by the model (a list gives a list).
    Luma models upscale Y and bicubic chroma (`cvjax.superresolution.predict`)."""
    del probabilities
    from cvjax.superresolution import predict as sr  # pylint: disable=g-import-not-at-top
    apply = functools.partial(model.apply, train=False)
    scale, channels = self.scale, self.channels

    def predict(images):
      batches = image_batches(images)
      out = [sr.upscale(apply, variables, b, scale=scale, channels=channels) for b in batches]
      if isinstance(images, (list, tuple)):
        return [image for batch in out for image in batch]
      return np.concatenate(out)
    return predict
