"""A run's HTML report: curves with the run's events drawn on them, so cause and effect line up.

Reads only the run directory (config.yaml, metrics.jsonl, events.jsonl, results.json), so it
works on a finished run, a crashed one, or one still training.
"""

from __future__ import annotations

import math
from collections import Counter
from html import escape
from pathlib import Path

from slmlab.evaluate.report import line_chart, table, write_report
from slmlab.io import read_jsonl_tolerant
from slmlab.watch.dashboard import check_run_dir, describe, fmt, num, read_config, read_results
from slmlab.watch.events import ACTION_KINDS, MARKER_KINDS, Event

MARKER_COLOURS = {
    "detection": "#e67e22", "skip": "#7f8c8d", "cooldown": "#3498db", "rollback": "#c0392b",
    "light_sleep": "#8e44ad", "deep_sleep": "#4a235a", "mushroom": "#16a085", "pause": "#000000",
    "phase": "#2c3e50", "regime_change": "#d35400", "status_change": "#b7950b",
}
SPECTRAL = ("spectral_entropy", "phi_proximity", "dominant_ratio", "phi")
ROUTING = ("routing_entropy", "routing_max_share", "routing_min_share", "kappa")  # constellation models only
MAX_EVENT_ROWS = 500
MAX_SAMPLE_PROBES = 6  # the report shows the samples of the first, the last and evenly spaced probes between


def _finite(x: object) -> float | None:
    v = num(x)
    return v if v is not None and math.isfinite(v) else None


def _series(points: list[tuple[int, object]]) -> list[tuple[float, float]]:
    """Finite points only: a NaN has no place on an axis (the detection marker shows it instead)."""
    return [(float(s), v) for s, x in points if (v := _finite(x)) is not None]


