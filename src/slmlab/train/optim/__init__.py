"""Optimizers: AdamW and APOLLO / APOLLO-Mini, built by name.

    from slmlab.train.optim import build_optimizer, optimizer_state_bytes
    opt = build_optimizer("apollo-mini", model.parameters(), lr=1e-3, weight_decay=0.0)

Each optimizer is a small module with the same shape, a dataclass config plus a
``torch.optim.Optimizer``, registered in :mod:`slmlab.train.optim.registry`.
"""

from slmlab.train.optim.adamw import AdamWConfig
from slmlab.train.optim.apollo import APOLLO, APOLLO_MINI, Apollo, ApolloConfig, make_projection, projection_seed
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
    "OPTIMIZERS",
    "AdamWConfig",
    "Apollo",
    "ApolloConfig",
    "OptimizerSpec",
    "available_optimizers",
    "build_optimizer",
    "make_projection",
    "optimizer_state_bytes",
    "projection_seed",
]
