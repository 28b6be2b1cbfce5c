"""The E8 root system: 240 roots, their norms and inner products, and the simple roots' Cartan matrix."""

from __future__ import annotations

import pytest
import torch

from slmlab.errors import SlmlabError
from slmlab.kernel.e8 import (
    DYNKIN_EDGES,
    cartan_matrix,
    prototype_roots,
    roots,
    simple_roots,
)


def as_set(t: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(row.tolist()) for row in t}


def test_240_distinct_roots_of_squared_norm_2():
    r = roots()
    assert r.shape == (240, 8) and r.dtype == torch.float64
    assert len(as_set(r)) == 240
    assert torch.equal((r * r).sum(1), torch.full((240,), 2.0, dtype=torch.float64))
    # 112 integer roots ±e_i ± e_j and 128 half-integer roots with an even number of minus signs
    integer = r[(r == r.round()).all(1)]
    half = r[(r.abs() == 0.5).all(1)]
    assert len(integer) == 112 and len(half) == 128
    assert ((integer != 0).sum(1) == 2).all()
    assert ((half < 0).sum(1) % 2 == 0).all()


def test_inner_products_are_in_minus_2_to_2_and_minus_2_only_for_the_negative():
    r = roots()
    gram = r @ r.T
    assert set(gram.unique().tolist()) == {-2.0, -1.0, 0.0, 1.0, 2.0}
    assert torch.equal(torch.diagonal(gram), torch.full((240,), 2.0, dtype=torch.float64))
    off = gram - torch.diag(torch.diagonal(gram))
    assert off.max() == 1.0  # distinct roots: never 2
    # exactly one partner at -2 per root, and it is the negative
    assert ((gram == -2).sum(1) == 1).all()
    partner = (gram == -2).float().argmax(1)
    assert torch.equal(r[partner], -r)
    # each root has 56 neighbours at inner product 1 (the E8 root graph is 56-regular)
    assert ((gram == 1).sum(1) == 56).all()


def test_closed_under_negation_and_under_every_simple_reflection():
    r = roots()
    assert as_set(-r) == as_set(r)
    for a in simple_roots():
        reflected = r - (r @ a).unsqueeze(1) * a.unsqueeze(0)  # s_a(x) = x - <x, a> a  (|a|^2 = 2)
        assert as_set(reflected) == as_set(r)


def test_simple_roots_span_and_their_gram_matrix_is_the_e8_cartan_matrix():
    s = simple_roots()
    assert s.shape == (8, 8)
    assert torch.linalg.matrix_rank(s) == 8
    assert as_set(s) <= as_set(roots())
    assert torch.equal(s @ s.T, cartan_matrix())
    # The Cartan matrix written out (Bourbaki numbering: node 2 joins node 4)
    expected = torch.tensor([
        [2, 0, -1, 0, 0, 0, 0, 0],
        [0, 2, 0, -1, 0, 0, 0, 0],
        [-1, 0, 2, -1, 0, 0, 0, 0],
        [0, -1, -1, 2, -1, 0, 0, 0],
        [0, 0, 0, -1, 2, -1, 0, 0],
        [0, 0, 0, 0, -1, 2, -1, 0],
        [0, 0, 0, 0, 0, -1, 2, -1],
        [0, 0, 0, 0, 0, 0, -1, 2]], dtype=torch.float64)
    assert torch.equal(cartan_matrix(), expected)
    assert torch.linalg.det(cartan_matrix()).item() == pytest.approx(1.0)  # E8 is unimodular
    # The Dynkin diagram: a tree with 7 edges and one branch node whose arms have 1, 2 and 4 nodes
    degree = {i: sum(i in e for e in DYNKIN_EDGES) for i in range(1, 9)}
    assert len(DYNKIN_EDGES) == 7 and sorted(degree.values()) == [1, 1, 1, 2, 2, 2, 2, 3]


def test_every_root_is_an_integer_combination_with_one_sign():
    r, s = roots(), simple_roots()
    coeffs = torch.linalg.solve(s.T, r.T).T  # r = coeffs @ s
    assert torch.allclose(coeffs, coeffs.round(), atol=1e-9)
    coeffs = coeffs.round()
    positive = (coeffs >= 0).all(1)
    negative = (coeffs <= 0).all(1)
    assert (positive | negative).all() and int(positive.sum()) == 120
    highest = coeffs[coeffs.sum(1).argmax()]
    assert highest.tolist() == [2, 3, 4, 6, 5, 4, 3, 2]


def test_prototype_roots():
    assert torch.equal(prototype_roots("simple", 3), simple_roots()[:3])
    assert torch.equal(prototype_roots("roots", 240), roots())
    with pytest.raises(SlmlabError, match="at most|has 8 positions"):
        prototype_roots("simple", 9)
    with pytest.raises(SlmlabError, match="'simple' or 'roots'"):
        prototype_roots("lattice", 2)
