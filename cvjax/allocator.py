"""A caching memory allocator for the training programs on Linux CPUs.

XLA's CPU runtime allocates every temporary buffer of a compiled step with `malloc` and
frees it when the step ends. glibc's malloc hands large blocks back to the kernel, so the
next step touches fresh pages and page-faults on each one: a small CNN's train step then
spends about a third of its CPU time in the kernel (docs/benchmarks.md#memory-allocator).
tcmalloc, or jemalloc told never to return memory, keeps the blocks and reuses them.

The allocator has to be chosen before the process starts (`LD_PRELOAD`). The experiment
programs do that for themselves: `reexec_with_caching_allocator()`, their first act,
starts the same command again with the allocator preloaded when one is installed (Debian:
libtcmalloc-minimal4 or libjemalloc2). `CVJAX_ALLOCATOR=system` keeps glibc's. For your own
scripts, notebooks and pytest:

    env $(python -m cvjax.allocator) python my_script.py

prints `LD_PRELOAD=... [MALLOC_CONF=...]`, or nothing where none is installed.
"""
from __future__ import annotations

import ctypes.util
import os
import sys

# The environment variable that names the allocator in use, or 'system' to keep glibc's.
ENV = 'CVJAX_ALLOCATOR'
# In order of preference: (name, library, extra environment).
CANDIDATES = (
    ('tcmalloc', 'tcmalloc_minimal', {}),
    # jemalloc returns unused pages after 10 s by default; -1 keeps them.
    ('jemalloc', 'jemalloc', {'MALLOC_CONF': 'dirty_decay_ms:-1,muzzy_decay_ms:-1'}),
)


def environment() -> dict[str, str]:
  """The variables that preload the first installed allocator of `CANDIDATES` ({} when
  none is, or off Linux): LD_PRELOAD (a soname the dynamic loader finds), its own
  settings, and `ENV` naming it."""
  if not sys.platform.startswith('linux'):
    return {}
  for name, library, extra in CANDIDATES:
    found = ctypes.util.find_library(library)
    if found:
      return {'LD_PRELOAD': found, **extra, ENV: name}
  return {}


def reexec_with_caching_allocator() -> None:
  """Replaces this process by the same command with a caching allocator preloaded (same
  pid, arguments, standard streams and signal dispositions); returns without doing
  anything when `ENV` is already set (by the re-executed process itself, or 'system'),
  another preload is set, the command line is unknown, or no allocator is installed.

  Call it first thing in a program's main, before threads or open files matter.
  """
  if os.environ.get(ENV) or os.environ.get('LD_PRELOAD'):
    return
  argv = getattr(sys, 'orig_argv', None)
  extra = environment()
  if not argv or not extra:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, argv, {**os.environ, **extra})
  except OSError:  # cannot re-execute (a frozen or removed interpreter): run as we are
    return


if __name__ == '__main__':
  print(' '.join(f'{k}={v}' for k, v in environment().items() if k != ENV))
