"""The trio: creative → logical → dialectical roles over one base model, with offline tools.

Public API::

    from slmlab import trio
    t = trio.run("P→Q,P?Q", model="tiny-random")   # a Transcript; t.to_dict() is `slmlab trio run --json`
    trio.train("runs/trio", model="tiny-random", max_steps=2)   # one LoRA per role + trio.json
    trio.evaluate(model="smollm2-135m", limit=24)                # single vs trio vs trio+tools

See docs/trio.md.
"""

from slmlab.trio.pipeline import (
    ROLES,
    Transcript,
    TrioModel,
    TrioSettings,
    run,
    run_many,
)
from slmlab.trio.tools import ToolBox, ToolResult


def train(*args, **kwargs):
    """See :func:`slmlab.trio.train.train`."""
    from slmlab.trio.train import train as _train

    return _train(*args, **kwargs)


def evaluate(*args, **kwargs):
    """See :func:`slmlab.trio.evaluate.evaluate`."""
    from slmlab.trio.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


__all__ = ["ROLES", "ToolBox", "ToolResult", "Transcript", "TrioModel", "TrioSettings", "evaluate", "run", "run_many",
           "train"]
