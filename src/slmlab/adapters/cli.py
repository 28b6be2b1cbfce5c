"""``slmlab adapters``: merge, negate and inspect LoRA adapters (adapter arithmetic, "task vectors").

A thin skin over :mod:`slmlab.adapters.arithmetic`; every heavy import happens inside the command.
User errors raise :class:`slmlab.errors.SlmlabError`, which ``slmlab``'s entry point prints as one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from slmlab.console import console, quiet_transformers
from slmlab.errors import SlmlabError
from slmlab.outputs import OVERWRITE_HELP

adapters_app = typer.Typer(
    help="Adapter arithmetic: add, scale, negate and merge LoRA adapters (PEFT's TIES, DARE, SVD, ...); inspect one.",
    no_args_is_help=True,
)

METHOD_HELP = ("PEFT combination: linear, cat, svd, ties, ties_svd, dare_ties, dare_linear, dare_ties_svd, "
               "dare_linear_svd, magnitude_prune, magnitude_prune_svd.")


def _weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SlmlabError(f"--weights must be comma-separated numbers, e.g. 1,-0.5; got {text!r}") from None


def _summary(path: Path) -> str:
    from slmlab.adapters.arithmetic import info

    i = info(path)
    return f"wrote {path}: rank {i.r}, {len(i.modules)} modules, total ‖ΔW‖ {i.total_norm:.4g}, base {i.base_model}"


@adapters_app.command("merge")
def merge_cmd(
    adapters: list[Path] = typer.Argument(..., help="Adapter directories (adapter_config.json) or run directories."),
    out: Path = typer.Option(..., "--out", "-o", help="Output adapter directory."),
    weights: str | None = typer.Option(None, "--weights", "-w", help="Comma-separated weights, one per adapter "
                                       "(default 1 each; negative subtracts), e.g. 1,-0.5."),
    method: str = typer.Option("linear", "--method", help=METHOD_HELP),
    density: float | None = typer.Option(None, "--density", help="Fraction of values kept by ties, dare and "
                                         "magnitude_prune (required for them), e.g. 0.5."),
    majority_sign: str = typer.Option("total", "--majority-sign", help="ties/dare_ties sign election: total or frequency."),
    svd_rank: int | None = typer.Option(None, "--svd-rank", help="Rank of the result for the svd methods "
                                        "(default: the largest input rank)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Base model spec (default: the one the first adapter names)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Combine adapters trained on one base model into a new PEFT adapter (PEFT's add_weighted_adapter).

    cat: exact weighted sum of the deltas (ranks add). svd: the same sum, re-factorised to --svd-rank.

    linear: adds the A and B matrices separately (equal ranks; cross terms, so only approximately the sum).

    ties, dare_*, magnitude_prune: prune to --density, then combine; *_svd: then re-factorise.

    Everything is checked before the model loads. OUT gets adapter_config.json, adapter_model.safetensors, merge.json.

    Example: [bold]slmlab adapters merge runs/calm runs/terse --weights 1,0.5 --method cat -o adapters/calm-terse[/bold]
    """
    from slmlab.adapters.arithmetic import merge

    quiet_transformers()
    path = merge(adapters, _weights(weights), method, out=out, density=density, majority_sign_method=majority_sign,
                 svd_rank=svd_rank, overwrite=overwrite, model=model)
    console.print(_summary(path), highlight=False, markup=False)


@adapters_app.command("negate")
def negate_cmd(
    adapter: Path = typer.Argument(..., help="Adapter directory (adapter_config.json) or run directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Output adapter directory."),
    model: str | None = typer.Option(None, "--model", "-m", help="Base model spec (default: the one the adapter names)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write the adapter whose weight delta is minus ADAPTER's (PEFT linear with weight -1).

    Merging an adapter with its negation by cat gives back the base model's outputs.

    Example: [bold]slmlab adapters negate runs/rude -o adapters/not-rude[/bold]
    """
    from slmlab.adapters.arithmetic import negate

    quiet_transformers()
    path = negate(adapter, out, overwrite=overwrite, model=model)
    console.print(_summary(path), highlight=False, markup=False)


@adapters_app.command("info")
def info_cmd(
    adapter: Path = typer.Argument(..., help="Adapter directory (adapter_config.json) or run directory."),
    json_: bool = typer.Option(False, "--json", help="Print everything as JSON instead of the table."),
) -> None:
    """Base model, rank, alpha, target modules, parameter count and ‖ΔW‖ (Frobenius, ΔW = scale·B@A) per module.

    Reads the files only; no model loads.

    Example: [bold]slmlab adapters info adapters/calm-terse --json[/bold]
    """
    from slmlab.adapters.arithmetic import info

    i = info(adapter)
    if json_:
        print(json.dumps(i.to_dict(), indent=2))
        return
    _print_info(i)


def _print_info(i) -> None:
    from slmlab.console import Table, print_table

    # all-linear is saved as every module's full name; the leaf names say the same in one line
    targets = i.target_modules if isinstance(i.target_modules, str) else \
        ", ".join(sorted({t.rsplit(".", 1)[-1] for t in i.target_modules}))
    rank = str(i.r) if i.ranks in ([], [i.r]) else f"{i.r} (per module: {', '.join(map(str, i.ranks))})"
    table = Table(title=f"{i.path}: base {i.base_model}, rank {rank}, alpha {i.lora_alpha:g}"
                        + (" (rsLoRA)" if i.use_rslora else ""))
    for col, justify in (("module", "left"), ("rank", "right"), ("scale", "right"), ("‖ΔW‖", "right")):
        table.add_column(col, justify=justify)
    for m in i.modules:
        table.add_row(m.module, str(m.rank), f"{m.scale:.4g}", f"{m.norm:.4g}")
    table.add_row("total", "", "", f"{i.total_norm:.4g}")
    print_table(table)
    console.print(f"targets: {targets}; {i.n_params:,} parameters", highlight=False, markup=False)
    if i.provenance:
        p = i.provenance
        console.print(f"made by {p.get('operation')} ({p.get('method')}) of "
                          f"{', '.join(str(x.get('path')) for x in p.get('inputs', []))} "
                          f"with weights {p.get('weights')}", highlight=False, markup=False)
