"""User-facing errors.

Anything a user can cause (a bad file, a bad config, a missing package) raises
a subclass of :class:`SlmlabError`; the CLI prints its message without a
traceback. Bugs stay ordinary exceptions so they keep their tracebacks.
"""

from __future__ import annotations

import difflib


class SlmlabError(ValueError):
    """An error caused by user input or environment, with a message that says how to fix it."""


class RunInterrupted(SlmlabError):
    """Ctrl-C or SIGTERM stopped a run; it is recorded as ``interrupted`` and the message says how to resume."""


class ModelNotAvailable(SlmlabError):
    """A model spec that cannot be loaded on this machine (unknown, or not available offline)."""


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    """'Unknown X 'y'. Did you mean …? Available: …' in the lm-eval-harness registry style."""
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown {kind} {name!r}.{hint} Available: {', '.join(sorted(available))}."
