"""Spectral health metrics: hand-computed formulas, LoRA core, power-law fit, model reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slmlab.watch.spectral import (
    PHI,
    eigenvalues_of_weight,
    fit_power_law,
    hidden_state_eigenvalues,
    lora_delta_eigenvalues,
    model_spectral_report,
    spectral_metrics,
)

# ---------------------------------------------------------------------------------------
# Eigenvalues and hand-computed metrics
# ---------------------------------------------------------------------------------------


def test_eigenvalues_of_diag_weight():
    W = torch.diag(torch.tensor([1.0, 3.0, 2.0]))
    eigs = eigenvalues_of_weight(W)
    assert eigs.dtype == np.float64
    np.testing.assert_allclose(eigs, [9.0, 4.0, 1.0], atol=1e-12)


@pytest.mark.parametrize("shape", [(7, 3), (3, 7)])
def test_eigenvalues_use_smaller_side(shape):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(*shape, generator=g)
    eigs = eigenvalues_of_weight(W)
    assert eigs.shape == (3,)
    assert np.all(np.diff(eigs) <= 0) and np.all(eigs >= 0)
    sv = torch.linalg.svdvals(W.double()).numpy()
    np.testing.assert_allclose(eigs, sv**2, rtol=1e-10)


def test_metrics_hand_computed_diag_321():
    # W = diag(3, 2, 1): λ = σ² = 9, 4, 1; Σλ = 14; p = 9/14, 4/14, 1/14.
    m = spectral_metrics(eigenvalues_of_weight(torch.diag(torch.tensor([3.0, 2.0, 1.0]))))
    # H = ln 14 − (9 ln 9 + 4 ln 4)/14 = 0.830472 nats
    assert m["entropy"] == pytest.approx(0.8304717, abs=1e-6)
    assert m["entropy"] == pytest.approx(math.log(14) - (9 * math.log(9) + 4 * math.log(4)) / 14, rel=1e-12)
    assert m["entropy_normalized"] == pytest.approx(0.8304717 / math.log(3), abs=1e-6)  # 0.755928
    assert m["effective_rank_sigma2"] == pytest.approx(2.2944008, abs=1e-6)  # exp(0.830472)
    # over σ = 3, 2, 1: q = 1/2, 1/3, 1/6; H = ln 6 − (3 ln 3 + 2 ln 2)/6 = 1.011404
    assert m["effective_rank_sigma"] == pytest.approx(2.7494593, abs=1e-6)
    assert m["stable_rank"] == pytest.approx(14 / 9, rel=1e-12)
    assert m["dominant_ratio"] == pytest.approx(9 / 14, rel=1e-12)
    assert m["eigengap"] == pytest.approx(9 / 4, rel=1e-12)
    assert m["phi_proximity"] == pytest.approx(math.exp(-abs(2.25 - 1.6180340) / 1.6180340), abs=1e-6)  # 0.676667
    assert m["trace"] == pytest.approx(14.0) and m["lambda_max"] == pytest.approx(9.0) and m["n"] == 3
    assert math.isnan(m["alpha"])  # 3 eigenvalues: too few for a tail fit


def test_metrics_flat_spectrum_and_degenerate_cases():
    flat = spectral_metrics(np.full(10, 2.0))
    assert flat["entropy"] == pytest.approx(math.log(10))
    assert flat["entropy_normalized"] == pytest.approx(1.0)
    assert flat["effective_rank_sigma2"] == pytest.approx(10.0)
    assert flat["effective_rank_sigma"] == pytest.approx(10.0)
    assert flat["stable_rank"] == pytest.approx(10.0)
    assert flat["eigengap"] == pytest.approx(1.0)
    assert flat["phi_proximity"] == pytest.approx(math.exp(-(PHI - 1) / PHI))

    # Zero eigenvalues contribute 0·log 0 = 0 but still count in n for the normalisation.
    rank2 = spectral_metrics(np.array([1.0, 1.0, 0.0, 0.0]))
    assert rank2["effective_rank_sigma2"] == pytest.approx(2.0)
    assert rank2["entropy_normalized"] == pytest.approx(math.log(2) / math.log(4))

    rank1 = spectral_metrics(np.array([5.0, 0.0, -1e-12]))  # tiny negatives are clipped
    assert rank1["eigengap"] == math.inf and rank1["phi_proximity"] == 0.0
    assert rank1["stable_rank"] == pytest.approx(1.0) and rank1["entropy"] == pytest.approx(0.0)

    zeros = spectral_metrics(np.zeros(4))
    assert all(math.isnan(zeros[k]) for k in ("entropy", "stable_rank", "eigengap", "alpha"))
    single = spectral_metrics(np.array([4.0]))
    assert math.isnan(single["entropy_normalized"]) and math.isnan(single["eigengap"])
    assert all(isinstance(v, float) for v in flat.values())


# ---------------------------------------------------------------------------------------
# LoRA core
# ---------------------------------------------------------------------------------------


def test_lora_core_matches_materialised_product():
    g = torch.Generator().manual_seed(1)
    out_f, in_f, r, scaling = 64, 48, 4, 2.5
    B = torch.randn(out_f, r, generator=g)
    A = torch.randn(r, in_f, generator=g)
    core = lora_delta_eigenvalues(A, B, scaling)
    full = eigenvalues_of_weight(scaling * (B.double() @ A.double()))
    assert core.shape == (r,)
    np.testing.assert_allclose(core, full[:r], rtol=1e-9)
    assert np.all(full[r:] < 1e-9 * full[0])  # the rest of ΔWᵀΔW is zero
    # Rank-deficient update: a zero row of A leaves one zero eigenvalue in the core.
    A[0] = 0
    core = lora_delta_eigenvalues(A, B, scaling)
    np.testing.assert_allclose(core[:3], eigenvalues_of_weight(scaling * (B.double() @ A.double()))[:3], rtol=1e-9)
    assert core[3] < 1e-9 * core[0]


# ---------------------------------------------------------------------------------------
# Power-law exponent
# ---------------------------------------------------------------------------------------


def _pareto(alpha: float, n: int, seed: int, xmin: float = 0.5) -> np.ndarray:
    """Continuous Pareto samples with density ∝ x^(−alpha) on [xmin, ∞)."""
    rng = np.random.default_rng(seed)
    return xmin * (1.0 + rng.pareto(alpha - 1.0, size=n))


@pytest.mark.parametrize("alpha", [2.0, 2.5, 4.0])
def test_alpha_recovered_on_pareto(alpha):
    fit = fit_power_law(_pareto(alpha, 2000, seed=int(alpha * 10)))
    assert fit["alpha"] == pytest.approx(alpha, rel=0.10)
    assert 0 < fit["D"] < 0.1 and fit["num_pl_spikes"] >= 50
    # Through spectral_metrics too, and α is scale-invariant (e.g. WeightWatcher's old 1/N).
    eigs = _pareto(alpha, 2000, seed=int(alpha * 10))
    m = spectral_metrics(eigs)
    assert m["alpha"] == pytest.approx(fit["alpha"]) and m["alpha_xmin"] == pytest.approx(fit["xmin"])
    assert fit_power_law(eigs / 576.0)["alpha"] == pytest.approx(fit["alpha"], rel=1e-9)


def test_alpha_nan_with_few_eigenvalues_and_xmin_max():
    assert math.isnan(fit_power_law(np.arange(1.0, 8.0))["alpha"])  # 7 < 8
    assert math.isnan(fit_power_law(np.full(50, 1e-7))["alpha"])  # all below EVALS_THRESH
    small = fit_power_law(_pareto(3.0, 15, seed=3))  # WeightWatcher's small-N branch
    assert math.isfinite(small["alpha"]) and small["num_pl_spikes"] >= 8
    eigs = _pareto(3.0, 500, seed=4)
    capped = fit_power_law(eigs, xmin_max=0.6)
    assert capped["xmin"] <= 0.6
    assert math.isnan(fit_power_law(eigs, xmin_max=0.1)["alpha"])  # no candidate ≤ 0.1


def test_alpha_matches_weightwatcher_fit():
    """Same numbers as WeightWatcher's own WWFit (only when the benchmark dependency exists)."""
    wwp = pytest.importorskip("weightwatcher.WW_powerlaw")
    rng = np.random.default_rng(5)
    W = rng.standard_normal((300, 120)) @ np.diag(rng.pareto(2.0, 120) + 1)
    cases = [np.linalg.svd(W, compute_uv=False) ** 2, _pareto(2.5, 400, seed=6), rng.lognormal(0, 1.5, 15)]
    for eigs in cases:
        ref = wwp.WWFit(eigs[eigs > 1e-5])
        ours = fit_power_law(eigs)
        assert ours["alpha"] == pytest.approx(ref.alpha, rel=1e-9)
        assert ours["xmin"] == pytest.approx(ref.xmin, rel=1e-12)
        assert ours["D"] == pytest.approx(ref.D, rel=1e-9)


