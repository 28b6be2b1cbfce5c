"""Honest statistics for experiment series: summaries, paired differences, verdicts, ANOVA.

A *cell* is one configuration; it runs once per *seed*; each (cell, seed) gives one scalar
value of a metric. One cell is the declared *baseline*. The primary metric declares
``minimum_effect`` (the smallest difference that matters, in the metric's units, >= 0) and
``higher_is_better``. All functions here are pure; numpy does the arithmetic and
``scipy.stats`` (imported lazily, only where a t or F quantile is needed) the distributions.

Missing values
    ``NaN``, ``±inf`` and ``None`` are *missing*: excluded from every statistic and counted
    (``n_missing``). A diverged run (``inf`` loss) therefore shows up as missing, not as a number.

Summary (:func:`summarize`), on the ``n`` present values ``x_1..x_n``
    * ``mean`` = sum(x)/n; ``median``, ``min``, ``max`` as usual (None when n = 0).
    * ``std``  = sample standard deviation, ddof = 1 (None when n < 2).
    * ``ci``   = Student-t interval of the mean: mean ± t_{(1+c)/2, n-1} · std/√n with
      c = ``confidence`` (None when n < 2).
    * ``bootstrap_ci`` = percentile bootstrap of the mean (Efron & Tibshirani 1993, ch. 13):
      ``n_boot`` resamples of size n drawn with replacement by ``numpy.random.default_rng(seed)``,
      the (1-c)/2 and (1+c)/2 quantiles (numpy's default linear interpolation) of their means.
      Only when n >= 5 and n_boot > 0 (None otherwise): below 5 runs a bootstrap is mostly
      an echo of the sample. Deterministic for a given ``seed``.
    * ``iqm`` = interquartile mean, only when n >= 4 (None otherwise). Exactly
      ``scipy.stats.trim_mean(x, 0.25)``, which is also rliable's ``aggregate_iqm``: sort x, drop
      k = floor(n/4) values from each end, average the remaining n - 2k. When n is not a multiple
      of 4 the kept middle is *more* than 50% (n = 5: the middle 3; n = 6: the middle 4).

Paired difference (:func:`paired_difference`)
    Seeds present (and not missing) in both the cell and the baseline are *paired*; the others
    are counted (``n_unpaired``: seeds in only one of the two; ``n_missing``: seeds in both with a
    missing value on either side). Per paired seed d_s = cell_s - baseline_s. On the d_s:
    ``mean``, ``std``, ``ci`` (t-interval, n >= 2), ``bootstrap_ci`` (as above, n >= 5), and
    ``p_value`` of the two-sided paired t-test, t = mean / (std/√n), df = n - 1 (n >= 2). When
    all d_s are equal (std = 0) there is no division: p = 0 if mean != 0 else p = 1.
    ``p_cell_higher`` = (#{d_s > 0} + ½·#{d_s = 0}) / n: the chance that, on a seed, the cell's
    value exceeds the baseline's. :meth:`Difference.p_improvement` orients it by the metric's
    direction. This is the *paired, per-seed* version of rliable's probability of improvement
    (Agarwal et al. 2021 define P(X > Y) over all run pairs, a Mann-Whitney U / (n·m)); here
    the seed pairs the runs, so only same-seed pairs are compared.

Verdict (:func:`verdict`, :func:`verdicts`). The crux; exactly this rule:
    1. improvement  i_s = d_s if ``higher_is_better`` else -d_s   (positive = good).
    2. n paired < 2                           -> "single run: no verdict".
    3. *significant* <=> p < ``alpha`` where p is the paired t-test's p-value, Holm-adjusted
       across the comparisons shown when :func:`verdicts` uses ``correction="holm"``.
       Unadjusted, p < alpha is the same as "the two-sided (1 - alpha) t-interval of the mean
       improvement excludes 0".
    4. significant and mean(i) >= +minimum_effect -> "better".
    5. significant and mean(i) <= -minimum_effect -> "worse".
    6. anything else                          -> "within noise". The ``reason`` says which:
       not significant and the CI lies inside (-minimum_effect, +minimum_effect) (equivalent
       within the minimum effect); not significant and the CI reaches beyond it (inconclusive:
       more seeds would tell); significant but |mean| < minimum_effect (real but too small to
       matter); or significant only before the Holm correction.
    The label vocabulary is exactly {"better", "worse", "within noise",
    "single run: no verdict"}; nuance lives in ``reason``. The CI shown (``Difference.ci``, at
    the Difference's ``confidence``) is always the *unadjusted* one, for display; under Holm the
    significance comes from the adjusted p-value alone, so a shown CI may exclude 0 while the
    label says "within noise" -- the reason says so. Calibration (tests/test_compare_stats.py,
    1,000 draws, 5 seeds, independent N(0, σ²) noise per run, minimum_effect = σ): identical
    cells -> "within noise" in about 95-99% of draws; a true effect of 3σ -> "better" in about
    93% (the power of the df = 4 paired t-test).

Holm (:func:`holm`, :func:`holm_adjusted`; Holm 1979, Scand. J. Statist. 6:65-70)
    Sort the m p-values ascending p_(1) <= ... <= p_(m). Adjusted p_(k) =
    max_{j<=k} min(1, (m - j + 1) · p_(j)). Hypothesis k is rejected iff its adjusted p <= alpha,
    the same as the step-down rule "reject while p_(k) <= alpha/(m - k + 1)". Controls the
    family-wise error rate at alpha. In :func:`verdicts` the family is the comparisons that have
    a p-value (n paired >= 2); single-run comparisons get no verdict and are not counted.
    Note the boundary: :func:`verdict` needs p < alpha, :func:`holm` rejects at p <= alpha
    (Holm's definition); they differ only at p exactly equal to alpha.

One-way ANOVA (:func:`anova_one_way`; e.g. Montgomery, Design and Analysis of Experiments, ch. 3)
    Groups i = 1..k with n_i present values, N = Σ n_i, grand mean G.
    SS_between = Σ n_i (ȳ_i - G)², df = k - 1; SS_within = Σ_i Σ_j (y_ij - ȳ_i)², df = N - k;
    F = (SS_between/df_between) / (SS_within/df_within), p = P(F_{df_b, df_w} > F).
    Unbalanced groups are fine; needs k >= 2, every group non-empty, N > k.

Two-way ANOVA with interaction (:func:`anova_two_way`; Montgomery ch. 5)
    Factor A with a levels, B with b levels, every one of the a·b cells present with the same
    number n >= 2 of present replicates (seeds); a, b >= 2. Otherwise no table (``rows`` is None)
    and ``reason`` says why (unbalanced designs need a regression ANOVA and a choice of sums
    of squares type; this module does not guess). With G the grand mean:
    SS_A = b·n·Σ_a (ȳ_a.. - G)², df a-1;  SS_B = a·n·Σ_b (ȳ_.b. - G)², df b-1;
    SS_AB = n·Σ_ab (ȳ_ab. - G)² - SS_A - SS_B, df (a-1)(b-1);
    SS_error = Σ (y - ȳ_ab.)², df a·b·(n-1);  SS_total = Σ (y - G)² = SS_A+SS_B+SS_AB+SS_error.
    F_X = MS_X / MS_error, p_X = P(F_{df_X, df_error} > F_X). If MS_error = 0: F = inf and p = 0
    when MS_X > 0, F = 0 and p = 1 when MS_X = 0.
    :func:`main_effects` adds the marginal mean of every level, with the balanced-design CI
    ȳ_a.. ± t_{(1+c)/2, df_error} · √(MS_error / (b·n)) (and a·n for levels of B).

Pareto front (:func:`pareto_front`)
    Lower cost is always better; value is better higher (or lower if ``higher_is_better`` is
    False). A point is dominated if another point is at least as good in both and strictly
    better in one; the front is the non-dominated points (exact duplicates all stay), returned
    by increasing cost. Points with a missing cost or value are left out.

References: Agarwal, Schwarzer, Castro, Courville, Bellemare, "Deep Reinforcement Learning at the
Edge of the Statistical Precipice", NeurIPS 2021 (rliable: IQM, bootstrap CIs, probability of
improvement); Holm 1979; Efron & Tibshirani 1993; the modded-nanogpt record rules (state the
run-to-run noise, back a claimed improvement with a t/z-test over several seeds).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LABELS = ("better", "worse", "within noise", "single run: no verdict")
BOOTSTRAP_MIN_N = 5
IQM_MIN_N = 4


# --------------------------------------------------------------------------- helpers


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion k/n (``(0, 1)`` when n is 0): honest error bars for 20 questions."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _scipy_stats() -> Any:
    """``scipy.stats``, imported on first need (t and F distributions only)."""
    try:
        import scipy.stats as st
    except ImportError as exc:  # pragma: no cover - scipy ships with slmlab
        raise ImportError(
            "slmlab.compare.stats needs scipy (scipy.stats) for t and F quantiles and p-values: "
            "pip install scipy"
        ) from exc
    return st


def _t_quantile(q: float, df: int) -> float:
    return float(_scipy_stats().t.ppf(q, df))


def _t_two_sided_p(t: float, df: int) -> float:
    return float(2.0 * _scipy_stats().t.sf(abs(t), df))


def _f_sf(f: float, df1: int, df2: int) -> float:
    return float(_scipy_stats().f.sf(f, df1, df2))


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _as_float(v: Any) -> float:
    return math.nan if v is None else float(v)


def _present(values: Sequence[Any]) -> tuple[np.ndarray, int]:
    """(the finite values as a float array, how many were missing: NaN, ±inf or None)."""
    x = np.asarray([_as_float(v) for v in values], dtype=float)
    ok = np.isfinite(x)
    return x[ok], int((~ok).sum())


def _interval(lo: float, hi: float) -> tuple[float, float]:
    return (float(lo), float(hi))


def _std(x: np.ndarray) -> float:
    """Sample std (ddof=1); exactly 0 when all values are equal (no rounding residue)."""
    return 0.0 if np.ptp(x) == 0 else float(np.std(x, ddof=1))


def _t_interval(x: np.ndarray, confidence: float) -> tuple[float, float] | None:
    n = len(x)
    if n < 2:
        return None
    mean, half = float(np.mean(x)), 0.0
    std = _std(x)
    if std > 0:
        half = _t_quantile((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
    return _interval(mean - half, mean + half)


def bootstrap_mean_ci(
    x: Sequence[float], *, confidence: float = 0.95, seed: int = 0, n_boot: int = 2000
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean of ``x`` (no minimum n; see the module docstring)."""
    _check_confidence(confidence)
    arr = np.asarray(x, dtype=float)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(n_boot, len(arr)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return _interval(lo, hi)


def _maybe_bootstrap(
    x: np.ndarray, confidence: float, seed: int, n_boot: int
) -> tuple[float, float] | None:
    if len(x) < BOOTSTRAP_MIN_N or n_boot <= 0:
        return None
    return bootstrap_mean_ci(x, confidence=confidence, seed=seed, n_boot=n_boot)


def interquartile_mean(x: Sequence[float]) -> float:
    """IQM = ``scipy.stats.trim_mean(x, 0.25)``: drop floor(n/4) from each end, average the rest."""
    arr = np.sort(np.asarray(x, dtype=float))
    if len(arr) == 0:
        raise ValueError("interquartile_mean of no values")
    k = len(arr) // 4
    return float(np.mean(arr[k : len(arr) - k]))


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Summary:
    """Descriptive statistics of one cell's values over seeds (see the module docstring)."""

    n: int
    n_missing: int
    mean: float | None
    std: float | None
    ci: tuple[float, float] | None
    bootstrap_ci: tuple[float, float] | None
    iqm: float | None
    median: float | None
    min: float | None
    max: float | None
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    values: Sequence[float | None],
    *,
    confidence: float = 0.95,
    seed: int = 0,
    n_boot: int = 2000,
) -> Summary:
    """Summarize one cell's per-seed values; missing values are excluded and counted.

    ``n_boot=0`` skips the bootstrap (``bootstrap_ci`` is then None).
    """
    _check_confidence(confidence)
    x, n_missing = _present(values)
    n = len(x)
    if n == 0:
        return Summary(0, n_missing, None, None, None, None, None, None, None, None, confidence)
    return Summary(
        n=n,
        n_missing=n_missing,
        mean=float(np.mean(x)),
        std=_std(x) if n >= 2 else None,
        ci=_t_interval(x, confidence),
        bootstrap_ci=_maybe_bootstrap(x, confidence, seed, n_boot),
        iqm=interquartile_mean(x) if n >= IQM_MIN_N else None,
        median=float(np.median(x)),
        min=float(np.min(x)),
        max=float(np.max(x)),
        confidence=confidence,
    )


