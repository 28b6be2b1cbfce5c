"""``slmlab trio``: train role adapters, ask the creative → logical → dialectical trio, evaluate it.

A thin skin over :mod:`slmlab.trio`; heavy imports happen inside the commands. User errors
raise :class:`slmlab.errors.SlmlabError`, which ``slmlab``'s entry point prints as one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.panel import Panel
from rich.text import Text

from slmlab.console import Table, console, err_console, print_table, quiet_transformers
from slmlab.outputs import OVERWRITE_HELP

trio_app = typer.Typer(
    help="The creative → logical → dialectical trio: role adapters, the pipeline with offline tools, evaluation.",
    no_args_is_help=True,
)

MODEL_HELP = "Model spec (default: the adapters' base model, else smollm2-135m)."
ADAPTERS_HELP = "A `slmlab trio train` output directory (trio.json + one adapter per role); default: prompts only."


@trio_app.command("train")
def train_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: data/, one run directory per role, trio.json."),  # noqa: B008
    recipe: str = typer.Option("trio-roles", "--recipe", "-r", help="Recipe whose records carry a `role`."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Base model spec."),
    count: int = typer.Option(600, "--count", "-c", help="Recipe examples to generate (before the split)."),
    examples: int = typer.Option(600, "--examples", help="Generated thesis/antithesis/synthesis records to add."),
    max_steps: int = typer.Option(30, "--max-steps", help="Optimizer steps per role (small default for CPU)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Examples per step."),
    rank: int = typer.Option(8, "--rank", help="LoRA rank (alpha = 2 × rank)."),
    lr: float = typer.Option(2e-4, "--lr", help="Learning rate."),
    seed: int = typer.Option(0, "--seed", help="Data and training seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Train one LoRA adapter per role (creative, logical, dialectical) on one base model.

    Each role's records (the recipe's records with that `role`, plus generated, checked trio
    examples in the pipeline's own format) train an ordinary run in OUT/<role>/; OUT/trio.json
    lists the adapters for `slmlab trio run --adapters OUT`.

    Example: [bold]slmlab trio train -o runs/trio --model tiny-random --max-steps 5[/bold]
    """
    from slmlab.trio.train import train

    quiet_transformers()
    manifest = train(out, recipe=recipe, model=model, count=count, examples=examples, max_steps=max_steps,
                     batch_size=batch_size, rank=rank, lr=lr, seed=seed, overwrite=overwrite)
    table = Table(title=f"Trio adapters in {out} (base {manifest['model']})")
    for col in ("role", "examples", "steps", "final loss", "adapter"):
        table.add_column(col)
    for role, entry in manifest["roles"].items():
        loss = entry["final_loss"]
        table.add_row(role, str(entry["examples"]), str(entry["steps"]),
                      f"{loss:.4f}" if isinstance(loss, float) else "–", str(out / entry["adapter"]))
    print_table(table)


@trio_app.command("run")
def run_cmd(
    question: str = typer.Argument(..., help="The question for the trio."),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    adapters: Path | None = typer.Option(None, "--adapters", "-a", help=ADAPTERS_HELP),  # noqa: B008
    json_: bool = typer.Option(False, "--json", help="Print one JSON object (question, turns, answer, …)."),
    tools: bool = typer.Option(True, "--tools/--no-tools", help="Let the synthesis call tools and verify."),
    max_rounds: int = typer.Option(2, "--max-rounds", help="Most times tool results are fed back."),
    verify_below: float | None = typer.Option(1.0, "--verify-below", help="Answer margin (nats) under which the "
                                              "solver/calculator checks the answer; 0 never (docs/trio.md)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Token budget per role and round."),
    wiki: Path | None = typer.Option(None, "--wiki", help="A YAML wiki file (pages: {title: summary}) for wiki_lookup."),  # noqa: B008
) -> None:
    """Ask the trio: creative (thesis) → logical (antithesis, sees the thesis) → dialectical (synthesis, sees both).

    Tool calls in the synthesis ([tool:{json}] or SPECIALIST_REQUEST[tool:{json}]) run offline
    (calculator, unit_convert, wiki_lookup, solve_logic) and their results are fed back.

    Example: [bold]slmlab trio run "P→Q,P?Q" --model tiny-random --json[/bold]
    """
    from slmlab.trio.pipeline import run
    from slmlab.trio.tools import ToolBox

    quiet_transformers()
    toolbox = ToolBox.default(wiki=wiki) if tools else None
    transcript = run(question, model=model, adapters=adapters, tools=tools, max_rounds=max_rounds,
                     verify_below=verify_below, max_new_tokens=max_new_tokens, toolbox=toolbox)
    if json_:
        print(json.dumps(transcript.to_dict(), ensure_ascii=False))
        return
    print_transcript(transcript.to_dict())


