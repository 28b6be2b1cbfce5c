"""JSONL and file I/O: atomic writes, line-numbered errors, deterministic bytes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from slmlab.errors import SlmlabError

# Every record carries these; generators may add more (answer, puzzle, style, …).
REQUIRED_FIELDS = ("id", "input", "output", "category", "family")


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
    """Yield parsed lines. Blank lines are skipped.

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
    """All records of a file; the first malformed line raises with file and line."""
    return [line.record for line in iter_jsonl(path)]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
