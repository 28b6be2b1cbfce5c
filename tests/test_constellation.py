"""Fisher-Rao routing and the constellation model: distances, basin coordinates, routing, gradients,
counts and κ, save/load, parameter counts, and each arm training through ``slmlab train``.

Models are tiny (hidden 48–96, experts 16 wide) and the tokenizer has 512 tokens, so the file runs
in seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from slmlab.errors import SlmlabError
from slmlab.kernel.routing import (
    basin_coordinates,
    fisher_rao,
    fixed_projection,
    pairwise_fisher_rao,
    prototypes_from_roots,
    route,
)

LINES = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.
""".splitlines(keepends=True)


def random_simplex(*shape: int, seed: int = 0) -> torch.Tensor:
    """Points drawn uniformly from the simplex (normalised Exp(1) draws: a flat Dirichlet), float64."""
    g = torch.Generator().manual_seed(seed)
    x = -torch.log(torch.rand(*shape, generator=g, dtype=torch.float64))
    return x / x.sum(-1, keepdim=True)


def tiny_config(router: str, **overrides):
    from slmlab.kernel.constellation import make_config

    fields = {"vocab_size": 64, "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 1, "n_experts": 8,
              "expert_intermediate": 16, "router": router, "tie_word_embeddings": True, "pad_token_id": 0,
              "bos_token_id": 1, "eos_token_id": 2}
    return make_config(**{**fields, **overrides})


# --------------------------------------------------------------------------- Fisher-Rao distance


def test_fisher_rao_matches_the_closed_forms():
    n = 5
    eye = torch.eye(n, dtype=torch.float64)
    uniform = torch.full((n,), 1 / n, dtype=torch.float64)
    assert fisher_rao(eye[0], eye[1]).item() == pytest.approx(math.pi)  # disjoint supports: the maximum
    assert fisher_rao(eye[2], uniform).item() == pytest.approx(2 * math.acos(1 / math.sqrt(n)))
    for a, b in [(0.1, 0.7), (0.5, 0.5), (0.01, 0.99)]:  # Bernoulli: 2 arccos(√(ab) + √((1-a)(1-b)))
        p, q = torch.tensor([a, 1 - a], dtype=torch.float64), torch.tensor([b, 1 - b], dtype=torch.float64)
        assert fisher_rao(p, q).item() == pytest.approx(2 * math.acos(math.sqrt(a * b) + math.sqrt((1 - a) * (1 - b))))
    # = twice the angle between √p and √q (computed here with atan2, accurate at small angles too)
    p, q = random_simplex(200, 7, seed=1), random_simplex(200, 7, seed=2)
    u, v = p.sqrt(), q.sqrt()
    angle = torch.atan2(_sin(u, v), (u * v).sum(-1))
    assert torch.allclose(fisher_rao(p, q), 2 * angle, atol=1e-12)


