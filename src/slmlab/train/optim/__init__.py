"""Optimizers: AdamW, APOLLO / APOLLO-Mini, Muon and K-FAC natural gradient, built by name.

    from slmlab.train.optim import build_optimizer, optimizer_state_bytes
    opt = build_optimizer("apollo-mini", model.parameters(), lr=1e-3, weight_decay=0.0)
    opt = build_optimizer("natural-gradient", model.parameters(), lr=0.05, model=model)  # hooks the model

Each optimizer is a small module with the same shape, a dataclass config plus a
``torch.optim.Optimizer``, registered in :mod:`slmlab.train.optim.registry`.
"""

from slmlab.train.optim.adamw import AdamWConfig
from slmlab.train.optim.apollo import (
    APOLLO,
    APOLLO_MINI,
    Apollo,
    ApolloConfig,
    make_projection,
    projection_seed,
)
from slmlab.train.optim.muon import MuonAdamW, MuonConfig
from slmlab.train.optim.natural_gradient import (
    KFAC,
    NaturalGradientConfig,
    exact_natural_gradient,
)
from slmlab.train.optim.registry import (
    OPTIMIZERS,
    OptimizerSpec,
    available_optimizers,
    build_optimizer,
    optimizer_state_bytes,
)

__all__ = [
    "APOLLO",
    "APOLLO_MINI",
    "KFAC",
    "OPTIMIZERS",
    "AdamWConfig",
    "Apollo",
    "ApolloConfig",
    "MuonAdamW",
    "MuonConfig",
    "NaturalGradientConfig",
    "OptimizerSpec",
    "available_optimizers",
    "build_optimizer",
    "exact_natural_gradient",
    "make_projection",
    "optimizer_state_bytes",
    "projection_seed",
]
