"""Export a run as a standalone Hugging Face model (LoRA merged into the base)."""

from __future__ import annotations

import shutil
from pathlib import Path

from slmlab.errors import SlmlabError
from slmlab.train.config import load_train_config


def export_run(run_dir: str | Path, out: str | Path, *, merge: bool = True) -> Path:
    """Write ``out`` so that ``AutoModelForCausalLM.from_pretrained(out)`` loads the trained model."""
    from slmlab.models import load

    run_dir, out = Path(run_dir), Path(out)
    config = load_train_config(run_dir / "config.yaml")
    if (run_dir / "model").is_dir():  # full fine-tune: already a HF model
        shutil.copytree(run_dir / "model", out, dirs_exist_ok=True)
        return out
    adapter = run_dir / "adapter"
    if not adapter.is_dir():
        raise SlmlabError(f"{run_dir}: no adapter/ or model/ yet; has the run finished?")
    if not merge:
        shutil.copytree(adapter, out, dirs_exist_ok=True)
        return out
    from peft import PeftModel

    base, tokenizer = load(config.model, seed=config.seed)
    from slmlab.train.record import save_pretrained_atomically

    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    return save_pretrained_atomically(merged, tokenizer, out)
