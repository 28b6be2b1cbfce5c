"""``slmlab series`` and ``slmlab compare``: thin skins over :mod:`slmlab.compare`."""

from __future__ import annotations

from pathlib import Path

import typer

from slmlab.console import Table, console

series_app = typer.Typer(help="Experiment series: grids x seeds, run locally or on Ray, resumable.",
                         no_args_is_help=True)


@series_app.command("run")
def series_run_cmd(
    spec: Path = typer.Argument(..., help="A series spec YAML (name, base, seeds, grid/variants, baseline, ...)."),
    out: Path = typer.Option(..., "-o", "--out", help="The series directory (created; rerun it to resume)."),
    executor: str = typer.Option("local", "--executor", help="local (child processes) or ray."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address (default: start a local one)."),
    max_parallel: int = typer.Option(1, "--max-parallel", min=1, help="Runs at once (local executor)."),
) -> None:
    """Run every (cell, seed) of a series; finished runs are skipped, killed ones resumed.

    Example: [bold]slmlab series run examples/series/v9-goldilocks.yaml -o series/v9[/bold]
    """
    from slmlab.compare.series import run_series

    printer = RecordPrinter()
    records = run_series(spec, out, executor=executor, max_parallel=max_parallel, address=address,
                         on_record=printer)
    failed = [r for r in records if r["status"] != "done"]
    console.print(f"{len(records) - len(failed)} of {len(records)} runs done"
                  + (f"; {len(failed)} failed (see slmlab series status {out})" if failed else "")
                  + f". Compare them: slmlab compare {out}")
    if failed:
        raise typer.Exit(1)


class RecordPrinter:
    """Prints one line per finished run (works the same on a terminal and in a log)."""

    def __call__(self, task, record: dict) -> None:
        status = record["status"]
        extra = f" ({record.get('error')})" if status != "done" else ""
        console.print(f"{task.cell} seed {task.seed}: {status}{extra}", markup=False, highlight=False)


@series_app.command("status")
def series_status_cmd(out: Path = typer.Argument(..., help="A series directory.")) -> None:
    """Every (cell, seed) of a series: status, attempts, primary metric, error.

    Example: [bold]slmlab series status series/v9[/bold]
    """
    from slmlab.compare.series import series_status

    table = Table(title=f"series {out}")
    for col in ("cell", "seed", "status", "attempts", "primary", "error"):
        table.add_column(col)
    for row in series_status(out):
        primary = "" if row["primary"] is None else f"{row['primary']:.4g}"
        table.add_row(row["cell"], str(row["seed"]), row["status"], str(row["attempts"]), primary,
                      (row["error"] or "")[:80])
    console.print(table)
