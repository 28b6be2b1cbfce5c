"""EXPERIMENTAL: the research notes' "basin-aware loss" (seed 002) as an auxiliary penalty.

**Status: an unvalidated heuristic.** Nothing shows that it improves training, stability or
any evaluation; no ablation has been run. It is off by default (``enabled: false``) and,
when enabled, it changes the training objective, so runs with it are not comparable with
runs without it.

What is computed, for the hidden states ``X`` (``N`` unmasked tokens × ``d``) of one layer:

* ``C = X_cᵀX_c/(N−1)`` (columns centred over all kept tokens of the batch), and the
  eigenvalues ``λ_1 ≥ … ≥ λ_d`` of ``C + δI`` with ``δ = eps·tr(C)/d``;
* ``p_i = λ_i/Σλ`` and the spectral entropy ``H = −Σ p_i log p_i`` in nats (not divided
  by ``log d``; ``exp(H)`` is the effective rank, so ``H ≤ log min(N−1, d)`` up to δ);
* ``collapse = collapse_weight · relu(entropy_floor − H)``;
* ``drift = drift_weight · |λ_1/max(λ_2, eps) − φ|`` with φ the golden ratio.

What is known: ``H`` is a standard measure of how many directions the representation uses,
and a collapsed representation (``H → 0``) is a recognised failure. The penalty pushes ``H``
up when it falls below the floor and (drift off) does nothing else. With the default floor 0.5 nats
(effective rank ≈ 1.65) it fires only on near-total collapse.

What is not known: whether pushing ``H`` up helps a language model; what floor is healthy
(measure the pretrained model's own ``H`` first: LM hidden states are often strongly
anisotropic without anything being wrong — one check on SmolLM2-135M, 64 tokens, gave
``H ≈ 3.0`` at ``hidden_states[-1]`` but ``0.005`` at layer 15 and ``0.3`` at ``[-2]``,
because the first position's massive activation dominates the covariance; masking that
position gave ``≈ 3.5``); and what the drift target means — the notes give no reason why
``λ_1/λ_2`` should be near φ, so ``drift_weight`` defaults to 0.
The seed formula also wrote ``dominant_ratio`` (``λ_1/Σλ ≤ 1``) against φ, which would
reward collapse; here the ratio is ``λ_1/λ_2``, as in :mod:`slmlab.watch.spectral`.
"""

from __future__ import annotations

import warnings

import torch

from slmlab.experimental import BasinLossConfig, ExperimentalWarning
from slmlab.watch.spectral import PHI

__all__ = ["BasinLossConfig", "basin_penalty", "representation_eigenvalues"]

warnings.warn(
    "slmlab.experimental.basin_loss is an unvalidated heuristic from the research notes "
    "(seed 002): it is off by default, and enabling it changes the training objective. "
    "Nothing yet shows that it helps.",
    ExperimentalWarning,
    stacklevel=2,  # importlib frames are skipped: this names the importing line
)


def representation_eigenvalues(
    hidden: torch.Tensor, mask: torch.Tensor | None = None, *, eps: float = 1e-6
) -> torch.Tensor:
    """Eigenvalues of ``C + δI``, ``δ = eps·tr(C)/d``, differentiably; float64, descending.

    ``hidden`` is ``(B, T, d)`` (or ``(N, d)``), ``mask`` its leading shape, truthy = keep.
    ``C`` is the covariance of the kept tokens exactly as in
    :func:`slmlab.watch.spectral.hidden_state_eigenvalues`, so without the jitter the two
    agree. Uses the ``N×N`` Gram matrix when ``N < d`` (same nonzero eigenvalues) and pads
    with the ``d − N`` remaining eigenvalues of ``C + δI``, which are exactly ``δ``.

    Why δ: ``eigvalsh``'s backward is ``V diag(ḡ) Vᵀ``, which has no ``1/(λ_i − λ_j)`` term
    (that is the eigen*vector* gradient), and a multiple of ``I`` does not split degenerate
    eigenvalues anyway. What does blow up is what is built on the spectrum: ``∂H/∂λ_i``
    contains ``log p_i`` (infinite at ``λ_i = 0``; rank ``≤ N−1`` guarantees zeros) and
    ``λ_1/λ_2`` has ``1/λ_2``. With δ every ``λ_i ≥ δ > 0``, so ``|log p_i| ≤ log(d/eps)``
    roughly. Tying δ to ``tr(C)`` keeps ``p`` scale-invariant; it is deterministic. At
    exactly equal eigenvalues a symmetric function such as ``H`` has a well-defined
    gradient; ``λ_1/λ_2`` is not differentiable where ``λ_1 = λ_2`` and gets one valid
    one-sided gradient (finite, basis-dependent).
    """
    d = hidden.shape[-1]
    X = hidden if mask is None else hidden[mask.to(device=hidden.device, dtype=torch.bool)]
    X = X.reshape(-1, d)
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 tokens for a covariance, got {n}")
    if X.device.type == "mps":  # no float64 on MPS
        X = X.cpu()
    X = X.to(torch.float64)
    Xc = X - X.mean(dim=0, keepdim=True)
    G = ((Xc.T @ Xc) if d <= n else (Xc @ Xc.T)) / (n - 1)
    k = G.shape[0]
    delta = eps * torch.diagonal(G).sum() / d  # tr of either Gram side is tr(C)
    evals = torch.linalg.eigvalsh(G + delta * torch.eye(k, dtype=G.dtype, device=G.device))
    evals = evals.clamp_min(0.0)
    if k < d:
        evals = torch.cat([evals, delta.expand(d - k)])
    return torch.sort(evals, descending=True).values  # sort, not flip: padding order


def basin_penalty(
    hidden: torch.Tensor, mask: torch.Tensor | None, config: BasinLossConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """``collapse + drift`` for one layer's hidden states, and the evidence behind it.

    ``collapse = collapse_weight·relu(entropy_floor − H)``, ``H = −Σ p_i log p_i``,
    ``p = λ/Σλ``; ``drift = drift_weight·|λ_1/max(λ_2, eps) − φ|``; ``λ`` from
    :func:`representation_eigenvalues` with ``config.eps``. Returns the total as a scalar of
    ``hidden``'s dtype and device (add it to the LM loss) and ``{"entropy", "eigengap",
    "collapse", "drift"}`` as floats (one device sync). Gradients reach ``hidden`` only; a
    batch whose tokens lie exactly on one line is a stationary point of ``H`` (zero
    gradient), so the penalty cannot lift an exactly rank-1 batch, only a nearly rank-1 one.
    """
    if hidden.shape[-1] < 2:
        raise ValueError("basin_penalty needs hidden size d >= 2")
    lam = representation_eigenvalues(hidden, mask, eps=config.eps)
    p = lam / lam.sum().clamp_min(torch.finfo(lam.dtype).tiny)
    pos = p > 0
    # Double where: log(0) must not even be evaluated on the backward path (0·inf = NaN).
    H = 0.0 - torch.where(pos, p * torch.log(torch.where(pos, p, 1.0)), 0.0).sum()  # no -0.0
    gap = lam[0] / lam[1].clamp_min(config.eps)
    collapse = config.collapse_weight * torch.relu(config.entropy_floor - H)
    drift = config.drift_weight * (gap - PHI).abs()
    total = collapse + drift
    vals = torch.stack([H, gap, collapse, drift]).detach().cpu().tolist()
    evidence = dict(zip(("entropy", "eigengap", "collapse", "drift"), vals, strict=True))
    return total.to(dtype=hidden.dtype).to(device=hidden.device), evidence
