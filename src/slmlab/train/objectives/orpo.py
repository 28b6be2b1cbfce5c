"""ORPO (Hong et al. 2024): NLL of the chosen answer plus an odds-ratio term; no reference model.

Units are (chosen, rejected) pairs, encoded as example ids 2k and 2k+1; a step's loss is the
sum of pair losses divided by the number of pairs in the whole accumulated step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slmlab.train.objectives.base import LossParts, SupervisedLM, chosen_rejected, per_example_sums


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, accurate near 0 too (Mächler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(model: SupervisedLM, batch: dict, lam: float = 0.1) -> LossParts:
    """NLL(chosen) + λ·(−log σ(log odds_c − log odds_r)), per pair.

    Log-probabilities are averaged per completion token and ``log odds = log p − log(1 − p)``.
    The odds-ratio term equals TRL's (which calls λ ``beta``). The NLL term follows the
    paper: completion tokens of the chosen answer, averaged per pair. TRL's ORPOTrainer
    instead averages the NLL over prompt *and* completion tokens of the whole batch;
    ``benchmarks/parity_trl.py`` shows the two agree once that convention is matched.
    """
    logp = model(batch["input_ids"], batch["position_ids"], batch["targets"])
    ids, sums, counts = per_example_sums(logp, batch)
    # log(1 − p) is −inf at p = 1; keep the mean strictly below 0 so gradients stay finite.
    mean_logp = (sums / counts).clamp(max=-1e-7)
    c, r = chosen_rejected(ids, mean_logp)
    log_odds = (c - r) - (_log1mexp(c) - _log1mexp(r))
    ratio = -F.logsigmoid(log_odds)
    nll = -c  # per-token mean NLL of the chosen completion, per pair
    losses = nll + lam * ratio
    return LossParts(
        losses.sum(),
        float(len(losses)),
        {"nll_sum": nll.sum().item(), "or_sum": ratio.sum().item(), "pairs": len(losses)},
    )


class ORPO:
    """Records ``prompt``/``chosen``/``rejected`` → two examples per pair; normalised per pair."""

    name = "orpo"
    unit_size = 2

    def __init__(self, config=None):
        self.lam = config.lam if config is not None else 0.1

    def pairs(self, records: list[dict], default_format: str, tokenizer, where: str) -> list[tuple[str, str]]:
        from slmlab.train.data import preference_pairs

        return preference_pairs(records, default_format, tokenizer, where)

    def normaliser(self, units) -> float:
        return float(len(units))

    def loss(self, model: SupervisedLM, batch: dict) -> LossParts:
        return orpo_loss(model, batch, lam=self.lam)


def build(config=None) -> ORPO:
    return ORPO(config)
