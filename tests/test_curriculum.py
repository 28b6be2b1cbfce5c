"""Curriculum plans: shares, boundaries, determinism, purity (exact resume) and validation. No model."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
from pydantic import TypeAdapter, ValidationError

from slmlab.train.curriculum import (
    CurriculumConfig,
    CurriculumPhase,
    CurriculumPlan,
    _Allocation,
    validate_against,
)

CURRICULUM = TypeAdapter(CurriculumConfig)


def _data(sizes: dict[str, int]):
    units, cats = [], []
    for cat, n in sizes.items():
        for _ in range(n):
            units.append([SimpleNamespace(index=len(units))])
            cats.append(cat)
    return units, cats


def _phases(*specs):
    return CURRICULUM.validate_python([{"name": n, "span": s, "mix": m} for n, s, m in specs])


SAFE_THEN_EXPAND = _phases(("safe", 0.3, {"pure": 1.0}), ("expand", 0.7, {"pure": 0.5, "hybrid": 0.5}))


def _plan(phases=SAFE_THEN_EXPAND, sizes=None, total=20, bs=4, accum=2, world=1, seed=0):
    units, cats = _data(sizes or {"pure": 37, "hybrid": 23})
    return CurriculumPlan(units, cats, phases, total, bs, accum, world, seed), cats


def _ids(micro):
    return [u[0].index for mb in micro for u in mb]


def test_shape_matches_data_plan():
    plan, _ = _plan(bs=3, accum=2, world=2)
    assert plan.per_step == 12
    assert plan.steps_per_epoch == 5  # floor(60 / 12) with several processes, as DataPlan
    micro = plan.step_micro_batches(7)
    assert len(micro) == 4 and all(len(mb) == 3 for mb in micro)
    assert all(isinstance(u, list) and len(u) == 1 for mb in micro for u in mb)


def test_phase_boundaries_and_shares():
    plan, cats = _plan()
    assert plan.starts == [0, 6]
    assert [plan.phase_at(p)[0] for p in (0, 5, 6, 19, 20, 500)] == [0, 0, 1, 1, 1, 1]
    per_phase = [Counter(), Counter()]
    for p in range(20):
        per_phase[plan.phase_at(p)[0]].update(cats[i] for i in _ids(plan.step_micro_batches(p)))
    assert per_phase[0] == {"pure": 6 * 8}
    assert per_phase[1] == {"pure": 14 * 4, "hybrid": 14 * 4}


def test_fraction_boundaries_tile_the_run():
    phases = _phases(("a", 1 / 3, {"x": 1}), ("b", 1 / 3, {"x": 1}), ("c", 1 / 3, {"x": 1}))
    plan, _ = _plan(phases, sizes={"x": 10}, total=10)
    assert plan.starts == [0, 3, 7]


def test_step_count_spans():
    phases = _phases(("warm", 4, {"pure": 1}), ("rest", 10, {"hybrid": 1}))
    plan, cats = _plan(phases, total=30)
    assert plan.starts == [0, 4]
    assert {cats[i] for i in _ids(plan.step_micro_batches(3))} == {"pure"}
    assert {cats[i] for i in _ids(plan.step_micro_batches(25))} == {"hybrid"}  # the last phase runs on
    with pytest.raises(ValueError, match="rest get no steps"):
        _plan(phases, total=4)


def test_running_allocation_is_within_one_unit():
    # 0.3/0.35/0.2/0.15 over 8-unit steps: a per-step rounding would be biased; the running one is not.
    weights = {"a": 0.3, "b": 0.35, "c": 0.2, "d": 0.15}
    alloc = _Allocation(weights)
    prev = dict.fromkeys(weights, 0)
    for slots in range(0, 400, 8):
        got = alloc.counts(slots)
        assert sum(got.values()) == slots
        assert all(abs(got[c] - w * slots) < 1 for c, w in weights.items())
        assert all(got[c] >= prev[c] for c in weights)
        prev = got
    assert _Allocation({"a": 1, "b": 2}).counts(3000) == {"a": 1000, "b": 2000}
    # Five categories where "largest deficit first" would fall more than a unit behind.
    parts = dict(zip("abcde", (14, 3, 36, 1, 45)))
    alloc = _Allocation(parts)
    for slots in range(1, 2 * 99 + 1):
        got = alloc.counts(slots)
        assert all(abs(got[c] - n * slots / 99) < 1 for c, n in parts.items())


def test_deterministic_per_seed():
    a, _ = _plan(seed=1)
    b, _ = _plan(seed=1)
    c, _ = _plan(seed=2)
    seq = [_ids(a.step_micro_batches(p)) for p in range(20)]
    assert seq == [_ids(b.step_micro_batches(p)) for p in range(20)]
    assert seq != [_ids(c.step_micro_batches(p)) for p in range(20)]


def test_pure_function_of_position():
    warm, _ = _plan(seed=3)
    in_order = [_ids(warm.step_micro_batches(p)) for p in range(40)]  # past the run's end, too
    for p in (0, 5, 6, 13, 19, 33):
        cold, _ = _plan(seed=3)
        assert _ids(cold.step_micro_batches(p)) == in_order[p]
    assert _ids(warm.step_micro_batches(2)) == in_order[2]  # going back is fine too


def test_no_repeats_before_a_pool_is_exhausted():
    plan, cats = _plan(sizes={"pure": 37, "hybrid": 23}, total=40)
    seen = {c: Counter(dict.fromkeys((i for i, x in enumerate(cats) if x == c), 0)) for c in ("pure", "hybrid")}
    for p in range(40):
        for i in _ids(plan.step_micro_batches(p)):
            seen[cats[i]][i] += 1
        # Cycles are permutations of the pool: after any step, no unit is ahead of another by two.
        for counts in seen.values():
            assert max(counts.values()) - min(counts.values()) <= 1
    assert min(seen["hybrid"].values()) >= 2  # the pools did cycle


def test_preference_units_stay_paired():
    units = [[SimpleNamespace(index=2 * k), SimpleNamespace(index=2 * k + 1)] for k in range(10)]
    phases = _phases(("only", 1.0, {"p": 1}))
    plan = CurriculumPlan(units, ["p"] * 10, phases, 5, 2, 1, 1, 0)
    for mb in plan.step_micro_batches(4):
        assert all(u[1].index == u[0].index + 1 for u in mb)


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([("a", 0.3, {"x": 1}), ("b", 0.5, {"x": 1})], "sum to 0.8, not 1"),
        ([("a", 0.3, {"x": 1}), ("b", 400, {"x": 1})], "mix styles.*a=0.3"),
        ([("a", 2.5, {"x": 1}), ("b", 400, {"x": 1})], "mix styles.*a=2.5"),
        ([("a", 0.5, {"x": 1}), ("a", 0.5, {"x": 1})], "unique; repeated: a"),
        ([("a", 1.0, {})], "at least one category"),
        ([("a", 1.0, {"x": 0.0})], "at least one category"),
        ([("a", 1.0, {"x": 1, "y": -0.5})], "≥ 0; got y=-0.5"),
        ([("a", 0, {"x": 1})], "greater than 0"),
        ([], "at least one phase"),
    ],
)
def test_config_validation(specs, message):
    with pytest.raises(ValidationError, match=message):
        _phases(*specs)


def test_extra_keys_are_rejected():
    with pytest.raises(ValidationError, match="weight"):
        CurriculumPhase.model_validate({"name": "a", "span": 1, "mix": {"x": 1}, "weight": 2})


def test_unknown_category_names_phase_and_known():
    with pytest.raises(ValueError) as err:
        validate_against(SAFE_THEN_EXPAND, {"pure", "hybird"})
    text = str(err.value)
    assert "phase 'expand'" in text and "'hybrid'" in text and "Did you mean 'hybird'" in text
    assert "Available: hybird, pure" in text


def test_weighted_category_without_units():
    validate_against(SAFE_THEN_EXPAND, {"pure": 5, "hybrid": 3})
    with pytest.raises(ValueError, match="'expand'.*'hybrid' has no training units"):
        validate_against(SAFE_THEN_EXPAND, {"pure": 5, "hybrid": 0})
    with pytest.raises(ValueError, match="'hybrid'"):
        _plan(sizes={"pure": 10})  # the plan checks its own data too
