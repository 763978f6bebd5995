"""The table and plot of a sweep: `python -m launch.summarize ROOT [--metric=test_accuracy] [--mode=max]`.

Writes, from ROOT/sweep.json and each trial's files:
  ROOT/summary.csv   one row per trial: rank, name, status, swept flags (and any other
                     flag whose value differs between trials), final metrics (from its
                     results.json), error line and log path
  ROOT/summary.md    the same as a Markdown table, plus why each unfinished trial stopped
  ROOT/summary.png   the metric against each swept flag (log x-axis for log-spaced values)
Finished trials come first, best first by `metric` (`--mode`: max, or min for metrics
named *loss*/*error*/*seconds* by default); the others follow in sweep order with
their status (failed, preempted, unfinished, not started). Flags are reported as each
trial's own trial.flags records them, not as the latest command gave them.
`launch.sweep` writes the summary itself at the end of a local sweep; a SLURM sweep
runs this after its array.
"""
from __future__ import annotations

import csv
import math
import os
import sys

from cvjax.errors import UserError
from launch import trials as trials_lib

METRICS = ('test_accuracy', 'test_loss', 'step', 'train_seconds', 'images_per_second')
_FORMATS = {'step': '{:d}', 'train_seconds': '{:.1f}', 'images_per_second': '{:.0f}'}


def default_mode(metric: str) -> str:
  return 'min' if any(w in metric for w in ('loss', 'error', 'seconds')) else 'max'


def collect(root: str, metric: str = 'test_accuracy', mode: str | None = None) -> dict:
  """{'rows': [...] best first, 'swept', 'metrics', 'record', 'metric', 'mode'}."""
  mode = mode or default_mode(metric)
  if mode not in ('max', 'min'):
    raise UserError(f'mode must be max or min, got {mode!r}')
  record = trials_lib.load_sweep(root)
  swept = list(record.get('swept', []))
  trials = trials_lib.trials_of(record)
  ran = {t.name: trials_lib.recorded_flags(t, root) for t in trials}
  recorded = [r for r in ran.values() if r]
  varying = [n for n in dict.fromkeys(n for r in recorded for n in r)
             if n not in swept and len({r.get(n) for r in recorded}) > 1]
  passthrough = trials_lib.by_name(record.get('passthrough', []))
  first = recorded[0] if recorded else passthrough
  every = [first[n] for n in passthrough if n not in varying and n in first]
  rows = []
  for order, trial in enumerate(trials):
    state = trials_lib.status(trial, root)
    results = state['results'] or {}
    status = state['status']
    if state['exit_code'] not in (None, 0):
      status = f'{status} (exit {state["exit_code"]})'
    rows.append({'trial': trial.name, 'status': status, 'order': order,
                 **{f: trial.overrides.get(f, '') for f in swept},
                 **{f: trials_lib.flag_value(ran[trial.name].get(f)) for f in varying},
                 'results': results, 'error': state['error'] or '',
                 'log': trial.log(root)})
  done = [r for r in rows if r['results']]
  if done and not any(_number(r['results'].get(metric)) is not None for r in done):
    available = sorted({k for r in done for k, v in r['results'].items()
                        if _number(v) is not None})
    raise UserError(f'no results.json in {root} has {metric!r}; available: '
                    f'{", ".join(available)}')
  sign = -1 if mode == 'max' else 1

  def key(row):
    value = _number(row['results'].get(metric))
    return (0, sign * value, row['order']) if value is not None else (1, 0, row['order'])
  rows.sort(key=key)
  rank = 0
  for row in rows:
    if _number(row['results'].get(metric)) is not None:
      rank += 1
      row['rank'] = rank
    else:
      row['rank'] = ''
  metrics = [metric] + [m for m in METRICS if m != metric]
  return {'rows': rows, 'swept': swept, 'varying': varying, 'every_trial': every,
          'metrics': metrics, 'record': record, 'metric': metric, 'mode': mode,
          'log_scale': set(record.get('log_scale', []))}


def _number(value) -> float | None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


def summarize(root: str, metric: str = 'test_accuracy', mode: str | None = None) -> dict:
  """Writes summary.csv, summary.md and summary.png; returns `collect`'s dict."""
  table = collect(root, metric, mode)
  _write_csv(os.path.join(root, 'summary.csv'), table)
  with open(os.path.join(root, 'summary.md'), 'w') as f:
    f.write(markdown(table))
  plot(table, os.path.join(root, 'summary.png'))
  return table


def _write_csv(path: str, table: dict) -> None:
  columns = ['rank', 'trial', 'status', *table['swept'], *table['varying'], *table['metrics'],
             'error', 'log']
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for row in table['rows']:
      values = {**row, **{m: row['results'].get(m, '') for m in table['metrics']}}
      writer.writerow(['' if values.get(c) is None else values.get(c, '') for c in columns])


def _cell(metric: str, value) -> str:
  if _number(value) is None:
    return '' if value is None else str(value)
  if metric in _FORMATS:
    return _FORMATS[metric].format(int(value) if metric == 'step' else value)
  return f'{value:.4f}'


