"""File I/O in one place: atomic writes, JSON, and JSONL read two ways.

* **Strict** (:func:`iter_jsonl`, :func:`read_jsonl`) — for data a user gives us: a malformed line
  is an error naming the file and the 1-based line (:class:`JsonlError`).
* **Tolerant** (:func:`read_jsonl_tolerant`) — for a run's own logs, which a kill may leave with a
  torn last line: unparseable lines are skipped, a missing file is empty.

Every write that a user would hate to lose goes through :func:`atomic_write_bytes`: a temp file in
the same directory, fsync, rename — readers see the old file or the new one, never half of one.
"""

from __future__ import annotations

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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
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


def iter_jsonl(path: str | Path, errors: list[JsonlError] | None = None) -> Iterator[Line]:
    """Yield parsed lines (strict). Blank lines are skipped.

    With ``errors`` given, malformed lines are appended to it and reading goes on, so
    one bad line does not hide the rest of the file's problems; without it the first
    malformed line raises :class:`JsonlError`.
    """
    path = Path(path)
    if not path.is_file():
        raise SlmlabError(f"{path}: no such file")
    with path.open(encoding="utf-8") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                err = JsonlError(path, number, f"malformed JSON line: {exc}")
                if errors is None:
                    raise err from None
                errors.append(err)
                continue
            yield Line(number, record)


def read_jsonl(path: str | Path) -> list[dict]:
    """All records of a file (strict); the first malformed line raises with file and line."""
    return [line.record for line in iter_jsonl(path)]


def read_jsonl_tolerant(path: str | Path) -> list[dict]:
    """Lines of a run's own JSONL log; a torn line (run killed mid-write) is skipped, a missing file is empty."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def count_lines(path: str | Path) -> int:
    path = Path(path)
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def truncate_lines(path: str | Path, n: int) -> None:
    """Keep the first ``n`` lines (a checkpoint records how many there were when it was taken)."""
    path = Path(path)
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
        atomic_write_text(path, "".join(line + "\n" for line in lines[:n]))
