"""Optimizers: APOLLO against an independent re-implementation, convergence, memory, exact resume."""

from __future__ import annotations

import io
import math

import pytest
import torch

from slmlab.errors import SlmlabError
from slmlab.train.optim import Apollo, build_optimizer, optimizer_state_bytes


# -- helpers ------------------------------------------------------------------------


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128),
                               torch.nn.Tanh(), torch.nn.Linear(128, 8))


def regression_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed target function, a fresh seeded batch per step (never the global RNG)."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(64, 32, generator=g)
    w = torch.randn(32, 8, generator=torch.Generator().manual_seed(7)) / math.sqrt(32)
    return x, torch.sin(x @ w)


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def reference_apollo(w, grads, *, rank, scale, tensorwise, gamma, lr, wd, gap, seed, b1=0.9, b2=0.999, eps=1e-6):
    """APOLLO for one matrix, written straight from the paper with plain torch ops."""
    w, m, v, prev, limited = w.clone(), 0.0, 0.0, None, 0
    for t, g in enumerate(grads, start=1):
        gw = g.t() if g.shape[0] > g.shape[1] else g                  # project along the smaller dim
        gen = torch.Generator().manual_seed(seed + 1_000_003 * 0 + (t - 1) // gap)
        p = torch.randn(rank, gw.shape[0], generator=gen) / math.sqrt(rank)
        r = p @ gw
        m, v = b1 * m + (1 - b1) * r, b2 * v + (1 - b2) * r * r
        rt = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        s = rt.norm() / r.norm() if tensorwise else rt.norm(dim=0) / r.norm(dim=0)
        u = scale * gw * s
        if prev is not None and u.norm() > gamma * prev:
            u, limited = u * (gamma * prev / u.norm()), limited + 1
        prev = u.norm()
        w = w * (1 - lr * wd) - lr * (u.t() if g.shape[0] > g.shape[1] else u)
    return w, limited


# -- correctness --------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(12, 40), (40, 12)], ids=["wide", "tall"])
@pytest.mark.parametrize("tensorwise", [False, True], ids=["channel", "tensor"])
def test_matches_independent_reference(shape, tensorwise):
    rank, scale = (1, math.sqrt(128)) if tensorwise else (4, 1.0)
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(*shape, generator=gen)
    # Growing gradient norms so the norm-growth limiter has work to do.
    grads = [torch.randn(*shape, generator=gen) * (1 + 0.5 * i) for i in range(8)]
    kw = dict(rank=rank, scale=scale, gamma=1.01, lr=0.01, wd=0.1, gap=3, seed=11)
    expected, limited = reference_apollo(w0, grads, tensorwise=tensorwise, **kw)
    assert limited >= 1  # the limiter fired, and we still agree

    w = torch.nn.Parameter(w0.clone())
    opt = build_optimizer("apollo", [w], lr=0.01, weight_decay=0.1, rank=rank, scale=scale,
                          scale_type="tensor" if tensorwise else "channel", update_proj_gap=3, seed=11, min_numel=0)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    assert opt.state[w]["exp_avg"].shape == (rank, max(shape))
    torch.testing.assert_close(w.detach(), expected, rtol=1e-5, atol=1e-6)


def test_unprojected_tensors_are_exactly_adamw():
    """1-D tensors and matrices with rank >= min(m, n) take the AdamW path."""
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(6, 20)), torch.nn.Parameter(torch.randn(20))]
    b = [torch.nn.Parameter(t.detach().clone()) for t in a]
    ours = build_optimizer("apollo", a, lr=0.01, weight_decay=0.1, rank=8, min_numel=0)
    ref = torch.optim.AdamW(b, lr=0.01, weight_decay=0.1, eps=1e-6)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        for pa, pb in zip(a, b):
            pa.grad = torch.randn(pa.shape, generator=gen)
            pb.grad = pa.grad.clone()
        ours.step()
        ref.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
    assert ours.projection(a[0]) is None