# --------------------------------------------------------------------------- paired difference


@dataclass(frozen=True)
class Difference:
    """cell - baseline, paired by seed (see the module docstring)."""

    n: int
    n_unpaired: int
    n_missing: int
    seeds: tuple[Hashable, ...]
    mean: float | None
    std: float | None
    ci: tuple[float, float] | None
    bootstrap_ci: tuple[float, float] | None
    p_value: float | None
    p_cell_higher: float | None
    confidence: float

    def p_improvement(self, higher_is_better: bool) -> float | None:
        """P(the cell beats the baseline on a seed), ties counting 1/2."""
        if self.p_cell_higher is None:
            return None
        return self.p_cell_higher if higher_is_better else 1.0 - self.p_cell_higher

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"] = [s if isinstance(s, (int, float, str)) else str(s) for s in self.seeds]
        return d


def _pair(
    cell: Mapping[Hashable, Any], baseline: Mapping[Hashable, Any]
) -> tuple[list[Hashable], np.ndarray, int, int]:
    """(paired seeds, their diffs, n_unpaired, n_missing)."""
    common = [s for s in cell if s in baseline]
    n_unpaired = len(cell) + len(baseline) - 2 * len(common)
    seeds, diffs = [], []
    for s in common:
        c, b = _as_float(cell[s]), _as_float(baseline[s])
        if math.isfinite(c) and math.isfinite(b):
            seeds.append(s)
            diffs.append(c - b)
    return seeds, np.asarray(diffs, dtype=float), n_unpaired, len(common) - len(seeds)


