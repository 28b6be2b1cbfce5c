"""AdamW: the baseline. A dataclass config over :class:`torch.optim.AdamW`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AdamWConfig:
    """Extra arguments of ``adamw`` (``lr`` and ``weight_decay`` are passed separately)."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    amsgrad: bool = False
    foreach: bool | None = None
    fused: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")


def build_adamw(params, lr: float, weight_decay: float, config: AdamWConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=config.betas, eps=config.eps,
                             amsgrad=config.amsgrad, foreach=config.foreach, fused=config.fused)
