"""`make demo` / `slmlab quickstart`: data → before → train → after → report, end to end.

Generates v6-golden, measures the base model on held-out puzzles (next to chance and
the majority class, with confidence intervals) and maps its basins, fine-tunes a LoRA
within a time budget, measures again, and writes an offline HTML report. The numbers
are whatever they are: the report states them, it does not tune them.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from slmlab.compare.stats import wilson_interval
from slmlab.console import Table


@dataclass
class PuzzleAccuracy:
    n: int
    correct: int
    no_glyph: int
    chance: float  # expected accuracy of a uniform guess among the answers present
    majority: float  # accuracy of always answering the most common held-out glyph
    tokens_per_second: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


def held_out_puzzles(test_records: list[dict], n: int) -> list[dict]:
    """The first ``n`` pure-logic test records (the test file is already in a seeded random order)."""
    return [r for r in test_records if r.get("render") == "pure"][:n]


def evaluate_puzzles(model, tokenizer, records: list[dict], template: str = "v6", max_new_tokens: int = 8):
    """Greedy answers to puzzles; the first certainty glyph in the output is the answer."""
    from slmlab.data.glyphs import first_glyph
    from slmlab.data.roles import load_template, render_prompt
    from slmlab.evaluate.generate import generate

    tmpl = load_template(template)
    prompts = [render_prompt(r["input"], tmpl, tokenizer) for r in records]
    batch = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    rows = []
    for rec, gen in zip(records, batch.generations):
        guess = first_glyph(gen.text)
        rows.append({"input": rec["input"], "answer": rec["output"], "generation": gen.text, "guess": guess, "correct": guess == rec["output"]})
    answers = Counter(r["output"] for r in records)
    n = len(records)
    acc = PuzzleAccuracy(
        n=n,
        correct=sum(r["correct"] for r in rows),
        no_glyph=sum(r["guess"] is None for r in rows),
        chance=1 / len(answers) if answers else 0.0,
        majority=max(answers.values()) / n if n else 0.0,
        tokens_per_second=batch.tokens_per_second,
    )
    return acc, rows


def _print_accuracy(console: Console, label: str, acc: PuzzleAccuracy) -> None:
    lo, hi = wilson_interval(acc.correct, acc.n)
    console.print(
        f"[bold]{label}[/bold]: accuracy {acc.correct}/{acc.n} = {acc.accuracy:.0%} (95% CI {lo:.0%}–{hi:.0%})   "
        f"chance (uniform guess) {acc.chance:.0%}   always-majority {acc.majority:.0%}   "
        f"no glyph in output {acc.no_glyph}/{acc.n}   {acc.tokens_per_second:.1f} tokens/s"
    )


def _answers_table(title: str, rows: list[dict], shown: int = 20) -> Table:
    table = Table(title=f"{title} (first {min(shown, len(rows))} of {len(rows)})")
    for col in ("puzzle", "expected", "model said", "ok"):
        table.add_column(col)
    for r in rows[:shown]:
        table.add_row(r["input"], r["answer"], repr(r["generation"][:30]), "✓" if r["correct"] else "✗")
    return table


def demo_train_config(out: Path, minutes: float, model: str):
    """The quickstart settings (examples/configs/quickstart.yaml) with the demo's time budget."""
    from slmlab.train.config import load_train_config

    return load_train_config(data={
        "name": "train", "model": model, "seed": 0, "output_dir": str(out),
        "adapter": {"kind": "lora", "r": 32, "alpha": 64, "dropout": 0.05},
        "data": {"recipe": "v6-golden", "count": 1200, "format": "v6", "max_length": 128},
        "optimizer": {"name": "adamw", "lr": 2e-4},
        "schedule": {"kind": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.1},
        "batch_size": 4, "grad_accum": 2, "epochs": 1, "time_budget": f"{minutes}m", "save_every": 25,
    })


def _basin_map(model, tok, spec: str, out: Path, console: Console) -> dict:
    from slmlab.evaluate.basin_map import MapSettings, map_basins

    settings = MapSettings(samples=1, max_new_tokens=48, temperature=0.7, seed=0)
    result = map_basins(spec, settings=settings, out=out, model=model, tokenizer=tok)
    dist = "  ".join(f"{b} {r:.0%}" for b, r in result["overall"].items())
    console.print(f"basin map over {result['n_generations']} generations (49-prompt corpus): {dist}")
    return result


