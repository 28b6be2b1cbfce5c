"""Curriculum data plans: phases that draw each step's units from categories in set proportions.

Research notes, seed 002: "train in safe basins first, gradually expand". A curriculum is
a list of phases; each phase covers a span of the run and mixes the record categories
(the recipe's ``category`` names) with normalised weights.

:class:`CurriculumPlan` is a drop-in for ``DataPlan``: the units of a step are a pure
function of (seed, position), so a resumed run sees exactly the data it would have seen.
"""

from __future__ import annotations

import math
import random
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from slmlab.errors import unknown_name_message


class CurriculumPhase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Unique phase name (shown in logs and events).")
    span: float = Field(gt=0, description="Fraction of the run (all spans ≤ 1, summing to 1) or a whole number of steps.")
    mix: dict[str, float] = Field(description="Category → weight (≥ 0, normalised); at least one weight > 0.")

    @field_validator("mix")
    @classmethod
    def _weights(cls, mix: dict[str, float]) -> dict[str, float]:
        bad = [f"{c}={w}" for c, w in mix.items() if not (w >= 0 and math.isfinite(w))]
        if bad:
            raise ValueError(f"mix weights must be finite and ≥ 0; got {', '.join(bad)}")
        if not any(w > 0 for w in mix.values()):
            raise ValueError("mix needs at least one category with a weight > 0")
        return mix

    @property
    def shares(self) -> dict[str, float]:
        """The normalised mix, zero-weight categories left out."""
        total = sum(self.mix.values())
        return {c: w / total for c, w in self.mix.items() if w > 0}


def check_phases(phases: Sequence[CurriculumPhase]) -> list[CurriculumPhase]:
    """Whole-curriculum rules. The span rule:

    * every span ≤ 1 → spans are fractions of the run's total steps and must sum to 1 (± 1e-6);
    * otherwise spans are step counts and every one must be a whole number ≥ 1. Phase i then
      starts at the sum of the earlier counts; the last phase runs on to the end of the run.

    So ``[0.3, 0.7]`` and ``[100, 400]`` are valid, ``[0.3, 400]`` (mixed) and ``[0.3, 0.5]`` are not.
    """
    phases = list(phases)
    if not phases:
        raise ValueError("a curriculum needs at least one phase")
    dupes = sorted(n for n, k in Counter(p.name for p in phases).items() if k > 1)
    if dupes:
        raise ValueError(f"curriculum phase names must be unique; repeated: {', '.join(dupes)}")
    spans = [p.span for p in phases]
    if all(s <= 1 for s in spans):
        if abs(sum(spans) - 1) > 1e-6:
            raise ValueError(
                f"curriculum spans are fractions of the run (all ≤ 1) but sum to {sum(spans):g}, not 1; "
                "fix them, or give every span as a whole number of steps"
            )
    else:
        odd = [f"{p.name}={p.span:g}" for p in phases if p.span < 1 or p.span != int(p.span)]
        if odd:
            raise ValueError(
                f"curriculum spans mix styles: a span > 1 makes them step counts, but {', '.join(odd)} "
                "is not a whole number ≥ 1; give all spans as fractions summing to 1 or all as step counts"
            )
    return phases


# The type for a config field: `curriculum: CurriculumConfig | None = None` (a YAML list of phases).
CurriculumConfig = Annotated[list[CurriculumPhase], AfterValidator(check_phases)]


def validate_against(phases: Sequence[CurriculumPhase], available_categories: Iterable[str] | Mapping[str, int]) -> None:
    """Every category a phase names must exist in the data; one it draws on (weight > 0) must have units.

    ``available_categories`` is the set of categories that have training units, or a mapping
    category → unit count (a zero count then reads "has no training units" rather than "unknown").
    """
    counts = dict(available_categories) if isinstance(available_categories, Mapping) else dict.fromkeys(available_categories, 1)
    known = sorted(counts)
    for p in phases:
        for cat, w in p.mix.items():
            if cat not in counts:
                raise ValueError(f"curriculum phase {p.name!r}: {unknown_name_message('category', cat, known)}")
            if w > 0 and counts[cat] <= 0:
                raise ValueError(f"curriculum phase {p.name!r}: category {cat!r} has no training units (all dropped?)")


def steps_per_epoch(n_units: int, per_step: int, world: int) -> int:
    """As DataPlan: a partial last step is dropped with several processes (one could get no micro-batch)."""
    steps = n_units / per_step
    return max(1, math.floor(steps) if world > 1 else math.ceil(steps))


