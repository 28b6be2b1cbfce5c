"""Input that is not what it claims: every command that reads JSONL gives one clear line, never a traceback.

Bytes that are not UTF-8, an empty file and a file of blank lines are errors (exit 2) naming the file;
a UTF-8 byte-order mark is accepted. Messages name the file's own line, and a command that writes
output checks its whole input first.
"""

import codecs
import json
import random
import sys

import pytest

from slmlab.cli import main
from slmlab.errors import SlmlabError
from slmlab.io import JsonlError, dumps_record, iter_jsonl, read_jsonl, read_jsonl_tolerant


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["slmlab", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _dataset_records(n: int = 8) -> list[dict]:
    return [{"id": str(i), "input": f"P{i}→Q{i},P{i}?Q{i}", "output": "●", "category": "t", "family": "f", "text": f"a line {i}"}
            for i in range(n)]


def _jsonl(records: list[dict]) -> bytes:
    return "".join(dumps_record(r) + "\n" for r in records).encode("utf-8")


def _random_non_utf8(seed: int) -> bytes:
    data = bytearray(random.Random(seed).randbytes(300))
    data[150] = 0xFF  # never valid in UTF-8, whatever the random bytes around it
    with pytest.raises(UnicodeDecodeError):
        bytes(data).decode("utf-8")
    return bytes(data)


BAD_FILES = {
    "random-bytes-1": lambda: _random_non_utf8(1),
    "random-bytes-2": lambda: _random_non_utf8(2),
    "latin-1-line": lambda: _jsonl(_dataset_records(3)) + '{"id": "x", "text": "café"}\n'.encode("latin-1"),
    "empty": lambda: b"",
    "blank-lines": lambda: b"\n  \n\r\n\t\n",
    "bom-only": lambda: codecs.BOM_UTF8 + b"\n",
}


def _train_args(tmp_path, data_file) -> list[str]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: tiny-random\noutput_dir: {tmp_path / 'runs'}\ndata: {{train: {data_file}, max_length: 64}}\n"
                   "max_steps: 2\nsave_every: null\nwatch: {enabled: false, dashboard: false}\n", encoding="utf-8")
    return ["train", str(cfg)]


