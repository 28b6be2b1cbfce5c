"""What does the bigram-biased sampler do to a kernel's samples? A sweep over its weight w.

For a model directory holding ``bigram.safetensors`` (``slmlab kernel bigram``) and prompts cut from
the kernel corpus's validation split (the first N records' first P tokens), it samples one
continuation per prompt for each w (temperature 1, top-k 50 by default; the same seeds for every
w, so w = 0 is the model's own sampling) and prints, per w:

* coherence (slmlab.kernel.coherence): reference perplexity, consecutive-sentence cosine, seq-rep-2/4;
* basin label counts (slmlab.evaluate.basins.label_many);
* bits per byte of the generated tokens under the model *without* the bias, each conditioned on its
  prompt (how probable the biased samples are to the model itself; nats per token too);
* the mean log-probability per generated token under the bigram table (add-α, the sampler's α).

Writes the rows (and three samples per w) as JSON.

Usage: python benchmarks/bigram_sweep.py --model kernels/d4 --corpus data/kernel [--n 32] [--prefix-tokens 16]
       [--max-new-tokens 64] [--weights 0,0.25,0.5,1] [--reference smollm2-135m|self|none] [--lexical] [-o FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from slmlab.console import Table, console, print_table
from slmlab.errors import SlmlabError
from slmlab.io import atomic_write_text

BASINS = ("CREATIVE", "SEMANTIC_LOOP", "TOKEN_COLLAPSE", "UNKNOWN")


def val_prompts(corpus: Path, tokenizer, n: int, prefix_tokens: int) -> list[str]:
    """The first ``n`` validation records longer than ``prefix_tokens`` tokens, cut to their first ``prefix_tokens``."""
    from slmlab.kernel.bpb import read_eval_texts

    path = corpus / "val.jsonl" if corpus.is_dir() else corpus
    prompts = []
    for text in read_eval_texts(path):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > prefix_tokens:
            prompts.append(tokenizer.decode(ids[:prefix_tokens]))
        if len(prompts) == n:
            break
    if not prompts:
        raise SlmlabError(f"{path}: no record is longer than {prefix_tokens} tokens")
    return prompts


def scored_examples(tokenizer, prompts: list[str], generations) -> tuple[list, list[tuple[int, int]]]:
    """Encoded examples that score only the generated tokens given their prompt, and the (prev, next) pairs."""
    from slmlab.kernel.bpb import IGNORE
    from slmlab.train.batching import Encoded

    examples, pairs = [], []
    for i, (prompt, g) in enumerate(zip(prompts, generations)):
        if not g.tokens:
            continue
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = p + list(g.tokens)
        examples.append(Encoded(i, ids, [IGNORE] * (len(p) - 1) + list(g.tokens) + [IGNORE]))
        pairs += list(zip(ids[len(p) - 1:-1], g.tokens))
    return examples, pairs


def sweep_one(model, tokenizer, table, tracker, prompts: list[str], weight: float, args) -> dict:
    from transformers import TopKLogitsWarper

    from slmlab.evaluate.basins import label_many
    from slmlab.evaluate.generate import generate
    from slmlab.kernel.bigram import BigramBias
    from slmlab.kernel.bpb import bits_per_byte_examples, token_byte_lengths

    processors = ([BigramBias(table, weight, args.alpha)] if weight else []) + [TopKLogitsWarper(args.top_k)]
    batch = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     seed=args.seed, batch_size=args.batch_size, logits_processor=processors)
    gens = batch.generations
    coherence = tracker.measure([g.text for g in gens])
    basins = Counter(r.basin.value for r in label_many(gens))
    examples, pairs = scored_examples(tokenizer, prompts, gens)
    bpb = bits_per_byte_examples(model, examples, token_byte_lengths(tokenizer), batch_size=args.batch_size) if examples else None
    logps = table.log_prob([p for p, _ in pairs], [n for _, n in pairs], args.alpha)
    return {
        "weight": weight, "n": len(gens), "new_tokens": batch.new_tokens, "similarity": coherence.similarity,
        "ppl": coherence.ppl, "cosine": coherence.cosine, "seq_rep_2": coherence.seq_rep_2, "seq_rep_4": coherence.seq_rep_4,
        "basins": {b: basins.get(b, 0) for b in BASINS},
        "bpb": bpb.bpb if bpb else None, "nats_per_token": bpb.nats_per_token if bpb else None,
        "bigram_logprob": sum(logps) / len(logps) if logps else None,
        "samples": [g.text for g in gens[:3]],
    }


def print_rows(rows: list[dict], reference: str, similarity: str) -> None:
    fmt = lambda v, d=3: "" if v is None else f"{v:.{d}f}"
    table = Table(title=f"Bigram-biased sampling sweep (ppl under {reference}; similarity {similarity})")
    for col in ("w", "tokens", "ppl", "cosine", "seq-rep-2", "seq-rep-4", "creative/loop/collapse/unknown",
                "bpb (model, no bias)", "nats/token", "bigram log p/token"):
        table.add_column(col, justify="right")
    for r in rows:
        b = r["basins"]
        table.add_row(f"{r['weight']:g}", str(r["new_tokens"]), fmt(r["ppl"], 2), fmt(r["cosine"]), fmt(r["seq_rep_2"]),
                      fmt(r["seq_rep_4"]), "/".join(str(b[k]) for k in BASINS), fmt(r["bpb"], 4),
                      fmt(r["nats_per_token"]), fmt(r["bigram_logprob"]))
    print_table(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="Model directory holding bigram.safetensors.")
    ap.add_argument("--corpus", required=True, type=Path, help="Kernel corpus directory (its val.jsonl) or a JSONL file.")
    ap.add_argument("--n", type=int, default=32, help="Prompts (validation records).")
    ap.add_argument("--prefix-tokens", type=int, default=16, help="Prompt length in tokens.")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--weights", default="0,0.25,0.5,1.0", help="Comma-separated w values.")
    ap.add_argument("--alpha", type=float, default=0.1, help="Add-α smoothing of the bigram table.")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reference", default="smollm2-135m", help="Perplexity under: a model spec, self or none.")
    ap.add_argument("--lexical", action="store_true", help="Lexical sentence similarity even with MiniLM installed.")
    ap.add_argument("-o", "--out", type=Path, default=Path("bigram_sweep.json"), help="JSON output.")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    from slmlab.console import quiet_transformers
    from slmlab.kernel.bigram import check_weight, load_bigrams
    from slmlab.kernel.coherence import CoherenceTracker
    from slmlab.models import load

    args = parse_args(argv)
    quiet_transformers()
    weights = [check_weight(float(w), "--weights") for w in args.weights.split(",") if w.strip()]
    table = load_bigrams(args.model)
    model, tokenizer = load(args.model)
    tracker = CoherenceTracker.load(args.reference, model=model, tokenizer=tokenizer,
                                    use_embeddings=False if args.lexical else None)
    prompts = val_prompts(args.corpus, tokenizer, args.n, args.prefix_tokens)
    rows = [sweep_one(model, tokenizer, table, tracker, prompts, w, args) for w in weights]
    similarity = rows[0]["similarity"] if rows else "lexical"
    print_rows(rows, tracker.name, similarity)
    record = {"model": args.model, "corpus": str(args.corpus), "prompts": len(prompts), "reference": tracker.name,
              "similarity": similarity, "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "rows": rows}
    atomic_write_text(args.out, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    console.print(f"wrote {args.out}", highlight=False)
    return rows


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        main()
    except SlmlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
