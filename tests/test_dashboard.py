"""The live dashboard, `slmlab watch` and the run report, on small synthetic run directories."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from rich.console import Console

from slmlab.watch.dashboard import Dashboard, DashboardState, NotARun, load_run_state, render, sparkline, watch_run
from slmlab.watch.events import Event, EventBus
from slmlab.watch.run_report import write_run_report

HEALTH = {"status": "WARNING", "reasons": ["spectral entropy falling", "loop rate 30%"],
          "metrics": {"spectral_entropy": 0.61, "phi_proximity": 0.2, "dominant_ratio": 0.4, "loop_rate": 0.3},
          "levels": {"spectral_entropy": "warning", "phi_proximity": "good", "dominant_ratio": "good", "loop_rate": "danger"},
          "thresholds": {"loop_rate": {"warning": 0.1, "danger": 0.25}}, "phi": 1.58, "regime": "geometric"}


def _metric(step: int, loss, **extra) -> dict:
    return {"step": step, "loss": loss, "lr": 1e-3, "grad_norm": 1.0 + step / 10, "tokens": 64 * step,
            "tokens_per_s": 500.0, "elapsed": float(step), **extra}


def make_run(tmp_path, *, finished: bool = False):
    """A run with a rollback to step 4 (steps 5-6 undone), a NaN loss and a torn last metrics line."""
    run = tmp_path / "runs" / "toy"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: toy\nmodel: tiny-random\nmax_steps: 10\n")
    lines = [_metric(s, 3.0 - s * 0.1) for s in range(1, 5)]
    lines += [_metric(5, 9.0, rolled_back=True), _metric(6, "nan", rolled_back=True)]
    lines += [_metric(s, 2.6 - (s - 5) * 0.1) for s in range(5, 8)]
    lines += [{"step": 8, "loss": "nan", "grad_norm": None, "skipped": True}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines) + '{"step": 9, "lo')
    events = [
        {"kind": "checkpoint", "step": 4, "path": "checkpoints/step-4", "healthy": True},
        {"kind": "probe", "step": 4, "n": 20, "loop_rate": 0.3, "collapse_rate": 0.05, "basins": {"CREATIVE": 0.65}},
        {"kind": "health", "step": 4, **HEALTH},
        {"kind": "detection", "step": 6, "detector": "nonfinite", "value": "nan", "z": "inf"},
        {"kind": "rollback", "step": 4, "checkpoint": "step-4", "skipped_data_window": [4, 5], "lr_factor": 0.5},
        {"kind": "detection", "step": 8, "detector": "nonfinite", "value": "nan", "z": "inf"},
        {"kind": "skip", "step": 8, "detector": "nonfinite"},
        {"kind": "status_change", "step": 4, "previous": "STABLE", "status": "WARNING", "reasons": ["loop rate 30%"]},
    ]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    if finished:
        time.sleep(0.01)
        (run / "results.json").write_text(json.dumps({"run": {"name": "toy", "model": "tiny-random", "status": "completed",
                                                              "steps": 8, "total_steps": 10},
                                                      "train": {"final_loss": 2.4, "eval_loss": 2.5}}))
    return run


def _text(renderable) -> str:
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_sparkline():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([1.0, 1.0, 1.0]) == "▄▄▄"
    assert sparkline([0.0, float("nan"), 1.0, float("inf")]) == "▁!█!"
    assert sparkline([0, 1, 2, 3], width=2) == "▁█"  # the most recent values
    assert sparkline([]) == "" and sparkline([None, 2.0]) == "▄"


def test_state_from_run_files(tmp_path):
    state = load_run_state(make_run(tmp_path))
    assert (state.name, state.total_steps, state.step) == ("toy", 10, 8)
    assert state.health["status"] == "WARNING" and state.probe["loop_rate"] == 0.3
    assert (state.detections, state.actions, state.rolled_back_lines) == (2, 2, 2)
    # The undone steps (loss 9.0 at step 5) stay out of the sparkline; the skipped NaN step stays in.
    assert [s for s, _ in state.losses] == [1, 2, 3, 4, 5, 6, 7, 8] and 9.0 not in [v for _, v in state.losses]
    assert any(kind == "rollback" and "step-4" in text for _, kind, text in state.recent)
    assert sparkline([v for _, v in state.losses]).endswith("!")


def test_live_rollback_prunes_undone_steps():
    state = DashboardState(name="live", total_steps=10)
    for s in range(1, 7):
        state.on_event(Event("step", s, {"loss": 1.0 / s, "grad_norm": 1.0}))
    state.on_event(Event("rollback", 4, {"checkpoint": "step-4"}))
    assert [s for s, _ in state.losses] == [1, 2, 3, 4] and state.step == 4


def test_render_text(tmp_path):
    state = load_run_state(make_run(tmp_path))
    text = _text(render(state))
    for expected in ("toy", "step 8/10", "WARNING", "spectral entropy falling", "loop_rate", "danger",
                     "warning 0.1", "geometric", "rollback", "detections 2, actions 2", "loop rate 30.0%"):
        assert expected in text, expected
    assert sparkline([v for _, v in state.losses]) in text
    empty = _text(render(DashboardState()))
    assert "no health check yet" in empty and "no events yet" in empty


def test_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(NotARun, match="config.yaml"):
            load_run_state(target)
        with pytest.raises(NotARun, match="config.yaml"):
            watch_run(target, follow=False, console=Console(file=io.StringIO()))
        with pytest.raises(NotARun, match="config.yaml"):
            write_run_report(target)


def test_watch_snapshot_and_follow_finished_run(tmp_path):
    run = make_run(tmp_path, finished=True)
    out = io.StringIO()
    state = watch_run(run, follow=False, console=Console(file=out, width=120))
    assert state.step == 8 and "WARNING" in out.getvalue()
    t0 = time.monotonic()
    state = watch_run(run, follow=True, interval=0.05, console=Console(file=io.StringIO(), width=120))
    assert state.step == 8 and state.detections == 2 and time.monotonic() - t0 < 5


def test_watch_follow_tails_and_handles_rewrites(tmp_path, monkeypatch):
    """Lines appended, a torn line completed and a file rewritten between polls are all picked up."""
    run = make_run(tmp_path)
    polls = iter(range(100))

    def fake_sleep(_):
        n = next(polls)
        if n == 0:  # complete the torn line and append one more
            with (run / "metrics.jsonl").open("a") as f:
                f.write('ss": 2.2, "lr": 0.001}\n' + json.dumps(_metric(10, 2.1)) + "\n")
        elif n == 1:  # a rewrite (as by a rollback): a new file, marked lines
            lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            for m in lines:
                m["rolled_back"] = m.get("rolled_back") or m["step"] > 9
            tmp = run / "metrics.tmp"
            tmp.write_text("".join(json.dumps(m) + "\n" for m in lines))
            tmp.replace(run / "metrics.jsonl")
        elif n == 2:
            (run / "results.json").write_text("{}")

    monkeypatch.setattr("slmlab.watch.dashboard.time.sleep", fake_sleep)
    state = watch_run(run, follow=True, interval=0.0, console=Console(file=io.StringIO()))
    assert state.step == 9 and state.rolled_back_lines == 3 and state.loss == 2.2


def test_run_report(tmp_path):
    run = make_run(tmp_path)
    path = write_run_report(run)
    assert path == run / "report.html"
    html = path.read_text()
    assert "<svg" in html and "unfinished" in html
    for title in ("loss", "grad norm", "learning rate", "spectral entropy", "phi proximity", "dominant ratio",
                  "probe: loop and collapse rate", "rolled back"):
        assert f">{title}<" in html or f"— {title}<" in html, title
    loss_chart = re.search(r"<svg[^>]*aria-label='loss'.*?</svg>", html).group(0)
    assert loss_chart.count("<title>rollback @") == 1
    assert loss_chart.count("class='marker'") == 5  # 2 detections, rollback, skip, status change
    assert "nan" not in loss_chart.lower().replace("nonfinite", "")
    write_run_report(make_run(tmp_path / "b", finished=True), tmp_path / "out.html")
    assert "completed" in (tmp_path / "out.html").read_text()


def test_dashboard_context_manager():
    out = io.StringIO()
    with Dashboard("off", total_steps=5, enabled=False, console=Console(file=out)) as dash:
        dash.on_event(Event("step", 1, {"loss": 1.0}))
    assert out.getvalue() == "" and dash.state.step == 0

    out = io.StringIO()
    with Dashboard("live", total_steps=5, console=Console(file=out, force_terminal=False, width=120)) as dash:
        bus = EventBus([dash])
        for s in range(1, 6):
            bus.publish("step", s, loss=2.0 / s, lr=1e-3, grad_norm=0.5, tokens_per_s=100.0, elapsed=s)
        bus.publish("health", 5, **HEALTH)
        bus.publish("detection", 5, detector="spike", value=9.0, z=6.1)
    assert dash.state.step == 5 and dash.state.detections == 1
    assert "WARNING" in out.getvalue() and "spike" in out.getvalue()
