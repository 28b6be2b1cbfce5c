"""Progress for every loop a person waits on: a rich bar on a terminal, plain lines when piped.

Everything goes to stderr, so stdout stays parseable (JSON, JSONL, tables). On a terminal
(stderr is a TTY) a rich bar shows ``M/N``, elapsed time and ETA; without one (CI, ``| tee``,
``2> log``) a live bar would show nothing until the end, so a plain line is printed instead, at
the start, then at most every ``every`` seconds, and once at the end::

    eval logic: 0/120 (0%) 0.0s elapsed
    eval logic: 40/120 (33%) 12.1s elapsed, ETA 24.2s
    eval logic: 120/120 (100%) done in 36.3s

Library functions take an optional *progress factory* (``progress=None``: silent), open one
bar per loop with :func:`tracker` and call ``advance``; the CLIs pass :func:`progress`::

    def label_all(texts, *, progress: ProgressFactory | None = None):
        with tracker(progress, len(texts), "label") as p:
            for t in texts:
                ...
                p.advance()

    label_all(texts, progress=progress)   # the CLI: a bar or plain lines on stderr

``SLMLAB_PROGRESS`` chooses for every command: ``off`` (nothing), ``plain`` (lines even on a
terminal), ``bar``, or ``auto`` (the default: a bar on a terminal). The training loop has its own
view (:mod:`slmlab.watch.progress`: loss, lr, tokens/s).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Self, TextIO

from slmlab.errors import SlmlabError

MODES = ("auto", "bar", "plain", "off")


class Progress:
    """One loop's progress; a context manager. ``total=None``: unknown length (count and elapsed only).

    ``terminal``: draw a rich bar (default: stderr is a terminal); else plain lines to ``stream``
    (default: stderr) at most every ``every`` seconds. ``quiet``: nothing at all. ``clock`` is
    injectable so that tests see exact times.
    """

    def __init__(self, total: int | None, label: str, *, every: float = 10.0, quiet: bool = False,
                 terminal: bool | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.label, self.every, self.clock = total, label, every, clock
        self.completed = self.skipped = 0
        self.stream = stream
        if quiet:
            self.mode = "off"
        elif terminal is None:
            self.mode = "bar" if stream is None and _stderr_is_terminal() else "plain"
        else:
            self.mode = "bar" if terminal else "plain"
        self.started = self.last_line = None
        self._bar = self._task = None

    # ----------------------------------------------------------------- context

    def __enter__(self) -> Self:
        self.started = self.clock()
        if self.mode == "bar":
            self._start_bar()
        elif self.mode == "plain":
            self._maybe_line()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
        elif self.mode == "plain":
            self._write(self.final_line(stopped=exc_type is not None))
        return False

    # ----------------------------------------------------------------- counting

    def advance(self, n: int = 1) -> None:
        """``n`` more items done."""
        self.update(self.completed + n)

    def skip(self, n: int) -> None:
        """Before the loop: ``n`` items were done already (a resumed run); counted, but not in the ETA's rate."""
        self.completed += n
        self.skipped += n

    def update(self, completed: int, total: int | None = None) -> None:
        """``completed`` items done in all (and the total, when it changes or becomes known)."""
        self.completed = completed
        if total is not None:
            self.total = total
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, total=self.total)
        elif self.mode == "plain":
            self._maybe_line()

    # ----------------------------------------------------------------- text

    def line(self) -> str:
        """The plain line for now: ``label: 40/120 (33%) 12.1s elapsed, ETA 24.2s``."""
        elapsed = self._elapsed()
        if not self.total:
            return f"{self.label}: {self.completed} done, {duration(elapsed)} elapsed"
        text = f"{self.label}: {self.completed}/{self.total} ({_percent(self.completed, self.total)}%) {duration(elapsed)} elapsed"
        done_here = self.completed - self.skipped
        if done_here > 0 and self.completed < self.total:
            text += f", ETA {duration(elapsed / done_here * (self.total - self.completed))}"
        return text

    def final_line(self, stopped: bool = False) -> str:
        """``label: 120/120 (100%) done in 36.3s``, or ``stopped at ... after ...`` when the loop raised."""
        count = f"{self.completed}/{self.total} ({_percent(self.completed, self.total)}%)" if self.total else f"{self.completed}"
        took = duration(self._elapsed())
        return f"{self.label}: stopped at {count} after {took}" if stopped else f"{self.label}: {count} done in {took}"

    # ----------------------------------------------------------------- internals

    def _elapsed(self) -> float:
        return 0.0 if self.started is None else max(0.0, self.clock() - self.started)

    def _maybe_line(self) -> None:
        if self.total and self.completed >= self.total:
            return  # the final line says it
        now = self.clock()
        if self.last_line is None or now - self.last_line >= self.every:
            self.last_line = now
            self._write(self.line())

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(text + "\n")
        stream.flush()

    def _start_bar(self) -> None:
        """A rich bar on the shared stderr console: messages printed there show above it, and a bar
        opened inside another one's loop stacks under it (rich >= 14 nests live displays)."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        from slmlab.console import err_console

        self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(), console=err_console, get_time=self.clock,
                                 # stdout goes through the bar only when it is the same terminal: piped, it stays stdout
                                 redirect_stdout=_isatty(sys.stdout), redirect_stderr=True)
        self._bar.__enter__()
        self._task = self._bar.add_task(self.label, total=self.total, completed=self.completed)


ProgressFactory = Callable[[int | None, str], Progress]
"""What library functions accept as ``progress``: ``(total, label) -> Progress``; :func:`progress` is one."""


def progress(total: int | None, label: str, *, every: float = 10.0, bar: bool = True) -> Progress:
    """The CLIs' progress: a bar on a terminal, plain lines on stderr otherwise, as ``SLMLAB_PROGRESS`` says.

    ``bar=False``: plain lines even on a terminal, for loops whose items draw their own live view
    (a series running training runs in this process).
    """
    mode = os.environ.get("SLMLAB_PROGRESS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise SlmlabError(f"SLMLAB_PROGRESS={mode!r} is not one of {', '.join(MODES)} "
                          "(auto: a bar on a terminal, plain lines otherwise)")
    terminal = False if not bar else {"bar": True, "plain": False}.get(mode)
    return Progress(total, label, every=every, quiet=mode == "off", terminal=terminal)


def tracker(factory: ProgressFactory | None, total: int | None, label: str) -> Progress:
    """``factory(total, label)``, or a silent :class:`Progress` when no factory was given."""
    return factory(total, label) if factory is not None else Progress(total, label, quiet=True)


def duration(seconds: float) -> str:
    """``12.1s``, ``4m05s``, ``2h03m``."""
    if seconds < 59.95:  # 59.96 would print as "60.0s"
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def _percent(done: int, total: int) -> int:
    return int(100 * done / total) if total else 0


def _stderr_is_terminal() -> bool:
    """stderr itself is a TTY (not rich's guess: CI logs often set FORCE_COLOR, and a live bar there is noise)."""
    return _isatty(sys.stderr)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


__all__ = ["MODES", "Progress", "ProgressFactory", "duration", "progress", "tracker"]