def _sin(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """|u ∧ v| for unit vectors: √(|u|²|v|² - (u·v)²) computed from the wedge's components."""
    wedge = u.unsqueeze(-1) * v.unsqueeze(-2) - v.unsqueeze(-1) * u.unsqueeze(-2)
    return wedge.pow(2).sum((-1, -2)).div(2).sqrt()


def test_fisher_rao_is_a_metric_on_random_distributions():
    p, q, r = (random_simplex(500, 8, seed=s) for s in (3, 4, 5))
    d_pq, d_qp, d_qr, d_pr = fisher_rao(p, q), fisher_rao(q, p), fisher_rao(q, r), fisher_rao(p, r)
    assert torch.allclose(fisher_rao(p, p), torch.zeros(500, dtype=torch.float64), atol=1e-6)  # identity
    assert (d_pq > 1e-3).all()  # distinct distributions are apart
    assert torch.equal(d_pq, d_qp)  # symmetry
    assert (d_pr <= d_pq + d_qr + 1e-9).all()  # triangle inequality
    assert ((d_pq >= 0) & (d_pq <= math.pi)).all()
    # near-equal distributions: no NaN where rounding pushes Σ√(pq) above 1
    close = p + 1e-12 * (q - p)
    assert torch.isfinite(fisher_rao(p, close)).all() and torch.isfinite(fisher_rao(p.float(), p.float())).all()


def test_fisher_rao_batches_over_leading_dimensions():
    p, q = random_simplex(2, 3, 5, seed=6), random_simplex(2, 3, 5, seed=7)
    d = fisher_rao(p, q)
    assert d.shape == (2, 3)
    assert d[1, 2].item() == pytest.approx(fisher_rao(p[1, 2], q[1, 2]).item())
    assert fisher_rao(p[:, :1], q[0]).shape == (2, 3)  # broadcasting
    table = pairwise_fisher_rao(p, q[0])  # (2, 3, 5) × (3, 5) → (2, 3, 3)
    assert table.shape == (2, 3, 3) and table[1, 0, 2].item() == pytest.approx(fisher_rao(p[1, 0], q[0, 2]).item())
    with pytest.raises(ValueError, match="categories"):
        fisher_rao(p, q[..., :4])


# --------------------------------------------------------------------------- basin coordinates and routing


def test_fixed_projection_and_basin_coordinates():
    a, b = fixed_projection(48, 8, seed=3), fixed_projection(48, 8, seed=3)
    assert a.shape == (8, 48) and torch.equal(a, b) and not torch.equal(a, fixed_projection(48, 8, seed=4))
    assert torch.allclose(a @ a.T, torch.eye(8), atol=1e-6)  # orthonormal rows
    state = torch.get_rng_state()
    fixed_projection(48, 8, seed=9)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is not touched
    h = torch.randn(4, 10, 48, generator=torch.Generator().manual_seed(0))
    basin = basin_coordinates(h, a)
    assert basin.shape == (4, 10, 8) and torch.allclose(basin.sum(-1), torch.ones(4, 10))
    assert torch.allclose(basin_coordinates(3.0 * h, a), basin, atol=1e-5)  # scale-free
    unit = h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    assert torch.allclose(basin, torch.softmax(unit @ a.T, -1), atol=1e-6)
    assert torch.allclose(basin_coordinates(h, a, temperature=0.5), torch.softmax(unit @ a.T / 0.5, -1), atol=1e-6)


def test_route_picks_the_nearest_prototypes_by_fisher_rao():
    from slmlab.kernel.e8 import simple_roots

    protos = prototypes_from_roots(simple_roots())
    basin = random_simplex(300, 8, seed=8).float()
    idx, weights, dist = route(basin, protos, 3)
    brute = pairwise_fisher_rao(basin, protos)  # (300, 8)
    assert torch.equal(idx, brute.argsort(-1)[:, :3])
    assert torch.allclose(dist, brute.gather(-1, idx), atol=1e-5)
    assert (dist[:, :-1] <= dist[:, 1:]).all()  # nearest first
    assert torch.allclose(weights, torch.softmax(-dist, -1)) and torch.allclose(weights.sum(-1), torch.ones(300))
    again = route(basin, protos, 3)
    assert torch.equal(again[0], idx) and torch.equal(again[1], weights)
    # a point exactly on a prototype: distance ~0 (capped at 0.003), a finite gradient through the weights
    on = protos[:2].clone().requires_grad_(True)
    idx, weights, dist = route(on, protos, 2)
    assert idx[:, 0].tolist() == [0, 1] and (dist[:, 0] < 3e-3).all()
    weights[:, 0].sum().backward()
    assert torch.isfinite(on.grad).all()


# --------------------------------------------------------------------------- the mixture block


def mixture(router: str, **overrides):
    from slmlab.kernel.constellation import ExpertMixture

    torch.manual_seed(0)
    return ExpertMixture(tiny_config(router, **overrides), layer_idx=0)


def test_routing_is_deterministic():
    from slmlab.kernel.constellation import build_constellation

    x = torch.randn(40, 48, generator=torch.Generator().manual_seed(1))
    for router in ("e8", "learned"):
        a = build_constellation(tiny_config(router), seed=5).model.layers[1].mlp
        b = build_constellation(tiny_config(router), seed=5).model.layers[1].mlp
        ra, rb, ra2 = a.route(x), b.route(x), a.route(x)
        assert torch.equal(ra.indices, rb.indices) and torch.equal(ra.indices, ra2.indices)
        assert torch.equal(ra.weights, rb.weights)
        assert len(set(ra.indices[:, 0].tolist())) > 1  # not everything to one expert
    # the e8 route is a function of x and the fixed buffers alone: training the experts cannot move it
    e8 = build_constellation(tiny_config("e8"), seed=5).model.layers[1].mlp
    before = e8.route(x).indices
    with torch.no_grad():
        for p in e8.parameters():
            p.mul_(-3.0)
    assert torch.equal(e8.route(x).indices, before)
    assert not any("projection" in n or "prototypes" in n for n, _ in e8.named_parameters())


@pytest.mark.parametrize("router", ["e8", "learned"])
def test_gradient_reaches_the_selected_experts_only(router):
    block = mixture(router).train()
    x = torch.randn(1, 1, 48, generator=torch.Generator().manual_seed(2), requires_grad=True)
    selected = set(block.route(x.reshape(1, 48)).indices[0].tolist())
    assert len(selected) == 2
    block(x).pow(2).sum().backward()
    for e, expert in enumerate(block.experts):
        grads = [p.grad for p in expert.parameters()]
        if e in selected:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), e
        else:
            assert all(g is None or not g.any() for g in grads), e
    assert x.grad is not None and x.grad.abs().sum() > 0
    if router == "learned":
        assert block.gate.weight.grad.abs().sum() > 0


