"""The experimental basin penalty: import warning, eigenvalues, entropy, gradients, config."""

from __future__ import annotations

import importlib
import itertools
import math
import sys
import warnings

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import slmlab.experimental
from slmlab.experimental import ExperimentalWarning
from slmlab.watch.spectral import PHI, hidden_state_eigenvalues

with warnings.catch_warnings():
    warnings.simplefilter("ignore", ExperimentalWarning)
    from slmlab.experimental.basin_loss import (
        BasinLossConfig,
        basin_penalty,
        representation_eigenvalues,
    )

EPS = 1e-6


def _hadamard(n: int) -> torch.Tensor:
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def _designed(scales: list[float]) -> torch.Tensor:
    """8 tokens × 8 features, feature j = scales[j]·(Hadamard column j+1): centred, mutually
    orthogonal columns, so the covariance is exactly diag(8·s_j²/7) (exact repeats)."""
    s = torch.tensor(scales + [0.0] * (8 - len(scales)), dtype=torch.float64)
    return torch.cat([_hadamard(8)[:, 1:] * s[:7], torch.zeros(8, 1, dtype=torch.float64)], 1)


def _np_entropy(lam: np.ndarray) -> float:
    p = lam / lam.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _collapsed(seed: int = 0, noise: float = 1e-3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(8, generator=g, dtype=torch.float64)
    coef = torch.randn(2, 6, 1, generator=g, dtype=torch.float64)
    return coef * direction + noise * torch.randn(2, 6, 8, generator=g, dtype=torch.float64)


# --- import warning ---------------------------------------------------------------------


def test_importing_the_module_warns(monkeypatch):
    # monkeypatch restores the original module objects afterwards (class identity matters).
    monkeypatch.delitem(sys.modules, "slmlab.experimental.basin_loss")
    monkeypatch.delattr(slmlab.experimental, "basin_loss", raising=False)
    match = "unvalidated heuristic.*off by default.*training objective"
    with pytest.warns(ExperimentalWarning, match=match):
        importlib.import_module("slmlab.experimental.basin_loss")


def test_importing_the_package_is_silent(monkeypatch):
    import slmlab

    monkeypatch.delitem(sys.modules, "slmlab.experimental.basin_loss")
    monkeypatch.delitem(sys.modules, "slmlab.experimental")
    monkeypatch.delattr(slmlab, "experimental")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        pkg = importlib.import_module("slmlab.experimental")
    assert issubclass(pkg.ExperimentalWarning, UserWarning)
    assert not [w for w in rec if issubclass(w.category, UserWarning)]


# --- eigenvalues ------------------------------------------------------------------------


@pytest.mark.parametrize("d", [8, 3])  # 8: N < d (Gram side); 3: N > d
@pytest.mark.parametrize("masked", [False, True])
def test_eigenvalues_match_numpy_reference(d, masked):
    g = torch.Generator().manual_seed(d)
    H = torch.randn(2, 5, d, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool) if masked else None
    ours = representation_eigenvalues(H, mask, eps=EPS).numpy()
    ref = hidden_state_eigenvalues(H, mask)
    assert ours.shape == ref.shape == (d,)
    assert np.all(np.diff(ours) <= 0)
    delta = EPS * ref.sum() / d
    np.testing.assert_allclose(ours, ref + delta, rtol=1e-9, atol=1e-12)  # exactly C + δI
    assert np.max(np.abs(ours - ref)) <= 1e-6 * ref.max()  # and within 1e-6 of the monitor


# --- entropy and the collapse term ------------------------------------------------------


def test_isotropic_batch_has_entropy_log_rank_and_no_penalty():
    cfg = BasinLossConfig(enabled=True)
    penalty, ev = basin_penalty(_designed([1.0, 1.0, 1.0, 1.0]).reshape(2, 4, 8), None, cfg)
    assert ev["entropy"] == pytest.approx(math.log(4), abs=1e-4)
    assert float(penalty) == 0.0 and ev["collapse"] == 0.0 and ev["drift"] == 0.0


def test_collapsed_batch_is_penalised_by_the_formula():
    cfg = BasinLossConfig(enabled=True, collapse_weight=0.3)
    H = _collapsed()
    penalty, ev = basin_penalty(H, None, cfg)
    ref = hidden_state_eigenvalues(H)
    H_ref = _np_entropy(ref + EPS * ref.sum() / 8)
    assert ev["entropy"] == pytest.approx(H_ref, abs=1e-9)
    assert ev["entropy"] < 0.1
    assert float(penalty) > 0
    assert float(penalty) == pytest.approx(0.3 * (0.5 - H_ref), abs=1e-6)
    assert ev["collapse"] == pytest.approx(float(penalty), abs=1e-12)


# --- gradients --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scales",
    [
        [1.0, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01],  # λ_2 = … = λ_7 exactly, λ_8 = 0
        [1.0, 1.0, 0.01, 0.01],  # λ_1 = λ_2 exactly (drift's kink), then exact zeros
    ],
)
def test_gradients_are_finite_and_nonzero_at_repeated_eigenvalues(scales):
    cfg = BasinLossConfig(enabled=True, drift_weight=0.1, entropy_floor=2.5)
    H = _designed(scales).reshape(2, 4, 8).float().requires_grad_(True)
    penalty, ev = basin_penalty(H, None, cfg)
    assert penalty.dtype == torch.float32 and penalty.ndim == 0
    assert ev["collapse"] > 0
    penalty.backward()
    assert torch.isfinite(H.grad).all()
    assert H.grad.abs().max() > 0


