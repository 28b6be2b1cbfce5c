"""Datasets as users have them: TRL's standard shapes and slmlab's own records, from any common file.

A *shape* is what a record's keys say it is (after the ``columns`` mapping); every record of a
file must have the same one. Detection order, first match wins (so a slmlab record that also
carries a ``text`` field stays a slmlab record):

=================================== ============================== ================== =========
shape                               keys                           values             objective
=================================== ============================== ================== =========
preference (conversational)         prompt, chosen, rejected       lists of messages  dpo, orpo
preference (text)                   prompt, chosen, rejected       strings            dpo, orpo
prompt-completion (conversational)  prompt, completion             lists of messages  sft
prompt-completion                   prompt, completion             strings            sft
conversational                      messages                       list of messages   sft
slmlab                              input, output                  strings            sft
language-modelling                  text                           string             sft
=================================== ============================== ================== =========

A message is ``{"role": ..., "content": ...}`` with string values (other keys are passed to the
chat template; ``None`` values are dropped). ``preference (text)`` is also slmlab's own preference
record, rendered through its template (``format``/``role``) exactly as before.

Files (:func:`read_dataset`): JSON Lines (``.jsonl``, and any name not listed below) through
slmlab's strict reader (errors name ``file:line``); ``.json``, ``.parquet``, ``.csv``/``.tsv``
and a directory written by ``datasets``' ``save_to_disk`` through the ``datasets`` library
(errors name the row). How each shape becomes tokens and targets lives in
:mod:`slmlab.train.data`; ``docs/datasets.md`` is the user-facing description.
"""

from __future__ import annotations

import contextlib
import csv
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from slmlab.errors import SlmlabError


class DatasetError(SlmlabError):
    """A dataset file that cannot be used: unreadable, empty, of no known shape, or of mixed shapes."""


@dataclass(frozen=True)
class Shape:
    name: str
    keys: tuple[str, ...]
    values: str  # what the keys hold, for messages and docs
    unit_size: int  # examples per record: 1 (supervised fine-tuning) or 2 (a chosen/rejected pair)
    conversational: bool
    example: str


_MSG = '[{"role": "user", "content": "2+2?"}]'
_ANS = '[{"role": "assistant", "content": "4"}]'

SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("preference (conversational)", ("prompt", "chosen", "rejected"), "lists of messages", 2, True,
              f'{{"prompt": {_MSG}, "chosen": {_ANS}, "rejected": [{{"role": "assistant", "content": "5"}}]}}'),
        Shape("preference (text)", ("prompt", "chosen", "rejected"), "strings", 2, False,
              '{"prompt": "2+2?", "chosen": "4", "rejected": "5"}'),
        Shape("prompt-completion (conversational)", ("prompt", "completion"), "lists of messages", 1, True,
              f'{{"prompt": {_MSG}, "completion": {_ANS}}}'),
        Shape("prompt-completion", ("prompt", "completion"), "strings", 1, False,
              '{"prompt": "2+2=", "completion": "4"}'),
        Shape("conversational", ("messages",), "a list of messages", 1, True,
              '{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}'),
        Shape("slmlab", ("input", "output"), "strings (optional format/role)", 1, False,
              '{"input": "2+2?", "output": "4"}'),
        Shape("language-modelling", ("text",), "a string", 1, False, '{"text": "Two and two make four."}'),
    )
}

#: Shapes each kind of objective trains on: by unit size (1: SFT-like, 2: preference pairs).
SFT_SHAPES = tuple(n for n, s in SHAPES.items() if s.unit_size == 1)
PREFERENCE_SHAPES = tuple(n for n, s in SHAPES.items() if s.unit_size == 2)

