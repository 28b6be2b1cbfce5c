"""The sampling temperature of the next round, from this round's failure rate.

The rule (a failure band, multiplicative steps, clamped)::

    failure < low   →  T · factor    the model almost never fails: sample more widely to find failures
    failure > high  →  T / factor    the model mostly fails: sample closer to its best guess
    otherwise       →  T             in the band: keep it
    then clamp to [min, max]

Why a band: a prompt only yields a pair when its samples hold a wrong answer, and the pair is
on-policy on *both* sides only when they also hold a right one; both are likeliest when about
half of the samples fail. Defaults: band [0.3, 0.7], factor 1.25, T in [0.1, 1.5].

This is a small documented heuristic, not a finding: whether it helps is for a dream run's
rounds.jsonl (failure rate, T and held-out accuracy per round) to show. Seed 003 words the idea
the other way round (more failures → explore more broadly); slmlab follows the issue's rule, whose
aim is pair yield.
"""

from __future__ import annotations


def next_temperature(temperature: float, failure_rate: float, *, band: tuple[float, float] = (0.3, 0.7),
                     factor: float = 1.25, lowest: float = 0.1, highest: float = 1.5) -> float:
    """The temperature of the next round (see the module docstring)."""
    if not 0.0 <= failure_rate <= 1.0:
        raise ValueError(f"failure_rate must be within [0, 1], got {failure_rate}")
    low, high = band
    if failure_rate < low:
        temperature *= factor
    elif failure_rate > high:
        temperature /= factor
    return min(highest, max(lowest, temperature))


def from_config(temperature: float, failure_rate: float, config) -> float:
    """:func:`next_temperature` with a :class:`~slmlab.dream.config.TemperatureConfig`'s settings."""
    return next_temperature(temperature, failure_rate, band=tuple(config.band), factor=config.factor,
                            lowest=config.min, highest=config.max)
