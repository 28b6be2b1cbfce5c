"""`validate` and `inspect` for dataset files, in every format and shape training reads.

Files are read as :mod:`slmlab.data.shapes` reads them for training: JSON Lines through slmlab's
reader (here tolerant: a malformed line is reported and reading goes on), JSON, Parquet, CSV/TSV
and ``save_to_disk`` directories through ``datasets``, with the same ``split`` and ``columns``.

slmlab's own records (``input``/``output``) get the full check: ``validate_file`` re-derives every
checkable answer from scratch: pure-logic answers are re-solved, hybrid answers are re-solved from
the stored puzzle, tool calls are re-parsed against the registry. Records of TRL's shapes are
checked for one shape per file and the right value types. Every problem names file and line (or
row), and checking goes on after the first one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from slmlab.data.formats import REQUIRED_FIELDS
from slmlab.data.shapes import (
    SHAPES,
    DatasetError,
    apply_columns,
    check_single_split,
    detect_shape,
    is_jsonl,
    read_rows,
    record_problem,
    shape_of,
)
from slmlab.errors import SlmlabError
from slmlab.io import JsonlError, iter_jsonl


@dataclass
class DatasetFile:
    """A dataset file as read for checking: records, where each one is, malformed lines, the shape."""

    path: str
    records: list[dict]
    locations: list[str]  # "file:line" (JSONL) or "file: row N", one per record
    malformed: list[JsonlError] = field(default_factory=list)  # JSONL lines that do not parse
    shape: str | None = None  # the shape of the first record that has one

    @property
    def slmlab_records(self) -> bool:
        """slmlab's own records (``input``/``output``, also with ``prompt``/``chosen``/``rejected``), or a
        JSONL file with no recognised shape at all: checked field by field, as slmlab records always were."""
        first = next((r for r in self.records if shape_of(r) is not None), None)
        if first is None:
            return is_jsonl(Path(self.path))
        return "input" in first and "output" in first


def load_dataset_file(path: str | Path, *, split: str | None = None, columns: dict[str, str] | None = None) -> DatasetFile:
    """Read ``path`` for checking; a JSONL file's malformed lines are collected, not raised.

    Raises :class:`SlmlabError` when the file cannot be read at all (not UTF-8, unreadable as its
    format, empty JSONL, a missing mapped column).
    """
    path = Path(path)
    bad: list[JsonlError] = []
    if is_jsonl(path):
        check_single_split(path, split)
        lines = list(iter_jsonl(path, errors=bad))
        records, locations = [line.record for line in lines], [f"{path}:{line.number}" for line in lines]
    elif not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    else:
        records, locations = read_rows(path, split=split)
        if not records:
            raise DatasetError(f"{path}: no records (the dataset is empty)")
    records = apply_columns(records, columns, locations)
    shape = next((s for r in records if (s := shape_of(r)) is not None), None)
    return DatasetFile(str(path), records, locations, bad, shape)


def parse_columns(text: str | None) -> dict[str, str] | None:
    """``--columns question=prompt,answer=completion`` → ``{"question": "prompt", "answer": "completion"}``."""
    if not text:
        return None
    columns = {}
    for item in text.split(","):
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise SlmlabError(f"--columns: expected FROM=TO pairs separated by commas, e.g. "
                              f"question=prompt,answer=completion; got {text!r}")
        columns[src.strip()] = dst.strip()
    return columns


@dataclass
class ValidationReport:
    path: str
    records: int = 0
    logic_checked: int = 0
    tools_checked: int = 0
    errors: list[str] = field(default_factory=list)
    shape: str | None = None
    slmlab: bool = True  # checked as slmlab records (field by field), else by shape

    @property
    def ok(self) -> bool:
        return not self.errors


def _check_logic(record: dict) -> tuple[bool, str | None]:
    """(was it a logic record, its problem or None).

    Logic records are those that carry a ``puzzle`` field (generated pure and hybrid
    records) or whose output is a single certainty glyph (user files in the v6 style).
    """
    from slmlab.data.glyphs import CERTAINTY_SCALE, first_glyph
    from slmlab.data.logic import solve

    output = record["output"].strip()
    if "puzzle" in record:
        puzzle, claimed = record["puzzle"], first_glyph(output)
        if record.get("render") == "pure" and record["input"] != puzzle:
            return True, "pure record's input differs from its puzzle"
    elif output in CERTAINTY_SCALE:
        puzzle, claimed = record["input"], output
    else:
        return False, None
    if claimed is None:
        return True, "output has no certainty glyph"
    solved = solve(puzzle)  # parse errors propagate with their column
    if solved != claimed:
        return True, f"answer {claimed} is wrong: the solver gives {solved} for {puzzle!r}"
    if "answer" in record and record["answer"] != solved:
        return True, f"field 'answer' is {record['answer']} but the solver gives {solved}"
    if "rejected" in record and first_glyph(record["rejected"]) == solved:
        return True, f"the rejected answer {record['rejected']!r} is the right one ({solved})"
    return True, None


def _check_tool(record: dict, registry) -> str | None:
    from slmlab.data.tools import call_matches, parse_tool_calls

    calls = parse_tool_calls(record["output"], registry)
    if len(calls) != 1:
        return f"expected exactly one tool call in output, found {len(calls)}"
    call = calls[0]
    if not call.valid:
        return "invalid tool call: " + "; ".join(call.errors)
    if not call_matches(call, record["expected_call"]):
        return f"tool call {call.raw} does not match expected_call {record['expected_call']}"
    return None


def validate_file(path: str | Path, registry=None, *, split: str | None = None,
                  columns: dict[str, str] | None = None) -> ValidationReport:
    """Check a dataset file: slmlab records field by field (ids, logic answers, tool calls), others by shape."""
    data = load_dataset_file(path, split=split, columns=columns)
    report = ValidationReport(str(path), shape=data.shape, slmlab=data.slmlab_records)
    if report.slmlab:
        _validate_slmlab(data, report, registry)
    else:
        _validate_shapes(data, report)
    report.errors = [str(e) for e in data.malformed] + report.errors
    report.errors.sort(key=_line_of)
    return report


def _validate_slmlab(data: DatasetFile, report: ValidationReport, registry) -> None:
    from slmlab.data.tools import load_registry

    registry = registry or load_registry()
    seen_ids: dict[str, int] = {}
    for rec, where in zip(data.records, data.locations):
        report.records += 1
        missing = [f for f in REQUIRED_FIELDS if not isinstance(rec.get(f), str)]
        if missing:
            report.errors.append(f"{where}: missing or non-string field(s): {', '.join(missing)}")
            continue
        if rec["id"] in seen_ids:
            report.errors.append(f"{where}: duplicate id {rec['id']!r} (first on {_position(seen_ids[rec['id']])})")
        seen_ids.setdefault(rec["id"], where)
        try:
            is_logic, problem = _check_logic(rec)
            report.logic_checked += is_logic and problem is None
            if problem is None and "expected_call" in rec:
                problem = _check_tool(rec, registry)
                report.tools_checked += problem is None
        except ValueError as exc:  # parse errors, undecidable puzzles
            problem = str(exc)
        if problem:
            report.errors.append(f"{where}: {problem}")


def _position(where: str) -> str:
    """``file:12`` → ``line 12``; ``file: row 3`` → ``row 3``."""
    tail = where.rsplit(":", 1)[1].strip()
    return tail if tail.startswith("row") else f"line {tail}"


def _validate_shapes(data: DatasetFile, report: ValidationReport) -> None:
    """Every record of the file's shape, with values of the right types (what training would refuse)."""
    if data.shape is None:  # nothing recognisable: one error, with every shape and an example
        one_shape(data)
    first = next(loc for r, loc in zip(data.records, data.locations) if shape_of(r) is not None)
    for rec, where in zip(data.records, data.locations):
        report.records += 1
        shape = shape_of(rec)
        if shape is None:
            problem = (f"no recognised dataset shape for a record with keys {', '.join(map(repr, rec)) or '(none)'}; "
                       f"{first} is {data.shape} ({', '.join(SHAPES[data.shape].keys)})")
        elif shape != data.shape:
            problem = (f"this record is {shape} ({', '.join(SHAPES[shape].keys)}) but {first} is {data.shape}; "
                       "every record of a dataset must have the same shape")
        else:
            problem = record_problem(shape, rec) or _text_problem(shape, rec)
        if problem:
            report.errors.append(f"{where}: {problem}")


