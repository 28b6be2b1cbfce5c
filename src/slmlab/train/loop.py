"""The training loop, top to bottom: ``setup()`` → ``fit()`` → ``finish()``.

    setup:  check the run dir → data (before the model loads) → plan → model + adapter
            → optimizer + schedule → accelerator → TrainState → resume if asked → observers
    fit:    each step: data position → batch → forward/backward (train.step) → recovery decides
            → apply / skip / roll back / pause → log → eval → health check → checkpoint → budget
    finish: final eval → adapter or model → results.json → report → runs index

The gradient step itself lives in :mod:`slmlab.train.step` (the server and the kernel call it
too); what to do about a bad step or a bad health check is decided by
:class:`slmlab.watch.recovery.Recovery`; this module carries the decisions out.
"""

from __future__ import annotations

import math
import random
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slmlab.console import err_console
from slmlab.errors import RunInterrupted, SlmlabError
from slmlab.io import atomic_write_text, truncate_lines, write_json
from slmlab.runs import record_run
from slmlab.train.checkpoint import RollbackTargets, discard_checkpoints_after, latest_checkpoint, load_checkpoint, mark_healthy, save_checkpoint
from slmlab.train.config import TrainConfig, load_train_config
from slmlab.train.data import DataPlan, TrainData, TrainingError, make_batch, prepare_data, unit_categories, units
from slmlab.train.objectives import build_objective
from slmlab.train.state import TrainState, lr_schedule
from slmlab.train.step import StepBatch, StepResult, forward_backward, optimizer_step, reduce_sum, skip_step
from slmlab.watch.events import (
    ACTION_KINDS,
    EventBus,
    EventsWriter,
    MetricsWriter,
    count_kinds,
    mark_rolled_back,
    trim_to_step,
)
from slmlab.watch.recovery import EVENT_KINDS, Decision, FaultInjector, Recovery, perturb_lora, prune_lora

__all__ = ["RunInterrupted", "RunResult", "TrainingError", "build_model", "finish", "fit", "resume_run", "run", "setup"]


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    losses: list[float]
    eval_loss: float | None
    status: str
    summary: dict = field(default_factory=dict)
    note: str = ""  # e.g. why nothing was done


@dataclass
class Run:
    """Everything a run carries from setup to finish (the loop's state, with names)."""

    config: TrainConfig
    config_yaml: str
    accelerator: Any
    tokenizer: Any
    data: TrainData
    units: list
    categories: list[str] | None  # per unit, when a curriculum draws on them
    total_steps: int
    objective: Any
    state: TrainState
    plan: Any
    recovery: Recovery
    faults: FaultInjector
    bus: EventBus = field(default_factory=EventBus)
    metrics: MetricsWriter | None = None  # the observers are attached once a resume has trimmed the logs
    events: EventsWriter | None = None
    view: Any = None
    monitor: Any = None
    penalty: Any = None
    phase_index: int = -1
    elapsed_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    losses: list[float] = field(default_factory=list)
    status: str = "completed"
    byte_lengths: list[int] | None = None  # per token id, for bits per byte on plain-text eval sets

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def last_check(self):
        return self.monitor.last if self.monitor is not None else None

    def regime_compute_share(self) -> float:
        """Share of each micro-batch trained on (recovery.regime_compute; 1.0 when off or unchecked)."""
        check = self.last_check()
        return self.config.recovery.regime_compute.share(check.regime if check is not None else None)


def run(config: TrainConfig, *, resume: bool = False, on_step=None) -> RunResult:
    """Train according to ``config``; with ``resume`` continue the run in ``config.run_dir`` exactly.

    ``on_step(step, metrics)`` is called after every applied optimizer step (tests use it to
    interrupt a run).
    """
    r = setup(config, resume=resume)
    try:
        with r.view, TerminateAsInterrupt():
            fit(r, on_step=on_step)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (turned into one above)
        raise _interrupted(r) from None
    return finish(r)


