"""The console and file writers of training: progress lines and metrics.jsonl."""
import io
import logging

from cvjax.train.writers import Progress


class _Clock:
  """A settable time.monotonic."""

  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def _messages(caplog):
  return [r.getMessage() for r in caplog.records if r.name == 'absl']


def test_progress_logs_the_first_step_at_once_then_rate_and_eta_every_log_step(caplog):
  caplog.set_level(logging.INFO, logger='absl')
  clock = _Clock()
  progress = Progress(1000, 0, every=100, stream=io.StringIO(), clock=clock)
  clock.now += 5.0                      # the first step compiles
  progress.update(1)
  for step in range(2, 100):
    clock.now += 0.1
    progress.update(step)
  clock.now += 0.1
  progress.update(100, {'train_loss': 0.5})
  with progress.phase('evaluating on test'):
    clock.now += 3.0
  clock.now += 70.0                     # a slow step: a line without waiting for step 200
  progress.update(101)
  progress.close()
  assert _messages(caplog) == [
      'step 0/1000: compiling the train step...',
      'step 1/1000 (0%): first step took 5.0 s (with compiling)',
      'step 100/1000 (10%): 10 steps/s, ETA 0:01:30 | train_loss=0.5',
      'step 100/1000: evaluating on test...',
      'step 101/1000 (10%): 1.21 steps/s, ETA 0:12:25']


def test_progress_on_a_terminal_is_a_tqdm_bar_and_resumes_where_it_stopped(caplog):
  caplog.set_level(logging.INFO, logger='absl')
  terminal = _Terminal()
  progress = Progress(200, 50, every=10, stream=terminal)
  assert 'compiling the train step' in terminal.getvalue()
  for step in range(51, 61):
    progress.update(step, {'train_loss': 0.25} if step == 60 else None)
  with progress.phase('evaluating on test'):
    assert 'evaluating on test' in terminal.getvalue().rsplit('\r', 1)[-1]
  progress.close()
  last = terminal.getvalue().rsplit('\r', 1)[-1]
  assert '60/200' in last and 'step/s' in last and 'train_loss=0.25' in last
  assert _messages(caplog) == []


def test_progress_of_other_processes_and_of_finished_runs_is_silent(caplog):
  caplog.set_level(logging.INFO, logger='absl')
  terminal = _Terminal()
  quiet = Progress(100, 0, every=10, enabled=False, stream=terminal)
  quiet.update(1, {'train_loss': 1.0})
  with quiet.phase('evaluating on test'):
    pass
  quiet.close()
  Progress(100, 100, every=10, stream=io.StringIO()).close()   # resumed at the end
  assert terminal.getvalue() == '' and _messages(caplog) == []
