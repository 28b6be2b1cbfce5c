"""Recovery autopilot (first part): detect bad steps, skip them, roll back when skipping is not enough.

Detectors (evaluated after backward, before the optimizer step):

* ``nonfinite`` — the loss or the gradient norm is NaN/inf;
* ``loss_spike`` / ``grad_spike`` — z-score of the value against a rolling window of
  recent *healthy* values above ``z`` (OLMo-core uses z > 6 over 128 steps), once
  ``min_history`` values are known.

Actions, in order of escalation: ``skip`` the step (no optimizer/scheduler update; the
batch is consumed); after ``rollback_after`` consecutive detections, or on a non-finite
value when ``skip`` is not allowed, ``rollback`` to the last checkpoint saved while
healthy, skip the data window that led to the fault, and multiply the learning rate by
``lr_backoff`` — PaLM's manual recipe, automated. After ``max_rollbacks`` the run
pauses with an explanation. Every detection and action is an event with its evidence.

Fault injection (for tests and demos): ``nan@STEP`` (the loss at STEP becomes NaN),
``lr_spike@STEP:FACTOR`` (the learning rate at STEP is multiplied by FACTOR),
``poison@STEP:N`` (N steps from STEP get random token ids).
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ACTIONS = ("skip", "rollback")
_INJECT = re.compile(r"^(nan|lr_spike|poison)@(\d+)(?::([0-9.eE+-]+))?$")


class RecoveryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Detect bad steps and act on them (otherwise a NaN stops the run).")
    window: int = Field(128, ge=4, description="Rolling window of healthy values for the z-scores.")
    z: float = Field(6.0, gt=0, description="z-score above which a loss or grad-norm value is a spike.")
    min_history: int = Field(16, ge=2, description="Healthy values needed before spikes are judged.")
    actions: list[Literal["skip", "rollback"]] = Field(default_factory=lambda: ["skip", "rollback"])
    rollback_after: int = Field(2, ge=1, description="Consecutive detections that trigger a rollback.")
    lr_backoff: float = Field(0.5, gt=0, le=1, description="Learning-rate factor applied at each rollback.")
    max_rollbacks: int = Field(3, ge=0, description="Pause the run after this many rollbacks.")


@dataclass(frozen=True)
class Injection:
    kind: str
    step: int
    value: float

    @staticmethod
    def parse(text: str) -> Injection:
        m = _INJECT.match(text.strip())
        if not m:
            raise ValueError(f"bad injection {text!r}: expected nan@STEP, lr_spike@STEP:FACTOR or poison@STEP:N")
        kind, step, value = m.group(1), int(m.group(2)), m.group(3)
        if kind != "nan" and value is None:
            raise ValueError(f"injection {text!r} needs a value after ':'")
        return Injection(kind, step, float(value) if value is not None else math.nan)


def validate_injections(items: list[str]) -> list[str]:
    for item in items:
        Injection.parse(item)
    return items


@dataclass
class Detection:
    kind: str  # nonfinite | loss_spike | grad_spike
    value: float | None
    zscore: float | None
    mean: float | None
    std: float | None

    def evidence(self) -> dict:
        return {"detector": self.kind, "value": self.value, "z": self.zscore, "window_mean": self.mean, "window_std": self.std}


@dataclass
class SpikeDetector:
    window: int = 128
    z: float = 6.0
    min_history: int = 16
    losses: deque = field(default_factory=deque)
    grads: deque = field(default_factory=deque)

    def check(self, loss: float, grad_norm: float | None) -> Detection | None:
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            return Detection("nonfinite", loss if not math.isfinite(loss) else grad_norm, None, None, None)
        for kind, value, hist in (("loss_spike", loss, self.losses), ("grad_spike", grad_norm, self.grads)):
            if value is None or len(hist) < self.min_history:
                continue
            mean = sum(hist) / len(hist)
            std = math.sqrt(sum((h - mean) ** 2 for h in hist) / (len(hist) - 1)) or 1e-12
            zscore = (value - mean) / std
            if zscore > self.z:
                return Detection(kind, value, zscore, mean, std)
        return None

    def accept(self, loss: float, grad_norm: float | None) -> None:
        """Record a healthy step's values."""
        for value, hist in ((loss, self.losses), (grad_norm, self.grads)):
            if value is not None:
                hist.append(value)
                while len(hist) > self.window:
                    hist.popleft()

    def reset(self) -> None:
        self.losses.clear()
        self.grads.clear()
