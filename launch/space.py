"""What a sweep tries: grids, random ranges, and readable trial names.

  --grid="learning_rate=0.1,0.05;batch_size=128,256"       4 trials (the product)
  --grid=...  --grid=...                                    the union of several grids
  --random="learning_rate=loguniform(1e-4,1e-1);weight_decay=uniform(0,1e-3)" --num_trials=8

A trial is a dict {flag name: value string}; values are passed to the experiment
exactly as written (grid) or rounded to 4 significant digits (random), so the
trial's name, its flagfile and the summary show the same number. With both --grid
and --random every grid point is crossed with the `num_trials` random draws.
Pure functions, no I/O: tests pin the expansion, the seeding and the names.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import re

import numpy as np

from cvjax.errors import UserError

_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*$')
_RANDOM = re.compile(r'\s*([^=\s]+)\s*=\s*([a-z_]+)\s*\((.*)\)\s*$')
DISTRIBUTIONS = ('uniform', 'loguniform', 'randint', 'choice')
_MAX_NAME = 96


def _flag_name(name: str, where: str) -> str:
  name = name.strip().lstrip('-')
  if not _NAME.match(name):
    raise UserError(f'{where}: {name!r} is not a flag name (letters, digits, underscores)')
  return name


def parse_grid(text: str) -> dict[str, list[str]]:
  """"a=1,2;b=x,y" → {'a': ['1', '2'], 'b': ['x', 'y']} (flag order kept)."""
  grid: dict[str, list[str]] = {}
  for part in filter(str.strip, text.split(';')):
    if '=' not in part:
      raise UserError(f'--grid part {part.strip()!r} has no "="; write flag=v1,v2;flag=v1,v2')
    name, values = part.split('=', 1)
    name = _flag_name(name, '--grid')
    if name in grid:
      raise UserError(f'--grid names {name!r} twice; list all its values once: {name}=v1,v2')
    values = [v.strip() for v in values.split(',')]
    if not all(values):
      raise UserError(f'--grid {name!r} has an empty value in {part.strip()!r}')
    if len(set(values)) != len(values):
      raise UserError(f'--grid {name!r} repeats a value: {",".join(values)}')
    grid[name] = values
  if not grid:
    raise UserError(f'--grid {text!r} names no flag; write flag=v1,v2;flag=v1,v2')
  return grid


@dataclasses.dataclass(frozen=True)
class Distribution:
  """One --random range: uniform(a,b), loguniform(a,b), randint(a,b) (inclusive), choice(v,...)."""
  kind: str
  args: tuple

  def sample(self, rng: np.random.Generator) -> str:
    if self.kind == 'uniform':
      return _round(rng.uniform(*self.args))
    if self.kind == 'loguniform':
      low, high = self.args
      return _round(math.exp(rng.uniform(math.log(low), math.log(high))))
    if self.kind == 'randint':
      return str(int(rng.integers(self.args[0], self.args[1] + 1)))
    return self.args[int(rng.integers(len(self.args)))]

  @property
  def log_scale(self) -> bool:
    return self.kind == 'loguniform'


def _round(x: float) -> str:
  """4 significant digits, as absl parses it back: 0.001234, 1.234e-05."""
  return f'{float(x):.4g}'


def parse_random(text: str) -> dict[str, Distribution]:
  """"lr=loguniform(1e-4,1e-1);wd=uniform(0,1e-3)" → {name: Distribution}."""
  space: dict[str, Distribution] = {}
  for part in filter(str.strip, text.split(';')):
    match = _RANDOM.match(part)
    if not match:
      raise UserError(f'--random part {part.strip()!r} is not flag=distribution(args); '
                      f'distributions: {", ".join(DISTRIBUTIONS)}')
    name, kind, args = match.groups()
    name = _flag_name(name, '--random')
    if name in space:
      raise UserError(f'--random names {name!r} twice')
    space[name] = _distribution(name, kind, [a.strip() for a in args.split(',')])
  if not space:
    raise UserError(f'--random {text!r} names no flag')
  return space


def _distribution(name: str, kind: str, args: list[str]) -> Distribution:
  where = f'--random {name}={kind}({",".join(args)})'
  if kind not in DISTRIBUTIONS:
    raise UserError(f'{where}: unknown distribution {kind!r}; valid choices: '
                    f'{", ".join(DISTRIBUTIONS)}')
  if kind == 'choice':
    if not all(args) or len(set(args)) != len(args):
      raise UserError(f'{where}: choice needs distinct, non-empty values')
    return Distribution(kind, tuple(args))
  if len(args) != 2:
    raise UserError(f'{where}: {kind} takes two numbers (low, high), got {len(args)}')
  try:
    low, high = (int(a) for a in args) if kind == 'randint' else (float(a) for a in args)
  except ValueError:
    raise UserError(f'{where}: bounds must be {"integers" if kind == "randint" else "numbers"}') from None
  if not (low <= high if kind == 'randint' else low < high):
    raise UserError(f'{where}: low must be below high')
  if kind == 'loguniform' and low <= 0:
    raise UserError(f'{where}: loguniform needs 0 < low, got {low}')
  return Distribution(kind, (low, high))


def expand(grids: list[dict[str, list[str]]], random: dict[str, Distribution] | None = None,
           num_trials: int = 0, seed: int = 0) -> list[dict[str, str]]:
  """The trials: the union of the grids' products, each crossed with `num_trials` draws.

  Draws come from numpy's Generator seeded with `seed`, in --random's flag order,
  so the same arguments always give the same trials. Duplicates are dropped.
  """
  random = random or {}
  if random and num_trials < 1:
    raise UserError(f'--random needs --num_trials >= 1, got {num_trials}')
  if num_trials and not random:
    raise UserError('--num_trials is for random search; give --random too')
  if not grids and not random:
    raise UserError('nothing to sweep: give --grid="flag=v1,v2;..." and/or --random=... '
                    'with --num_trials')
  for grid in grids:
    both = sorted(set(grid) & set(random))
    if both:
      raise UserError(f'{", ".join(both)} is both in --grid and in --random; sweep it once')
  points = [dict(zip(g, values)) for g in grids for values in itertools.product(*g.values())]
  rng = np.random.default_rng(seed)
  draws = [{n: d.sample(rng) for n, d in random.items()} for _ in range(num_trials)]
  trials, seen = [], set()
  for point in points or [{}]:
    for draw in draws or [{}]:
      trial = {**point, **draw}
      key = tuple(sorted(trial.items()))
      if key not in seen:
        seen.add(key)
        trials.append(trial)
  return trials


def swept_flags(trials: list[dict[str, str]]) -> list[str]:
  """Flag names in order of first appearance."""
  return list(dict.fromkeys(name for t in trials for name in t))


def _abbreviation(name: str) -> str:
  """learning_rate → lr, batch_size → bs, seed → s."""
  return ''.join(part[0] for part in name.split('_') if part)


def _clean(value: str) -> str:
  return re.sub(r'[^A-Za-z0-9._+-]', '_', value)


def trial_names(trials: list[dict[str, str]]) -> list[str]:
  """Readable, unique directory names: "lr=0.1,bs=128".

  Flags are abbreviated by their initials when that is unambiguous among the
  swept flags (else written in full). Characters other than [A-Za-z0-9._+-] in
  values become '_'; a name that then collides or is too long gets a short hash
  of the trial's exact flags appended.
  """
  flags = swept_flags(trials)
  short = {f: _abbreviation(f) for f in flags}
  if len(set(short.values())) != len(short):
    short = {f: f for f in flags}
  names = []
  for trial in trials:
    name = ','.join(f'{short[f]}={_clean(v)}' for f, v in trial.items()) or 'base'
    exact = all(_clean(v) == v for v in trial.values())
    if len(name) > _MAX_NAME or not exact or name.startswith(('.', '-')):
      name = f'{name[:_MAX_NAME]}-{_digest(trial)}'
    names.append(name)
  counts: dict[str, int] = {}
  for name in names:
    counts[name] = counts.get(name, 0) + 1
  return [f'{n}-{_digest(t)}' if counts[n] > 1 else n for n, t in zip(names, trials)]


def _digest(trial: dict[str, str]) -> str:
  text = ';'.join(f'{k}={v}' for k, v in sorted(trial.items()))
  return hashlib.sha1(text.encode()).hexdigest()[:6]
