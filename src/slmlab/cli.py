"""The `slmlab` command: a thin skin over public Python functions.

Every command body parses arguments, calls one public function, and prints its
result with rich. User errors (SlmlabError) print as one clear message, exit code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.text import Text

from slmlab.adapters.cli import adapters_app
from slmlab.compare.cli import compare_cmd, series_app
from slmlab.dream.cli import dream_cmd
from slmlab.evaluate.coherence_cli import coherence_cmd
from slmlab.evaluate.harness_cli import harness_cmd
from slmlab.console import (
    Table,
    console,
    err_console,
    plain,
    print_dataset_summary,
    print_table,
)
from slmlab.console import quiet_transformers as _quiet_transformers
from slmlab.errors import RunInterrupted, SlmlabError
from slmlab.kernel.cli import kernel_app
from slmlab.outputs import OVERWRITE_HELP
from slmlab.serve.cli import serve_cmd
from slmlab.steer.cli import steer_app
from slmlab.trio.cli import trio_app

app = typer.Typer(
    help="slmlab: verified data, training, evaluation and more for small language models.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Verified synthetic datasets: recipes, generation, inspection, validation.", no_args_is_help=True)
app.add_typer(data_app, name="data")
basins_app = typer.Typer(help="Degeneration basins: label generations, map a model, compare maps, predict danger zones.", no_args_is_help=True)
app.add_typer(basins_app, name="basins")
app.add_typer(steer_app, name="steer")
app.command("serve")(serve_cmd)
app.add_typer(series_app, name="series")
app.command("compare")(compare_cmd)
app.add_typer(adapters_app, name="adapters")
app.command("eval-harness")(harness_cmd)
app.command("eval-coherence")(coherence_cmd)
app.add_typer(kernel_app, name="kernel")
app.add_typer(trio_app, name="trio")
app.command("dream")(dream_cmd)

# --------------------------------------------------------------------------- models


@app.command("models")
def models_cmd() -> None:
    """List known model specs and whether each is ready to load.

    Example: [bold]slmlab models[/bold]
    """
    from slmlab.models import describe_specs

    table = Table(title="Model specs")
    for col in ("spec", "description", "ready", "location"):
        table.add_column(col)
    for info in describe_specs():
        table.add_row(info.spec, info.description, "yes" if info.ready else Text("no", style="red"), info.location)
    console.print(table)
    console.print("Any local model directory, or a Hugging Face id already in the local cache, also works.")


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """``\\n``, ``\\t``, ``\\\\`` → newline, tab, backslash; any other backslash stays (glyphs and unicode untouched)."""
    import re

    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


@app.command("generate")
def generate_cmd(
    prompt: str = typer.Argument(..., help="The prompt text."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model spec, local directory or cached HF id."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template."),
    escapes: bool = typer.Option(False, "--escapes", "-e", help="Read \\n, \\t and \\\\ in PROMPT as newline, tab and backslash "
                                 "(a shell passes them literally)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", min=1, help="Tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0, help="0 = greedy."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (same seed, same text)."),
    readout_dir: Path | None = typer.Option(None, "--readout", help="A `slmlab steer extract` directory: print per-token concept scores."),
    top: int = typer.Option(3, "--top", min=1, help="With --readout: concepts shown per token."),
) -> None:
    """Print a model's completion of PROMPT (chat template applied for instruct models).

    Example: [bold]slmlab generate --model smollm2-135m "What is modus ponens?"[/bold]

    A raw few-shot prompt with line breaks: [bold]slmlab generate --raw -e "Q: P→Q,P?Q\\nA:"[/bold]

    With concept readout: [bold]slmlab generate --readout vectors/ "Tell me about your day"[/bold]
    """
    from slmlab.evaluate.generate import format_prompt, generate
    from slmlab.models import load

    if escapes:
        prompt = unescape(prompt)
    _quiet_transformers()
    mdl, tok = load(model)
    if readout_dir is not None:
        from slmlab.steer.apply import readout

        res = readout(mdl, tok, prompt, readout_dir, max_new_tokens=max_new_tokens, raw=raw)
        layer = max(res.scores)  # the deepest extracted layer
        table = Table(title=f"concept scores per generated token (layer {layer})")
        table.add_column("token")
        table.add_column(f"top {top} concepts (projection of the residual)")
        for i, tok_str in enumerate(res.token_strings):
            row = res.scores[layer][i]
            best = sorted(range(len(res.concepts)), key=lambda j: -row[j])[:top]
            table.add_row(repr(tok_str), "  ".join(f"{res.concepts[j]} {row[j]:+.2f}" for j in best))
        console.print(res.text, markup=False, highlight=False)
        console.print(table)
        return
    batch = generate(
        mdl, tok, [format_prompt(tok, prompt, raw=raw)], max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
    )
    console.print(batch.generations[0].text, markup=False, highlight=False)
    err_console.print(f"[dim]{batch.new_tokens} tokens, {batch.tokens_per_second:.1f} tokens/s[/dim]")


# --------------------------------------------------------------------------- data


@data_app.command("recipes")
def data_recipes_cmd() -> None:
    """List the shipped dataset recipes.

    Example: [bold]slmlab data recipes[/bold]
    """
    from slmlab.data.recipes import category_counts, list_recipes, load_recipe

    table = Table(title="Recipes")
    for col in ("recipe", "count", "categories", "description"):
        table.add_column(col)
    for name in list_recipes():
        recipe, _ = load_recipe(name)
        counts = category_counts(recipe)
        cats = ", ".join(f"{k} {v}" for k, v in counts.items())
        table.add_row(name, str(sum(counts.values())), cats, " ".join(recipe.description.split()))
    console.print(table)


@data_app.command("generate")
def data_generate_cmd(
    recipe: str = typer.Argument(..., help="Shipped recipe name or path to a recipe YAML."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    count: int | None = typer.Option(None, "--count", "-c", min=1, help="Total examples (keeps the recipe's proportions)."),
    seed: int | None = typer.Option(None, "--seed", "-s", help="Override the recipe's seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Generate a dataset: OUT/train.jsonl, OUT/test.jsonl and OUT/manifest.json.

    Same recipe and seed give byte-identical files. A non-empty OUT is refused unless --overwrite.

    Example: [bold]slmlab data generate v6-golden --count 6650 -o data/v6[/bold]
    """
    from slmlab.data.recipes import generate_dataset
    from slmlab.progress import progress

    result = generate_dataset(recipe, out, count=count, seed=seed, overwrite=overwrite, progress=progress)
    print_dataset_summary(result.manifest)
    console.print(f"wrote {out}/train.jsonl, {out}/test.jsonl, {out}/manifest.json (content hash {result.manifest['content_hash'][:12]})")