#: File kinds read through ``datasets`` (by suffix); anything else that is a file is JSON Lines.
DATASETS_SUFFIXES = {".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}
ACCEPTED_FILES = ("JSON Lines (.jsonl), JSON (.json), Parquet (.parquet), CSV (.csv/.tsv), "
                  "or a directory written by datasets' save_to_disk")


def recognised_shapes() -> str:
    """The recognised shapes, one per line, with an example record each (for error messages)."""
    return "\n".join(f"  {s.name}: {', '.join(s.keys)} ({s.values}), e.g. {s.example}" for s in SHAPES.values())


# --------------------------------------------------------------------------- detection


def shape_of(record: dict) -> str | None:
    """The shape a record's keys say it has (first match in :data:`SHAPES` order), or None."""
    def has(*keys: str) -> bool:
        return all(k in record for k in keys)

    if has("prompt", "chosen", "rejected"):
        return "preference (conversational)" if isinstance(record["prompt"], list) else "preference (text)"
    if has("prompt", "completion"):
        if isinstance(record.get("label"), bool):
            return None  # unpaired preference (KTO): not something SFT should learn every completion of
        return "prompt-completion (conversational)" if isinstance(record["prompt"], list) else "prompt-completion"
    if has("messages"):
        return "conversational"
    if has("input", "output"):
        return "slmlab"
    if has("text"):
        return "language-modelling"
    return None


def _unsupported_hint(record: dict) -> str:
    keys = set(record)
    if {"prompt", "completion", "label"} <= keys:
        return ("It looks like an unpaired preference record (prompt/completion/label, for KTO), which slmlab does not "
                "train on; give prompt/chosen/rejected pairs, or drop `label` to learn every completion. ")
    if {"chosen", "rejected"} <= keys:
        return ("It looks like a preference record with an implicit prompt (chosen/rejected without `prompt`); "
                "put the shared beginning of the conversations in a `prompt` field. ")
    if keys & {"prompt", "question", "instruction"} and not keys & {"completion", "answer", "response", "output"}:
        return "It has a prompt but nothing to learn (prompt-only data is for generation, not training). "
    return ""


def _message_problem(value, field: str) -> str | None:
    if not isinstance(value, list) or not value:
        return f"field {field!r} must be a non-empty list of messages ({{'role': ..., 'content': ...}}), got {_kind(value)}"
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            return f"{field}[{j}] must be a message ({{'role': ..., 'content': ...}}), got {_kind(m)}"
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                return (f"{field}[{j}] needs a string {key!r}, got {_kind(m.get(key))}"
                        + (" (multi-part or tool-call content is not supported)" if key == "content" else ""))
    return None


def _kind(value) -> str:
    return "nothing" if value is None else type(value).__name__


def record_problem(shape: str, record: dict) -> str | None:
    """What is wrong with the values of a record of ``shape`` (None when nothing is).

    slmlab's own records (``slmlab``, ``preference (text)``) are checked where they are rendered,
    as they always were; the other shapes are checked here, so the error can name the line.
    """
    if shape in ("slmlab", "preference (text)"):
        return None
    if shape == "prompt-completion":
        keys = ("prompt", "completion")
    elif shape == "language-modelling":
        keys = ("text",)
    else:
        keys = ()
    for key in keys:
        if not isinstance(record.get(key), str):
            return f"field {key!r} must be a string, got {_kind(record.get(key))}"
    if shape == "language-modelling" and not isinstance(record.get("eos", True), bool):
        return f"field 'eos' must be true or false (false: the text continues in the next record), got {_kind(record.get('eos'))}"
    if shape == "conversational":
        return _message_problem(record.get("messages"), "messages")
    if shape == "prompt-completion (conversational)":
        return _message_problem(record.get("prompt"), "prompt") or _message_problem(record.get("completion"), "completion")
    if shape == "preference (conversational)":
        return next((p for f in ("prompt", "chosen", "rejected") if (p := _message_problem(record.get(f), f))), None)
    return None


def detect_shape(records: list[dict], where: str, locations: list[str] | None = None) -> str:
    """The one shape of all ``records``; raises :class:`DatasetError` naming the first record that breaks it.

    ``locations`` (``file:line`` or ``file: row N`` per record) make the error point at the record;
    without them records are numbered from 1 after ``where``.
    """
    if not records:
        raise DatasetError(f"{where}: no records")
    locs = locations or [f"{where}: record {i + 1}" for i in range(len(records))]
    first = None
    for i, rec in enumerate(records):
        shape = shape_of(rec)
        if shape is None:
            raise DatasetError(
                f"{locs[i]}: no recognised dataset shape for a record with keys {', '.join(map(repr, rec)) or '(none)'}. "
                f"{_unsupported_hint(rec)}Recognised shapes (keys, detected in this order):\n{recognised_shapes()}\n"
                "Other column names can be mapped with data.columns, e.g. {question: prompt, answer: completion}."
            )
        if first is None:
            first = shape
        elif shape != first:
            raise DatasetError(
                f"{locs[i]}: this record is {shape} ({', '.join(SHAPES[shape].keys)}) but {locs[0]} is {first} "
                f"({', '.join(SHAPES[first].keys)}); every record of a dataset must have the same shape"
            )
        problem = record_problem(shape, rec)
        if problem:
            raise DatasetError(f"{locs[i]}: {shape} record: {problem}")
    return first


def apply_columns(records: list[dict], columns: dict[str, str] | None, locations: list[str]) -> list[dict]:
    """Rename each record's keys: ``columns`` maps the file's names to the shape's (``{question: prompt}``)."""
    if not columns:
        return records
    out = []
    for rec, loc in zip(records, locations):
        for src, dst in columns.items():
            if src not in rec:
                raise DatasetError(f"{loc}: data.columns maps {src!r} to {dst!r}, but the record has no {src!r} "
                                   f"(its keys: {', '.join(map(repr, rec)) or 'none'})")
            if dst in rec and dst not in columns:
                raise DatasetError(f"{loc}: data.columns maps {src!r} to {dst!r}, but the record already has a {dst!r}; "
                                   f"map that one elsewhere too, or leave {src!r} alone")
        out.append({columns.get(k, k): v for k, v in rec.items()})
    return out


# --------------------------------------------------------------------------- reading


def read_dataset(path: str | Path, *, split: str | None = None, columns: dict[str, str] | None = None,
                 allow_empty: bool = False, default_splits: tuple[str, ...] = ("train",)) -> tuple[list[dict], str | None]:
    """Records of a dataset file or ``save_to_disk`` directory, and their one shape.

    JSON Lines goes through slmlab's strict reader, unchanged (records exactly as written,
    ``file:line`` errors); JSON, Parquet, CSV and ``save_to_disk`` directories through the
    ``datasets`` library (the ``None`` that columnar formats put in a record's missing fields is
    dropped, so a mixed file is still recognised as mixed). ``split`` picks a ``DatasetDict``'s
    split (a single file has one, ``train``); without it, the only split or the first of
    ``default_splits`` present. ``columns`` renames keys before the shape is detected. An empty
    dataset is ``([], None)`` with ``allow_empty``, else a :class:`DatasetError` ("no records").
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    if is_jsonl(path):
        check_single_split(path, split)
        records, locations = _read_jsonl(path, allow_empty)
    else:
        records, locations = read_rows(path, split=split, default_splits=default_splits)
    if not records:
        if allow_empty:
            return [], None
        raise DatasetError(f"{path}: no records (the dataset is empty)")
    records = apply_columns(records, columns, locations)
    return records, detect_shape(records, str(path), locations)


def is_jsonl(path: Path) -> bool:
    """Whether slmlab's own JSONL reader reads ``path`` (any file whose suffix ``datasets`` does not claim)."""
    return not path.is_dir() and path.suffix.lower() not in DATASETS_SUFFIXES


def check_single_split(path: Path, split: str | None) -> None:
    """A single file has one split, ``train``: any other is an error."""
    if split not in (None, "train"):
        raise DatasetError(f"{path}: a single file has one split, 'train'; there is no split {split!r} "
                           "(splits are for directories written by save_to_disk)")


def read_rows(path: Path, *, split: str | None = None, default_splits: tuple[str, ...] = ("train",)
              ) -> tuple[list[dict], list[str]]:
    """Records and their locations (``file: row N``) of a file read through ``datasets`` (JSON, Parquet,
    CSV/TSV) or a ``save_to_disk`` directory; no columns mapped, no shape detected."""
    if path.is_dir():
        return _read_saved(path, split, default_splits)
    check_single_split(path, split)
    return _read_file(path, DATASETS_SUFFIXES[path.suffix.lower()])


def _read_jsonl(path: Path, allow_empty: bool) -> tuple[list[dict], list[str]]:
    from slmlab.io import iter_jsonl

    lines = list(iter_jsonl(path, allow_empty=allow_empty))
    return [line.record for line in lines], [f"{path}:{line.number}" for line in lines]


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or info logs from ``datasets`` while a file is read (restored afterwards)."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    level = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if bars:
            datasets.enable_progress_bars()


def _clean(row: dict) -> dict:
    """Drop the ``None`` that columnar formats give a record for fields other records have."""
    return {k: v for k, v in row.items() if v is not None}


def _read_file(path: Path, kind: str) -> tuple[list[dict], list[str]]:
    import datasets

    try:
        text_start = path.read_bytes()[:4096] if kind in ("json", "csv") else b"x"
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not text_start.strip():
        return [], []  # an empty file: ``datasets`` would raise a bare StopIteration
    if kind == "parquet" and _parquet_rows(path) == 0:
        return [], []  # ``datasets`` fails on a Parquet file without rows ("BatchSize must be greater than 0")
    options: dict = {}
    if kind == "csv":
        # Every column as text, cell by cell: no "NA"/"None" turned into missing values, no "4" into an int
        # (an empty cell is a missing field: see below).
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        header = _csv_header(path, sep)
        options = {"sep": sep, "keep_default_na": False, "na_filter": False,
                   "features": datasets.Features({name: datasets.Value("string") for name in header})}
    try:
        with tempfile.TemporaryDirectory(prefix="slmlab-datasets-") as cache, _quiet_datasets():
            ds = datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=cache,
                                       keep_in_memory=True, **options)
            rows = ds.to_list()
    except Exception as exc:  # datasets/pyarrow/pandas raise many types; all mean "this file cannot be read"
        if "corresponds to no data" in str(exc):  # "[]", or a CSV header without rows
            return [], []
        raise DatasetError(_unreadable(path, kind, exc)) from None
    if kind == "csv":  # an empty cell is how CSV writes a field this record does not have
        rows = [{k: v for k, v in r.items() if v != ""} for r in rows]
    return [_clean(r) for r in rows], [f"{path}: row {i + 1}" for i in range(len(rows))]


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(str(path)).metadata.num_rows
    except Exception as exc:  # pyarrow: ArrowInvalid ("Parquet magic bytes not found"), OSError, …
        raise DatasetError(_unreadable(path, "parquet", exc)) from None


