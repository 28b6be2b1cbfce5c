"""slmlab vs TRL's SFTTrainer vs a bare step: the same LoRA fine-tune of SmolLM2-135M, side by side in one run.

Every trainer gets the *same* (prompt, completion) strings — rendered once by slmlab — with the
same LoRA (r=32 α=64 dropout 0.05, all linear layers), batch, accumulation, learning rate,
cosine schedule, clipping, seed and max length. TRL uses completion-only loss on a
prompt-completion dataset and pads per batch (its default). Each trainer runs in its own
child process, so its peak RSS is its own. Afterwards every adapter is scored by the *same*
function on the same held-out pairs, so "same loss" is measured, not assumed.

Rows:

* ``TRL default`` — SFTConfig's defaults (gradient checkpointing *on*);
* ``TRL no-ckpt`` — ``gradient_checkpointing=False``, TRL's fastest setting on CPU. The headline
  ratio is against the faster of the two TRL rows (TRL-best);
* ``slmlab`` — ``slmlab train`` (the loop: data plan, batches, recovery, health checks, logs);
* ``bare step`` — the mathematics alone: the same micro-batches as slmlab's (built before the
  clock starts) and the same LoRA dropout (slmlab's FastDropout), then forward → head at
  labelled positions → cross-entropy → backward → clip → ``AdamW.step`` → schedule, inline.
  slmlab/bare-step is the loop's overhead;
* ``slmlab context-frozen`` (``--frozen``) — a *different gradient* (no gradient through the
  prompt's keys and values), shown as its own row, never in the headline.

Shapes (``--shape``): ``short`` — glyph-logic puzzles (pure-logic recipe in the v6 format,
~24 tokens, max_length 64); ``v6`` — v6-golden (max_length 128); ``chat`` — tool calls and
role examples rendered through SmolLM2's chat template (max_length 256).
tokens/s counts the same real (non-pad) tokens for every row: each training pair's prompt +
completion. ``--seeds N`` repeats the slmlab and TRL-no-ckpt rows over N seeds and prints the
held-out loss mean ± sd of each, to show loss parity beyond one seed.

    python benchmarks/train_vs_trl.py --shape short              # issue 11's setting (~6 min on 2 cores)
    python benchmarks/train_vs_trl.py --shape v6 --examples 256
    python benchmarks/train_vs_trl.py --shape short --seeds 3
    python benchmarks/train_vs_trl.py --shape short --examples 32  # a smoke run

Needs `pip install trl==1.16.0` (benchmark-only dependency: `pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slmlab.io import read_jsonl, write_jsonl

LORA = {"r": 32, "alpha": 64, "dropout": 0.05}
LR = 2e-4
# shape -> (recipes, slmlab template that renders them, max_length, default examples)
SHAPES = {
    "short": (("pure-logic",), "v6", 64, 256),
    "v6": (("v6-golden",), "v6", 128, 512),
    "chat": (("tools-scaffolded", "trio-roles"), "chat", 256, 256),
}


def build_data(work: Path, shape: str, n_train: int, n_eval: int, max_length: int, seed: int = 0) -> int:
    """Write train/eval pairs (the same strings for every trainer); return the real tokens of the training pairs."""
    from slmlab.data.recipes import generate_dataset
    from slmlab.data.roles import load_template, render
    from slmlab.models import load_tokenizer

    recipes, template, _, _ = SHAPES[shape]
    tok, tmpl = load_tokenizer("smollm2-135m"), load_template(template)
    train, test = [], []
    for recipe in recipes:  # a mix takes an equal share from each recipe
        want = n_train // len(recipes) + 1, n_eval // len(recipes) + 1
        # The test split is ~10% (whole puzzle groups), so size the dataset for the larger need.
        ds = generate_dataset(recipe, work / "data" / recipe, count=max(int(want[0] / 0.85), int(want[1] / 0.07)) + 10,
                              seed=seed)
        train += ds.train[: want[0]]
        test += ds.test[: want[1]]
    pairs = {}
    for name, recs, n in (("train", train, n_train), ("eval", test, n_eval)):
        rendered = [render({k: v for k, v in r.items() if k not in ("format", "role")}, tmpl, tok) for r in recs]
        ids = [len(tok(p + c, add_special_tokens=False)["input_ids"]) for p, c in rendered]
        pairs[name] = [pc for pc, n_ids in zip(rendered, ids) if n_ids <= max_length][:n]
        if len(pairs[name]) < n:
            raise SystemExit(f"not enough {name} examples of at most {max_length} tokens ({len(pairs[name])} < {n})")
        write_jsonl(work / f"{name}_pairs.jsonl", [{"prompt": p, "completion": c} for p, c in pairs[name]])
    prompts, completions = (tok(list(x), add_special_tokens=False)["input_ids"] for x in zip(*pairs["train"]))
    return sum(len(p) + len(c) for p, c in zip(prompts, completions))


def heldout_loss(model, tokenizer, work: Path, max_length: int) -> float:
    """Mean NLL per completion token on the held-out pairs (identical for both trainers)."""
    import torch

    from slmlab.train.batching import collate, encode_pairs, pack
    from slmlab.train.objectives import SupervisedLM, sft_loss

    pairs = [(r["prompt"], r["completion"]) for r in read_jsonl(work / "eval_pairs.jsonl")]
    examples, _ = encode_pairs(pairs, tokenizer, max_length)
    lm = SupervisedLM(model).eval()
    total = n = 0.0
    with torch.no_grad():
        for i in range(0, len(examples), 16):
            parts = sft_loss(lm, collate(pack(examples[i : i + 16], max_length), tokenizer.pad_token_id))
            total, n = total + parts.total.item(), n + parts.normaliser
    return total / n


def child_slmlab(work: Path, args) -> dict:
    from peft import PeftModel

    from slmlab.models import load
    from slmlab.train.config import load_train_config
    from slmlab.train.loop import run

    cfg = load_train_config(data={
        "name": f"bench-{args.mode}-{args.optimizer}-{args.seed}", "model": "smollm2-135m", "seed": args.seed,
        "output_dir": str(work / "runs"), "adapter": {"kind": "lora", **LORA},
        "data": {"train": str(work / "train_pairs.jsonl"), "max_length": args.max_length, "packing": True},
        "optimizer": {"name": args.optimizer, "lr": LR},
        "schedule": {"kind": "cosine", "warmup_steps": args.warmup, "min_lr_ratio": 0.0},
        "batch_size": args.batch, "grad_accum": args.accum, "epochs": 1, "save_every": None, "log_every": 1,
        "context_frozen": args.mode == "frozen", "watch": {"dashboard": False},
    })
    t = time.perf_counter()
    result = run(cfg)
    seconds = time.perf_counter() - t
    elapsed = [m["elapsed"] for m in read_jsonl(result.run_dir / "metrics.jsonl")]
    step_seconds = sorted(b - a for a, b in itertools.pairwise(elapsed))
    model, tok = load("smollm2-135m")
    model = PeftModel.from_pretrained(model, str(result.run_dir / "adapter"))
    return {"seconds": seconds, "train_seconds": result.summary["train"]["elapsed_s"], "losses": result.losses,
            # the first step pays one-off costs (allocator warm-up, lazy initialisation)
            "first_step_s": elapsed[0], "median_step_s": step_seconds[len(step_seconds) // 2] if step_seconds else None,
            "heldout": heldout_loss(model, tok, work, args.max_length),
            "optimizer_state_bytes": result.summary["memory"]["optimizer_state_bytes"],
            "positions": result.summary["train"]["tokens_seen"],
            "dropped_examples": result.summary["train"]["dropped_examples"]}


def bare_batches(tok, work: Path, args) -> list[list[dict]]:
    """slmlab's micro-batches for every step of one epoch, built before any clock starts."""
    from slmlab.train.batching import encode_pairs
    from slmlab.train.data import DataPlan, make_batch, units

    pairs = [(r["prompt"], r["completion"]) for r in read_jsonl(work / "train_pairs.jsonl")]
    examples, _ = encode_pairs(pairs, tok, args.max_length)
    plan = DataPlan(units(examples, 1), args.batch, args.accum, 1, args.seed)
    return [[make_batch(mb, args.max_length, True, tok.pad_token_id) for mb in plan.step_micro_batches(step)]
            for step in range(plan.steps_per_epoch)]


