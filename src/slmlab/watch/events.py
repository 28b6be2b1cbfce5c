"""The training loop's event stream: the loop publishes, observers listen.

Every thing that happens in a run is an :class:`Event` with a ``kind``, the optimizer
``step`` it belongs to and a flat ``data`` dict of JSON values. The loop publishes events
on an :class:`EventBus`; observers subscribe to it. The writers of ``metrics.jsonl``
(``step`` events) and ``events.jsonl`` (every other kind), the live dashboard, the health
monitor and the recovery policy are all observers, so adding one touches one file.

Kinds and their data (the contract readers such as ``slmlab watch`` and the run report rely on):

* ``step``        — loss, lr, grad_norm, tokens, tokens_per_s, elapsed, [eval_loss], [skipped]
* ``eval``        — eval_loss
* ``checkpoint``  — path, healthy
* ``probe``       — n, loop_rate, collapse_rate, basins {label: share}
* ``health``      — status, reasons [str], metrics {name: value}, levels {name: good|warning|danger},
                    phi, regime
* ``status_change`` — previous, status, reasons
* ``regime_change`` — previous, regime, phi
* ``phase``       — index, name, mix (curriculum transitions)
* ``detection``   — detector, value, … (the evidence)
* actions: ``skip``, ``cooldown``, ``rollback``, ``light_sleep``, ``deep_sleep``, ``mushroom``,
  ``pause`` — each with its evidence and parameters
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from slmlab.io import count_lines

ACTION_KINDS = ("skip", "cooldown", "rollback", "light_sleep", "deep_sleep", "mushroom", "pause")
MARKER_KINDS = ("detection", *ACTION_KINDS, "phase", "regime_change", "status_change")
"""Kinds worth a vertical marker on a curve."""


def _json_safe(value: Any) -> Any:
    """Strict JSON has no NaN/inf: write them as strings so any reader can parse the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


@dataclass(frozen=True)
class Event:
    kind: str
    step: int
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, **_json_safe(self.data)}

    @staticmethod
    def from_json(record: dict[str, Any]) -> Event:
        data = {k: v for k, v in record.items() if k not in ("kind", "step")}
        return Event(str(record["kind"]), int(record["step"]), data)


class Observer(Protocol):
    def on_event(self, event: Event) -> None: ...


class EventBus:
    """Publish events to every subscribed observer, in subscription order; count them by kind."""

    def __init__(self, observers: Iterable[Observer | Callable[[Event], None]] = ()):
        self._observers: list[Callable[[Event], None]] = []
        self.counts: dict[str, int] = {}
        for obs in observers:
            self.subscribe(obs)

    def subscribe(self, observer: Observer | Callable[[Event], None]) -> None:
        self._observers.append(observer.on_event if hasattr(observer, "on_event") else observer)

    def publish(self, kind: str, step: int, **data: Any) -> Event:
        event = Event(kind, step, data)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        for deliver in self._observers:
            deliver(event)
        return event


class _LineWriter:
    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled
        self.lines = count_lines(path) if enabled else 0

    def _write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.lines += 1


class MetricsWriter(_LineWriter):
    """``step`` events → ``metrics.jsonl`` (one line per logged step: ``{"step": …, **data}``)."""

    def on_event(self, event: Event) -> None:
        if self.enabled and event.kind == "step":
            self._write({"step": event.step, **_json_safe(event.data)})


class EventsWriter(_LineWriter):
    """Every event but ``step`` → ``events.jsonl``, one JSON object per line."""

    def on_event(self, event: Event) -> None:
        if self.enabled and event.kind != "step":
            self._write(event.to_json())


# --------------------------------------------------------------------------- editing a run's logs (resume, rollback)


def count_kinds(path: Path) -> dict[str, int]:
    """How many events of each kind ``events.jsonl`` holds (a resumed run keeps counting from there)."""
    from slmlab.io import read_jsonl_tolerant

    counts: dict[str, int] = {}
    for e in read_jsonl_tolerant(path):
        counts[e["kind"]] = counts.get(e["kind"], 0) + 1
    return counts


def trim_to_step(path: Path, step: int, keep_rolled_back: bool = False) -> None:
    """Resume from a checkpoint without line counts (older runs): forget lines logged after ``step``
    (they will be logged again); with ``keep_rolled_back``, lines already marked rolled back stay."""
    from slmlab.io import atomic_write_text, read_jsonl_tolerant

    if path.exists():
        kept = [e for e in read_jsonl_tolerant(path) if e["step"] <= step or (keep_rolled_back and e.get("rolled_back"))]
        atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in kept))


def mark_rolled_back(path: Path, step: int) -> None:
    """After a rollback to ``step``, keep the later metrics lines but mark them: nothing is lost, nothing is mistaken."""
    from slmlab.io import atomic_write_text, read_jsonl_tolerant

    if path.exists():
        lines = [{**m, "rolled_back": True} if m["step"] > step else m for m in read_jsonl_tolerant(path)]
        atomic_write_text(path, "".join(json.dumps(m) + "\n" for m in lines))
