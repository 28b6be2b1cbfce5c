"""How fast can we make *verified* pure-logic examples on one core?

Times, in one process:
  (a) the fast path, cold (empty caches: every shape is built and solved) and
      warm (shapes cached, items are verified shapes under fresh renamings);
  (b) writing the warm items as JSONL (json.dumps per record, ensure_ascii=False);
  (c) for comparison, an unverified f-string generator in the style of the seed
      (no solver, no variety), and how far we are from the seed's 665k/s claim.

Usage: python benchmarks/data_gen.py [--count 200000] [--seed 0]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import tempfile
import time
from collections import Counter

from slmlab.data.logic import FAMILIES, generate_pure, solve

SEED_CLAIM = 665_000  # examples/s the seed claimed for its unverified templates


def naive_unverified(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """The seed's approach: fixed templates by f-string, answers asserted, never checked."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = []
    for _ in range(n):
        p, q, r = rng.sample(letters, 3)
        kind = rng.randrange(4)
        if kind == 0:
            out.append((f"{p}→{q},{p}?{q}", "●"))
        elif kind == 1:
            out.append((f"{p}→{q},¬{q}?{p}", "○"))
        elif kind == 2:
            out.append((f"{p}∨{q},¬{p}?{q}", "●"))
        else:
            out.append((f"{p}→{q},{q}?{p}", "◐"))
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def write_jsonl(items, path: str) -> int:
    with open(path, "w", encoding="utf-8") as fh:
        for item in items:
            record = {"input": item.text, "output": item.answer, "family": item.family, "rule": item.rule, "key": item.key}
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return os.path.getsize(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200_000, help="examples per timed run (default 200000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", type=int, default=2000, help="warm items re-solved from scratch as a spot check")
    args = parser.parse_args()
    n = args.count

    print(f"{n:,} pure-logic examples, seed {args.seed}, {len(FAMILIES)} families, one core\n")
    _, cold_s = timed(lambda: generate_pure(random.Random(args.seed), n))
    print(f"(a) verified, cold : {cold_s:7.2f} s  {n / cold_s:>10,.0f} examples/s  (builds and solves every shape)")
    items, warm_s = timed(lambda: generate_pure(random.Random(args.seed + 1), n))
    warm_rate = n / warm_s
    print(f"    verified, warm : {warm_s:7.2f} s  {warm_rate:>10,.0f} examples/s  (cached verified shapes, fresh renamings)")
    counts = Counter(i.answer for i in items)
    print("    answers        : " + "  ".join(f"{g} {c / n:.1%}" for g, c in counts.most_common()))
    print(f"    distinct shapes: {len({i.key for i in items}):,}")

    sample = random.Random(args.seed).sample(items, min(args.check, n))
    wrong = [i for i in sample if solve(i.text) != i.answer]
    print(f"    spot check     : {len(sample) - len(wrong):,}/{len(sample):,} re-solved from scratch agree")

    with tempfile.TemporaryDirectory() as tmp:
        size, write_s = timed(lambda: write_jsonl(items, os.path.join(tmp, "logic.jsonl")))
    print(f"(b) JSONL write    : {write_s:7.2f} s  {n / write_s:>10,.0f} records/s  ({size / 1e6:.1f} MB)")
    print(f"    generate+write : {n / (warm_s + write_s):>19,.0f} examples/s (warm)")

    # Same conditions as the fast path, which pauses the cyclic GC while it allocates.
    gc.disable()
    try:
        _, naive_s = timed(lambda: naive_unverified(random.Random(args.seed), n))
    finally:
        gc.enable()
    naive_rate = n / naive_s
    print(f"(c) unverified     : {naive_s:7.2f} s  {naive_rate:>10,.0f} examples/s  (f-strings, 4 templates, no solver)")
    print(f"    verified/unverified (warm): {warm_rate / naive_rate:.2f}")
    print(f"    warm verified vs the seed's claimed {SEED_CLAIM:,}/s: {warm_rate / SEED_CLAIM:.0%}")
    if wrong:
        raise SystemExit(f"{len(wrong)} fast-path answers disagree with the solver, e.g. {wrong[0]}")


if __name__ == "__main__":
    main()
