"""Train-step and inference throughput of cvjax against peers, measured side by side in one run.

  python -m benchmarks.throughput --model=resnet50 --image_size=224 --batch_size=16 --peers=keras,torch
  python -m benchmarks.throughput --model=resnet20 --batch_size=128 --peers=keras,torch --json
  python -m benchmarks.throughput --model=resnet50 --batch_size=16 --peers=torch --conv_impl=auto,xla

What is timed, on random data already in memory:
  train  one optimizer step: forward, backward, SGD-momentum update. cvjax: the compiled
         data-parallel step `fit` uses; torch: torchvision's model (or the small nets in
         benchmarks/torch_peer.py), channels_last, eager; keras: Keras 3 on the JAX
         backend, `train_on_batch` with jit_compile.
  infer  the forward pass in inference mode (BatchNorm on running statistics). cvjax: the
         jitted `apply(train=False)`; torch: under `torch.no_grad()`; keras: `predict_on_batch`.
  peak   a jitted matmul (--peak_size³, f32 or bf16), the practical FLOP/s ceiling for XLA.
Every contender is compiled and warmed up first; then --repeats rounds run each contender
for --steps calls in turn (interleaved, so a burst of load from other processes hits all
alike) and the median round gives images/s. GFLOP/s achieved = images/s × FLOPs per image,
from `cvjax.summary`'s multiply-adds (forward 2·MACs, train ≈ 3× forward), and their share
of the matmul peak. Ratios > 1 mean cvjax is faster. The load average (`uptime`) before and
after is printed with the numbers: on a shared machine compare ratios, not images/s.
Peers that are not installed, or have no equivalent model, are reported as skipped.
`--conv_impl=auto,xla` times cvjax's conv impls side by side (`get_model(conv_impl=...)`);
the internal names of `cvjax.models.conv_lowering` time single CPU lowerings, e.g.
`--conv_impl=cpu,cpu-band,xla` (every CPU lowering; all but the banded matmul; none).

`--half_precision=bf16` times mixed precision: cvjax computes in bfloat16 with float32
params (what `fit --half_precision=bf16` does), torch runs under
`torch.autocast(dtype=torch.bfloat16)` (AMP), Keras under the 'mixed_bfloat16' policy, and
the peak is a bfloat16 matmul. On a GPU machine (JAX on the GPU, torch with CUDA) torch
runs on the GPU and is synchronised before each round ends. `--peak_tflops=989` (the
device's spec-sheet dense peak for the precision) adds MFU: achieved FLOP/s over that peak.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Callable

from absl import flags

from cvjax import allocator, cli

os.environ.setdefault('KERAS_BACKEND', 'jax')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

Runner = Callable[[int], None]  # run(n): n calls, returns when they are done
MODES = ('train', 'infer')


def cvjax_runners(model_name: str, image_size: int, batch_size: int, num_classes: int,
                  model_kwargs: dict | None = None, conv_impl: str = 'auto',
                  modes: tuple[str, ...] = MODES) -> dict[str, Runner]:
  """{'train': run(n), 'infer': run(n)} for cvjax's compiled steps, compiled and warmed up."""
  import jax
  import numpy as np
  import optax
  from cvjax import models
  from cvjax.tasks import get_task
  from cvjax.train import TrainConfig
  from cvjax.train import steps as train_steps
  from cvjax.train.state import create_train_state, model_variables

  info = models.model_info(model_name)
  channels = info.input_shape[2]
  mesh = train_steps.make_mesh()
  build = lambda **kw: models.get_model(model_name, num_classes=num_classes, conv_impl=conv_impl,
                                        **(model_kwargs or {}), **kw)
  model = build(**({'bn_axis_name': train_steps.AXIS}
                   if 'bn_axis_name' in models.model_options(model_name) else {}))
  rng = np.random.default_rng(0)
  batch = jax.device_put(
      {'image': rng.normal(size=(batch_size, image_size, image_size, channels)).astype(np.float32),
       'label': rng.integers(0, num_classes, batch_size).astype(np.int32)},
      train_steps.batch_sharded(mesh))
  runners = {}
  state = jax.jit(lambda k: create_train_state(model, optax.sgd(0.01, momentum=0.9), k,
                                               (1, image_size, image_size, channels)),
                  out_shardings=train_steps.replicated(mesh))(jax.random.PRNGKey(0))
  if 'infer' in modes:
    eval_model = build()
    forward = jax.jit(lambda v, x: eval_model.apply(v, x, train=False))
    # a copy: the train step donates (deletes) the state's buffers
    variables = jax.tree.map(jax.numpy.copy, model_variables(state))

    def infer(n: int) -> None:
      for _ in range(n):
        out = forward(variables, batch['image'])
      jax.block_until_ready(out)

    infer(1)
    runners['infer'] = infer
  if 'train' in modes:
    # Classification with default settings (no label smoothing); no dataset facts needed.
    step = train_steps.parallel_train_step(mesh, get_task(TrainConfig(), None))
    holder = [state]

    def train(n: int) -> None:
      s = holder[0]
      for _ in range(n):
        s, metrics = step(s, batch)
      jax.block_until_ready(metrics)
      holder[0] = s

    train(1)
    runners['train'] = train
  return runners


