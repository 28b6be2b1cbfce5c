"""Where one slmlab training step's time goes on short examples (issue 11's shapes), next to a bare step.

SmolLM2-135M, LoRA r=32 α=64 dropout 0.05 on all linear layers, AdamW, 8 short glyph puzzles
(v6 format, max_length 64, packed), the same batch every step. Rows:

* ``slmlab train_step`` — ``forward_backward`` → ``optimizer_step`` on a ``StepBatch``, as the loop runs it;
* ``bare step`` — the same model, batch tensors and optimizer, written inline: one forward of the
  packed rows, head at labelled positions only, cross-entropy, backward, clip, ``AdamW.step``;
* ``bare step, foreach AdamW`` — the same with ``foreach=True`` (CPU defaults to the per-tensor loop).

Then a torch.profiler table of one slmlab step, grouped into forward / backward / optimizer / other.

    python benchmarks/profile_step.py                  # about 3 minutes on 2 cores
    python benchmarks/profile_step.py --steps 3        # a smoke run

Measured 2026-12-03 on this 2-core machine, quiet (8 puzzles, 189 real tokens in 256 positions):
train_step 2.44 s vs bare step 2.34 s (0.96×; foreach AdamW 0.90× — slower on CPU here); the
profile puts 96.5% of the step in forward/backward (aten::mm 59%) and 3.5% in the optimizer, and
LoRA dropout's masks (aten::bernoulli_, one per adapted module) take 12%. With dropout 0:
train_step 1.97 s vs bare 2.06 s (1.05×) — dropout 0.05 costs about 19% of a step on CPU.
"""

from __future__ import annotations

import argparse
import time

import torch


def short_batch(tok, n: int, max_length: int):
    import tempfile

    from slmlab.data.recipes import generate_dataset
    from slmlab.data.roles import load_template, render
    from slmlab.train.batching import encode_pairs
    from slmlab.train.objectives.sft import SFT
    from slmlab.train.step import StepBatch

    with tempfile.TemporaryDirectory() as tmp:
        ds = generate_dataset("pure-logic", tmp, count=max(64, 2 * n), seed=0)
    tmpl = load_template("v6")
    pairs = [render(r, tmpl, tok) for r in ds.train[:n]]
    examples, _ = encode_pairs(pairs, tok, max_length)
    from slmlab.train.data import units

    objective = SFT()
    batch = StepBatch.from_units([units(examples, 1)], objective, max_length=max_length, pad_id=tok.pad_token_id)
    return batch, objective, sum(len(e.ids) for e in examples)


def lora_model(dropout: float):
    from peft import LoraConfig, get_peft_model

    from slmlab.models import load

    torch.manual_seed(0)
    model, tok = load("smollm2-135m")
    model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=dropout, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    model.train()
    return model, tok


def time_slmlab(model, batch, objective, steps: int) -> float:
    from slmlab.train.state import new_state
    from slmlab.train.step import train_step

    state = new_state(model, optimizer="adamw", lr=2e-4)
    train_step(state, batch, objective)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        train_step(state, batch, objective)
    return (time.perf_counter() - start) / steps


def time_bare(model, batch, steps: int, foreach: bool) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, foreach=foreach)
    mb = batch.micro_batches[0]
    core = model.get_base_model()
    start = None
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        hidden = core.model(input_ids=mb["input_ids"], position_ids=mb["position_ids"],
                            attention_mask=mb.get("attention_mask")).last_hidden_state
        mask = mb["targets"] != -100
        logits = core.lm_head(hidden[mask])
        loss = torch.nn.functional.cross_entropy(logits.float(), mb["targets"][mask], reduction="sum") / mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def profile_slmlab(model, batch, objective) -> None:
    from torch.profiler import ProfilerActivity, profile, record_function

    from slmlab.train.state import new_state
    from slmlab.train.step import forward_backward, optimizer_step

    state = new_state(model, optimizer="adamw", lr=2e-4)
    forward_backward(state, batch, objective)
    state.optimizer.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("slmlab.forward_backward"):
            result = forward_backward(state, batch, objective)
        with record_function("slmlab.optimizer_step"):
            optimizer_step(state, result)
    events = {e.key: e for e in prof.key_averages()}
    total = sum(events[k].cpu_time_total for k in ("slmlab.forward_backward", "slmlab.optimizer_step"))
    print("\none step, torch.profiler (CPU time):")
    for key in ("slmlab.forward_backward", "slmlab.optimizer_step"):
        print(f"  {key:28s} {events[key].cpu_time_total / 1e3:8.1f} ms  {events[key].cpu_time_total / total:6.1%}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.05)
    args = ap.parse_args()
    model, tok = lora_model(args.dropout)
    batch, objective, real_tokens = short_batch(tok, args.batch, args.max_length)
    positions = batch.tokens
    print(f"{args.batch} examples, {real_tokens} real tokens in {positions} positions "
          f"({len(batch.micro_batches)} micro-batch, rows of {args.max_length}); threads {torch.get_num_threads()}")
    rows = [("slmlab train_step", time_slmlab(model, batch, objective, args.steps)),
            ("bare step", time_bare(model, batch, args.steps, foreach=False)),
            ("bare step, foreach AdamW", time_bare(model, batch, args.steps, foreach=True))]
    base = rows[1][1]
    print("\n| step | s/step | real tokens/s | vs bare step |\n|---|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.3f} | {real_tokens / sec:.0f} | {base / sec:.2f}× |")
    profile_slmlab(model, batch, objective)


if __name__ == "__main__":
    main()