def _paired_t_p(d: np.ndarray) -> float:
    mean, std = float(np.mean(d)), _std(d)
    if std == 0:
        return 0.0 if mean != 0 else 1.0
    return _t_two_sided_p(mean / (std / math.sqrt(len(d))), len(d) - 1)


def paired_difference(
    cell: Mapping[Hashable, float | None],
    baseline: Mapping[Hashable, float | None],
    *,
    confidence: float = 0.95,
    seed: int = 0,
    n_boot: int = 2000,
) -> Difference:
    """Per-seed differences cell - baseline with t-CI, bootstrap CI, paired t-test, P(cell higher).

    ``n_boot=0`` skips the bootstrap (``bootstrap_ci`` is then None).
    """
    _check_confidence(confidence)
    seeds, d, n_unpaired, n_missing = _pair(cell, baseline)
    n = len(d)
    if n == 0:
        return Difference(0, n_unpaired, n_missing, (), None, None, None, None, None, None,
                          confidence)
    p_higher = (float(np.sum(d > 0)) + 0.5 * float(np.sum(d == 0))) / n
    return Difference(
        n=n,
        n_unpaired=n_unpaired,
        n_missing=n_missing,
        seeds=tuple(seeds),
        mean=float(np.mean(d)),
        std=_std(d) if n >= 2 else None,
        ci=_t_interval(d, confidence),
        bootstrap_ci=_maybe_bootstrap(d, confidence, seed, n_boot),
        p_value=_paired_t_p(d) if n >= 2 else None,
        p_cell_higher=p_higher,
        confidence=confidence,
    )


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    """One comparison's label (one of :data:`LABELS`) and why.

    ``improvement`` and ``ci`` are sign-adjusted (positive = good); ``ci`` is unadjusted.
    ``p_adjusted`` is the p-value the label was decided on (Holm-adjusted under
    :func:`verdicts`, else equal to ``p_value``).
    """

    label: str
    reason: str
    improvement: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    p_adjusted: float | None
    p_improvement: float | None
    significant: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _oriented(diff: Difference, higher_is_better: bool) -> tuple[float, tuple[float, float]]:
    """(mean improvement, CI of the improvement), positive = good."""
    assert diff.mean is not None and diff.ci is not None
    if higher_is_better:
        return diff.mean, diff.ci
    return -diff.mean, (-diff.ci[1], -diff.ci[0])


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _label_and_reason(
    imp: float, ci: tuple[float, float], p: float, p_adj: float, me: float, alpha: float
) -> tuple[str, str]:
    ci_s = f"improvement {_fmt(imp)}, CI [{_fmt(ci[0])}, {_fmt(ci[1])}]"
    p_s = f"p={_fmt(p)}" if p == p_adj else f"p={_fmt(p)}, Holm-adjusted p={_fmt(p_adj)}"
    if p_adj < alpha and abs(imp) >= me:
        label = "better" if imp > 0 else "worse"
        return label, f"{ci_s}; significant ({p_s} < {alpha}) and |mean| >= minimum effect {me}"
    if p_adj < alpha:
        return "within noise", (f"{ci_s}; significant ({p_s}) but |mean| < minimum effect {me}: "
                                "real but too small to matter")
    if p < alpha:
        return "within noise", f"{ci_s}; significant only before the Holm correction ({p_s})"
    if -me < ci[0] and ci[1] < me:
        return "within noise", (f"{ci_s}; not significant ({p_s}) and the CI lies within "
                                f"±{me}: equivalent within the minimum effect")
    return "within noise", (f"{ci_s}; not significant ({p_s}) but the CI reaches beyond ±{me}: "
                            "inconclusive, more seeds would tell")