def resume_run(run_dir: str | Path, on_step=None) -> RunResult:
    """Continue a run from its last checkpoint, with its own saved config.

    A run that already completed is left as it is (its results, report and index row are
    kept): the result says so in ``note``.
    """
    run_dir = Path(run_dir)
    finished = _completed(run_dir)
    if finished is not None:
        return finished
    config = load_train_config(run_dir / "config.yaml")
    if config.run_dir.resolve() != run_dir.resolve():
        # The run was moved: keep its name, point output_dir at where it is now.
        config = config.model_copy(update={"output_dir": str(run_dir.parent), "name": run_dir.name})
    return run(config, resume=True, on_step=on_step)


# =========================================================================== setup


def setup(config: TrainConfig, *, resume: bool = False) -> Run:
    """Everything before the first step. Data and curriculum errors surface before the model loads."""
    import torch
    from accelerate import Accelerator

    from slmlab.models import load_tokenizer

    _check_trackers(config.trackers)
    _check_inputs(config)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=config.trackers or None,
                              project_dir=str(config.run_dir))
    created = _claim_run_dir(config, accelerator, resume)
    objective = build_objective(config.objective)
    try:
        # Data first: a bad dataset must fail before a model is loaded. The main process
        # generates first; the others regenerate the same bytes (generation is deterministic).
        tokenizer = load_tokenizer(config.model)
        with accelerator.main_process_first():
            data = prepare_data(config, config.run_dir, tokenizer, objective)
        unit_list = units(data.train, objective.unit_size)
        categories = _checked_categories(config, unit_list, data.categories)
    except SlmlabError:
        if created and accelerator.is_main_process:  # nothing was claimed: leave no empty run folder
            shutil.rmtree(config.run_dir, ignore_errors=True)
        raise
    world = accelerator.num_processes
    per_epoch = DataPlan(unit_list, config.batch_size, config.grad_accum, world, config.seed).steps_per_epoch
    # As in transformers: max_steps, when given, overrides epochs (the data cycles).
    total_steps = config.max_steps or math.ceil(config.epochs * per_epoch)
    plan = make_plan(config, unit_list, categories, total_steps, world, reshuffles=0)
    config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    # Only now is it a run: an error above leaves no config.yaml, so the same command works again.
    if accelerator.is_main_process and not resume:
        atomic_write_text(config.run_dir / "config.yaml", config_yaml)

    state, tokenizer = _build_state(config, accelerator, total_steps)
    recovery = Recovery(config.recovery, config.watch.every, RollbackTargets(config.run_dir, accelerator))
    r = Run(config, config_yaml, accelerator, tokenizer, data, unit_list, categories, total_steps, objective, state,
            plan, recovery, FaultInjector(config.inject))
    resumed = _restore(r, resume)
    _attach_observers(r, resumed)
    if config.trackers:
        # Trackers take flat scalar hyper-parameters (TensorBoard's add_hparams refuses nested values).
        accelerator.init_trackers(config.name, config=flat_hparams(config.model_dump(mode="json")))
    if r.main:
        record_run(config.run_dir, name=config.name, status="running", model=config.model,
                   objective=config.objective.kind, config_yaml=config_yaml, step=state.step)
    r.started = time.perf_counter()  # elapsed counts training time (plus what a resumed run had)
    return r


def _check_inputs(config: TrainConfig) -> None:
    """Every input path exists before anything (tokenizer, model) is loaded."""
    for key, value in (("data.train", config.data.train), ("data.eval", config.data.eval)):
        if value is not None and not Path(value).exists():  # a file, or a datasets.save_to_disk directory
            raise TrainingError(f"{key}: {value}: no such file or directory")


def _claim_run_dir(config: TrainConfig, accelerator, resume: bool) -> bool:
    """Check the run dir may be used and create it; returns whether this call created it."""
    run_dir = config.run_dir
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise TrainingError(f"{run_dir}: nothing to resume (no config.yaml)")
    elif (run_dir / "config.yaml").exists():
        raise TrainingError(f"{run_dir} already holds a run; resume it with --resume {run_dir} or choose another name")
    created = not run_dir.exists()
    accelerator.wait_for_everyone()  # every process has checked before the main one writes
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    return created


