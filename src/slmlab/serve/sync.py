"""Checkpoint sync by block diff, for the server's ``POST /checkpoint``.

:func:`sync_file` makes ``target`` byte-identical to ``source`` and reports how much changed.

**Changed blocks.** Both files are cut into ``block_size`` (4 KB) blocks at the same offsets. A
block of the *new* file is *changed* when its bytes differ from the old target's block at that
offset; a block past the old file's end (the file grew), or a last block whose length is not the
old one's (the file grew or shrank inside it), is changed too. Only changed blocks are written,
so ``blocks_changed`` (≤ ``blocks_total``) is the count ``/checkpoint`` reports: how much of a
checkpoint a training step really touched. Old blocks past the new end are dropped by truncation
and not counted, so a shrink exactly at a block boundary changes no block (``bytes`` shows it).

**Why temp + rename** (as rsync does). Patching the target in place would leave a torn file if
the process were killed mid-write, and a server that loads a torn checkpoint fails or, worse,
serves garbage. So the old target is copied to a temp file in the same directory
(``.<name>.sync-<16 hex>``, copied inside the kernel where the OS allows), the changed blocks
are written into that copy, the copy is fsynced and ``os.replace``-d over the target, and the
directory is fsynced. ``rename`` is atomic, so under ``kill -9`` at any moment the target is the
complete old file or the complete new one. A kill leaves at most a temp file behind; the next
sync of the same target removes it (syncs of one target are expected to run one at a time).

After the rename the target is read back from disk and its sha256 compared with the source's;
an identical source (no changed block, same size) is not rewritten at all, only verified.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from slmlab.errors import SlmlabError
from slmlab.io import current_umask

BLOCK_SIZE = 4096
_READ_CHUNK = 1 << 20
_TEMP_HEX = 16  # hex digits after the temp prefix


class SyncError(SlmlabError):
    """A checkpoint sync that could not be done or did not verify; the message names the paths."""


@dataclass(frozen=True)
class SyncResult:
    """What :func:`sync_file` did; ``blocks_changed`` is the number ``/checkpoint`` reports."""

    target: str  # path synced
    bytes: int  # size of the new file
    blocks_total: int  # blocks in the new file
    blocks_changed: int  # blocks whose bytes differ from the old target (grown/shrunk tail: changed)
    created: bool  # the target did not exist before
    sha256: str  # checksum of the target after sync, verified by re-reading it


@dataclass(frozen=True)
class _Diff:
    """What one pass over the source found: its size, block counts and sha256."""

    size: int
    blocks_total: int
    blocks_changed: int
    sha256: str


def sync_file(source: str | Path, target: str | Path, block_size: int = BLOCK_SIZE) -> SyncResult:
    """Make ``target`` byte-identical to ``source``, writing only changed blocks, atomically.

    Raises :class:`SyncError` (a missing source, source and target the same file, a source that
    changed while it was read, a target that does not read back as the source) and ValueError
    for a ``block_size`` that is not a positive int.
    """
    _check_block_size(block_size)
    source, target = Path(source), Path(target)
    _check_paths(source, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(target)
    old_stat = _stat_file(target)
    diff = _write_via_temp(source, target, old_stat, block_size)
    return _verified(source, target, diff, created=old_stat is None)


def clean_stale_temps(target: str | Path) -> list[Path]:
    """Remove temp files a killed sync of ``target`` left behind; returns the paths removed."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    stale = [p for p in target.parent.iterdir() if _is_temp_of(p.name, target)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read from disk in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")


def _check_paths(source: Path, target: Path) -> None:
    """SyncError for a missing source, a target that is the source itself, or one that is not a file."""
    if _stat_file(source) is None:
        raise SyncError(f"checkpoint sync: source {source} does not exist or is not a regular file")
    if source.resolve() == target.resolve() or (target.exists() and os.path.samefile(source, target)):
        raise SyncError(f"checkpoint sync: source and target are the same file ({source} -> {target})")
    if target.exists() and not target.is_file():
        raise SyncError(f"checkpoint sync: target {target} exists and is not a regular file")


def _stat_file(path: Path) -> os.stat_result | None:
    try:
        return path.stat() if path.is_file() else None
    except OSError:
        return None


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.sync-"


def _is_temp_of(name: str, target: Path) -> bool:
    """Exactly the names :func:`_new_temp` makes for ``target`` (not another target's temps)."""
    prefix = _temp_prefix(target)
    tail = name[len(prefix):]
    return name.startswith(prefix) and len(tail) == _TEMP_HEX and all(c in "0123456789abcdef" for c in tail)


def _new_temp(target: Path) -> Path:
    """Create an empty, private temp file next to ``target``, named so that a later sync finds it."""
    while True:
        tmp = target.parent / f"{_temp_prefix(target)}{secrets.token_hex(_TEMP_HEX // 2)}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return tmp
        except FileExistsError:
            continue


def _diff_blocks(src: BinaryIO, old: BinaryIO | None, out: BinaryIO, block_size: int) -> _Diff:
    """Compare ``src`` with ``old`` block by block; write each changed block into ``out`` at its offset."""
    digest, size, total, changed = hashlib.sha256(), 0, 0, 0
    while block := src.read(block_size):
        if old is None or old.read(block_size) != block:
            changed += 1
            out.seek(size)
            out.write(block)
        digest.update(block)
        size, total = size + len(block), total + 1
    return _Diff(size, total, changed, digest.hexdigest())


def _write_via_temp(source: Path, target: Path, old_stat: os.stat_result | None, block_size: int) -> _Diff:
    """Old target copied to a temp, changed blocks written in, fsync, rename over, fsync the dir.

    An unchanged target (same size, no changed block) is left as it is: the temp is dropped.
    """
    src_stat = source.stat()
    mode = old_stat.st_mode & 0o7777 if old_stat is not None else 0o666 & ~current_umask()
    tmp = _new_temp(target)
    try:
        if old_stat is not None:
            shutil.copyfile(target, tmp)  # in the kernel where the OS allows (sendfile)
        with open(source, "rb") as src, open(tmp, "r+b") as out:
            with open(target, "rb") if old_stat is not None else nullcontext() as old:
                diff = _diff_blocks(src, old, out, block_size)
            out.truncate(diff.size)
            os.chmod(tmp, mode)
            out.flush()
            os.fsync(out.fileno())
        _check_source_unchanged(source, src_stat)
        if old_stat is not None and diff.blocks_changed == 0 and diff.size == old_stat.st_size:
            tmp.unlink()
            return diff
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return diff


def _check_source_unchanged(source: Path, before: os.stat_result) -> None:
    after = _stat_file(source)
    if after is None or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise SyncError(f"checkpoint sync: source {source} changed while it was being read; sync again")


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _verified(source: Path, target: Path, diff: _Diff, *, created: bool) -> SyncResult:
    """Re-read the target from disk; SyncError naming both paths if it is not the source's bytes."""
    actual = sha256_file(target)
    if actual != diff.sha256:
        raise SyncError(
            f"checkpoint sync: {target} does not match {source} after sync "
            f"(sha256 {actual} != {diff.sha256})"
        )
    return SyncResult(str(target), diff.size, diff.blocks_total, diff.blocks_changed, created, actual)
