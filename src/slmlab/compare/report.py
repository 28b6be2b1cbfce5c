"""A comparison written out: plain-text table, JSON, CSV, Markdown, self-contained HTML, best-seed exports."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from html import escape
from pathlib import Path
from typing import Any

from slmlab.compare.compare import Comparison, costs, rows
from slmlab.evaluate.report import (
    SERIES_COLOURS,
    line_chart,
    table,
    write_report,
    x_ticks,
)
from slmlab.io import atomic_write_text, read_jsonl_tolerant


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, (tuple, list)):
        return "[" + ", ".join(fmt(v, digits) for v in x) + "]"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if math.isfinite(x) else str(x)
    return str(x)


TEXT_COLUMNS = ("cell", "metric", "n", "mean", "95% CI", "IQM", "Δ vs baseline", "Δ 95% CI", "P(improve)", "verdict")


def text_rows(comp: Comparison) -> list[list[str]]:
    """One row per (cell, metric) with the cell's name and its verdict, so the table greps."""
    return [[r["cell"], r["metric"], str(r["n"]), fmt(r["mean"]), fmt(r["ci"]), fmt(r["iqm"]), fmt(r["delta"]),
             fmt(r["delta_ci"]), fmt(r["p_improvement"], 2), r["verdict"]] for r in rows(comp)]


def to_json(comp: Comparison) -> dict[str, Any]:
    return {
        "name": comp.name, "baseline": comp.baseline,
        "primary": vars(comp.primary) if comp.primary else None,
        "cells": [{"name": c.name, "coords": c.coords, "seeds": sorted(c.runs), "values": c.values} for c in comp.cells],
        "summaries": {c: {m: s.to_dict() for m, s in ms.items()} for c, ms in comp.summaries.items()},
        "differences": {c: {m: d.to_dict() for m, d in ms.items()} for c, ms in comp.differences.items()},
        "verdicts": {c: {m: v.to_dict() for m, v in ms.items()} for c, ms in comp.verdicts.items()},
        "effects": comp.effects, "pareto": comp.pareto, "costs": costs(comp),
    }


