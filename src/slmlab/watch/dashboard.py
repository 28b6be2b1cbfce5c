"""A live terminal dashboard of a run: curves as sparklines, health status, the last events.

The same :class:`DashboardState` serves both sides: during training it is an observer on the
:class:`~slmlab.watch.events.EventBus` (via :class:`Dashboard`), and ``slmlab watch`` rebuilds it
from a run directory's ``metrics.jsonl``/``events.jsonl`` (:func:`load_run_state`, :func:`watch_run`),
so what one sees attached to a run is what one would have seen while it trained.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from slmlab.errors import SlmlabError
from slmlab.io import read_jsonl_tolerant
from slmlab.watch.events import ACTION_KINDS, Event

BLOCKS = "▁▂▃▄▅▆▇█"
HISTORY = 60
QUIET_KINDS = ("step", "eval", "checkpoint", "checkpoint_confirmed", "health", "probe")
"""Kinds with their own place on the dashboard, kept out of the "last events" list."""
LEVEL_STYLES = {"good": "green", "warning": "yellow", "danger": "red"}
STATUS_STYLES = {"STABLE": "bold green", "DRIFTING": "bold yellow", "WARNING": "bold dark_orange", "DANGER": "bold red"}


class NotARun(SlmlabError):
    """A path given to ``slmlab watch``/``report`` that holds no run."""


def num(value: Any) -> float | None:
    """A JSON number, or one of the strings "nan"/"inf" the writers use for non-finite floats."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def fmt(value: Any, spec: str = ".4g") -> str:
    v = num(value)
    return "—" if v is None else format(v, spec)


