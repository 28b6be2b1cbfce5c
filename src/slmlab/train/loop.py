"""The training loop: one function that reads top to bottom.

    setup: validate config → build data (before the model loads) → model + adapter
           → optimizer + schedule → accelerator → resume if asked
    loop:  lr → micro-batches of this step → count supervised units over the whole step
           → forward/backward each (loss sum / step count) → clip → step → log
           → eval / checkpoint / time budget

The loss of an optimizer step is normalised by the number of supervised tokens (or
preference pairs) in the *whole accumulated step*, summed across processes; so
batch 8 × accumulation 1 and batch 2 × accumulation 4 give the same gradient.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from contextlib import nullcontext
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from slmlab.data.formats import atomic_write_text, iter_jsonl
from slmlab.console import err_console
from slmlab.errors import SlmlabError
from slmlab.runs import record_run, write_json
from slmlab.train.batching import EncodeStats, Encoded, collate, collate_frozen, encode_pairs, pack
from slmlab.train.checkpoint import (
    discard_checkpoints_after,
    latest_checkpoint,
    load_checkpoint,
    mark_healthy,
    save_checkpoint,
)
from slmlab.train.config import TrainConfig, load_train_config
from slmlab.train.objectives import OBJECTIVES, SupervisedLM
from slmlab.watch.events import ACTION_KINDS, EventBus, EventsWriter, MetricsWriter, truncate_lines
from slmlab.watch.health import HealthMonitor
from slmlab.watch.recovery import HealthPolicy, Injection, SpikeDetector, cooldown_factor, perturb_lora, prune_lora


class TrainingError(SlmlabError):
    """The run cannot go on (NaN loss, empty data, …); the message says where and why."""


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    losses: list[float]
    eval_loss: float | None
    status: str
    summary: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- data


def _records_to_pairs(records: list[dict], default_format: str, tokenizer, where: str) -> list[tuple[str, str]]:
    from slmlab.data.roles import load_template, render

    cache: dict[str, object] = {}
    pairs = []
    for i, rec in enumerate(records):
        name = rec.get("role") or rec.get("format") or default_format
        if name not in cache:
            cache[name] = load_template(name)
        for key in ("input", "output"):
            if not isinstance(rec.get(key), str):
                raise TrainingError(f"{where}: record {i + 1} has no string field {key!r}")
        pairs.append(render(rec, cache[name], tokenizer))
    return pairs


def _preference_pairs(records: list[dict], default_format: str, tokenizer, where: str) -> list[tuple[str, str]]:
    """Pair k becomes examples 2k (prompt, chosen) and 2k+1 (prompt, rejected)."""
    out = []
    for i, rec in enumerate(records):
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(rec.get(key), str):
                raise TrainingError(f"{where}: preference record {i + 1} needs string fields prompt, chosen, rejected (missing {key!r})")
        for answer in (rec["chosen"], rec["rejected"]):
            out += _records_to_pairs([{**rec, "input": rec["prompt"], "output": answer}], default_format, tokenizer, where)
    return out


def _load_records(path: Path) -> list[dict]:
    return [line.record for line in iter_jsonl(path)]


def prepare_data(config: TrainConfig, run_dir: Path, tokenizer) -> tuple[list[Encoded], list[Encoded], EncodeStats, list[str]]:
    """Build, render and tokenize the data; every data error surfaces here, before the model loads.

    Also returns each training record's category (``category`` field, else ``"default"``),
    which a curriculum draws on.
    """
    if config.data.recipe:
        from slmlab.data.recipes import generate_dataset

        ds = generate_dataset(config.data.recipe, run_dir / "data", count=config.data.count, seed=config.seed)
        train_recs, eval_recs = ds.train, ds.test
        where = f"recipe {config.data.recipe}"
    else:
        train_recs = _load_records(Path(config.data.train))
        eval_recs = _load_records(Path(config.data.eval)) if config.data.eval else []
        where = config.data.train
    if not train_recs:
        raise TrainingError(f"{where}: the training data is empty")
    to_pairs = _records_to_pairs if config.objective.kind == "sft" else _preference_pairs
    train_pairs = to_pairs(train_recs, config.data.format, tokenizer, where)
    eval_pairs = to_pairs(eval_recs, config.data.format, tokenizer, where) if eval_recs else []
    train, stats = encode_pairs(train_pairs, tokenizer, config.data.max_length, config.data.truncation)
    evals, _ = encode_pairs(eval_pairs, tokenizer, config.data.max_length, config.data.truncation)
    if config.objective.kind != "sft":
        train, evals = _complete_pairs(train), _complete_pairs(evals)
    if not train:
        raise TrainingError(
            f"{where}: all {stats.total} examples were dropped: none fits max_length={config.data.max_length} "
            f"with its completion (truncation={config.data.truncation!r}). Raise data.max_length."
        )
    categories = [str(r.get("category") or "default") for r in train_recs]
    return train, evals, stats, categories


def _complete_pairs(examples: list[Encoded]) -> list[Encoded]:
    """Drop preference pairs that lost one side to truncation."""
    present = {e.index for e in examples}
    return [e for e in examples if (e.index ^ 1) in present]


def _unit_categories(units: list[list[Encoded]], record_categories: list[str]) -> list[str]:
    """Category of each scheduling unit (a preference pair's examples 2k, 2k+1 come from record k)."""
    per_example = len(units[0]) if units else 1
    return [record_categories[u[0].index // per_example] for u in units]


def _units(examples: list[Encoded], objective: str) -> list[list[Encoded]]:
    """Scheduling units: single examples for SFT, (chosen, rejected) pairs for preferences."""
    if objective == "sft":
        return [[e] for e in examples]
    by_index = {e.index: e for e in examples}
    return [[by_index[i], by_index[i + 1]] for i in sorted(by_index) if i % 2 == 0]


class DataPlan:
    """Which units each optimizer step sees: a seeded permutation per epoch, so any step can be recomputed.

    That is what makes resume exact: the data position is just the step number.
    """

    def __init__(self, units: list[list[Encoded]], batch_size: int, grad_accum: int, world: int, seed: int):
        self.units, self.batch_size, self.grad_accum, self.world, self.seed = units, batch_size, grad_accum, world, seed
        self.per_step = batch_size * grad_accum * world
        # With several processes a partial last step could leave a process without a
        # micro-batch (it would then wait forever in the all-reduce): drop it, as drop_last does.
        steps = len(units) / self.per_step
        self.steps_per_epoch = max(1, math.floor(steps) if world > 1 else math.ceil(steps))
        self._perm_epoch, self._perm = -1, []

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            order = list(range(len(self.units)))
            random.Random(f"{self.seed}:epoch:{epoch}").shuffle(order)
            self._perm_epoch, self._perm = epoch, order
        return self._perm

    def step_micro_batches(self, step: int) -> list[list[list[Encoded]]]:
        """All micro-batches (lists of units) of ``step`` across every process, in order."""
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        chosen = [self.units[i] for i in perm[k * self.per_step : (k + 1) * self.per_step]]
        return [chosen[i : i + self.batch_size] for i in range(0, len(chosen), self.batch_size)]


def _batch(units: list[list[Encoded]], max_length: int, packing: bool, pad_id: int, frozen: bool = False) -> dict:
    examples = [e for u in units for e in u]
    if frozen:
        return collate_frozen(examples, pad_id)
    return collate(pack(examples, max_length, packing), pad_id)


# --------------------------------------------------------------------------- model


def build_model(config: TrainConfig):
    from slmlab.models import load

    model, tokenizer = load(config.model, seed=config.seed)
    if config.adapter.kind == "lora":
        from peft import LoraConfig, get_peft_model

        a = config.adapter
        lora = LoraConfig(
            r=a.r,
            lora_alpha=a.alpha,
            lora_dropout=a.dropout,
            target_modules=a.target_modules,
            layers_to_transform=a.layers,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    return model, tokenizer


def make_schedule(optimizer, config: TrainConfig, total_steps: int):
    import torch

    s = config.schedule

    def factor(step: int) -> float:
        if step < s.warmup_steps:
            return (step + 1) / (s.warmup_steps + 1)
        if s.kind == "constant":
            return 1.0
        progress = (step - s.warmup_steps) / max(1, total_steps - s.warmup_steps)
        progress = min(1.0, progress)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if s.kind == "cosine" else 1 - progress
        return s.min_lr_ratio + (1 - s.min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------- loop


def _evaluate(model: SupervisedLM, evals: list[Encoded], config: TrainConfig, pad_id: int) -> float | None:
    """Mean held-out loss per token (SFT) or per pair (preferences)."""
    import torch

    if not evals:
        return None
    loss_fn = OBJECTIVES[config.objective.kind]
    units = _units(evals, config.objective.kind)
    total, norm = 0.0, 0.0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(units), config.batch_size):
            batch = _batch(units[i : i + config.batch_size], config.data.max_length, config.data.packing, pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            parts = _call_objective(loss_fn, model, batch, config)
            total += parts.total.item()
            norm += parts.normaliser
    model.train(was_training)
    return total / norm if norm else None


def _call_objective(loss_fn, model, batch, config: TrainConfig):
    kind = config.objective.kind
    if kind == "dpo":
        return loss_fn(model, batch, beta=config.objective.beta)
    if kind == "orpo":
        return loss_fn(model, batch, lam=config.objective.lam)
    return loss_fn(model, batch)


def _step_normaliser(micro: list[list[list[Encoded]]], objective: str) -> float:
    if objective == "sft":
        return float(sum(e.n_supervised for mb in micro for u in mb for e in u))
    return float(sum(len(mb) for mb in micro))


def run(config: TrainConfig, *, resume: bool = False, on_step=None) -> RunResult:
    """Train according to ``config``; with ``resume`` continue the run in ``config.run_dir`` exactly.

    ``on_step(step, metrics)`` is called after every optimizer step (tests use it to
    interrupt a run; the health monitor will use it to watch one).
    """
    import torch
    from accelerate import Accelerator

    from slmlab.models import load_tokenizer
    from slmlab.train.optim import build_optimizer, optimizer_state_bytes

    _check_trackers(config.trackers)
    run_dir = config.run_dir
    config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=config.trackers or None, project_dir=str(run_dir))
    world, rank = accelerator.num_processes, accelerator.process_index
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise TrainingError(f"{run_dir}: nothing to resume (no config.yaml)")
    elif (run_dir / "config.yaml").exists():
        raise TrainingError(f"{run_dir} already holds a run; resume it with --resume {run_dir} or choose another name")
    accelerator.wait_for_everyone()  # every process has checked before the main one writes
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)

    # Data first: a bad dataset must fail before a model is loaded. The main process
    # generates first; the others regenerate the same bytes (generation is deterministic).
    tokenizer = load_tokenizer(config.model)
    with accelerator.main_process_first():
        train, evals, enc_stats, train_categories = prepare_data(config, run_dir, tokenizer)
    units = _units(train, config.objective.kind)
    curriculum = None
    if config.curriculum:
        from slmlab.train.curriculum import validate_against

        categories = _unit_categories(units, train_categories)
        try:
            validate_against(config.curriculum, Counter(categories))
        except ValueError as exc:
            raise TrainingError(f"curriculum: {exc}") from None
        curriculum = config.curriculum

    def _make_plan(reshuffles: int):
        # Mushroom mode reshuffles the data: a new seed for the permutations from here on.
        seed = config.seed if reshuffles == 0 else config.seed * 1_000_003 + reshuffles
        if curriculum is not None:
            from slmlab.train.curriculum import CurriculumPlan

            try:
                return CurriculumPlan(units, categories, curriculum, total_steps, config.batch_size, config.grad_accum,
                                      world, seed)
            except ValueError as exc:
                raise TrainingError(f"curriculum: {exc}") from None
        return DataPlan(units, config.batch_size, config.grad_accum, world, seed)

    plan = DataPlan(units, config.batch_size, config.grad_accum, world, config.seed)
    # As in transformers: max_steps, when given, overrides epochs (the data cycles).
    total_steps = config.max_steps or math.ceil(config.epochs * plan.steps_per_epoch)
    plan = _make_plan(0)
    # Only now is it a run: a data or curriculum error above leaves no config.yaml, so the same
    # command works again once the input is fixed.
    if accelerator.is_main_process and not resume:
        atomic_write_text(run_dir / "config.yaml", config_yaml)

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model, tokenizer = build_model(config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt_cfg = config.optimizer
    optimizer = build_optimizer(opt_cfg.name, trainable, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay, **opt_cfg.kwargs)
    scheduler = make_schedule(optimizer, config, total_steps)
    wrapped = SupervisedLM(model)
    wrapped, optimizer = accelerator.prepare(wrapped, optimizer)
    loss_fn = OBJECTIVES[config.objective.kind]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    start_step, elapsed_before = 0, 0.0
    st = _LoopState()
    metrics_path = run_dir / "metrics.jsonl"
    events_path = run_dir / "events.jsonl"
    main = accelerator.is_main_process
    resumed_state: dict = {}
    if resume and (ckpt := latest_checkpoint(run_dir)) is not None:
        resumed_state = load_checkpoint(ckpt, model, optimizer, scheduler, adapter=config.adapter.kind)
        start_step, elapsed_before = resumed_state["step"], resumed_state["elapsed"]
        st = _LoopState.from_checkpoint(resumed_state)
        if main:
            lines = resumed_state.get("log_lines")
            if lines is not None:  # exactly what had been written when the checkpoint was taken
                truncate_lines(metrics_path, lines["metrics"])
                truncate_lines(events_path, lines["events"])
            else:
                _truncate_metrics(metrics_path, start_step)
                _trim_events(events_path, start_step)
    elif main:
        metrics_path.unlink(missing_ok=True)
        events_path.unlink(missing_ok=True)
    plan = _make_plan(st.reshuffles) if st.reshuffles else plan

    # The event stream: writers, the live view, the health monitor and the recovery policy listen.
    bus = EventBus()
    accelerator.wait_for_everyone()  # the main process has trimmed the logs
    bus.counts = _count_kinds(events_path) if resume else {}
    metrics_writer, events_writer = MetricsWriter(metrics_path, enabled=main), EventsWriter(events_path, enabled=main)
    bus.subscribe(metrics_writer)
    bus.subscribe(events_writer)
    view = _live_view(config, total_steps, start_step, main)
    bus.subscribe(view)
    watch = config.watch
    monitor = HealthMonitor(model, tokenizer, watch, bus, device=accelerator.device) if watch.enabled else None
    if monitor is not None and resumed_state.get("monitor"):
        monitor.load(resumed_state["monitor"])
    aux = _BasinAux(model, config.experimental.basin_loss) if config.experimental.basin_loss.enabled else None
    recovery = config.recovery
    policy = HealthPolicy(recovery, watch.every)
    policy.load(resumed_state.get("policy", {}))
    detector = SpikeDetector(recovery.window, recovery.z, recovery.min_history, recovery.recent_window)
    detector.load(resumed_state.get("detector", {}))
    injections = [Injection.parse(x) for x in config.inject]
    fired: set[Injection] = {Injection(k, s_, v) for k, s_, v in resumed_state.get("fired", [])}
    consecutive = resumed_state.get("consecutive", 0)
    clean_since_save = True
    # Checkpoints waiting to be confirmed healthy: damage shows one or more steps after the
    # step that did it, so a checkpoint only counts once recovery.confirm_steps clean steps follow it.
    unconfirmed: list[tuple[int, Path]] = [
        (s_, run_dir / "checkpoints" / f"step-{s_}") for s_ in resumed_state.get("unconfirmed", [])]
    if config.trackers:
        accelerator.init_trackers(config.name, config=config.model_dump(mode="json"))

    if main:
        record_run(run_dir, name=config.name, status="running", model=config.model, objective=config.objective.kind,
                   config_yaml=config_yaml, step=start_step)
    budget = config.time_budget_seconds
    t0 = time.perf_counter()
    losses: list[float] = []
    status = "completed"
    step = start_step
    phase_index = resumed_state.get("phase_index", -1)

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t0

    def set_lr() -> None:
        """The schedule's lr times the active cooldown and light-sleep multipliers."""
        mult = cooldown_factor(st.cooldown, step) * (st.replay_lr if st.replay else 1.0)
        for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * fn(scheduler.last_epoch) * mult

    def save(candidate: bool, confirmed: bool = False) -> None:
        """Checkpoint; a ``candidate`` (taken while healthy) becomes a rollback target once confirmed.

        Everything a resumed run needs to decide exactly as this one would is in the state:
        the loop state, the policy's and the monitor's memory, the spike detector's window, the
        fired injections and how many log lines existed (the checkpoint event included).
        """
        healthy = confirmed or (candidate and recovery.confirm_steps == 0)
        state = {"step": step, "elapsed": elapsed(), "healthy": healthy, "policy": policy.state(),
                 "monitor": monitor.state() if monitor is not None else None, "detector": detector.state(),
                 "consecutive": consecutive, "fired": sorted([i.kind, i.step, i.value] for i in fired),
                 "log_lines": {"metrics": metrics_writer.lines, "events": events_writer.lines + 1},
                 "unconfirmed": [s_ for s_, _ in unconfirmed] + ([step] if candidate and not healthy else []),
                 "phase_index": phase_index, **st.to_checkpoint()}
        accelerator.wait_for_everyone()
        if main:
            path = save_checkpoint(run_dir, step, model, optimizer, scheduler, adapter=config.adapter.kind, state=state,
                                   keep=config.keep_checkpoints,
                                   keep_healthy=recovery.keep_healthy if recovery.enabled else 0)
            bus.publish("checkpoint", step, path=str(path.relative_to(run_dir)), healthy=healthy)
            if candidate and not healthy:
                unconfirmed.append((step, path))
        accelerator.wait_for_everyone()

    def confirm_checkpoints() -> None:
        for item in list(unconfirmed):
            ckpt_step, path = item
            if step - ckpt_step >= recovery.confirm_steps:
                unconfirmed.remove(item)
                if path.is_dir():
                    mark_healthy(path)
                    bus.publish("checkpoint_confirmed", step, path=str(path.relative_to(run_dir)), checkpoint_step=ckpt_step)

    def rollback(position: int, reason: str, faulty: dict | None = None, before_save=None) -> bool:
        """Back to the last healthy checkpoint, past the data that led here, with the LR backed off.

        ``faulty``: the metrics of the step that fired, logged first (then marked rolled back)
        so that the spike stays visible in metrics.jsonl and the report. The restored state is
        saved again at once (after ``before_save``, e.g. deep sleep's pruning) and the abandoned
        branch's checkpoints are deleted, so a kill right after a rollback resumes past the fault.
        """
        nonlocal step, clean_since_save, consecutive
        # The main process picks (it wrote the files); every process must load the same one.
        ckpt = _broadcast_path(accelerator, latest_checkpoint(run_dir, healthy_only=True) if main else None)
        if ckpt is None:
            return False
        if faulty is not None:
            bus.publish("step", step + 1, **faulty)
        # The checkpoint's scheduler carries its own base lrs; back off from the current ones so cuts compound.
        current_base = list(scheduler.base_lrs)
        rollbacks = st.rollbacks
        state = load_checkpoint(ckpt, model, optimizer, scheduler, adapter=config.adapter.kind)
        skipped_window = [state["step"] + state.get("data_offset", 0), position]
        restored = _LoopState.from_checkpoint(state)
        step = state["step"]
        restored.rollbacks = rollbacks + 1
        restored.data_offset = position + 1 - step  # resume on the data after the faulty window
        restored.reshuffles = st.reshuffles
        st.__dict__.update(restored.__dict__)
        # The policy's escalation memory (ladder rungs, streaks) is not rolled back: it must keep escalating.
        scheduler.base_lrs = [lr * recovery.lr_backoff for lr in current_base]
        set_lr()
        detector.load(state.get("detector", {}))  # the healthy history as of the checkpoint: judge at once
        unconfirmed.clear()
        clean_since_save = True  # back on a confirmed-healthy state
        consecutive = 0
        if main:
            _mark_rolled_back(metrics_path, step)
        bus.publish("rollback", step, checkpoint=ckpt.name, skipped_data_window=skipped_window,
                    lr_factor=recovery.lr_backoff ** st.rollbacks, reason=reason)
        if before_save is not None:
            before_save()
        if main:
            discard_checkpoints_after(run_dir, step)
        save(candidate=True, confirmed=True)
        return True

    def pause(reason: str) -> str:
        bus.publish("pause", step, reason=reason)
        return f"paused: {reason}"

    def act(decision, position: int) -> str | None:
        """Carry out a health decision: 'rolled_back', a pause status (stop), or None (go on)."""
        nonlocal plan
        a, rec = decision.action, recovery
        lora = config.adapter.kind == "lora"
        if a is None:
            return None
        if a == "pause":
            return pause(f"{decision.detector} persisted for {decision.evidence.get('consecutive_breakdown_steps')} "
                         f"steps through the recovery ladder")
        if a == "cooldown":
            st.cooldown = {"start": step, "steps": rec.cooldown.steps, "factor": rec.cooldown.factor}
            set_lr()
            bus.publish("cooldown", step, detector=decision.detector, **st.cooldown)
            return None
        if a == "light_sleep":
            # Replay the data seen just before the breakdown began, at a reduced LR.
            end = max(0, position + 1 - policy.breakdown_steps)
            n = rec.light_sleep.steps
            # Only data already seen: if the breakdown began at the very start, replay what there is.
            st.replay = list(range(max(0, end - n), end)) if end > 0 else list(range(min(n, position + 1)))
            st.replay_lr = rec.light_sleep.lr_factor
            set_lr()
            bus.publish("light_sleep", step, detector=decision.detector, replay_positions=[st.replay[0], st.replay[-1]],
                        steps=len(st.replay), lr_factor=st.replay_lr)
            return None
        if a in ("rollback", "deep_sleep"):
            if st.rollbacks >= rec.max_rollbacks:
                return pause(f"{st.rollbacks} rollbacks did not clear {decision.detector} at step {step}")

            def prune() -> None:
                pruned = prune_lora(model, rec.deep_sleep.prune_fraction) if lora else {"layers": 0}
                bus.publish("deep_sleep", step, detector=decision.detector, prune_fraction=rec.deep_sleep.prune_fraction,
                            **pruned)

            if not rollback(position, decision.detector, before_save=prune if a == "deep_sleep" else None):
                return pause(f"{decision.detector} at step {step} and no healthy checkpoint to roll back to")
            return "rolled_back"
        if a == "mushroom":
            kick = perturb_lora(model, rec.mushroom.noise, seed=config.seed * 1_000_003 + step) if lora else {"weights": 0}
            st.reshuffles += 1
            plan = _make_plan(st.reshuffles)
            bus.publish("mushroom", step, detector=decision.detector, reshuffle=st.reshuffles, **kick)
            return None
        raise AssertionError(f"unhandled action {a}")

    with view:
        while step < total_steps:
            # The data position is the step plus the windows skipped by rollbacks, unless a light
            # sleep is replaying earlier data.
            replaying = bool(st.replay)
            position = st.replay[0] if replaying else step + st.data_offset
            # The last fresh (not replayed) data position consumed: what a rollback must skip past.
            fresh = step + st.data_offset - 1 if replaying else position
            if curriculum is not None:
                k, ph = plan.phase_at(position)
                if k != phase_index:
                    phase_index = k
                    bus.publish("phase", step, index=k, name=ph.name, mix=ph.shares, data_position=position)
            faults = _due_injections(injections, fired, step + 1, position + 1)
            micro = plan.step_micro_batches(position)
            norm = _step_normaliser(micro, config.objective.kind)
            mine = micro[rank::world]
            t_step = time.perf_counter()
            step_loss, step_tokens, step_aux = 0.0, 0, 0.0
            for i, mb in enumerate(mine):
                batch = _batch(mb, config.data.max_length, config.data.packing, pad_id, config.context_frozen)
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                if "poison" in faults:
                    g = torch.Generator().manual_seed(position)
                    batch["input_ids"] = torch.randint(0, len(tokenizer), batch["input_ids"].shape, generator=g).to(accelerator.device)
                ctx = accelerator.no_sync(wrapped) if i < len(mine) - 1 else nullcontext()
                with ctx, (aux.capture() if aux is not None else nullcontext()):
                    parts = _call_objective(loss_fn, wrapped, batch, config)
                    if "nan" in faults:
                        parts.total = parts.total * float("nan")
                    # DDP averages gradients over processes; multiply back so the total is sum / norm.
                    objective = parts.total * world / norm
                    if aux is not None:
                        penalty = aux.penalty(batch) / len(mine)
                        objective = objective + penalty
                        step_aux += float(penalty)
                    accelerator.backward(objective)
                step_loss += parts.total.item()
                step_tokens += int((batch["input_ids"].numel()))
            loss = _reduce_sum(accelerator, step_loss) / norm
            grad_norm = None
            if config.max_grad_norm:
                grad_norm = float(accelerator.clip_grad_norm_(trainable, config.max_grad_norm))
            detection = detector.check(loss, grad_norm, kinds=recovery.detectors)
            if detection is not None and detection.kind == "nonfinite" and not (
                    recovery.enabled and "nonfinite" in recovery.detectors):
                ids = sorted(e.index for mb in micro for u in mb for e in u)
                raise TrainingError(f"step {step}: loss is {loss}; examples in this step: {ids[:32]}")
            if detection is not None and recovery.enabled:
                consecutive += 1
                clean_since_save = False
                unconfirmed.clear()
                bus.publish("detection", step + 1, data_position=position, **detection.evidence())
                optimizer.zero_grad(set_to_none=True)
                wants_rollback = "rollback" in recovery.actions and (
                    consecutive >= recovery.rollback_after or "skip" not in recovery.actions)
                if "skip" not in recovery.actions and "rollback" not in recovery.actions:
                    status = pause(f"{detection.kind} at step {step + 1}; neither skip nor rollback is an allowed action")
                    break
                if wants_rollback and st.rollbacks >= recovery.max_rollbacks:
                    status = pause(f"{st.rollbacks} rollbacks did not clear {detection.kind} at step {step + 1}")
                    break
                if wants_rollback:
                    faulty = {"loss": loss, "grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"],
                              "detected": detection.kind}
                    if rollback(fresh, detection.kind, faulty):
                        consecutive = 0
                        continue
                    if "skip" not in recovery.actions:
                        status = pause(f"{detection.kind} at step {step + 1} and no healthy checkpoint to roll back to")
                        break
                # Skip: the batch is consumed, nothing is applied.
                lr_used = optimizer.param_groups[0]["lr"]
                scheduler.step()
                step += 1
                _advance_data(st, replaying)
                set_lr()
                bus.publish("skip", step, detector=detection.kind)
                losses.append(loss)
                bus.publish("step", step, loss=loss, grad_norm=grad_norm, lr=lr_used, skipped=True)
                if step == total_steps:
                    save(candidate=False)
                continue
            consecutive = 0
            detector.accept(loss, grad_norm)
            if "lr_spike" in faults:
                for group in optimizer.param_groups:
                    group["lr"] *= faults["lr_spike"]
            lr_used = optimizer.param_groups[0]["lr"]  # logged: the rate this step was taken with
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            _advance_data(st, replaying)
            set_lr()
            st.tokens_seen += step_tokens * world
            dt = time.perf_counter() - t_step
            losses.append(loss)
            metrics = {"loss": loss, "lr": lr_used, "grad_norm": grad_norm,
                       "tokens": st.tokens_seen, "tokens_per_s": step_tokens * world / dt if dt else None,
                       "elapsed": elapsed()}
            if aux is not None:
                metrics["basin_penalty"] = _reduce_sum(accelerator, step_aux)
            if replaying:
                metrics["replay"] = True
            if config.eval_every and step % config.eval_every == 0:
                metrics["eval_loss"] = _evaluate(wrapped, evals, config, pad_id)
                bus.publish("eval", step, eval_loss=metrics["eval_loss"])
            if step % config.log_every == 0 or step == total_steps:
                bus.publish("step", step, **metrics)
                if config.trackers and main:
                    accelerator.log({k: v for k, v in metrics.items() if v is not None}, step=step)
            check = monitor.check(step) if monitor is not None else None
            if check is not None:
                decision = policy.decide(check, cooling=cooldown_factor(st.cooldown, step) < 1)
                if decision is not None:
                    clean_since_save = False
                    unconfirmed.clear()
                    bus.publish("detection", step, detector=decision.detector, action=decision.action, **decision.evidence)
                    outcome = act(decision, fresh)
                    if outcome == "rolled_back":
                        continue
                    if outcome is not None:
                        status = outcome
                        break
            # After this step's health check: damage it reveals must not confirm the checkpoint before it.
            if main and _is_healthy(monitor, recovery):
                confirm_checkpoints()
            # Every process must agree, or one would stop (and wait in save) while another trains on.
            out_of_time = budget is not None and _reduce_sum(accelerator, float(metrics["elapsed"] >= budget)) > 0
            if (config.save_every and step % config.save_every == 0) or out_of_time or step == total_steps:
                save(candidate=clean_since_save and _is_healthy(monitor, recovery))
                clean_since_save = True
            if on_step is not None:
                on_step(step, metrics)
            if out_of_time and step < total_steps:
                status = "stopped: time budget"
                break

    eval_loss = _evaluate(wrapped, evals, config, pad_id)
    summary = {}
    if accelerator.is_main_process:
        _save_final(run_dir, model, tokenizer, config)
        summary = {
            "run": {"name": config.name, "model": config.model, "status": status, "steps": step, "total_steps": total_steps},
            "train": {"final_loss": _finite(losses[-1]) if losses else None, "eval_loss": eval_loss, "tokens_seen": st.tokens_seen,
                      "examples": len(train), "elapsed_s": elapsed(),
                      "truncated_prompts": enc_stats.prompt_truncated, "truncated_completions": enc_stats.completion_truncated,
                      "dropped_examples": enc_stats.dropped},
            "memory": {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                       "optimizer_state_bytes": optimizer_state_bytes(optimizer),
                       "trainable_params": sum(p.numel() for p in trainable)},
            "recovery": {**{f"{k}s": bus.counts.get(k, 0) for k in ("detection", *ACTION_KINDS)},
                         "data_offset": st.data_offset, "reshuffles": st.reshuffles},
            "watch": _watch_summary(monitor),
            "versions": _versions(),
        }
        write_json(run_dir / "results.json", summary)
        try:
            from slmlab.watch.run_report import write_run_report

            write_run_report(run_dir)
        except Exception as exc:  # the run is saved; a report failure must not hide that
            err_console.print(f"[yellow]warning:[/yellow] could not write {run_dir}/report.html: {exc}")
        record_run(run_dir, name=config.name, status=status, model=config.model, objective=config.objective.kind,
                   config_yaml=config_yaml, step=step, final_loss=losses[-1] if losses else None, eval_loss=eval_loss,
                   summary=summary)
    if config.trackers:
        accelerator.end_training()
    return RunResult(run_dir, step, losses, eval_loss, status, summary)


def resume_run(run_dir: str | Path, on_step=None) -> RunResult:
    """Continue a run from its last checkpoint, with its own saved config."""
    run_dir = Path(run_dir)
    config = load_train_config(run_dir / "config.yaml")
    if config.run_dir.resolve() != run_dir.resolve():
        # The run was moved: keep its name, point output_dir at where it is now.
        config = config.model_copy(update={"output_dir": str(run_dir.parent), "name": run_dir.name})
    return run(config, resume=True, on_step=on_step)


# --------------------------------------------------------------------------- helpers


def _check_trackers(trackers: list[str]) -> None:
    import importlib.util

    from slmlab.train.config import TRACKERS

    missing = [t for t in trackers if importlib.util.find_spec(TRACKERS[t]) is None]
    if missing:
        raise TrainingError(f"tracker(s) not installed: {', '.join(missing)}. Install with: pip install {' '.join(missing)}")


def _broadcast_path(accelerator, path: Path | None) -> Path | None:
    """The main process's value on every process."""
    if accelerator.num_processes == 1:
        return path
    from accelerate.utils import broadcast_object_list

    box = [str(path) if path is not None else None]
    broadcast_object_list(box, from_process=0)
    return Path(box[0]) if box[0] is not None else None


def _reduce_sum(accelerator, value: float) -> float:
    import torch

    if accelerator.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(t, reduction="sum").item())


def _append_metrics(path: Path, metrics: dict) -> None:
    import json

    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(metrics) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, forget lines logged after the checkpoint: they will be logged again (rolled-back lines stay)."""
    import json

    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and (json.loads(line)["step"] <= step or json.loads(line).get("rolled_back"))]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _mark_rolled_back(path: Path, step: int) -> None:
    """After a rollback to ``step``, keep the later lines but mark them: nothing is lost, nothing is mistaken."""
    import json

    if not path.exists():
        return
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        m = json.loads(line)
        if m["step"] > step:
            m["rolled_back"] = True
        out.append(json.dumps(m))
    atomic_write_text(path, "".join(line + "\n" for line in out))


def _due_injections(injections: list[Injection], fired: set, step: int, position: int) -> dict[str, float]:
    """Faults to apply now. nan/poison follow the data position (a rollback that skips the window
    escapes them, as it would a real bad batch); lr_spike follows the step. Each fires once."""
    due = {}
    for inj in injections:
        if inj in fired:
            continue
        hit = step == inj.step if inj.kind == "lr_spike" else (
            inj.step <= position < inj.step + (int(inj.value) if inj.kind == "poison" else 1))
        if hit:
            due[inj.kind] = inj.value
            if inj.kind != "poison" or position == inj.step + int(inj.value) - 1:
                fired.add(inj)
    return due


@dataclass
class _LoopState:
    """What the loop carries between steps besides model/optimizer/scheduler; saved in every checkpoint."""

    tokens_seen: int = 0
    data_offset: int = 0  # data windows skipped by rollbacks (position = step + data_offset)
    rollbacks: int = 0
    reshuffles: int = 0  # mushroom-mode data reshuffles so far
    cooldown: dict | None = None  # {"start", "steps", "factor"}
    replay: list[int] = field(default_factory=list)  # light sleep: data positions still to replay
    replay_lr: float = 1.0

    def to_checkpoint(self) -> dict:
        return {"tokens_seen": self.tokens_seen, "data_offset": self.data_offset, "rollbacks": self.rollbacks,
                "reshuffles": self.reshuffles, "cooldown": self.cooldown, "replay": list(self.replay),
                "replay_lr": self.replay_lr}

    @staticmethod
    def from_checkpoint(state: dict) -> _LoopState:
        return _LoopState(tokens_seen=state.get("tokens_seen", 0), data_offset=state.get("data_offset", 0),
                          rollbacks=state.get("rollbacks", 0), reshuffles=state.get("reshuffles", 0),
                          cooldown=state.get("cooldown"), replay=list(state.get("replay", [])),
                          replay_lr=state.get("replay_lr", 1.0))


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def _advance_data(st: _LoopState, replaying: bool) -> None:
    """A replayed step used old data: the fresh-data position must not move."""
    if replaying:
        st.replay.pop(0)
        st.data_offset -= 1


def _is_healthy(monitor, recovery) -> bool:
    """No enabled health detector objects (a heuristic nobody asked to act on does not veto checkpoints)."""
    last = monitor.last if monitor is not None else None
    if last is None:
        return True
    return not (("danger" in recovery.detectors and last.status == "DANGER")
                or ("breakdown" in recovery.detectors and last.regime == "breakdown"))


def _watch_summary(monitor) -> dict:
    if monitor is None:
        return {"enabled": False}
    last = monitor.last
    return {"enabled": True, "seconds": monitor.seconds,
            "last_status": last.status if last else None, "last_regime": last.regime if last else None,
            "last_phi": last.phi if last else None,
            "last_loop_rate": monitor.last_probe["loop_rate"] if monitor.last_probe else None}


def _count_kinds(path: Path) -> dict[str, int]:
    from slmlab.watch.events import read_jsonl

    counts: dict[str, int] = {}
    for e in read_jsonl(path):
        counts[e["kind"]] = counts.get(e["kind"], 0) + 1
    return counts


def _trim_events(path: Path, step: int) -> None:
    """Resume from a checkpoint without line counts (older runs): forget events after its step."""
    import json

    from slmlab.watch.events import read_jsonl

    if path.exists():
        kept = [e for e in read_jsonl(path) if e["step"] <= step]
        atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in kept))


def _live_view(config: TrainConfig, total: int, start: int, main: bool):
    """The live dashboard on a terminal (or when asked), else a plain progress bar; nothing off the main process."""
    import sys

    wanted = config.watch.dashboard if config.watch.dashboard is not None else sys.stdout.isatty()
    if main and wanted:
        from slmlab.watch.dashboard import Dashboard

        return Dashboard(config.name, total, start, enabled=True)
    return _Progress(total, start, enabled=main)


class _BasinAux:
    """The experimental basin-aware penalty on ``hidden_states[layer]``, captured by a forward hook."""

    def __init__(self, model, cfg):
        from slmlab.experimental.basin_loss import basin_penalty  # warns: it is experimental

        self.fn, self.cfg = basin_penalty, cfg
        core = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder = core.get_decoder()
        n = len(decoder.layers)
        idx = cfg.layer if cfg.layer >= 0 else n + 1 + cfg.layer
        if not 0 <= idx <= n:
            raise TrainingError(f"experimental.basin_loss.layer: {cfg.layer} is out of range for {n} layers (-{n + 1}..{n})")
        # hidden_states[0] = embeddings, [k] = output of layer k-1, [n] = after the final norm.
        self.module = decoder if idx == n else (decoder.embed_tokens if idx == 0 else decoder.layers[idx - 1])
        self.hidden = None

    def capture(self):
        from contextlib import contextmanager

        @contextmanager
        def ctx():
            def hook(_mod, _args, output):
                out = output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", output)
                self.hidden = out

            handle = self.module.register_forward_hook(hook)
            try:
                yield
            finally:
                handle.remove()

        return ctx()

    def penalty(self, batch: dict):
        mask = batch["example_ids"] >= 0 if "example_ids" in batch else None
        value, _ = self.fn(self.hidden, mask, self.cfg)
        self.hidden = None
        return value


def _save_final(run_dir: Path, model, tokenizer, config: TrainConfig) -> None:
    """adapter/ (PEFT format) or model/ (HF format), written to a temp dir and renamed."""
    target = run_dir / ("adapter" if config.adapter.kind == "lora" else "model")
    tmp = run_dir / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _versions() -> dict:
    import accelerate
    import peft
    import torch
    import transformers

    from slmlab import __version__

    return {"slmlab": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__}


class _Progress:
    """A rich progress bar with loss, lr, tokens/s and ETA; silent on non-main processes."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.enabled = enabled
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                TimeElapsedColumn(), TimeRemainingColumn())
            self.task = self.bar.add_task("train", total=total, completed=start, info="")

    def __enter__(self):
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
        return False

    def on_event(self, event) -> None:
        if event.kind == "step":
            self.update(event.step, event.data)

    def update(self, step: int, m: dict) -> None:
        if self.enabled and isinstance(m.get("loss"), float) and isinstance(m.get("lr"), float):
            tps = f"{m['tokens_per_s']:.0f} tok/s" if m.get("tokens_per_s") else ""
            self.bar.update(self.task, completed=step, info=f"loss {m['loss']:.4f} lr {m['lr']:.2e} {tps}")
