"""Concept vectors: extract from a story corpus, check their quality, steer and read out, calibrate.

Modules: :mod:`~slmlab.steer.corpus` (corpus layout, positive/negative sets, preflight),
:mod:`~slmlab.steer.extract` (one forward per unique text, diff-of-means, readout files),
:mod:`~slmlab.steer.quality` (per concept and layer diagnostics and triage),
:mod:`~slmlab.steer.apply` (``steering`` context manager, ``readout``, GGUF export),
:mod:`~slmlab.steer.calibrate` (largest safe steering strength). Guide: ``docs/steering.md``.

Importing this package is cheap: torch and transformers load only when a function needs them.
"""

from __future__ import annotations

_LAZY = {
    "load_corpus": "slmlab.steer.corpus",
    "extract": "slmlab.steer.extract",
    "load_readout": "slmlab.steer.extract",
    "quality": "slmlab.steer.quality",
    "steering": "slmlab.steer.apply",
    "readout": "slmlab.steer.apply",
    "export_gguf": "slmlab.steer.apply",
    "calibrate": "slmlab.steer.calibrate",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slmlab.steer' has no attribute {name!r}")
