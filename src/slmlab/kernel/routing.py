"""Fisher-Rao geometry on the probability simplex, basin coordinates, and nearest-prototype routing.

Fisher-Rao distance between two categorical distributions p and q (over the last dimension):

    d(p, q) = 2 · arccos( Σᵢ √(pᵢ qᵢ) )            (Σᵢ √(pᵢ qᵢ): the Bhattacharyya coefficient)

which is the great-circle distance between √p and √q on the sphere of radius 2, so it is a metric
with values in [0, π]. The coefficient is clamped to [0, 1] first: rounding can push it a hair
above 1, where arccos is NaN. At p = q arccos has an infinite derivative, so the gradient there is
not usable (:func:`route` caps the coefficient for that reason).

Basin coordinates: a fixed map from a hidden state h (last dimension H) to the 8-simplex,

    b(h) = softmax( P · (h / rms(h)) / τ ),    rms(h) = √(mean(h²) + ε)

with P a (8, H) matrix with orthonormal rows drawn once from a seed (:func:`fixed_projection`) and
never trained. Dividing by rms(h) makes b independent of the hidden state's scale (and of a norm
layer's learned gain's overall scale); for an isotropic h the components of P·h/rms(h) are about
N(0, 1), so τ = 1 gives distributions neither uniform nor one-hot.

Routing: each row of b goes to the ``k`` prototypes (points of the simplex) nearest in Fisher-Rao
distance, i.e. with the largest Bhattacharyya coefficients (arccos is decreasing); ties go to the
lower index (``torch.topk`` on CPU). The selected prototypes' weights are softmax(−d / τ_w) over
the k of them: fixed functions of the distances, no learned parameter. For these weights the
coefficient is capped at 1 − 10⁻⁶ (distances under about 0.003 count as 0.003), so that their
gradient stays finite when a point sits exactly on a prototype.
"""

from __future__ import annotations

import torch

EPS = 1e-6
ROUTE_EPS = 1e-6  # route(): Σ√(b·p) is capped at 1 - 1e-6, i.e. distances below about 0.003 read as 0.003


def bhattacharyya(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Σᵢ √(pᵢ qᵢ) over the last dimension, broadcast over the leading ones, clamped to [0, 1]."""
    return (p.clamp_min(0) * q.clamp_min(0)).sqrt().sum(-1).clamp(0.0, 1.0)


def fisher_rao(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Fisher-Rao distance 2·arccos(Σ √(p·q)) between categorical distributions (last dimension),
    batched and broadcast over the leading dimensions: (…, n) × (…, n) → (…)."""
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"fisher_rao: the distributions have {p.shape[-1]} and {q.shape[-1]} categories")
    return 2.0 * torch.arccos(bhattacharyya(p, q))


def pairwise_fisher_rao(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Distances between every row of ``p`` (…, m, n) and every row of ``q`` (r, n): (…, m, r)."""
    return fisher_rao(p.unsqueeze(-2), q)


def fixed_projection(hidden: int, dim: int = 8, *, seed: int = 0) -> torch.Tensor:
    """A (dim, hidden) float32 matrix with orthonormal rows: the Q factor of a seeded Gaussian
    (hidden, dim) matrix, signs fixed so that R has a positive diagonal. Same arguments, same bytes;
    the global RNG is not touched."""
    if not 1 <= dim <= hidden:
        raise ValueError(f"a projection to {dim} dimensions needs 1 <= dim <= hidden ({hidden})")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    gauss = torch.randn(hidden, dim, generator=gen, dtype=torch.float64, device="cpu")
    q, r = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.T.contiguous().to(torch.float32)


def basin_coordinates(hidden: torch.Tensor, projection: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(P · (h / rms(h)) / τ): (…, H) → (…, dim), computed in float32 (see the module docstring)."""
    h = hidden.float()
    unit = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
    return torch.softmax(unit @ projection.float().T / temperature, dim=-1)


def prototypes_from_roots(root_vectors: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Points of the simplex for root vectors: softmax(root / τ_p), one row per root."""
    return torch.softmax(root_vectors.float() / temperature, dim=-1)


def route(basin: torch.Tensor, prototypes: torch.Tensor, k: int, weight_temperature: float = 1.0
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` nearest prototypes of each row of ``basin`` (…, n) among ``prototypes`` (K, n).

    Returns ``(indices, weights, distances)``, each (…, k): prototype indices nearest first, the
    weights softmax(−d/τ_w) over the k selected (summing to 1), and the Fisher-Rao distances.
    """
    if not 1 <= k <= prototypes.shape[0]:
        raise ValueError(f"route: k={k} must be between 1 and the {prototypes.shape[0]} prototypes")
    coefficient = bhattacharyya(basin.unsqueeze(-2), prototypes)  # (…, K); larger = nearer
    top, indices = torch.topk(coefficient, k, dim=-1)
    # arccos has an infinite slope at 1: keep the weights' gradient finite when a point sits on a prototype.
    distances = 2.0 * torch.arccos(top.clamp(max=1.0 - ROUTE_EPS))
    weights = torch.softmax(-distances / weight_temperature, dim=-1)
    return indices, weights, distances


__all__ = ["basin_coordinates", "bhattacharyya", "fisher_rao", "fixed_projection", "pairwise_fisher_rao",
           "prototypes_from_roots", "route"]
