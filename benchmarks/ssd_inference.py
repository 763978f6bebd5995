"""Detector inference throughput with post-processing, cvjax against torchvision, in one run.

  python -m benchmarks.ssd_inference --model=ssd300_vgg16 --batch_size=8 [--peers=torch]
      [--half_precision=bf16] [--json]

cvjax: one compiled forward (conv_impl='auto', the training default) + box
decoding + per-class score threshold + NMS (IoU 0.45) + top-200, on random images of
the model's input size already on the device (any registered detector: SSD or YOLO). torchvision
(`--peers=torch`, only for ssd300_vgg16): `ssd300_vgg16(weights=None)` in eval
mode under `torch.inference_mode()`, its own resize/normalise transform and
post-processing (top-400 candidates per class, batched NMS 0.45, top-200),
channels_last. Weights are random (speed does not depend on them) and both
score thresholds are 0, so NMS sees its full candidate load, the worst case.
images/s: median of --repeats timings of --steps batches each, after a warm-up
call that compiles. Ratio > 1 means cvjax is faster. --half_precision=bf16: cvjax's
network computes in bfloat16 (box decoding and NMS in float32), torchvision runs under
bf16 autocast (AMP). torch uses CUDA when it has it (synchronised before each timing ends).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import torch_peer  # noqa: E402
from benchmarks.throughput import HALF_PRECISIONS, check_half_precision  # noqa: E402
from cvjax import cli, models  # noqa: E402
from cvjax.detection import families  # noqa: E402
from cvjax.errors import UserError, unknown_choice  # noqa: E402

TORCHVISION = {'ssd300_vgg16': 'ssd300_vgg16'}

FLAGS = flags.FlagValues()
flags.DEFINE_string('model', 'ssd300_vgg16', 'A registered detector.', flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 8, 'Images per call.', flag_values=FLAGS)
flags.DEFINE_integer('num_classes', 20, 'Foreground classes.', flag_values=FLAGS)
flags.DEFINE_integer('steps', 3, 'Batches per timing.', flag_values=FLAGS)
flags.DEFINE_integer('repeats', 3, 'Timings (median).', flag_values=FLAGS)
flags.DEFINE_string('peers', 'torch', "Comma-separated: 'torch' or ''.", flag_values=FLAGS)
flags.DEFINE_string('half_precision', '', "'bf16': the networks compute in bfloat16 (torch: AMP "
                    'autocast).', flag_values=FLAGS)
flags.DEFINE_bool('json', False, 'Print one JSON object.', flag_values=FLAGS)


def _median_rate(run, batch_size: int, steps: int, repeats: int) -> float:
  run(1)  # compile / warm up
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    run(steps)
    rates.append(steps * batch_size / (time.perf_counter() - start))
  return statistics.median(rates)


def cvjax_rate(model_name: str, batch_size: int, num_classes: int, steps: int,
               repeats: int, half_precision: str | None = None) -> tuple[float, int]:
  """(images/s, input size) of cvjax's detector, NMS included."""
  dtype = {'dtype': HALF_PRECISIONS[half_precision]} if half_precision else {}
  model = models.get_model(model_name, num_classes, score_threshold=0.0, conv_impl='auto',
                           **dtype)
  size = models.model_input_shape(model_name)[0]
  head = families.family_for(model, size)  # the family's decoding: SSD, YOLO
  variables = jax.jit(model.init)(jax.random.key(0, impl='rbg'), jnp.zeros((1, size, size, 3)))

  @jax.jit
  def infer(v, x):
    return head.detect(model.apply(v, x, train=False))

  x = jnp.asarray(np.random.default_rng(0).uniform(size=(batch_size, size, size, 3)), jnp.float32)

  def run(n):
    for _ in range(n):
      out = infer(variables, x)
    jax.block_until_ready(out)

  return _median_rate(run, batch_size, steps, repeats), size


def torch_rate(model_name: str, batch_size: int, num_classes: int, steps: int,
               repeats: int, half_precision: str | None = None) -> float:
  """images/s of torchvision's detector (num_classes + 1 outputs: it counts background)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torchvision.models import detection  # pylint: disable=g-import-not-at-top
  device, autocast = torch_peer.device_and_autocast(half_precision)
  model = getattr(detection, TORCHVISION[model_name])(
      weights=None, weights_backbone=None, num_classes=num_classes + 1, score_thresh=0.0)
  model = model.eval().to(device, memory_format=torch.channels_last)
  images = [torch.rand(3, 300, 300, device=device) for _ in range(batch_size)]

  def run(n):
    with torch.inference_mode(), autocast():
      for _ in range(n):
        model(images)
    if device == 'cuda':
      torch.cuda.synchronize()

  return _median_rate(run, batch_size, steps, repeats)


def measure(model_name: str, batch_size: int, num_classes: int, steps: int, repeats: int,
            peers: list[str], half_precision: str | None = None) -> dict:
  detectors = models.list_models('detection')
  if model_name not in detectors:
    raise unknown_choice('detector', model_name, detectors)
  if batch_size < 1:
    raise UserError(f'--batch_size must be at least 1, got {batch_size}')
  half_precision = check_half_precision(half_precision)
  rate, size = cvjax_rate(model_name, batch_size, num_classes, steps, repeats, half_precision)
  result = {'model': model_name, 'batch_size': batch_size, 'image_size': size,
            'num_classes': num_classes, 'device': jax.devices()[0].device_kind,
            'half_precision': half_precision,
            'images_per_second': {'cvjax': rate}, 'ratio': {}, 'skipped': {}}
  for peer in peers:
    if peer != 'torch':
      raise unknown_choice('peer', peer, ['torch'])
    if model_name not in TORCHVISION:
      result['skipped'][peer] = f'torchvision has no {model_name}'
      continue
    try:
      peer_rate = torch_rate(model_name, batch_size, num_classes, steps, repeats,
                             half_precision)
    except ImportError as e:
      result['skipped'][peer] = f'not installed ({e.name}); pip install cvjax[bench]'
      continue
    result['images_per_second'][peer] = peer_rate
    result['ratio'][peer] = rate / peer_rate
  return result


def run(f: flags.FlagValues) -> int:
  peers = [p for p in f.peers.split(',') if p]
  result = measure(f.model, f.batch_size, f.num_classes, f.steps, f.repeats, peers,
                   f.half_precision or None)
  if f.json:
    print(json.dumps(result))
    return 0
  print(f'{result["model"]} batch {f.batch_size} at {result["image_size"]}², '
        f'{f.num_classes} classes, NMS included, on {result["device"]}'
        + (', bf16' if result['half_precision'] else ''))
  for name, rate in result['images_per_second'].items():
    ratio = f'  cvjax / {name} = {result["ratio"][name]:.2f}×' if name in result['ratio'] else ''
    print(f'  {name:<8} {rate:8.2f} images/s{ratio}')
  for name, why in result['skipped'].items():
    print(f'  {name:<8} skipped: {why}')
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  sys.exit(main())
