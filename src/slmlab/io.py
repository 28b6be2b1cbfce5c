"""File I/O in one place: atomic writes, JSON, and JSONL read two ways.

* **Strict** (:func:`iter_jsonl`, :func:`read_jsonl`) — for data a user gives us: a malformed line
  is an error naming the file and the 1-based line (:class:`JsonlError`).
* **Tolerant** (:func:`read_jsonl_tolerant`) — for a run's own logs, which a kill may leave with a
  torn last line: unparseable lines are skipped, a missing file is empty.

Every write that a user would hate to lose goes through :func:`atomic_write_bytes`: a temp file in
the same directory, fsync, rename — readers see the old file or the new one, never half of one.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmlab.errors import SlmlabError


class JsonlError(SlmlabError):
    """A malformed line: names the file and the 1-based line number."""

    def __init__(self, path: str | Path, line: int, message: str):
        self.path, self.line, self.message = str(path), line, message
        super().__init__(f"{path}:{line}: {message}")


@dataclass(frozen=True)
class Line:
    number: int
    record: dict


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status).

    Elsewhere it is set and put back at once (``os.umask`` has no read-only form).
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would leave: an existing file's own, else 0o666 less the umask."""
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is not None and path.is_file():
        return st.st_mode & 0o7777
    return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file.

    The file gets the mode a plain write would give it (``mkstemp``'s 0600 is not kept): an
    existing file keeps its mode, a new one is 0o666 less the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            else:  # Windows before Python 3.13
                os.chmod(tmp, mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def dumps_record(record: dict) -> str:
    """One JSONL line. Key order is the record's own, so the same records give the same bytes."""
    return json.dumps(record, ensure_ascii=False, separators=(", ", ": "))


def encode_jsonl(records: Iterable[dict]) -> bytes:
    return "".join(dumps_record(r) + "\n" for r in records).encode("utf-8")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> str:
    """Write records atomically; returns the sha256 of the bytes written."""
    data = encode_jsonl(records)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def _decode_line(path: Path, number: int, raw: bytes, offset: int) -> str:
    """One line's bytes as text; bytes that are not UTF-8 are an error naming file, line and byte offset."""
    if number == 1 and raw.startswith(codecs.BOM_UTF8):  # utf-8-sig: editors on Windows write one
        raw, offset = raw[len(codecs.BOM_UTF8):], offset + len(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if number == 1 and raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise JsonlError(path, number, "the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8") from None
        bad = raw[exc.start:exc.end]
        raise JsonlError(
            path, number, f"not UTF-8 at byte offset {offset + exc.start} (byte 0x{bad[0]:02x}); save the file as UTF-8"
        ) from None


def _parse_line(text: str) -> dict:
    """One JSONL line as a dict; raises ValueError with the column (the line number is the caller's)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:  # its "line 1" is meaningless for one line: keep the column only
        raise ValueError(f"malformed JSON (at column {exc.colno}): {exc.msg}") from None
    except RecursionError:
        raise ValueError("malformed JSON: nested too deeply") from None
    if not isinstance(record, dict):
        raise ValueError(f"malformed JSON: expected a JSON object, got {type(record).__name__}")
    return record


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes, int]]:
    """(1-based line number, bytes, byte offset in the file) of each line; a line ends at \\n, \\r\\n or a lone \\r."""
    if path.is_dir():
        raise SlmlabError(f"{path}: is a directory, not a JSONL file")
    if not path.is_file():
        raise SlmlabError(f"{path}: no such file")
    try:
        f = path.open("rb")
    except OSError as exc:
        raise SlmlabError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    number = offset = 0
    with f:
        for chunk in f:  # chunks end at \n, so a \r\n is never split between two
            for raw in chunk.splitlines(keepends=True):
                number += 1
                yield number, raw, offset
                offset += len(raw)


def iter_jsonl(path: str | Path, errors: list[JsonlError] | None = None, *, allow_empty: bool = False) -> Iterator[Line]:
    """Yield parsed lines (strict). Blank lines are skipped; a UTF-8 byte-order mark is accepted.

    With ``errors`` given, malformed lines are appended to it and reading goes on, so
    one bad line does not hide the rest of the file's problems; without it the first
    malformed line raises :class:`JsonlError`. Bytes that are not UTF-8 always raise
    :class:`JsonlError` (file, line, byte offset): such a file is not a JSONL file at all.
    A file with no non-blank line raises :class:`SlmlabError` ("no records") unless
    ``allow_empty``.
    """
    path = Path(path)
    seen_any = False
    for number, raw, offset in _raw_lines(path):
        text = _decode_line(path, number, raw, offset)
        if not text.strip():
            continue
        seen_any = True
        try:
            record = _parse_line(text)
        except ValueError as exc:
            err = JsonlError(path, number, str(exc))
            if errors is None:
                raise err from None
            errors.append(err)
            continue
        yield Line(number, record)
    if not seen_any and not allow_empty:
        raise SlmlabError(f"{path}: no records (the file is empty or has only blank lines)")


def read_jsonl(path: str | Path, *, allow_empty: bool = True) -> list[dict]:
    """All records of a file (strict); the first malformed line raises with file and line.

    An empty file gives ``[]`` by default, for callers that say what "empty" means to them
    (train: "the training data is empty"); ``allow_empty=False`` makes it the "no records" error.
    """
    return [line.record for line in iter_jsonl(path, allow_empty=allow_empty)]


def read_jsonl_tolerant(path: str | Path) -> list[dict]:
    """Lines of a run's own JSONL log; a torn line (run killed mid-write) is skipped, a missing file is empty.

    Torn means anything: cut inside a multi-byte character too, so lines are split and decoded as
    bytes, one at a time (and only at \\n/\\r — U+2028 inside a string is not a line end).
    """
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            out.append(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
    return out


def count_lines(path: str | Path) -> int:
    path = Path(path)
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def truncate_lines(path: str | Path, n: int) -> None:
    """Keep the first ``n`` lines (a checkpoint records how many there were when it was taken)."""
    path = Path(path)
    if path.exists():
        # Bytes, split as count_lines splits them: a U+2028 inside a record is not a line break.
        lines = path.read_bytes().splitlines()
        atomic_write_bytes(path, b"".join(line + b"\n" for line in lines[:n]))