def _checked_categories(config: TrainConfig, unit_list: list, record_categories: list[str]) -> list[str] | None:
    if not config.curriculum:
        return None
    from slmlab.train.curriculum import validate_against

    categories = unit_categories(unit_list, record_categories)
    try:
        validate_against(config.curriculum, Counter(categories))
    except ValueError as exc:
        raise TrainingError(f"curriculum: {exc}") from None
    return categories


def make_plan(config: TrainConfig, unit_list: list, categories: list[str] | None, total_steps: int, world: int,
              reshuffles: int):
    """The data plan; a perturb (mushroom) reshuffle gives the permutations a new seed from then on."""
    seed = config.seed if reshuffles == 0 else config.seed * 1_000_003 + reshuffles
    if categories is None:
        return DataPlan(unit_list, config.batch_size, config.grad_accum, world, seed)
    from slmlab.train.curriculum import CurriculumPlan

    try:
        return CurriculumPlan(unit_list, categories, config.curriculum, total_steps, config.batch_size,
                              config.grad_accum, world, seed)
    except ValueError as exc:
        raise TrainingError(f"curriculum: {exc}") from None


def build_model(config: TrainConfig):
    """The model named by ``config.model`` with a fresh LoRA adapter (or every weight trainable)."""
    from slmlab.models import load
    from slmlab.train.dropout import use_fast_dropout

    model, tokenizer = load(config.model, seed=config.seed)
    if config.adapter.kind == "lora":
        from peft import LoraConfig, get_peft_model

        a = config.adapter
        lora = LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=a.target_modules,
                          layers_to_transform=a.layers, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        use_fast_dropout(model)  # same distribution as PEFT's nn.Dropout, a quarter of the RNG draws on CPU
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    return model, tokenizer


