"""Shared terminal output for the CLIs: one stdout console, one stderr console, quiet transformers."""

from __future__ import annotations

from rich.console import Console

console = Console()
# soft_wrap: "file:line: message" stays one line, so it can be grepped and clicked.
err_console = Console(stderr=True, soft_wrap=True)


def quiet_transformers() -> None:
    """Progress bars from weight loading would drown our own output."""
    import warnings

    from transformers.utils import logging as hf_logging

    # Raised inside peft against transformers 5; nothing a user can act on.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
