"""``slmlab series`` and ``slmlab compare``: thin skins over :mod:`slmlab.compare`."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import typer

from slmlab.console import Table, console, print_table

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
    from slmlab.compare.spec import load_series
    from slmlab.progress import progress

    checked = load_series(spec)
    primary = checked.spec.primary.metric if checked.spec.primary else None
    printer = RecordPrinter(len(checked.cells) * len(checked.spec.seeds), primary)
    if (out / "series.json").is_file():  # resuming: count the runs already done
        from slmlab.compare.series import series_status

        printer.done = sum(r["status"] == "done" for r in series_status(out))
    # Plain lines on stderr, one per finished run (every=0), never a live bar: a run trained in this
    # process draws its own.
    records = run_series(spec, out, executor=executor, max_parallel=max_parallel, address=address,
                         on_record=printer, progress=partial(progress, every=0, bar=False))
    failed = [r for r in records if r["status"] != "done"]
    console.print(f"{len(records) - len(failed)} of {len(records)} runs done"
                  + (f"; {len(failed)} failed (see slmlab series status {out})" if failed else "")
                  + f". Compare them: slmlab compare {out}")
    if failed:
        raise typer.Exit(1)


class RecordPrinter:
    """One progress line per finished run, ``[k/N] cell seed s: status (primary = value)``, the same on a
    terminal and in a log."""

    def __init__(self, total: int = 0, primary: str | None = None):
        self.total, self.primary, self.done = total, primary, 0

    def __call__(self, task, record: dict) -> None:
        self.done += 1
        status = record["status"]
        value = (record.get("metrics") or {}).get(self.primary) if self.primary else None
        extra = f" ({record.get('error')})" if status != "done" else (
            f" ({self.primary} = {value:.4g})" if isinstance(value, (int, float)) else "")
        console.print(f"[{self.done}/{self.total}] {task.cell} seed {task.seed}: {status}{extra}", markup=False,
                      highlight=False)


@series_app.command("status")
def series_status_cmd(out: Path = typer.Argument(..., help="A series directory.")) -> None:
    """Every (cell, seed) of a series: status, attempts, primary metric, error.

    Example: [bold]slmlab series status series/v9[/bold]
    """
    from slmlab.compare.series import series_status

    table = Table(title=f"series {out}")
    for col in ("cell", "seed", "status", "attempts", "primary", "error"):
        table.add_column(col, overflow="fold")
    for row in series_status(out):
        primary = "" if row["primary"] is None else f"{row['primary']:.4g}"
        table.add_row(row["cell"], str(row["seed"]), row["status"], str(row["attempts"]), primary,
                      row["error"] or "")
    print_table(table)


def compare_cmd(
    paths: list[Path] = typer.Argument(..., help="A series directory, or run directories (same config, several seeds)."),
    baseline: str | None = typer.Option(None, "--baseline", help="The cell to compare against (default: the spec's)."),
    metric: str | None = typer.Option(None, "--metric", help="The primary metric (default: the spec's)."),
    minimum_effect: float | None = typer.Option(None, "--minimum-effect", help="Smallest difference that matters."),
    lower_is_better: bool = typer.Option(False, "--lower-is-better", help="With --metric: lower values are better."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Write compare.json (+ --html/--csv/--markdown) here "
                                                           "(default: the series directory)."),
    json_: bool = typer.Option(False, "--json", help="Print the whole comparison as JSON instead of the table."),
    html: bool = typer.Option(False, "--html", help="Also write compare.html (self-contained, opens offline)."),
    csv_: bool = typer.Option(False, "--csv", help="Also write compare.csv."),
    markdown: bool = typer.Option(False, "--markdown", help="Also write compare.md (for notes)."),
    export: bool = typer.Option(False, "--export", help="Copy each cell's best-seed adapter to exports/<cell>/."),
) -> None:
    """Mean ± 95% CI per cell and metric over seeds, differences vs the baseline paired by seed, and a
    verdict per cell: better / worse / within noise (single run: no verdict).

    Example: [bold]slmlab compare series/v9 --html --markdown[/bold]
    """
    import json

    from slmlab.compare.compare import compare
    from slmlab.compare.report import (
        TEXT_COLUMNS,
        export_best,
        text_rows,
        to_json,
        write_outputs,
    )

    comp = compare(paths, baseline=baseline, metric=metric, minimum_effect=minimum_effect,
                   higher_is_better=(not lower_is_better) if metric else None)
    if json_:
        console.print_json(json.dumps(to_json(comp), default=str))
    else:
        table = Table(title=f"compare {comp.name} (baseline: {comp.baseline})")
        for col in TEXT_COLUMNS:
            table.add_column(col, overflow="fold")
        for row in text_rows(comp):
            table.add_row(*row)
        print_table(table)
    series_dir = paths[0] if len(paths) == 1 and (paths[0] / "series.json").is_file() else None
    target = out or series_dir
    if target is None and (html or csv_ or markdown or export):
        from slmlab.errors import SlmlabError

        raise SlmlabError("--html/--csv/--markdown/--export need -o DIR when comparing run directories")
    for path in write_outputs(comp, target, html=html, csv_=csv_, markdown=markdown):
        if not json_:
            console.print(f"wrote {path}", markup=False, highlight=False)
    if export and target is not None:
        for cell, dest in export_best(comp, target).items():
            console.print(f"exported {cell} → {dest}", markup=False, highlight=False)
