"""The dream loop: on-policy, verified preference rounds on logic puzzles (seed 003's idea, measured).

    from slmlab.dream import run, load_dream_config
    result = run(load_dream_config("examples/dream/logic.yaml"))
    result.accuracy            # held-out accuracy per round, round 0 = the starting model

See docs/dream.md. Heavy imports (torch, transformers) happen when a run starts.
"""

from __future__ import annotations

from slmlab.dream.config import DreamConfig, load_dream_config
from slmlab.dream.loop import DreamResult, resume, run
from slmlab.dream.pairs import is_right, make_pairs
from slmlab.dream.temperature import next_temperature

__all__ = ["DreamConfig", "DreamResult", "is_right", "load_dream_config", "make_pairs", "next_temperature", "resume",
           "run"]
