"""What a finished run leaves behind: final weights, ``results.json``'s summary, versions."""

from __future__ import annotations

import math
import resource
import shutil
from pathlib import Path


def save_final(run_dir: Path, model, tokenizer, adapter: str) -> Path:
    """``adapter/`` (PEFT format) or ``model/`` (HF format)."""
    return save_pretrained_atomically(model, tokenizer, run_dir / ("adapter" if adapter == "lora" else "model"))


def save_pretrained_atomically(model, tokenizer, target: Path) -> Path:
    """``save_pretrained`` (safetensors) of model and tokenizer into a temp dir, renamed to ``target``."""
    tmp = target.parent / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def finite(x: float) -> float | str:
    """Strict JSON has no NaN: non-finite numbers are written as strings."""
    return x if math.isfinite(x) else str(x)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def watch_summary(monitor) -> dict:
    if monitor is None:
        return {"enabled": False}
    last = monitor.last
    return {"enabled": True, "seconds": monitor.seconds,
            "last_status": last.status if last else None, "last_regime": last.regime if last else None,
            "last_phi": last.phi if last else None,
            "last_loop_rate": monitor.last_probe["loop_rate"] if monitor.last_probe else None}


def versions() -> dict:
    import accelerate
    import peft
    import torch
    import transformers

    from slmlab import __version__

    return {"slmlab": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__}
