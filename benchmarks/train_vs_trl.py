"""slmlab vs TRL's SFTTrainer: the same LoRA fine-tune of SmolLM2-135M, side by side in one run.

Both train on the same v6-golden examples (rendered by slmlab's v6 template, so the
prompt/completion strings are identical), with the same LoRA (all linear layers), batch,
accumulation, learning rate, schedule, clipping, seed and max length; TRL uses
completion-only loss on a prompt-completion dataset and pads per batch (its default,
correct on CPU). Each trainer runs in its own child process so its peak RSS is its own.
Afterwards both adapters are scored by the *same* function on the same held-out
examples, so "same final loss" is measured, not assumed.

TRL runs twice: with SFTConfig's defaults (which turn gradient checkpointing *on*) and
with ``gradient_checkpointing=False`` (its fastest setting on CPU). The figure to quote is
slmlab against the faster of the two; the ratio against TRL's default is printed too.
tokens/s counts the same real (non-pad) tokens for every row: each training pair's
prompt + completion, capped at max_length, so it differs from examples/s only by a constant.

    python benchmarks/train_vs_trl.py --examples 512            # the issue's setting
    python benchmarks/train_vs_trl.py --examples 64             # a smoke run

Needs `pip install trl==1.16.0` (benchmark-only dependency: `pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slmlab.io import read_jsonl, write_jsonl

LORA = dict(r=32, alpha=64, dropout=0.05)
SEED = 0


def build_data(work: Path, n_train: int, n_eval: int, max_length: int) -> int:
    """Write the datasets; return the real (non-pad) tokens in the training pairs, capped at max_length."""
    from slmlab.data.recipes import generate_dataset
    from slmlab.data.roles import load_template, render
    from slmlab.models import load_tokenizer

    # The test split is ~10% (whole puzzle groups), so size the dataset for the larger need.
    ds = generate_dataset("v6-golden", work / "data", count=max(int(n_train / 0.85), int(n_eval / 0.07)) + 10, seed=SEED)
    train, test = ds.train[:n_train], ds.test[:n_eval]
    if len(train) < n_train or len(test) < n_eval:
        raise SystemExit("not enough generated examples")
    write_jsonl(work / "train.jsonl", train)
    tok, tmpl = load_tokenizer("smollm2-135m"), load_template("v6")
    rendered = {}
    for name, recs in (("train", train), ("eval", test)):
        rendered[name] = pairs = [render(r, tmpl, tok) for r in recs]
        write_jsonl(work / f"{name}_pairs.jsonl", [{"prompt": p, "completion": c} for p, c in pairs])
    prompts, completions = (tok(list(x), add_special_tokens=False)["input_ids"] for x in zip(*rendered["train"]))
    return sum(min(len(p) + len(c), max_length) for p, c in zip(prompts, completions))


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
        "name": f"bench-{args.mode}-{args.optimizer}", "model": "smollm2-135m", "seed": SEED, "output_dir": str(work / "runs"),
        "adapter": {"kind": "lora", **LORA},
        "data": {"train": str(work / "train.jsonl"), "max_length": args.max_length, "packing": True},
        "optimizer": {"name": args.optimizer, "lr": 2e-4},
        "schedule": {"kind": "cosine", "warmup_steps": args.warmup, "min_lr_ratio": 0.0},
        "batch_size": 4, "grad_accum": 2, "epochs": 1, "save_every": None, "log_every": 1,
        "context_frozen": args.mode == "frozen",
    })
    t = time.perf_counter()
    result = run(cfg)
    seconds = time.perf_counter() - t
    model, tok = load("smollm2-135m")
    model = PeftModel.from_pretrained(model, str(result.run_dir / "adapter"))
    return {"seconds": seconds, "train_seconds": result.summary["train"]["elapsed_s"], "losses": result.losses,
            "heldout": heldout_loss(model, tok, work, args.max_length),
            "optimizer_state_bytes": result.summary["memory"]["optimizer_state_bytes"],
            "tokens_seen": result.summary["train"]["tokens_seen"],
            "dropped_examples": result.summary["train"]["dropped_examples"]}


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
        output_dir=str(work / "trl"), per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=2e-4, num_train_epochs=1, lr_scheduler_type="cosine", warmup_steps=args.warmup,
        max_grad_norm=1.0, max_length=args.max_length, completion_only_loss=True, packing=False,
        logging_steps=1, save_strategy="no", report_to="none", seed=SEED, data_seed=SEED, use_cpu=True,
        dataloader_num_workers=0, bf16=False, fp16=False, optim="adamw_torch", weight_decay=0.0, **extra,
    )
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=tok, peft_config=lora)
    t = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    num_tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    return {"seconds": seconds, "train_seconds": out.metrics["train_runtime"], "losses": losses,
            "heldout": heldout_loss(trainer.model, tok, work, args.max_length),
            "gradient_checkpointing": bool(config.gradient_checkpointing),
            "num_tokens": num_tokens[-1] if num_tokens else None}


def run_child(which: str, work: Path, args, mode: str = "exact", optimizer: str = "adamw") -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--work", str(work), "--mode", mode, "--optimizer", optimizer,
           "--max-length", str(args.max_length), "--warmup", str(args.warmup)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{which} child failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"[{which} {mode} {optimizer}] {json.dumps({k: v for k, v in result.items() if k != 'losses'})}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--eval-examples", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=6)
    ap.add_argument("--apollo", action="store_true", help="Also train with APOLLO-Mini (slmlab) for comparison.")
    ap.add_argument("--frozen", action="store_true", help="Also run context-frozen mode (if implemented).")
    ap.add_argument("--child", choices=["slmlab", "trl"])
    ap.add_argument("--work", type=Path)
    ap.add_argument("--mode", default="exact")
    ap.add_argument("--optimizer", default="adamw")
    args = ap.parse_args()

    if args.child:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        res = child_slmlab(args.work, args) if args.child == "slmlab" else child_trl(args.work, args)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return

    work = Path(tempfile.mkdtemp(prefix="slmlab-bench-"))
    tokens = build_data(work, args.examples, args.eval_examples, args.max_length)
    n = args.examples
    rows = {"TRL SFTTrainer": run_child("trl", work, args, mode="default"),
            "TRL no-checkpointing": run_child("trl", work, args, mode="no-ckpt"),
            "slmlab (exact)": run_child("slmlab", work, args)}
    if args.apollo:
        rows["slmlab apollo-mini"] = run_child("slmlab", work, args, optimizer="apollo-mini")
    if args.frozen:
        rows["slmlab context-frozen"] = run_child("slmlab", work, args, mode="frozen")

    print(f"\n{n} v6-golden examples, LoRA r={LORA['r']} α={LORA['alpha']} all-linear, batch 4 × accum 2, 1 epoch, "
          f"max_length {args.max_length}, {tokens} training tokens, {os.cpu_count()} CPU cores")
    print(f"{'trainer':24} {'train s':>8} {'ex/s':>7} {'tok/s':>8} {'last-8 loss':>12} {'held-out':>9} {'peak RSS MB':>12}")
    for name, r in rows.items():
        last = sum(r["losses"][-8:]) / len(r["losses"][-8:])
        print(f"{name:24} {r['train_seconds']:8.1f} {n / r['train_seconds']:7.2f} {tokens / r['train_seconds']:8.0f} "
              f"{last:12.4f} {r['heldout']:9.4f} {r['peak_rss_mb']:12.0f}")
    ours = rows["slmlab (exact)"]
    best = min(("TRL SFTTrainer", "TRL no-checkpointing"), key=lambda k: rows[k]["train_seconds"])
    print()
    for label, key in (("TRL-default", "TRL SFTTrainer"), ("TRL-best", best)):
        trl = rows[key]
        speed = trl["train_seconds"] / ours["train_seconds"]
        loss_gap = (ours["heldout"] - trl["heldout"]) / trl["heldout"]
        print(f"slmlab/{label:11} examples/s ratio: {speed:.2f}x   held-out loss difference: {loss_gap:+.1%}   ({key})")
    if ours.get("dropped_examples"):
        print(f"note: slmlab dropped {ours['dropped_examples']} examples longer than max_length (TRL truncates them)")
    for name, r in rows.items():
        if "optimizer_state_bytes" in r:
            print(f"{name}: optimizer state {r['optimizer_state_bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
