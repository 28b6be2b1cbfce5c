"""Concept-vector extraction: one forward per unique text vs a naive per-concept extraction.

The deduplicated run (``slmlab.steer``) forwards each unique corpus text once and builds every
concept's diff-of-means from the shared activations. The naive run extracts each concept on its
own, forwarding its positives and negatives afresh (Σ_c |pos_c| + |neg_c| forwards), as a
per-concept script would. Both use the same batching and hooks, so the difference is the sharing.
The vectors must agree (cosine ~1); the script reports forwards, wall time and the agreement.

If the ``steering-vectors`` package is importable, its ``train_steering_vector`` (mean aggregator,
last token, decoder-block outputs) is also run for the first ``--sv-concepts`` concepts on every
(positive, negative) pair, whose mean difference equals mean(pos) - mean(neg), and its cosine with
ours is reported. (``pip install steering-vectors`` pins transformers < 5, which would downgrade
slmlab's; point PYTHONPATH at an unpacked wheel instead, e.g. ``pip download steering-vectors
--no-deps`` then unzip.)

    python benchmarks/steer_extract.py                          # tiny-random, shipped corpus, all layers
    python benchmarks/steer_extract.py --model smollm2-135m --layers 10,20 --naive-concepts 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--corpus", default=str(ROOT / "examples" / "steer"))
    ap.add_argument("--layers", default="all")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--naive-concepts", type=int, default=0,
                    help="run the naive extraction for only the first N concepts and extrapolate its time (0 = all)")
    ap.add_argument("--sv-concepts", type=int, default=3, help="concepts to compare with steering-vectors (0 = skip)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default; 1 is faster on a busy box)")
    args = ap.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from slmlab.models import load
    from slmlab.steer.corpus import load_corpus
    from slmlab.steer.extract import collect_activations, concept_vectors, diff_of_means, model_shape, parse_layers

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = load_corpus(args.corpus)
    layers = parse_layers(args.layers, model_shape(args.model).n_layers)
    model, tok = load(args.model)
    print(f"model {args.model}, corpus {args.corpus}: {len(corpus.concepts)} concepts, {len(corpus.texts)} unique texts, "
          f"layers {layers[0]}..{layers[-1]} ({len(layers)}), batch {args.batch_size}, torch threads {torch.get_num_threads()}")

    t = time.perf_counter()
    acts = collect_activations(model, tok, corpus.texts, layers, batch_size=args.batch_size)
    ours = {l: concept_vectors(acts.acts[l], corpus) for l in layers}
    dedup_s = time.perf_counter() - t
    print(f"dedup : {acts.texts_forwarded:5d} forwards ({acts.batches} batches, {acts.tokens} tokens) in {dedup_s:7.2f}s")

    concepts = corpus.concepts[: args.naive_concepts] if args.naive_concepts else corpus.concepts
    t = time.perf_counter()
    forwards, tokens, worst = 0, 0, 1.0
    for k, c in enumerate(concepts):
        pos, neg = corpus.positives(c), corpus.negatives(c)
        a = collect_activations(model, tok, [corpus.texts[i] for i in pos + neg], layers, batch_size=args.batch_size)
        forwards, tokens = forwards + a.texts_forwarded, tokens + a.tokens
        for l in layers:
            v = diff_of_means(a.acts[l], list(range(len(pos))), list(range(len(pos), len(pos) + len(neg))))
            worst = min(worst, float(v @ ours[l][k]))
    naive_s = time.perf_counter() - t
    scale = len(corpus.concepts) / len(concepts)
    note = f" (measured on {len(concepts)} concepts, x{scale:.1f} extrapolated)" if scale != 1 else ""
    print(f"naive : {int(forwards * scale):5d} forwards ({int(tokens * scale)} tokens) in {naive_s * scale:7.2f}s{note}")
    print(f"speed-up {naive_s * scale / dedup_s:.1f}x wall, {forwards * scale / acts.texts_forwarded:.1f}x forwards; "
          f"min cosine(naive, dedup) over concepts x layers = {worst:.6f}")

    if args.sv_concepts <= 0:
        return
    try:
        import steering_vectors
    except ImportError:
        print("steering-vectors: not importable, comparison skipped (see the docstring for how to make it importable)")
        return
    cmp_layers = sorted({layers[len(layers) // 2], layers[-1]})
    t = time.perf_counter()
    cos, n_pairs = [], 0
    for k, c in enumerate(corpus.concepts[: args.sv_concepts]):
        pairs = [(corpus.texts[p], corpus.texts[n]) for p in corpus.positives(c) for n in corpus.negatives(c)]
        n_pairs += len(pairs)
        sv = steering_vectors.train_steering_vector(model, tok, pairs, layers=cmp_layers, read_token_index=-1,
                                                    batch_size=args.batch_size)
        for l in cmp_layers:
            d = sv.layer_activations[l].float()
            cos.append(float(d @ ours[l][k] / d.norm()))
    print(f"steering-vectors {getattr(steering_vectors, '__version__', '')}: {2 * n_pairs} forwards for "
          f"{args.sv_concepts} concepts in {time.perf_counter() - t:.2f}s; cosine with ours at layers {cmp_layers}: "
          f"min {min(cos):.6f}, mean {sum(cos) / len(cos):.6f}")


if __name__ == "__main__":
    main()
