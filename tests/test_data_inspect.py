"""`slmlab data inspect` / `validate` on every format training reads (JSONL, JSON, Parquet, CSV,
save_to_disk) and every shape (TRL's and slmlab's): the shape is reported per file, a bad record is
one clear error naming file and row, slmlab JSONL output stays as it was."""

from __future__ import annotations

import json
import sys

import pytest

from slmlab.cli import main
from slmlab.data.check import inspect_file, parse_columns, read_dataset, validate_file
from slmlab.errors import SlmlabError


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["slmlab", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, " ".join(out.out.split()), out.err  # stdout unwrapped (tables fold at the width)


def chat(i: int, answer: str | None = None) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i}+{i}?"},
                         {"role": "assistant", "content": answer if answer is not None else str(2 * i)}]}


def write_parquet(path, rows: list[dict]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return path


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    import datasets

    path = tmp_path_factory.mktemp("saved") / "chat"
    datasets.disable_progress_bars()
    try:
        datasets.DatasetDict({"train": datasets.Dataset.from_list([chat(i) for i in range(4)]),
                              "test": datasets.Dataset.from_list([chat(i) for i in range(4, 6)])}).save_to_disk(str(path))
    finally:
        datasets.enable_progress_bars()
    return path


def test_parquet_of_messages_inspects_and_validates(monkeypatch, capsys, tmp_path):
    path = write_parquet(tmp_path / "chat.parquet", [chat(i) for i in range(5)] + [chat(0), chat(0, "one")])
    code, out, err = run_main(monkeypatch, capsys, "data", "inspect", str(path), "--tokenizer", "none")
    assert code in (0, None), err
    assert "chat.parquet: 7 records, 0 malformed lines" in out and "shape: conversational (messages)" in out
    assert "duplicate conversations: 1; contexts with conflicting last messages: 1" in out
    rep = inspect_file(path)
    assert rep.shape == "conversational" and rep.messages == {2: 7} and not rep.categories
    assert rep.lengths[0] == len("What is 0+0?\n0")  # the messages' contents, joined by newlines
    code, out, err = run_main(monkeypatch, capsys, "data", "validate", str(path))
    assert code in (0, None), err
    assert "chat.parquet: shape conversational" in out and "chat.parquet: 7 records; shape and value types checked: OK" in out


def test_save_to_disk_dir_reports_shape_per_split_and_per_file(monkeypatch, capsys, tmp_path, saved_dir):
    code, out, err = run_main(monkeypatch, capsys, "data", "inspect", str(saved_dir), "--tokenizer", "none")
    assert code in (0, None), err
    assert f"{saved_dir.name}: 4 records" in out and "shape: conversational (messages)" in out  # train by default
    other = write_parquet(tmp_path / "pc.parquet", [{"prompt": "2+2=", "completion": "4"}])
    code, out, err = run_main(monkeypatch, capsys, "data", "validate", str(saved_dir), str(other))
    assert code in (0, None), err
    assert f"{saved_dir.name}: shape conversational" in out and "pc.parquet: shape prompt-completion" in out
    assert f"{saved_dir.name}: 4 records; shape and value types checked: OK" in out
    code, _, err = run_main(monkeypatch, capsys, "data", "validate", str(other), "--split", "test")
    assert code == 2 and "pc.parquet: a single file has one split, 'train'" in err
    code, out, err = run_main(monkeypatch, capsys, "data", "validate", str(saved_dir), "--split", "test")
    assert code in (0, None), err
    assert f"{saved_dir.name}: shape conversational" in out and "2 records; shape and value types checked: OK" in out
    code, _, err = run_main(monkeypatch, capsys, "data", "validate", str(saved_dir), "--split", "dev")
    assert code == 2 and "no split 'dev'; its splits: train, test" in err


def test_columns_map_other_names_onto_a_shape(monkeypatch, capsys, tmp_path):
    path = write_parquet(tmp_path / "qa.parquet", [{"question": "2+2?", "answer": "4"}, {"question": "2+2?", "answer": "5"}])
    code, _, err = run_main(monkeypatch, capsys, "data", "validate", str(path))
    assert code == 2 and "qa.parquet: row 1: no recognised dataset shape" in err and "--columns question=prompt" in err
    code, out, err = run_main(monkeypatch, capsys, "data", "inspect", str(path), "--tokenizer", "none",
                              "--columns", "question=prompt,answer=completion")
    assert code in (0, None), err
    assert "shape: prompt-completion (prompt, completion)" in out and "prompts with conflicting completions: 1" in out
    assert parse_columns(" a = b ,c=d") == {"a": "b", "c": "d"}
    with pytest.raises(SlmlabError, match="--columns: expected FROM=TO pairs"):
        parse_columns("question")


def test_a_bad_record_names_file_and_row(monkeypatch, capsys, tmp_path):
    rows = [chat(i) for i in range(4)]
    rows[2]["messages"][1]["content"] = None  # row 3: an assistant turn without text
    path = write_parquet(tmp_path / "bad.parquet", rows)
    code, _, err = run_main(monkeypatch, capsys, "data", "inspect", str(path), "--tokenizer", "none")
    assert code == 2 and "Traceback" not in err
    assert "bad.parquet: row 3: conversational record: messages[1] needs a string 'content', got nothing" in err
    code, out, err = run_main(monkeypatch, capsys, "data", "validate", str(path))
    assert code == 1 and "bad.parquet: row 3: messages[1] needs a string 'content'" in err and "1 problem(s)" in out


def test_mixed_shapes_in_jsonl_are_each_named_by_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    recs = [{"prompt": "2+2=", "completion": "4"}, {"text": "free text"}, {"prompt": "3+3=", "completion": 6}, {"q": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + "{oops\n", encoding="utf-8")
    rep = validate_file(path)
    assert rep.shape == "prompt-completion" and not rep.slmlab and rep.records == 4
    assert [e.split(": ", 1)[0] for e in rep.errors] == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert "is language-modelling (text) but" in rep.errors[0] and "'completion' must be a string" in rep.errors[1]
    assert "malformed JSON" in rep.errors[3]
    with pytest.raises(SlmlabError, match=r"mixed\.jsonl:2: this record is language-modelling"):
        read_dataset(path)


def test_unreadable_and_empty_files_are_one_clear_error(monkeypatch, capsys, tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    code, _, err = run_main(monkeypatch, capsys, "data", "validate", str(junk))
    assert code == 2 and "junk.parquet: cannot be read as Parquet" in err and "Traceback" not in err
    empty = tmp_path / "empty.json"
    empty.write_text("[]", encoding="utf-8")
    code, _, err = run_main(monkeypatch, capsys, "data", "inspect", str(empty), "--tokenizer", "none")
    assert code == 2 and "empty.json: no records" in err


def test_json_and_csv_files_and_slmlab_records_keep_their_report(tmp_path):
    slm = [{"id": str(i), "input": f"P{i}→Q{i},P{i}?Q{i}", "output": "●", "category": "c", "family": "mp"} for i in range(3)]
    as_json = tmp_path / "slm.json"
    as_json.write_text(json.dumps(slm, ensure_ascii=False), encoding="utf-8")
    rep = validate_file(as_json)
    assert rep.slmlab and rep.shape == "slmlab" and rep.ok and rep.logic_checked == 3
    dup = _with_duplicate_id(tmp_path, slm)
    assert validate_file(dup).errors == [f"{dup}: row 2: duplicate id '0' (first on row 1)"]
    as_jsonl = tmp_path / "dup.jsonl"
    as_jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in (slm[0], slm[0])), encoding="utf-8")
    assert validate_file(as_jsonl).errors == [f"{as_jsonl}:2: duplicate id '0' (first on line 1)"]  # as before
    ins = inspect_file(as_json)
    assert ins.categories == {"c": 3} and ins.duplicates_label == "duplicate (input, output) pairs"
    csv = tmp_path / "lm.csv"
    csv.write_text("text\nhello there\nhello there\n", encoding="utf-8")
    ins = inspect_file(csv)
    assert ins.shape == "language-modelling" and ins.duplicate_pairs == 1 and ins.conflicts_label is None


def _with_duplicate_id(tmp_path, records: list[dict]):
    path = tmp_path / "dup.json"
    path.write_text(json.dumps([records[0], records[0]], ensure_ascii=False), encoding="utf-8")
    return path