def _csv_header(path: Path, sep: str) -> list[str]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f, delimiter=sep), [])
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8; save the file as UTF-8") from None
    if not header or any(not h for h in header) or len(set(header)) != len(header):
        raise DatasetError(f"{path}: the first line must name every column, once each (got {header!r})")
    return header


_LABELS = {"json": "JSON", "csv": "CSV", "parquet": "Parquet", "saved": "a save_to_disk directory"}


def _unreadable(path: Path, kind: str, exc: Exception) -> str:
    """The most useful description of why ``datasets`` could not read a file."""
    if kind == "json":
        located = _json_error(path)
        if located:
            return located
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"{path}: cannot be read as {_LABELS.get(kind, kind)}: {detail}"


def _json_error(path: Path) -> str | None:
    """For a malformed .json file, where it breaks: JSON Lines by line, a JSON document by line and column."""
    from slmlab.io import JsonlError, iter_jsonl

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        return f"{path}: not UTF-8 at byte offset {exc.start}; save the file as UTF-8"
    if text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            return f"{path}:{e.lineno}: malformed JSON (at column {e.colno}): {e.msg}"
        return None
    try:
        for _ in iter_jsonl(path, allow_empty=True):
            pass
    except JsonlError as e:
        return str(e)
    return None


def _read_saved(path: Path, split: str | None, default_splits: tuple[str, ...]) -> tuple[list[dict], list[str]]:
    if not ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()
            or (path / "dataset_dict.json").is_file()):
        raise DatasetError(f"{path}: is a directory, but not one written by datasets' save_to_disk "
                           f"(no dataset_dict.json, state.json or dataset_info.json). Accepted: {ACCEPTED_FILES}")
    import datasets

    try:
        with _quiet_datasets():
            loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
    except Exception as exc:
        raise DatasetError(_unreadable(path, "saved", exc)) from None
    if isinstance(loaded, datasets.DatasetDict):
        name = choose_split(path, list(loaded), split, default_splits)
        ds = loaded[name]
    else:
        if split is not None and split != "train":
            raise DatasetError(f"{path}: holds one Dataset, not a DatasetDict: there is no split {split!r}")
        name, ds = None, loaded
    rows = ds.to_list()
    where = f"{path} (split {name!r})" if name else str(path)
    return [_clean(r) for r in rows], [f"{where}: row {i + 1}" for i in range(len(rows))]


def choose_split(path: Path | str, available: list[str], split: str | None, default_splits: tuple[str, ...]) -> str:
    """The split to read: the one asked for, else the only one, else the first default present."""
    if split is not None:
        if split not in available:
            raise DatasetError(f"{path}: no split {split!r}; its splits: {', '.join(available)}")
        return split
    if len(available) == 1:
        return available[0]
    for name in default_splits:
        if name in available:
            return name
    raise DatasetError(f"{path}: has splits {', '.join(available)}; choose one (data.split for data.train, "
                       "data.eval_split for data.eval)")