_TITLES = {"creative": "creative · thesis", "logical": "logical · antithesis", "dialectical": "dialectical · synthesis"}


def print_transcript(data: dict, out=None) -> None:
    """A transcript dict as panels, one per role, with its tool calls and results."""
    out = out or console
    out.print(Text(f"Question: {data['question']}", style="bold"))
    for turn in data["turns"]:
        body = Text(turn["text"] or "(empty)")
        for call, result in zip(turn["tool_calls"], turn["tool_results"]):
            who = "verifier" if call.get("auto") else "call"
            body.append(f"\n{who}: {call['raw']}", style="cyan")
            if result["ok"]:
                body.append(f"\n  → {result['output']}", style="green")
            else:
                body.append(f"\n  → error: {result['error']}", style="red")
        out.print(Panel(body, title=_TITLES.get(turn["role"], turn["role"]), subtitle=f"{turn['seconds']:.2f} s",
                        title_align="left"))
    answer = data["answer"] or "(none)"
    out.print(Text(f"Answer: {answer}   (from {data['answer_source']}, margin {data['answer_margin']:.2f} nats)",
                   style="bold"))


@trio_app.command("eval")
def eval_cmd(
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    adapters: Path | None = typer.Option(None, "--adapters", "-a", help=ADAPTERS_HELP),  # noqa: B008
    suite: Path | None = typer.Option(None, "--suite", help="A trio suite YAML (default: the shipped `trio` suite)."),  # noqa: B008
    limit: int | None = typer.Option(None, "--limit", "-n", help="Evaluate the first N held-out logic questions."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the results JSON (with every transcript) here."),  # noqa: B008
    json_: bool = typer.Option(False, "--json", help="Print the results JSON (without per-question samples)."),
) -> None:
    """Compare single model vs trio vs trio with tools on held-out logic questions (Wilson 95% intervals).

    Also reports role adherence per role, tool-call validity and execution success, and how
    often the verifier answered.

    Example: [bold]slmlab trio eval --model smollm2-135m -n 24 -o trio-eval.json[/bold]
    """
    from slmlab.trio.evaluate import evaluate

    quiet_transformers()
    result = evaluate(model=model, adapters=adapters, suite=suite, limit=limit, out=out,
                      progress=lambda msg: err_console.print(msg, markup=False, highlight=False))
    if json_:
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}, ensure_ascii=False, indent=2))
        return
    print_eval(result)
    if out is not None:
        console.print(f"wrote {out}", markup=False, highlight=False)


def _rate(entry: dict | None) -> str:
    if not entry or entry["n"] == 0:
        return "–"
    lo, hi = entry["ci95"]
    return f"{entry['k']}/{entry['n']} = {entry['rate']:.0%} [{lo:.0%}, {hi:.0%}]"


def print_eval(result: dict) -> None:
    table = Table(title=f"trio suite: {result['model']}, {result['n']} held-out logic questions (95% Wilson CI)")
    for col in ("condition", "accuracy", "no glyph in answer", "margin ✓", "margin ✗", "seconds"):
        table.add_column(col)
    for cond, entry in result["conditions"].items():
        table.add_row(cond, _rate(entry["accuracy"]), _rate(entry["no_answer"]), str(entry["margin_correct"]),
                      str(entry["margin_wrong"]), str(entry["seconds"]))
    print_table(table)
    roles = Table(title="Role adherence (roles metric)")
    roles.add_column("role")
    keys = ["nonempty", "no_echo", "stops", "has_answer", "follows"]
    for key in keys:
        roles.add_column(key)
    for role, metrics in result["roles"].items():
        roles.add_row(role, *[_rate(metrics.get(k)) for k in keys])
    print_table(roles)
    tools = result["conditions"].get("trio+tools", {}).get("tools")
    if tools:
        t = Table(title="Tools (trio+tools)")
        t.add_column("measure")
        t.add_column("value")
        for key, value in tools.items():
            t.add_row(key.replace("_", " "), _rate(value) if isinstance(value, dict) else str(value))
        print_table(t)