def _text_problem(shape: str, record: dict) -> str | None:
    """String shapes that ``record_problem`` leaves to the renderer: checked here, so the row is named."""
    keys = {"preference (text)": ("prompt", "chosen", "rejected"), "slmlab": ("input", "output")}.get(shape, ())
    bad = [k for k in keys if not isinstance(record.get(k), str)]
    return f"field(s) {', '.join(map(repr, bad))} must be strings" if bad else None


def _line_of(message: str) -> int:
    """The line (``file:12: ...``) or row (``file: row 12: ...``) a problem names, for sorting."""
    head = message.split(": ", 2)
    try:
        if len(head) > 1 and head[1].startswith("row "):
            return int(head[1][4:])
        return int(message.split(":", 2)[1])
    except (IndexError, ValueError):
        return 0


@dataclass
class InspectReport:
    path: str
    records: int
    categories: Counter
    families: Counter
    answers: Counter
    renders: Counter
    lengths: list[int]
    length_unit: str
    duplicate_pairs: int
    conflicting_inputs: int
    malformed_lines: int
    malformed: list[str] = field(default_factory=list)  # "file:line: message" of each, in file order
    shape: str | None = None
    length_of: str = "input+output"  # what a length measures
    messages: Counter = field(default_factory=Counter)  # messages per record (conversational shapes)
    duplicates_label: str = "duplicate (input, output) pairs"
    conflicts_label: str | None = "inputs with conflicting outputs"

    def histogram(self, bins: int = 8) -> list[tuple[int, int, int]]:
        """(low, high, count) buckets over the length distribution."""
        if not self.lengths:
            return []
        lo, hi = min(self.lengths), max(self.lengths)
        width = max(1, -(-(hi - lo + 1) // bins))
        counts = Counter((n - lo) // width for n in self.lengths)
        return [(lo + i * width, lo + (i + 1) * width - 1, counts.get(i, 0)) for i in range(bins) if lo + i * width <= hi]


def read_dataset(path: str | Path, *, split: str | None = None, columns: dict[str, str] | None = None) -> DatasetFile:
    """A dataset file for inspection: :func:`load_dataset_file`, and one shape for all records.

    Raises :class:`SlmlabError` when there is nothing to use: bytes that are not UTF-8, an empty
    file, no line that parses (naming the first malformed one), or records of TRL's shapes that are
    mixed or malformed (naming the line or row). slmlab's own records are shown as they are.
    """
    data = load_dataset_file(path, split=split, columns=columns)
    if not data.records:
        bad = data.malformed
        raise SlmlabError(f"{path}: no records: all {len(bad)} non-blank line(s) are malformed; the first: {bad[0]}")
    if not data.slmlab_records:
        one_shape(data)
    return data


def one_shape(data: DatasetFile) -> str:
    """The one shape of all records (:func:`slmlab.data.shapes.detect_shape`), its error naming the CLI option."""
    try:
        return detect_shape(data.records, data.path, data.locations)
    except DatasetError as exc:
        hint = "\nWith `slmlab data`: --columns question=prompt,answer=completion." if "data.columns" in str(exc) else ""
        raise DatasetError(f"{exc}{hint}") from None


#: Per shape family: (what a length measures, the duplicates label, the conflicts label).
_PAIR_LABELS = {
    "slmlab": ("input+output", "duplicate (input, output) pairs", "inputs with conflicting outputs"),
    "prompt-completion": ("prompt+completion", "duplicate (prompt, completion) pairs", "prompts with conflicting completions"),
    "preference": ("prompt+chosen", "duplicate (prompt, chosen) pairs", "prompts with conflicting chosen answers"),
    "conversational": ("messages", "duplicate conversations", "contexts with conflicting last messages"),
    "language-modelling": ("text", "duplicate texts", None),
}


def _family(shape: str | None, slmlab_records: bool) -> str:
    if slmlab_records or shape is None:
        return "slmlab"
    return shape.split(" (")[0]


def _pair(family: str, r: dict) -> tuple:
    """(what the model is given, what it learns) of a record, as hashable values."""
    if family == "slmlab":
        return _key(r.get("input")), _key(r.get("output"))
    if family == "prompt-completion":
        return _key(r["prompt"]), _key(r["completion"])
    if family == "preference":
        return _key(r["prompt"]), _key(r["chosen"])
    if family == "conversational":
        return _key(r["messages"][:-1]), _key(r["messages"][-1])
    return _key(r["text"]), None


def _key(value) -> object:
    return value if value is None or isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _text(family: str, r: dict) -> str:
    """The text a length is measured on (message contents joined by newlines)."""
    if family == "slmlab":
        return f"{r.get('input', '')}{r.get('output', '')}"
    if family == "language-modelling":
        return r["text"]
    parts = ([r["messages"]] if family == "conversational"
             else [r["prompt"], r["completion" if family == "prompt-completion" else "chosen"]])
    return "".join(p if isinstance(p, str) else "\n".join(m["content"] for m in p) for p in parts)


def inspect_file(path: str | Path, tokenizer=None, *, dataset: DatasetFile | None = None) -> InspectReport:
    """Shape, categories, answer balance, length distribution (tokens if a tokenizer is given) and duplicates.

    ``dataset`` is :func:`read_dataset`'s answer when the caller has read the file already
    (the CLI does, so that a bad file fails before a tokenizer loads).
    """
    data = dataset if dataset is not None else read_dataset(path)
    records, family = data.records, _family(data.shape, data.slmlab_records)
    pairs = Counter(_pair(family, r) for r in records)
    outputs_by_input: dict[object, set] = {}
    for given, learned in pairs:
        outputs_by_input.setdefault(given, set()).add(learned)
    texts = [_text(family, r) for r in records]
    if tokenizer is not None:
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
        unit = "tokens"
    else:
        lengths, unit = [len(t) for t in texts], "characters"
    length_of, duplicates_label, conflicts_label = _PAIR_LABELS[family]
    own = family == "slmlab"  # slmlab records always show these (with "?" for a record without one)
    return InspectReport(
        path=str(path),
        records=len(records),
        categories=Counter(_key(r.get("category", "?")) for r in records if own or "category" in r),
        families=Counter(_key(r.get("family", "?")) for r in records if own or "family" in r),
        answers=Counter(_key(r["answer"]) for r in records if "answer" in r),
        renders=Counter(_key(r["render"]) for r in records if "render" in r),
        lengths=lengths,
        length_unit=unit,
        duplicate_pairs=sum(c - 1 for c in pairs.values() if c > 1),
        conflicting_inputs=sum(1 for outs in outputs_by_input.values() if len(outs) > 1),
        malformed_lines=len(data.malformed),
        malformed=[str(e) for e in data.malformed],
        shape=data.shape,
        length_of=length_of,
        messages=Counter(len(r["messages"]) for r in records) if family == "conversational" else Counter(),
        duplicates_label=duplicates_label,
        conflicts_label=conflicts_label,
    )
