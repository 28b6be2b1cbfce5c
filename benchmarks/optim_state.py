"""Optimizer-state memory and step time of adamw, apollo and apollo-mini for a full fine-tune.

Builds a Llama with SmolLM2-135M's shape from a config alone (random init, nothing is
downloaded), then for each optimizer runs one step to measure the bytes held in
``optimizer.state`` and a few more to time the step on a short random batch.

    .venv/bin/python benchmarks/optim_state.py               # the full 30-layer shape (~1-2 min on 2 cores)
    .venv/bin/python benchmarks/optim_state.py --layers 4    # quicker
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from slmlab.train.optim import build_optimizer, optimizer_state_bytes


def smollm2_135m_shape(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def run(model, initial, name: str, kwargs: dict, ids: torch.Tensor, steps: int, lr: float) -> dict:
    model.load_state_dict(initial)
    opt = build_optimizer(name, model.parameters(), lr=lr, **kwargs)
    fwd_bwd, opt_step = [], []
    for _ in range(1 + steps):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        fwd_bwd.append(t1 - t0)
        opt_step.append(t2 - t1)
    state = optimizer_state_bytes(opt)
    del opt
    # The first step allocates the state; time the later ones.
    timed = slice(1, None) if steps else slice(None)
    return {"state": state, "opt_step": statistics.median(opt_step[timed]),
            "fwd_bwd": statistics.median(fwd_bwd[timed]), "loss": loss.item()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30, help="decoder layers (SmolLM2-135M has 30)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per optimizer after the first")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--rank", type=int, default=256, help="APOLLO rank")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = smollm2_135m_shape(args.layers)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)
    n_matrix = sum(p.numel() for p in params if p.ndim == 2)
    print(f"SmolLM2-135M shape, {args.layers} layers: {n_params / 1e6:.1f}M parameters "
          f"({n_matrix / n_params:.2%} in matrices), fp32 weights {n_params * 4 / 2**20:.0f} MiB; "
          f"built in {time.perf_counter() - t0:.1f}s; batch {args.batch}×{args.seq_len}, {torch.get_num_threads()} threads")

    ids = torch.randint(0, 49152, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(1))
    cases = [("adamw", {}), ("apollo", {"rank": args.rank}), ("apollo-mini", {})]
    results = {name: run(model, initial, name, kw, ids, args.steps, args.lr) for name, kw in cases}

    base = results["adamw"]
    header = f"{'optimizer':<12} {'state MiB':>10} {'vs adamw':>9} {'bytes/param':>12} {'opt.step ms':>12} {'vs adamw':>9} {'fwd+bwd s':>10}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:<12} {r['state'] / 2**20:>10.1f} {r['state'] / base['state']:>8.1%} {r['state'] / n_params:>12.2f} "
              f"{r['opt_step'] * 1e3:>12.0f} {r['opt_step'] / base['opt_step']:>8.2f}x {r['fwd_bwd']:>10.2f}")
    print(f"(apollo rank {args.rank}: matrices with min(m, n) <= rank, e.g. 192×576 k/v projections, fall back to AdamW; "
          f"total {time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
