"""Spectral health metrics cheap enough to run during training.

Everything here works on the eigenvalues ``λ_i ≥ 0`` of a positive semi-definite matrix:
``WᵀW`` for a weight matrix (so ``λ_i = σ_i²``, the squared singular values of ``W``), the
``r×r`` core of a LoRA update, or the covariance of hidden states. The exact formulas, the
normalisations chosen and how the power-law fit differs from WeightWatcher are in
``docs/spectral.md``.

Entry points:

* :func:`eigenvalues_of_weight` — ``σ²`` of a weight matrix (float64, smaller Gram side).
* :func:`lora_delta_eigenvalues` — ``σ²`` of ``scaling·B·A`` without materialising it.
* :func:`hidden_state_eigenvalues` — eigenvalues of the token covariance of hidden states.
* :func:`spectral_metrics` — all scalar metrics of one spectrum.
* :func:`fit_power_law` — WeightWatcher-style power-law exponent of the spectrum's tail.
* :func:`model_spectral_report` — the metrics of every ``nn.Linear`` (or LoRA layer) of a
  model, optionally one rotating slice of them per call to bound the cost per step.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "PHI",
    "EVALS_THRESH",
    "eigenvalues_of_weight",
    "lora_delta_eigenvalues",
    "hidden_state_eigenvalues",
    "fit_power_law",
    "spectral_metrics",
    "model_spectral_report",
]

PHI = (1.0 + math.sqrt(5.0)) / 2.0
"""The golden ratio φ = 1.618…, used only by the heuristic ``phi_proximity``."""

EVALS_THRESH = 1e-5
"""WeightWatcher's ``EVALS_THRESH``: eigenvalues ≤ this are dropped before the power-law fit."""

MIN_EVALS = 8
"""Fewer eigenvalues than this above the threshold: ``alpha`` is NaN (WeightWatcher's
``min_evals`` default is 8; it skips such layers)."""

SMALL_N_CUTOFF = 20
"""Below this many eigenvalues WeightWatcher switches to its bias-corrected small-N fit."""

_KS_CHUNK_ELEMS = 1 << 22  # bound on the candidate×eigenvalue KS matrix per chunk (32 MB)


# ---------------------------------------------------------------------------------------
# Eigenvalues
# ---------------------------------------------------------------------------------------


def _gram64(W: torch.Tensor) -> torch.Tensor:
    """The smaller of ``WᵀW`` and ``WWᵀ`` in float64 (same nonzero eigenvalues)."""
    W = W.detach().to(dtype=torch.float64, device="cpu")
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(W.shape)}")
    out_f, in_f = W.shape
    return W.T @ W if in_f <= out_f else W @ W.T


def _desc_clipped(evals: torch.Tensor) -> np.ndarray:
    """eigvalsh output (ascending, last dim) -> numpy, clipped at 0, descending."""
    return np.ascontiguousarray(evals.clamp_min(0.0).flip(-1).numpy())


def eigenvalues_of_weight(W: torch.Tensor) -> np.ndarray:
    """Eigenvalues of ``WᵀW`` (= ``σ_i²``), float64, clipped at 0, sorted descending.

    Uses ``W Wᵀ`` when that is the smaller Gram matrix, so the result has ``min(out, in)``
    entries. ``W`` has the ``nn.Linear`` layout ``(out_features, in_features)``; the
    spectrum does not depend on the orientation.
    """
    with torch.no_grad():
        return _desc_clipped(torch.linalg.eigvalsh(_gram64(W)))


