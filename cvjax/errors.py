"""Errors that mean "the user asked for something that cannot work".

Library code raises `UserError` with one sentence that names the bad value and
the fix; `experiments/` and the `python -m cvjax.<tool>` entry points turn it
into a single line on stderr and a non-zero exit, without a traceback.
"""


class UserError(Exception):
  """A bad name, path, size or setting supplied by the user."""


def unknown_choice(kind: str, value, choices) -> UserError:
  """The standard message for a value that is not among `choices`."""
  listed = ', '.join(sorted(str(c) for c in choices))
  return UserError(f'unknown {kind} {value!r}; valid choices: {listed}')


class TrainingDiverged(UserError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was written and the run can be resumed."""
