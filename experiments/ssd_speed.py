"""SSD inference throughput, post-processing included: images/s of one compiled
forward + decode + per-class threshold + NMS + top-k on random images.

  python -m experiments.ssd_speed --model=ssd300_vgg16 --batch_size=8 [--num_classes=20] [--json]

Weights are random (speed does not depend on them); the score threshold is set to 0
so that NMS sees its full candidate load (torchvision's 400 per class, the worst case).
Median of --repeats timings of --steps batches each, after one compiling call.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def measure(model_name: str, batch_size: int, num_classes: int, steps: int, repeats: int,
            score_threshold: float = 0.0) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cvjax import models  # pylint: disable=g-import-not-at-top
  from cvjax.detection import postprocess  # pylint: disable=g-import-not-at-top
  model = models.get_model(model_name, num_classes, score_threshold=score_threshold)
  size = models.model_input_shape(model_name)[0]
  anchors = jnp.asarray(model.default_boxes())
  variables = jax.jit(model.init)(jax.random.key(0, impl='rbg'), jnp.zeros((1, size, size, 3)))
  config = model.postprocess_config()

  @jax.jit
  def infer(v, x):
    locations, logits = model.apply(v, x, train=False)
    return postprocess.detect(locations, logits, anchors, config)

  x = jnp.asarray(np.random.default_rng(0).uniform(size=(batch_size, size, size, 3)), jnp.float32)
  jax.block_until_ready(infer(variables, x))
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      out = infer(variables, x)
    jax.block_until_ready(out)
    rates.append(steps * batch_size / (time.perf_counter() - start))
  return {'model': model_name, 'batch_size': batch_size, 'image_size': size,
          'num_classes': num_classes, 'images_per_second': statistics.median(rates),
          'device': jax.devices()[0].device_kind, 'num_devices_used': 1}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m experiments.ssd_speed')
  parser.add_argument('--model', default='ssd300_vgg16')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--num_classes', type=int, default=20)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  from cvjax.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    result = measure(args.model, args.batch_size, args.num_classes, args.steps, args.repeats)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps(result))
  else:
    print(f'{result["model"]} batch {args.batch_size} at {result["image_size"]}²: '
          f'{result["images_per_second"]:.2f} images/s with NMS on {result["device"]}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