def sparkline(values: list[float | None], width: int = HISTORY) -> str:
    """The last ``width`` values as block characters scaled min..max; non-finite as '!'."""
    vals = [v for v in values if v is not None][-width:] if width > 0 else []
    finite = [v for v in vals if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    out = []
    for v in vals:
        if not math.isfinite(v):
            out.append("!")
        elif hi == lo:
            out.append(BLOCKS[len(BLOCKS) // 2 - 1])  # a flat series should not look like a minimum
        else:
            out.append(BLOCKS[round((v - lo) / (hi - lo) * (len(BLOCKS) - 1))])
    return "".join(out)


def describe(event: Event) -> str:
    """One line of evidence for an event, for the dashboard and the report's events table."""
    d = event.data
    match event.kind:
        case "detection":
            return f"{d.get('detector', '?')}: value {fmt(d.get('value'))}, z {fmt(d.get('z'), '.2f')}"
        case "rollback":
            return f"to {d.get('checkpoint', '?')}, skipped data {d.get('skipped_data_window', '?')}, lr ×{fmt(d.get('lr_factor'), '.3g')}"
        case "skip":
            return f"step skipped ({d.get('detector', '?')})"
        case "pause":
            return str(d.get("reason", "paused"))
        case "phase":
            return f"phase {d.get('index', '?')}: {d.get('name', '?')}"
        case "status_change":
            return f"{d.get('previous', '?')} → {d.get('status', '?')}: {'; '.join(d.get('reasons') or [])}"
        case "regime_change":
            return f"{d.get('previous', '?')} → {d.get('regime', '?')} (Φ {fmt(d.get('phi'), '.3f')})"
    scalars = [f"{k}={fmt(v) if num(v) is not None else v}" for k, v in d.items() if isinstance(v, int | float | str)]
    return ", ".join(scalars[:4])


@dataclass
class DashboardState:
    """What the dashboard shows, updated one event at a time."""

    name: str = "run"
    total_steps: int | None = None
    step: int = 0
    # The live stream has no "rolled_back" marks, so a rollback must drop the undone steps
    # itself; a metrics file marks them, and pruning there would drop the re-trained steps.
    prune_on_rollback: bool = True
    lr: float | None = None
    tokens_per_s: float | None = None
    elapsed: float | None = None
    loss: float | None = None
    grad_norm: float | None = None
    eval_loss: float | None = None
    losses: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    grad_norms: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    health: dict | None = None
    health_step: int | None = None
    probe: dict | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=8))
    detections: int = 0
    actions: int = 0
    rolled_back_lines: int = 0
    # The step that fired a detector before a rollback undid it: the spike stays on screen.
    last_fault: tuple[int, float | None, float | None, str] | None = None

    def on_event(self, event: Event) -> None:
        d, kind = event.data, event.kind
        if kind == "step":
            if d.get("detected"):
                self.last_fault = (event.step, num(d.get("loss")), num(d.get("grad_norm")), str(d["detected"]))
            if d.get("rolled_back"):
                self.rolled_back_lines += 1
                return
            self.step = event.step
            self.loss = num(d.get("loss"))
            for key in ("lr", "tokens_per_s", "elapsed", "grad_norm", "eval_loss"):
                if d.get(key) is not None:
                    setattr(self, key, num(d[key]))
            if self.loss is not None:
                self.losses.append((event.step, self.loss))
            if (g := num(d.get("grad_norm"))) is not None:
                self.grad_norms.append((event.step, g))
        elif kind == "eval":
            self.eval_loss = num(d.get("eval_loss"))
        elif kind == "health":
            self.health, self.health_step = d, event.step
        elif kind == "probe":
            self.probe = d
        elif kind not in QUIET_KINDS:
            self.recent.append((event.step, kind, describe(event)))
            self.detections += kind == "detection"
            self.actions += kind in ACTION_KINDS
            if kind == "rollback" and self.prune_on_rollback:
                for hist in (self.losses, self.grad_norms):
                    kept = [p for p in hist if p[0] <= event.step]
                    hist.clear()
                    hist.extend(kept)
                self.step = event.step

    def feed_metrics_line(self, record: dict) -> None:
        try:
            step = int(record["step"])
        except (KeyError, TypeError, ValueError):
            return
        self.on_event(Event("step", step, {k: v for k, v in record.items() if k != "step"}))

    def feed_event_line(self, record: dict) -> None:
        try:
            event = Event.from_json(record)
        except (KeyError, TypeError, ValueError):
            return  # a line from another tool or an older version: not worth stopping the view for
        self.on_event(event)


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def _health_view(state: DashboardState) -> RenderableType:
    h = state.health
    if h is None:
        return Text("no health check yet", style="dim")
    levels, thresholds = h.get("levels") or {}, h.get("thresholds") or {}
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col in ("metric", "value", "level", "thresholds"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for metric, value in (h.get("metrics") or {}).items():
        level = levels.get(metric, "")
        th = thresholds.get(metric, "")
        th = ", ".join(f"{k} {fmt(v, '.3g')}" for k, v in th.items()) if isinstance(th, dict) else str(th)
        table.add_row(metric, fmt(value), Text(level, style=LEVEL_STYLES.get(level, "")), th)
    status = str(h.get("status", "?"))
    line = Text.assemble(("STATUS ", "bold"), (status, STATUS_STYLES.get(status, "bold")),
                         f"  (step {state.health_step})  Φ {fmt(h.get('phi'), '.3f')}  regime {h.get('regime') or '—'}")
    reasons = [Text(f"  • {r}") for r in h.get("reasons") or []]
    return Group(line, *reasons, table)


def render(state: DashboardState) -> RenderableType:
    """The whole dashboard as one rich renderable (cheap enough to rebuild a few times a second)."""
    total = state.total_steps or "?"
    tps = f"{state.tokens_per_s:,.0f}" if state.tokens_per_s is not None else "—"
    header = Text.assemble((state.name, "bold cyan"), f"  step {state.step}/{total}  lr {fmt(state.lr, '.2e')}",
                           f"  tok/s {tps}  elapsed {_duration(state.elapsed)}")
    curves = Table.grid(padding=(0, 2))
    curves.add_row("loss", Text(sparkline([v for _, v in state.losses]), style="cyan"), fmt(state.loss),
                   f"eval {fmt(state.eval_loss)}")
    curves.add_row("grad norm", Text(sparkline([v for _, v in state.grad_norms]), style="magenta"), fmt(state.grad_norm), "")
    if state.last_fault is not None:
        step, loss, grad, detector = state.last_fault
        curves.add_row("last fault", Text(f"step {step}: loss {fmt(loss)}, grad norm {fmt(grad)} ({detector}) "
                                          "→ rolled back", style="bold red"), "", "")
    p = state.probe
    probe = (Text(f"loop rate {fmt(p.get('loop_rate'), '.1%')}  collapse rate {fmt(p.get('collapse_rate'), '.1%')}"
                  f"  (n={p.get('n', '?')})") if p else Text("no probe yet", style="dim"))
    events = Table.grid(padding=(0, 1))
    for step, kind, text in state.recent:
        style = "red" if kind in ("rollback", "pause") else "yellow" if kind in ("detection", "skip") else ""
        events.add_row(Text(str(step), style="dim"), Text(kind, style=style), text)
    body = events if state.recent else Text("no events yet", style="dim")
    title = f"last events — detections {state.detections}, actions {state.actions}"
    return Group(header, curves, Panel(Group(_health_view(state), probe), title="health", title_align="left"),
                 Panel(body, title=title, title_align="left"))


class Dashboard:
    """The training loop's live view: subscribe ``dashboard.on_event`` to the run's EventBus."""

    def __init__(self, run_name: str, total_steps: int, start_step: int = 0, enabled: bool = True,
                 console: Console | None = None):
        self.enabled = enabled
        self.state = DashboardState(name=run_name, total_steps=total_steps, step=start_step)
        self.console = console
        self._live: Live | None = None
        self._last_draw = 0.0

    def __enter__(self) -> Self:
        if self.enabled:
            from slmlab.console import console as default_console

            # No refresh thread: the state is mutated by the loop, so only the loop draws it.
            self._live = Live(render(self.state), console=self.console or default_console, refresh_per_second=4,
                              transient=False, auto_refresh=False)
            self._live.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self._live is not None:
            self._live.update(render(self.state), refresh=True)
            self._live.stop()
            self._live = None
        return False

    def on_event(self, event: Event) -> None:
        if not self.enabled:
            return
        self.state.on_event(event)
        now = time.monotonic()
        if self._live is not None and now - self._last_draw >= 0.25:  # at most ~4 redraws a second
            self._last_draw = now
            self._live.update(render(self.state), refresh=True)


def check_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not (run_dir / "config.yaml").is_file():
        raise NotARun(f"{run_dir} is not a run directory: expected config.yaml and metrics.jsonl "
                      "written by `slmlab train` (see `slmlab runs`)")
    return run_dir


def read_config(run_dir: Path) -> dict:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise NotARun(f"{run_dir}/config.yaml is not valid YAML: {e}") from None
    return config if isinstance(config, dict) else {}


def read_results(run_dir: Path) -> dict | None:
    try:
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return results if isinstance(results, dict) else None


def _empty_state(run_dir: Path) -> DashboardState:
    config = read_config(run_dir)
    results = read_results(run_dir) or {}
    total = config.get("max_steps") or (results.get("run") or {}).get("total_steps")
    return DashboardState(name=str(config.get("name") or run_dir.name), total_steps=total, prune_on_rollback=False)


def load_run_state(run_dir: str | Path) -> DashboardState:
    """A run's dashboard state from its files (the run may still be going)."""
    run_dir = check_run_dir(run_dir)
    state = _empty_state(run_dir)
    for record in read_jsonl_tolerant(run_dir / "metrics.jsonl"):
        state.feed_metrics_line(record)
    for record in read_jsonl_tolerant(run_dir / "events.jsonl"):
        state.feed_event_line(record)
    return state


class _Tail:
    """New complete records of a JSONL file since the last read; notices atomic rewrites."""

    def __init__(self, path: Path):
        self.path, self.offset, self.inode = path, 0, None

    def read(self) -> tuple[list[dict], bool]:
        """(new records, whether the file was replaced or shrank so earlier records are stale)."""
        try:
            with self.path.open("rb") as f:
                st = os.fstat(f.fileno())
                rewritten = (self.inode is not None and st.st_ino != self.inode) or st.st_size < self.offset
                if rewritten:
                    self.offset = 0
                self.inode = st.st_ino
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            rewritten, self.offset, self.inode = self.offset > 0, 0, None
            return [], rewritten
        records, consumed = [], 0
        for line in chunk.splitlines(keepends=True):
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            if not line.endswith(b"\n") and record is None:
                break  # a torn last line: the rest is still being written
            consumed += len(line)
            if isinstance(record, dict):
                records.append(record)
        self.offset += consumed
        return records, rewritten


def watch_run(run_dir: str | Path, *, follow: bool = True, interval: float = 1.0,
              console: Console | None = None) -> DashboardState:
    """Show a run's dashboard; with ``follow`` keep it live until the run finishes or Ctrl-C."""
    from slmlab.console import console as default_console

    run_dir, console = check_run_dir(run_dir), console or default_console
    if not follow:
        state = load_run_state(run_dir)
        console.print(render(state))
        return state
    metrics, events = _Tail(run_dir / "metrics.jsonl"), _Tail(run_dir / "events.jsonl")
    state = _empty_state(run_dir)

    def poll() -> DashboardState:
        nonlocal state
        new_metrics, m_rewritten = metrics.read()
        new_events, e_rewritten = events.read()
        if m_rewritten or e_rewritten:  # resume/rollback rewrote history: start over
            metrics.offset = events.offset = 0
            state = _empty_state(run_dir)
            new_metrics, new_events = metrics.read()[0], events.read()[0]
        for record in new_metrics:
            state.feed_metrics_line(record)
        for record in new_events:
            state.feed_event_line(record)
        return state

    def finished() -> bool:
        try:
            done = (run_dir / "results.json").stat().st_mtime_ns
        except FileNotFoundError:
            return False
        try:
            return done >= (run_dir / "metrics.jsonl").stat().st_mtime_ns
        except FileNotFoundError:
            return True

    try:
        with Live(render(poll()), console=console, refresh_per_second=4, transient=False, auto_refresh=False) as live:
            while True:
                done = finished()  # before the read, so lines written just before results.json are shown
                live.update(render(poll()), refresh=True)
                if done:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    return state