# ---------------------------------------------------------------------------------------
# Hidden states
# ---------------------------------------------------------------------------------------


def test_hidden_state_covariance_of_isotropic_gaussian():
    g = torch.Generator().manual_seed(2)
    H = torch.randn(8, 500, 32, generator=g) * 3.0 + 5.0  # offset is removed by centring
    eigs = hidden_state_eigenvalues(H)
    assert eigs.shape == (32,)
    np.testing.assert_allclose(eigs.mean(), 9.0, rtol=0.05)
    assert spectral_metrics(eigs)["entropy_normalized"] > 0.995

    # Masking drops rows; fewer tokens than dimensions pads with structural zeros.
    mask = torch.zeros(8, 500, dtype=torch.bool)
    mask[0, :10] = True
    few = hidden_state_eigenvalues(H, mask=mask)
    assert few.shape == (32,) and np.count_nonzero(few > 1e-9) == 9  # rank T − 1 after centring
    ref = np.linalg.eigvalsh(np.cov(H[0, :10].double().numpy(), rowvar=False))[::-1]
    np.testing.assert_allclose(few, np.clip(ref, 0, None), atol=1e-9)


# ---------------------------------------------------------------------------------------
# Whole-model reports
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def test_model_report_on_tiny_llama(tiny_llama):
    threads = torch.get_num_threads()
    report = model_spectral_report(tiny_llama)
    assert torch.get_num_threads() == threads  # restored after the single-thread pass
    linears = [n for n, m in tiny_llama.named_modules() if isinstance(m, torch.nn.Linear)]
    assert [r["name"] for r in report] == linears and len(report) == 15  # 2×7 + lm_head
    by_name = {r["name"]: r for r in report}
    q = by_name["model.layers.0.self_attn.q_proj"]
    assert q["kind"] == "weight" and q["layer"] == 0 and q["shape"] == (64, 64)
    assert by_name["model.layers.1.self_attn.k_proj"]["shape"] == (32, 64)
    assert by_name["lm_head"]["layer"] is None and by_name["lm_head"]["shape"] == (256, 64)
    ref = spectral_metrics(eigenvalues_of_weight(tiny_llama.model.layers[0].self_attn.q_proj.weight))
    assert q["metrics"] == pytest.approx(ref, nan_ok=True)
    for r in report:
        m = r["metrics"]
        assert 0 < m["entropy_normalized"] <= 1 and 1 <= m["stable_rank"] <= m["n"]
        assert math.isfinite(m["alpha"]) and m["alpha"] > 1

    only1 = model_spectral_report(tiny_llama, layers=[1], fit_alpha=False)
    assert len(only1) == 7 and all(r["layer"] == 1 for r in only1)
    slices = [model_spectral_report(tiny_llama, rotation=(4, i), fit_alpha=False) for i in range(4)]
    names = [r["name"] for s in slices for r in s]
    assert sorted(names) == sorted(linears) and [len(s) for s in slices] == [4, 4, 4, 3]
    assert [r["name"] for r in slices[1]] == linears[1::4]
    with pytest.raises(ValueError):
        model_spectral_report(tiny_llama, rotation=(3, 3))