def write_run_report(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write ``run_dir/report.html`` (or ``path``) and return where it went."""
    run_dir = check_run_dir(run_dir)
    config, results = read_config(run_dir), read_results(run_dir) or {}
    metrics = [m for m in read_jsonl_tolerant(run_dir / "metrics.jsonl") if isinstance(m, dict) and "step" in m]
    events = []
    for record in read_jsonl_tolerant(run_dir / "events.jsonl"):
        try:
            events.append(Event.from_json(record))
        except (KeyError, TypeError, ValueError):
            continue
    run, train = results.get("run") or {}, results.get("train") or {}
    kept = [m for m in metrics if not m.get("rolled_back")]
    undone = [m for m in metrics if m.get("rolled_back")]
    counts = Counter(e.kind for e in events)
    health = [e for e in events if e.kind == "health"]
    probes = [e for e in events if e.kind == "probe"]
    markers = [(float(e.step), e.kind, MARKER_COLOURS.get(e.kind, "#999")) for e in events if e.kind in MARKER_KINDS]

    name = str(run.get("name") or config.get("name") or run_dir.name)
    last_step = kept[-1]["step"] if kept else 0
    total = run.get("total_steps") or config.get("max_steps") or "?"
    final_loss = train.get("final_loss", kept[-1].get("loss") if kept else None)
    eval_losses = [m["eval_loss"] for m in kept if m.get("eval_loss") is not None]
    eval_loss = train.get("eval_loss", eval_losses[-1] if eval_losses else None)
    nonfinite = sum(1 for m in kept if num(m.get("loss")) is not None and _finite(m.get("loss")) is None)
    actions = ", ".join(f"{k} {counts[k]}" for k in ACTION_KINDS if counts[k]) or "none"
    summary = [
        ["run", name], ["model", run.get("model") or config.get("model") or "?"],
        ["status", run.get("status") or "unfinished (no results.json)"],
        ["steps", f"{run.get('steps', last_step)}/{total}"],
        ["final loss", fmt(final_loss)], ["eval loss", fmt(eval_loss)],
        ["detections", counts["detection"]], ["actions", actions],
        ["rolled-back steps", len(undone)], ["non-finite losses", nonfinite],
        ["last health status", health[-1].data.get("status", "?") if health else "no health check"],
    ]

    loss = {"loss": _series([(m["step"], m.get("loss")) for m in kept])}
    if undone:
        loss["rolled back"] = _series([(m["step"], m.get("loss")) for m in undone])
    if eval_losses:
        loss["eval loss"] = _series([(m["step"], m.get("eval_loss")) for m in kept])
    elif counts["eval"]:
        loss["eval loss"] = _series([(e.step, e.data.get("eval_loss")) for e in events if e.kind == "eval"])
    bpb = _series([(e.step, e.data.get("eval_bpb")) for e in events if e.kind == "eval"])
    charts = [line_chart(loss, "loss", markers=markers, scatter=("rolled back",)),
              *([line_chart({"eval bits per byte": bpb}, "held-out bits per byte", height=200, markers=markers)] if bpb else []),
              line_chart({"grad norm": _series([(m["step"], m.get("grad_norm")) for m in kept])}, "grad norm",
                         height=200, markers=markers),
              line_chart({"lr": _series([(m["step"], m.get("lr")) for m in kept])}, "learning rate",
                         height=200, markers=markers)]
    charts += _health_charts(health, probes, markers)

    legend = " ".join(f"<span style='color:{MARKER_COLOURS.get(k, '#999')}'>┆ {escape(k)}</span>"
                      for k in MARKER_KINDS if counts[k])
    shown = [e for e in events if e.kind not in ("health", "probe", "checkpoint", "checkpoint_confirmed")]
    rows = [[e.step, e.kind, describe(e)] for e in shown[:MAX_EVENT_ROWS]]
    more = f"<p class='note'>{len(shown) - MAX_EVENT_ROWS} more events in events.jsonl.</p>" if len(shown) > MAX_EVENT_ROWS else ""
    sections = ["<h2>Summary</h2>", table(["", ""], summary),
                "<h2>Curves</h2>", f"<p class='note'>Markers: {legend or 'no events'}</p>", *charts,
                *_samples_section(probes),
                "<h2>Events</h2>", table(["step", "kind", "evidence"], rows) if rows else "<p class='note'>No events.</p>", more]
    return write_report(Path(path) if path else run_dir / "report.html", f"Run report: {name}", sections)


def _health_charts(health: list[Event], probes: list[Event], markers: list) -> list[str]:
    """Charts from the monitor's events: Φ and the spectral metrics, a constellation's routing, probe rates and coherence."""
    charts: list[str] = []
    for metric in SPECTRAL:
        pts = _series([(e.step, e.data.get(metric) if metric == "phi" and "phi" in e.data
                        else (e.data.get("metrics") or {}).get(metric)) for e in health])
        if pts:
            charts.append(line_chart({metric: pts}, metric.replace("_", " "), height=180, markers=markers))
    routing = {k.replace("_", " "): pts for k in ROUTING
               if (pts := _series([(e.step, (e.data.get("metrics") or {}).get(k)) for e in health]))}
    if routing:
        charts.append(line_chart(routing, "constellation routing: entropy / ln K, largest and smallest share "
                                 "(since the previous check), κ", height=220, markers=markers))
    if probes:
        rates = {k.replace("_", " "): _series([(e.step, e.data.get(k)) for e in probes]) for k in ("loop_rate", "collapse_rate")}
        charts.append(line_chart(rates, "probe: loop and collapse rate", height=200, markers=markers))
        for keys, title in ((("coherence_cosine", "coherence_seq_rep_4"), "probe samples: sentence cosine and seq-rep-4"),
                            (("coherence_ppl",), "probe samples: perplexity under the coherence reference")):
            curves = {k.removeprefix("coherence_").replace("_", " "): pts for k in keys
                      if (pts := _series([(e.step, e.data.get(k)) for e in probes]))}
            if curves:
                charts.append(line_chart(curves, title, height=200, markers=markers))
    return charts


def _samples_section(probes: list[Event]) -> list[str]:
    """Each shown probe's greedy samples with their basin labels (probes record them from this version on)."""
    with_samples = [e for e in probes if e.data.get("samples")]
    if not with_samples:
        return []
    n, k = len(with_samples), min(len(with_samples), MAX_SAMPLE_PROBES)
    picks = sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})  # first and last always
    rows = [[e.step, s.get("basin", "?"), s.get("prompt", ""), s.get("text", "")]
            for e in (with_samples[i] for i in picks) for s in e.data["samples"]]
    note = f"<p class='note'>Greedy samples from the probe prompts at {len(picks)} of {n} probes, each with its basin label.</p>"
    return ["<h2>Samples</h2>", note, table(["step", "basin", "prompt", "sample"], rows, text=True)]