def test_balance_loss_reaches_the_gate_inside_the_forward():
    """With the LM loss multiplied by 0, the gate's gradient is exactly that of α·K·Σ f·P."""
    from slmlab.kernel.constellation import switch_balance_loss

    block = mixture("learned", aux_loss_coef=0.5).train()
    x = torch.randn(3, 7, 48, generator=torch.Generator().manual_seed(3))
    (block(x) * 0).sum().backward()
    r = block.route(x.reshape(-1, 48))
    expected = torch.autograd.grad(0.5 * switch_balance_loss(r.probs, r.indices), block.gate.weight)[0]
    assert block.gate.weight.grad.abs().sum() > 0
    assert torch.allclose(block.gate.weight.grad, expected, atol=1e-7)
    # eval mode or no grad: no balance term
    block.zero_grad()
    block.eval()
    (block(x) * 0).sum().backward()
    assert block.gate.weight.grad is None or not block.gate.weight.grad.any()


def test_switch_balance_loss_is_1_when_balanced_and_k_when_collapsed():
    from slmlab.kernel.constellation import switch_balance_loss

    k = 4
    uniform = torch.full((8, k), 1 / k)
    balanced = torch.arange(8).remainder(k).unsqueeze(1)
    assert switch_balance_loss(uniform, balanced).item() == pytest.approx(1.0)
    collapsed = torch.zeros(8, k)
    collapsed[:, 0] = 1
    assert switch_balance_loss(collapsed, torch.zeros(8, 1, dtype=torch.long)).item() == pytest.approx(k)


# --------------------------------------------------------------------------- counts, load balance, κ


def test_counts_skip_padding_and_eval_and_feed_routing_stats():
    from slmlab.kernel.constellation import (
        build_constellation,
        held_out_routing,
        routing_stats,
    )

    model = build_constellation(tiny_config("e8"), seed=1).train()
    ids = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])  # 0 is padding: 10 real tokens
    model(input_ids=ids)
    stats = routing_stats(model)
    assert [s["slots"] for s in stats["layers"]] == [20, 20]  # 2 experts per real token, per layer
    assert int(model.model.routing_joint.sum(dim=(1, 2))[0]) == 10
    shares = stats["overall"]["shares"]
    assert sum(shares) == pytest.approx(1.0) and stats["overall"]["max_share"] == max(shares)
    model.eval()
    model(input_ids=ids)
    assert routing_stats(model)["overall"]["slots"] == 40  # eval forwards are not counted
    held = held_out_routing(model, [[5, 6, 7], [9, 10, 11, 12]])
    assert held["overall"]["slots"] == 2 * 2 * 7
    assert routing_stats(model)["overall"]["slots"] == 40 and not model.training  # training counts put back


def test_share_stats_and_kappa_numbers():
    from slmlab.kernel.constellation import normalized_mutual_information, share_stats

    s = share_stats(torch.tensor([30, 10, 0, 60]))
    assert s["shares"] == [0.3, 0.1, 0.0, 0.6] and s["max_share"] == 0.6 and s["min_share"] == 0.0
    assert s["max_over_min"] is None
    assert s["entropy"] == pytest.approx(-(0.3 * math.log(0.3) + 0.1 * math.log(0.1) + 0.6 * math.log(0.6)))
    assert s["entropy_norm"] == pytest.approx(s["entropy"] / math.log(4))
    assert share_stats(torch.tensor([5, 5]))["entropy_norm"] == pytest.approx(1.0)
    assert normalized_mutual_information(torch.diag(torch.tensor([3, 5, 2]))) == pytest.approx(1.0)
    independent = torch.outer(torch.tensor([1, 2, 3]), torch.tensor([4, 1, 1]))
    assert normalized_mutual_information(independent) == pytest.approx(0.0, abs=1e-12)
    assert normalized_mutual_information(torch.tensor([[4, 0], [0, 0]])) is None  # one expert: undefined
    # a hand-computed case: p = [[.4, .1], [.1, .4]] → I = Σ p log(p / .25), H = ln 2
    mi = 0.8 * math.log(0.4 / 0.25) + 0.2 * math.log(0.1 / 0.25)
    assert normalized_mutual_information(torch.tensor([[4, 1], [1, 4]])) == pytest.approx(mi / math.log(2))


