"""Export a run as a standalone Hugging Face model (LoRA merged into the base)."""

from __future__ import annotations

import shutil
from pathlib import Path

from slmlab.errors import SlmlabError
from slmlab.progress import ProgressFactory, tracker
from slmlab.train.config import load_train_config


def _copy_dir(src: Path, out: Path) -> Path:
    """Copy ``src`` to a temp dir beside ``out``, then swap it in: ``out`` holds exactly ``src``'s files."""
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def export_run(run_dir: str | Path, out: str | Path, *, merge: bool = True, overwrite: bool = True,
               progress: ProgressFactory | None = None) -> Path:
    """Write ``out`` so that ``AutoModelForCausalLM.from_pretrained(out)`` loads the trained model.

    ``out`` is checked before anything loads (:func:`slmlab.outputs.check_output`); an existing
    ``out`` is replaced as a whole, and with ``overwrite=False`` a non-empty one is an error.
    ``progress`` (e.g. :func:`slmlab.progress.progress`) counts the merge's steps: load the base, merge, save.
    """
    from slmlab.models import load
    from slmlab.outputs import check_creatable, check_output

    run_dir = Path(run_dir)
    out = check_output(out, "dir", overwrite=overwrite, what="export directory")
    check_creatable(out, what="export directory")  # the new copy is made beside it, then swapped in
    config = load_train_config(run_dir / "config.yaml")
    if (run_dir / "model").is_dir():  # full fine-tune: already a HF model
        return _copy_dir(run_dir / "model", out)
    adapter = run_dir / "adapter"
    if not adapter.is_dir():
        raise SlmlabError(f"{run_dir}: no adapter/ or model/ yet; has the run finished?")
    if not merge:
        return _copy_dir(adapter, out)
    from peft import PeftModel

    from slmlab.train.record import save_pretrained_atomically

    with tracker(progress, 3, "export (load, merge, save)") as bar:
        base, tokenizer = load(config.model, seed=config.seed)
        bar.advance()
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        bar.advance()
        path = save_pretrained_atomically(merged, tokenizer, out)
        bar.advance()
    return path