@data_app.command("inspect")
def data_inspect_cmd(
    files: list[Path] = typer.Argument(..., help="Dataset files: JSONL, JSON, Parquet, CSV/TSV, or save_to_disk directories."),
    tokenizer: str = typer.Option("smollm2-135m", "--tokenizer", help="Model spec whose tokenizer measures lengths, or 'none' for characters."),
    split: str | None = typer.Option(None, "--split", help="The split of a save_to_disk DatasetDict (default: the only one, else train)."),
    columns: str | None = typer.Option(None, "--columns", help="Rename columns to a shape's keys, e.g. question=prompt,answer=completion."),
) -> None:
    """Show each file's shape, categories, answer balance, a length histogram and duplicates.

    Files are read as training reads them (slmlab records or TRL's shapes: prompt/completion, messages,
    prompt/chosen/rejected, text). Example: [bold]slmlab data inspect data/v6/train.jsonl[/bold]

    TRL data with other column names: [bold]slmlab data inspect qa.parquet --columns question=prompt,answer=completion[/bold]
    """
    from slmlab.data.check import inspect_file, parse_columns, read_dataset
    from slmlab.data.shapes import SHAPES
    from slmlab.models import load_tokenizer

    mapping = parse_columns(columns)
    # Every file is read before a tokenizer loads: a file that cannot be used fails first.
    datasets = [read_dataset(f, split=split, columns=mapping) for f in files]
    tok = None if tokenizer == "none" else load_tokenizer(tokenizer)
    for file, dataset in zip(files, datasets):
        rep = inspect_file(file, tok, dataset=dataset)
        shown = 20
        for message in rep.malformed[:shown]:
            err_console.print(message, markup=False, highlight=False)
        if rep.malformed_lines > shown:
            err_console.print(f"... and {rep.malformed_lines - shown} more malformed lines", markup=False, highlight=False)
        console.print(f"[bold]{plain(rep.path)}[/bold]: {rep.records} records, {rep.malformed_lines} malformed lines")
        keys = f" ({', '.join(SHAPES[rep.shape].keys)})" if rep.shape else ""
        console.print(f"shape: {rep.shape or 'none recognised'}{keys}", markup=False, highlight=False)
        counters = (("category", rep.categories), ("family", rep.families), ("answer", rep.answers), ("render", rep.renders),
                    ("messages", rep.messages))
        for title, counter in counters:
            if not counter:
                continue
            table = Table(title=title)
            table.add_column(title)
            table.add_column("count", justify="right")
            table.add_column("share", justify="right")
            for key, n in counter.most_common():
                table.add_row(str(key), str(n), f"{n / rep.records:.1%}")
            console.print(table)
        hist = Table(title=f"length ({rep.length_of}, {rep.length_unit})")
        hist.add_column("range")
        hist.add_column("count", justify="right")
        hist.add_column("")
        peak = max((c for _, _, c in rep.histogram()), default=1) or 1
        for lo, hi, c in rep.histogram():
            hist.add_row(f"{lo}-{hi}", str(c), "█" * round(30 * c / peak))
        console.print(hist)
        conflicts = f"; {rep.conflicts_label}: {rep.conflicting_inputs}" if rep.conflicts_label else ""
        console.print(f"{rep.duplicates_label}: {rep.duplicate_pairs}{conflicts}", markup=False, highlight=False)


