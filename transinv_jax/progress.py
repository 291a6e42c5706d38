"""Progress a person can read: durations as ``12m30s``, percent done, and a terminal bar.

A stage stops at its step cap (``max_steps``) or earlier, when the accuracy rule fires; so the
percent of the cap is a lower bound of the work done and every ETA is an upper bound ("at most").
"""

import math
import shutil
import sys
from typing import TextIO


def format_duration(seconds: float | None) -> str:
  """``42s``, ``12m30s``, ``3h05m`` or ``2d04h``; ``?`` when unknown (None, NaN, infinite).

  Args:
    seconds: a duration.

  Returns:
    The duration in at most two units, rounded to whole seconds.
  """
  if seconds is None or not math.isfinite(seconds):
    return "?"
  s = max(0, round(seconds))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  if s < 86400:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def percent(step: int, max_steps: int) -> int:
  """Whole percent of the step cap reached, 0-100."""
  return min(100, int(100 * step / max_steps)) if max_steps > 0 else 100


def training_status(step: int, max_steps: int, steps_per_sec: float, stage_eta: float,
                    experiment_eta: float | None = None) -> str:
  """The progress half of a training log line.

  Args:
    step: the furthest seed's step.
    max_steps: the stage's step cap.
    steps_per_sec: training speed.
    stage_eta: seconds to the cap (an upper bound).
    experiment_eta: seconds until every stage is trained (an upper bound), or None.

  Returns:
    E.g. ``step 450/1000 (45% of the cap), 12.3 steps/s, at most 44s left in the stage,
    1h02m in the experiment``.
  """
  text = (f"step {step}/{max_steps} ({percent(step, max_steps)}% of the cap), "
          f"{steps_per_sec:.3g} steps/s, at most {format_duration(stage_eta)} left in the stage")
  if experiment_eta is not None:
    text += f", {format_duration(experiment_eta)} in the experiment"
  return text


class Bar:
  """A one-line progress bar on a terminal, redrawn in place with a carriage return.

  Draws nothing unless the stream is a terminal, so log files and pipes get only the log lines.
  Call ``clear`` before logging to the same stream so that a log line never lands on the bar.

  Args:
    stream: where to draw; ``sys.stderr`` (looked up on each call) by default.
    width: characters of the bar itself.
  """

  def __init__(self, stream: TextIO | None = None, width: int = 24):
    self._stream = stream
    self._width = width
    self._shown = False

  @property
  def stream(self) -> TextIO:
    return self._stream if self._stream is not None else sys.stderr

  @property
  def enabled(self) -> bool:
    isatty = getattr(self.stream, "isatty", None)
    return bool(isatty and isatty())

  def show(self, fraction: float, text: str) -> None:
    """Draws ``[#####.....]  45% text`` over the previous bar.

    Args:
      fraction: done, 0-1.
      text: what follows the bar; cut to the terminal's width.
    """
    if not self.enabled:
      return
    fraction = min(1.0, max(0.0, fraction))
    filled = int(round(self._width * fraction))
    line = f"[{'#' * filled}{'.' * (self._width - filled)}] {100 * fraction:3.0f}% {text}"
    # One character short of the terminal: a wrapped line cannot be redrawn with "\r".
    line = line[:shutil.get_terminal_size().columns - 1]
    # The cursor goes back to the line's start: a log line from elsewhere overwrites the bar
    # instead of running on after it.
    self.stream.write(f"\r{line}\x1b[K\r")
    self.stream.flush()
    self._shown = True

  def clear(self) -> None:
    """Erases the bar, leaving the cursor at the start of its empty line."""
    if self._shown:
      self.stream.write("\r\x1b[K")
      self.stream.flush()
      self._shown = False
