"""Experimental, unvalidated training ideas. Nothing here is on by default.

Importing this package is silent so that it can be listed and documented; importing a
module inside it emits an :class:`ExperimentalWarning` once per process, because turning
one on changes what is being trained.

* :mod:`slmlab.experimental.basin_loss` — the research notes' "basin-aware loss" (seed 002)
  as a differentiable auxiliary penalty on the spectrum of the hidden-state covariance.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BasinLossConfig", "ExperimentalWarning"]


class ExperimentalWarning(UserWarning):
    """An unvalidated heuristic was imported; enabling it changes the training objective."""


# The config lives here, not in basin_loss, so a run config can be validated without the import warning.
class BasinLossConfig(BaseModel):
    """Settings of the basin penalty (``experimental.basin_loss`` in a run config).

    ``enabled`` is read by the caller; :func:`basin_penalty` computes whenever it is called.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    entropy_floor: float = Field(0.5, ge=0.0)
    """Floor on ``H = −Σ p log p`` (nats), ``p = λ/Σλ`` over the eigenvalues of the batch
    hidden-state covariance (:func:`representation_eigenvalues`); not normalised by log d."""
    collapse_weight: float = Field(0.1, ge=0.0)
    drift_weight: float = Field(0.0, ge=0.0)
    """Off unless asked: its target φ for ``λ_1/λ_2`` has no established meaning."""
    layer: int = -1
    """Index into the model's ``hidden_states`` tuple (``-1``: the last)."""
    eps: float = Field(1e-6, gt=0.0)
    """Relative diagonal jitter (``δ = eps·tr(C)/d``) and absolute floor on ``λ_2``."""
