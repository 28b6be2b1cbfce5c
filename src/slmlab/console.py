"""Shared terminal output for the CLIs: one stdout console, one stderr console, quiet transformers,
and the printers more than one command uses (the dataset summary: `slmlab data generate`, the demo)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console()
# soft_wrap: "file:line: message" stays one line, so it can be grepped and clicked.
err_console = Console(stderr=True, soft_wrap=True)


def quiet_transformers() -> None:
    """Progress bars from weight loading would drown our own output."""
    import warnings

    from transformers.utils import logging as hf_logging

    # Raised inside peft against transformers 5; nothing a user can act on.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def print_dataset_summary(manifest: dict) -> None:
    """A generated dataset's manifest as a table: categories per split, answer and render balance, split groups."""
    table = Table(title=f"Dataset {manifest['recipe']} (seed {manifest['seed']})")
    table.add_column("category")
    table.add_column("train", justify="right")
    table.add_column("test", justify="right")
    table.add_column("share", justify="right")
    total = manifest["all"]["count"]
    for cat, n in manifest["all"]["categories"].items():
        tr = manifest["splits"]["train"]["categories"].get(cat, 0)
        te = manifest["splits"]["test"]["categories"].get(cat, 0)
        table.add_row(cat, str(tr), str(te), f"{n / total:.1%}")
    table.add_row("[bold]total[/bold]", str(manifest["splits"]["train"]["count"]), str(manifest["splits"]["test"]["count"]), "100%")
    console.print(table)
    answers = manifest["all"]["answers"]
    if answers:
        n = sum(answers.values())
        console.print("answers: " + "  ".join(f"{g} {c} ({c / n:.1%})" for g, c in answers.items()))
    renders = manifest["all"]["renders"]
    if renders:
        n = sum(renders.values())
        console.print("renders: " + "  ".join(f"{r} {c} ({c / n:.1%})" for r, c in renders.items()))
    g = manifest["groups"]
    console.print(f"split groups (puzzles up to renaming): train {g['train']}, test {g['test']}, shared {g['shared']}")
