"""``slmlab eval-harness``: lm-evaluation-harness tasks in process on slmlab's model (see :mod:`slmlab.evaluate.harness`)."""

from __future__ import annotations

from pathlib import Path

import typer

from slmlab.console import Table, console, print_table


def _task_names(tasks: list[str]) -> list[str]:
    """``["a,b", "c"]`` → ``["a", "b", "c"]``: names as separate arguments or comma-separated, as lm-eval takes them."""
    return [name.strip() for arg in tasks for name in arg.split(",") if name.strip()]


def _quiet_lm_eval() -> None:
    """lm-eval warns that ``pretrained`` is a model object (that is the point) and about custom datasets."""
    import logging

    from slmlab.console import quiet_transformers

    quiet_transformers()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def print_results(results: dict, title: str) -> None:
    """One row per task and metric: value and standard error."""
    from slmlab.evaluate.harness import result_rows

    table = Table(title=title)
    for col, justify in (("task", "left"), ("metric", "left"), ("value", "right"), ("± stderr", "right"),
                         ("n", "right")):
        table.add_column(col, justify=justify)
    counts = results.get("n-samples", {})
    for task, metric, value, stderr in result_rows(results):
        n = counts.get(task, {}).get("effective")
        table.add_row(task, metric, _fmt(value), _fmt(stderr), "" if n is None else str(n))
    print_table(table)


def harness_cmd(
    tasks: list[str] = typer.Argument(..., help="lm-eval task names (space- or comma-separated), e.g. slmlab_logic_mc."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model spec, local directory or cached HF id."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A run directory (or PEFT adapter directory) trained on --model."),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="Evaluate only the first N documents of each task."),
    include_path: list[Path] = typer.Option([], "--include-path", help="A folder of lm-eval task YAMLs (local data files); repeatable."),
    include_defaults: bool = typer.Option(False, "--include-defaults", help="Also index lm-eval's builtin tasks "
                                          "(their data sets must already be in the local datasets cache)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Requests per forward pass."),
    num_fewshot: int | None = typer.Option(None, "--num-fewshot", min=0, help="Few-shot examples (default: the task's)."),
    seed: int = typer.Option(1234, "--seed", help="Seed for Python, NumPy, torch and the few-shot sampler."),
    log_samples: bool = typer.Option(False, "--log-samples", help="With -o: also write every document's responses "
                                     "beside the results (*.samples.jsonl)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write lm-eval's results JSON here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing results (and samples) at --out."),
) -> None:
    """Run lm-evaluation-harness tasks in process on slmlab's model (plus an adapter) and print each metric.

    Tasks come from slmlab's own task folder (slmlab_logic_mc: the logic suite as multiple choice) and
    --include-path; nothing is fetched from a hub. The same task runs with the lm_eval command through
    --include_path (see docs/harness.md).

    Example: [bold]slmlab eval-harness slmlab_logic_mc --model smollm2-135m --adapter runs/lora-v6-golden -o results/harness.json[/bold]
    """
    from slmlab.evaluate.harness import run_harness

    _quiet_lm_eval()
    results = run_harness(_task_names(tasks), model, adapter, limit=limit, include_path=include_path,
                          include_defaults=include_defaults, batch_size=batch_size, num_fewshot=num_fewshot,
                          log_samples=log_samples, seed=seed, out=out, overwrite=overwrite)
    print_results(results, f"lm-eval — {model}" + (f" + {adapter}" if adapter else ""))
    if out is not None:
        from slmlab.evaluate.suites import samples_path_for

        samples = f" and {samples_path_for(out)}" if results.get("samples") else ""
        console.print(f"wrote {out}{samples}", markup=False, highlight=False)
