"""Training state: everything a gradient step changes, in one object that round-trips bit-exactly.

:class:`TrainState` holds the model (PEFT or full), the optimizer, the LR schedule, the step,
the tokens seen and the RNG streams. ``state_dict()`` copies all of it (optimizer moments
included, APOLLO's too) and ``load_state_dict()`` puts it back, so that training from a restored
state gives the same bytes as training straight on. Checkpoints are this state on disk.

:func:`new_state` builds one from a model and an optimizer name, for callers without a
config (the server's online training, the kernel).
"""

from __future__ import annotations

import copy
import functools
import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from slmlab.train.objectives.base import SupervisedLM


@dataclass
class TrainState:
    """The model and what its next step depends on.

    ``lm`` is the module the step calls (a :class:`SupervisedLM` around ``model``, wrapped by
    accelerate for several processes); ``accelerator`` is ``None`` for a plain single-process state.
    """

    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    adapter: str = "lora"  # "lora": only the adapter's weights are state; "full": every weight
    max_grad_norm: float | None = 1.0
    step: int = 0
    tokens_seen: int = 0
    accelerator: Any = None
    lm: torch.nn.Module | None = None
    trainable: list = field(default_factory=list)
    adapter_name: str = "default"  # which of a PeftModel's adapters this state trains

    def __post_init__(self) -> None:
        if self.lm is None:
            self.lm = SupervisedLM(self.model)
        if not self.trainable:
            self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    @property
    def world(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    @property
    def device(self) -> torch.device:
        return self.accelerator.device if self.accelerator is not None else next(self.model.parameters()).device

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def set_lr(self, multiplier: float = 1.0) -> None:
        """Each group's LR: its base LR × the schedule at the current step × ``multiplier``."""
        for group, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * fn(self.scheduler.last_epoch) * multiplier

    # ------------------------------------------------------------------ state

    def weights(self) -> dict[str, torch.Tensor]:
        """The trained weights: the adapter's (PEFT names), or every weight, tied ones once."""
        if self.adapter == "lora":
            from peft import get_peft_model_state_dict

            weights = get_peft_model_state_dict(self.model, adapter_name=self.adapter_name)
            return {k: v.detach().clone() for k, v in weights.items()}
        seen: set[int] = set()
        out = {}
        for name, t in self.model.state_dict().items():
            if t.data_ptr() in seen:  # tied weights share storage; safetensors refuses shared tensors
                continue
            seen.add(t.data_ptr())
            out[name] = t.detach().clone().contiguous()
        return out

    def load_weights(self, weights: dict[str, torch.Tensor], where: str = "state") -> None:
        if self.adapter == "lora":
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.model, weights, adapter_name=self.adapter_name)
            unexpected = [k for k in result.unexpected_keys if "lora_" in k]
            if unexpected:
                raise ValueError(f"{where}: weights do not match the adapter config (unexpected {unexpected[:3]})")
            return
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        real_missing = [k for k in missing if not _is_tied(self.model, k)]  # tied weights were stored once
        if real_missing or unexpected:
            raise ValueError(f"{where}: weights do not match the model (missing {real_missing[:3]}, unexpected {unexpected[:3]})")

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies, not views): weights, optimizer, scheduler, step, tokens seen, RNG."""
        return {
            "weights": self.weights(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": copy.deepcopy(self.scheduler.state_dict()),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any], where: str = "state") -> None:
        self.load_weights(state["weights"], where)
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        set_rng_state(state["rng"])


def rng_state() -> dict[str, Any]:
    """The RNG streams training draws from: torch (LoRA dropout), Python's ``random``, CUDA if present."""
    version, internal, gauss = random.getstate()
    rng = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():  # dropout on a GPU draws from the CUDA generators
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))


def _is_tied(model, name: str) -> bool:
    ptrs: dict[int, list[str]] = {}
    for n, t in model.state_dict().items():
        ptrs.setdefault(t.data_ptr(), []).append(n)
    return any(name in names and len(names) > 1 for names in ptrs.values())


def lr_schedule(optimizer, kind: str, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0):
    """Linear warmup, then cosine, linear or constant down to ``min_lr_ratio`` of the peak.

    The shape is a ``functools.partial`` of :func:`schedule_factor`: LambdaLR saves a callable
    object's ``__dict__`` in its state dict and a partial keeps its arguments elsewhere, so a
    checkpoint carries the step count and base rates while the shape always comes from the
    config (a resumed run asked for more steps follows the new length).
    """
    shape = functools.partial(schedule_factor, kind=kind, total_steps=total_steps, warmup_steps=warmup_steps,
                              min_lr_ratio=min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, shape)


def schedule_factor(step: int, *, kind: str, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """The LR multiplier at ``step``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
    return min_lr_ratio + (1 - min_lr_ratio) * shape


def new_state(model, *, optimizer: str = "adamw", lr: float = 2e-4, weight_decay: float = 0.0,
              schedule: str = "constant", total_steps: int = 1, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
              max_grad_norm: float | None = 1.0, optimizer_kwargs: dict | None = None,
              adapter_name: str = "default") -> TrainState:
    """A state for ``model`` (PEFT → adapter ``adapter_name`` is trained; otherwise every parameter that requires grad).

    With several adapters in one PeftModel, make ``adapter_name`` the active one first
    (``model.set_adapter``): only its weights require grad, so only they reach the optimizer.
    """
    from peft import PeftModel

    from slmlab.train.optim import build_optimizer

    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(optimizer, trainable, lr=lr, weight_decay=weight_decay, model=model,
                          **(optimizer_kwargs or {}))
    sched = lr_schedule(opt, schedule, total_steps, warmup_steps, min_lr_ratio)
    adapter = "lora" if isinstance(model, PeftModel) else "full"
    return TrainState(model, opt, sched, adapter=adapter, max_grad_norm=max_grad_norm, trainable=trainable,
                      adapter_name=adapter_name)