@data_app.command("validate")
def data_validate_cmd(
    files: list[Path] = typer.Argument(..., help="Dataset files: JSONL, JSON, Parquet, CSV/TSV, or save_to_disk directories."),
    split: str | None = typer.Option(None, "--split", help="The split of a save_to_disk DatasetDict (default: the only one, else train)."),
    columns: str | None = typer.Option(None, "--columns", help="Rename columns to a shape's keys, e.g. question=prompt,answer=completion."),
) -> None:
    """Check datasets: slmlab records (schema, unique ids, every logic answer re-solved, every tool call
    re-parsed) or TRL's shapes (one shape per file, values of the right types).

    Problems name file and line (or row); every file is always checked in full. Exit code 1 if any;
    2 if a file cannot be read at all (not UTF-8, not its format, no records).

    Example: [bold]slmlab data validate data/v6/train.jsonl[/bold]

    A save_to_disk directory: [bold]slmlab data validate data/chat --split test[/bold]
    """
    from slmlab.data.check import parse_columns, validate_file

    mapping = parse_columns(columns)
    failed = False
    for file in files:
        rep = validate_file(file, split=split, columns=mapping)
        for e in rep.errors[:200]:
            err_console.print(e, markup=False, highlight=False)
        if len(rep.errors) > 200:
            err_console.print(f"... and {len(rep.errors) - 200} more")
        status = "[green]OK[/green]" if rep.ok else f"[red]{len(rep.errors)} problem(s)[/red]"
        console.print(f"{plain(file)}: shape {plain(rep.shape or 'none recognised')}", highlight=False)
        if rep.slmlab:
            console.print(
                f"{file}: {rep.records} records; {rep.logic_checked} logic answers re-solved, "
                f"{rep.tools_checked} tool calls re-parsed: {status}"
            )
        else:
            console.print(f"{plain(file)}: {rep.records} records; shape and value types checked: {status}", highlight=False)
        failed = failed or not rep.ok
    if failed:
        raise typer.Exit(1)


@data_app.command("solve")
def data_solve_cmd(puzzle: str = typer.Argument(..., help="A puzzle in the glyph notation.")) -> None:
    """Solve one puzzle: ● entailed, ○ its negation entailed, ◐ neither.

    Example: [bold]slmlab data solve "P→Q,P?Q"[/bold]
    """
    from slmlab.data.logic import solve

    console.print(solve(puzzle))