def markdown(table: dict) -> str:
  rows, metrics = table['rows'], table['metrics']
  swept = [*table['swept'], *table['varying']]
  record, metric = table['record'], table['metric']
  counts: dict[str, int] = {}
  for row in rows:
    word = row['status'].split(' (')[0]
    counts[word] = counts.get(word, 0) + 1
  lines = [f'## Sweep `{record.get("experiment", "?")}`: {len(rows)} trials '
           f'({", ".join(f"{n} {s}" for s, n in counts.items())})', '']
  ranked = [r for r in rows if r['rank'] != '']
  if ranked:
    best = ranked[0]
    lines += [f'Best by {metric} ({table["mode"]}): **{best["trial"]}** = '
              f'{_cell(metric, best["results"][metric])}.', '']
  header = ['rank', 'trial', 'status', *swept, *metrics]
  lines.append('| ' + ' | '.join(header) + ' |')
  lines.append('|' + '|'.join('---:' if h not in ('trial', 'status') else '---'
                              for h in header) + '|')
  for row in rows:
    cells = [str(row['rank']), f'`{row["trial"]}`', row['status'],
             *(str(row[f]) for f in swept),
             *(_cell(m, row['results'].get(m)) for m in metrics)]
    lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
  stopped = [r for r in rows if r['status'] != 'done']
  if stopped:
    lines += ['', 'Not finished:']
    for row in stopped:
      why = f': `{row["error"]}`' if row['error'] else ''
      lines.append(f'- `{row["trial"]}` {row["status"]}{why} (log: `{row["log"]}`)')
  base = ', '.join(f'`{p}`' for p in record.get('base_flagfiles', [])) or 'none'
  every = ' '.join(f'`{p}`' for p in table['every_trial']) or 'none'
  differ = (f'; differing between trials: {", ".join(table["varying"])}'
            if table['varying'] else '')
  lines += ['', f'Base flags: {base}; passed to every trial: {every}{differ} '
            '(as each trial.flags records them).', '',
            f'![{metric} against each swept flag](summary.png)', '']
  return '\n'.join(lines)


def _log_spaced(values: list[float], declared: bool) -> bool:
  """True for loguniform draws and grids like 1e-3,1e-2,1e-1 or 32,64,128,256."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  distinct = sorted(set(values))
  if declared:
    return distinct[0] > 0
  if len(distinct) < 2 or distinct[0] <= 0:
    return False
  if len(distinct) == 2:
    return distinct[1] / distinct[0] >= 10

  def spread(steps):
    return float(np.std(steps) / np.mean(steps))
  return spread(np.diff(np.log(distinct))) < spread(np.diff(distinct))


def plot(table: dict, path: str) -> None:
  """summary.png: one panel per swept flag, the metric of each finished trial."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  metric, swept = table['metric'], table['swept']
  points = [r for r in table['rows'] if r['rank'] != '']
  panels = max(len(swept), 1)
  columns = min(panels, 3)
  rows_n = math.ceil(panels / columns)
  fig, axes = plt.subplots(rows_n, columns, figsize=(4.2 * columns, 3.4 * rows_n),
                           squeeze=False)
  flat = axes.ravel()
  for ax in flat[panels:]:
    ax.set_visible(False)
  best = points[0] if points else None
  title = (f'{metric} of {len(points)}/{len(table["rows"])} trials; best '
           f'{best["trial"]} = {_cell(metric, best["results"][metric])}' if best
           else f'{metric}: no finished trials yet')
  fig.suptitle(title, fontsize=10)
  for ax, flag in zip(flat, swept or ['(nothing swept)']):
    ax.set_xlabel(flag)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    chosen = [r for r in points if r.get(flag, '') != '']
    if not chosen:
      ax.text(0.5, 0.5, 'no finished trials', ha='center', va='center',
              transform=ax.transAxes)
      continue
    ys = [float(r['results'][metric]) for r in chosen]
    try:
      xs = [float(r[flag]) for r in chosen]
      if _log_spaced(xs, flag in table['log_scale']):
        ax.set_xscale('log')
    except ValueError:  # categorical values: evenly spaced, labelled
      labels = list(dict.fromkeys(r[flag] for r in chosen))
      xs = [labels.index(r[flag]) for r in chosen]
      ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0)
      ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.scatter(xs, ys, s=28, color='tab:blue', zorder=2)
    for x, y, r in zip(xs, ys, chosen):
      if r is best:
        ax.scatter([x], [y], s=140, marker='*', color='tab:red', zorder=3, label='best')
    if best in chosen:
      ax.legend(fontsize=8, loc='best')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string('metric', 'test_accuracy', 'results.json key to rank trials by.')
  flags.DEFINE_enum('mode', None, ['max', 'min'], 'Best is the max or the min of --metric '
                    '(default: min for *loss*/*error*/*seconds*, else max).')


def _main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    if len(argv) != 2:
      raise UserError('give one sweep directory: python -m launch.summarize ROOT '
                      '[--metric=test_accuracy] [--mode=max]')
    table = summarize(argv[1], flags.FLAGS.metric, flags.FLAGS.mode)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(markdown(table), end='')
  print(f'wrote {", ".join(os.path.join(argv[1], f"summary.{e}") for e in ("csv", "md", "png"))}')


def main() -> None:
  from absl import app  # pylint: disable=import-outside-toplevel
  from cvjax import cli  # pylint: disable=import-outside-toplevel
  _define_flags()
  app.run(_main, flags_parser=cli.absl_flags_parser)


if __name__ == '__main__':
  main()