def child_bare(work: Path, args) -> dict:
    """The mathematics of a LoRA SFT step and nothing else, on slmlab's batches."""
    import math

    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    from slmlab.models import load
    from slmlab.train.dropout import use_fast_dropout

    torch.manual_seed(args.seed)
    model, tok = load("smollm2-135m")
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    use_fast_dropout(model)  # the same dropout as slmlab's, so slmlab/bare-step is the loop's overhead alone
    model.train()
    steps = bare_batches(tok, work, args)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    total, warm = len(steps), args.warmup

    def factor(step: int) -> float:  # the same cosine-with-warmup as slmlab's and TRL's schedules
        if step < warm:
            return (step + 1) / (warm + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    core, losses = model.get_base_model(), []
    t = time.perf_counter()
    for micro in steps:
        n = sum(int((mb["targets"] != -100).sum()) for mb in micro)
        step_loss = 0.0
        for mb in micro:
            hidden = core.model(input_ids=mb["input_ids"], position_ids=mb["position_ids"]).last_hidden_state
            mask = mb["targets"] != -100
            loss = F.cross_entropy(core.lm_head(hidden[mask]).float(), mb["targets"][mask], reduction="sum")
            (loss / n).backward()
            step_loss += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(step_loss / n)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "train_seconds": seconds, "losses": losses,
            "heldout": heldout_loss(model, tok, work, args.max_length)}


