"""Batched generation vs one-prompt-at-a-time `model.generate`, and the basin labeller's speed.

Both sides generate greedily from the 49-prompt basin corpus (chat template) with the
same max_new_tokens, in one run. Tokens/s counts generated tokens up to EOS.

    python benchmarks/eval_throughput.py                 # SmolLM2-135M, 48 new tokens
    python benchmarks/eval_throughput.py --prompts 16    # quicker
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=49)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from slmlab.evaluate.basin_map import load_prompts
    from slmlab.evaluate.basins import label
    from slmlab.evaluate.generate import format_prompt, generate
    from slmlab.models import load

    hf_logging.set_verbosity_error()
    model, tok = load(args.model)
    prompts = [format_prompt(tok, p["input"]) for p in load_prompts("basins49")[: args.prompts]]

    batched = generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    t = time.perf_counter()
    seq_tokens = 0
    texts = []
    with torch.no_grad():
        for p in prompts:
            enc = tok(p, return_tensors="pt", add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                 temperature=None, top_p=None, top_k=None)
            ids = out[0, enc["input_ids"].shape[1]:].tolist()
            if tok.eos_token_id in ids:
                ids = ids[: ids.index(tok.eos_token_id)]
            seq_tokens += len(ids)
            texts.append(tok.decode(ids, skip_special_tokens=True))
    seq_seconds = time.perf_counter() - t

    same = sum(a.text == b for a, b in zip(batched.generations, texts))
    print(f"{len(prompts)} prompts, max_new_tokens {args.max_new_tokens}, model {args.model}")
    print(f"batched (batch {args.batch_size}): {batched.new_tokens} tokens in {batched.seconds:.1f}s = {batched.tokens_per_second:.1f} tokens/s")
    print(f"sequential model.generate:     {seq_tokens} tokens in {seq_seconds:.1f}s = {seq_tokens / seq_seconds:.1f} tokens/s")
    print(f"ratio batched/sequential: {batched.tokens_per_second / (seq_tokens / seq_seconds):.2f}x; identical greedy texts: {same}/{len(prompts)}")

    all_texts = [g.text for g in batched.generations] * 20
    t = time.perf_counter()
    for text in all_texts:
        label(text, use_embeddings=False)
    dt = time.perf_counter() - t
    print(f"basin labeller (lexical): {len(all_texts) / dt:.0f} generations/s")


if __name__ == "__main__":
    main()
