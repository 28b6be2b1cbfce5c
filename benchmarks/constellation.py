"""Dense kernel vs learned-gate MoE vs E8 geometric router, same parameters, same token budget, several seeds.

The three arms (``slmlab.kernel.constellation``), built for every seed with the same tokenizer,
depth, K and seed (init seed = run seed, so seeds vary the initial weights, the routers'
fixed projections *and* the data order):

* ``dense``   — one SwiGLU MLP of width K · expert_intermediate per layer (the same parameters as
  the K experts; with the defaults it is exactly the plain depth-2 kernel);
* ``learned`` — K experts, a linear gate, top-k with softmax weights, Switch balance loss (α 0.01);
* ``e8``      — K experts at the E8 simple roots, each token sent to its k nearest prototypes by
  Fisher-Rao distance from its basin coordinate; no learned gate.

Every run is ``slmlab train`` (``adapter.kind: full``) through the series tooling
(``slmlab.compare.series.run_series``): one series per seed (``WORK/series-s<seed>``, the three
arms as its cells), because each seed has its own initial models and a spec's cells cannot change
their model with the seed. Same budget for all: ``--steps`` × ``--batch-size`` chunks of at most
``--max-length`` tokens (packed), AdamW ``--lr`` with a cosine schedule (5% warm-up, down to
10%), clipping at 1.0, one CPU thread a run, health checks and recovery off, one evaluation at
the end. Runs are executed one after the other, seed by seed (dense, learned, e8 for each seed).

The table (also ``WORK/summary.json``):

* held-out bits per byte (the loop's ``eval_bpb`` on ``DATA/val.jsonl``): mean and 95% t-interval
  over seeds (``slmlab.compare.stats.summarize``), and each arm's paired (same seed) difference
  from ``dense`` with its 95% t-interval (``paired_difference``);
* load balance on held-out text (the first ``--routing-texts`` validation chunks, through
  ``held_out_routing``, all layers pooled): max and min expert share, entropy / ln K (1 = even);
  the same entropy for the counts recorded during training; κ (adjacent-layer routing NMI,
  held out); then every expert's held-out share per arm (mean over seeds);
* wall time: training seconds per run (``elapsed`` at the last step: no evaluation happens before
  it) and median seconds per step. Other processes sharing the CPU change these; compare them
  only within one invocation on a quiet machine.

The data and tokenizer are built beforehand (docs/kernel.md, with a 2048-token vocabulary):

    slmlab kernel corpus -o /tmp/kernel-data/raw --mix logic
    slmlab kernel tokenizer /tmp/kernel-data/raw/train.jsonl --vocab 2048 -o /tmp/kernel-data/tok-2k
    slmlab kernel corpus -o /tmp/kernel-data/corpus --mix logic --chunk-tokens 128 --tokenizer /tmp/kernel-data/tok-2k

then (rerunning the same command resumes: finished runs are kept; other settings need another
``--work`` or ``--fresh``):

    .venv/bin/python benchmarks/constellation.py --tokenizer /tmp/kernel-data/tok-2k --data /tmp/kernel-data/corpus --quick
    .venv/bin/python benchmarks/constellation.py --tokenizer /tmp/kernel-data/tok-2k --data /tmp/kernel-data/corpus

Defaults: depth 2 (hidden 96, 2 layers), K = 8 experts at the 8 simple roots, experts 32 wide
(dense: 256, the family's own width), 2 experts per token, 150 steps × 8 chunks × ≤ 128 tokens,
lr 3e-3, seeds 0, 1, 2: nine runs. ``--quick``: 1 seed, 20 steps, 64 routing texts.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ARMS = ("dense", "learned", "e8")
QUICK = {"seeds": 1, "steps": 20, "routing_texts": 64}
MODEL_KEYS = ("depth", "experts", "expert_intermediate", "experts_per_token", "seeds")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", type=Path, required=True, help="tokenizer directory (slmlab kernel tokenizer)")
    ap.add_argument("--data", type=Path, required=True, help="chunked corpus directory with train.jsonl and val.jsonl")
    ap.add_argument("--work", type=Path, default=None, help="work directory (default runs/constellation[-quick])")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8, help="K experts per layer (at most 8: the simple roots)")
    ap.add_argument("--expert-intermediate", type=int, default=32, help="width of each expert (dense: K times this)")
    ap.add_argument("--experts-per-token", type=int, default=2, help="top-k of the learned and e8 routers")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8, help="chunks per step (packed)")
    ap.add_argument("--max-length", type=int, default=128, help="data.max_length (= the corpus's --chunk-tokens)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--routing-texts", type=int, default=256, help="validation chunks the held-out routing is measured on")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 20 steps")
    ap.add_argument("--fresh", action="store_true", help="delete the work directory first")
    args = ap.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    if min(args.steps, args.seeds, args.depth, args.batch_size, args.experts, args.routing_texts) < 1:
        ap.error("--steps, --seeds, --depth, --batch-size, --experts and --routing-texts must be positive")
    for path in (args.tokenizer / "tokenizer.json", args.data / "train.jsonl", args.data / "val.jsonl"):
        if not path.is_file():
            ap.error(f"{path} does not exist (build the data first: see the docstring)")
    args.work = args.work or Path("runs/constellation" + ("-quick" if args.quick else ""))
    return args


# --------------------------------------------------------------------------- models and series


def build_models(work: Path, args: argparse.Namespace) -> dict[int, dict[str, str]]:
    """One model directory per (seed, arm); built once, checked on reuse."""
    from slmlab.io import read_json, write_json
    from slmlab.kernel.constellation import init_constellation

    wanted = {k: getattr(args, k) for k in MODEL_KEYS} | {"tokenizer": str(args.tokenizer.resolve())}
    marker = work / "models.json"
    if marker.is_file():
        built = read_json(marker)
        if built["params"] != wanted:
            sys.exit(f"{work} was built with {built['params']}, not {wanted}: use another --work (or --fresh)")
        return {int(s): arms for s, arms in built["models"].items()}
    models: dict[int, dict[str, str]] = {}
    for seed in range(args.seeds):
        models[seed] = {}
        for arm in ARMS:
            out = work / "models" / f"{arm}-s{seed}"
            init_constellation(args.depth, args.experts, arm, args.tokenizer, out, seed=seed,
                               experts_per_token=args.experts_per_token, expert_intermediate=args.expert_intermediate,
                               context=max(args.max_length, 8), overwrite=True)
            models[seed][arm] = str(out.resolve())
    write_json(marker, {"params": wanted, "models": {str(s): a for s, a in models.items()}})
    return models


def base_config(args: argparse.Namespace, model: str, seed: int) -> dict:
    """The training config of every run of one seed (the cells override ``model``)."""
    return {"name": "run", "model": model, "seed": seed, "adapter": {"kind": "full"},
            "data": {"train": str(args.data.resolve() / "train.jsonl"), "eval": str(args.data.resolve() / "val.jsonl"),
                     "max_length": args.max_length, "packing": True},
            "objective": {"kind": "sft"}, "optimizer": {"name": "adamw", "lr": args.lr, "weight_decay": 0.0},
            "schedule": {"kind": "cosine", "warmup_steps": max(1, round(0.05 * args.steps)), "min_lr_ratio": 0.1},
            "batch_size": args.batch_size, "grad_accum": 1, "max_grad_norm": 1.0, "max_steps": args.steps,
            "log_every": 1, "eval_every": None, "save_every": None, "keep_checkpoints": 1,
            "recovery": {"enabled": False}, "watch": {"enabled": False, "dashboard": False}}


def run_seed(work: Path, args: argparse.Namespace, seed: int, models: dict[str, str]) -> dict[str, Path | None]:
    """The series of one seed (one cell per arm); returns {arm: run directory, or None if it failed}."""
    import yaml

    from slmlab.compare.series import run_series

    folder = work / "specs"
    folder.mkdir(parents=True, exist_ok=True)
    base = base_config(args, models["dense"], seed)
    (folder / f"base-s{seed}.yaml").write_text(yaml.safe_dump(base, sort_keys=False), encoding="utf-8")
    spec = {"name": f"constellation-s{seed}", "base": f"base-s{seed}.yaml", "seeds": [seed],
            "variants": {arm: {"model": models[arm]} for arm in ARMS}, "baseline": "dense",
            "primary": {"metric": "eval_loss", "minimum_effect": 0.0, "higher_is_better": False},
            "threads": args.threads}
    (folder / f"series-s{seed}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    print(f"[{time.strftime('%H:%M:%S')}] seed {seed}: {', '.join(ARMS)}, {args.steps} steps", flush=True)
    records = run_series(folder / f"series-s{seed}.yaml", work / f"series-s{seed}", on_record=print_record)
    return {arm: (work / f"series-s{seed}" / "cells" / arm / f"seed-{seed}" if r["status"] == "done" else None)
            for arm, r in zip(ARMS, records)}


def print_record(task, record: dict) -> None:
    metrics = record.get("metrics") or {}
    what = f"eval_loss {metrics.get('eval_loss'):.4f}" if record["status"] == "done" else record.get("error", "")[:200]
    print(f"  {task.cell} seed {task.seed}: {record['status']} in {record.get('seconds', 0):.0f}s; {what}", flush=True)


# --------------------------------------------------------------------------- reading a run


def read_run(run_dir: Path | None, val_ids: list[list[int]]) -> dict | None:
    """Held-out bpb, wall time, and routing (training counts and held out) of a finished run."""
    if run_dir is None:
        return None
    from slmlab.io import read_json, read_jsonl_tolerant
    from slmlab.kernel.constellation import held_out_routing, routing_stats
    from slmlab.models import load

    summary = read_json(run_dir / "results.json")
    rows = [r for r in read_jsonl_tolerant(run_dir / "metrics.jsonl") if "loss" in r and not r.get("rolled_back")]
    elapsed = [r["elapsed"] for r in rows]
    steps = [b - a for a, b in itertools.pairwise(elapsed)]
    model, _ = load(str(run_dir / "model"))
    return {"bpb": summary["train"].get("eval_bpb"), "eval_loss": summary["train"].get("eval_loss"),
            "tokens": summary["train"]["tokens_seen"], "train_s": elapsed[-1] if elapsed else None,
            "s_per_step": statistics.median(steps) if steps else None,
            "params": summary["memory"]["trainable_params"],
            "routing_train": routing_stats(model), "routing_val": held_out_routing(model, val_ids)}


def validation_ids(args: argparse.Namespace) -> list[list[int]]:
    """The first ``--routing-texts`` validation chunks, tokenized as training tokenizes them."""
    from slmlab.kernel.bpb import read_eval_texts
    from slmlab.kernel.tokenizer import load_kernel_tokenizer

    tok = load_kernel_tokenizer(args.tokenizer)
    texts = read_eval_texts(args.data / "val.jsonl", args.routing_texts)
    return [ids[:args.max_length] for ids in tok(texts, add_special_tokens=False)["input_ids"]]


# --------------------------------------------------------------------------- report


def arm_row(arm: str, runs: dict[int, dict | None], dense: dict[int, dict | None]) -> dict:
    """One line of the table (numbers, not yet formatted)."""
    from slmlab.compare.stats import paired_difference, summarize

    bpb = {s: (r["bpb"] if r else None) for s, r in runs.items()}
    done = [r for r in runs.values() if r]
    routed = [r for r in done if r["routing_val"]["overall"]]
    diff = paired_difference(bpb, {s: (r["bpb"] if r else None) for s, r in dense.items()}, n_boot=0)
    return {"arm": arm, "runs": len(runs), "failed": len(runs) - len(done),
            "params": done[0]["params"] if done else None,
            "bpb": summarize(list(bpb.values()), n_boot=0).to_dict(),
            "delta_vs_dense": diff.to_dict() if arm != "dense" else None,
            "train_s": mean_of(r["train_s"] for r in done), "s_per_step": mean_of(r["s_per_step"] for r in done),
            "tokens": mean_of(r["tokens"] for r in done),
            "max_share": mean_of(r["routing_val"]["overall"]["max_share"] for r in routed),
            "min_share": mean_of(r["routing_val"]["overall"]["min_share"] for r in routed),
            "entropy_val": mean_of(r["routing_val"]["overall"]["entropy_norm"] for r in routed),
            "entropy_train": mean_of(r["routing_train"]["overall"]["entropy_norm"] for r in routed),
            "kappa": mean_of(r["routing_val"]["kappa"] for r in routed),
            "shares": [statistics.mean(col) for col in zip(*(r["routing_val"]["overall"]["shares"] for r in routed))]}


def mean_of(values) -> float | None:
    """The mean of the values that are not None (None when there are none)."""
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def fmt(x: float | None, spec: str = ".4f") -> str:
    return "–" if x is None else format(x, spec)


def format_row(row: dict) -> str:
    b, d = row["bpb"], row["delta_vs_dense"]
    lo, hi = b["ci"] or (None, None)
    bpb = f"{fmt(b['mean'])} [{fmt(lo)}, {fmt(hi)}]" + (f" ({row['failed']} failed)" if row["failed"] else "")
    dlo, dhi = (d and d["ci"]) or (None, None)
    delta = "–" if d is None else f"{fmt(d['mean'], '+.4f')} [{fmt(dlo, '+.4f')}, {fmt(dhi, '+.4f')}]"
    return (f"| {row['arm']} | {fmt(row['params'], ',.0f')} | {bpb} | {delta} | {fmt(row['max_share'], '.3f')} "
            f"| {fmt(row['min_share'], '.3f')} | {fmt(row['entropy_val'], '.3f')} | {fmt(row['entropy_train'], '.3f')} "
            f"| {fmt(row['kappa'], '.3f')} | {fmt(row['train_s'], '.1f')} | {fmt(row['s_per_step'], '.3f')} |")


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    tokens = next((r["tokens"] for r in rows if r["tokens"]), None)
    print(f"\n{args.seeds} seed(s) × {args.steps} steps × {args.batch_size} chunks of ≤ {args.max_length} tokens "
          f"({fmt(tokens, ',.0f')} token positions a run); depth {args.depth}, K = {args.experts}, "
          f"{args.experts_per_token} per token; mean [95% CI] over seeds")
    print("| arm | params | val bpb | Δ bpb vs dense, paired | max share | min share | entropy/ln K (val) "
          "| entropy/ln K (train) | κ | train s | s/step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(format_row(row))
    print("\nHeld-out share of each expert (all layers, mean over seeds):")
    for row in rows:
        if row["shares"]:
            print(f"  {row['arm']:8s} " + " ".join(f"{s:.3f}" for s in row["shares"]))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    models = build_models(args.work, args)
    val_ids = validation_ids(args)
    runs: dict[str, dict[int, dict | None]] = {arm: {} for arm in ARMS}
    for seed in range(args.seeds):
        dirs = run_seed(args.work, args, seed, models[seed])
        for arm in ARMS:
            runs[arm][seed] = read_run(dirs[arm], val_ids)
    rows = [arm_row(arm, runs[arm], runs["dense"]) for arm in ARMS]
    print_table(rows, args)
    from slmlab.io import write_json

    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(args.work / "summary.json", {"args": settings, "rows": rows,
                                            "runs": {a: {str(s): r for s, r in rs.items()} for a, rs in runs.items()}})
    print(f"\n{args.work / 'summary.json'}; total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