@data_app.command("families")
def data_families_cmd() -> None:
    """List the logic puzzle families and the answers each can produce.

    Example: [bold]slmlab data families[/bold]
    """
    from slmlab.data.logic import FAMILIES

    table = Table(title="Logic families")
    for col in ("family", "rule", "answers", "description"):
        table.add_column(col)
    for name, spec in FAMILIES.items():
        table.add_row(name, spec.rule, " ".join(spec.answers), spec.description)
    console.print(table)


# --------------------------------------------------------------------------- train


def _loss_text(value) -> str:
    """A loss for people: 4 decimals, or what it is when it is not a number (``"nan"`` from results.json, none)."""
    if value is None:
        return "none"
    return f"{value:.4f}" if isinstance(value, float | int) else str(value)


@app.command("train")
def train_cmd(
    config: Path | None = typer.Argument(None, help="Training config YAML (not needed with --resume)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set optimizer.lr=1e-4 (repeatable)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this directory from its last checkpoint."),
    inject: list[str] = typer.Option([], "--inject", help="Fault injection: nan@STEP, lr_spike@STEP:FACTOR, poison@STEP:N (repeatable)."),
    dashboard: bool | None = typer.Option(None, "--dashboard/--no-dashboard",
                                          help="Live health dashboard (default: on when the output is a terminal)."),
) -> None:
    """Fine-tune a model (LoRA or full; SFT, DPO or ORPO) and write a run directory.

    Example: [bold]slmlab train examples/configs/quickstart.yaml --set max_steps=20[/bold]

    Resume a killed run exactly: [bold]slmlab train --resume runs/lora-v6-golden[/bold]

    Watch recovery at work: [bold]slmlab train examples/configs/recovery-demo.yaml --dashboard[/bold]

    Your own fault: [bold]slmlab train CONFIG --set recovery.enabled=true --inject nan@30[/bold]
    """
    from slmlab.train.config import load_train_config
    from slmlab.train.loop import resume_run, run

    _quiet_transformers()
    if resume is not None:
        result = resume_run(resume)
    elif config is None:
        raise SlmlabError("give a config file, or --resume RUN_DIR")
    else:
        overrides = set_ + ([f"inject={inject!r}"] if inject else [])
        if dashboard is not None:
            overrides.append(f"watch.dashboard={str(dashboard).lower()}")
        cfg = load_train_config(config, overrides)
        if "model" not in cfg.model_fields_set:
            err_console.print(f"note: {plain(config)} sets no `model:`; training the default {cfg.model} "
                              "(add `model: ...` to the config to choose, or to silence this)")
        result = run(cfg)
    if result.note:
        console.print(result.note)
        return
    t = result.summary.get("train", {})
    held_out = f"eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else "no eval set (set data.eval)"
    console.print(f"{result.status}: {result.steps} steps, final loss {_loss_text(t.get('final_loss'))}, {held_out}; "
                  f"run dir {result.run_dir}")
    rec = result.summary.get("recovery", {})
    acted = {k: v for k, v in rec.items() if k not in ("data_offset", "reshuffles") and v}
    if acted:
        console.print("recovery: " + ", ".join(f"{k} {v}" for k, v in acted.items()) + f" (story: {result.run_dir}/events.jsonl)")
    if (result.run_dir / "report.html").exists():
        console.print(f"report: {result.run_dir / 'report.html'}")


@app.command("watch")
def watch_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory (running or finished)."),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Keep updating until the run finishes (Ctrl-C to leave)."),
    interval: float = typer.Option(1.0, "--interval", min=0.05, help="Seconds between re-reads of the run's logs."),
) -> None:
    """Attach a live health dashboard to a running or finished run, from any terminal.

    Example: [bold]slmlab watch runs/recovery-demo[/bold]   (or --no-follow for one snapshot)
    """
    from slmlab.watch.dashboard import watch_run

    watch_run(run_dir, follow=follow, interval=interval, console=console)