def _verdict(
    diff: Difference, p_adj: float | None, minimum_effect: float, higher_is_better: bool,
    alpha: float,
) -> Verdict:
    if minimum_effect < 0:
        raise ValueError(f"minimum_effect must be >= 0, got {minimum_effect}")
    p_imp = diff.p_improvement(higher_is_better)
    if diff.n < 2 or diff.p_value is None or p_adj is None:
        imp = None if diff.mean is None else (diff.mean if higher_is_better else -diff.mean)
        reason = f"{diff.n} paired seed(s); a verdict needs at least 2"
        return Verdict(LABELS[3], reason, imp, None, None, None, p_imp, False)
    imp, ci = _oriented(diff, higher_is_better)
    label, reason = _label_and_reason(imp, ci, diff.p_value, p_adj, minimum_effect, alpha)
    return Verdict(label, reason, imp, ci, diff.p_value, p_adj, p_imp, p_adj < alpha)


def verdict(
    diff: Difference, *, minimum_effect: float, higher_is_better: bool, alpha: float = 0.05
) -> Verdict:
    """The verdict on one comparison, uncorrected (see the module docstring for the rule)."""
    return _verdict(diff, diff.p_value, minimum_effect, higher_is_better, alpha)


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return [float(a) for a in adjusted]


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Which hypotheses Holm's procedure rejects at family-wise level ``alpha``."""
    return [a <= alpha for a in holm_adjusted(p_values)]


