import json

import pytest

from slmlab.config import ConfigError, load_yaml
from slmlab.io import (
    JsonlError,
    atomic_write_text,
    count_lines,
    iter_jsonl,
    read_json,
    read_jsonl,
    read_jsonl_tolerant,
    truncate_lines,
    write_json,
    write_jsonl,
)


def test_write_then_read_round_trip_keeps_unicode_and_order(tmp_path):
    recs = [{"id": "1", "input": "P→Q,P?Q", "output": "●"}, {"b": 1, "a": 2}]
    write_jsonl(tmp_path / "x.jsonl", recs)
    raw = (tmp_path / "x.jsonl").read_text(encoding="utf-8")
    assert "P→Q" in raw  # not \u2192 escapes
    assert read_jsonl(tmp_path / "x.jsonl") == recs
    assert list(json.loads(raw.splitlines()[1])) == ["b", "a"]


def test_same_records_same_bytes(tmp_path):
    recs = [{"id": str(i), "input": "x", "output": "○"} for i in range(10)]
    h1 = write_jsonl(tmp_path / "a.jsonl", recs)
    h2 = write_jsonl(tmp_path / "b.jsonl", recs)
    assert h1 == h2 and (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2,}\n[1, 2]\n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(JsonlError) as exc:
        read_jsonl(p)
    assert exc.value.line == 3 and str(p) in str(exc.value)
    errors: list[JsonlError] = []
    good = [line.record for line in iter_jsonl(p, errors=errors)]
    assert good == [{"a": 1}, {"a": 3}]  # the rest of the file is still read
    assert [e.line for e in errors] == [3, 4]
    assert "expected a JSON object" in errors[1].message


def test_tolerant_reader_skips_a_torn_line_and_a_missing_file_is_empty(tmp_path):
    p = tmp_path / "metrics.jsonl"
    assert read_jsonl_tolerant(p) == [] and count_lines(p) == 0
    p.write_text('{"step": 1}\n{"step": 2}\n\n{"step": 3, "lo', encoding="utf-8")  # killed mid-write
    assert read_jsonl_tolerant(p) == [{"step": 1}, {"step": 2}]
    assert count_lines(p) == 4
    truncate_lines(p, 2)
    assert p.read_text(encoding="utf-8") == '{"step": 1}\n{"step": 2}\n'
    truncate_lines(tmp_path / "absent.jsonl", 1)  # nothing to truncate, nothing created
    assert not (tmp_path / "absent.jsonl").exists()


def test_json_round_trip(tmp_path):
    data = {"loss": 0.5, "name": "P→Q", "steps": [1, 2]}
    write_json(tmp_path / "r" / "results.json", data)
    assert read_json(tmp_path / "r" / "results.json") == data
    assert "P→Q" in (tmp_path / "r" / "results.json").read_text(encoding="utf-8")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "hello")
    atomic_write_text(tmp_path / "f.txt", "world")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    assert (tmp_path / "f.txt").read_text() == "world"


def test_bad_yaml_names_line_and_column(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\ncategories: [a, b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"r\.yaml:\d+:\d+: not valid YAML"):
        load_yaml(p)
