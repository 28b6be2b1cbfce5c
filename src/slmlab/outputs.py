"""Output locations, checked before any work starts: one rule for every command that writes.

Every command with ``-o`` calls :func:`check_output` first, so a bad place fails in a second,
not after a model has loaded and generated for minutes:

* the place must be writable: the output (or, when it does not exist yet, its nearest existing
  ancestor, so missing parents can be created) is a directory this user may write in;
* the output is the right kind: a file where a file is written, a directory where a directory is;
* an existing non-empty output is refused unless ``overwrite`` (``--overwrite`` on the command
  line); an empty file or an empty directory is used as is.

Every problem is a :class:`~slmlab.errors.SlmlabError` naming the path and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from slmlab.errors import SlmlabError

OVERWRITE_HELP = "Replace an existing non-empty output (without it, an existing one is an error and nothing is written)."


def _writable_dir(d: Path) -> bool:
    return os.access(d, os.W_OK | os.X_OK)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(path.anchor or ".")


def check_creatable(path: str | Path, *, what: str = "output") -> Path:
    """``path``'s parent exists as a writable directory, or can be created (its nearest existing ancestor is one)."""
    shown = Path(path).expanduser()
    place = _nearest_existing(shown.absolute().parent)
    if not place.is_dir():
        raise SlmlabError(f"cannot write {what} {shown}: {place} is a file, not a directory")
    if not _writable_dir(place):
        raise SlmlabError(f"cannot write {what} {shown}: no permission to write in {place}")
    return shown


def _non_empty(path: Path) -> bool:
    if path.is_dir():
        with os.scandir(path) as entries:
            return next(entries, None) is not None
    return path.stat().st_size > 0


def check_output(
    path: str | Path,
    kind: Literal["file", "dir"],
    *,
    overwrite: bool = False,
    what: str = "output",
    flag: str = "--overwrite",
) -> Path:
    """Check that ``path`` may be written as a ``kind`` ("file" or "dir"); return it (``~`` expanded).

    Raises :class:`SlmlabError` when a file is where a directory is wanted (or the other way
    round), when the place is not writable, and when ``path`` exists and is not empty without
    ``overwrite``. Nothing is created: a failure later leaves no trace.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    shown = Path(path).expanduser()
    try:
        _check(shown, kind, overwrite, what, flag)
    except PermissionError as exc:  # a directory on the way that we may not even look into
        raise SlmlabError(f"cannot write {what} {shown}: {exc.strerror or 'permission denied'}"
                          + (f" ({exc.filename})" if exc.filename else "")) from None
    return shown


def _check(shown: Path, kind: str, overwrite: bool, what: str, flag: str) -> None:
    full = shown.absolute()
    if full.exists():
        if kind == "dir" and not full.is_dir():
            raise SlmlabError(f"{what} {shown} is an existing file, but a directory is expected here; "
                              "give a directory path")
        if kind == "file" and full.is_dir():
            raise SlmlabError(f"{what} {shown} is a directory, but a file is expected here; "
                              f"give a file path, e.g. {shown / 'out.json'}")
        if not overwrite and _non_empty(full):
            raise SlmlabError(f"{what} {shown} already exists and is not empty; pass {flag} to replace it, "
                              "or choose another path")
        if kind == "dir" and not _writable_dir(full):
            raise SlmlabError(f"cannot write {what} {shown}: no permission to write in {shown}")
    if kind == "file" or not full.exists():
        check_creatable(shown, what=what)


__all__ = ["OVERWRITE_HELP", "check_creatable", "check_output"]