def verdicts(
    diffs: Mapping[Hashable, Difference],
    *,
    minimum_effect: float,
    higher_is_better: bool,
    alpha: float = 0.05,
    correction: str = "holm",
) -> dict[Hashable, Verdict]:
    """Verdicts on several comparisons; ``correction`` is "holm" (default) or "none".

    Under "holm" the family is the comparisons with a p-value; each is significant only if its
    Holm-adjusted p-value is < alpha. The CIs stay unadjusted (for display).
    """
    if correction not in ("holm", "none"):
        raise ValueError(f"correction must be 'holm' or 'none', got {correction!r}")
    tested = [k for k, d in diffs.items() if d.p_value is not None]
    raw = [diffs[k].p_value for k in tested]
    adj = holm_adjusted(raw) if correction == "holm" else raw
    p_adj: dict[Hashable, float | None] = dict(zip(tested, adj, strict=True))
    return {
        k: _verdict(d, p_adj.get(k), minimum_effect, higher_is_better, alpha)
        for k, d in diffs.items()
    }


# --------------------------------------------------------------------------- ANOVA


@dataclass(frozen=True)
class AnovaRow:
    """One source of variation; ``f`` and ``p`` are None on the residual ("error") row."""

    source: str
    ss: float
    df: int
    ms: float
    f: float | None
    p: float | None