def test_model_report_on_peft_model(tiny_llama):
    import copy

    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(tiny_llama), cfg)
    report = model_spectral_report(peft_model)
    kinds = [r["kind"] for r in report]
    assert kinds.count("lora_base") == 4 and kinds.count("lora_delta") == 4
    assert kinds.count("weight") == 11  # k, o, gate, up, down ×2 + lm_head; no lora_A/B children
    assert not any("lora_" in r["name"] or "base_layer" in r["name"] for r in report)

    name = "base_model.model.model.layers.1.self_attn.v_proj"
    base, delta = [r for r in report if r["name"] == name]
    assert (base["kind"], delta["kind"], delta["adapter"]) == ("lora_base", "lora_delta", "default")
    assert base["shape"] == delta["shape"] == (32, 64) and delta["layer"] == 1
    lora = peft_model.base_model.model.model.layers[1].self_attn.v_proj
    ref_base = spectral_metrics(eigenvalues_of_weight(lora.base_layer.weight))
    assert base["metrics"] == pytest.approx(ref_base, nan_ok=True)
    materialised = eigenvalues_of_weight(lora.get_delta_weight("default"))[:4]
    assert delta["metrics"]["n"] == 4
    assert delta["metrics"]["trace"] == pytest.approx(materialised.sum(), rel=1e-6)
    assert delta["metrics"]["lambda_max"] == pytest.approx(materialised[0], rel=1e-6)
    assert math.isnan(delta["metrics"]["alpha"])  # r = 4 eigenvalues: no tail fit

    rot = model_spectral_report(peft_model, rotation=(2, 0), fit_alpha=False)
    # A LoRA layer's base and delta stay together in one slice.
    assert all(sum(r["name"] == n for r in rot) in (1, 2) for n in {r["name"] for r in rot})
    assert len(model_spectral_report(peft_model, rotation=(2, 1), fit_alpha=False)) + len(rot) == len(report)
