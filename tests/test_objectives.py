"""DPO and ORPO losses against hand-computed values."""

import math

import torch

from slmlab.train.batching import IGNORE
from slmlab.train.objectives import dpo_loss, orpo_loss, sft_loss


class FixedLM:
    """Returns given per-token log-probs (policy, and reference when asked)."""

    def __init__(self, policy, reference=None):
        self.policy, self.reference = torch.tensor(policy), torch.tensor(reference or policy)

    def __call__(self, input_ids, position_ids, targets, reference=False, context=None):
        return self.reference if reference else self.policy


def pair_batch():
    # One row: chosen (example 0) has 2 supervised tokens, rejected (example 1) has 1.
    targets = torch.tensor([[IGNORE, 5, 6, IGNORE, IGNORE, 7, IGNORE]])
    example_ids = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    return {"input_ids": torch.zeros_like(targets), "position_ids": torch.zeros_like(targets), "targets": targets, "example_ids": example_ids}


def test_dpo_matches_hand_computation():
    lm = FixedLM(policy=[-1.0, -2.0, -3.0], reference=[-1.5, -2.0, -2.0])
    parts = dpo_loss(lm, pair_batch(), beta=0.1)
    # chosen: π=-3, ref=-3.5 → +0.5; rejected: π=-3, ref=-2 → -1; margin = 0.1 * 1.5
    expected = math.log1p(math.exp(-0.15))
    assert abs(parts.total.item() - expected) < 1e-6
    assert parts.normaliser == 1.0
    assert parts.logs["reward_acc_sum"] == 1.0


def test_orpo_matches_hand_computation():
    lm = FixedLM(policy=[-0.2, -0.4, -1.5])
    parts = orpo_loss(lm, pair_batch(), lam=0.5)
    c, r = -0.3, -1.5  # mean token log-probs
    log_odds = (c - math.log1p(-math.exp(c))) - (r - math.log1p(-math.exp(r)))
    expected = 0.3 + 0.5 * math.log1p(math.exp(-log_odds))
    assert abs(parts.total.item() - expected) < 1e-6


def test_sft_is_token_sum_with_token_count():
    lm = FixedLM(policy=[-1.0, -2.0, -3.0])
    parts = sft_loss(lm, pair_batch())
    assert parts.total.item() == 6.0 and parts.normaliser == 3.0