@dataclass(frozen=True)
class Anova:
    """An ANOVA table, or ``rows=None`` with ``reason`` saying why none could be computed."""

    rows: tuple[AnovaRow, ...] | None
    reason: str
    ss_total: float | None = None
    df_total: int | None = None

    def row(self, source: str) -> AnovaRow:
        for r in self.rows or ():
            if r.source == source:
                return r
        raise KeyError(source)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _f_test(ss: float, df: int, ms_err: float, df_err: int) -> tuple[float, float]:
    """(F, p) for one effect against the residual mean square."""
    ms = ss / df
    if ms_err == 0:
        return (math.inf, 0.0) if ms > 0 else (0.0, 1.0)
    f = ms / ms_err
    return f, _f_sf(f, df, df_err)


def _table(effects: list[tuple[str, float, int]], ss_err: float, df_err: int) -> list[AnovaRow]:
    ms_err = ss_err / df_err
    rows = []
    for source, ss, df in effects:
        f, p = _f_test(ss, df, ms_err, df_err)
        rows.append(AnovaRow(source, float(ss), df, float(ss / df), float(f), float(p)))
    rows.append(AnovaRow("error", float(ss_err), df_err, float(ms_err), None, None))
    return rows


def anova_one_way(groups: Mapping[Hashable, Sequence[float | None]]) -> Anova:
    """One-way ANOVA across the groups (levels of one factor); missing values are dropped."""
    xs = [_present(v)[0] for v in groups.values()]
    if len(xs) < 2:
        return Anova(None, f"one-way ANOVA needs at least 2 groups, got {len(xs)}")
    if any(len(x) == 0 for x in xs):
        return Anova(None, "a group has no (non-missing) values")
    n_all, k = sum(len(x) for x in xs), len(xs)
    if n_all <= k:
        return Anova(None, "no replicates: every group has a single value (no error term)")
    grand = float(np.mean(np.concatenate(xs)))
    ss_b = sum(len(x) * (float(np.mean(x)) - grand) ** 2 for x in xs)
    ss_w = sum(float(np.sum((x - np.mean(x)) ** 2)) for x in xs)
    rows = _table([("between", ss_b, k - 1)], ss_w, n_all - k)
    return Anova(tuple(rows), "ok", float(ss_b + ss_w), n_all - 1)


def _levels(keys: Sequence[tuple[Hashable, Hashable]], i: int) -> list[Hashable]:
    return list(dict.fromkeys(k[i] for k in keys))


def _grid(
    values: Mapping[tuple[Hashable, Hashable], Sequence[float | None]],
) -> tuple[np.ndarray | None, str]:
    """The balanced (a, b, n) array of present values, or (None, why not)."""
    keys = list(values)
    la, lb = _levels(keys, 0), _levels(keys, 1)
    if len(la) < 2 or len(lb) < 2:
        return None, f"two-way ANOVA needs >= 2 levels per factor, got {len(la)} x {len(lb)}"
    missing = [(a, b) for a in la for b in lb if (a, b) not in values]
    if missing:
        return None, f"incomplete grid: no values for {missing}"
    cells = [[_present(values[(a, b)])[0] for b in lb] for a in la]
    sizes = {len(x) for row in cells for x in row}
    if len(sizes) > 1:
        return None, (f"unbalanced design: replicates per cell range over {sorted(sizes)} "
                      "(after dropping missing values); needs the same n in every cell")
    if sizes.pop() < 2:
        return None, "fewer than 2 replicates per cell: no error term for the interaction model"
    return np.asarray(cells, dtype=float), "ok"


def _two_way_ss(y: np.ndarray) -> dict[str, float]:
    """Sums of squares of a balanced (a, b, n) array."""
    a, b, n = y.shape
    grand = y.mean()
    cell = y.mean(axis=2)
    ss_a = b * n * float(np.sum((y.mean(axis=(1, 2)) - grand) ** 2))
    ss_b = a * n * float(np.sum((y.mean(axis=(0, 2)) - grand) ** 2))
    ss_cells = n * float(np.sum((cell - grand) ** 2))
    return {
        "A": ss_a,
        "B": ss_b,
        "AxB": max(0.0, ss_cells - ss_a - ss_b),
        "error": float(np.sum((y - cell[:, :, None]) ** 2)),
        "total": float(np.sum((y - grand) ** 2)),
    }


