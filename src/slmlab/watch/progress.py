"""The live view of a training run: the dashboard on a terminal (or when asked), else a progress bar."""

from __future__ import annotations

import sys


def live_view(name: str, dashboard: bool | None, total: int, start: int, main: bool):
    """The dashboard when ``dashboard`` (default: stdout is a terminal), else a progress bar; nothing off the main process."""
    wanted = dashboard if dashboard is not None else sys.stdout.isatty()
    if main and wanted:
        from slmlab.watch.dashboard import Dashboard

        return Dashboard(name, total, start, enabled=True)
    return ProgressBar(total, start, enabled=main)


class ProgressBar:
    """A rich progress bar with loss, lr, tokens/s and ETA; an event observer; silent when disabled."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.enabled = enabled
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                TimeElapsedColumn(), TimeRemainingColumn())
            self.task = self.bar.add_task("train", total=total, completed=start, info="")

    def __enter__(self):
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
        return False

    def on_event(self, event) -> None:
        if event.kind == "step":
            self.update(event.step, event.data)

    def update(self, step: int, m: dict) -> None:
        if self.enabled and isinstance(m.get("loss"), float) and isinstance(m.get("lr"), float):
            tps = f"{m['tokens_per_s']:.0f} tok/s" if m.get("tokens_per_s") else ""
            self.bar.update(self.task, completed=step, info=f"loss {m['loss']:.4f} lr {m['lr']:.2e} {tps}")