def child_trl(work: Path, args) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from slmlab.models import load

    model, tok = load("smollm2-135m")
    ds = Dataset.from_list(read_jsonl(work / "train_pairs.jsonl"))
    # mode "default" leaves gradient checkpointing at SFTConfig's default (on); "no-ckpt" turns it off.
    extra = {"gradient_checkpointing": False} if args.mode == "no-ckpt" else {}
    config = SFTConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.accum,
        learning_rate=LR, num_train_epochs=1, lr_scheduler_type="cosine", warmup_steps=args.warmup,
        max_grad_norm=1.0, max_length=args.max_length, completion_only_loss=True, packing=False,
        logging_steps=1, save_strategy="no", report_to="none", seed=args.seed, data_seed=args.seed, use_cpu=True,
        dataloader_num_workers=0, bf16=False, fp16=False, optim="adamw_torch", weight_decay=0.0, **extra,
    )
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=tok, peft_config=lora)
    t = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "train_seconds": out.metrics["train_runtime"], "losses": losses,
            "heldout": heldout_loss(trainer.model, tok, work, args.max_length),
            "gradient_checkpointing": bool(config.gradient_checkpointing)}


CHILDREN = {"slmlab": child_slmlab, "trl": child_trl, "bare": child_bare}


def run_child(which: str, work: Path, args, mode: str = "exact", optimizer: str = "adamw", seed: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--work", str(work), "--mode", mode, "--optimizer", optimizer,
           "--max-length", str(args.max_length), "--warmup", str(args.warmup), "--batch", str(args.batch),
           "--accum", str(args.accum), "--seed", str(seed)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{which} child failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"[{which} {mode} {optimizer} seed {seed}] "
          f"{json.dumps({k: v for k, v in result.items() if k != 'losses'})}", flush=True)
    return result


def print_table(rows: dict, n: int, tokens: int) -> None:
    print(f"{'trainer':24} {'train s':>8} {'ex/s':>7} {'tok/s':>8} {'last-8 loss':>12} {'held-out':>9} {'peak RSS MB':>12}")
    for name, r in rows.items():
        last = sum(r["losses"][-8:]) / len(r["losses"][-8:])
        print(f"{name:24} {r['train_seconds']:8.1f} {n / r['train_seconds']:7.2f} {tokens / r['train_seconds']:8.0f} "
              f"{last:12.4f} {r['heldout']:9.4f} {r['peak_rss_mb']:12.0f}")