@pytest.mark.parametrize(("name", "kwargs"), [("apollo", {"rank": 8, "min_numel": 0}), ("apollo-mini", {"min_numel": 0})])
def test_reduces_regression_loss(name, kwargs):
    model = mlp()
    opt = build_optimizer(name, model.parameters(), lr=3e-3, **kwargs)
    losses = []
    for step in range(100):
        x, y = regression_batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sum(losses[-5:]) / 5 < 0.25 * losses[0], f"{name}: {losses[0]:.4f} -> {losses[-5:]}"


@pytest.mark.parametrize(("name", "kwargs"), [("apollo", {"rank": 16}), ("apollo-mini", {})])
def test_reduces_language_model_loss(name, kwargs):
    model = tiny_llama()
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(5))
    opt = build_optimizer(name, model.parameters(), lr=3e-3, **kwargs)
    losses = []
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0], f"{name}: {losses[0]:.3f} -> {losses[-1]:.3f}"
    projected = [p for p in model.parameters() if opt.projection(p) is not None]
    # q, o, gate, up, down of both blocks + embeddings + lm_head; k/v (32×64) are under min_numel.
    assert len(projected) == 2 * 5 + 2


def test_apollo_mini_state_is_far_smaller_than_adamw():
    sizes = {}
    for name in ("adamw", "apollo-mini"):
        model = tiny_llama()
        opt = build_optimizer(name, model.parameters(), lr=1e-3)
        ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        matrices = {id(p) for p in model.parameters() if p.ndim == 2}
        two_d = sum(t.numel() * t.element_size() for p, s in opt.state.items() if id(p) in matrices
                    for t in s.values() if isinstance(t, torch.Tensor))
        sizes[name] = (optimizer_state_bytes(opt), two_d)
    (adam_total, adam_2d), (mini_total, mini_2d) = sizes["adamw"], sizes["apollo-mini"]
    msg = f"adamw {adam_total} B (2-D {adam_2d} B), apollo-mini {mini_total} B (2-D {mini_2d} B)"
    assert mini_2d < 0.2 * adam_2d, msg
    assert mini_total < 0.2 * adam_total, msg


def test_optimizer_state_bytes_counts_every_tensor():
    p = torch.nn.Parameter(torch.zeros(3, 5))
    opt = torch.optim.AdamW([p], lr=0.1)
    assert optimizer_state_bytes(opt) == 0
    p.grad = torch.ones_like(p)
    opt.step()
    assert optimizer_state_bytes(opt) == 2 * 15 * 4 + 4  # moments + the float32 step tensor


# -- resume and determinism ------------------------------------------------------------


def _train(model, opt, steps, start):
    for step in range(start, start + steps):
        x, y = regression_batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        rng = torch.get_rng_state()
        opt.step()
        assert torch.equal(rng, torch.get_rng_state()), "optimizer.step() touched the global RNG"


def _groups(model):
    matrices = [p for p in model.parameters() if p.ndim == 2]
    vectors = [p for p in model.parameters() if p.ndim != 2]
    return [{"params": matrices, "weight_decay": 0.05}, {"params": vectors, "weight_decay": 0.0}]


@pytest.mark.parametrize(("name", "kwargs"), [("apollo", {"rank": 4, "min_numel": 0, "update_proj_gap": 4}),
                                              ("apollo-mini", {"min_numel": 0, "update_proj_gap": 4}),
                                              ("adamw", {})])
def test_resume_is_bit_identical(name, kwargs):
    straight = mlp(seed=0)
    opt = build_optimizer(name, _groups(straight), lr=3e-3, **kwargs)
    _train(straight, opt, 20, start=0)

    first = mlp(seed=0)
    opt = build_optimizer(name, _groups(first), lr=3e-3, **kwargs)
    _train(first, opt, 10, start=0)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": opt.state_dict()}, buf)
    del first, opt

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = mlp(seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    opt = build_optimizer(name, _groups(resumed), lr=3e-3, **kwargs)
    opt.load_state_dict(saved["optimizer"])
    _train(resumed, opt, 10, start=10)

    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name}: {key} differs after resume"


