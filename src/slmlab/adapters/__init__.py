"""Adapter arithmetic ("task vectors"): add, scale, negate and merge LoRA adapters, and inspect them.

Train behaviours separately, then combine their adapters with PEFT's ``add_weighted_adapter``
(``linear``, ``cat``, ``svd``, ``ties``, ``dare_ties``, ...). Every result is an ordinary PEFT
adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``) that loads with plain
``PeftModel.from_pretrained``, plus a ``merge.json`` that records how it was made.

* :func:`merge` — a weighted combination of adapters (or run directories) trained on one base model.
* :func:`negate` — the adapter whose weight delta is exactly minus the input's.
* :func:`info` — base model, rank, alpha, targets, parameter count and the Frobenius norm of each
  module's effective delta ``scale · B @ A``.

The command line is ``slmlab adapters`` (:mod:`slmlab.adapters.cli`); the guide is ``docs/adapters.md``.
Importing this package is cheap: torch and peft load only when a function needs them.
"""

from __future__ import annotations

_LAZY = {
    "merge": "slmlab.adapters.arithmetic",
    "negate": "slmlab.adapters.arithmetic",
    "info": "slmlab.adapters.arithmetic",
    "AdapterInfo": "slmlab.adapters.arithmetic",
    "ModuleNorm": "slmlab.adapters.arithmetic",
    "METHODS": "slmlab.adapters.arithmetic",
}

__all__ = ["METHODS", "AdapterInfo", "ModuleNorm", "info", "merge", "negate"]  # the keys of _LAZY


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slmlab.adapters' has no attribute {name!r}")
