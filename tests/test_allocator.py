"""The caching allocator the programs restart themselves with (`cvjax.allocator`)."""
import os
import subprocess
import sys

from cvjax import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Reports, after the restart, the allocator named in the environment and whether a
# library of that name is mapped into the process.
PROBE = ('from cvjax import allocator; allocator.reexec_with_caching_allocator(); import os; '
         'name = os.environ.get(allocator.ENV); maps = open("/proc/self/maps").read(); '
         'print(os.getpid(), name, bool(name) and name in maps)')


def _probe(**env):
  environ = {k: v for k, v in os.environ.items() if k not in (allocator.ENV, 'LD_PRELOAD')}
  environ['PYTHONPATH'] = REPO
  proc = subprocess.Popen([sys.executable, '-c', PROBE], env={**environ, **env},
                          stdout=subprocess.PIPE, text=True)
  out, _ = proc.communicate(timeout=60)
  pid, name, mapped = out.split()
  return proc.pid, int(pid), name, mapped == 'True'


def test_the_first_installed_candidate_is_preloaded_with_its_settings(monkeypatch):
  found = {'jemalloc': 'libjemalloc.so.2'}
  monkeypatch.setattr(sys, 'platform', 'linux')
  monkeypatch.setattr(allocator.ctypes.util, 'find_library', found.get)
  assert allocator.environment() == {
      'LD_PRELOAD': 'libjemalloc.so.2', 'MALLOC_CONF': 'dirty_decay_ms:-1,muzzy_decay_ms:-1',
      allocator.ENV: 'jemalloc'}
  found['tcmalloc_minimal'] = 'libtcmalloc_minimal.so.4'
  assert allocator.environment() == {'LD_PRELOAD': 'libtcmalloc_minimal.so.4',
                                     allocator.ENV: 'tcmalloc'}
  found.clear()
  assert allocator.environment() == {}
  monkeypatch.setattr(sys, 'platform', 'darwin')
  found['tcmalloc_minimal'] = 'libtcmalloc_minimal.dylib'
  assert allocator.environment() == {}


def test_a_program_restarts_itself_once_with_the_allocator_in_the_same_process():
  expected = allocator.environment().get(allocator.ENV)
  popen_pid, pid, name, mapped = _probe()
  assert pid == popen_pid   # execve: the same process, so signals and waits still reach it
  if expected is None:      # nothing installed: the program runs on with glibc's malloc
    assert (name, mapped) == ('None', False)
  else:
    assert (name, mapped) == (expected, True)


def test_system_keeps_glibcs_malloc():
  _, _, name, mapped = _probe(**{allocator.ENV: 'system'})
  assert (name, mapped) == ('system', False)
