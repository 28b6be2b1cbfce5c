"""LoRA dropout on CPU without one Mersenne-Twister draw per element.

PEFT applies ``nn.Dropout(p)`` to every adapted layer's input before ``lora_A``. On CPU,
torch draws one random number per element for the mask, and on short examples that is a
large share of a LoRA step: measured with ``benchmarks/profile_step.py`` (SmolLM2-135M, r=32,
all linear layers, 2 cores), ``aten::bernoulli_`` took 12% of the profile and dropout 0.05
about 19% of the step.

:class:`FastDropout` is the same operation — keep each element with probability 1 − p and
scale the kept ones by 1/(1 − p) — with a cheaper source of randomness: one 64-bit draw from
torch's generator gives four 16-bit uniforms, so a mask costs a quarter of the draws. The rate
is quantised to 1/65536 (p = 0.05 becomes 3277/65536 = 0.0500031) and the scale uses that
quantised rate, so the expectation is exact: E[FastDropout(x)] = x.

The draws come from torch's global generator, as ``nn.Dropout``'s do, so a seed fixes the
masks and a checkpoint's saved RNG state makes a resume bit-exact. The masks differ from
``nn.Dropout``'s (same distribution, other numbers). Off the CPU (CUDA's Philox generator is
fast) and in eval mode it defers to ``torch.nn.functional.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 65536  # 16-bit uniforms


class FastDropout(nn.Module):
    """``nn.Dropout(p)`` drawing 16-bit uniforms four per 64-bit draw on CPU."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.dropped_levels = round(p * _LEVELS)  # an int16 uniform below this level (shifted) is dropped
        self.scale = _LEVELS / (_LEVELS - self.dropped_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropped_levels == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return x * keep_mask(x, self.dropped_levels, self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}, effective p={self.dropped_levels / _LEVELS:.7f}"


def keep_mask(x: torch.Tensor, dropped_levels: int, scale: float) -> torch.Tensor:
    """A tensor shaped like ``x``: ``scale`` where kept, 0 where dropped (no gradient of its own)."""
    n = x.numel()
    draws = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    uniforms = draws.view(torch.int16)[:n].view(x.shape)  # each uniform on [-32768, 32767]
    keep = uniforms >= dropped_levels - _LEVELS // 2
    return keep.to(x.dtype) * scale


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every PEFT LoRA dropout (``lora_dropout[name]``, an ``nn.Dropout``) with :class:`FastDropout`.

    Returns how many were replaced. The adapter's saved config keeps ``lora_dropout``: a model
    loaded from it elsewhere gets PEFT's own dropout with the same rate.
    """
    replaced = 0
    for module in model.modules():
        holders = getattr(module, "lora_dropout", None)
        if not isinstance(holders, nn.ModuleDict):
            continue
        for name, dropout in holders.items():
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                holders[name] = FastDropout(dropout.p)
                replaced += 1
    return replaced
