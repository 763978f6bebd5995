"""`with WorkdirLock(workdir):` — at most one live owner of a directory, taken atomically.

Used for run directories (`cvjax.train.rundir`: `.lock`) and sweep directories
(`launch.sweep`: `.sweep.lock`). Imports nothing heavy, so a launcher can use it
without loading JAX.
"""
from __future__ import annotations

import fcntl
import os
import re
import socket

from absl import logging

from cvjax.errors import UserError

LOCK = '.lock'


class WorkdirLock:
  """`with WorkdirLock(workdir):` — at most one live run per workdir.

  The lock is an exclusive `flock` on `workdir/.lock`, taken atomically: of any
  number of runs started together, one holds it and every other is refused with a
  UserError naming the holder (the file holds "pid host" for that message). The
  kernel drops the lock when its process dies, so a lock file left by a killed run,
  an empty one or one that cannot be parsed is taken over with a warning. A lock
  file naming another host is never taken over: `flock` may not reach across the
  hosts of a network filesystem, so its pid cannot be judged from here.

  filename: the lock's name in `workdir` (a sweep directory uses its own).
  """

  def __init__(self, workdir: str, enabled: bool = True, filename: str = LOCK):
    self.path = os.path.join(workdir, filename)
    self.enabled = enabled
    self.held = False
    self._fd: int | None = None

  def __enter__(self) -> 'WorkdirLock':
    if not self.enabled:
      return self
    while self._fd is None:
      fd = self._open()
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise UserError(f'{os.path.dirname(self.path)} is in use by {holder}; wait for it to '
                        'finish or choose another --workdir') from None
      except OSError as e:
        os.close(fd)
        raise UserError(f'cannot lock {self.path} ({e.strerror}); choose a --workdir on a '
                        'filesystem with file locks') from None
      if not _same_file(fd, self.path):  # the previous holder removed it meanwhile: again
        os.close(fd)
        continue
      self._fd = fd
    self._take(self._fd)
    self.held = True
    return self

  def _open(self) -> int:
    try:
      return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise UserError(f'cannot create the lock file {self.path} ({e.strerror}); free space or '
                      'choose a writable --workdir') from None

  def _take(self, fd: int) -> None:
    """Writes "pid host" into the locked file, after judging what it held before."""
    here = socket.gethostname()
    previous = os.pread(fd, 4096, 0).decode(errors='replace').strip()
    pid, host = _parse_holder(previous)
    if host is not None and host != here:
      self._release(remove=False)
      raise UserError(f'{os.path.dirname(self.path)} is in use by process {pid} on {host}; '
                      f'wait for it to finish or choose another --workdir (if that run is gone, '
                      f'delete {self.path})')
    if previous:
      logging.warning('workdir lock %s was left by %s, which is gone; taking it over',
                      self.path, f'process {pid}' if pid else f'an unreadable lock {previous[:40]!r}')
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f'{os.getpid()} {here}\n'.encode(), 0)
      os.fsync(fd)
    except OSError as e:
      self._release()
      raise UserError(f'cannot write the lock file {self.path} ({e.strerror}); free space or '
                      'choose a writable --workdir') from None

  def _release(self, remove: bool = True) -> None:
    """Removes the file while still holding it (a waiter that opened it then sees it is gone
    and opens the new one), then unlocks."""
    if remove:
      try:
        os.remove(self.path)
      except OSError:
        pass
    os.close(self._fd)
    self._fd = None

  def __exit__(self, *exc) -> None:
    if self.held:
      self._release()
      self.held = False


def _parse_holder(text: str) -> tuple[str | None, str | None]:
  """(pid, host) of a lock file's "pid host"; (None, None) for anything else."""
  found = re.fullmatch(r'(\d+) (\S+)', text.strip())
  return (found[1], found[2]) if found else (None, None)


def _holder(fd: int) -> str:
  """"process PID on HOST" from a lock file's contents, for messages."""
  pid, host = _parse_holder(os.pread(fd, 4096, 0).decode(errors='replace'))
  return f'process {pid} on {host}' if pid else 'another run that is starting'


def _same_file(fd: int, path: str) -> bool:
  try:
    here, there = os.fstat(fd), os.stat(path)
  except FileNotFoundError:
    return False
  return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