def print_ratios(rows: dict) -> None:
    ours = rows["slmlab"]
    best = min(("TRL default", "TRL no-ckpt"), key=lambda k: rows[k]["train_seconds"])
    for label, key in (("TRL-best", best), ("TRL-default", "TRL default"), ("bare-step", "bare step")):
        other = rows[key]
        speed = other["train_seconds"] / ours["train_seconds"]
        gap = (ours["heldout"] - other["heldout"]) / other["heldout"]
        print(f"slmlab/{label:11} speed ratio: {speed:.2f}x   held-out loss difference: {gap:+.1%}   ({key})")
    if ours.get("dropped_examples"):
        print(f"note: slmlab dropped {ours['dropped_examples']} examples longer than max_length")
    for name, r in rows.items():
        if "optimizer_state_bytes" in r:
            print(f"{name}: optimizer state {r['optimizer_state_bytes'] / 2**20:.1f} MiB, "
                  f"{r['positions']} positions computed, first step {r['first_step_s']:.1f} s, "
                  f"median step {r['median_step_s'] or float('nan'):.2f} s")


def print_seeds(work: Path, args, rows: dict) -> None:
    """Held-out loss over seeds 0..N-1 for slmlab and TRL-no-ckpt (seed 0 is the table's run)."""
    heldout = {"slmlab": [rows["slmlab"]["heldout"]], "TRL no-ckpt": [rows["TRL no-ckpt"]["heldout"]]}
    for seed in range(1, args.seeds):
        heldout["slmlab"].append(run_child("slmlab", work, args, seed=seed)["heldout"])
        heldout["TRL no-ckpt"].append(run_child("trl", work, args, mode="no-ckpt", seed=seed)["heldout"])
    print(f"\nheld-out loss over {args.seeds} seeds (mean ± sd): "
          + "   ".join(f"{k} {statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" for k, v in heldout.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="short")
    ap.add_argument("--examples", type=int, help="training pairs (default: 256 for short/chat, 512 for v6)")
    ap.add_argument("--eval-examples", type=int, default=128)
    ap.add_argument("--max-length", type=int, help="default: 64 short, 128 v6, 256 chat")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=1, help="repeat slmlab and TRL-no-ckpt over this many seeds")
    ap.add_argument("--apollo", action="store_true", help="Also train with APOLLO-Mini (slmlab).")
    ap.add_argument("--frozen", action="store_true", help="Also run slmlab's context-frozen mode (a different gradient).")
    ap.add_argument("--child", choices=list(CHILDREN))
    ap.add_argument("--work", type=Path)
    ap.add_argument("--mode", default="exact")
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    _, _, max_length, examples = SHAPES[args.shape]
    args.max_length = args.max_length or max_length
    args.examples = args.examples or examples

    if args.child:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        res = CHILDREN[args.child](args.work, args)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return

    work = Path(tempfile.mkdtemp(prefix="slmlab-bench-"))
    tokens = build_data(work, args.shape, args.examples, args.eval_examples, args.max_length)
    rows = {"TRL default": run_child("trl", work, args, mode="default"),
            "TRL no-ckpt": run_child("trl", work, args, mode="no-ckpt"),
            "slmlab": run_child("slmlab", work, args),
            "bare step": run_child("bare", work, args)}
    if args.apollo:
        rows["slmlab apollo-mini"] = run_child("slmlab", work, args, optimizer="apollo-mini")
    if args.frozen:
        rows["slmlab context-frozen"] = run_child("slmlab", work, args, mode="frozen")

    print(f"\nshape {args.shape}: {args.examples} pairs, {tokens} real tokens ({tokens / args.examples:.1f}/pair), "
          f"max_length {args.max_length}, LoRA r={LORA['r']} α={LORA['alpha']} dropout {LORA['dropout']} all-linear, "
          f"batch {args.batch} × accum {args.accum}, 1 epoch, {os.cpu_count()} CPU cores")
    print_table(rows, args.examples, tokens)
    print()
    print_ratios(rows)
    if args.seeds > 1:
        print_seeds(work, args, rows)


if __name__ == "__main__":
    main()
