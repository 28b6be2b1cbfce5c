"""Checkpoints: weights (adapter or full), optimizer, scheduler, RNG states and the data position.

A checkpoint is written into a temporary directory and renamed into place, so a kill
at any moment leaves either the previous checkpoint or the new one, never half of one.
The data position is the step number (the data plan is a pure function of seed and
step), so restoring the step and the RNG states makes a resumed run continue exactly.
What is saved is a :class:`~slmlab.train.state.TrainState` plus the run's own ``info``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from slmlab.io import atomic_write_text

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


def save_checkpoint(run_dir: Path, state, *, info: dict, keep: int, keep_healthy: int = 0) -> Path:
    """Write ``checkpoints/step-N`` of a :class:`~slmlab.train.state.TrainState` atomically.

    ``info`` (JSON) is saved beside it in ``state.json`` with the step and tokens seen: whatever
    else the run needs to continue exactly (recovery memory, log line counts, ...). Keeps the last
    ``keep`` checkpoints and the last ``keep_healthy`` healthy ones.
    """
    from safetensors.torch import save_file

    from slmlab.train.state import rng_state

    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step}"
    tmp = root / f".step-{state.step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(state.weights(), str(tmp / "weights.safetensors"))
    torch.save(state.optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(state.scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    record = {"step": state.step, **info, "tokens_seen": state.tokens_seen, "adapter": state.adapter}
    atomic_write_text(tmp / "state.json", json.dumps(record, indent=2) + "\n")
    # Overwriting (a rollback re-saves its target): move the old one aside first, so a kill at any
    # moment leaves a complete step-N or its .old copy, never neither.
    old = root / f".step-{state.step}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    _prune(run_dir, keep, keep_healthy)
    return final


def _prune(run_dir: Path, keep: int, keep_healthy: int) -> None:
    found = list_checkpoints(run_dir)
    healthy = [p for p in found if is_healthy(p)]
    wanted = set(found[-keep:]) | (set(healthy[-keep_healthy:]) if keep_healthy else set())
    for old in found:
        if old not in wanted:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, state) -> dict:
    """Restore everything :func:`save_checkpoint` wrote into ``state``; returns the saved ``state.json``."""
    from safetensors.torch import load_file

    from slmlab.train.state import set_rng_state

    info = json.loads((path / "state.json").read_text(encoding="utf-8"))
    state.load_weights(load_file(str(path / "weights.safetensors")), where=str(path))
    state.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    state.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    state.step, state.tokens_seen = int(info["step"]), int(info.get("tokens_seen", 0))
    return info


class RollbackTargets:
    """What recovery asks before a rollback: the latest checkpoint confirmed healthy, or ``None``.

    The main process picks (it wrote the files); with several processes every process gets its
    answer, so all of them load the same checkpoint.
    """

    def __init__(self, run_dir: Path, accelerator=None):
        self.run_dir, self.accelerator = run_dir, accelerator

    def latest_healthy(self) -> Path | None:
        acc = self.accelerator
        if acc is None or acc.num_processes == 1:
            return latest_checkpoint(self.run_dir, healthy_only=True)
        from accelerate.utils import broadcast_object_list

        found = latest_checkpoint(self.run_dir, healthy_only=True) if acc.is_main_process else None
        box = [str(found) if found is not None else None]
        broadcast_object_list(box, from_process=0)
        return Path(box[0]) if box[0] is not None else None