def cvjax_rate(model_name: str, image_size: int, batch_size: int, num_classes: int,
               steps: int, repeats: int, model_kwargs: dict | None = None) -> float:
  """Median train-step images/s of cvjax alone (used by benchmarks.input_pipeline)."""
  run = cvjax_runners(model_name, image_size, batch_size, num_classes, model_kwargs,
                      modes=('train',))['train']
  return steps * batch_size / interleaved_medians({'train': run}, steps, repeats)['train']


def matmul_peak(size: int, dtype: str = 'float32') -> tuple[Runner, float]:
  """(run(n), FLOPs per call) for a jitted [size, size] @ [size, size] in `dtype`."""
  import jax
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
  matmul = jax.jit(lambda a, b: a @ b)

  def run(n: int) -> None:
    for _ in range(n):
      out = matmul(a, b)
    jax.block_until_ready(out)

  run(1)
  return run, 2.0 * size**3


def interleaved_medians(runners: dict[str, Runner], steps: int, repeats: int) -> dict[str, float]:
  """Median seconds per call of each runner over `repeats` rounds of `steps` calls each,
  the runners taking turns within every round."""
  times = {k: [] for k in runners}
  for _ in range(repeats):
    for k, run in runners.items():
      start = time.perf_counter()
      run(steps)
      times[k].append((time.perf_counter() - start) / steps)
  return {k: statistics.median(v) for k, v in times.items()}


def _peer_runners(peer: str):
  if peer == 'torch':
    from benchmarks import torch_peer
    return torch_peer.runners
  from benchmarks import keras_peer
  return keras_peer.runners


PEERS = ('keras', 'torch')


HALF_PRECISIONS = {'bf16': 'bfloat16'}


def check_half_precision(value: str | None) -> str | None:
  """The --half_precision value (None for float32), or a UserError naming the choices."""
  from cvjax.errors import UserError
  if value and value not in HALF_PRECISIONS:
    raise UserError(f'--half_precision={value} is not timed here; use bf16 '
                    '(or leave it empty for float32)')
  return value or None