def to_csv(comp: Comparison) -> str:
    buf = io.StringIO()
    fields = ["cell", "metric", "n", "mean", "ci_low", "ci_high", "iqm", "std", "delta", "delta_ci_low",
              "delta_ci_high", "p_improvement", "verdict"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows(comp):
        ci, dci = r["ci"] or (None, None), r["delta_ci"] or (None, None)
        writer.writerow({"cell": r["cell"], "metric": r["metric"], "n": r["n"], "mean": r["mean"], "ci_low": ci[0],
                         "ci_high": ci[1], "iqm": r["iqm"], "std": r["std"], "delta": r["delta"],
                         "delta_ci_low": dci[0], "delta_ci_high": dci[1], "p_improvement": r["p_improvement"],
                         "verdict": r["verdict"]})
    return buf.getvalue()


def to_markdown(comp: Comparison) -> str:
    lines = [f"## {comp.name}", ""]
    if comp.primary is not None:
        p = comp.primary
        lines += [f"Primary metric `{p.metric}` ({'higher' if p.higher_is_better else 'lower'} is better), minimum "
                  f"effect {p.minimum_effect}; baseline `{comp.baseline}`; 95% t-intervals over seeds; verdicts "
                  "Holm-corrected across cells.", ""]
    lines += ["| " + " | ".join(TEXT_COLUMNS) + " |", "|" + "---|" * len(TEXT_COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in text_rows(comp)]
    lines += ["", "| cell | train s | tokens | peak RSS MB | Pareto |", "|---|---|---|---|---|"]
    lines += [f"| {c['cell']} | {fmt(c.get('train_seconds'), 3)} | {fmt(c.get('tokens_seen'), 6)} | "
              f"{fmt(c.get('peak_rss_mb'), 4)} | {'yes' if c['pareto'] else ''} |" for c in costs(comp)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- HTML


def loss_bands(comp: Comparison) -> dict[str, list[tuple[float, float]]]:
    """Per cell: mean training loss by step over seeds, and the min/max envelope as two more series."""
    series: dict[str, list[tuple[float, float]]] = {}
    for cell in comp.cells:
        by_step: dict[int, list[float]] = {}
        for run_dir in cell.runs.values():
            for rec in read_jsonl_tolerant(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []:
                if isinstance(rec.get("loss"), (int, float)) and math.isfinite(rec["loss"]) and "step" in rec:
                    by_step.setdefault(int(rec["step"]), []).append(float(rec["loss"]))
        steps = sorted(by_step)
        series[cell.name] = [(s, sum(by_step[s]) / len(by_step[s])) for s in steps]
        series[f"{cell.name} (min–max over seeds)"] = [(s, min(by_step[s])) for s in steps] + \
            [(s, max(by_step[s])) for s in reversed(steps)]
    return series


class Scale:
    """Data → SVG coordinates for one chart."""

    def __init__(self, pts: list[tuple[float, float]], width: int = 880, height: int = 260):
        self.x0, self.x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        self.y0, self.y1 = min(p[1] for p in pts), max(p[1] for p in pts)
        self.x1 = self.x1 if self.x1 > self.x0 else self.x0 + 1
        self.y1 = self.y1 if self.y1 > self.y0 else self.y0 + 1
        self.width, self.height, self.left, self.right, self.top, self.bottom = width, height, 56, 200, 28, 32

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (self.width - self.left - self.right)

    def y(self, v: float) -> float:
        return self.height - self.bottom - (v - self.y0) / (self.y1 - self.y0) * (self.height - self.top - self.bottom)

    def points(self, pts: list[tuple[float, float]]) -> str:
        return " ".join(f"{self.x(a):.1f},{self.y(b):.1f}" for a, b in pts)


def band_chart(bands: dict[str, list[tuple[float, float]]], title: str) -> str:
    """Mean lines with shaded seed envelopes (a polygon per cell under its line), axis ticks, legend."""
    means = {k: v for k, v in bands.items() if not k.endswith("over seeds)") and v}
    pts = [p for v in bands.values() for p in v]
    if not means or not pts:
        return f"<p class='note'>{escape(title)}: no data</p>"
    sc = Scale(pts)
    parts = [f"<svg width='{sc.width}' height='{sc.height}' role='img' aria-label='{escape(title)}'>",
             f"<text x='{sc.left}' y='18' font-size='14' font-weight='bold'>{escape(title)}</text>"]
    for i in range(5):
        yv = sc.y0 + (sc.y1 - sc.y0) * i / 4
        parts.append(f"<line x1='{sc.left}' x2='{sc.width - sc.right}' y1='{sc.y(yv):.1f}' y2='{sc.y(yv):.1f}' "
                     f"stroke='#eee'/><text x='{sc.left - 6}' y='{sc.y(yv) + 4:.1f}' font-size='11' "
                     f"text-anchor='end'>{yv:.3g}</text>")
    for xv, label in x_ticks(sc.x0, sc.x1, all(float(p[0]).is_integer() for p in pts)):
        parts.append(f"<text x='{sc.x(xv):.1f}' y='{sc.height - 12}' font-size='11' text-anchor='middle'>{label}</text>")
    for k, (name, line) in enumerate(means.items()):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        env = bands.get(f"{name} (min–max over seeds)", [])
        if len(env) >= 3:
            parts.append(f"<polygon class='band' points='{sc.points(env)}' fill='{colour}' opacity='.18'/>")
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.8' points='{sc.points(line)}'/>"
                     f"<text x='{sc.width - sc.right + 8}' y='{sc.top + 14 * k + 4}' font-size='12' "
                     f"fill='{colour}'>— {escape(name[:28])}</text>")
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(comp: Comparison, metric: str) -> str:
    """The metric's mean per cell with its 95% CI as a whisker; the baseline bar is darker."""
    cells = [(c.name, comp.summaries[c.name][metric]) for c in comp.cells]
    shown = [(n, s) for n, s in cells if s.mean is not None]
    if not shown:
        return f"<p class='note'>{escape(metric)}: no data</p>"
    lows = [s.ci[0] if s.ci else s.mean for _, s in shown] + [0.0]
    highs = [s.ci[1] if s.ci else s.mean for _, s in shown] + [0.0]
    v0, v1 = min(lows), max(highs)
    v1 = v1 if v1 > v0 else v0 + 1
    row_h, left, width = 24, 260, 880
    height = 40 + row_h * len(shown)
    sx = (width - left - 30) / (v1 - v0)
    parts = [f"<svg width='{width}' height='{height}' role='img' aria-label='{escape(metric)}'>",
             f"<text x='8' y='18' font-size='14' font-weight='bold'>{escape(metric)} (mean, 95% CI)</text>"]
    for i, (name, s) in enumerate(shown):
        y = 30 + i * row_h
        x_zero, x_mean = left + (0 - v0) * sx, left + (s.mean - v0) * sx
        colour = "#08519c" if name == comp.baseline else "#6baed6"
        parts.append(f"<text x='{left - 8}' y='{y + 14}' font-size='12' text-anchor='end'>{escape(name[:36])}</text>"
                     f"<rect class='bar' x='{min(x_zero, x_mean):.1f}' y='{y + 3}' width='{max(abs(x_mean - x_zero), 1):.1f}' "
                     f"height='{row_h - 8}' fill='{colour}'><title>{escape(name)}: {fmt(s.mean)}</title></rect>")
        if s.ci:
            a, b = left + (s.ci[0] - v0) * sx, left + (s.ci[1] - v0) * sx
            parts.append(f"<line x1='{a:.1f}' x2='{b:.1f}' y1='{y + 11}' y2='{y + 11}' stroke='#222' stroke-width='1.5'/>")
        parts.append(f"<text x='{max(x_mean, x_zero) + 4:.1f}' y='{y + 14}' font-size='11'>{fmt(s.mean, 3)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def pareto_chart(comp: Comparison) -> str:
    if comp.primary is None:
        return ""
    m = comp.primary.metric
    pts = [(c.name, comp.summaries[c.name].get("train_seconds"), comp.summaries[c.name][m]) for c in comp.cells]
    pts = [(n, t.mean, v.mean) for n, t, v in pts if t is not None and t.mean is not None and v.mean is not None]
    if not pts:
        return ""
    front = {n: [(t, v)] for n, t, v in pts if n in comp.pareto}
    others = {n: [(t, v)] for n, t, v in pts if n not in comp.pareto}
    series = {**{f"{n} (Pareto)": p for n, p in front.items()}, **others}
    return line_chart(series, f"cost (train seconds, x) vs {m} (y)", scatter=tuple(series))


def to_html(comp: Comparison, path: Path) -> Path:
    sections = []
    if comp.primary is not None:
        p = comp.primary
        sections.append(f"<p class='note'>Primary metric <b>{escape(p.metric)}</b> "
                        f"({'higher' if p.higher_is_better else 'lower'} is better), minimum effect {p.minimum_effect}; "
                        f"baseline <b>{escape(str(comp.baseline))}</b>. Intervals are 95% t-intervals over seeds; "
                        "differences are paired by seed; verdicts are Holm-corrected across cells.</p>")
    sections.append("<h2>Verdicts</h2>" + table(list(TEXT_COLUMNS), text_rows(comp)))
    sections.append("<h2>Training loss (mean over seeds, band = min–max)</h2>" +
                    band_chart(loss_bands(comp), "training loss by step"))
    for metric in dict.fromkeys(([comp.primary.metric] if comp.primary else []) + ["eval_loss"]):  # once each
        if metric in comp.metrics:
            sections.append(f"<h2>{escape(metric)}</h2>" + bar_chart(comp, metric))
    sections.append("<h2>Cost</h2>" + table(["cell", "train s", "tokens", "peak RSS MB", "Pareto"],
                                            [[c["cell"], fmt(c.get("train_seconds"), 3), fmt(c.get("tokens_seen"), 6),
                                              fmt(c.get("peak_rss_mb"), 4), "yes" if c["pareto"] else ""]
                                             for c in costs(comp)]) + pareto_chart(comp))
    for metric, eff in comp.effects.items():
        if eff is None:
            continue
        anova = eff.get("anova", {})
        if anova.get("rows"):
            body = [[r["source"], fmt(r["ss"]), r["df"], fmt(r.get("f")), fmt(r.get("p"))] for r in anova["rows"]]
            sections.append(f"<h2>Grid effects on {escape(metric)} ({escape(', '.join(eff['factors']))})</h2>"
                            + table(["source", "SS", "df", "F", "p"], body))
        else:
            sections.append(f"<p class='note'>Grid effects on {escape(metric)}: {escape(anova.get('reason', ''))}</p>")
    return write_report(path, f"slmlab compare: {comp.name}", sections)


def write_outputs(comp: Comparison, out_dir: Path | None, *, html: bool, csv_: bool, markdown: bool) -> list[Path]:
    written = []
    if out_dir is None:
        return written
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "compare.json", json.dumps(to_json(comp), indent=2, default=str))
    written.append(out_dir / "compare.json")
    if html:
        written.append(to_html(comp, out_dir / "compare.html"))
    if csv_:
        atomic_write_text(out_dir / "compare.csv", to_csv(comp))
        written.append(out_dir / "compare.csv")
    if markdown:
        atomic_write_text(out_dir / "compare.md", to_markdown(comp))
        written.append(out_dir / "compare.md")
    return written


def export_best(comp: Comparison, out_dir: Path) -> dict[str, str]:
    """``exports/<cell>/``: the adapter (or model) of each cell's best seed by the primary metric."""
    if comp.primary is None:
        return {}
    m, sign = comp.primary.metric, (1 if comp.primary.higher_is_better else -1)
    exported = {}
    for cell in comp.cells:
        scored = [(sign * v, seed) for seed, v in cell.values.get(m, {}).items() if isinstance(v, (int, float))
                  and math.isfinite(v)]
        if not scored:
            continue
        seed = max(scored)[1]
        src = next((cell.runs[seed] / d for d in ("adapter", "model") if (cell.runs[seed] / d).is_dir()), None)
        if src is None:
            continue
        dest = out_dir / "exports" / "".join(ch if ch.isalnum() or ch in "._=,-" else "_" for ch in cell.name)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)
        exported[cell.name] = str(dest)
    return exported
