"""Training: the public step API, the loop, objectives and optimizers.

    from slmlab.train import StepBatch, TrainState, new_state, train_step

The names below load on first use, so that ``import slmlab.train.config`` stays free of torch.
See docs/training.md.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "TrainState": "state", "new_state": "state", "lr_schedule": "state",
    "StepBatch": "step", "StepResult": "step", "train_step": "step", "forward_backward": "step",
    "optimizer_step": "step", "skip_step": "step",
    "run": "loop", "resume_run": "loop", "setup": "loop", "fit": "loop", "finish": "loop", "RunResult": "loop",
    "TrainingError": "data", "prepare_data": "data", "DataPlan": "data",
    "build_objective": "objectives",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