def run_benchmark(model: str, image_size: int, batch_size: int, num_classes: int,
                  peers: list[str], conv_impls: list[str], model_kwargs: dict,
                  modes: tuple[str, ...], steps: int, repeats: int, peak_size: int,
                  half_precision: str | None = None, peak_tflops: float | None = None) -> dict:
  """Builds every contender, times them interleaved, returns the results dict (see main)."""
  import jax
  from cvjax import models, summary
  channels = models.model_input_shape(model)[2]
  dtype = HALF_PRECISIONS[half_precision] if half_precision else 'float32'
  cvjax_kwargs = {**model_kwargs, 'dtype': dtype} if half_precision else model_kwargs
  fwd_flops = summary.summary(model, num_classes, image_size, **(
      {'dtype': cvjax_kwargs['dtype']} if 'dtype' in cvjax_kwargs else {}))['flops']
  load_before = os.getloadavg()
  contenders, skipped = {}, {}
  for impl in conv_impls:
    name = 'cvjax' if len(conv_impls) == 1 else f'cvjax[{impl}]'
    contenders[name] = cvjax_runners(model, image_size, batch_size, num_classes, cvjax_kwargs,
                                     impl, modes)
  for peer in peers:
    try:
      found = _peer_runners(peer)(model, image_size, channels, batch_size, num_classes,
                                  model_kwargs, half_precision=half_precision)
    except ImportError as e:
      skipped[peer] = f'not installed ({e.name})'
      continue
    if found is None:
      skipped[peer] = f'no {peer} equivalent of {model} in benchmarks/{peer}_peer.py'
    else:
      contenders[peer] = {m: found[m] for m in modes}
  peak_run, peak_flops = matmul_peak(peak_size, dtype)
  flat = {(name, m): run for name, runs in contenders.items() for m, run in runs.items()}
  flat[('peak', 'matmul')] = peak_run
  seconds = interleaved_medians(flat, steps, repeats)
  peak = peak_flops / seconds[('peak', 'matmul')] / 1e9
  results = {}
  for name, runs in contenders.items():
    r = {}
    for m in runs:
      rate = batch_size / seconds[(name, m)]
      gflops = rate * fwd_flops * (3 if m == 'train' else 1) / 1e9
      r[m] = {'images_per_second': rate, 'gflops': gflops, 'share_of_peak': gflops / peak}
      if peak_tflops:
        r[m]['mfu'] = gflops / (peak_tflops * 1e3)
    results[name] = r
  ratios = {}
  for name in results:
    if name.startswith('cvjax'):
      for peer in results:
        if not peer.startswith('cvjax'):
          ratios[f'{name}/{peer}'] = {m: results[name][m]['images_per_second'] /
                                      results[peer][m]['images_per_second'] for m in modes}
  device = jax.devices()[0]
  return {'model': model, 'image_size': image_size, 'batch_size': batch_size,
          'model_kwargs': model_kwargs, 'steps': steps, 'repeats': repeats,
          'half_precision': half_precision, 'compute_dtype': dtype, 'peak_tflops': peak_tflops,
          'device': getattr(device, 'device_kind', str(device)), 'backend': jax.default_backend(),
          'forward_gflop_per_image': fwd_flops / 1e9, 'matmul_peak_gflops': peak,
          'peak_size': peak_size, 'load_average_before': load_before,
          'load_average_after': os.getloadavg(), 'results': results, 'ratios': ratios,
          'skipped': skipped}


def format_report(r: dict) -> str:
  load = lambda l: ' '.join(f'{x:.2f}' for x in l)
  lines = [f'{r["model"]} {r["image_size"]}² batch {r["batch_size"]}: '
           f'{r["forward_gflop_per_image"]:.3g} GFLOP/image forward (train ≈ 3×); '
           f'median of {r["repeats"]} interleaved rounds of {r["steps"]} calls',
           f'{r["compute_dtype"]} on {r["device"]} ({r["backend"]}); matmul peak '
           f'({r["peak_size"]}³ {r["compute_dtype"]}, jit): {r["matmul_peak_gflops"]:.0f} GFLOP/s; '
           f'load average before {load(r["load_average_before"])}, '
           f'after {load(r["load_average_after"])}; allocator {r.get("allocator", "glibc")}',
           f'  {"":14}{"images/s":>10} {"GFLOP/s":>8} {"of peak":>8}'
           + (f' {"MFU":>6}' if r['peak_tflops'] else '')]
  for name, res in r['results'].items():
    for m, v in res.items():
      lines.append(f'  {name:9} {m:5}{v["images_per_second"]:9.1f} {v["gflops"]:8.1f} '
                   f'{v["share_of_peak"]:8.0%}' + (f' {v["mfu"]:6.1%}' if 'mfu' in v else ''))
  for name, by_mode in r['ratios'].items():
    lines.append(f'  {name}: ' + ', '.join(f'{m} {x:.2f}×' for m, x in by_mode.items()))
  for peer, why in r['skipped'].items():
    lines.append(f'  {peer} skipped: {why}')
  return '\n'.join(lines)


