"""`make demo`: build the v6-golden dataset and measure the base model on held-out puzzles.

This is the honest "before" picture: what the untrained model does on puzzles it
will later be trained for, next to what guessing would score.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table


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


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion: honest error bars for 20 questions."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _answers_table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title)
    for col in ("puzzle", "expected", "model said", "ok"):
        table.add_column(col)
    for r in rows:
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


def run_demo(out: Path, *, n_eval: int = 20, model: str = "smollm2-135m", train_minutes: float = 4.0,
             console: Console | None = None) -> dict:
    """Generate v6-golden, measure the base model, fine-tune it briefly with LoRA, measure again."""
    import shutil

    from slmlab.cli import print_dataset_summary
    from slmlab.data.formats import atomic_write_text
    from slmlab.data.recipes import generate_dataset
    from slmlab.models import load

    console = console or Console()
    console.rule("1. Generate the v6-golden dataset (every answer computed by the solver)")
    result = generate_dataset("v6-golden", out / "data")
    print_dataset_summary(result.manifest)
    for rec in result.train[:3]:
        console.print(f"  [dim]{rec['category']:>6}[/dim]  {rec['input'][:90]!r} → {rec['output']!r}", highlight=False)

    console.rule(f"2. Ask {model} {n_eval} held-out puzzles before training (v6 format 'Q: …\nA:')")
    mdl, tok = load(model)
    puzzles = held_out_puzzles(result.test, n_eval)
    before, rows = evaluate_puzzles(mdl, tok, puzzles)
    console.print(_answers_table(f"{model} before training", rows))
    _print_accuracy(console, "before", before)
    report = {"model": model, "before": {**asdict(before), "accuracy": before.accuracy, "samples": rows}}

    if train_minutes > 0:
        console.rule(f"3. LoRA fine-tune on v6-golden for at most {train_minutes:g} minutes (CPU)")
        from peft import PeftModel

        from slmlab.train.loop import run

        shutil.rmtree(out / "train", ignore_errors=True)  # the demo's own run: start it afresh
        trained = run(demo_train_config(out, train_minutes, model))
        console.print(f"{trained.status}: {trained.steps} steps, loss {trained.losses[0]:.3f} → {trained.losses[-1]:.3f}, "
                      f"held-out loss {trained.eval_loss:.3f}; run dir {trained.run_dir}")
        console.rule("4. The same held-out puzzles after training")
        tuned = PeftModel.from_pretrained(load(model)[0], str(trained.run_dir / "adapter"))
        after, rows = evaluate_puzzles(tuned, tok, puzzles)
        console.print(_answers_table(f"{model} + LoRA after {trained.steps} steps", rows))
        _print_accuracy(console, "before", before)
        _print_accuracy(console, "after ", after)
        console.print("[dim]20 questions give wide intervals: compare runs with several seeds before believing a difference.[/dim]")
        report["after"] = {**asdict(after), "accuracy": after.accuracy, "steps": trained.steps, "samples": rows}

    atomic_write_text(out / "demo.json", json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    console.print(f"wrote {out}/demo.json")
    return report
