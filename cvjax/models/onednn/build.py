"""Compiles `conv.cc` into the shared library that `cvjax.models.onednn` loads.

    python -m cvjax.models.onednn.build     # `make setup` runs it

Needs a C++17 compiler (`CXX`, default g++) and oneDNN's headers and library:
PyPI's `onednn-cpu-gomp` and `onednn-devel-cpu-gomp` in this Python's prefix
(`make setup` installs them: oneDNN 3.2 on GNU OpenMP), else the system's
(Debian's `libdnnl-dev`). The library's file name carries a hash of the source
and the compile flags, so an edited `conv.cc`, or another oneDNN, is never served
by a stale build. Exits 0 after building; when the compiler or oneDNN is missing it prints
one `error:` line and exits 2, and cvjax computes convolutions with XLA.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name('conv.cc')
BUILD_DIR = Path(__file__).with_name('_build')


def compile_flags() -> list[str]:
  """The compiler and its flags, without the source and output files."""
  import jax.ffi  # the XLA FFI headers ship with jaxlib
  compiler = shlex.split(os.environ.get('CXX', 'g++'))
  prefix = Path(sys.prefix)  # where pip puts the onednn-cpu-gomp wheels' headers and library
  onednn = []
  if (prefix / 'include' / 'oneapi' / 'dnnl' / 'dnnl.hpp').exists():
    lib = prefix / 'lib'
    onednn = [f'-I{prefix / "include"}', f'-L{lib}', f'-Wl,-rpath,{lib}']
  return [*compiler, '-O2', '-std=c++17', '-shared', '-fPIC', f'-I{jax.ffi.include_dir()}',
          *onednn]


def library_path() -> Path:
  """Where the library built from the current `conv.cc` and flags lives (it may not exist)."""
  digest = hashlib.sha256(SOURCE.read_bytes() + repr(compile_flags()).encode()).hexdigest()[:12]
  return BUILD_DIR / f'libcvjax_onednn-{digest}.so'


def build(force: bool = False) -> Path:
  """Builds the library if it is missing (or `force`); returns its path.

  Raises:
    RuntimeError: no compiler, or the compile failed (its stderr's last lines).
  """
  output = library_path()
  if output.exists() and not force:
    return output
  flags = compile_flags()
  if shutil.which(flags[0]) is None:
    raise RuntimeError(f'no C++ compiler {flags[0]!r}; install g++ or set CXX')
  BUILD_DIR.mkdir(exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=BUILD_DIR, suffix='.so', delete=False) as tmp:
    partial = Path(tmp.name)
  try:
    command = [*flags, str(SOURCE), '-o', str(partial), '-ldnnl']
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
      tail = ' | '.join(done.stderr.strip().splitlines()[-3:])
      raise RuntimeError(f'compiling {SOURCE.name} failed ({tail}); is libdnnl-dev installed?')
    for stale in BUILD_DIR.glob('libcvjax_onednn-*.so'):
      stale.unlink()
    partial.replace(output)  # atomic: a concurrent loader sees the whole file or none
  finally:
    partial.unlink(missing_ok=True)
  return output


def main() -> int:
  try:
    path = build(force='--force' in sys.argv[1:])
  except RuntimeError as err:
    print(f'error: oneDNN convolutions not built: {err}', file=sys.stderr)
    return 2
  print(f'built {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
