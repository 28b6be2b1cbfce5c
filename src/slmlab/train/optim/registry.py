"""The one place optimizers are registered: name → (config dataclass, defaults, builder)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from slmlab.errors import SlmlabError, unknown_name_message
from slmlab.train.optim.adamw import AdamWConfig, build_adamw
from slmlab.train.optim.apollo import APOLLO, APOLLO_MINI, Apollo, ApolloConfig
from slmlab.train.optim.muon import MuonConfig, build_muon
from slmlab.train.optim.natural_gradient import (
    NaturalGradientConfig,
    build_natural_gradient,
)


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    summary: str
    defaults: Any
    """A config dataclass instance: its fields are the valid extra kwargs, its values the defaults."""
    build: Callable[..., torch.optim.Optimizer]
    """``build(params, lr, weight_decay, config, model)``; ``model`` may be None (required by natural-gradient)."""

    @property
    def options(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.defaults)]


def _build_adamw(params, lr: float, weight_decay: float, config: AdamWConfig, model=None) -> torch.optim.Optimizer:
    return build_adamw(params, lr, weight_decay, config)


def _build_apollo(params, lr: float, weight_decay: float, config: ApolloConfig, model=None) -> torch.optim.Optimizer:
    return Apollo(params, lr=lr, weight_decay=weight_decay, config=config)


OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("adamw", "torch.optim.AdamW (element-wise Adam moments: 2 floats per parameter)",
                      AdamWConfig(), _build_adamw),
        OptimizerSpec("apollo", "APOLLO: channel-wise scaling from rank-256 random projections",
                      APOLLO, _build_apollo),
        OptimizerSpec("apollo-mini", "APOLLO-Mini: tensor-wise scaling from a rank-1 projection (SGD-like memory)",
                      APOLLO_MINI, _build_apollo),
        OptimizerSpec("muon", "Muon (torch.optim.Muon) for hidden matrices, AdamW for embeddings, head and 1-D tensors",
                      MuonConfig(), build_muon),
        OptimizerSpec("natural-gradient", "K-FAC natural gradient (empirical Fisher) for Linear layers, Adam for the rest",
                      NaturalGradientConfig(), build_natural_gradient),
    )
}


def available_optimizers() -> list[str]:
    return list(OPTIMIZERS)


def build_optimizer(name: str, params, *, lr: float, weight_decay: float = 0.0, model: torch.nn.Module | None = None,
                    **kwargs: Any) -> torch.optim.Optimizer:
    """Build a registered optimizer. ``params`` may be parameters or parameter groups.

    ``model``: the module the parameters belong to. ``muon`` reads parameter names from it (to
    give embeddings and the output head to AdamW); ``natural-gradient`` requires it (it hooks the
    model's Linear layers); the others ignore it.

    Raises a :class:`~slmlab.errors.SlmlabError` (a ValueError) for an unknown name, an
    unknown keyword argument or an invalid value.
    """
    key = name.strip().lower().replace("_", "-")
    spec = OPTIMIZERS.get(key)
    if spec is None:
        raise SlmlabError(unknown_name_message("optimizer", name, list(OPTIMIZERS)))
    unknown = sorted(set(kwargs) - set(spec.options))
    if unknown:
        raise SlmlabError(f"Unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"for optimizer {key!r}. Valid: lr, weight_decay, {', '.join(spec.options)}.")
    try:
        config = dataclasses.replace(spec.defaults, **kwargs)
    except (TypeError, ValueError) as e:
        raise SlmlabError(f"Invalid argument for optimizer {key!r}: {e}") from e
    return spec.build(params, lr, weight_decay, config, model)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by every tensor in ``optimizer.state`` (moments, projections, counters, ...).

    Accepts wrapped optimizers (e.g. accelerate's ``AcceleratedOptimizer``).
    """
    inner = optimizer
    while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
        inner = inner.optimizer
    seen: set[int] = set()

    def size(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            if id(value) in seen:
                return 0
            seen.add(id(value))
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(size(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(size(v) for v in value)
        return 0

    return sum(size(s) for s in inner.state.values())
