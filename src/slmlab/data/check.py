"""`validate` and `inspect` for dataset files.

``validate_file`` re-derives every checkable answer from scratch: pure-logic answers
are re-solved, hybrid answers are re-solved from the stored puzzle, tool calls are
re-parsed against the registry. Every problem names file and line, and checking goes
on after the first one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from slmlab.data.formats import REQUIRED_FIELDS
from slmlab.errors import SlmlabError
from slmlab.io import JsonlError, iter_jsonl


@dataclass
class ValidationReport:
    path: str
    records: int = 0
    logic_checked: int = 0
    tools_checked: int = 0
    errors: list[str] = field(default_factory=list)

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


def validate_file(path: str | Path, registry=None) -> ValidationReport:
    """Check schema, ids, every logic answer and every tool call in a JSONL dataset file."""
    from slmlab.data.tools import load_registry

    registry = registry or load_registry()
    report = ValidationReport(str(path))
    bad_lines: list[JsonlError] = []
    seen_ids: dict[str, int] = {}
    for line in iter_jsonl(path, errors=bad_lines):
        report.records += 1
        rec, where = line.record, f"{path}:{line.number}"
        missing = [f for f in REQUIRED_FIELDS if not isinstance(rec.get(f), str)]
        if missing:
            report.errors.append(f"{where}: missing or non-string field(s): {', '.join(missing)}")
            continue
        if rec["id"] in seen_ids:
            report.errors.append(f"{where}: duplicate id {rec['id']!r} (first on line {seen_ids[rec['id']]})")
        seen_ids.setdefault(rec["id"], line.number)
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
    report.errors = [str(e) for e in bad_lines] + report.errors
    report.errors.sort(key=_line_of)
    return report


def _line_of(message: str) -> int:
    try:
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

    def histogram(self, bins: int = 8) -> list[tuple[int, int, int]]:
        """(low, high, count) buckets over the length distribution."""
        if not self.lengths:
            return []
        lo, hi = min(self.lengths), max(self.lengths)
        width = max(1, -(-(hi - lo + 1) // bins))
        counts = Counter((n - lo) // width for n in self.lengths)
        return [(lo + i * width, lo + (i + 1) * width - 1, counts.get(i, 0)) for i in range(bins) if lo + i * width <= hi]


def read_dataset(path: str | Path) -> tuple[list[dict], list[JsonlError]]:
    """A dataset file's records and its malformed lines (reading goes on past them).

    Raises :class:`SlmlabError` when there is nothing to use: bytes that are not UTF-8, an
    empty file, or no line that parses (naming the first malformed one).
    """
    bad: list[JsonlError] = []
    records = [line.record for line in iter_jsonl(path, errors=bad)]
    if not records:
        raise SlmlabError(f"{path}: no records: all {len(bad)} non-blank line(s) are malformed; the first: {bad[0]}")
    return records, bad


def inspect_file(path: str | Path, tokenizer=None, *, dataset: tuple[list[dict], list[JsonlError]] | None = None) -> InspectReport:
    """Categories, answer balance, length distribution (tokens if a tokenizer is given) and duplicates.

    ``dataset`` is :func:`read_dataset`'s answer when the caller has read the file already
    (the CLI does, so that a bad file fails before a tokenizer loads).
    """
    records, bad = dataset if dataset is not None else read_dataset(path)
    pairs = Counter((r.get("input"), r.get("output")) for r in records)
    outputs_by_input: dict[object, set] = {}
    for r in records:
        outputs_by_input.setdefault(r.get("input"), set()).add(r.get("output"))
    texts = [f"{r.get('input', '')}{r.get('output', '')}" for r in records]
    if tokenizer is not None:
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
        unit = "tokens"
    else:
        lengths, unit = [len(t) for t in texts], "characters"
    return InspectReport(
        path=str(path),
        records=len(records),
        categories=Counter(r.get("category", "?") for r in records),
        families=Counter(r.get("family", "?") for r in records),
        answers=Counter(r["answer"] for r in records if "answer" in r),
        renders=Counter(r["render"] for r in records if "render" in r),
        lengths=lengths,
        length_unit=unit,
        duplicate_pairs=sum(c - 1 for c in pairs.values() if c > 1),
        conflicting_inputs=sum(1 for outs in outputs_by_input.values() if len(outs) > 1),
        malformed_lines=len(bad),
        malformed=[str(e) for e in bad],
    )
