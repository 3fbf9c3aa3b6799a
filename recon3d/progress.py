"""Progress output that reads well on a terminal and in a log: every long loop in recon3d reports through here.

On a terminal: a rich progress bar (the rate it shows is measured here, over the last few seconds).
Anywhere else (a pipe, a file, CI): no bar and no carriage returns, but one plain line per task every
``RECON3D_PROGRESS_SECONDS`` seconds (default 10) and one when it ends, with the true rate: steps done
since the previous line over the wall time since it::

    training: 778/9,000 steps (9%), 47.7 steps/s, 2:52 left; loss 0.0312  PSNR 24.10  31,204 Gaussians

The object has the part of ``rich.progress.Progress``'s interface that recon3d uses (``add_task``,
``update``, ``advance``, use as a context manager), so a loop written for rich needs only its constructor
changed. :func:`console` gives the one rich console for messages: on stderr, never wrapping a line in a log.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

T = TypeVar("T")
DEFAULT_SECONDS = 10.0


def interval_seconds() -> float:
    """Seconds between two plain progress lines (``RECON3D_PROGRESS_SECONDS``, default 10)."""
    try:
        return max(0.0, float(os.environ.get("RECON3D_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def is_terminal(stream: IO | None = None) -> bool:
    """Whether ``stream`` (stderr by default) is an interactive terminal that can redraw a bar."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty()) and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


def console(quiet: bool = False, stream: IO | None = None):
    """A rich console on stderr (or ``stream``) whose lines never wrap mid-way when written to a log."""
    from rich.console import Console

    stream = sys.stderr if stream is None else stream
    return Console(file=stream, quiet=quiet, soft_wrap=not is_terminal(stream), highlight=False)


def configure_warnings(stream: IO | None = None) -> None:
    """Show each warning once per message, as one line (``warning: ...``), on stderr: how the CLI reports the
    notes of recon3d and of the libraries it calls (Python's default is two lines with a source path, and
    once per line of code, so a note raised from two places shows twice)."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        out = file or stream or sys.stderr
        name = "warning" if category.__module__.startswith("recon3d") else f"warning ({category.__name__})"
        try:
            print(f"{name}: {' '.join(str(message).split())}", file=out, flush=True)
        except (OSError, ValueError):
            pass

    warnings.filterwarnings("once", append=True)  # last: the filters that ignore some warnings still do
    warnings.showwarning = show


def _clock(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class _Task:
    description: str
    total: float | None
    unit: str
    completed: float = 0.0
    info: str = ""
    started: float = field(default_factory=time.monotonic)
    mark_time: float = field(default_factory=time.monotonic)  # the previous plain line (or the start)
    mark_done: float = 0.0
    rate: float | None = None  # per second, over the last interval
    printed_end: bool = False
    printed_done: float | None = None  # the count the last plain line showed

    def line(self, now: float) -> str:
        done = f"{self.completed:,.0f}"
        if self.total:
            done += f"/{self.total:,.0f} {self.unit} ({100.0 * self.completed / self.total:.0f}%)"
        else:
            done += f" {self.unit}"
        parts = [f"{self.description}: {done}"]
        if self.rate is not None:
            parts.append(f"{self.rate:.1f} {self.unit}/s")
        if self.printed_end:
            parts.append(f"in {_clock(now - self.started)}")
        elif self.total and self.rate and self.completed < self.total:
            parts.append(f"{_clock((self.total - self.completed) / self.rate)} left")
        text = ", ".join(parts)
        return f"{text}; {self.info}" if self.info else text


class Progress:
    """Progress of one or more tasks: a rich bar on a terminal, timed plain lines elsewhere; silent if disabled."""

    def __init__(self, *, enabled: bool = True, stream: IO | None = None, interval: float | None = None,
                 transient: bool = False, unit: str = "steps"):
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.interval = interval_seconds() if interval is None else interval
        self.tty = enabled and is_terminal(self.stream)
        self.tasks: dict[int, _Task] = {}
        self._rich = None
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                TimeRemainingColumn(), console=console(stream=self.stream), transient=transient,
            )

    def __enter__(self) -> Progress:
        if self._rich is not None:
            self._rich.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)
        elif self.enabled and exc[0] is None:
            now = time.monotonic()
            for task in self.tasks.values():
                self._finish_line(task, now)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, unit: str | None = None,
                 info: str = "", **_ignored: Any) -> int:
        """Start a task; returns its id."""
        task_id = len(self.tasks)
        task = _Task(description, total, unit or self.unit, float(completed), info)
        task.mark_done = task.completed
        self.tasks[task_id] = task
        if self._rich is not None:
            rich_id = self._rich.add_task(description, total=total, completed=completed, info=info, rate="")
            assert rich_id == task_id
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        """Add ``advance`` to a task's count."""
        self.update(task_id, completed=self.tasks[task_id].completed + advance)

    def update(self, task_id: int, *, completed: float | None = None, advance: float | None = None,
               total: float | None = None, info: str | None = None, description: str | None = None,
               **_ignored: Any) -> None:
        """Set a task's count (or advance it), total, trailing info or description; print a line when one is due."""
        task = self.tasks[task_id]
        if advance is not None:
            completed = task.completed + advance
        if completed is not None:
            task.completed = float(completed)
        if total is not None:
            task.total = total
        if info is not None:
            task.info = info
        if description is not None:
            task.description = description
        now = time.monotonic()
        due = now - task.mark_time >= (self.interval if self._rich is None else 2.0)
        if due and now > task.mark_time:
            task.rate = (task.completed - task.mark_done) / (now - task.mark_time)
        if self._rich is not None:
            rate = f"{task.rate:.1f} {task.unit}/s" if task.rate is not None else ""
            self._rich.update(task_id, completed=task.completed, total=task.total, info=task.info,
                              description=task.description, rate=rate)
        elif self.enabled and due:
            if task.total and task.completed >= task.total:
                self._finish_line(task, now)
            else:
                self._print(task, now)
        if due:
            task.mark_time, task.mark_done = now, task.completed

    def _finish_line(self, task: _Task, now: float) -> None:
        # said once, and not for a task that never moved or whose count a line has just shown
        if task.printed_end or not task.completed or task.printed_done == task.completed:
            return
        task.printed_end = True
        # the last line states the whole task's rate and time
        task.rate = task.completed / (now - task.started) if now > task.started else None
        self._print(task, now)

    def _print(self, task: _Task, now: float) -> None:
        task.printed_done = task.completed
        print(task.line(now), file=self.stream, flush=True)


def track(items: Iterable[T], description: str = "working", total: int | None = None, *, disable: bool = False,
          transient: bool = False, unit: str = "items") -> Iterator[T]:
    """Iterate over ``items`` with progress output (``rich.progress.track``'s arguments, plain lines in a log)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(enabled=not disable, transient=transient, unit=unit) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