# --------------------------------------------------------------------------- config, sizes, save/load


def test_parameter_counts_of_the_arms_are_equal_up_to_the_gate():
    from slmlab.kernel.constellation import build_constellation, parameter_count

    counts = {}
    for router in ("dense", "learned", "e8"):
        config = tiny_config(router)
        counts[router] = sum(p.numel() for p in build_constellation(config).parameters())
        assert counts[router] == parameter_count(config)
    assert counts["dense"] == counts["e8"] == counts["learned"] - 2 * 48 * 8  # layers · hidden · K
    assert tiny_config("dense").intermediate_size == 8 * 16


@pytest.mark.parametrize("overrides,fragment", [
    ({"router": "hash"}, "router must be one of"),
    ({"experts_per_token": 9}, "experts_per_token must be between 1 and n_experts"),
    ({"n_experts": 9}, "prototypes='simple' places at most 8"),
    ({"prototypes": "lattice"}, "prototypes must be one of"),
    ({"basin_temperature": 0.0}, "basin_temperature"),
])
def test_bad_configs_name_the_field(overrides, fragment):
    with pytest.raises(SlmlabError, match=fragment):
        tiny_config(overrides.pop("router", "e8"), **overrides)


def test_up_to_240_roots_as_prototypes():
    block = mixture("e8", n_experts=240, prototypes="roots", expert_intermediate=2)
    assert block.prototypes.shape == (240, 8)
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(4))
    assert block(x.unsqueeze(0)).shape == (1, 64, 48)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    from slmlab.kernel.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("constellation")
    docs = root / "docs.jsonl"
    lines = []
    for i in range(48):
        k = i % len(LINES)
        lines.append({"id": f"d{i}", "text": "".join(LINES[k:] + LINES[:k]) * (1 + i % 2) + f"Q: P{i}→Q?\nA: ●\n"})
    docs.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in lines), encoding="utf-8")
    train_tokenizer([docs], root / "tok", vocab=512)
    return root / "tok"


@pytest.fixture(scope="module")
def corpus(tok_dir) -> Path:
    from slmlab.kernel.corpus import build_corpus

    return build_corpus(tok_dir.parent / "corpus", sources=[], texts=[tok_dir.parent / "docs.jsonl"], chunk_tokens=64,
                        tokenizer=tok_dir, val_fraction=0.2).out_dir


def init(tok_dir: Path, router: str, out: Path, seed: int = 0) -> Path:
    from slmlab.kernel.constellation import init_constellation

    init_constellation(2, 4, router, tok_dir, out, seed=seed, expert_intermediate=16, context=128)
    return out