FLAGS = flags.FlagValues()
flags.DEFINE_string('model', 'resnet50', 'Registered cvjax model.', flag_values=FLAGS)
flags.DEFINE_integer('image_size', None, "Input height and width; default: the model's.",
                     flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 16, 'Images per call.', flag_values=FLAGS)
flags.DEFINE_integer('num_classes', None, "Default: the model's.", flag_values=FLAGS)
flags.DEFINE_string('peers', 'keras,torch', 'Comma-separated: ' + ','.join(PEERS),
                    flag_values=FLAGS)
flags.DEFINE_string('conv_impl', 'auto',
                    'Comma-separated cvjax conv impls to time: auto, xla, onednn (and the '
                    'internal names of cvjax.models.conv_lowering, e.g. cpu-onednn: every CPU '
                    'lowering but oneDNN).', flag_values=FLAGS)
flags.DEFINE_string('modes', 'train,infer', 'Comma-separated: ' + ','.join(MODES),
                    flag_values=FLAGS)
flags.DEFINE_integer('steps', 3, 'Calls per timed round.', flag_values=FLAGS)
flags.DEFINE_integer('repeats', 5, 'Timed rounds; the median is reported.', flag_values=FLAGS)
flags.DEFINE_integer('peak_size', 2048, 'Side of the matmul that gives the peak.',
                     flag_values=FLAGS)
flags.DEFINE_string('model_kwargs', '',
                    'cvjax model arguments, also given to the peers where they apply, '
                    'e.g. activation=relu,pooling=max for lenet5.', flag_values=FLAGS)
flags.DEFINE_string('half_precision', '',
                    "'bf16': mixed precision for every contender (torch: AMP autocast).",
                    flag_values=FLAGS)
flags.DEFINE_float('peak_tflops', None,
                   "The device's spec-sheet peak TFLOP/s for this precision: adds MFU.",
                   flag_values=FLAGS)
flags.DEFINE_boolean('json', False, 'Print the results as one JSON object.', flag_values=FLAGS)


def run(f: flags.FlagValues) -> int:
  from cvjax import models
  from cvjax.errors import UserError, unknown_choice
  from cvjax.models import conv_lowering
  from cvjax.train.config import parse_kwargs
  image_size = f.image_size or models.model_input_shape(f.model)[0]
  num_classes = f.num_classes or models.model_num_classes(f.model)
  peers = [p for p in f.peers.split(',') if p]
  for p in peers:
    if p not in PEERS:
      raise unknown_choice('peer', p, PEERS)
  modes = tuple(m for m in f.modes.split(',') if m)
  for m in modes:
    if m not in MODES:
      raise unknown_choice('mode', m, MODES)
  impls = [i for i in f.conv_impl.split(',') if i]
  for i in impls:
    conv_lowering.resolve(i)
  half_precision = check_half_precision(f.half_precision)
  if f.peak_tflops is not None and f.peak_tflops <= 0:
    raise UserError(f'--peak_tflops must be positive, got {f.peak_tflops}')
  for flag in ('batch_size', 'steps', 'repeats', 'image_size', 'peak_size'):
    if f[flag].value is not None and f[flag].value < 1:
      raise UserError(f'--{flag} must be a positive integer, got {f[flag].value}')
  result = run_benchmark(f.model, image_size, f.batch_size, num_classes, peers,
                         impls or ['auto'], parse_kwargs(f.model_kwargs), modes,
                         f.steps, f.repeats, f.peak_size, half_precision, f.peak_tflops)
  result['allocator'] = os.environ.get(allocator.ENV, 'glibc')  # every contender shares it
  print(json.dumps(result) if f.json else format_report(result))
  return 0


def main(argv=None) -> int:
  return cli.main(run, FLAGS, argv, doc=__doc__)


if __name__ == '__main__':
  allocator.reexec_with_caching_allocator()  # for cvjax and its peers alike
  sys.exit(main())
