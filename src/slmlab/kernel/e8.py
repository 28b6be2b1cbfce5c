"""The E8 root system: its 240 roots and a basis of 8 simple roots, in the "even" coordinates.

    roots()        (240, 8): the 112 vectors ±eᵢ ± eⱼ (i < j), then the 128 vectors ½(±1, …, ±1)
                   with an even number of minus signs; each group in lexicographic order
    simple_roots() (8, 8): Bourbaki's basis (Humphreys §12.1, Bourbaki Plate VII)
                   α₁ = ½(1, −1, −1, −1, −1, −1, −1, 1),  α₂ = e₁ + e₂,
                   α₃ = e₂ − e₁, α₄ = e₃ − e₂, α₅ = e₄ − e₃, α₆ = e₅ − e₄, α₇ = e₆ − e₅, α₈ = e₇ − e₆
    cartan_matrix() (8, 8): the E8 Cartan matrix in the same numbering (2 on the diagonal, −1 on the
                   Dynkin diagram's edges 1–3, 3–4, 4–5, 5–6, 6–7, 7–8 and 2–4)

Every root has squared norm 2; two distinct roots have inner product −2 (a root and its negative),
−1, 0 or 1; every root is an integer combination of the simple roots with coefficients all ≥ 0 or
all ≤ 0 (120 positive roots; the highest is 2α₁ + 3α₂ + 4α₃ + 6α₄ + 5α₅ + 4α₆ + 3α₇ + 2α₈). The
tests check all of these. Values are exact in float64 (halves and integers).
"""

from __future__ import annotations

import itertools

import torch

from slmlab.errors import SlmlabError

RANK = 8
N_ROOTS = 240

# Bourbaki numbering: node 2 hangs off node 4; the chain is 1-3-4-5-6-7-8.
DYNKIN_EDGES = ((1, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 8), (2, 4))


def roots(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 240 roots of E8 as a (240, 8) tensor (order: see the module docstring)."""
    integer = []
    for i, j in itertools.combinations(range(RANK), 2):
        for si, sj in itertools.product((-1.0, 1.0), repeat=2):
            v = [0.0] * RANK
            v[i], v[j] = si, sj
            integer.append(v)
    half = [[0.5 * s for s in signs] for signs in itertools.product((-1.0, 1.0), repeat=RANK)
            if sum(s < 0 for s in signs) % 2 == 0]
    return torch.tensor(sorted(integer) + sorted(half), dtype=dtype)


def simple_roots(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Bourbaki's 8 simple roots α₁ … α₈ as the rows of an (8, 8) tensor."""
    rows = [[0.5, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5, 0.5]]
    rows.append([1.0, 1.0] + [0.0] * 6)  # α₂ = e₁ + e₂
    for i in range(6):  # α₃ … α₈ = e_{i+2} − e_{i+1}
        v = [0.0] * RANK
        v[i], v[i + 1] = -1.0, 1.0
        rows.append(v)
    return torch.tensor(rows, dtype=dtype)


def cartan_matrix(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The E8 Cartan matrix in Bourbaki numbering (symmetric: E8 is simply laced)."""
    a = 2 * torch.eye(RANK, dtype=dtype)
    for i, j in DYNKIN_EDGES:
        a[i - 1, j - 1] = a[j - 1, i - 1] = -1
    return a


def prototype_roots(kind: str, count: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``count`` root positions: the first ``count`` simple roots (``kind="simple"``, at most 8) or
    the first ``count`` of :func:`roots` (``kind="roots"``, at most 240)."""
    table = {"simple": simple_roots, "roots": roots}
    if kind not in table:
        raise SlmlabError(f"prototypes must be 'simple' or 'roots', got {kind!r}")
    source = table[kind](dtype)
    if not 1 <= count <= len(source):
        raise SlmlabError(f"prototypes={kind!r} has {len(source)} positions; {count} experts asked")
    return source[:count]


__all__ = ["DYNKIN_EDGES", "N_ROOTS", "RANK", "cartan_matrix", "prototype_roots", "roots", "simple_roots"]