def anova_two_way(values: Mapping[tuple[Hashable, Hashable], Sequence[float | None]]) -> Anova:
    """Two-way ANOVA with interaction; ``values[(level_a, level_b)]`` = replicates (seeds).

    Rows "A", "B", "AxB", "error". Balanced complete grids only (else ``rows`` is None).
    """
    y, reason = _grid(values)
    if y is None:
        return Anova(None, reason)
    a, b, n = y.shape
    ss = _two_way_ss(y)
    effects = [("A", ss["A"], a - 1), ("B", ss["B"], b - 1), ("AxB", ss["AxB"], (a - 1) * (b - 1))]
    rows = _table(effects, ss["error"], a * b * (n - 1))
    return Anova(tuple(rows), "ok", ss["total"], a * b * n - 1)


@dataclass(frozen=True)
class LevelMean:
    """Marginal mean of one factor level (over the other factor and the seeds), with its CI."""

    factor: str
    level: Hashable
    n: int
    mean: float
    ci: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["level"] = self.level if isinstance(self.level, (int, float, str)) else str(self.level)
        return d


@dataclass(frozen=True)
class MainEffects:
    """Two-way ANOVA plus the marginal means of the levels of A and of B."""

    anova: Anova
    levels_a: tuple[LevelMean, ...]
    levels_b: tuple[LevelMean, ...]
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "anova": self.anova.to_dict(),
            "levels_a": [m.to_dict() for m in self.levels_a],
            "levels_b": [m.to_dict() for m in self.levels_b],
            "confidence": self.confidence,
        }


def _marginals(
    values: Mapping[tuple[Hashable, Hashable], Sequence[float | None]],
    axis: int,
    half_width: float | None,
) -> tuple[LevelMean, ...]:
    factor = "AB"[axis]
    out = []
    for level in _levels(list(values), axis):
        pooled = [_present(v)[0] for k, v in values.items() if k[axis] == level]
        x = np.concatenate(pooled)
        mean = float(np.mean(x)) if len(x) else math.nan
        ci = None if half_width is None else _interval(mean - half_width, mean + half_width)
        out.append(LevelMean(factor, level, len(x), mean, ci))
    return tuple(out)


def main_effects(
    values: Mapping[tuple[Hashable, Hashable], Sequence[float | None]],
    *,
    confidence: float = 0.95,
) -> MainEffects:
    """:func:`anova_two_way` plus marginal level means; CIs only when the table exists."""
    _check_confidence(confidence)
    anova = anova_two_way(values)
    half_a = half_b = None
    if anova.rows is not None:
        err = anova.row("error")
        a, b = len(_levels(list(values), 0)), len(_levels(list(values), 1))
        n = (err.df // (a * b)) + 1
        t = _t_quantile((1 + confidence) / 2, err.df)
        half_a = t * math.sqrt(err.ms / (b * n))
        half_b = t * math.sqrt(err.ms / (a * n))
    return MainEffects(
        anova, _marginals(values, 0, half_a), _marginals(values, 1, half_b), confidence
    )


# --------------------------------------------------------------------------- Pareto front


def _dominates(p: tuple[float, float], q: tuple[float, float]) -> bool:
    """p = (cost, goodness) dominates q: no worse in both, strictly better in one."""
    return p[0] <= q[0] and p[1] >= q[1] and (p[0] < q[0] or p[1] > q[1])


def pareto_front(
    points: Sequence[tuple[Hashable, float, float]], higher_is_better: bool = True
) -> list[Hashable]:
    """Names of the non-dominated (name, cost, value) points, by increasing cost.

    Lower cost is better; value is better higher unless ``higher_is_better`` is False.
    Points with a missing (NaN/inf/None) cost or value are left out.
    """
    sign = 1.0 if higher_is_better else -1.0
    pts = [(name, _as_float(c), _as_float(v)) for name, c, v in points]
    pts = [(name, c, sign * v) for name, c, v in pts if math.isfinite(c) and math.isfinite(v)]
    front = [
        (c, i, name)
        for i, (name, c, v) in enumerate(pts)
        if not any(_dominates((c2, v2), (c, v)) for _, c2, v2 in pts)
    ]
    return [name for _, _, name in sorted(front, key=lambda t: (t[0], t[1]))]
