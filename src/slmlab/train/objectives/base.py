"""What every objective shares: the model wrapper that returns supervised-token log-probs,
the loss parts an objective returns, and per-example sums.

The language-model head runs only at supervised positions: on prompt-heavy data
(a 20-token puzzle, a 2-token answer) most positions have no target, and the head
(hidden × vocabulary, 576 × 49152 for SmolLM2) is one of the costliest matmuls in
the model. Selecting the positions first changes nothing in the maths.

Every objective returns the *sum* of its per-token (SFT) or per-example (DPO, ORPO)
terms together with the count it should be normalised by; the step divides by the
count over the whole accumulated step, so micro-batching never changes the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from slmlab.train.batching import IGNORE


class SupervisedLM(nn.Module):
    """Wraps a causal LM so that forward returns log p(target) at supervised positions only.

    It is the module handed to ``accelerator.prepare``: DDP must see the forward that
    produces the loss, so the decoder/head split has to happen inside it.
    """

    def __init__(self, causal_lm: nn.Module):
        super().__init__()
        self.lm = causal_lm

    def _core(self) -> nn.Module:
        """The transformers model (inside a PeftModel, the one with the LoRA layers injected)."""
        from peft import PeftModel

        return self.lm.get_base_model() if isinstance(self.lm, PeftModel) else self.lm

    def forward(self, input_ids, position_ids, targets, reference: bool = False, context: dict | None = None):
        core = self._core()
        if context is not None:
            return self._frozen_context_logprobs(core, input_ids, position_ids, targets, context)
        if reference:
            # DPO reference = the base model with the adapter switched off: no second copy in memory.
            with torch.no_grad(), self.lm.disable_adapter():
                return self._token_logprobs(core, input_ids, position_ids, targets)
        return self._token_logprobs(core, input_ids, position_ids, targets)

    @staticmethod
    def _frozen_context_logprobs(core, input_ids, position_ids, targets, context):
        """Context-frozen mode: the context runs once without gradients and its KV cache is reused.

        This changes the gradient on purpose: nothing flows back through the context's
        keys and values (they are constants), only through the continuation. The loss
        value is the same as in exact mode.
        """
        decoder = core.get_decoder()
        with torch.no_grad():
            cache = decoder(
                input_ids=context["context_ids"], attention_mask=context["context_mask"],
                position_ids=context["context_positions"], use_cache=True,
            ).past_key_values
        hidden = decoder(
            input_ids=input_ids, attention_mask=context["attention_mask"], position_ids=position_ids,
            past_key_values=cache, use_cache=True,
        ).last_hidden_state
        mask = targets != IGNORE
        logits = core.get_output_embeddings()(hidden[mask]).float()
        return -F.cross_entropy(logits, targets[mask], reduction="none")

    @staticmethod
    def _token_logprobs(core, input_ids, position_ids, targets):
        hidden = core.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        mask = targets != IGNORE
        logits = core.get_output_embeddings()(hidden[mask]).float()  # [n_supervised, vocab]
        return -F.cross_entropy(logits, targets[mask], reduction="none")


@dataclass
class LossParts:
    """Sum of the loss terms and what it is normalised by, plus numbers worth logging."""

    total: torch.Tensor
    normaliser: float
    logs: dict[str, float]


def per_example_sums(values: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum per-token values by example; returns (example ids, sums, token counts), ids ascending."""
    mask = batch["targets"] != IGNORE
    owners = batch["example_ids"][mask]
    ids, inverse = torch.unique(owners, sorted=True, return_inverse=True)
    sums = torch.zeros(len(ids), dtype=values.dtype, device=values.device).index_add(0, inverse, values)
    counts = torch.zeros(len(ids), dtype=values.dtype, device=values.device).index_add(0, inverse, torch.ones_like(values))
    return ids, sums, counts


def chosen_rejected(ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Preference batches encode pair k as example ids 2k (chosen) and 2k+1 (rejected)."""
    by_id = dict(zip(ids.tolist(), range(len(ids))))
    pairs = sorted({i // 2 for i in by_id})
    chosen = torch.stack([values[by_id[2 * k]] for k in pairs])
    rejected = torch.stack([values[by_id[2 * k + 1]] for k in pairs])
    return chosen, rejected