def test_masked_tokens_get_no_gradient():
    H = _collapsed().requires_grad_(True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    penalty, _ = basin_penalty(H, mask, BasinLossConfig(enabled=True))
    penalty.backward()
    assert torch.isfinite(H.grad).all() and H.grad[0].abs().max() > 0
    assert H.grad[1, 4:].abs().max() == 0


def test_gradient_descent_raises_entropy():
    cfg = BasinLossConfig(enabled=True, collapse_weight=1.0)
    H = _collapsed(seed=1).requires_grad_(True)
    opt = torch.optim.SGD([H], lr=0.1)
    entropies = []
    for _ in range(5):
        opt.zero_grad()
        penalty, ev = basin_penalty(H, None, cfg)
        entropies.append(ev["entropy"])
        penalty.backward()
        opt.step()
    entropies.append(basin_penalty(H, None, cfg)[1]["entropy"])
    assert all(b > a for a, b in itertools.pairwise(entropies))


# --- drift ------------------------------------------------------------------------------


def test_drift_matches_hand_computation():
    cfg = BasinLossConfig(enabled=True, collapse_weight=0.0, drift_weight=0.5)
    # covariance diag(4·8/7, 8/7, 0, …): λ_1/λ_2 = 4 before the jitter δ = eps·(40/7)/8
    penalty, ev = basin_penalty(_designed([2.0, 1.0]), None, cfg)
    delta = EPS * (40 / 7) / 8
    ratio = (32 / 7 + delta) / (8 / 7 + delta)
    assert ev["eigengap"] == pytest.approx(ratio, rel=1e-12)
    assert float(penalty) == pytest.approx(0.5 * (ratio - PHI), rel=1e-12)
    assert ev["drift"] == pytest.approx(0.5 * (4 - PHI), abs=1e-5)


# --- config -----------------------------------------------------------------------------


def test_config_defaults_are_off_and_conservative():
    cfg = BasinLossConfig()
    assert cfg.enabled is False and cfg.drift_weight == 0.0 and cfg.layer == -1


@pytest.mark.parametrize(
    "bad",
    [{"colapse_weight": 0.1}, {"collapse_weight": -0.1}, {"drift_weight": -1.0}, {"eps": 0.0}],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        BasinLossConfig(**bad)