def _build_state(config: TrainConfig, accelerator, total_steps: int) -> tuple[TrainState, Any]:
    import torch

    from slmlab.train.objectives.base import SupervisedLM
    from slmlab.train.optim import build_optimizer

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model, tokenizer = build_model(config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    o, s = config.optimizer, config.schedule
    optimizer = build_optimizer(o.name, trainable, lr=o.lr, weight_decay=o.weight_decay, model=model, **o.kwargs)
    scheduler = lr_schedule(optimizer, s.kind, total_steps, s.warmup_steps, s.min_lr_ratio)
    # DDP must see the forward that produces the loss, so the wrapper is what accelerate prepares.
    lm, optimizer = accelerator.prepare(SupervisedLM(model), optimizer)
    state = TrainState(model, optimizer, scheduler, adapter=config.adapter.kind, max_grad_norm=config.max_grad_norm,
                       accelerator=accelerator, lm=lm, trainable=trainable)
    return state, tokenizer


def _restore(r: Run, resume: bool) -> dict:
    """Resume from the last checkpoint (state, recovery memory, logs trimmed to match), or start clean."""
    metrics_path, events_path = r.run_dir / "metrics.jsonl", r.run_dir / "events.jsonl"
    ckpt = latest_checkpoint(r.run_dir) if resume else None
    if ckpt is None:
        if r.main:  # a fresh start (or a resume with nothing saved yet) starts fresh logs
            if resume:
                err_console.print(f"resuming {r.run_dir}: no checkpoint yet, starting from step 0")
            metrics_path.unlink(missing_ok=True)
            events_path.unlink(missing_ok=True)
        return {}
    saved = load_checkpoint(ckpt, r.state)
    if r.main:
        err_console.print(f"resuming {r.run_dir} from step {r.state.step} ({ckpt.name}) of {r.total_steps}")
    r.elapsed_before = saved["elapsed"]
    r.recovery.load(saved)
    # The rate of the next step from the config's schedule (identical to the saved one unless the
    # config asks for a different length now).
    r.state.set_lr(r.recovery.lr_multiplier(r.state.step))
    r.faults = FaultInjector(r.config.inject, saved.get("fired", []))
    r.phase_index = saved.get("phase_index", -1)
    if saved.get("reshuffles"):
        r.plan = make_plan(r.config, r.units, r.categories, r.total_steps, r.state.world, saved["reshuffles"])
    if r.main:
        lines = saved.get("log_lines")
        if lines is not None:  # exactly what had been written when the checkpoint was taken
            truncate_lines(metrics_path, lines["metrics"])
            truncate_lines(events_path, lines["events"])
        else:
            trim_to_step(metrics_path, r.state.step, keep_rolled_back=True)
            trim_to_step(events_path, r.state.step)
    return saved


def _attach_observers(r: Run, resumed: dict) -> None:
    """The event stream: the log writers, the live view and the health monitor listen."""
    from slmlab.watch.health import HealthMonitor
    from slmlab.watch.progress import live_view

    r.accelerator.wait_for_everyone()  # the main process has trimmed the logs
    r.bus.counts = count_kinds(r.run_dir / "events.jsonl") if resumed else {}
    r.metrics = MetricsWriter(r.run_dir / "metrics.jsonl", enabled=r.main)
    r.events = EventsWriter(r.run_dir / "events.jsonl", enabled=r.main)
    w = r.config.watch
    r.view = live_view(r.config.name, w.dashboard, r.total_steps, r.state.step, r.main, w.progress_seconds)
    for observer in (r.metrics, r.events, r.view):
        r.bus.subscribe(observer)
    if r.config.watch.enabled:
        r.monitor = HealthMonitor(r.state.model, r.tokenizer, r.config.watch, r.bus, device=r.accelerator.device)
        if resumed.get("monitor"):
            r.monitor.load(resumed["monitor"])
    if r.config.experimental.basin_loss.enabled:
        from slmlab.train.penalty import BasinPenalty

        r.penalty = BasinPenalty(r.state.model, r.config.experimental.basin_loss)


# =========================================================================== fit


def fit(r: Run, on_step=None) -> None:
    """The loop. Each pass takes one optimizer step (or skips one, or rolls back, or stops)."""
    config, state, recovery, bus = r.config, r.state, r.recovery, r.bus
    budget = config.time_budget_seconds
    while state.step < r.total_steps:
        cursor = recovery.cursor(state.step)  # which data: the step + skipped windows, or a replay
        _announce_phase(r, cursor.position)
        faults = r.faults.due(state.step + 1, cursor.position + 1)
        started = time.perf_counter()
        batch = _step_batch(r, cursor.position, poison="poison" in faults)
        nan = float("nan") if "nan" in faults else 1.0
        result = forward_backward(state, batch, r.objective, penalty=r.penalty, loss_multiplier=nan)
        # Recovery looks at the loss and gradient norm before the update is applied.
        decision = recovery.on_step(state.step + 1, result.loss, result.grad_norm)
        if decision.action != "apply":
            state.optimizer.zero_grad(set_to_none=True)
            if _bad_step(r, decision, result, cursor, batch):
                break
            continue
        result = optimizer_step(state, result, lr_factor=faults.get("lr_spike", 1.0))
        _advance(r, cursor)
        r.losses.append(result.loss)
        metrics = _metrics(r, result, time.perf_counter() - started, cursor.replaying)
        step = state.step
        if config.eval_every and step % config.eval_every == 0:
            metrics["eval_loss"] = evaluate(r)
            extra = {"eval_bpb": bpb} if (bpb := evaluate_bpb(r)) is not None else {}
            metrics.update(extra)
            bus.publish("eval", step, eval_loss=metrics["eval_loss"], **extra)
        if step % config.log_every == 0 or step == r.total_steps:
            bus.publish("step", step, **metrics)
            if config.trackers and r.main:
                r.accelerator.log({k: v for k, v in metrics.items() if v is not None}, step=step)
        check = r.monitor.check(step) if r.monitor is not None else None
        if check is not None and r.config.trackers and r.main:
            health = {f"health/{k}": v for k, v in check.metrics.items() if isinstance(v, (int, float))}
            r.accelerator.log({**health, "health/phi": check.phi}, step=step)
        if check is not None and (health := recovery.on_health(step, check, cursor.fresh)) is not None:
            outcome = _carry_out(r, health, cursor.fresh)
            if outcome == "rolled_back":
                continue
            if outcome == "stop":
                break
        # After this step's health check: damage it reveals must not confirm the checkpoint before it.
        if recovery.healthy(r.last_check()):
            _confirm_checkpoints(r)
        # Every process must agree, or one would stop (and wait in save) while another trains on.
        out_of_time = budget is not None and reduce_sum(state, float(metrics["elapsed"] >= budget)) > 0
        if (config.save_every and step % config.save_every == 0) or out_of_time or step == r.total_steps:
            save(r, candidate=recovery.checkpoint_candidate(r.last_check()))
        if on_step is not None:
            on_step(step, metrics)
        if out_of_time and step < r.total_steps:
            r.status = "stopped: time budget"
            break


def _advance(r: Run, cursor) -> None:
    """After a step (applied or skipped): the data cursor moves, the next LR is the schedule × recovery's factor."""
    r.recovery.advance(cursor)
    r.state.set_lr(r.recovery.lr_multiplier(r.state.step))


def _announce_phase(r: Run, position: int) -> None:
    if r.categories is None:
        return
    k, phase = r.plan.phase_at(position)
    if k != r.phase_index:
        r.phase_index = k
        r.bus.publish("phase", r.state.step, index=k, name=phase.name, mix=phase.shares, data_position=position)


def _step_batch(r: Run, position: int, poison: bool) -> StepBatch:
    """This process's micro-batches of the step at data ``position`` (with injected random ids if poisoned)."""
    import torch

    c, acc = r.config, r.accelerator
    step_units = regime_share(r.plan.step_micro_batches(position), r.regime_compute_share())
    batch = StepBatch.from_units(step_units, r.objective, max_length=c.data.max_length,
                                 packing=c.data.packing, pad_id=r.pad_id, frozen=c.context_frozen,
                                 rank=acc.process_index, world=acc.num_processes)
    if poison:
        for mb in batch.micro_batches:
            g = torch.Generator().manual_seed(position)
            mb["input_ids"] = torch.randint(0, len(r.tokenizer), mb["input_ids"].shape, generator=g)
    return batch.to(acc.device)


def regime_share(step_units: list[list], share: float) -> list[list]:
    """The first ``share`` of each micro-batch's units (at least one each): regime-scaled compute."""
    if share >= 1.0:
        return step_units
    return [mb[:max(1, math.ceil(share * len(mb)))] for mb in step_units]


def _metrics(r: Run, result: StepResult, seconds: float, replaying: bool) -> dict:
    metrics = {"loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm, "tokens": r.state.tokens_seen,
               "tokens_per_s": result.tokens / seconds if seconds else None, "elapsed": r.elapsed()}
    if r.penalty is not None:
        metrics["basin_penalty"] = result.penalty
    if replaying:
        metrics["replay"] = True
    if (share := r.regime_compute_share()) < 1.0:
        metrics["batch_share"] = share
    return metrics


def evaluate(r: Run) -> float | None:
    """Mean held-out loss per token (SFT) or per pair (preferences); ``None`` without an eval set."""
    import torch

    if not r.data.evals:
        return None
    c, lm = r.config, r.state.lm
    eval_units = units(r.data.evals, r.objective.unit_size)
    total, norm = 0.0, 0.0
    was_training = lm.training
    lm.eval()
    with torch.no_grad():
        for i in range(0, len(eval_units), c.batch_size):
            batch = make_batch(eval_units[i:i + c.batch_size], c.data.max_length, c.data.packing, r.pad_id)
            parts = r.objective.loss(lm, {k: v.to(r.state.device) for k, v in batch.items()})
            total += parts.total.item()
            norm += parts.normaliser
    lm.train(was_training)
    return total / norm if norm else None


def evaluate_bpb(r: Run) -> float | None:
    """Held-out bits per byte (slmlab.kernel.bpb) when the eval set is plain text; ``None`` otherwise."""
    if r.data.eval_shape != "language-modelling" or not r.data.evals:
        return None
    from slmlab.kernel.bpb import bits_per_byte_examples, token_byte_lengths

    if r.byte_lengths is None:
        r.byte_lengths = token_byte_lengths(r.tokenizer)
    return bits_per_byte_examples(r.state.model, r.data.evals, r.byte_lengths, batch_size=r.config.batch_size).bpb


# --------------------------------------------------------------------------- carrying out decisions


def _bad_step(r: Run, decision: Decision, result: StepResult, cursor, batch: StepBatch) -> bool:
    """A step recovery did not let through: fail, pause, roll back or skip. Returns True to stop."""
    state = r.state
    if decision.action == "fail":
        raise TrainingError(f"step {state.step}: {decision.reason}; examples in this step: {batch.example_ids[:32]}")
    r.bus.publish("detection", state.step + 1, data_position=cursor.position, **decision.detection)
    if decision.action == "pause":
        _pause(r, decision)
        return True
    if decision.action == "rollback":
        faulty = {"loss": result.loss, "grad_norm": result.grad_norm, "lr": state.lr, "detected": decision.detector}
        rollback(r, decision, cursor.fresh, faulty)
        return False
    skipped = skip_step(state, result)  # the batch is consumed, nothing is applied
    _advance(r, cursor)
    r.bus.publish("skip", state.step, **decision.event)
    r.losses.append(result.loss)
    r.bus.publish("step", state.step, loss=result.loss, grad_norm=result.grad_norm, lr=skipped.lr, skipped=True)
    if state.step == r.total_steps:
        save(r, candidate=False)
    return False


def _carry_out(r: Run, decision: Decision, fresh: int) -> str | None:
    """A health decision: ``"rolled_back"``, ``"stop"`` (paused), or None (go on)."""
    state, action = r.state, decision.action
    r.bus.publish("detection", state.step, **decision.detection)
    if action is None:
        return None
    if action == "pause":
        _pause(r, decision)
        return "stop"
    if action in ("rollback", "prune"):
        rollback(r, decision, fresh)
        return "rolled_back"
    if action == "perturb":
        lora = r.config.adapter.kind == "lora"
        kick = perturb_lora(state.model, r.config.recovery.mushroom.noise,
                            seed=r.config.seed * 1_000_003 + state.step) if lora else {"weights": 0}
        r.plan = make_plan(r.config, r.units, r.categories, r.total_steps, state.world, r.recovery.reshuffles)
        r.bus.publish(EVENT_KINDS["perturb"], state.step, **decision.event, **kick)
        return None
    state.set_lr(r.recovery.lr_multiplier(state.step))  # cooldown or replay: a new LR factor
    r.bus.publish(EVENT_KINDS.get(action, action), state.step, **decision.event)
    return None


def _pause(r: Run, decision: Decision) -> None:
    r.bus.publish("pause", r.state.step, **decision.event)
    r.status = f"paused: {decision.reason}"


def rollback(r: Run, decision: Decision, position: int, faulty: dict | None = None) -> None:
    """Back to ``decision.target`` (the last healthy checkpoint), past the data that led here, LR backed off.

    ``faulty``: the metrics of the step that fired, logged first (then marked rolled back) so
    that the spike stays visible in metrics.jsonl and the report. The restored state is saved
    again at once (after a prune) and the abandoned branch's checkpoints are deleted, so a kill
    right after a rollback resumes past the fault.
    """
    state = r.state
    if faulty is not None:
        r.bus.publish("step", state.step + 1, **faulty)
    # The checkpoint's scheduler carries its own base lrs; back off from the current ones so cuts compound.
    current_base = list(state.scheduler.base_lrs)
    saved = load_checkpoint(decision.target, state)
    event = r.recovery.rolled_back(saved, position)
    state.scheduler.base_lrs = [lr * r.config.recovery.lr_backoff for lr in current_base]
    state.set_lr(r.recovery.lr_multiplier(state.step))
    if r.main:
        mark_rolled_back(r.run_dir / "metrics.jsonl", state.step)
    r.bus.publish("rollback", state.step, checkpoint=Path(decision.target).name, **event, reason=decision.reason)
    if decision.action == "prune":
        lora = r.config.adapter.kind == "lora"
        pruned = prune_lora(state.model, r.config.recovery.deep_sleep.prune_fraction) if lora else {"layers": 0}
        r.bus.publish(EVENT_KINDS["prune"], state.step, **decision.event, **pruned)
    if r.main:
        discard_checkpoints_after(r.run_dir, state.step)
    save(r, candidate=True, confirmed=True)


def save(r: Run, candidate: bool, confirmed: bool = False) -> None:
    """Checkpoint; a ``candidate`` (taken while healthy) becomes a rollback target once confirmed.

    Everything a resumed run needs to decide exactly as this one would is saved with it: the
    recovery memory, the monitor's, the fired injections and how many log lines existed (the
    checkpoint event included).
    """
    state, rec = r.state, r.config.recovery
    healthy = r.recovery.on_checkpoint(state.step, candidate, confirmed=confirmed)
    info = {"elapsed": r.elapsed(), "healthy": healthy,
            "monitor": r.monitor.state() if r.monitor is not None else None, "fired": r.faults.state(),
            "log_lines": {"metrics": r.metrics.lines, "events": r.events.lines + 1},
            "phase_index": r.phase_index, **r.recovery.state()}
    r.accelerator.wait_for_everyone()
    if r.main:
        path = save_checkpoint(r.run_dir, state, info=info, keep=r.config.keep_checkpoints,
                               keep_healthy=rec.keep_healthy if rec.enabled else 0)
        r.bus.publish("checkpoint", state.step, path=str(path.relative_to(r.run_dir)), healthy=healthy)
    r.accelerator.wait_for_everyone()


def _confirm_checkpoints(r: Run) -> None:
    for ckpt_step in r.recovery.confirmable(r.state.step):
        path = r.run_dir / "checkpoints" / f"step-{ckpt_step}"
        if r.main and path.is_dir():
            mark_healthy(path)
            r.bus.publish("checkpoint_confirmed", r.state.step, path=str(path.relative_to(r.run_dir)),
                          checkpoint_step=ckpt_step)


# =========================================================================== interruption and completed runs


class TerminateAsInterrupt:
    """While active (main thread only), SIGTERM raises KeyboardInterrupt, so a terminated run ends as a Ctrl-C does."""

    def __enter__(self) -> TerminateAsInterrupt:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc) -> bool:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _interrupted(r: Run) -> RunInterrupted:
    """Record the run as interrupted at its last checkpoint (results.json, runs index); the error says how to resume."""
    ckpt = latest_checkpoint(r.run_dir)
    step = int(ckpt.name.split("-")[1]) if ckpt is not None else 0
    command = f"slmlab train --resume {r.run_dir}"
    if r.main:
        summary = {"run": {"name": r.config.name, "model": r.config.model, "status": "interrupted", "steps": step,
                           "total_steps": r.total_steps, "interrupted_at_step": r.state.step, "resume": command}}
        write_json(r.run_dir / "results.json", summary)
        record_run(r.run_dir, name=r.config.name, status="interrupted", model=r.config.model,
                   objective=r.config.objective.kind, config_yaml=r.config_yaml, step=step, summary=summary)
    lost = f"; steps {step + 1}-{r.state.step} were not checkpointed and will be retrained" if r.state.step > step else ""
    return RunInterrupted(f"{r.run_dir}: interrupted at step {r.state.step}; last checkpoint step {step}{lost}. "
                          f"Resume with: {command}")