def test_projection_refreshes_at_gap_and_is_seeded():
    def projections(seed):
        w = torch.nn.Parameter(torch.zeros(16, 48))
        opt = Apollo([w], lr=0.01, rank=4, update_proj_gap=3, seed=seed, min_numel=0)
        gen = torch.Generator().manual_seed(0)
        out = []
        for _ in range(7):
            w.grad = torch.randn(16, 48, generator=gen)
            opt.step()
            out.append(opt.projection(w))
        return out

    a, again, other = projections(0), projections(0), projections(1)
    assert a[0].shape == (4, 16)
    assert torch.equal(a[0], a[1]) and torch.equal(a[1], a[2])  # steps 1-3 share P
    assert not torch.equal(a[2], a[3])  # refreshed at step 4 (after update_proj_gap steps)
    assert torch.equal(a[3], a[5]) and not torch.equal(a[5], a[6])
    assert all(torch.equal(x, y) for x, y in zip(a, again))
    assert not any(torch.equal(x, y) for x, y in zip(a, other))


def test_param_groups_frozen_and_gradless_parameters():
    model = mlp()
    frozen, gradless = model[0].weight, model[2].bias
    frozen.requires_grad_(False)
    before_frozen, before_gradless = frozen.detach().clone(), gradless.detach().clone()
    opt = build_optimizer("apollo-mini", [{"params": [model[0].weight, model[0].bias]},
                                          {"params": [model[2].weight, model[2].bias, model[4].weight, model[4].bias],
                                           "rank": 2, "scale_type": "channel", "scale": 1.0}],
                          lr=1e-2, min_numel=0)
    x, y = regression_batch(0)
    torch.nn.functional.mse_loss(model(x), y).backward()
    gradless.grad = None
    opt.step()
    assert torch.equal(frozen, before_frozen) and torch.equal(gradless, before_gradless)
    assert frozen not in opt.state and gradless not in opt.state
    assert opt.state[model[2].weight]["exp_avg"].shape == (2, 128)  # group override of the rank
    assert opt.state[model[4].weight]["exp_avg"].shape == (2, 128)  # 8×128: channels are the 128 columns


def test_bfloat16_parameters_keep_float32_state():
    model = mlp().to(torch.bfloat16)
    opt = build_optimizer("apollo", model.parameters(), lr=1e-3, rank=4, min_numel=0)
    x, y = regression_batch(0)
    torch.nn.functional.mse_loss(model(x.bfloat16()), y.bfloat16()).backward()
    opt.step()
    assert all(t.dtype == torch.float32 for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    fresh = build_optimizer("apollo", model.parameters(), lr=1e-3, rank=4, min_numel=0)
    fresh.load_state_dict(opt.state_dict())
    for p in model.parameters():
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor):
                assert fresh.state[p][key].dtype == torch.float32 and torch.equal(fresh.state[p][key], value)


# -- errors ----------------------------------------------------------------------------


def test_unknown_optimizer_suggests_a_name():
    with pytest.raises(ValueError, match=r"Unknown optimizer 'apolo'\. Did you mean 'apollo'.*Available: adamw, apollo, apollo-mini"):
        build_optimizer("apolo", [torch.nn.Parameter(torch.zeros(2))], lr=1e-3)


def test_unknown_kwarg_names_it_and_the_valid_ones():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match=r"'rnak'.*'apollo'.*Valid:.*rank.*update_proj_gap"):
        build_optimizer("apollo", p, lr=1e-3, rnak=4)
    with pytest.raises(ValueError, match=r"'rank'.*'adamw'.*Valid:.*betas"):
        build_optimizer("adamw", p, lr=1e-3, rank=4)


@pytest.mark.parametrize("kwargs", [{"rank": 0}, {"rank": -3}, {"scale_type": "row"}, {"update_proj_gap": 0}])
def test_invalid_values_are_rejected(kwargs):
    p = [torch.nn.Parameter(torch.zeros(4, 4))]
    with pytest.raises(SlmlabError, match=next(iter(kwargs))):
        build_optimizer("apollo-mini", p, lr=1e-3, **kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Apollo([{"params": p, **kwargs}], lr=1e-3)
