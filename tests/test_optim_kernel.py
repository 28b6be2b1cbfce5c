"""Muon (+AdamW) and K-FAC natural gradient: references, the split, exact resume, the step API."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from test_train_core import _tiny_full  # every weight trainable, train mode

from slmlab.errors import SlmlabError
from slmlab.train.optim import KFAC, MuonAdamW, build_optimizer, exact_natural_gradient

F = torch.nn.functional


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small matrices run faster on one thread, and the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- helpers ------------------------------------------------------------------------


def mlp(seed: int = 0, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32),
                               torch.nn.Tanh(), torch.nn.Linear(32, 4)).to(dtype)


def regression_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed target function, a fresh seeded batch per step (never the global RNG)."""
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1000 + step))
    w = torch.randn(16, 4, generator=torch.Generator().manual_seed(7)) / math.sqrt(16)
    return x, torch.sin(x @ w)


def fit(model, opt, steps: int, start: int = 0) -> list[float]:
    losses = []
    for step in range(start, start + steps):
        x, y = regression_batch(step)
        loss = F.mse_loss(model(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses


def tiny_llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                      tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg)


NG_EXACT = {"momentum": 0.0, "kl_clip": None, "inv_every": 1}  # one step's Δ is the preconditioned gradient


def kfac_direction(model, x, y, damping: float) -> dict[str, torch.Tensor]:
    """Δ of one K-FAC step (lr 1, no momentum/clipping/decay): before - after."""
    opt = build_optimizer("natural-gradient", model.parameters(), lr=1.0, model=model, damping=damping, **NG_EXACT)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    opt.step()
    opt.remove_hooks()
    return {n: before[n] - p.detach() for n, p in model.named_parameters()}


# -- Muon -----------------------------------------------------------------------------


def test_muon_matrix_updates_equal_torch_muon_and_the_rest_equal_adamw():
    gen = torch.Generator().manual_seed(0)
    shapes = {"layers.0.q_proj.weight": (24, 16), "layers.0.down_proj.weight": (16, 40),
              "embed_tokens.weight": (50, 16), "norm.weight": (16,)}
    ours = {n: torch.nn.Parameter(torch.randn(*s, generator=gen)) for n, s in shapes.items()}
    ref = {n: torch.nn.Parameter(p.detach().clone()) for n, p in ours.items()}
    kw = {"lr": 0.02, "weight_decay": 0.1}
    opt = build_optimizer("muon", list(ours.items()), adamw_lr=3e-3, adjust_lr_fn="original", momentum=0.9,
                          ns_dtype="bfloat16", **kw)  # torch's own Newton-Schulz, so bit-identical to torch
    matrices = [ref["layers.0.q_proj.weight"], ref["layers.0.down_proj.weight"]]
    ref_muon = torch.optim.Muon(matrices, momentum=0.9, nesterov=True, ns_steps=5, adjust_lr_fn="original", **kw)
    ref_adamw = torch.optim.AdamW([ref["embed_tokens.weight"], ref["norm.weight"]], lr=3e-3, weight_decay=0.1)
    for _ in range(5):
        for name, p in ours.items():
            p.grad = torch.randn(p.shape, generator=gen)
            ref[name].grad = p.grad.clone()
        opt.step()
        ref_muon.step()
        ref_adamw.step()
    for name, p in ours.items():
        assert torch.equal(p, ref[name]), name  # the same torch code on the same inputs: bit-identical
    assert set(opt.split["muon"]) == {"layers.0.q_proj.weight", "layers.0.down_proj.weight"}


def _newton_schulz_float64(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = g.double().T if g.shape[0] > g.shape[1] else g.double()
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if g.shape[0] > g.shape[1] else x).float()


@pytest.mark.parametrize("shape", [(24, 16), (16, 40), (96, 256)])
def test_float32_newton_schulz_is_torchs_iteration_at_float32_precision(shape):
    from torch.optim._muon import _zeropower_via_newtonschulz

    from slmlab.train.optim.muon import newton_schulz_float32

    g = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    exact = _newton_schulz_float64(g)
    ours = newton_schulz_float32(g, (3.4445, -4.7750, 2.0315), 5, 1e-7)
    torchs = _zeropower_via_newtonschulz(g, (3.4445, -4.7750, 2.0315), 5, 1e-7).float()
    assert ours.dtype == torch.float32 and ours.shape == g.shape
    assert (ours - exact).norm() / exact.norm() < 1e-5  # the same iteration, float32 rounding only
    assert (torchs - exact).norm() / exact.norm() < 3e-2  # torch's bfloat16 is the coarser of the two


def test_muon_on_the_cpu_orthogonalises_in_float32_and_puts_torchs_function_back():
    import torch.optim._muon as torch_muon

    original = torch_muon._zeropower_via_newtonschulz
    w = {"layers.0.q_proj.weight": torch.nn.Parameter(torch.randn(24, 16, generator=torch.Generator().manual_seed(2)))}
    before = w["layers.0.q_proj.weight"].detach().clone()
    g = torch.randn(24, 16, generator=torch.Generator().manual_seed(3))
    w["layers.0.q_proj.weight"].grad = g.clone()
    opt = build_optimizer("muon", list(w.items()), lr=0.02, weight_decay=0.0, adjust_lr_fn="original", momentum=0.9)
    assert opt.ns_dtype == "auto" and opt._ns_float32()
    opt.step()
    assert torch_muon._zeropower_via_newtonschulz is original
    update = (before - w["layers.0.q_proj.weight"].detach()) / (0.02 * max(1, 24 / 16) ** 0.5)
    nesterov = g.lerp(0.1 * g, 0.9)  # momentum buffer after one step: (1 - 0.9)·g; nesterov: g.lerp(buf, 0.9)
    assert torch.allclose(update, _newton_schulz_float64(nesterov), atol=1e-5)
    with pytest.raises(ValueError, match="ns_dtype must be one of auto, bfloat16, float32"):
        build_optimizer("muon", list(w.items()), lr=0.02, weight_decay=0.0, ns_dtype="fp8")


def test_muon_split_by_shape_name_and_module_type():
    model = tiny_llama(tie=False)
    opt = build_optimizer("muon", model.parameters(), lr=1e-3, model=model)
    assert isinstance(opt, MuonAdamW)
    muon, adamw = opt.split["muon"], opt.split["adamw"]
    assert sorted(muon) == sorted(n for n, p in model.named_parameters()
                                  if p.ndim == 2 and "embed" not in n and "lm_head" not in n)
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(adamw)
    assert len(muon) == 7 and all(n.split(".")[-2].endswith("proj") for n in muon)

    tied = tiny_llama(tie=True)  # the head is the embedding table: listed once, AdamW
    opt = build_optimizer("muon", tied.parameters(), lr=1e-3, model=tied)
    assert "lm_head.weight" not in opt.split["adamw"] + opt.split["muon"]
    assert "model.embed_tokens.weight" in opt.split["adamw"]

    # Names that say nothing: module types decide (nn.Embedding → AdamW).
    seq = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8))
    opt = build_optimizer("muon", seq.parameters(), lr=1e-3, model=seq)
    assert opt.split == {"muon": ["1.weight"], "adamw": ["0.weight", "1.bias"]}


