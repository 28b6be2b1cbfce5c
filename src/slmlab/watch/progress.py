"""The live view of a training run: the dashboard on a terminal (or when asked), else a progress bar.

Without a terminal (CI, ``| tee``) a live bar shows nothing until the end, so the bar prints a
plain line instead — ``step 40/200 loss 0.8123 lr 1.9e-04 153 tok/s 0:01:10`` — at most every
``watch.progress_seconds`` and at the last step.
"""

from __future__ import annotations

import sys
import time


def live_view(name: str, dashboard: bool | None, total: int, start: int, main: bool, progress_seconds: float = 30.0):
    """The dashboard when ``dashboard`` (default: stdout is a terminal), else a progress bar; nothing off the main process."""
    wanted = dashboard if dashboard is not None else sys.stdout.isatty()
    if main and wanted:
        from slmlab.watch.dashboard import Dashboard

        return Dashboard(name, total, start, enabled=True)
    return ProgressBar(total, start, enabled=main, plain_every=progress_seconds)


class ProgressBar:
    """A rich progress bar with loss, lr, tokens/s and ETA (plain lines without a terminal); an event observer."""

    def __init__(self, total: int, start: int, enabled: bool, plain_every: float = 30.0):
        from rich.console import Console

        self.enabled, self.total, self.plain_every = enabled, total, plain_every
        console = Console()
        self.plain = enabled and not (console.is_terminal or console.is_jupyter)
        self.started, self.last_line = time.monotonic(), float("-inf")
        if enabled and not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                TimeElapsedColumn(), TimeRemainingColumn())
            self.task = self.bar.add_task("train", total=total, completed=start, info="")

    def __enter__(self):
        if self.enabled and not self.plain:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled and not self.plain:
            self.bar.__exit__(*exc)
        return False

    def on_event(self, event) -> None:
        if event.kind == "step":
            self.update(event.step, event.data)

    def update(self, step: int, m: dict) -> None:
        if not (self.enabled and isinstance(m.get("loss"), float) and isinstance(m.get("lr"), float)):
            return
        tps = f"{m['tokens_per_s']:.0f} tok/s" if m.get("tokens_per_s") else ""
        info = f"loss {m['loss']:.4f} lr {m['lr']:.2e} {tps}"
        if not self.plain:
            self.bar.update(self.task, completed=step, info=info)
            return
        now = time.monotonic()
        if now - self.last_line >= self.plain_every or step >= self.total:
            self.last_line = now
            elapsed = int(now - self.started)
            print(f"step {step}/{self.total} {info} {elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}", flush=True)
