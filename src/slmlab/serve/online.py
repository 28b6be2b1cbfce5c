"""Online training for the server: ``POST /train`` jobs applied by a worker thread with ``train_step``.

The trainer owns a **private copy** of the base model. Each served name it trains gets a LoRA
(or, with ``training.full``, the copy's own weights are trained) and its own
:class:`~slmlab.train.state.TrainState`, whose optimizer state lives across requests and, through
the state directory, across server restarts. After every *applied* step the trained weights are
published to the inference engine, which swaps them in between two decoding batches and bumps
the weight version (see :mod:`slmlab.serve.engine`). Inference therefore never waits for a
training step, and training never waits for inference.

Each step is guarded as in ``slmlab train``: a non-finite loss or gradient norm, or a loss /
grad-norm spike against the adapter's recent steps (:class:`~slmlab.watch.recovery.SpikeDetector`),
skips the update (the gradient is dropped; the step is recorded as skipped with the reason).

A (context, continuation[, rejected]) example already trained into a name is skipped: its
content hash is remembered, persisted with the state, and the response says which were skipped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import math
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from slmlab.serve.config import OnlineTrainingConfig
from slmlab.train.state import TrainState

log = logging.getLogger("slmlab.serve")

STATE_FILE = "trainer.pt"
MAX_JOBS_KEPT = 256


@dataclass
class TrainJob:
    adapter: str
    context_ids: list[list[int]]
    continuation_ids: list[list[int]]
    rejected_ids: list[list[int]] | None = None
    lr: float | None = None
    steps: int = 1
    id: str = field(default_factory=lambda: "train-" + uuid.uuid4().hex[:16])
    status: str = "queued"  # queued | running | done | skipped | failed
    losses: list[float] = field(default_factory=list)
    applied: int = 0
    skipped_steps: list[dict] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)  # indices of examples already trained on
    reason: str | None = None
    error: str | None = None
    mode: str | None = None  # "context-frozen" | "exact" (a context under 2 tokens, or ORPO, trains exactly)
    weight_version: int | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    hashes: list[str] = field(default_factory=list, repr=False)

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("context_ids", "continuation_ids", "rejected_ids", "hashes"):
            out.pop(key)
        out["examples"] = len(self.context_ids)
        out["losses"] = [json_float(x) for x in self.losses]  # JSON has no NaN: a non-finite loss is null
        out["skipped_steps"] = [{k: json_float(v) for k, v in s.items()} for s in self.skipped_steps]
        return out


def json_float(value):
    """``value`` unless it is a non-finite float (JSON cannot carry NaN or infinity): then None."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def example_hash(adapter: str, context: list[int], continuation: list[int], rejected: list[int] | None) -> str:
    payload = json.dumps([adapter, context, continuation, rejected], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Trained:
    """One trained name: its state, spike detector and the examples it has seen."""

    name: str
    state: TrainState
    spikes: Any
    hashes: set[str] = field(default_factory=set)
    applied: int = 0
    skipped: int = 0
    last_loss: float | None = None


class OnlineTrainer:
    """The training worker; see the module docstring."""

    def __init__(self, model, engine, config: OnlineTrainingConfig, *, base_name: str, state_dir: Path | None,
                 pad_id: int, metrics=None):
        self.model = model  # the private copy; wrapped in a PeftModel on the first LoRA
        self.engine, self.config, self.base_name = engine, config, base_name
        self.state_dir = Path(state_dir) / "online" if state_dir is not None else None
        self.pad_id = pad_id
        self.metrics = metrics  # a ServerMetrics, or None
        self.trained: dict[str, Trained] = {}
        self.jobs: dict[str, TrainJob] = {}
        self.last_error: str | None = None
        self.running: str | None = None
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # guards self.trained / self.jobs against the HTTP threads
        self._thread = threading.Thread(target=self._loop, name="slmlab-trainer", daemon=True)

    # ------------------------------------------------------------------ public

    def start(self) -> OnlineTrainer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def submit(self, job: TrainJob) -> TrainJob:
        """Queue ``job`` (or mark it skipped when every example was already trained into its name)."""
        job.hashes = [example_hash(job.adapter, c, k, (job.rejected_ids or [None] * len(job.context_ids))[i])
                      for i, (c, k) in enumerate(zip(job.context_ids, job.continuation_ids))]
        with self._lock:
            seen = self.trained[job.adapter].hashes if job.adapter in self.trained else set()
            job.duplicates = [i for i, h in enumerate(job.hashes) if h in seen]
            if len(job.duplicates) == len(job.hashes):
                job.status, job.finished = "skipped", time.time()
                job.reason = "already trained: every example's content hash is in this adapter's trained set"
            self._keep(job)
        if job.status == "queued":
            self._queue.put(job.id)
        return job

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "queue": self.queue_depth,
                "running": self.running,
                "last_error": self.last_error,
                "adapters": {n: {"steps": t.state.step, "applied": t.applied, "skipped": t.skipped,
                                 "last_loss": json_float(t.last_loss), "examples_trained": len(t.hashes),
                                 "tokens_seen": t.state.tokens_seen}
                             for n, t in self.trained.items()},
                "jobs": [j.public() for j in list(self.jobs.values())[-32:]],
            }

    def job(self, job_id: str) -> TrainJob | None:
        with self._lock:
            return self.jobs.get(job_id)

    def wait(self, job_id: str, timeout: float = 60.0) -> TrainJob:
        """Block until the job has finished (for tests and scripts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job is not None and job.status in ("done", "skipped", "failed"):
                return job
            time.sleep(0.01)
        raise TimeoutError(f"training job {job_id} still running after {timeout:.0f}s")

    # ------------------------------------------------------------------ worker

    def _keep(self, job: TrainJob) -> None:
        self.jobs[job.id] = job
        while len(self.jobs) > MAX_JOBS_KEPT:
            self.jobs.pop(next(iter(self.jobs)))

    def _loop(self) -> None:
        # torch's CPU thread count is per thread (OpenMP): the trainer takes its share, inference keeps its own.
        torch.set_num_threads(self.config.threads or max(1, (os.cpu_count() or 2) // 2))
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            job = self.job(job_id)
            if job is None:
                continue
            self.running, job.status = job.id, "running"
            try:
                self._run(job)
                job.status = "done"
            except Exception as e:
                log.exception("training job %s failed", job.id)
                job.status, job.error = "failed", f"{type(e).__name__}: {e}"
                self.last_error = f"{job.id}: {job.error}"
            job.finished, self.running = time.time(), None

    def _run(self, job: TrainJob) -> None:
        from slmlab.train.step import forward_backward, optimizer_step, skip_step

        trained = self._trained(job.adapter)
        objective, batch = self._batch(job)
        state = trained.state
        for _ in range(job.steps):
            state.set_lr((job.lr or self.config.lr) / self.config.lr)
            result = forward_backward(state, batch, objective)
            detection = trained.spikes.check(result.loss, result.grad_norm)
            job.losses.append(result.loss)
            trained.last_loss = result.loss
            if detection is not None:
                skip_step(state, result)
                trained.skipped += 1
                job.skipped_steps.append(detection.evidence())
                self._count("skipped")
                continue
            optimizer_step(state, result)
            trained.spikes.accept(result.loss, result.grad_norm)
            trained.applied += 1
            job.applied += 1
            job.weight_version = self._publish(trained)
            self._count("applied")
        with self._lock:
            trained.hashes.update(h for i, h in enumerate(job.hashes) if i not in job.duplicates)
        self.save(trained)

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.train_steps.labels(result).inc()

    def _batch(self, job: TrainJob):
        from slmlab.train.objectives.orpo import ORPO
        from slmlab.train.objectives.sft import SFT
        from slmlab.train.step import StepBatch

        keep = [i for i in range(len(job.context_ids)) if i not in job.duplicates]
        ctx = [job.context_ids[i] for i in keep]
        cont = [job.continuation_ids[i] for i in keep]
        if job.rejected_ids is None:
            objective = SFT()
            frozen = self.config.context_frozen and all(len(c) >= 2 for c in ctx)  # frozen mode needs 2+ tokens
            job.mode = "context-frozen" if frozen else "exact"
            return objective, StepBatch.from_token_ids(ctx, cont, objective, pad_id=self.pad_id, frozen=frozen)
        objective = ORPO()
        job.mode = "exact"
        rej = [job.rejected_ids[i] for i in keep]
        contexts = [c for c in ctx for _ in range(2)]
        continuations = [x for pair in zip(cont, rej) for x in pair]  # chosen 2k, rejected 2k+1
        return objective, StepBatch.from_token_ids(contexts, continuations, objective, pad_id=self.pad_id)

    # ------------------------------------------------------------------ adapters and state

    def _trained(self, name: str) -> Trained:
        with self._lock:
            if name in self.trained:
                trained = self.trained[name]
                if trained.state.adapter == "lora":
                    self.model.set_adapter(name)
                return trained
        trained = self._new_trained(name)
        self._restore(trained)
        with self._lock:
            self.trained[name] = trained
        return trained

    def lora_config(self):
        from peft import LoraConfig

        c = self.config
        return LoraConfig(r=c.r, lora_alpha=c.alpha, lora_dropout=0.0, target_modules=c.target_modules,
                          task_type="CAUSAL_LM")

    def _new_trained(self, name: str) -> Trained:
        from peft import PeftModel, get_peft_model

        from slmlab.train.state import new_state
        from slmlab.watch.recovery import SpikeDetector

        c = self.config
        source = self.engine.adapters.sources.get(name)  # served from a file: training continues from it
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)  # a new LoRA's initial weights depend only on the seed
            if c.full:
                for p in self.model.parameters():
                    p.requires_grad_(True)
            elif source is not None and Path(source).is_dir():
                self._load_adapter(name, source)
            elif isinstance(self.model, PeftModel):
                self.model.add_adapter(name, self.lora_config())
            else:
                self.model = get_peft_model(self.model, self.lora_config(), adapter_name=name)
        if not c.full:
            self.model.set_adapter(name)
        self.model.train()
        state = new_state(self.model, optimizer=c.optimizer, lr=c.lr, weight_decay=c.weight_decay,
                          max_grad_norm=c.max_grad_norm, optimizer_kwargs=c.optimizer_kwargs,
                          adapter_name=name)
        return Trained(name, state, SpikeDetector(z=c.spike_z))

    def _load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(path, adapter_name=name, is_trainable=True)
        else:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name, is_trainable=True)

    def _publish(self, trained: Trained) -> int:
        weights = trained.state.weights()
        if trained.state.adapter == "full":
            future = self.engine.control("publish_full", weights=weights)
        else:
            future = self.engine.control("publish", name=trained.name, weights=weights, lora_config=self.lora_config())
        return future.result()

    def _path(self, name: str) -> Path | None:
        if self.state_dir is None:
            return None
        return self.state_dir / hashlib.sha256(name.encode()).hexdigest()[:16] / STATE_FILE

    def save(self, trained: Trained) -> None:
        """Write the name's whole training state (weights, optimizer, step, seen hashes) atomically."""
        import io

        from slmlab.io import atomic_write_bytes

        path = self._path(trained.name)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"name": trained.name, "state": trained.state.state_dict(), "hashes": sorted(trained.hashes),
                "applied": trained.applied, "skipped": trained.skipped, "spikes": trained.spikes.state(),
                "full": self.config.full}
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def _restore(self, trained: Trained) -> None:
        path = self._path(trained.name)
        if path is None or not path.is_file():
            return
        blob = torch.load(path, weights_only=False)
        trained.state.load_state_dict(_without_rng(blob["state"]), where=str(path))
        trained.hashes = set(blob["hashes"])
        trained.applied, trained.skipped = blob["applied"], blob["skipped"]
        trained.spikes.load(blob["spikes"])

    def restore_all(self) -> list[str]:
        """At start-up: bring back every name trained before (state dir) and publish its weights."""
        if self.state_dir is None or not self.state_dir.is_dir():
            return []
        names = []
        for path in sorted(self.state_dir.glob(f"*/{STATE_FILE}")):
            name = torch.load(path, weights_only=False)["name"]
            trained = self._trained(name)
            self._publish(trained)
            names.append(name)
        return names


def _without_rng(state: dict) -> dict:
    """The saved state with the *current* RNG: the server's global RNG is not the trainer's to rewind."""
    from slmlab.train.state import rng_state

    return {**state, "rng": rng_state()}


def private_copy(model):
    """The trainer's own copy of the base model (the engine's copy is never trained in place)."""
    clone = copy.deepcopy(model)
    clone.train()
    return clone
