"""Supervised fine-tuning: next-token NLL on completion tokens only.

Units are single examples; a step's loss is the sum of token NLLs divided by the number of
supervised tokens in the *whole* accumulated step (all micro-batches, all processes), so
batch 8 × accumulation 1 and batch 2 × accumulation 4 give the same gradient.
"""

from __future__ import annotations

from slmlab.train.objectives.base import LossParts, SupervisedLM


def sft_loss(model: SupervisedLM, batch: dict) -> LossParts:
    context = batch if "context_ids" in batch else None
    logp = model(batch["input_ids"], batch["position_ids"], batch["targets"], context=context)
    nll = -logp.sum()
    n = float(logp.numel())
    return LossParts(nll, n, {"nll_sum": nll.item(), "tokens": n})


class SFT:
    """Records ``input``/``output`` → (prompt, completion); normalised per supervised token."""

    name = "sft"
    unit_size = 1

    def __init__(self, config=None):
        self.config = config

    def pairs(self, records: list[dict], default_format: str, tokenizer, where: str) -> list[tuple[str, str]]:
        from slmlab.train.data import records_to_pairs

        return records_to_pairs(records, default_format, tokenizer, where)

    def normaliser(self, units) -> float:
        return float(sum(e.n_supervised for u in units for e in u))

    def loss(self, model: SupervisedLM, batch: dict) -> LossParts:
        return sft_loss(model, batch)


def build(config=None) -> SFT:
    return SFT(config)