def _completed(run_dir: Path) -> RunResult | None:
    """The record of a run that already completed, or None (a resume then continues it)."""
    from slmlab.io import read_json

    path = run_dir / "results.json"
    if not path.is_file():
        return None
    summary = read_json(path)
    run_info, train = summary.get("run", {}), summary.get("train", {})
    if run_info.get("status") != "completed":
        return None
    steps = run_info.get("steps", 0)
    note = f"nothing to resume: {run_dir} already completed {steps} steps; its results are kept"
    return RunResult(run_dir, steps, [], train.get("eval_loss"), "completed", summary, note=note)


# =========================================================================== finish


def finish(r: Run) -> RunResult:
    """Final eval, weights, results.json, report and runs index (main process); trackers closed."""
    from slmlab.train.optim import optimizer_state_bytes
    from slmlab.train.record import finite, peak_rss_mb, save_final, versions, watch_summary

    state, c = r.state, r.config
    eval_loss, eval_bpb = evaluate(r), evaluate_bpb(r)
    summary: dict = {}
    if r.main:
        save_final(r.run_dir, state.model, r.tokenizer, c.adapter.kind)
        stats = r.data.stats
        summary = {
            "run": {"name": c.name, "model": c.model, "status": r.status, "steps": state.step, "total_steps": r.total_steps},
            "train": {"final_loss": finite(r.losses[-1]) if r.losses else None, "eval_loss": eval_loss,
                      **({"eval_bpb": eval_bpb} if eval_bpb is not None else {}), "tokens_seen": state.tokens_seen, "examples": len(r.data.train), "elapsed_s": r.elapsed(),
                      "truncated_prompts": stats.prompt_truncated, "truncated_completions": stats.completion_truncated,
                      "dropped_examples": stats.dropped, "refused_examples": getattr(stats, "refused", 0),
                      "data_shape": getattr(r.data, "shape", None)},
            "memory": {"peak_rss_mb": peak_rss_mb(), "optimizer_state_bytes": optimizer_state_bytes(state.optimizer),
                       "trainable_params": sum(p.numel() for p in state.trainable)},
            "recovery": {**{f"{k}s": r.bus.counts.get(k, 0) for k in ("detection", *ACTION_KINDS)},
                         "data_offset": r.recovery.data_offset, "reshuffles": r.recovery.reshuffles},
            "watch": watch_summary(r.monitor),
            "versions": versions(),
        }
        write_json(r.run_dir / "results.json", summary)
        _write_report(r.run_dir)
        record_run(r.run_dir, name=c.name, status=r.status, model=c.model, objective=c.objective.kind,
                   config_yaml=r.config_yaml, step=state.step, final_loss=r.losses[-1] if r.losses else None,
                   eval_loss=eval_loss, summary=summary)
    if c.trackers:
        r.accelerator.end_training()
    return RunResult(r.run_dir, state.step, r.losses, eval_loss, r.status, summary)


def _write_report(run_dir: Path) -> None:
    try:
        from slmlab.watch.run_report import write_run_report

        write_run_report(run_dir)
    except Exception as exc:  # the run is saved; a report failure must not hide that
        err_console.print(f"[yellow]warning:[/yellow] could not write {run_dir}/report.html: {exc}")


def flat_hparams(data: dict) -> dict:
    """``{"adapter": {"r": 4}}`` → ``{"adapter.r": 4}``; lists and None become JSON text."""
    import json

    from slmlab.config import flatten_dotted

    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in flatten_dotted(data).items()}


def _check_trackers(trackers: list[str]) -> None:
    import importlib.util

    from slmlab.train.config import TRACKERS

    missing = [t for t in trackers if importlib.util.find_spec(TRACKERS[t]) is None]
    if missing:
        raise TrainingError(f"tracker(s) not installed: {', '.join(missing)}. Install with: pip install {' '.join(missing)}")