def run_demo(out: Path, *, n_eval: int = 60, model: str = "smollm2-135m", train_minutes: float = 4.0,
             basins: bool = True, console: Console | None = None) -> dict:
    """Generate v6-golden; measure the base model (puzzles, basin map); fine-tune briefly with LoRA; measure again; report."""
    import shutil

    from slmlab.console import print_dataset_summary
    from slmlab.data.recipes import generate_dataset
    from slmlab.io import atomic_write_text
    from slmlab.models import load

    console = console or Console()
    console.rule("1. Generate the v6-golden dataset (every answer computed by the solver)")
    result = generate_dataset("v6-golden", out / "data")
    print_dataset_summary(result.manifest)
    for rec in result.train[:3]:
        console.print(f"  [dim]{rec['category']:>6}[/dim]  {rec['input'][:90]!r} → {rec['output']!r}", highlight=False)

    console.rule(f"2. Ask {model} {n_eval} held-out puzzles before training (v6 format 'Q: …\\nA:')")
    mdl, tok = load(model)
    puzzles = held_out_puzzles(result.test, n_eval)
    before, rows = evaluate_puzzles(mdl, tok, puzzles)
    console.print(_answers_table(f"{model} before training", rows))
    _print_accuracy(console, "before", before)
    report = {"model": model, "dataset": result.manifest["content_hash"],
              "before": {**asdict(before), "accuracy": before.accuracy, "samples": rows}}
    if basins:
        report["before"]["basins"] = _basin_map(mdl, tok, model, out / "basins-before.json", console)["overall"]

    trained = None
    if train_minutes > 0:
        console.rule(f"3. LoRA fine-tune on v6-golden for at most {train_minutes:g} minutes (CPU)")
        from peft import PeftModel

        from slmlab.train.loop import run

        shutil.rmtree(out / "train", ignore_errors=True)  # the demo's own run: start it afresh
        trained = run(demo_train_config(out, train_minutes, model))
        console.print(f"{trained.status}: {trained.steps} steps, loss {trained.losses[0]:.3f} → {trained.losses[-1]:.3f}, "
                      f"held-out loss {trained.eval_loss:.3f}; run dir {trained.run_dir}")
        console.rule("4. The same held-out puzzles after training")
        tuned = PeftModel.from_pretrained(load(model)[0], str(trained.run_dir / "adapter")).eval()
        after, rows = evaluate_puzzles(tuned, tok, puzzles)
        console.print(_answers_table(f"{model} + LoRA after {trained.steps} steps", rows))
        _print_accuracy(console, "before", before)
        _print_accuracy(console, "after ", after)
        console.print(f"[dim]{n_eval} questions give intervals of about ±{100 * 1.96 * (0.25 / n_eval) ** 0.5:.0f} points: "
                      "compare runs with several seeds before believing a small difference.[/dim]")
        report["after"] = {**asdict(after), "accuracy": after.accuracy, "steps": trained.steps, "samples": rows}
        if basins:
            report["after"]["basins"] = _basin_map(tuned, tok, model, out / "basins-after.json", console)["overall"]

    atomic_write_text(out / "demo.json", json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    html = write_demo_report(out / "report.html", report, trained.run_dir if trained else None)
    console.print(f"wrote {out}/demo.json and {html} (open it in a browser)")
    return report


def write_demo_report(path: Path, report: dict, run_dir: Path | None) -> Path:
    """Before/after table, loss curve and basin distributions in one offline HTML file."""
    from slmlab.evaluate.report import line_chart, stacked_bars, table, write_report

    def row(name: str, r: dict) -> list:
        lo, hi = wilson_interval(r["correct"], r["n"])
        return [name, f"{r['accuracy']:.0%}", f"{lo:.0%}–{hi:.0%}", f"{r['no_glyph']}/{r['n']}", f"{r['chance']:.0%}", f"{r['majority']:.0%}"]

    rows = [row("before", report["before"])] + ([row(f"after ({report['after']['steps']} steps)", report["after"])] if "after" in report else [])
    sections = [
        f"<p class='note'>Model {report['model']}; held-out pure-logic puzzles from v6-golden (dataset hash {report['dataset'][:12]}). "
        "Accuracy = the first certainty glyph in the output equals the solver's answer.</p>",
        "<h2>Held-out puzzles</h2>",
        table(["", "accuracy", "95% CI", "no glyph", "chance", "always-majority"], rows),
    ]
    if run_dir is not None and (run_dir / "metrics.jsonl").exists():
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
        series = {"training loss": [(m["step"], m["loss"]) for m in lines]}
        evals = [(m["step"], m["eval_loss"]) for m in lines if m.get("eval_loss") is not None]
        if evals:
            series["held-out loss"] = evals
        sections += ["<h2>Training</h2>", line_chart(series, "loss by optimizer step")]
    dists = {k: report[k]["basins"] for k in ("before", "after") if k in report and "basins" in report[k]}
    if dists:
        sections += ["<h2>Basins on the 49-prompt corpus</h2>", stacked_bars(dists, "share of generations per basin"),
                     "<p class='note'>CREATIVE = healthy; SEMANTIC_LOOP = repeats phrases or ideas; TOKEN_COLLAPSE = empty "
                     "or a token/character run; UNKNOWN = too short to call. See docs/basins.md.</p>"]
    for k in ("before", "after"):
        if k in report:
            sections += [f"<h2>Answers {k}</h2>", table(["puzzle", "expected", "model said", "ok"],
                         [[r["input"], r["answer"], r["generation"][:40], "✓" if r["correct"] else "✗"] for r in report[k]["samples"]])]
    return write_report(path, "slmlab quickstart: before and after", sections)
