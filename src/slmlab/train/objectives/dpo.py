"""Sigmoid DPO (Rafailov et al. 2023) against the base model with the adapter switched off.

Units are (chosen, rejected) pairs, encoded as example ids 2k and 2k+1; a step's loss is the
sum of pair losses divided by the number of pairs in the whole accumulated step.
"""

from __future__ import annotations

import torch.nn.functional as F

from slmlab.train.objectives.base import LossParts, SupervisedLM, chosen_rejected, per_example_sums


def dpo_loss(model: SupervisedLM, batch: dict, beta: float = 0.1) -> LossParts:
    """-log σ(β[(π_c − ref_c) − (π_r − ref_r)]), summed over pairs."""
    logp = model(batch["input_ids"], batch["position_ids"], batch["targets"])
    ref = model(batch["input_ids"], batch["position_ids"], batch["targets"], reference=True)
    ids, pol_sum, _ = per_example_sums(logp, batch)
    _, ref_sum, _ = per_example_sums(ref, batch)
    pc, pr = chosen_rejected(ids, pol_sum)
    rc, rr = chosen_rejected(ids, ref_sum)
    margin = beta * ((pc - rc) - (pr - rr))
    losses = -F.logsigmoid(margin)
    return LossParts(
        losses.sum(),
        float(len(losses)),
        {"reward_margin_sum": margin.sum().item() / beta, "reward_acc_sum": (margin > 0).float().sum().item(), "pairs": len(losses)},
    )


class DPO:
    """Records ``prompt``/``chosen``/``rejected`` → two examples per pair; normalised per pair."""

    name = "dpo"
    unit_size = 2

    def __init__(self, config=None):
        self.beta = config.beta if config is not None else 0.1

    def pairs(self, records: list[dict], default_format: str, tokenizer, where: str) -> list[tuple[str, str]]:
        from slmlab.train.data import preference_pairs

        return preference_pairs(records, default_format, tokenizer, where)

    def normaliser(self, units) -> float:
        return float(len(units))

    def loss(self, model: SupervisedLM, batch: dict) -> LossParts:
        return dpo_loss(model, batch, beta=self.beta)


def build(config=None) -> DPO:
    return DPO(config)