@app.command("report")
def report_cmd(run_dir: Path = typer.Argument(..., help="A run directory.")) -> None:
    """Write RUN_DIR/report.html: loss, grad-norm, spectral and loop-rate curves with event markers.

    Example: [bold]slmlab report runs/recovery-demo[/bold]
    """
    from slmlab.watch.run_report import write_run_report

    console.print(f"wrote {write_run_report(run_dir)}")


@app.command("runs")
def runs_cmd(output_dir: Path = typer.Option(Path("runs"), "--dir", help="Directory holding runs and index.sqlite.")) -> None:
    """List training runs recorded in RUNS_DIR/index.sqlite.

    Example: [bold]slmlab runs --dir runs[/bold]
    """
    from datetime import datetime

    from slmlab.runs import list_runs

    runs = list_runs(output_dir)
    table = Table(title=f"Runs in {plain(output_dir)}")
    for col in ("name", "status", "model", "objective", "step", "final loss", "eval loss", "updated"):
        table.add_column(col, overflow="fold")  # a narrow terminal folds long cells onto more lines; nothing is cut
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for r in runs:
        table.add_row(r.name, r.status, r.model, r.objective, str(r.step), fmt(r.final_loss), fmt(r.eval_loss),
                      datetime.fromtimestamp(r.updated).strftime("%Y-%m-%d %H:%M"))
    print_table(table, console)


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the Hugging Face model."),
    merge: bool = typer.Option(True, "--merge/--no-merge", help="Merge the LoRA adapter into the base weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write a run's model as a standalone Hugging Face model directory (LoRA merged).

    A non-empty OUT is refused unless --overwrite (then it is replaced as a whole).

    Example: [bold]slmlab export runs/lora-v6-golden --merge -o models/lora-v6-golden[/bold]
    """
    from slmlab.progress import progress
    from slmlab.train.export import export_run

    path = export_run(run_dir, out, merge=merge, overwrite=overwrite, progress=progress)
    console.print(f"wrote {path}")


@app.command("eval")
def eval_cmd(
    suite: str = typer.Argument(..., help="Shipped suite (logic, tools, roles, basins, markers) or a suite YAML."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model spec, local directory or cached HF id."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A run directory (or PEFT adapter directory) trained on --model."),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="Evaluate only the first N records."),
    out: Path = typer.Option(..., "--out", "-o", help="Results JSON; per-sample lines go beside it as *.samples.jsonl."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    bigram_weight: float = typer.Option(0.0, "--bigram-weight", min=0.0, help="Bigram-biased sampling: add w·log p(next|prev) "
                                        "from the model dir's bigram.safetensors (`slmlab kernel bigram`); 0: off."),
) -> None:
    """Run an evaluation suite and print each metric's mean ± standard error.

    Existing results (or samples) at OUT are refused unless --overwrite; this is checked before the model loads.

    Example: [bold]slmlab eval logic --model smollm2-135m --adapter runs/lora-v6-golden -o results/logic.json[/bold]
    """
    from slmlab.evaluate.suites import run_suite
    from slmlab.progress import progress
    from slmlab.kernel.bigram import bias_for_model

    _quiet_transformers()
    bias = bias_for_model(model, bigram_weight)  # None at 0; a missing table fails before the model loads
    result = run_suite(suite, model, adapter=adapter, out=out, limit=limit, overwrite=overwrite, progress=progress,
                       logits_processor=[bias] if bias is not None else None)
    title = f"{result.suite.name} v{result.suite.version} — {model}" + (f" + {adapter}" if adapter else "")
    table = Table(title=title)
    for col, justify in (("metric", "left"), ("value", "right"), ("± stderr", "right"), ("n", "right")):
        table.add_column(col, justify=justify)
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for name, mean, stderr, n in result.rows():
        table.add_row(name, fmt(mean), fmt(stderr), str(n))
    console.print(table)
    console.print(f"{result.n} samples, {result.new_tokens} tokens, {result.tokens_per_second:.1f} tokens/s; "
                  f"wrote {result.results_path} and {result.samples_path}")


# --------------------------------------------------------------------------- basins


@basins_app.command("label")
def basins_label_cmd(file: Path = typer.Argument(..., help="JSONL with a `text` field per line.")) -> None:
    """Label each line's `text` and print the line back with `basin`, `reason` and `evidence` (JSONL on stdout).

    Example: [bold]slmlab basins label generations.jsonl > labelled.jsonl[/bold]
    """
    from slmlab.evaluate.basins import label_many
    from slmlab.io import dumps_record, iter_jsonl
    from slmlab.progress import progress

    lines = list(iter_jsonl(file))  # the whole file is checked before a byte is written: no half output
    for line in lines:
        if not isinstance(line.record.get("text"), str):
            raise SlmlabError(f"{file}:{line.number}: needs a string field 'text'")
    results = label_many([line.record["text"] for line in lines], progress=progress)
    out = [dumps_record({**line.record, "basin": res.basin.value, "reason": res.reason, "evidence": res.evidence}) + "\n"
           for line, res in zip(lines, results)]
    sys.stdout.write("".join(out))


@basins_app.command("map")
def basins_map_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the basin map JSON."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model spec."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A run directory or PEFT adapter directory."),
    corpus: str = typer.Option("basins49", "--corpus", help="Shipped corpus name or a JSONL file with `input` (and `category`)."),
    samples: int = typer.Option(3, "--samples", "-k", min=1, help="Generations per prompt."),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens", "-n", min=1),
    temperature: float = typer.Option(0.7, "--temperature", "-t", min=0.0),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    bigram_weight: float = typer.Option(0.0, "--bigram-weight", min=0.0, help="Bigram-biased sampling: add w·log p(next|prev) "
                                        "from the model dir's bigram.safetensors (`slmlab kernel bigram`); 0: off."),
) -> None:
    """Generate from a prompt corpus, label every generation, and write the basin distribution per category.

    An existing map at OUT is refused unless --overwrite; this is checked before the model loads.

    Example: [bold]slmlab basins map --model smollm2-135m --samples 3 -o maps/base.json[/bold]
    """
    from slmlab.evaluate.basin_map import MapSettings, map_basins
    from slmlab.progress import progress
    from slmlab.kernel.bigram import bias_for_model

    _quiet_transformers()
    settings = MapSettings(samples=samples, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    bias = bias_for_model(model, bigram_weight)  # None at 0; a missing table fails before the model loads
    result = map_basins(model, adapter=adapter, corpus=corpus, settings=settings, out=out, overwrite=overwrite, progress=progress,
                        logits_processor=[bias] if bias is not None else None)
    _print_maps({str(out): result})
    console.print(f"{result['n_generations']} generations, {result['tokens_per_second'] or 0:.1f} tokens/s; wrote {out}")


def _print_maps(maps: dict[str, dict]) -> None:
    from slmlab.evaluate.basin_map import BASINS

    table = Table(title="Basin distribution")
    table.add_column("scope")
    for name in maps:
        table.add_column(Path(name).stem)
    first = next(iter(maps.values()))
    for scope in ["overall", *first["per_category"]]:
        for b in BASINS:
            cells = [f"{(m['overall'] if scope == 'overall' else m['per_category'].get(scope, {})).get(b, 0):.0%}" for m in maps.values()]
            table.add_row(f"{scope} {b}", *cells)
    console.print(table)


@basins_app.command("compare")
def basins_compare_cmd(maps: list[Path] = typer.Argument(..., help="Two or more basin map JSON files; deltas are against the first.")) -> None:
    """Print basin distributions of several maps side by side, with deltas against the first.

    Example: [bold]slmlab basins compare maps/base.json maps/tuned.json[/bold]
    """
    from slmlab.evaluate.basin_map import compare_maps

    rows = compare_maps(maps)
    table = Table(title="Basin maps compared (Δ vs the first)")
    table.add_column("scope")
    table.add_column("basin")
    for i, p in enumerate(maps):
        table.add_column(p.stem)
        if i:
            table.add_column("Δ")
    for r in rows:
        cells = []
        for i, (rate, delta) in enumerate(zip(r["rates"], r["deltas"])):
            cells.append("—" if rate is None else f"{rate:.0%}")
            if i:
                cells.append("—" if delta is None else f"{delta:+.0%}")
        table.add_row(r["scope"], r["basin"], *cells)
    console.print(table)


@basins_app.command("predict")
def basins_predict_cmd(
    prompt: str = typer.Argument(..., help="The prompt to assess."),
    maps: list[Path] = typer.Option(..., "--maps", help="Basin maps to learn from (repeatable)."),
) -> None:
    """Predict which basin a prompt's generations will land in, learnt from basin maps.

    Example: [bold]slmlab basins predict "Describe the smell of rain" --maps maps/base.json[/bold]
    """
    from slmlab.evaluate.predict import train_danger_model

    dm = train_danger_model(maps)
    table = Table(title="Predicted basin probabilities")
    table.add_column("basin")
    table.add_column("p", justify="right")
    for b, p in sorted(dm.predict(prompt).items(), key=lambda kv: -kv[1]):
        table.add_row(b, f"{p:.2f}")
    console.print(table)
    cv = "n/a" if dm.cv_accuracy is None else f"{dm.cv_accuracy:.0%}"
    console.print(f"trained on {dm.n_samples} generations of {dm.n_prompts} prompts; cross-validated accuracy {cv} "
                  f"(majority basin {dm.majority_accuracy:.0%})")
    if dm.warning:
        err_console.print(f"[yellow]warning:[/yellow] {dm.warning}")


@data_app.command("curate")
def data_curate_cmd(
    dataset: Path = typer.Argument(..., help="A JSONL dataset with `category` fields."),
    map_: Path = typer.Option(..., "--map", help="A basin map made over this dataset's prompts (slmlab basins map --corpus DATASET)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the curated JSONL."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Reweight a dataset's categories by basin rates: more of what lands CREATIVE, less of what loops, drop what collapses.

    Writes OUT and OUT.curation.json; existing ones are refused unless --overwrite.

    Example: [bold]slmlab data curate data/mix/train.jsonl --map maps/mix.json -o data/mix/curated.jsonl[/bold]
    """
    from slmlab.evaluate.curate import curate_dataset

    rep = curate_dataset(dataset, map_, out, seed=seed, overwrite=overwrite)
    table = Table(title=f"Curation ({rep['before']} → {rep['after']} records)")
    for col in ("category", "before", "after", "factor", "why"):
        table.add_column(col)
    for cat, c in rep["categories"].items():
        table.add_row(cat, str(c["before"]), str(c["after"]), f"{c['factor']:.2f}", c["reason"])
    console.print(table)
    console.print(f"wrote {out} and {out}.curation.json")


# --------------------------------------------------------------------------- demo


@app.command("quickstart")
@app.command("demo", hidden=True)  # the same command under the name `make demo` suggests
def demo_cmd(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", "-o", help="Where the quickstart writes its dataset, run and report."),
    n_eval: int = typer.Option(60, "--n-eval", min=1, help="Held-out puzzles to ask the model (the table shows 20)."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model spec."),
    train_minutes: float = typer.Option(4.0, "--train-minutes", min=0, help="LoRA training time budget; 0 skips training."),
    basins: bool = typer.Option(True, "--basins/--no-basins", help="Also map basins on the 49-prompt corpus before and after."),
) -> None:
    """The quickstart: generate v6-golden, measure the base model, fine-tune a LoRA briefly, measure again, write report.html.

    `slmlab demo` is the same command. The run lands in OUT/train (default runs/quickstart/train).

    Example: [bold]slmlab quickstart --train-minutes 4[/bold]
    """
    from slmlab.demo import run_demo

    _quiet_transformers()
    run_demo(out, n_eval=n_eval, model=model, train_minutes=train_minutes, basins=basins, console=console)


def main() -> None:
    try:
        app()
    except RunInterrupted as exc:  # Ctrl-C or SIGTERM during training: recorded, resumable
        err_console.print(f"[yellow]interrupted:[/yellow] {plain(exc)}", highlight=False)
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except SlmlabError as exc:
        if os.environ.get("SLMLAB_DEBUG"):
            raise
        err_console.print(f"[red]error:[/red] {plain(exc)}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
