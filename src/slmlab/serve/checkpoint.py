"""``POST /checkpoint``: an adapter written as a normal PEFT directory, then block-synced to a target file.

The weights come from the engine as they are served at one weight version (a snapshot taken
between two batches). Each file is written atomically (temp + rename), so a killed server leaves
the old or the new checkpoint, never half of one; the optional sync to ``target`` goes through
:func:`slmlab.serve.sync.sync_file` (4 KB block diff, checksum verified).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from slmlab.io import atomic_write_bytes, atomic_write_text
from slmlab.serve.sync import sync_file

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"


def checkpoint_dir(state_dir: Path, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return Path(state_dir) / "checkpoints" / safe


def write_checkpoint(state_dir: Path, name: str, snapshot: dict[str, Any], base_model: str,
                     target: Path | None = None) -> dict[str, Any]:
    """Write ``snapshot`` (engine weights + LoRA config) as a PEFT adapter dir; sync to ``target`` if given."""
    from safetensors.torch import save

    out = checkpoint_dir(state_dir, name)
    config = snapshot["config"]
    config_dict = config.to_dict()
    config_dict["base_model_name_or_path"] = base_model
    weights_bytes = save(snapshot["weights"], metadata={"format": "pt"})
    atomic_write_text(out / CONFIG_FILE, json.dumps(_jsonable(config_dict), indent=2, sort_keys=True))
    atomic_write_bytes(out / WEIGHTS_FILE, weights_bytes)
    result: dict[str, Any] = {"model": name, "path": str(out), "weight_version": snapshot["weight_version"],
                              "bytes": len(weights_bytes), "sha256": hashlib.sha256(weights_bytes).hexdigest()}
    if target is not None:
        result["sync"] = asdict(sync_file(out / WEIGHTS_FILE, target))
    return result


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in (sorted(value) if isinstance(value, set) else value)]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
