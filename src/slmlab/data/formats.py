"""The dataset record format (file I/O lives in :mod:`slmlab.io`)."""

from __future__ import annotations

# Every record carries these; generators may add more (answer, puzzle, style, …).
REQUIRED_FIELDS = ("id", "input", "output", "category", "family")
