"""Stop signals as a request the program polls: SIGTERM (preemption) and Ctrl-C (SIGINT).

    with signals.stop_signals() as stop:
      ...                       # slow start-up: imports, data, compilation
      stop.check('before training started')   # raises Interrupted / Preempted if one came
      while training:
        ...
        if stop.is_set(): save a checkpoint, then stop.check(...)

Python's own SIGINT handler raises KeyboardInterrupt wherever the main thread happens to
be, including inside a Python callback that JAX, orbax or TensorFlow run from C++, which
may swallow it and carry on. These handlers only record the signal; the loop acts on it
at a safe point. A second Ctrl-C calls `on_second_interrupt` (default: raise
KeyboardInterrupt at once); a program passes one that exits at once.

Imports nothing heavy, so a program can install the handlers before importing JAX.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Callable, Iterator

from cvjax.errors import Interrupted, Preempted

NAMES = {signal.SIGINT: 'Ctrl-C', signal.SIGTERM: 'SIGTERM'}


class StopRequest:
  """Which stop signal arrived first, if any."""

  def __init__(self):
    self.signal: int | None = None

  def is_set(self) -> bool:
    return self.signal is not None

  @property
  def name(self) -> str:
    return NAMES.get(self.signal, str(self.signal))

  def error(self, message: str) -> Preempted:
    """Interrupted (Ctrl-C, exit status 130) or Preempted (SIGTERM, 143) with `message`."""
    stop = Interrupted if self.signal == signal.SIGINT else Preempted
    return stop(f'{self.name} {message}')

  def check(self, when: str) -> None:
    """Raises `error` ("Ctrl-C <when>") if a stop signal has arrived."""
    if self.is_set():
      raise self.error(when)


def _raise_keyboard_interrupt() -> None:
  raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals(request: StopRequest | None = None,
                 on_second_interrupt: Callable[[], None] = _raise_keyboard_interrupt,
                 ) -> Iterator[StopRequest]:
  """Installs the recording handlers for the block and yields the request they set.

  Outside the main thread (where Python allows no handlers) the request is never set.
  The previous handlers are put back on exit.
  """
  request = request or StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request
    return

  def on_term(signum, frame):
    del frame
    if not request.is_set():
      request.signal = signum

  def on_int(signum, frame):
    if request.signal == signal.SIGINT:
      on_second_interrupt()
      return
    on_term(signum, frame)
    print('Ctrl-C: stopping at the next safe point (a training step is checkpointed first); '
          'press Ctrl-C again to stop at once', file=sys.stderr, flush=True)

  previous = {s: signal.signal(s, h) for s, h in ((signal.SIGTERM, on_term),
                                                   (signal.SIGINT, on_int))}
  try:
    yield request
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