class _Allocation:
    """Which category fills each slot of a phase, with the cumulative count in closed form.

    Slots follow Tijdeman's chairman-assignment rule: among the categories at least
    σ = 1/(2C−2) behind their share, the one whose next unit is due first. Every prefix is then
    within 1 − σ < 1 unit of the exact share, so after N slots (shares n_c/N in lowest terms)
    every count is exact and the sequence repeats: A_c(s) = (s // N)·n_c + A_c(s mod N) needs
    at most one period tabulated. (A plain largest-deficit rule can drift past one unit.)
    """

    def __init__(self, weights: dict[str, float]):
        # Exact ratios (0.35 → 7/20, 1:2 → 1/3) keep the period short and the shares exact.
        fracs = {c: Fraction(w).limit_denominator(10**6) for c, w in weights.items()}
        denom = math.lcm(*(f.denominator for f in fracs.values()))
        ints = {c: f.numerator * (denom // f.denominator) for c, f in fracs.items()}
        g = math.gcd(*ints.values())
        self.cats = list(ints)
        self.n = [ints[c] // g for c in self.cats]
        self.period = sum(self.n)
        self._cum = [array("q", [0]) for _ in self.cats]  # grown lazily: a period can be long

    def _extend(self, upto: int) -> None:
        cum, n, total = self._cum, self.n, self.period
        m = max(2 * len(n) - 2, 1)  # 1/σ
        for s in range(len(cum[0]) - 1, upto):
            best, bn, bd = -1, 0, 1
            for c in range(len(n)):
                if (n[c] * (s + 1) - total * cum[c][s]) * m >= total:
                    num, den = m - 1 + m * cum[c][s], n[c]  # due time (1 − σ + A_c)/w_c, rescaled
                    if best < 0 or num * bd < bn * den:
                        best, bn, bd = c, num, den
            for c in range(len(n)):
                cum[c].append(cum[c][s] + (c == best))

    def counts(self, slots: int) -> dict[str, int]:
        """Units of each category among the phase's first ``slots`` slots."""
        full, rest = divmod(slots, self.period)
        if rest >= len(self._cum[0]):
            self._extend(rest)
        return {c: full * self.n[i] + self._cum[i][rest] for i, c in enumerate(self.cats)}


class CurriculumPlan:
    """The DataPlan interface over a curriculum: phase boundaries in steps, each step's units
    allocated to categories by the phase mix and drawn from per-category cycling permutations.

    Which units a step gets depends only on (seed, position): the offset into each category's
    permutation is the closed-form count of that category's slots before the step.
    """

    def __init__(self, units: list[Any], categories: list[str], phases: Sequence[CurriculumPhase], total_steps: int,
                 batch_size: int, grad_accum: int, world: int, seed: int):
        if len(categories) != len(units):
            raise ValueError(f"{len(categories)} categories for {len(units)} units")
        self.units, self.batch_size, self.seed = units, batch_size, seed
        self.phases = check_phases(phases)
        self.per_step = batch_size * grad_accum * world
        self.steps_per_epoch = steps_per_epoch(len(units), self.per_step, world)
        self.pools: dict[str, list[int]] = {}
        for i, c in enumerate(categories):
            self.pools.setdefault(c, []).append(i)
        validate_against(self.phases, {c: len(v) for c, v in self.pools.items()})
        self.starts = self._starts(total_steps)
        self._allocs = [_Allocation({c: w for c, w in p.mix.items() if w > 0}) for p in self.phases]
        self._perms: dict[tuple[str, int], list[int]] = {}

    def _starts(self, total: int) -> list[int]:
        spans = [p.span for p in self.phases]
        if all(s <= 1 for s in spans):
            # Rounding cumulative sums (not each span) makes the phases tile [0, total) exactly.
            cum = [sum(spans[:i]) for i in range(len(spans))]
            starts = [min(total, round(c * total)) for c in cum]
        else:
            starts = [int(sum(spans[:i])) for i in range(len(spans))]
        ends = starts[1:] + [max(total, starts[-1] + 1)]
        empty = [p.name for p, a, b in zip(self.phases, starts, ends) if b <= a or a >= total]
        if empty:
            raise ValueError(
                f"curriculum phase(s) {', '.join(empty)} get no steps of the run's {total}; "
                "lengthen the run or widen their spans"
            )
        return starts

    def phase_at(self, position: int) -> tuple[int, CurriculumPhase]:
        """The phase of a step; positions past the run's end stay in the last phase."""
        k = max(i for i, s in enumerate(self.starts) if s <= position) if position >= 0 else 0
        return k, self.phases[k]

    def _consumed(self, position: int) -> Counter[str]:
        """Units of each category drawn by all steps before ``position``."""
        k, _ = self.phase_at(position)
        used: Counter[str] = Counter()
        for i in range(k):
            used.update(self._allocs[i].counts((self.starts[i + 1] - self.starts[i]) * self.per_step))
        used.update(self._allocs[k].counts((position - self.starts[k]) * self.per_step))
        return used

    def _perm(self, cat: str, cycle: int) -> list[int]:
        key = (cat, cycle)
        if key not in self._perms:
            if len(self._perms) > 4 * len(self.pools):  # only the current cycles are ever needed again
                self._perms.clear()
            order = list(self.pools[cat])
            random.Random(f"{self.seed}:curriculum:{cat}:{cycle}").shuffle(order)
            self._perms[key] = order
        return self._perms[key]

    def step_micro_batches(self, position: int) -> list[list[Any]]:
        """All micro-batches (lists of units) of step ``position`` across every process, in order."""
        before, after = self._consumed(position), self._consumed(position + 1)
        chosen = []
        for cat in after:
            pool = len(self.pools[cat])
            for j in range(before[cat], after[cat]):
                chosen.append(self.units[self._perm(cat, j // pool)[j % pool]])
        # Mix categories across micro-batches (and so across processes) rather than in blocks.
        random.Random(f"{self.seed}:curriculum-step:{position}").shuffle(chosen)
        return [chosen[i : i + self.batch_size] for i in range(0, len(chosen), self.batch_size)]

