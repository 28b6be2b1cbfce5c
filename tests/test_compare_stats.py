"""slmlab.compare.stats: calibration by simulation, hand-computed examples, edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats

from slmlab.compare.stats import (
    LABELS,
    Difference,
    anova_one_way,
    anova_two_way,
    bootstrap_mean_ci,
    holm,
    holm_adjusted,
    interquartile_mean,
    main_effects,
    paired_difference,
    pareto_front,
    summarize,
    verdict,
    verdicts,
)

DRAWS = 1000
SEEDS = 5


def _draw_pair(rng: np.random.Generator, effect: float) -> tuple[dict, dict]:
    """(cell, baseline) over 5 seeds; independent N(0, 1) noise per run; cell mean = effect."""
    base = rng.normal(0.0, 1.0, SEEDS)
    cell = rng.normal(effect, 1.0, SEEDS)
    return dict(enumerate(cell)), dict(enumerate(base))


def _label_rate(effect: float, label: str, higher_is_better: bool, seed: int) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(DRAWS):
        cell, base = _draw_pair(rng, effect)
        d = paired_difference(cell, base, n_boot=0)
        v = verdict(d, minimum_effect=1.0, higher_is_better=higher_is_better)
        hits += v.label == label
    return hits / DRAWS


# --------------------------------------------------------------------------- calibration


def test_identical_cells_are_within_noise() -> None:
    rate = _label_rate(0.0, "within noise", True, seed=1)
    print(f"within-noise rate (identical cells): {rate:.3f}")
    assert rate >= 0.90


@pytest.mark.parametrize(("higher_is_better", "label"), [(True, "better"), (False, "worse")])
def test_three_sigma_effect_is_detected(higher_is_better: bool, label: str) -> None:
    rate = _label_rate(3.0, label, higher_is_better, seed=2)
    print(f"detection rate (3 sigma, {label}): {rate:.3f}")
    assert rate >= 0.90


def test_three_sigma_effect_never_gets_the_opposite_label() -> None:
    assert _label_rate(3.0, "worse", True, seed=2) == 0.0


def test_summarize_t_interval_coverage() -> None:
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(DRAWS):
        s = summarize(list(rng.normal(10.0, 2.0, SEEDS)), n_boot=0)
        covered += s.ci[0] <= 10.0 <= s.ci[1]
    rate = covered / DRAWS
    print(f"summarize t-interval coverage: {rate:.3f}")
    assert 0.92 <= rate <= 0.98


def test_paired_difference_ci_coverage() -> None:
    rng = np.random.default_rng(4)
    covered = 0
    for _ in range(DRAWS):
        seed_effect = rng.normal(0.0, 5.0, SEEDS)  # shared by both cells: pairing removes it
        base = seed_effect + rng.normal(0.0, 1.0, SEEDS)
        cell = seed_effect + rng.normal(0.7, 1.0, SEEDS)
        d = paired_difference(dict(enumerate(cell)), dict(enumerate(base)), n_boot=0)
        covered += d.ci[0] <= 0.7 <= d.ci[1]
    rate = covered / DRAWS
    print(f"paired-difference t-interval coverage: {rate:.3f}")
    assert 0.92 <= rate <= 0.98


# --------------------------------------------------------------------------- single runs, edges


def test_single_run_gets_no_verdict_and_no_ci() -> None:
    s = summarize([3.0])
    assert (s.n, s.mean, s.std, s.ci, s.bootstrap_ci, s.iqm) == (1, 3.0, None, None, None, None)
    for effect in (-100.0, 0.0, 100.0):
        d = paired_difference({0: effect}, {0: 0.0})
        assert d.n == 1 and d.ci is None and d.p_value is None
        for hib in (True, False):
            v = verdict(d, minimum_effect=1.0, higher_is_better=hib)
            assert v.label == "single run: no verdict"
            assert not v.significant


def test_no_pairs_at_all() -> None:
    d = paired_difference({0: 1.0}, {1: 2.0})
    assert (d.n, d.n_unpaired, d.mean) == (0, 2, None)
    assert verdict(d, minimum_effect=0.0, higher_is_better=True).label == LABELS[3]


def test_pairing_by_seed_counts_unpaired_and_missing() -> None:
    cell = {1: 2.0, 2: 3.0, 3: float("nan"), 4: 9.0}
    base = {1: 1.0, 2: 1.0, 3: 1.0, 5: 0.0}
    d = paired_difference(cell, base)
    assert d.seeds == (1, 2)
    assert (d.n, d.n_unpaired, d.n_missing) == (2, 2, 1)
    assert d.mean == pytest.approx(1.5)
    assert d.p_cell_higher == 1.0


def test_paired_t_test_matches_scipy() -> None:
    cell = {0: 1.3, 1: 2.1, 2: 0.4, 3: 1.9, 4: 1.1, 5: 0.2}
    base = {0: 1.0, 1: 1.5, 2: 0.9, 3: 1.0, 4: 1.1, 5: 0.3}
    d = paired_difference(cell, base)
    ref = scipy.stats.ttest_rel(list(cell.values()), list(base.values()))
    assert d.p_value == pytest.approx(ref.pvalue)
    assert d.p_cell_higher == pytest.approx((3 + 0.5) / 6)  # one tie (seed 4)
    assert d.p_improvement(False) == pytest.approx(1 - (3 + 0.5) / 6)


def test_identical_nonzero_differences_do_not_divide_by_zero() -> None:
    d = paired_difference({s: 1.1 for s in range(3)}, {s: 0.1 for s in range(3)})
    assert d.std == 0.0 and d.p_value == 0.0 and d.ci == (d.mean, d.mean)
    assert verdict(d, minimum_effect=0.5, higher_is_better=True).label == "better"
    same = paired_difference({s: 2.0 for s in range(3)}, {s: 2.0 for s in range(3)})
    assert same.p_value == 1.0
    assert verdict(same, minimum_effect=0.5, higher_is_better=True).label == "within noise"


def _diff(values: list[float]) -> Difference:
    return paired_difference(dict(enumerate(values)), dict.fromkeys(range(len(values)), 0.0))


def test_significant_but_below_minimum_effect_is_within_noise() -> None:
    d = _diff([0.30, 0.31, 0.29, 0.30, 0.32])
    v = verdict(d, minimum_effect=1.0, higher_is_better=True)
    assert v.label == "within noise" and v.significant
    assert "too small to matter" in v.reason


def test_not_significant_reasons_distinguish_equivalent_and_inconclusive() -> None:
    tight = verdict(_diff([0.01, -0.02, 0.0, 0.02, -0.01]), minimum_effect=1.0,
                    higher_is_better=True)
    wide = verdict(_diff([3.0, -2.5, 1.0, -1.0, 0.5]), minimum_effect=1.0, higher_is_better=True)
    assert tight.label == wide.label == "within noise"
    assert "equivalent" in tight.reason and "inconclusive" in wide.reason


def test_verdict_is_json_ready() -> None:
    d = _diff([1.0, 2.0, 1.5, 1.2, 1.8])
    v = verdict(d, minimum_effect=0.5, higher_is_better=False)
    assert v.label == "worse" and v.improvement == pytest.approx(-1.5)
    assert v.ci[1] < 0
    json.dumps(v.to_dict())
    json.dumps(d.to_dict())
    json.dumps(summarize([1.0, 2.0, float("nan")]).to_dict())


def test_negative_minimum_effect_is_refused() -> None:
    with pytest.raises(ValueError):
        verdict(_diff([1.0, 2.0]), minimum_effect=-1.0, higher_is_better=True)


# --------------------------------------------------------------------------- Holm


def test_holm_hand_example() -> None:
    # sorted: 0.01*4 = 0.04, 0.02*3 = 0.06, 0.03*2 = 0.06 (monotone), 0.04*1 = 0.04 -> 0.06
    p = [0.04, 0.01, 0.03, 0.02]
    assert holm_adjusted(p) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm(p, alpha=0.05) == [False, True, False, False]
    assert holm(p, alpha=0.06) == [True, True, True, True]
    assert holm([0.5, 0.001], alpha=0.05) == [False, True]
    assert holm([]) == []


def test_verdicts_apply_holm_across_comparisons() -> None:
    strong = _diff([2.0, 2.1, 1.9, 2.05, 1.95])
    weak = _diff([2.0, 0.5, 3.0, 1.0, 2.5])  # p ~ 0.01: significant alone, not after Holm
    assert 0.002 < weak.p_value < 0.025
    noise = [_diff([0.1 * (-1) ** i + 0.01 * j for i in range(5)]) for j in range(4)]
    diffs = {"strong": strong, "weak": weak, **{f"n{j}": d for j, d in enumerate(noise)},
             "single": _diff([5.0])}
    alone = verdicts(diffs, minimum_effect=1.0, higher_is_better=True, correction="none")
    held = verdicts(diffs, minimum_effect=1.0, higher_is_better=True)
    assert alone["weak"].label == "better"
    assert held["weak"].label == "within noise" and "Holm" in held["weak"].reason
    assert held["weak"].ci == alone["weak"].ci  # the shown CI stays unadjusted
    assert held["strong"].label == "better"
    assert held["single"].label == "single run: no verdict"
    tested = [k for k in diffs if k != "single"]
    adjusted = holm_adjusted([diffs[k].p_value for k in tested])
    assert held["weak"].p_adjusted == pytest.approx(adjusted[tested.index("weak")])
    assert held["weak"].p_adjusted >= 0.05 > held["weak"].p_value


# --------------------------------------------------------------------------- summary details


def test_iqm_hand_examples() -> None:
    assert interquartile_mean([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)  # mean(3..6)
    assert interquartile_mean([6, 1, 5, 2, 4, 3]) == pytest.approx(3.5)  # k=1: mean(2..5)
    assert interquartile_mean([10, 1, 2, 3, 4]) == pytest.approx(3.0)  # k=1: mean(2,3,4)
    rng = np.random.default_rng(5)
    for n in range(4, 13):
        x = rng.normal(size=n)
        assert interquartile_mean(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25))
    assert summarize([1.0, 2.0, 3.0]).iqm is None
    assert summarize([1.0, 2.0, 3.0, 100.0]).iqm == pytest.approx(2.5)


def test_summarize_basic_numbers() -> None:
    s = summarize([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert (s.n, s.mean, s.median, s.min, s.max) == (8, 5.0, 4.5, 2.0, 9.0)
    assert s.std == pytest.approx(np.std([2, 4, 4, 4, 5, 5, 7, 9], ddof=1))
    half = scipy.stats.t.ppf(0.975, 7) * s.std / math.sqrt(8)
    assert s.ci == pytest.approx((5.0 - half, 5.0 + half))


def test_bootstrap_is_deterministic_for_a_seed_and_needs_five_values() -> None:
    x = [1.0, 2.5, 0.3, 4.0, 2.2, 3.1]
    a = summarize(x, seed=7, n_boot=500)
    b = summarize(x, seed=7, n_boot=500)
    c = summarize(x, seed=8, n_boot=500)
    assert a.bootstrap_ci == b.bootstrap_ci and a.bootstrap_ci != c.bootstrap_ci
    assert min(x) <= a.bootstrap_ci[0] < np.mean(x) < a.bootstrap_ci[1] <= max(x)
    assert summarize(x[:4]).bootstrap_ci is None
    assert summarize(x, n_boot=0).bootstrap_ci is None
    assert bootstrap_mean_ci(x, seed=7, n_boot=500) == a.bootstrap_ci
    d1 = paired_difference(dict(enumerate(x)), dict.fromkeys(range(6), 1.0), seed=3, n_boot=300)
    d2 = paired_difference(dict(enumerate(x)), dict.fromkeys(range(6), 1.0), seed=3, n_boot=300)
    assert d1.bootstrap_ci == d2.bootstrap_ci is not None


def test_nan_inf_and_none_are_missing() -> None:
    s = summarize([1.0, float("nan"), 3.0, None, float("inf")])
    assert (s.n, s.n_missing, s.mean) == (2, 3, 2.0)
    empty = summarize([float("nan")])
    assert (empty.n, empty.n_missing, empty.mean, empty.ci) == (0, 1, None, None)


def test_bad_confidence_is_refused() -> None:
    with pytest.raises(ValueError):
        summarize([1.0, 2.0], confidence=95)


# --------------------------------------------------------------------------- ANOVA


def test_one_way_anova_matches_scipy() -> None:
    groups = {"a": [6.0, 8.0, 4.0, 5.0, 3.0, 4.0], "b": [8.0, 12.0, 9.0, 11.0, 6.0, 8.0],
              "c": [13.0, 9.0, 11.0, 8.0, 7.0, 12.0, float("nan")]}
    res = anova_one_way(groups)
    ref = scipy.stats.f_oneway(*[[v for v in g if not math.isnan(v)] for g in groups.values()])
    between = res.row("between")
    assert between.f == pytest.approx(ref.statistic) and between.p == pytest.approx(ref.pvalue)
    # by hand: group means 5, 9, 10; grand mean 8; SS_between = 6*(9 + 1 + 4) = 84, df 2
    assert between.ss == pytest.approx(84.0) and between.df == 2
    assert res.row("error").ss == pytest.approx(68.0) and res.row("error").df == 15
    assert res.ss_total == pytest.approx(152.0)
    assert anova_one_way({"a": [1.0, 2.0]}).rows is None
    assert anova_one_way({"a": [1.0], "b": [2.0]}).rows is None


def _pure_a_grid() -> dict[tuple[str, str], list[float]]:
    """A has a big effect (+3 at level a2), B and AxB none; seed noise is fixed, sigma ~0.5."""
    rng = np.random.default_rng(11)
    return {(a, b): list((3.0 if a == "a2" else 0.0) + rng.normal(0.0, 0.5, 4))
            for a in ("a1", "a2") for b in ("b1", "b2", "b3")}


def test_two_way_anova_pure_main_effect_and_decomposition() -> None:
    grid = _pure_a_grid()
    res = anova_two_way(grid)
    rows = {r.source: r for r in res.rows}
    assert [r.source for r in res.rows] == ["A", "B", "AxB", "error"]
    assert (rows["A"].df, rows["B"].df, rows["AxB"].df, rows["error"].df) == (1, 2, 2, 18)
    assert rows["A"].p < 1e-6
    assert rows["B"].p > 0.05 and rows["AxB"].p > 0.05
    total = sum(r.ss for r in res.rows)
    assert total == pytest.approx(res.ss_total) and res.df_total == 23
    y = np.concatenate(list(grid.values()))
    assert res.ss_total == pytest.approx(float(np.sum((y - y.mean()) ** 2)))
    json.dumps(res.to_dict())


def test_two_way_anova_hand_example() -> None:
    # 2x2, n=2. cell means: (a1,b1)=2 (a1,b2)=4 (a2,b1)=6 (a2,b2)=12; grand mean 6
    grid = {("a1", "b1"): [1.0, 3.0], ("a1", "b2"): [4.0, 4.0],
            ("a2", "b1"): [5.0, 7.0], ("a2", "b2"): [11.0, 13.0]}
    rows = {r.source: r for r in anova_two_way(grid).rows}
    # A means 3, 9: SS_A = 2*2*(9+9) = 72; B means 4, 8: SS_B = 2*2*(4+4) = 32
    # cells: 2*(16+4+0+36) = 112 -> SS_AB = 8; error: 2+0+2+2 = 6 on 4 df
    assert rows["A"].ss == pytest.approx(72.0) and rows["B"].ss == pytest.approx(32.0)
    assert rows["AxB"].ss == pytest.approx(8.0) and rows["error"].ss == pytest.approx(6.0)
    assert rows["A"].f == pytest.approx(72.0 / 1.5)
    assert rows["A"].p == pytest.approx(scipy.stats.f.sf(48.0, 1, 4))


def test_two_way_anova_refuses_unbalanced_or_unreplicated() -> None:
    grid = _pure_a_grid()
    grid[("a1", "b1")] = grid[("a1", "b1")][:3]
    assert anova_two_way(grid).rows is None and "unbalanced" in anova_two_way(grid).reason
    grid = _pure_a_grid()
    grid[("a1", "b1")] = [*grid[("a1", "b1")][:3], float("nan")]
    assert "unbalanced" in anova_two_way(grid).reason
    grid = _pure_a_grid()
    del grid[("a2", "b3")]
    assert "incomplete" in anova_two_way(grid).reason
    single = {k: v[:1] for k, v in _pure_a_grid().items()}
    assert "fewer than 2" in anova_two_way(single).reason
    one_level = {("a1", b): [1.0, 2.0] for b in ("b1", "b2")}
    assert anova_two_way(one_level).rows is None


def test_main_effects_marginal_means() -> None:
    grid = _pure_a_grid()
    me = main_effects(grid)
    assert [m.level for m in me.levels_a] == ["a1", "a2"]
    assert [m.n for m in me.levels_b] == [8, 8, 8]
    a1, a2 = me.levels_a
    assert a1.mean == pytest.approx(np.mean([grid[("a1", b)] for b in ("b1", "b2", "b3")]))
    assert a1.ci[1] < a2.ci[0]  # the A effect shows in the marginal CIs
    err = me.anova.row("error")
    half = scipy.stats.t.ppf(0.975, err.df) * math.sqrt(err.ms / 12)
    assert a1.ci == pytest.approx((a1.mean - half, a1.mean + half))
    json.dumps(me.to_dict())
    unbalanced = dict(grid)
    unbalanced[("a1", "b1")] = unbalanced[("a1", "b1")][:2]
    me2 = main_effects(unbalanced)
    assert me2.anova.rows is None and all(m.ci is None for m in me2.levels_a)


# --------------------------------------------------------------------------- Pareto


def test_pareto_front_small_example() -> None:
    points = [("a", 1.0, 0.50), ("b", 2.0, 0.70), ("c", 2.5, 0.60), ("d", 3.0, 0.90),
              ("e", 3.0, 0.80), ("f", 0.5, 0.40), ("g", 4.0, float("nan")), ("h", 2.0, 0.70)]
    assert pareto_front(points) == ["f", "a", "b", "h", "d"]
    # lower-is-better value (e.g. loss): f is cheapest and lowest
    assert pareto_front(points, higher_is_better=False) == ["f"]
    assert pareto_front([]) == []


def test_wilson_interval_known_values_and_edges():
    from slmlab.compare.stats import wilson_interval

    lo, hi = wilson_interval(28, 60)  # the demo's 28/60: 35%–59%
    assert (round(lo, 4), round(hi, 4)) == (0.3463, 0.5911)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 20)[0] == 0.0 and 0.15 < wilson_interval(0, 20)[1] < 0.17  # rule of three-ish
    assert wilson_interval(20, 20)[1] == 1.0
