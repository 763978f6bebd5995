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

import json
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
  """Prints `error: message` on stderr, on one line; returns the usage-error exit status."""
  print(f'error: {_one_line(message)}', file=sys.stderr)
  return USAGE_ERROR


def parse(flag_values: flags.FlagValues, argv: Sequence[str]) -> list[str]:
  """Parses `argv` (program name first) into `flag_values`; absl errors become UserError.

  Each file a `--flagfile` names is checked first (it exists, is a file, is UTF-8 text):
  absl's own reading of a missing one is a cryptic message and of a binary one a traceback.
  Returns the positional arguments left over (program name first).
  """
  for path in flagfiles(argv[1:]):
    read_text(path, 'flagfile')
  try:
    return flag_values(list(argv))
  except flags.Error as e:
    message = _one_line(str(e))
    missing = _REQUIRED.fullmatch(message)
    raise UserError(f'--{missing[1]} is required' if missing else message) from None
  except UnicodeDecodeError as e:  # a flagfile named inside another flagfile
    raise UserError(f'a file named by --flagfile is not UTF-8 text ({e.reason} at byte '
                    f'{e.start}); give a text file of --name=value lines') from None


def flagfiles(args: Sequence[str]) -> list[str]:
  """The paths of the `--flagfile=PATH` / `--flagfile PATH` arguments (absl's spellings)."""
  paths = []
  for i, arg in enumerate(args):
    if arg == '--':
      break
    name, eq, value = arg.partition('=')
    if name in ('--flagfile', '-flagfile'):
      if eq:
        paths.append(value)
      elif i + 1 < len(args):
        paths.append(args[i + 1])
  return paths


def _named(path: str, flag: str | None) -> str:
  return f'--{flag}={path}' if flag else path


def read_text(path: str, flag: str | None = None) -> str:
  """The text of the UTF-8 file at `path` (a leading byte-order mark dropped).

  A missing file, a directory, one the system will not open, or bytes that are not
  UTF-8 are a `UserError` naming it as `--flag=path` (or the bare path when `flag` is
  None).
  """
  name = _named(path, flag)
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    raise UserError(f'{name} does not exist') from None
  except IsADirectoryError:
    raise UserError(f'{name} is a directory; give a file') from None
  except (OSError, ValueError) as e:  # permissions, a dangling path, a NUL in the name
    raise UserError(f'{name} cannot be read ({getattr(e, "strerror", None) or e})') from None
  try:
    return data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    line = data.count(b'\n', 0, e.start) + 1
    raise UserError(f'{name} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); '
                    'expected a text file') from None


def read_json(path: str, flag: str | None = None, what: str = 'JSON'):
  """The JSON value in the file at `path` (objects as dicts, arrays as lists; NaN and
  Infinity are read as floats).

  Besides `read_text`'s errors, an empty file or text that is not JSON is a `UserError`
  naming the file, the line and column, and `what` was expected there.
  """
  return parse_json(read_text(path, flag), _named(path, flag), what)


def parse_json(text: str, name: str, what: str = 'JSON'):
  """`json.loads(text)`; empty or malformed text is a `UserError` naming `name` (the
  file), the line and column, and `what` was expected."""
  if not text.strip():
    raise UserError(f'{name} is empty; expected {what}')
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise UserError(f'{name} is not JSON ({e.msg} at line {e.lineno}, column {e.colno}); '
                    f'expected {what}') from None
  except (ValueError, RecursionError) as e:  # a 5,000-digit number; arrays nested 1,000 deep
    raise UserError(f'{name} is not JSON cvjax can read ({type(e).__name__}: '
                    f'{str(e)[:80] or "nested too deeply"}); expected {what}') from None


def read_image(path: str, flag: str | None = 'image', mode: str = 'RGB'):
  """Pixels of the image file at `path`: uint8[H, W, 3] for `mode` 'RGB', [H, W, 1] for 'L'.

  A missing file, one PIL cannot read (not an image, truncated, corrupt), an image
  larger than PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) or one
  without pixels is a `UserError` naming it as `--flag=path` (or the bare path when
  `flag` is None).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  name = _named(path, flag)
  if not os.path.exists(path):
    raise UserError(f'{name} does not exist')
  if os.path.isdir(path):
    raise UserError(f'{name} is a directory; give an image file')
  try:
    with Image.open(path) as image:
      pixels = np.asarray(image.convert(mode), np.uint8)
  except Image.DecompressionBombError as e:
    raise UserError(f'{name} has more pixels than PIL decodes safely ({e}); give a smaller '
                    'image') from None
  except Exception as e:  # pylint: disable=broad-except  # PIL's decoders raise many kinds
    raise UserError(f'{name} is not an image PIL can read '
                    f'({_one_line(str(e)) or type(e).__name__})') from None
  if pixels.size == 0:
    raise UserError(f'{name} has no pixels (shape {pixels.shape})')
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


def define_image_tool_flags(flag_values: flags.FlagValues, task: str) -> None:
  """Declares the flags of a tool that runs a trained `task` run on one image file:
  --workdir and --image (required), --out, --step and --json.

  They count as the calling tool's own, so `help_text` lists them in one alphabetical
  list with the flags the tool declares itself.
  """
  # absl credits a flag to the module that calls DEFINE_*; disclaiming this one credits
  # the tool instead (for every flag this module declares from now on, in any FlagValues).
  flags.disclaim_key_flags()
  flags.DEFINE_string('workdir', None, f'A cvjax {task} run directory.', flag_values=flag_values)
  flags.DEFINE_string('image', None, 'Image file (JPEG, PNG, ...).', flag_values=flag_values)
  flags.DEFINE_string('out', None, 'Where to write the picture (by extension: .png, .jpg, ...); '
                      'default: draw nothing.', flag_values=flag_values)
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest good one).',
                       flag_values=flag_values)
  flags.DEFINE_bool('json', False, 'Print one JSON object.', flag_values=flag_values)
  flags.mark_flags_as_required(['workdir', 'image'], flag_values=flag_values)


def read_image_tool_inputs(image: str, out: str | None, **fractions: float):
  """The pixels of the image file at `image` (`read_image`: uint8[H, W, 3]), once the
  other inputs of a one-image tool are checked too, before anything slow loads: each of
  `fractions` (flag name=value) in [0, 1], and `out`, when given, an image extension.
  """
  pixels = read_image(image)
  for flag, value in fractions.items():
    check_unit_interval(flag, value)
  if out is not None:
    check_image_out(out)
  return pixels


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