def lora_delta_eigenvalues(A: torch.Tensor, B: torch.Tensor, scaling: float) -> np.ndarray:
    """Eigenvalues of ``ΔWᵀΔW`` for ``ΔW = scaling·B·A`` without materialising ``ΔW``.

    ``B`` is ``out×r`` (``lora_B.weight``), ``A`` is ``r×in`` (``lora_A.weight``). With the
    reduced QR factorisations ``B = Q_B R_B`` and ``Aᵀ = Q_A R_A``,
    ``ΔW = scaling · Q_B (R_B R_Aᵀ) Q_Aᵀ`` and, because ``Q_B`` and ``Q_A`` have orthonormal
    columns, the nonzero singular values of ``ΔW`` are those of the ``r×r`` core
    ``C = scaling · R_B R_Aᵀ`` (proof in ``docs/spectral.md``). Returns the ``r`` values
    ``σ_i(C)²`` (float64, clipped at 0, descending); a rank-deficient update yields zeros.
    Cost: ``O((out + in)·r²)`` instead of ``O(out·in·r)`` plus an ``min(out, in)³`` solve.
    """
    with torch.no_grad():
        A64 = A.detach().to(dtype=torch.float64, device="cpu")
        B64 = B.detach().to(dtype=torch.float64, device="cpu")
        if A64.ndim != 2 or B64.ndim != 2 or B64.shape[1] != A64.shape[0]:
            raise ValueError(f"expected B (out×r) and A (r×in), got B {tuple(B64.shape)}, A {tuple(A64.shape)}")
        r = A64.shape[0]
        if r > min(B64.shape[0], A64.shape[1]):
            # Degenerate "low rank" larger than the matrix: QR would not be square-reduced.
            return eigenvalues_of_weight(float(scaling) * (B64 @ A64))
        R_B = torch.linalg.qr(B64, mode="r").R
        R_A = torch.linalg.qr(A64.T, mode="r").R
        core = float(scaling) * (R_B @ R_A.T)
        sv = torch.linalg.svdvals(core)  # descending
        return np.ascontiguousarray((sv * sv).clamp_min(0.0).numpy())