COMMANDS = {
    "data validate": lambda tmp_path, f: ["data", "validate", str(f)],
    "data inspect": lambda tmp_path, f: ["data", "inspect", str(f), "--tokenizer", "none"],
    "basins label": lambda tmp_path, f: ["basins", "label", str(f)],
    "train": _train_args,
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_file_that_is_not_utf8_jsonl_with_records_is_one_clear_error(monkeypatch, capsys, tmp_path, command, kind):
    data = tmp_path / f"in-{kind}.jsonl"
    data.write_bytes(BAD_FILES[kind]())
    code, out, err = run_main(monkeypatch, capsys, *COMMANDS[command](tmp_path, data))
    assert code == 2, (out, err)
    assert "Traceback" not in err and data.name in err
    if kind.startswith(("random", "latin")):
        assert "UTF-8" in err
    else:
        assert "no records" in err or "empty" in err
    if command == "basins label":
        assert out == ""  # nothing half-written
    if command == "train":
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_utf8_bom_is_accepted(monkeypatch, capsys, tmp_path, command):
    data = tmp_path / "bom.jsonl"
    data.write_bytes(codecs.BOM_UTF8 + _jsonl(_dataset_records()))
    code, out, err = run_main(monkeypatch, capsys, *COMMANDS[command](tmp_path, data))
    assert code in (0, None), err
    assert "Traceback" not in err
    if command == "data validate":
        assert "8 records" in " ".join(out.split()) and "OK" in out  # stdout wraps at the terminal width
    if command == "data inspect":
        assert "8 records, 0 malformed lines" in " ".join(out.split())
    if command == "basins label":
        rows = [json.loads(line) for line in out.splitlines()]
        assert [r["id"] for r in rows] == [str(i) for i in range(8)] and all("basin" in r for r in rows)
    if command == "train":
        assert "completed: 2 steps" in out


def test_not_utf8_names_line_and_byte_offset(tmp_path):
    p = tmp_path / "x.jsonl"
    head = _jsonl(_dataset_records(2))
    p.write_bytes(head + b'{"text": "caf\xe9"}\n')
    with pytest.raises(JsonlError) as exc:
        read_jsonl(p)
    offset = len(head) + len(b'{"text": "caf')
    assert exc.value.line == 3 and f"not UTF-8 at byte offset {offset} (byte 0xe9)" in str(exc.value)
    assert str(exc.value).startswith(f"{p}:3: ")
    with pytest.raises(JsonlError, match="not UTF-8"):  # fatal even when collecting malformed lines
        list(iter_jsonl(p, errors=[]))


def test_a_bom_does_not_shift_columns_and_utf16_is_named(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(codecs.BOM_UTF8 + b'{"a": }\n')
    with pytest.raises(JsonlError, match=r"x\.jsonl:1: malformed JSON \(at column 7\)"):
        read_jsonl(p)
    p.write_bytes('{"a": 1}\n'.encode("utf-16"))
    with pytest.raises(JsonlError, match="UTF-16"):
        read_jsonl(p)


def test_malformed_json_names_our_line_and_only_the_column(tmp_path, monkeypatch, capsys):
    p = tmp_path / "m.jsonl"
    p.write_bytes(_jsonl(_dataset_records(1)) + b"\n\n" + b'  ]\n')
    with pytest.raises(JsonlError) as exc:
        read_jsonl(p)
    assert str(exc.value) == f"{p}:4: malformed JSON (at column 3): Expecting value"
    code, _, err = run_main(monkeypatch, capsys, "data", "validate", str(p))
    assert code == 1 and "m.jsonl:4: malformed JSON (at column 3): Expecting value" in err
    assert "line 1 column" not in err and "line 4 column" not in err


def test_deep_nesting_and_non_objects_are_malformed_lines_not_crashes(tmp_path, monkeypatch, capsys):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"[" * 100_000 + b"\n[1, 2]\n")
    errors: list[JsonlError] = []
    assert list(iter_jsonl(p, errors=errors)) == []
    assert [e.line for e in errors] == [1, 2] and "nested too deeply" in errors[0].message
    code, _, err = run_main(monkeypatch, capsys, "data", "inspect", str(p), "--tokenizer", "none")
    assert code == 2 and "no records" in err and "d.jsonl:1:" in err and "Traceback" not in err


def test_inspect_names_malformed_lines_with_a_count(monkeypatch, capsys, tmp_path):
    p = tmp_path / "i.jsonl"
    good = [dumps_record(r) for r in _dataset_records(5)]
    lines = good + [f"{{oops {i}" for i in range(25)]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = run_main(monkeypatch, capsys, "data", "inspect", str(p), "--tokenizer", "none")
    assert code in (0, None) and "5 records, 25 malformed lines" in " ".join(out.split())
    assert "i.jsonl:6: malformed JSON (at column 2)" in err and "i.jsonl:25:" in err
    assert "i.jsonl:26:" not in err and "... and 5 more malformed lines" in err


def test_basins_label_checks_the_whole_file_before_writing(monkeypatch, capsys, tmp_path):
    p = tmp_path / "g.jsonl"
    recs = _dataset_records(6)
    p.write_bytes(_jsonl(recs) + b"{oops\n")
    code, out, err = run_main(monkeypatch, capsys, "basins", "label", str(p))
    assert code == 2 and out == "" and "g.jsonl:7: malformed JSON" in err
    p.write_bytes(_jsonl([*recs, {"id": "no text"}]))
    code, out, err = run_main(monkeypatch, capsys, "basins", "label", str(p))
    assert code == 2 and out == "" and "g.jsonl:7: needs a string field 'text'" in err


def test_a_missing_path_or_a_directory_is_named(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "data", "validate", str(tmp_path))
    assert code == 2 and "is a directory" in err and "Traceback" not in err
    code, _, err = run_main(monkeypatch, capsys, "basins", "label", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "nope.jsonl: no such file" in err


def test_read_jsonl_empty_is_the_callers_choice(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_bytes(b"\n\n")
    assert read_jsonl(p) == []
    with pytest.raises(SlmlabError, match=r"e\.jsonl: no records"):
        read_jsonl(p, allow_empty=False)


def test_tolerant_reader_survives_a_torn_character_and_keeps_u2028(tmp_path):
    p = tmp_path / "log.jsonl"
    whole = dumps_record({"step": 1, "text": "a\u2028b\x85c"}).encode("utf-8")  # raw U+2028 / U+0085 inside a string
    torn = dumps_record({"step": 2, "text": "→→"}).encode("utf-8")[:-4]  # killed inside the second "→"
    p.write_bytes(whole + b"\n" + torn)
    assert read_jsonl_tolerant(p) == [{"step": 1, "text": "a\u2028b\x85c"}]
    p.write_bytes(whole + b"\n")
    assert read_jsonl(p) == [{"step": 1, "text": "a\u2028b\x85c"}]  # the strict reader splits the same way
