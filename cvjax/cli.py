"""The one command-line convention of every `python -m` program (tools, experiments, benchmarks).

A tool declares its flags on its own `absl.flags.FlagValues` (so several tools can be
imported, and their `main(argv)` called, in one process) and runs its body through
`cli.main`:

    FLAGS = flags.FlagValues()
    flags.DEFINE_string('model', 'resnet50', 'Registered model name.', flag_values=FLAGS)

    def run(f) -> int | None: ...           # reads f.model; raises UserError on bad input

    def main(argv=None) -> int:
      return cli.main(run, FLAGS, argv, doc=__doc__)

    if __name__ == '__main__':
      sys.exit(main())

The contract, the same everywhere: bad input (a `UserError`, an unknown flag — with
absl's "did you mean" — or a value that does not parse) prints one `error: ...` line on
stderr and exits 2 without a traceback; Ctrl-C exits 130; `--help` / `--helpshort`
print the docstring and the program's own flags.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable, Sequence

from absl import flags

from cvjax.errors import UserError

USAGE_ERROR = 2
INTERRUPTED = 130
_HELP = ('--help', '-h', '--helpshort', '--helpfull', '-help', '-helpshort')
# What absl says when a flag of `flags.mark_flag_as_required` is missing.
_REQUIRED = re.compile(r'flag --(\w+)=None: Flag --\1 must have a value other than None\.')


def fail(message: str) -> int:
  """Prints `error: message` on stderr; returns the usage-error exit status."""
  print(f'error: {message}', file=sys.stderr)
  return USAGE_ERROR


def parse(flag_values: flags.FlagValues, argv: Sequence[str]) -> list[str]:
  """Parses `argv` (program name first) into `flag_values`; absl errors become UserError.

  Returns the positional arguments left over (program name first).
  """
  try:
    return flag_values(list(argv))
  except flags.Error as e:
    message = _one_line(str(e))
    missing = _REQUIRED.fullmatch(message)
    raise UserError(f'--{missing[1]} is required' if missing else message) from None


def read_image(path: str, flag: str | None = 'image', mode: str = 'RGB'):
  """Pixels of the image file at `path`: uint8[H, W, 3] for `mode` 'RGB', [H, W, 1] for 'L'.

  A missing file or one PIL cannot read is a `UserError` naming it as `--flag=path` (or
  the bare path when `flag` is None).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  name = f'--{flag}={path}' if flag else path
  if not os.path.exists(path):
    raise UserError(f'{name} does not exist')
  try:
    with Image.open(path) as image:
      pixels = np.asarray(image.convert(mode), np.uint8)
  except (UnidentifiedImageError, OSError) as e:
    raise UserError(f'{name} is not an image PIL can read ({e})') from None
  return pixels[..., None] if pixels.ndim == 2 else pixels


def check_unit_interval(flag: str, value: float) -> None:
  """`UserError` unless 0 <= `value` <= 1 (a score threshold, an opacity)."""
  if not 0.0 <= value <= 1.0:
    raise UserError(f'--{flag} must be in [0, 1], got {value}')


def check_image_out(path: str, flag: str = 'out') -> None:
  """`UserError` unless PIL can write an image to `path`, judged by its extension."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  extension = os.path.splitext(path)[1].lower()
  if extension not in Image.registered_extensions():
    raise UserError(f'--{flag}={path}: unknown image extension {extension!r}; '
                    'use e.g. .png or .jpg')


def check_no_positional(rest: Sequence[str]) -> None:
  if len(rest) > 1:
    raise UserError(f'unexpected arguments {list(rest[1:])}; flags look like --name=value')


def help_text(flag_values: flags.FlagValues, doc: str | None) -> str:
  """The docstring, then every flag of `flag_values` with its help and default."""
  listed = flag_values.get_help(include_special_flags=False).splitlines()
  # absl heads each defining module's flags with its file path: one program, one list.
  listed = [line for line in listed if line.startswith(' ')]
  return f'{(doc or "").strip()}\n\nflags:\n' + '\n'.join(listed) + '\n'


def main(body: Callable[[flags.FlagValues], int | None], flag_values: flags.FlagValues,
         argv: Sequence[str] | None = None, *, doc: str | None = None) -> int:
  """Parses `argv` (without the program name; default sys.argv[1:]) and runs `body`.

  Returns the exit status: body's (None -> 0), 2 on bad input, 130 on Ctrl-C.
  """
  program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'cvjax'
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in _HELP for a in argv):
    print(help_text(flag_values, doc))
    return 0
  try:
    check_no_positional(parse(flag_values, [program, *argv]))
    return body(flag_values) or 0
  except UserError as e:
    return fail(str(e))
  except KeyboardInterrupt:
    print('interrupted', file=sys.stderr)
    return INTERRUPTED
  finally:
    flag_values.unparse_flags()  # a second main() in the same process starts afresh


def absl_flags_parser(argv: Sequence[str]) -> list[str]:
  """`app.run(..., flags_parser=cli.absl_flags_parser)` for programs on the global FLAGS:
  a flag error is one `error:` line and exit 2 (absl's own parser exits 1); a help
  request (`--helpshort` lists the program's own flags) exits 0 (absl's exits 1)."""
  try:
    return parse(flags.FLAGS, argv)
  except UserError as e:
    sys.exit(fail(str(e)))
  except SystemExit as e:
    if e.code == 1 and any(a in _HELP for a in argv[1:]):
      sys.exit(0)
    raise


def _one_line(message: str) -> str:
  return ' '.join(line.strip() for line in message.splitlines() if line.strip())
