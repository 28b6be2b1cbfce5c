"""Shared terminal output for the CLIs: one stdout console, one stderr console, quiet transformers,
a table that never reads user text as markup, and the printers more than one command uses (the
dataset summary: `slmlab data generate`, the demo).

Rich reads ``[...]`` in strings as markup, so user text such as ``[tool:{json}]`` or a path with
brackets would vanish. Every table the CLIs build is a :class:`Table` from here, whose string cells
are plain text; our own styling goes in as ``Text(..., style=...)``. Messages that embed user
text pass it through :func:`plain`.
"""

from __future__ import annotations

from rich import table as _rich_table
from rich.console import Console
from rich.markup import escape
from rich.text import Text

console = Console()
# soft_wrap: "file:line: message" stays one line, so it can be grepped and clicked.
err_console = Console(stderr=True, soft_wrap=True)


class Table(_rich_table.Table):
    """A rich table whose ``str`` cells are plain text, never markup."""

    def add_row(self, *renderables, **kwargs) -> None:
        super().add_row(*(Text(c) if isinstance(c, str) else c for c in renderables), **kwargs)


def print_table(table: Table, out=None) -> None:
    """On a terminal, as rich lays it out (long cells fold, nothing is cut); piped or redirected, as wide
    as the table needs, one line per row, for grep and scripts. ``out``: the console (default: stdout's)."""
    from rich.console import Console
    from rich.measure import Measurement

    out = out or console
    if out.is_terminal:
        out.print(table)
        return
    width = Measurement.get(out, out.options.update_width(100_000), table).maximum
    Console(file=out.file, width=max(width, out.width), no_color=out.no_color).print(table)


def plain(value) -> str:
    """``value`` as text safe to embed in a markup string (``[`` is not read as a style)."""
    return escape(str(value))


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
    table.add_row(Text("total", style="bold"), str(manifest["splits"]["train"]["count"]), str(manifest["splits"]["test"]["count"]), "100%")
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
