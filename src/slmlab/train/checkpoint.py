"""Checkpoints: weights (adapter or full), optimizer, scheduler, RNG states and the data position.

A checkpoint is written into a temporary directory and renamed into place, so a kill
at any moment leaves either the previous checkpoint or the new one, never half of one.
The data position is the step number (the data plan is a pure function of seed and
step), so restoring the step and the RNG states makes a resumed run continue exactly.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import torch

from slmlab.data.formats import atomic_write_text

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    d = checkpoints_dir(run_dir)
    if not d.is_dir():
        return []
    for old in d.glob(".step-*.old"):  # a kill mid-overwrite: the previous copy is the checkpoint
        final = d / old.name[1:-4]
        if not final.exists() and (old / "state.json").is_file():
            old.rename(final)
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / "state.json").is_file()]
    return [p for _, p in sorted(found)]


def is_healthy(path: Path) -> bool:
    """Was this checkpoint taken while the run was healthy? (Older checkpoints carry no flag: yes.)"""
    try:
        return bool(json.loads((path / "state.json").read_text(encoding="utf-8")).get("healthy", True))
    except (OSError, ValueError):
        return False


def mark_healthy(path: Path) -> None:
    """Confirm a checkpoint as a rollback target (its state.json rewritten atomically)."""
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    atomic_write_text(path / "state.json", json.dumps({**state, "healthy": True}, indent=2) + "\n")


def discard_checkpoints_after(run_dir: Path, step: int) -> None:
    """After a rollback to ``step``: later checkpoints belong to the abandoned branch."""
    for path in list_checkpoints(run_dir):
        if int(path.name.split("-")[1]) > step:
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(run_dir: Path, healthy_only: bool = False) -> Path | None:
    found = [p for p in list_checkpoints(run_dir) if not healthy_only or is_healthy(p)]
    return found[-1] if found else None


def _weights(model, adapter: str) -> dict[str, torch.Tensor]:
    if adapter == "lora":
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    # Tied weights share storage; safetensors refuses shared tensors, so store each once by name.
    seen: dict[int, str] = {}
    out = {}
    for name, t in model.state_dict().items():
        key = t.data_ptr()
        if key in seen:
            continue
        seen[key] = name
        out[name] = t.detach().contiguous()
    return out


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, *, adapter: str, state: dict, keep: int,
                    keep_healthy: int = 0) -> Path:
    """Write ``checkpoints/step-N`` atomically; keep the last ``keep`` and the last ``keep_healthy`` healthy ones."""
    from safetensors.torch import save_file

    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_weights(model, adapter), str(tmp / "weights.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {"torch": torch.get_rng_state(), "python": list(_py_state())}
    if torch.cuda.is_available():  # dropout on a GPU draws from the CUDA generators
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    atomic_write_text(tmp / "state.json", json.dumps({**state, "adapter": adapter}, indent=2) + "\n")
    # Overwriting (a rollback re-saves its target): move the old one aside first, so a kill at any
    # moment leaves a complete step-N or its .old copy, never neither.
    old = root / f".step-{step}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    found = list_checkpoints(run_dir)
    healthy = [p for p in found if is_healthy(p)]
    wanted = set(found[-keep:]) | (set(healthy[-keep_healthy:]) if keep_healthy else set())
    for old in found:
        if old not in wanted:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _py_state():
    version, internal, gauss = random.getstate()
    return version, list(internal), gauss


def load_checkpoint(path: Path, model, optimizer, scheduler, *, adapter: str) -> dict:
    """Restore everything saved by :func:`save_checkpoint`; returns the saved state dict."""
    from safetensors.torch import load_file

    weights = load_file(str(path / "weights.safetensors"))
    if adapter == "lora":
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, weights)
        unexpected = [k for k in result.unexpected_keys if "lora_" in k]
        if unexpected:
            raise ValueError(f"{path}: checkpoint does not match the adapter config (unexpected {unexpected[:3]})")
    else:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        # Tied weights were stored once; anything else missing is a real mismatch.
        real_missing = [k for k in missing if not _is_tied(model, k)]
        if real_missing or unexpected:
            raise ValueError(f"{path}: checkpoint does not match the model (missing {real_missing[:3]}, unexpected {unexpected[:3]})")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    return json.loads((path / "state.json").read_text(encoding="utf-8"))


def _is_tied(model, name: str) -> bool:
    ptrs = {}
    for n, t in model.state_dict().items():
        ptrs.setdefault(t.data_ptr(), []).append(n)
    return any(name in names and len(names) > 1 for names in ptrs.values())
