"""The one place a gradient step happens.

    batch = StepBatch.from_token_ids(context_ids, continuation_ids)   # or StepBatch.from_units(...)
    result = train_step(state, batch, objective)                      # forward/backward → clip → step

:func:`train_step` is :func:`forward_backward` then :func:`optimizer_step`. The training loop
calls the two halves itself, so that recovery can look at a step's loss and gradient norm
before the update is applied (and :func:`skip_step` it instead); the server and the kernel
call :func:`train_step`.

Normalisation: each micro-batch's objective returns a *sum*; the step divides by the
normaliser of the whole accumulated step across processes (``StepBatch.normaliser``:
supervised tokens for SFT, pairs for DPO/ORPO), so batch 8 × accumulation 1 and batch 2 ×
accumulation 4 give the same gradient, and several processes give the gradient of one.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch

from slmlab.train.batching import Encoded
from slmlab.train.data import examples_from_token_ids, make_batch, units
from slmlab.train.state import TrainState


@dataclass
class StepBatch:
    """One optimizer step's data for this process: collated micro-batches and the step's normaliser."""

    micro_batches: list[dict]
    normaliser: float  # over the whole step, every process included
    example_ids: list[int] = field(default_factory=list)  # every process's, for error messages

    @classmethod
    def from_units(cls, step_units: list[list[list[Encoded]]], objective, *, max_length: int, packing: bool = True,
                   pad_id: int = 0, frozen: bool = False, rank: int = 0, world: int = 1) -> StepBatch:
        """``step_units``: every process's micro-batches of units, in order; this process takes its share."""
        norm = objective.normaliser([u for mb in step_units for u in mb])
        mine = step_units[rank::world]
        micro = [make_batch(mb, max_length, packing, pad_id, frozen) for mb in mine]
        ids = sorted(e.index for mb in step_units for u in mb for e in u)
        return cls(micro, norm, ids)

    @classmethod
    def from_token_ids(cls, context_ids: list[list[int]], continuation_ids: list[list[int]], objective=None, *,
                       micro_batch_size: int | None = None, max_length: int | None = None, packing: bool = True,
                       pad_id: int = 0, frozen: bool = False) -> StepBatch:
        """Raw token ids, no tokenizer (the client owns tokenization): loss on each continuation.

        For a preference objective, examples 2k and 2k+1 are pair k's chosen and rejected.
        ``micro_batch_size`` units per micro-batch (default: all in one).
        """
        from slmlab.train.objectives.sft import SFT

        objective = objective or SFT()
        examples = examples_from_token_ids(context_ids, continuation_ids, max_length)
        step_units = units(examples, objective.unit_size)
        width = max_length or max(len(e.ids) for e in examples)
        size = micro_batch_size or len(step_units)
        micro = [step_units[i:i + size] for i in range(0, len(step_units), size)]
        return cls.from_units(micro, objective, max_length=width, packing=packing, pad_id=pad_id, frozen=frozen)

    def to(self, device) -> StepBatch:
        return replace(self, micro_batches=[{k: v.to(device) for k, v in mb.items()} for mb in self.micro_batches])

    @property
    def tokens(self) -> int:
        """Token positions this process runs (padding included, as a throughput figure counts them)."""
        return sum(int(mb["input_ids"].numel()) for mb in self.micro_batches)


@dataclass
class StepResult:
    loss: float  # the step's normalised loss, over every process
    grad_norm: float | None  # before clipping; None when clipping is off
    tokens: int  # token positions processed this step, every process
    lr: float | None = None  # the rate the update was taken with (None: not applied)
    applied: bool = False
    penalty: float = 0.0  # the experimental auxiliary penalty, if any


def forward_backward(state: TrainState, batch: StepBatch, objective, *, penalty=None,
                     loss_multiplier: float = 1.0) -> StepResult:
    """Accumulate the step's gradient over its micro-batches and clip it; nothing is applied yet.

    ``penalty``: an object with ``capture()`` (a context around the forward) and
    ``penalty(batch)`` added to the objective (the experimental basin loss). ``loss_multiplier``
    scales each micro-batch's loss (fault injection multiplies by NaN).
    """
    world, acc = state.world, state.accelerator
    mine = batch.micro_batches
    step_loss, step_penalty = 0.0, 0.0
    for i, mb in enumerate(mine):
        # Gradients are averaged across processes only after the last micro-batch.
        sync = acc.no_sync(state.lm) if acc is not None and i < len(mine) - 1 else nullcontext()
        with sync, (penalty.capture() if penalty is not None else nullcontext()):
            parts = objective.loss(state.lm, mb)
            if loss_multiplier != 1.0:
                parts.total = parts.total * loss_multiplier
            # DDP averages gradients over processes; multiply back so the total is sum / normaliser.
            loss = parts.total * world / batch.normaliser
            if penalty is not None:
                extra = penalty.penalty(mb) / len(mine)
                loss = loss + extra
                step_penalty += float(extra)
            if acc is not None:
                acc.backward(loss)
            else:
                loss.backward()
        step_loss += parts.total.item()  # a host sync per micro-batch: the loss is logged every step
    loss = reduce_sum(state, step_loss) / batch.normaliser
    grad_norm = None
    if state.max_grad_norm:
        clip = acc.clip_grad_norm_ if acc is not None else torch.nn.utils.clip_grad_norm_
        grad_norm = float(clip(state.trainable, state.max_grad_norm))
    penalty_total = reduce_sum(state, step_penalty) if penalty is not None else 0.0
    return StepResult(loss, grad_norm, batch.tokens * world, penalty=penalty_total)


def optimizer_step(state: TrainState, result: StepResult, lr_factor: float = 1.0) -> StepResult:
    """Apply the accumulated gradient, advance the schedule and the step counter.

    ``lr_factor`` multiplies the rate of this one update (fault injection's LR spike). The
    scheduler then sets the next step's schedule rate; callers that scale it (recovery's
    cooldown) call ``state.set_lr(multiplier)`` afterwards.
    """
    if lr_factor != 1.0:
        for group in state.optimizer.param_groups:
            group["lr"] *= lr_factor
    lr_used = state.lr  # logged: the rate this step was taken with
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.tokens_seen += result.tokens
    return replace(result, lr=lr_used, applied=True)


def skip_step(state: TrainState, result: StepResult) -> StepResult:
    """Consume the step without applying it: gradients dropped, schedule and step counter advanced."""
    lr_used = state.lr
    state.optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # skipping the very first update is deliberate here
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        state.scheduler.step()
    state.step += 1
    return replace(result, lr=lr_used, applied=False)


def train_step(state: TrainState, batch: StepBatch, objective) -> StepResult:
    """Forward/backward over the batch's micro-batches, clip, update: one optimizer step."""
    result = forward_backward(state, batch.to(state.device), objective)
    return optimizer_step(state, result)


def reduce_sum(state: TrainState, value: float) -> float:
    """``value`` summed over processes (itself with one process)."""
    if state.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=state.device)
    return float(state.accelerator.reduce(t, reduction="sum").item())
