"""``slmlab eval-coherence``: reference perplexity, consecutive-sentence similarity and repetition of texts.

A thin skin over :class:`slmlab.kernel.coherence.CoherenceTracker` (definitions in its module
docstring). The texts come from a JSONL file (an eval run's ``*.samples.jsonl``, generations of
your own) or are generated here from a model and prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from slmlab.console import Table, console, print_table, quiet_transformers
from slmlab.errors import SlmlabError

#: Fields a line's text is read from, the first present wins.
TEXT_FIELDS = ("text", "generation", "completion", "output")
MAX_ROWS = 20


def read_generated_texts(path: str | Path) -> list[str]:
    """The texts of a JSONL file: each line's first string field of ``TEXT_FIELDS``; errors name file:line."""
    from slmlab.io import iter_jsonl

    texts = []
    for line in iter_jsonl(path):
        value = next((line.record[k] for k in TEXT_FIELDS if k in line.record), None)
        if not isinstance(value, str):
            raise SlmlabError(f"{path}:{line.number}: needs a string field "
                              f"{' or '.join(repr(k) for k in TEXT_FIELDS)} (the generated text)")
        texts.append(value)
    return texts


def generate_texts(model, tokenizer, prompts: str, *, max_new_tokens: int, temperature: float, seed: int,
                   logits_processor: list | None = None) -> list[str]:
    """One generation per prompt of a shipped prompt corpus or a JSONL with ``input`` (chat template for instruct models)."""
    from slmlab.evaluate.basin_map import load_prompts
    from slmlab.evaluate.generate import format_prompt, generate

    formatted = [format_prompt(tokenizer, p["input"]) for p in load_prompts(prompts)]
    batch = generate(model, tokenizer, formatted, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                     logits_processor=logits_processor)
    return [g.text for g in batch.generations]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def print_report(report, texts: list[str]) -> None:
    table = Table(title=f"Coherence of {report.n} texts (reference: {report.reference}; similarity: {report.similarity})")
    for col, justify in (("#", "right"), ("ppl", "right"), ("cosine", "right"), ("seq-rep-2", "right"),
                         ("seq-rep-4", "right"), ("sentences", "right"), ("text", "left")):
        table.add_column(col, justify=justify)
    for i, (row, text) in enumerate(list(zip(report.texts, texts))[:MAX_ROWS]):
        table.add_row(str(i), _fmt(row.ppl, 2), _fmt(row.cosine), _fmt(row.seq_rep_2), _fmt(row.seq_rep_4),
                      str(row.sentences), " ".join(text.split())[:60])
    table.add_row("all", _fmt(report.ppl, 2), _fmt(report.cosine), _fmt(report.seq_rep_2), _fmt(report.seq_rep_4), "", "")
    print_table(table)
    if report.n > MAX_ROWS:
        console.print(f"{report.n - MAX_ROWS} more texts not shown (--json prints every one)", highlight=False)


def coherence_cmd(
    file: Path | None = typer.Argument(None, help="JSONL of generated texts: each line's field text, generation, "
                                       "completion or output (the first present; an eval *.samples.jsonl works)."),
    reference: str = typer.Option("smollm2-135m", "--reference", "-r", help="Perplexity under: none, self (the "
                                  "--model) or a model spec."),
    model: str | None = typer.Option(None, "--model", "-m", help="Generate from this model (with --prompts); also "
                                     "the model --reference self means."),
    prompts: str | None = typer.Option(None, "--prompts", help="With --model: a shipped prompt corpus (basins49) or "
                                       "a JSONL with `input`; one generation per prompt."),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens", "-n", min=1, help="With --prompts: new tokens per text."),
    temperature: float = typer.Option(0.7, "--temperature", "-t", min=0.0, help="With --prompts: 0 is greedy."),
    seed: int = typer.Option(0, "--seed", help="With --prompts: sampling seed."),
    bigram_weight: float = typer.Option(0.0, "--bigram-weight", help="With --prompts: the bigram-biased sampler's w "
                                        "(needs bigram.safetensors in the model dir; 0: off)."),
    lexical: bool = typer.Option(False, "--lexical", help="Lexical sentence similarity even when MiniLM is installed "
                                 "(deterministic, comparable across machines)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report (every text) as JSON."),
) -> None:
    """Coherence of generated texts: reference perplexity, consecutive-sentence cosine, seq-rep-2/4.

    Give a JSONL FILE of texts, or --model and --prompts to generate them first. Definitions:
    docs/kernel.md ("Coherence tracker").

    Example: [bold]slmlab eval-coherence results/logic.samples.jsonl --reference smollm2-135m[/bold]

    Example: [bold]slmlab eval-coherence --model kernels/d4 --prompts basins49 --reference self --json[/bold]
    """
    from slmlab.kernel.bigram import bias_for_model
    from slmlab.kernel.coherence import CoherenceTracker

    quiet_transformers()
    if (file is None) == (prompts is None):
        raise SlmlabError("give a JSONL FILE of texts, or --model M --prompts P to generate them (not both)")
    if prompts is not None and model is None:
        raise SlmlabError("--prompts needs --model (the model that generates from them)")
    if reference == "self" and model is None:
        raise SlmlabError("--reference self scores the texts under the model that generated them: give --model")
    if bigram_weight and prompts is None:
        raise SlmlabError("--bigram-weight applies when generating: use it with --model and --prompts")
    texts = read_generated_texts(file) if file is not None else None
    bias = bias_for_model(model, bigram_weight) if model is not None and bigram_weight else None
    m = tok = None
    if model is not None:
        from slmlab.models import load

        m, tok = load(model)
    if texts is None:
        texts = generate_texts(m, tok, prompts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                               logits_processor=[bias] if bias is not None else None)
    tracker = CoherenceTracker.load(reference, model=m, tokenizer=tok, use_embeddings=False if lexical else None)
    report = tracker.measure(texts)
    if as_json:
        typer.echo(json.dumps({"source": str(file) if file is not None else {"model": model, "prompts": prompts},
                               "bigram": repr(bias) if bias is not None else None, **report.to_dict()}))
    else:
        print_report(report, texts)


__all__ = ["TEXT_FIELDS", "coherence_cmd", "generate_texts", "print_report", "read_generated_texts"]