def test_muon_without_names_warns_and_splits_by_shape():
    seq = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8))
    with pytest.warns(UserWarning, match="model="):
        opt = build_optimizer("muon", seq.parameters(), lr=1e-3)
    assert opt.split == {"muon": ["param0", "param1"], "adamw": ["param2"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_optimizer("muon", list(seq.named_parameters()), lr=1e-3)  # names given: no warning


def test_muon_on_lora_takes_the_adapter_matrices():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(tie=False), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer("muon", trainable, lr=1e-3, model=model)
    assert len(opt.split["muon"]) == 4 and not opt.split["adamw"]
    assert all("lora_A" in n or "lora_B" in n for n in opt.split["muon"])


def test_muon_groups_carry_adamw_lr_and_schedule_scales_both():
    model = mlp()
    opt = build_optimizer("muon", model.named_parameters(), lr=0.02, adamw_lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert [(g["kind"], g["lr"]) for g in opt.param_groups] == [("muon", 0.01), ("adamw", 5e-4)]
    fit(model, opt, 1)
    sched.step()
    assert [g["lr"] for g in opt._muon.param_groups + opt._adamw.param_groups] == [0.01, 5e-4]


# -- natural gradient: the exact identities -----------------------------------------------


def test_kfac_equals_exact_damped_natural_gradient_for_one_example():
    """One example, one Linear layer: g gᵀ ⊗ a aᵀ *is* the empirical Fisher, so Δ = (F + λI)⁻¹ g."""
    torch.manual_seed(1)
    layer = torch.nn.Linear(5, 3).double()
    x, y = torch.randn(1, 5, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64)
    for damping in (1e-3, 0.3):
        exact = exact_natural_gradient(layer, F.mse_loss, (x, y), damping)
        ours = kfac_direction(layer, x, y, damping)
        for name in ("weight", "bias"):
            torch.testing.assert_close(ours[name], exact[name], rtol=1e-9, atol=1e-12)


def test_kfac_equals_exact_when_every_example_shares_its_input():
    """Several examples, one input, different targets: a is constant, so E[ggᵀ⊗aaᵀ] = E[ggᵀ]⊗aaᵀ exactly.

    Per layer of a 2-layer MLP, against the layer's diagonal block of the exact Fisher (what
    block-diagonal K-FAC keeps); F here has rank 4, so Δ is not just a rescaled gradient.
    """
    model = mlp(seed=2, dtype=torch.float64)
    x = torch.randn(1, 16, dtype=torch.float64).expand(6, 16).contiguous()
    y = torch.randn(6, 4, dtype=torch.float64)
    blocks = {i: exact_natural_gradient(model, F.mse_loss, (x, y), 1e-2, params=[model[i].weight, model[i].bias])
              for i in (0, 2, 4)}
    ours = kfac_direction(model, x, y, 1e-2)
    for i, exact in blocks.items():
        for name in ("weight", "bias"):
            torch.testing.assert_close(ours[f"{i}.{name}"], exact[f"{i}.{name}"], rtol=1e-8, atol=1e-12)
        g = torch.cat([model[i].weight.grad.reshape(-1), model[i].bias.grad])
        d = torch.cat([exact[f"{i}.weight"].reshape(-1), exact[f"{i}.bias"]])
        assert torch.cosine_similarity(g, d, dim=0) < 0.999  # the preconditioner does more than rescale


def test_kfac_direction_is_the_damped_kronecker_inverse_on_a_batch():
    """In general Δ = (G ⊗ A + λI)⁻¹ vec([∇W | ∇b]) with A, G built from the batch's inputs and output gradients."""
    torch.manual_seed(3)
    layer = torch.nn.Linear(6, 4).double()
    n, damping = 10, 0.05
    x, y = torch.randn(n, 6, dtype=torch.float64), torch.randn(n, 4, dtype=torch.float64)

    out = layer(x)
    per_example = ((out - y) ** 2).mean(dim=1)  # mse_loss of the batch = per_example.mean()
    dl_dy = torch.autograd.grad(per_example.sum(), out)[0]  # row i: ∂ℓ_i/∂y_i
    a = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    big_a, big_g = a.T @ a / n, dl_dy.T @ dl_dy / n
    grad = dl_dy.T @ a / n  # [∇W | ∇b] of the mean loss
    expected = torch.linalg.solve(torch.kron(big_g, big_a) + damping * torch.eye(4 * 7, dtype=torch.float64),
                                  grad.reshape(-1)).reshape(4, 7)

    exact = exact_natural_gradient(layer, F.mse_loss, (x, y), damping)
    ours = kfac_direction(layer, x, y, damping)
    torch.testing.assert_close(ours["weight"], expected[:, :6], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours["bias"], expected[:, 6], rtol=1e-9, atol=1e-12)

    # ...which is not the exact damped natural gradient once inputs differ: the Kronecker gap.
    gap = (ours["weight"] - exact["weight"]).norm() / exact["weight"].norm()
    assert gap > 0.05, f"relative gap {gap:.3g}"


# -- natural gradient: behaviour --------------------------------------------------------


def test_kfac_covers_untied_linear_layers_and_falls_back_for_the_rest():
    model = tiny_llama(tie=True)
    opt = build_optimizer("natural-gradient", model.parameters(), lr=0.05, model=model)
    assert isinstance(opt, KFAC)
    assert len(opt.covered) == 7 and "lm_head" not in opt.covered  # tied head: the embedding's gradient too
    kinds = {g["kind"]: len(g["params"]) for g in opt.param_groups}
    assert kinds == {"kfac": 7, "adam": 4}  # embedding + 3 norms
    small = build_optimizer("natural-gradient", model.parameters(), lr=0.05, model=model, max_dim=48)
    assert len(small.covered) == 4  # q/k/v/o (≤ 33); the 64-wide MLP falls back
    opt.remove_hooks()
    small.remove_hooks()


def test_zero_grad_drops_pending_curvature():
    model = mlp()
    opt = build_optimizer("natural-gradient", model.parameters(), lr=0.05, model=model)
    x, y = regression_batch(0)
    F.mse_loss(model(x), y).backward()
    assert len(opt._pending) == 3
    opt.zero_grad()
    assert not opt._pending
    with torch.no_grad():
        model(x)  # no backward follows: nothing is captured
    assert not opt._pending


def test_hooks_ignore_model_copies_and_do_not_keep_a_dropped_optimizer_alive():
    import copy
    import gc
    import weakref

    model = mlp()
    opt = build_optimizer("natural-gradient", model.parameters(), lr=0.05, model=model)
    x, y = regression_batch(0)
    F.mse_loss(copy.deepcopy(model)(x), y).backward()  # the copy carries the hooks, not the layers
    assert not opt._pending
    ref = weakref.ref(opt)
    del opt
    gc.collect()
    assert ref() is None
    F.mse_loss(model(x), y).backward()  # the orphaned hooks are no-ops


def test_natural_gradient_needs_the_model():
    with pytest.raises(SlmlabError, match="needs the model"):
        build_optimizer("natural-gradient", mlp().parameters(), lr=0.05)


# -- both: convergence, resume, errors --------------------------------------------------

CASES = [("muon", {"adamw_lr": 3e-3}, 0.02), ("natural-gradient", {"fallback_lr": 3e-3, "inv_every": 3}, 0.1)]


@pytest.mark.parametrize(("name", "kwargs", "lr"), CASES, ids=[c[0] for c in CASES])
def test_reduces_regression_loss(name, kwargs, lr):
    model = mlp()
    opt = build_optimizer(name, model.parameters(), lr=lr, model=model, **kwargs)
    losses = fit(model, opt, 60)
    assert sum(losses[-5:]) / 5 < 0.25 * losses[0], f"{name}: {losses[0]:.4f} -> {losses[-5:]}"


@pytest.mark.parametrize(("name", "kwargs", "lr"), CASES, ids=[c[0] for c in CASES])
def test_resume_is_bit_identical(name, kwargs, lr):
    def build(model):
        return build_optimizer(name, model.parameters(), lr=lr, weight_decay=0.01, model=model, **kwargs)

    straight = mlp(seed=0)
    fit(straight, build(straight), 9)

    first = mlp(seed=0)
    opt = build(first)
    fit(first, opt, 4)  # stop between two eigendecompositions (inv_every 3)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = mlp(seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    opt = build(resumed)
    opt.load_state_dict(saved["optimizer"])
    fit(resumed, opt, 5, start=4)
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name}: {key} differs after resume"


def test_bad_kwargs_are_clear_errors():
    p = list(mlp().named_parameters())
    with pytest.raises(SlmlabError, match=r"'rank'.*'muon'.*Valid:.*adamw_lr.*ns_steps"):
        build_optimizer("muon", p, lr=1e-3, rank=4)
    with pytest.raises(SlmlabError, match=r"'nesterov'.*'natural-gradient'.*Valid:.*damping"):
        build_optimizer("natural_gradient", p, lr=1e-3, model=mlp(), nesterov=True)
    bad = [("muon", {"ns_steps": 0}), ("muon", {"adjust_lr_fn": "rms"}), ("muon", {"momentum": 1.0}),
           ("natural-gradient", {"damping": 0.0}), ("natural-gradient", {"inv_every": 0}),
           ("natural-gradient", {"kl_clip": -1.0})]
    for name, kwargs in bad:
        with pytest.raises(SlmlabError, match=next(iter(kwargs))):
            build_optimizer(name, p, lr=1e-3, model=mlp(), **kwargs)


# -- both through the public step API ---------------------------------------------------

CONTEXTS = [[5, 17, 29, 3], [7, 7, 12], [40, 41, 42, 43, 44], [9, 8], [100, 101, 102], [60, 61]]
CONTINUATIONS = [[11, 2], [13, 14, 2], [2], [21, 22, 23, 2], [31, 2], [50, 51, 2]]
STEP_CASES = [("muon", {}, 1e-2), ("natural-gradient", {"inv_every": 2, "fallback_lr": 1e-2}, 0.05)]


def _batch(i: int):
    from slmlab.train.step import StepBatch

    k = i % 3
    return StepBatch.from_token_ids(CONTEXTS[k:k + 3], CONTINUATIONS[k:k + 3], micro_batch_size=2)


@pytest.mark.parametrize(("name", "kwargs", "lr"), STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_new_state_train_step_learns_and_round_trips_bit_exactly(name, kwargs, lr):
    from slmlab.train.objectives.sft import SFT
    from slmlab.train.state import new_state
    from slmlab.train.step import train_step

    def state_for(model):
        return new_state(model, optimizer=name, lr=lr, schedule="cosine", total_steps=12, optimizer_kwargs=kwargs)

    def train(state, steps):
        return [train_step(state, _batch(i), SFT()).loss for i in steps]

    state = state_for(_tiny_full())
    assert state.adapter == "full"
    losses = train(state, range(3))
    snapshot = io.BytesIO()
    torch.save(state.state_dict(), snapshot)
    straight = train(state, range(3, 7))
    weights = {k: v.clone() for k, v in state.model.state_dict().items()}

    other = state_for(_tiny_full(seed=1))
    snapshot.seek(0)
    other.load_state_dict(torch.load(snapshot, weights_only=False))
    assert train(other, range(3, 7)) == straight
    for k, v in other.model.state_dict().items():
        assert torch.equal(v, weights[k]), k

    more = train(state, range(7, 12))
    assert all(math.isfinite(x) for x in losses + straight + more)
    # The same three batches cycle: compare each batch's loss with its first visit.
    assert more[-3] < losses[0] and more[-2] < losses[1] and more[-1] < losses[2], (losses, more)


def test_natural_gradient_on_lora_covers_the_adapter_layers():
    from peft import LoraConfig, get_peft_model

    from slmlab.models import load
    from slmlab.train.objectives.sft import SFT
    from slmlab.train.state import new_state
    from slmlab.train.step import train_step

    model, _ = load("tiny-random", seed=0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    state = new_state(model, optimizer="natural-gradient", lr=0.05)
    assert len(state.optimizer.covered) == 2 * 2 * 2  # q, v × lora_A, lora_B × 2 blocks
    assert all("lora_" in n for n in state.optimizer.covered)
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    train_step(state, _batch(0), SFT())
    assert all(not torch.equal(p, lora_b[n]) for n, p in model.named_parameters() if "lora_B" in n)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if not p.requires_grad)