def test_save_and_load_round_trip_through_slmlab_models(tok_dir, tmp_path):
    from slmlab.kernel.constellation import ConstellationForCausalLM, routing_stats
    from slmlab.models import load

    path = init(tok_dir, "e8", tmp_path / "e8", seed=7)
    record = json.loads((path / "kernel.json").read_text())
    assert json.loads((path / "config.json").read_text())["model_type"] == "slmlab_constellation"
    model, tok = load(str(path))
    assert isinstance(model, ConstellationForCausalLM) and len(tok) == model.config.vocab_size
    assert record["params"] == sum(p.numel() for p in model.parameters())
    # train a forward so the counters are non-zero, save, load: everything (buffers included) comes back
    model.train()
    ids = torch.tensor([tok("Shall I compare thee", add_special_tokens=False)["input_ids"]])
    model(input_ids=ids)
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    again, _ = load(str(tmp_path / "saved"))
    saved, loaded = model.state_dict(), again.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert routing_stats(again) == routing_stats(model) and routing_stats(again)["overall"]["slots"] > 0
    model.eval()
    assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-5)
    # same seed → same bytes; another seed → other weights and other projections
    other = init(tok_dir, "e8", tmp_path / "e8-again", seed=7)
    assert (other / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()
    third, _ = load(str(init(tok_dir, "e8", tmp_path / "e8-seed8", seed=8)))
    assert not torch.equal(third.model.layers[0].mlp.projection, again.model.layers[0].mlp.projection)


@pytest.mark.parametrize("router", ["dense", "learned", "e8"])
def test_each_arm_trains_through_slmlab_train(tok_dir, corpus, tmp_path, router):
    from slmlab.kernel.constellation import routing_stats
    from slmlab.models import load
    from slmlab.train.config import load_train_config
    from slmlab.train.loop import run

    path = init(tok_dir, router, tmp_path / router)
    cfg = load_train_config(data={
        "name": router, "model": str(path), "output_dir": str(tmp_path / "runs"), "adapter": {"kind": "full"},
        "data": {"train": str(corpus / "train.jsonl"), "eval": str(corpus / "val.jsonl"), "max_length": 64},
        "optimizer": {"lr": 3e-3}, "batch_size": 8, "max_steps": 10, "save_every": 100, "eval_every": None,
        "watch": {"enabled": False, "dashboard": False},
    })
    result = run(cfg)
    assert result.status == "completed" and result.steps == 10
    assert sum(result.losses[-3:]) < sum(result.losses[:3])
    assert result.summary["train"]["eval_bpb"] > 0
    trained, _ = load(str(result.run_dir / "model"))
    initial, _ = load(str(path))
    stats = routing_stats(trained)
    if router == "dense":
        assert stats["layers"] == [] and stats["kappa"] is None
        return
    tokens = result.summary["train"]["tokens_seen"]
    slots = [s["slots"] for s in stats["layers"]]
    assert slots[0] == slots[1] and 0 < slots[0] <= 2 * tokens  # k=2 per real token; padding not counted
    assert stats["kappa"] is not None and 0 <= stats["kappa"] <= 1
    if router == "e8":  # the projection and prototypes are fixed buffers: training leaves them as they were
        for a, b in zip(trained.model.layers, initial.model.layers):
            assert torch.equal(a.mlp.projection, b.mlp.projection) and torch.equal(a.mlp.prototypes, b.mlp.prototypes)


def test_cli_command_has_an_example_and_writes_a_model(tok_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from slmlab.kernel.constellation_cli import constellation_cmd, routing_cmd

    app = typer.Typer()
    app.command("constellation")(constellation_cmd)
    app.command("routing")(routing_cmd)
    runner = CliRunner()
    for name in ("constellation", "routing"):
        out = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
        assert out.exit_code == 0 and "Example:" in out.output
    r = runner.invoke(app, ["constellation", "--depth", "1", "--experts", "4", "--router", "learned", "--tokenizer",
                            str(tok_dir), "-o", str(tmp_path / "m"), "--expert-intermediate", "8"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "m" / "config.json").read_text())["router"] == "learned"
    r = runner.invoke(app, ["routing", str(tmp_path / "m"), "--json"])
    assert r.exit_code == 0 and json.loads(r.output.strip().splitlines()[-1])["overall"]["slots"] == 0
    r = runner.invoke(app, ["constellation", "--depth", "1", "--router", "hash", "--tokenizer", str(tok_dir),
                            "-o", str(tmp_path / "x")])
    assert isinstance(r.exception, SlmlabError) and "--router" in str(r.exception)
    assert not (tmp_path / "x").exists()


def test_routing_telemetry_reaches_health_checks_and_the_run_report(tok_dir, corpus, tmp_path):
    import json

    from slmlab.kernel.constellation import kappa, routing_stats
    from slmlab.models import load
    from slmlab.train.config import load_train_config
    from slmlab.train.loop import run
    from slmlab.watch.run_report import write_run_report

    path = init(tok_dir, "e8", tmp_path / "e8")
    cfg = load_train_config(data={
        "name": "telemetry", "model": str(path), "output_dir": str(tmp_path / "runs"), "adapter": {"kind": "full"},
        "data": {"train": str(corpus / "train.jsonl"), "max_length": 64},
        "optimizer": {"lr": 3e-3}, "batch_size": 8, "max_steps": 4, "save_every": 100,
        "watch": {"enabled": True, "every": 2, "probe_every": None, "spectral_every": None, "dashboard": False,
                  "prompts": ["ROMEO:", "Enter KING"]},
    })
    result = run(cfg)
    events = [json.loads(line) for line in (result.run_dir / "events.jsonl").read_text().splitlines()]
    health = [e for e in events if e["kind"] == "health"]
    assert [e["step"] for e in health] == [2, 4]
    trained, _ = load(str(result.run_dir / "model"))
    k = trained.config.n_experts
    for e in health:
        m = e["metrics"]
        assert 0 < m["routing_entropy"] <= 1 and 0 <= m["routing_min_share"] <= 1 / k <= m["routing_max_share"] <= 0.5
    assert health[-1]["metrics"]["kappa"] == pytest.approx(kappa(trained))
    overall = routing_stats(trained)["overall"]  # all 4 steps; the two checks' windows are steps 1-2 and 3-4
    assert overall["min_share"] <= max(e["metrics"]["routing_min_share"] for e in health)
    assert "constellation routing" in write_run_report(result.run_dir).read_text()
