"""The dream run's report: a table of rounds and inline SVG charts (failure rate, T, held-out accuracy).

``report.html`` is self-contained (no scripts, no network); ``rounds.svg`` is the main chart on
its own, for a README or a notebook. Both are rewritten after every round.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from slmlab.evaluate.report import line_chart, table, write_report
from slmlab.io import atomic_write_text


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "–" if x is None else format(x, fmt)


def rounds_chart(records: list[dict]) -> str:
    """Failure rate, sampling temperature and held-out accuracy (with its 95% interval) per round."""
    trained = [r for r in records if r["round"] > 0]
    series = {
        "held-out accuracy": [(r["round"], r["heldout"]["accuracy"]) for r in records],
        "accuracy 95% CI (low, high)": [(r["round"], y) for r in records for y in r["heldout"]["ci95"]],
        "failure rate (samples)": [(r["round"], r["failure_rate"]) for r in trained],
        "temperature T": [(r["round"], r["temperature"]) for r in trained],
    }
    return line_chart(series, "per round: held-out accuracy, failure rate of the samples, sampling temperature",
                      scatter=("accuracy 95% CI (low, high)",))


def write_dream_report(run_dir: Path, records: list[dict], config) -> Path:
    """Write ``run_dir/rounds.svg`` and ``run_dir/report.html``; returns the HTML path."""
    run_dir = Path(run_dir)
    chart = rounds_chart(records)
    atomic_write_text(run_dir / "rounds.svg", chart.replace("<svg ", "<svg xmlns='http://www.w3.org/2000/svg' ", 1))
    rows = []
    for r in records:
        h = r["heldout"]
        rows.append([
            r["round"], _num(r.get("temperature"), ".3g"), _pct(r.get("failure_rate")),
            "–" if r["round"] == 0 else f"{r['pairs']} ({r['pairs_chosen_by_model']} model-chosen)",
            r.get("steps", "–"), _num(r.get("loss")),
            f"{h['correct']}/{h['n']} = {h['accuracy']:.0%}", f"{h['ci95'][0]:.0%}–{h['ci95'][1]:.0%}",
            h["no_glyph"], _num(r["next_temperature"], ".3g"),
        ])
    losses = [(r["round"], r["loss"]) for r in records if r.get("loss") is not None]
    t = config.temperature
    sections = [
        (f"<p class='note'>Model {escape(config.model)}; prompts from recipe {escape(config.prompts.recipe)} "
        f"(seed {config.seed}); objective {escape(config.objective.kind)}; {config.prompts.per_round} prompts × "
        f"{config.sampling.samples_per_prompt} samples per round. Round 0 is the starting model. Held-out accuracy: "
        f"greedy answers to {records[0]['heldout']['n']} test-split puzzles, graded by the first certainty glyph "
        "(Wilson 95% interval). Pairs: a right sample (else the solver's answer) over each wrong one.</p>"),
        "<h2>Rounds</h2>",
        table(["round", "T", "failure rate", "pairs", "steps", "loss", "held-out accuracy", "95% CI", "no glyph",
               "next T"], rows),
        chart,
        (f"<p class='note'>Temperature rule: failure rate below {t.band[0]:g} → T × {t.factor:g}; above "
        f"{t.band[1]:g} → T ÷ {t.factor:g}; T kept within [{t.min:g}, {t.max:g}].</p>"),
    ]
    if losses:
        sections += ["<h2>Training</h2>", line_chart({"mean loss of the round": losses}, "preference loss by round")]
    return write_report(run_dir / "report.html", f"Dream run {config.name}", sections)
