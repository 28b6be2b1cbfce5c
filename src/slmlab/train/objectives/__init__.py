"""Training objectives: one module each (``sft``, ``dpo``, ``orpo``), registered in one place.

Every objective module has the same small shape (as the optimizers do):

* ``pairs(records, default_format, tokenizer, where)`` — how records become (prompt, completion)
  pairs (a preference record gives two: chosen, then rejected);
* ``unit_size`` — examples per scheduling unit (1 for SFT, a (chosen, rejected) pair for DPO/ORPO);
* ``normaliser(units)`` — what a step's summed loss is divided by (supervised tokens, or pairs);
* ``loss(model, batch) -> LossParts`` — the summed loss of one micro-batch.

The registry below is plain data, so configs validate objective names and their constraints
without importing torch; :func:`build_objective` imports the module when training starts.
Adding an objective is one module and one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol

from slmlab.errors import SlmlabError, unknown_name_message


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    summary: str
    module: str
    needs_lora: bool = False  # the reference model is the base with the adapter switched off
    context_frozen: bool = False  # supports context-frozen training


class Objective(Protocol):
    name: str
    unit_size: int

    def pairs(self, records: list[dict], default_format: str, tokenizer, where: str) -> list[tuple[str, str]]: ...

    def normaliser(self, units) -> float: ...

    def loss(self, model, batch: dict) -> Any: ...


OBJECTIVES: dict[str, ObjectiveSpec] = {
    spec.name: spec
    for spec in (
        ObjectiveSpec("sft", "completion-only next-token NLL, per supervised token", "sft", context_frozen=True),
        ObjectiveSpec("dpo", "sigmoid DPO against the adapter-off base model, per pair", "dpo", needs_lora=True),
        ObjectiveSpec("orpo", "NLL of the chosen answer + λ·odds-ratio term, per pair", "orpo"),
    )
}


def objective_spec(name: str) -> ObjectiveSpec:
    spec = OBJECTIVES.get(name)
    if spec is None:
        raise SlmlabError(unknown_name_message("objective", name, list(OBJECTIVES)))
    return spec


def build_objective(config) -> Objective:
    """The objective named by ``config.kind`` with its hyper-parameters (``config`` is an ObjectiveConfig)."""
    spec = objective_spec(config.kind)
    return importlib.import_module(f"{__name__}.{spec.module}").build(config)


_LAZY = {
    "SupervisedLM": "base", "LossParts": "base", "per_example_sums": "base", "chosen_rejected": "base",
    "sft_loss": "sft", "dpo_loss": "dpo", "orpo_loss": "orpo",
}


def __getattr__(name: str):
    """The torch-backed pieces load on first use, so that config validation stays light."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
