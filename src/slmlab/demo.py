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


def run_demo(out: Path, *, n_eval: int = 20, model: str = "smollm2-135m", console: Console | None = None) -> PuzzleAccuracy:
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

    console.rule(f"2. Load {model} and ask it {n_eval} held-out puzzles (v6 format 'Q: …\\nA:')")
    mdl, tok = load(model)
    puzzles = held_out_puzzles(result.test, n_eval)
    acc, rows = evaluate_puzzles(mdl, tok, puzzles)
    table = Table(title=f"{model} before training")
    for col in ("puzzle", "expected", "model said", "ok"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["input"], r["answer"], repr(r["generation"][:30]), "✓" if r["correct"] else "✗")
    console.print(table)
    console.print(
        f"accuracy {acc.correct}/{acc.n} = {acc.accuracy:.0%}   chance (uniform guess) {acc.chance:.0%}   "
        f"always-majority {acc.majority:.0%}   no glyph in output {acc.no_glyph}/{acc.n}   "
        f"{acc.tokens_per_second:.1f} tokens/s"
    )
    atomic_write_text(out / "before.json", json.dumps({"model": model, **asdict(acc), "accuracy": acc.accuracy, "samples": rows}, ensure_ascii=False, indent=2) + "\n")
    console.print(f"wrote {out}/before.json")
    return acc
