"""The inference engine: one thread owns the serving model; requests that arrive together decode together.

Everything that touches the serving weights runs on the engine thread, in queue order:

* **generation batches** — requests that arrive within ``batch_wait`` seconds of each other (up to
  ``max_batch`` rows) are decoded in one batch (:mod:`slmlab.serve.decode`), whatever adapter
  each one names;
* **weight updates** — the online trainer trains on its *own copy* of the model and publishes the
  adapter's new weights here; adapter load/unload likewise.

So a weight update is applied *between* two batches, never during one: every request is served
entirely by one weight version, and the version it was served by is returned with it. Training
never waits for inference (it runs on its own copy) and inference waits for at most the copy of
one update's weights (milliseconds for a LoRA adapter), never for a training step.

A same-name adapter reload replaces the weights in place and bumps the version; there is no
prefix or KV cache kept across requests, so nothing stale can survive a reload.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from slmlab.serve.decode import Row, RowResult, decode

log = logging.getLogger("slmlab.serve")


@dataclass
class Batchable:
    """Rows to decode; ``future`` receives ``(results, weight_version)``."""

    rows: list[Row]
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class Control:
    """A change to the serving model, run on the engine thread between batches; ``future`` gets its result."""

    action: str  # "publish" | "load" | "unload"
    args: dict[str, Any]
    future: Future = field(default_factory=Future)


class AdapterSet:
    """The serving model's adapters: names, where each came from, its parent, its version."""

    def __init__(self, base_model, base_name: str):
        self.model = base_model
        self.base_name = base_name
        self.sources: dict[str, str] = {}

    @property
    def names(self) -> list[str]:
        return list(self.sources)

    def _is_peft(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    def load(self, name: str, path: str) -> None:
        """Load a PEFT adapter directory under ``name`` (replacing one of the same name)."""
        from peft import PeftModel

        if name in self.sources:
            self.unload(name)
        if self._is_peft():
            self.model.load_adapter(path, adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        self.model.eval()
        self.sources[name] = path

    def publish(self, name: str, weights: dict[str, torch.Tensor], lora_config=None, source: str = "online") -> None:
        """Set adapter ``name``'s weights (PEFT state-dict names), creating it from ``lora_config`` if new."""
        from peft import get_peft_model, set_peft_model_state_dict

        if name not in self.sources:
            if lora_config is None:
                raise ValueError(f"adapter {name!r} does not exist and no LoRA config was given to create it")
            if self._is_peft():
                self.model.add_adapter(name, lora_config)
            else:
                self.model = get_peft_model(self.model, lora_config, adapter_name=name)
            self.model.eval()
            self.sources[name] = source
        result = set_peft_model_state_dict(self.model, weights, adapter_name=name)
        bad = [k for k in result.unexpected_keys if "lora_" in k]
        if bad:
            raise ValueError(f"published weights do not fit adapter {name!r}: unexpected {bad[:3]}")
        for p in self.model.parameters():
            p.requires_grad_(False)

    def publish_full(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy fully trained weights (plain transformers names) into the base model, under any adapters."""
        base = self.model.get_base_model() if self._is_peft() else self.model
        params = base.state_dict()
        missing = []
        with torch.no_grad():
            for name, value in weights.items():
                target = params.get(name)
                if target is None:  # a linear wrapped by a LoRA keeps its weight under base_layer
                    head, _, leaf = name.rpartition(".")
                    target = params.get(f"{head}.base_layer.{leaf}")
                if target is None:
                    missing.append(name)
                    continue
                target.copy_(value)
        if missing:
            raise ValueError(f"published weights do not fit the base model: {missing[:3]}")

    def snapshot(self, name: str) -> dict[str, Any]:
        """Adapter ``name``'s weights (copies, PEFT names) and its LoRA config, as served now."""
        from peft import get_peft_model_state_dict

        if name not in self.sources:
            raise KeyError(name)
        weights = get_peft_model_state_dict(self.model, adapter_name=name)
        return {"weights": {k: v.detach().clone().contiguous() for k, v in weights.items()},
                "config": self.model.peft_config[name]}

    def unload(self, name: str) -> None:
        if name not in self.sources:
            raise KeyError(name)
        self.model.delete_adapter(name)
        del self.sources[name]


class Engine:
    """Owns the serving model and the thread that decodes on it; see the module docstring."""

    def __init__(self, model, tokenizer, *, base_name: str, max_batch: int = 32, batch_wait: float = 0.01,
                 metrics=None, readout=None):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.adapters = AdapterSet(model, base_name)
        self.tokenizer = tokenizer
        self.max_batch, self.batch_wait = max_batch, batch_wait
        self.version = 0
        self.metrics = metrics  # a ServerMetrics, or None
        self.readout = readout  # a steer Readout (concept vectors), or None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = {tokenizer.eos_token_id} | set(_generation_eos(model))
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="slmlab-engine", daemon=True)
        self._stopping = False

    # ------------------------------------------------------------------ public, any thread

    @property
    def model(self):
        return self.adapters.model

    @property
    def max_positions(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._queue.put(None)
        self._thread.join(timeout)

    def submit(self, rows: list[Row]) -> Future:
        """Queue rows for decoding; the future resolves to ``(list[RowResult], weight_version)``."""
        item = Batchable(rows)
        self._queue.put(item)
        return item.future

    def control(self, action: str, **args: Any) -> Future:
        item = Control(action, args)
        self._queue.put(item)
        return item.future

    # ------------------------------------------------------------------ engine thread

    def _loop(self) -> None:
        while not self._stopping:
            first = self._queue.get()
            if first is None:
                break
            items = [first] + self._gather(first)
            for item in items:
                if isinstance(item, Control):
                    self._run_control(item)
            work = [i for i in items if isinstance(i, Batchable)]
            if work:
                self._run_batch(work)

    def _gather(self, first) -> list:
        """More items that arrive within the batch window, up to ``max_batch`` rows."""
        if not isinstance(first, Batchable):
            return []
        rows = len(first.rows)
        items: list = []
        deadline = time.perf_counter() + self.batch_wait
        while rows < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=max(remaining, 0)) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._stopping = True
                break
            items.append(item)
            if isinstance(item, Batchable):
                rows += len(item.rows)
        return items

    def _run_control(self, item: Control) -> None:
        """Apply a change (the version goes up by one) or take a snapshot (it does not)."""
        try:
            if item.action == "snapshot":
                item.future.set_result(self.adapters.snapshot(**item.args) | {"weight_version": self.version})
                return
            action = {"publish": self.adapters.publish, "publish_full": self.adapters.publish_full,
                      "load": self.adapters.load, "unload": self.adapters.unload}.get(item.action)
            if action is None:
                raise ValueError(f"unknown engine action {item.action!r}")
            action(**item.args)
            self.version += 1
            item.future.set_result(self.version)
        except Exception as e:
            item.future.set_exception(e)

    def _run_batch(self, work: list[Batchable]) -> None:
        rows = [r for item in work for r in item.rows]
        mixed = bool(self.adapters.names)
        try:
            results = decode(self.model, self.tokenizer, rows, eos_ids=self.eos_ids, pad_id=self.pad_id,
                             mixed_adapters=mixed)
        except Exception as e:
            log.exception("decoding failed")
            for item in work:
                item.future.set_exception(e)
            return
        if self.readout is not None:
            self._score_readout(rows, results, mixed)
        self._count(rows, results)
        start = 0
        for item in work:
            item.future.set_result((results[start:start + len(item.rows)], self.version))
            start += len(item.rows)

    def _score_readout(self, rows: list[Row], results: list[RowResult], mixed: bool) -> None:
        """Concept scores of each generated token at the readout's last layer (one forward per row)."""
        from slmlab.steer.apply import token_scores

        layer = self.readout.layers[-1]
        for row, res in zip(rows, results):
            if not row.readout or not res.token_ids:
                continue
            kwargs = {"adapter_names": [row.adapter or "__base__"]} if mixed else {}
            with torch.inference_mode():
                scores = token_scores(self.model, row.prompt_ids + res.token_ids, len(row.prompt_ids),
                                      {layer: self.readout.vectors[layer]}, kwargs)
            res.readout = [[round(float(x), 5) for x in r] for r in scores[layer]]

    def _count(self, rows: list[Row], results: list[RowResult]) -> None:
        if self.metrics is not None:
            self.metrics.batch_rows.observe(len(rows))
            self.metrics.prompt_tokens.inc(sum(len(r.prompt_ids) for r in rows))
            self.metrics.generated_tokens.inc(sum(len(r.token_ids) for r in results))


def _generation_eos(model) -> list[int]:
    """End-of-turn ids from the model's generation config (chat models end turns with their own token)."""
    cfg = getattr(model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None)
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]
