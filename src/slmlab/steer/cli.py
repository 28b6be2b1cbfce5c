"""``slmlab steer``: extract concept vectors, check their quality, calibrate, export for llama.cpp.

A thin skin over :mod:`slmlab.steer`; every heavy import happens inside the command. User errors
raise :class:`slmlab.errors.SlmlabError`, which ``slmlab``'s entry point prints as one line.
"""

from __future__ import annotations

from pathlib import Path

import typer
from slmlab.console import console, err_console, quiet_transformers

from slmlab.errors import SlmlabError
from slmlab.outputs import OVERWRITE_HELP
from slmlab.progress import progress

steer_app = typer.Typer(
    help="Concept vectors: extract from a story corpus, quality report, calibrate steering strength, export to GGUF.",
    no_args_is_help=True,
)

def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SlmlabError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SlmlabError(f"{what} must be comma-separated layer indices, got {text!r}") from None


@steer_app.command("extract")
def extract_cmd(
    corpus: Path = typer.Argument(..., help="Corpus directory with stories/ and/or paired/<scenario>/."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model spec, local directory or cached HF id."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (readout.safetensors, readout.json, activations)."),
    layers: str = typer.Option("all", "--layers", "-l", help="'all', indices like 8,12,-1, or ranges like 4:20 (end exclusive)."),
    pooling: str = typer.Option("last", "--pooling", help="last (last non-pad token) or mean (over tokens)."),
    method: str = typer.Option("diff-of-means", "--method", help="diff-of-means or pca (first PC of differences)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Texts per forward."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=8, help="Truncate texts longer than this many tokens."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Extract one unit vector per (layer, concept): diff-of-means of positives vs negatives.

    Each unique text is run once; the corpus, the layer indices and OUT are checked before the model loads
    (a non-empty OUT is refused unless --overwrite).

    Example: [bold]slmlab steer extract examples/steer --model smollm2-135m --layers 8:24 -o runs/steer[/bold]
    """
    from slmlab.steer.extract import extract

    quiet_transformers()
    extract(corpus, model, out, layers=layers, pooling=pooling, method=method, batch_size=batch_size,
            max_tokens=max_tokens, console=err_console, overwrite=overwrite, progress=progress)
    console.print(str(out))


@steer_app.command("quality")
def quality_cmd(
    readout_dir: Path = typer.Argument(..., help="Output directory of 'slmlab steer extract'."),
    corpus: Path | None = typer.Option(None, "--corpus", "-c", help="The corpus (default: the one recorded in readout.json)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model spec (default: the one recorded in readout.json)."),
) -> None:
    """Per concept and layer: first-PC ratio, story alignment, single-neuron alignment, ridge R², held-out AUROC, heads.

    Writes DIR/quality.json and DIR/quality.html and prints the triage (clean, ok, fragmented, redundant, weak).

    Example: [bold]slmlab steer quality runs/steer --corpus examples/steer --model smollm2-135m[/bold]
    """
    from slmlab.console import Table

    from slmlab.steer.quality import quality

    quiet_transformers()
    q = quality(readout_dir, corpus, model, progress=progress)
    L = str(q["headline_layer"])
    t = Table(title=f"Triage at layer {L} (best mean held-out AUROC {q['layers'][L]['mean_auroc']})")
    for col in ("concept", "triage", "first-PC", "AUROC", "ridge R²", "neuron |cos|", "nearest"):
        t.add_column(col)
    for c, cd in q["concepts"].items():
        m = cd["layers"][L]
        t.add_row(c, m["triage"], str(m["first_pc_ratio"]), str(m["auroc"]), str(m["ridge"]["r2"]),
                  str((m["single_neuron"] or {}).get("cosine")), ", ".join(n for n, _ in m["nearest"][:3]))
    console.print(t)
    console.print("summary: " + "; ".join(f"{b} {len(cs)}" for b, cs in q["summary"].items()))
    console.print(f"wrote {Path(readout_dir) / 'quality.json'} and {Path(readout_dir) / 'quality.html'}")


@steer_app.command("calibrate")
def calibrate_cmd(
    readout_dir: Path = typer.Argument(..., help="Output directory of 'slmlab steer extract'."),
    concept: str = typer.Option(..., "--concept", "-c", help="Concept to steer toward."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model spec (default: the one recorded in readout.json)."),
    layer: int | None = typer.Option(None, "--layer", "-l", help="Layer to steer (default: best AUROC in quality.json, else mid-depth)."),
    alphas: str | None = typer.Option(None, "--alphas", help="Comma-separated absolute strengths (default: 0..4x the layer's residual norm)."),
    prompt: list[str] | None = typer.Option(None, "--prompt", "-p", help="A prompt (repeatable; default: four fixed prompts)."),
    max_new_tokens: int = typer.Option(48, "--max-new-tokens", "-n", min=1, help="Tokens per generation."),
    positions: str = typer.Option("all", "--positions", help="all (every position) or new (only positions predicting new tokens)."),
    refine: int = typer.Option(2, "--refine", min=0, help="Bisection steps between the last safe and first unsafe alpha."),
) -> None:
    """Sweep steering strength, label generations by basin, record the largest safe alpha in readout.json.

    Example: [bold]slmlab steer calibrate runs/steer --concept calm --model smollm2-135m[/bold]
    """
    from slmlab.steer.calibrate import calibrate

    quiet_transformers()
    r = calibrate(readout_dir, concept, model, layer=layer, alphas=_floats(alphas, "--alphas"), prompts=prompt or None,
                  max_new_tokens=max_new_tokens, positions=positions, refine=refine, console=err_console,
                  progress=progress)
    console.print(f"{concept}: safe alpha {r['safe_alpha']:.4g} at layer {r['layer']} "
                  f"(tested {r['tested_range'][0]:.3g}..{r['tested_range'][1]:.3g})")


@steer_app.command("export-gguf")
def export_gguf_cmd(
    readout_dir: Path = typer.Argument(..., help="Output directory of 'slmlab steer extract'."),
    concept: str = typer.Option(..., "--concept", "-c", help="Concept to export."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .gguf file."),
    layers: str | None = typer.Option(None, "--layers", "-l", help="Comma-separated layers (default: all extracted except 0)."),
    scale: float = typer.Option(1.0, "--scale", help="Multiply the unit vectors by this before writing."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write a llama.cpp / repeng control vector (direction.<layer> tensors) for one concept.

    An existing OUT is refused unless --overwrite.

    Example: [bold]slmlab steer export-gguf runs/steer --concept calm -o calm.gguf[/bold]
    """
    from slmlab.steer.apply import export_gguf

    r = export_gguf(readout_dir, concept, out, layers=_ints(layers, "--layers"), scale=scale, overwrite=overwrite)
    if r["skipped"]:
        err_console.print("[yellow]note:[/yellow] layer 0 left out (llama.cpp never steers it)")
    cal = r["calibration"]
    hint = f"; calibrated safe alpha {cal['safe_alpha']:.4g} at layer {cal['layer']}" if cal else ""
    console.print(f"wrote {r['path']}: {concept}, {len(r['layers'])} layers, model_hint {r['model_hint']}{hint}")
    console.print(f"use: llama-cli -m MODEL.gguf --control-vector-scaled {r['path']}:STRENGTH")