def hidden_state_eigenvalues(H: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    """Eigenvalues of the covariance of hidden states, float64, descending, length ``d``.

    ``H`` is ``(tokens, d)`` or ``(batch, seq, d)`` (flattened to tokens); ``mask`` (same
    leading shape, truthy = keep) drops padding tokens. Rows are centred per feature and the
    covariance is ``H_cᵀH_c / (T − 1)``. When ``T < d`` the ``T×T`` Gram matrix is used
    instead and the result is padded with the ``d − T`` structural zeros.
    """
    with torch.no_grad():
        H64 = H.detach().to(dtype=torch.float64, device="cpu")
        d = H64.shape[-1]
        if mask is not None:
            H64 = H64[mask.detach().to(device="cpu", dtype=torch.bool)]
        H64 = H64.reshape(-1, d)
        T = H64.shape[0]
        if T < 2:
            raise ValueError(f"need at least 2 tokens for a covariance, got {T}")
        Hc = H64 - H64.mean(dim=0, keepdim=True)
        G = (Hc.T @ Hc) if d <= T else (Hc @ Hc.T)
        evals = _desc_clipped(torch.linalg.eigvalsh(G / (T - 1)))
        if evals.shape[0] < d:
            evals = np.concatenate([evals, np.zeros(d - evals.shape[0])])
        return evals


# ---------------------------------------------------------------------------------------
# Power-law fit (WeightWatcher's default "ww" fit, vectorised)
# ---------------------------------------------------------------------------------------


def _nan_fit(n_fit: int) -> dict[str, float]:
    nan = float("nan")
    return {"alpha": nan, "xmin": nan, "D": nan, "sigma": nan, "num_pl_spikes": nan, "n_fit": float(n_fit)}


def _ks_distances(x: np.ndarray, logx: np.ndarray, alphas: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """KS distance of each candidate xmin ``x[cand[k]]`` with exponent ``alphas[k]``.

    ``D_k = max_{j ≥ i} |1 − (x_j/x_i)^(1−α) − (j − i)/n_i|`` with ``i = cand[k]``,
    ``n_i = N − i`` — exactly WeightWatcher's expression (theoretical CDF of the tail vs the
    empirical CDF evaluated just below each point). Vectorised in row chunks.
    """
    N = x.shape[0]
    out = np.ones(cand.shape[0], dtype=np.float64)
    ok = np.isfinite(alphas) & (alphas > 1.0)
    idx = np.nonzero(ok)[0]
    if idx.size == 0:
        return out
    j = np.arange(N)
    step = max(1, _KS_CHUNK_ELEMS // max(N, 1))
    for s in range(0, idx.size, step):
        ks = idx[s : s + step]
        i = cand[ks][:, None]  # (k, 1)
        a = alphas[ks][:, None]
        n = (N - i).astype(np.float64)
        dlog = logx[None, :] - logx[i]  # log(x_j / x_i), ≥ 0 for j ≥ i
        valid = j[None, :] >= i
        dlog = np.where(valid, dlog, 0.0)
        F_fit = -np.expm1((1.0 - a) * dlog)  # 1 − (x_j/x_i)^(1−α)
        F_emp = (j[None, :] - i) / n
        diff = np.where(valid, np.abs(F_fit - F_emp), 0.0)
        out[ks] = diff.max(axis=1)
    return out


def fit_power_law(
    eigs: np.ndarray,
    *,
    thresh: float = EVALS_THRESH,
    xmin_max: float | None = None,
    min_evals: int = MIN_EVALS,
) -> dict[str, float]:
    """Fit ``p(λ) ∝ λ^(−α)`` for ``λ ≥ xmin`` to the tail of a spectrum (Clauset–Shalizi–Newman).

    Reproduces WeightWatcher 0.7.x's default fit (``pl_package='ww'``, ``fix_fingers=False``):
    keep ``λ > thresh``; for every candidate ``xmin = λ_i`` (all but the largest) take the
    continuous MLE ``α_i = 1 + n_i / Σ_{λ≥λ_i} log(λ/λ_i)`` and the KS distance between the
    fitted and empirical tail CDFs; choose the candidate with the smallest KS distance. With
    fewer than 20 eigenvalues it uses WeightWatcher's small-N variant: bias-corrected
    ``α = 1 + (n−1)/Σ log`` over tails of ≥ 8 points, still chosen by smallest KS distance
    (WeightWatcher computes a ``D − 0.868/√n`` objective there but its caller then re-selects
    by ``argmin D``; we reproduce what it returns).

    ``xmin_max`` (optional, not a WeightWatcher default) restricts candidates to
    ``xmin ≤ xmin_max``. α is scale-invariant: multiplying all λ by ``c`` (e.g. WeightWatcher's
    old ``1/N`` normalisation) changes only ``xmin`` and which λ pass the absolute ``thresh``.

    Returns ``alpha``, ``xmin``, ``D`` (KS distance), ``sigma`` (``(α−1)/√n_tail``),
    ``num_pl_spikes`` (tail size) and ``n_fit`` (eigenvalues above ``thresh``). All but
    ``n_fit`` are NaN when fewer than ``min_evals`` eigenvalues pass the threshold.
    """
    x = np.asarray(eigs, dtype=np.float64).ravel()
    x = np.sort(x[np.isfinite(x) & (x > thresh)])
    N = x.shape[0]
    if N < max(int(min_evals), 2):
        return _nan_fit(N)
    logx = np.log(x)
    cand = np.arange(N - 1)
    n = (N - cand).astype(np.float64)
    suffix = np.cumsum(logx[::-1])[::-1]  # suffix[i] = Σ_{j≥i} log x_j
    s = suffix[:-1] - n * logx[:-1]  # Σ_{j≥i} log(x_j / x_i)
    small = N < SMALL_N_CUTOFF
    with np.errstate(divide="ignore", invalid="ignore"):
        if small:
            alphas = 1.0 + (n - 1.0) / s
            usable = (n >= 8) & (s > 1e-12)
        else:
            alphas = 1.0 + n / s
            usable = np.ones_like(n, dtype=bool)
    alphas = np.where(usable, alphas, np.nan)
    if xmin_max is not None:
        usable &= x[:-1] <= xmin_max
        if not usable.any():
            return _nan_fit(N)
    if small and not usable.any():
        # WeightWatcher's fallback: the whole spectrum is the tail.
        if not s[0] > 1e-12:
            return _nan_fit(N)
        alphas[0] = 1.0 + (n[0] - 1.0) / s[0]
        usable[0] = True
    Ds = np.where(usable, _ks_distances(x, logx, alphas, cand), np.inf)
    best = int(np.argmin(Ds))
    alpha = float(alphas[best])
    return {
        "alpha": alpha,
        "xmin": float(x[best]),
        "D": float(Ds[best]),
        "sigma": float((alpha - 1.0) / math.sqrt(n[best])),
        "num_pl_spikes": float(n[best]),
        "n_fit": float(N),
    }


# ---------------------------------------------------------------------------------------
# Scalar metrics
# ---------------------------------------------------------------------------------------


def _entropy(w: np.ndarray) -> float:
    """Shannon entropy (nats) of the distribution ``w / Σw`` (``0·log 0 = 0``)."""
    total = w.sum()
    if not total > 0:
        return float("nan")
    p = w[w > 0] / total
    return float(-(p * np.log(p)).sum())


def spectral_metrics(
    eigs: np.ndarray,
    *,
    thresh: float = EVALS_THRESH,
    xmin_max: float | None = None,
    fit_alpha: bool = True,
) -> dict[str, float]:
    """All scalar spectral metrics of eigenvalues ``λ_i ≥ 0`` (any order; negatives clipped).

    Keys (formulas in ``docs/spectral.md``; ``p_i = λ_i/Σλ``, ``n = len(eigs)``):

    * ``n``, ``trace`` (Σλ), ``lambda_max``
    * ``entropy`` — ``−Σ p_i log p_i`` in nats; ``entropy_normalized`` — ``entropy/log n``
    * ``effective_rank_sigma2`` — ``exp(entropy)`` (distribution over ``λ = σ²``)
    * ``effective_rank_sigma`` — ``exp(−Σ q_i log q_i)`` with ``q_i = √λ_i/Σ√λ`` (over σ;
      this is Roy & Vetterli's original definition for a matrix's singular values)
    * ``stable_rank`` — ``Σλ/λ_max`` (= ``‖W‖_F²/‖W‖_2²``)
    * ``dominant_ratio`` — ``λ_1/Σλ``; ``eigengap`` — ``λ_1/λ_2`` (``inf`` if ``λ_2 = 0``)
    * ``phi_proximity`` — HEURISTIC with no established meaning: ``exp(−|λ_1/λ_2 − φ|/φ)``
    * ``alpha``, ``alpha_xmin``, ``alpha_D``, ``alpha_sigma``, ``alpha_num_pl_spikes`` — the
      :func:`fit_power_law` tail fit (NaN with fewer than 8 eigenvalues above ``thresh``, or
      when ``fit_alpha`` is False)

    Degenerate inputs give NaN rather than raising: an all-zero spectrum has NaN entropy and
    ranks, ``n = 1`` has NaN ``entropy_normalized`` and eigengap.
    """
    lam = np.clip(np.asarray(eigs, dtype=np.float64).ravel(), 0.0, None)
    lam = np.sort(lam)[::-1]
    n = lam.shape[0]
    nan = float("nan")
    trace = float(lam.sum()) if n else 0.0
    lmax = float(lam[0]) if n else nan
    H = _entropy(lam) if n else nan
    H_sigma = _entropy(np.sqrt(lam)) if n else nan
    positive = trace > 0
    if n >= 2 and positive:
        l2 = float(lam[1])
        gap = lmax / l2 if l2 > 0 else math.inf
        phi_prox = math.exp(-abs(gap - PHI) / PHI) if math.isfinite(gap) else 0.0
    else:
        gap = phi_prox = nan
    out = {
        "n": float(n),
        "trace": trace,
        "lambda_max": lmax,
        "entropy": H,
        "entropy_normalized": H / math.log(n) if n >= 2 else nan,
        "effective_rank_sigma2": math.exp(H) if positive else nan,
        "effective_rank_sigma": math.exp(H_sigma) if positive else nan,
        "stable_rank": trace / lmax if positive else nan,
        "dominant_ratio": lmax / trace if positive else nan,
        "eigengap": gap,
        "phi_proximity": phi_prox,
    }
    fit = fit_power_law(lam, thresh=thresh, xmin_max=xmin_max) if fit_alpha else _nan_fit(0)
    out.update(
        alpha=fit["alpha"],
        alpha_xmin=fit["xmin"],
        alpha_D=fit["D"],
        alpha_sigma=fit["sigma"],
        alpha_num_pl_spikes=fit["num_pl_spikes"],
    )
    return out


# ---------------------------------------------------------------------------------------
# Whole-model report
# ---------------------------------------------------------------------------------------

_BLOCK_RE = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


@dataclass
class _Item:
    name: str
    kind: str  # "weight" | "lora_base" | "lora_delta"
    shape: tuple[int, int]
    weight: torch.Tensor | None = None
    A: torch.Tensor | None = None
    B: torch.Tensor | None = None
    scaling: float = 1.0
    adapter: str | None = None


def _is_lora_layer(mod: nn.Module) -> bool:
    return (
        hasattr(mod, "lora_A")
        and hasattr(mod, "lora_B")
        and hasattr(mod, "scaling")
        and hasattr(mod, "base_layer")
        and isinstance(getattr(mod, "lora_A"), nn.ModuleDict)
    )


def _block_index(name: str) -> int | None:
    m = _BLOCK_RE.search(name)
    return int(m.group(1)) if m else None


def _collect(model: nn.Module) -> list[list[_Item]]:
    """Modules in ``named_modules`` order, each a list of items (LoRA: base + deltas)."""
    lora_names = [n for n, m in model.named_modules() if _is_lora_layer(m)]
    inside = tuple(n + "." for n in lora_names if n)
    groups: list[list[_Item]] = []
    for name, mod in model.named_modules():
        if _is_lora_layer(mod):
            base = mod.base_layer
            W = getattr(base, "weight", None)
            items: list[_Item] = []
            if isinstance(W, torch.Tensor) and W.ndim == 2 and W.is_floating_point():
                items.append(_Item(name, "lora_base", tuple(W.shape), weight=W))
            adapters = getattr(mod, "active_adapters", None) or list(mod.lora_A.keys())
            if isinstance(adapters, str):
                adapters = [adapters]
            for ad in adapters:
                if ad not in mod.lora_A or ad not in mod.lora_B:
                    continue
                la, lb = mod.lora_A[ad], mod.lora_B[ad]
                if not (isinstance(la, nn.Linear) and isinstance(lb, nn.Linear)):
                    continue
                A, B = la.weight, lb.weight  # r×in, out×r
                items.append(
                    _Item(
                        name,
                        "lora_delta",
                        (B.shape[0], A.shape[1]),
                        A=A,
                        B=B,
                        scaling=float(mod.scaling[ad]),
                        adapter=ad,
                    )
                )
            if items:
                groups.append(items)
        elif isinstance(mod, nn.Linear) and not (inside and name.startswith(inside)):
            groups.append([_Item(name, "weight", tuple(mod.weight.shape), weight=mod.weight)])
    return groups


def _weight_spectra(items: list[_Item], batch_size: int) -> dict[int, np.ndarray]:
    """Eigenvalues for every weight item, batching same-size Gram matrices into one eigvalsh."""
    by_dim: dict[int, list[int]] = {}
    for k, it in enumerate(items):
        by_dim.setdefault(min(it.shape), []).append(k)
    out: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for _, ks in sorted(by_dim.items()):
            for s in range(0, len(ks), batch_size):
                chunk = ks[s : s + batch_size]
                grams = torch.stack([_gram64(items[k].weight) for k in chunk])
                evals = _desc_clipped(torch.linalg.eigvalsh(grams))
                for row, k in enumerate(chunk):
                    out[k] = evals[row]
    return out


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (restored afterwards)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def model_spectral_report(
    model: nn.Module,
    layers: list[int] | None = None,
    rotation: tuple[int, int] | None = None,
    *,
    batch_size: int = 8,
    num_threads: int | None = 1,
    thresh: float = EVALS_THRESH,
    fit_alpha: bool = True,
) -> list[dict[str, Any]]:
    """Spectral metrics of every ``nn.Linear`` of a model (or base + delta of each LoRA layer).

    * ``layers``: keep only modules whose name carries one of these block indices (the first
      dotted integer component, e.g. ``model.layers.3.mlp.up_proj`` → 3); modules with no
      index (``lm_head``) are then dropped.
    * ``rotation=(k, i)``: keep the i-th of k strided slices of the (filtered) module list,
      modules ``i, i+k, i+2k, …`` — call with ``i = step % k`` to cover the whole model every
      k calls at ~1/k of the cost. A LoRA layer's base and delta stay in the same slice.

    For a PEFT model, each LoRA-wrapped module gives a ``"lora_base"`` entry (the frozen base
    weight) and one ``"lora_delta"`` entry per active adapter (``scaling·B·A`` via the r×r
    core); the ``lora_A``/``lora_B``/``base_layer`` ``nn.Linear`` children are not repeated.
    Other ``nn.Linear`` modules are ``"weight"`` entries.

    ``num_threads`` (default 1) is torch's thread count during the pass, restored after.
    During training the cores are already busy, and there float64 ``eigvalsh`` with 2 threads
    on a 2-core machine ran from 2× to several hundred times slower than with 1 (thread
    contention); on an idle machine 2 threads were ~1.4× faster. ``None`` leaves the setting
    alone. ``batch_size`` same-size Gram matrices go through one batched ``eigvalsh`` call
    (bounds peak memory; no measurable speed-up on CPU).

    Returns one dict per entry: ``name``, ``kind``, ``adapter`` (LoRA deltas, else None),
    ``layer`` (block index or None), ``shape`` ``(out, in)`` and ``metrics``
    (:func:`spectral_metrics`).
    """
    groups = _collect(model)
    if layers is not None:
        wanted = {int(i) for i in layers}
        groups = [g for g in groups if _block_index(g[0].name) in wanted]
    if rotation is not None:
        k, i = int(rotation[0]), int(rotation[1])
        if k < 1 or not 0 <= i < k:
            raise ValueError(f"rotation=(k, i) needs k >= 1 and 0 <= i < k, got {rotation}")
        groups = groups[i::k]
    items = [it for g in groups for it in g]
    weight_idx = [k for k, it in enumerate(items) if it.weight is not None]
    with _torch_threads(num_threads):
        computed = _weight_spectra([items[k] for k in weight_idx], max(1, int(batch_size)))
        spectra = {pos: computed[row] for row, pos in enumerate(weight_idx)}
        for pos, it in enumerate(items):
            if it.weight is None:
                spectra[pos] = lora_delta_eigenvalues(it.A, it.B, it.scaling)
    report: list[dict[str, Any]] = []
    for pos, it in enumerate(items):
        eigs = spectra[pos]
        report.append(
            {
                "name": it.name,
                "kind": it.kind,
                "adapter": it.adapter,
                "layer": _block_index(it.name),
                "shape": it.shape,
                "metrics": spectral_metrics(eigs, thresh=thresh, fit_alpha=fit_alpha),
            }
        )
    return report
