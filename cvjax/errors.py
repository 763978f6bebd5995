"""Errors that mean "the user asked for something that cannot work".

Library code raises `UserError` with one sentence that names the bad value and
the fix; `experiments/` and the `python -m cvjax.<tool>` entry points turn it
into a single line on stderr and a non-zero exit, without a traceback.
"""
import difflib

MAX_LISTED = 12  # unknown_choice lists every choice only up to this many


class UserError(Exception):
  """A bad name, path, size or setting supplied by the user."""


def unknown_choice(kind: str, value, choices, listing: str | None = None) -> UserError:
  """The standard message for a value that is not among `choices`.

  Names up to three close matches (difflib, case-insensitive); lists every
  choice when there are at most MAX_LISTED. With more and no close match it
  points to `listing` (e.g. 'python -m cvjax.summary --help lists them'), else
  shows the first few.
  """
  names = sorted(str(c) for c in choices)
  lower = {n.lower(): n for n in names}
  wanted = str(value).lower()
  close = difflib.get_close_matches(wanted, lower, n=3, cutoff=0.6)
  close = [lower[c] for c in sorted(  # best first, ties in alphabetical order
      close, key=lambda c: (-difflib.SequenceMatcher(None, wanted, c).ratio(), c))]
  message = f'unknown {kind} {value!r}'
  guess = f'did you mean {", ".join(map(repr, close))}?' if close else ''
  if len(names) <= MAX_LISTED:
    listed = ', '.join(names)
    return UserError(f'{message}; {guess} (valid choices: {listed})' if close
                     else f'{message}; valid choices: {listed}')
  if close:
    return UserError(f'{message}; {guess}')
  where = listing or f'the first are {", ".join(names[:4])}, ...'
  return UserError(f'{message}; none of the {len(names)} choices is close ({where})')


class TrainingDiverged(UserError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was written and the run can be resumed."""
  exit_status = 143


class Interrupted(Preempted):
  """Ctrl-C (SIGINT) arrived; a checkpoint was written and the run can be resumed."""
  exit_status = 130


class CheckpointWriteError(UserError):
  """The filesystem refused a checkpoint write (full, read-only, ...); the complete
  checkpoints are intact. Orbax's background threads may still wait for the failed
  write, so a program should exit with `os._exit` after reporting it."""
