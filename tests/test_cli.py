"""The CLI: every command has help with an example; user errors are one clear line, never a traceback."""

import sys

import pytest
from typer.testing import CliRunner

from slmlab.cli import app, main

runner = CliRunner()

COMMANDS = [
    ["models"], ["generate"], ["train"], ["runs"], ["export"], ["demo"],
    ["eval"], ["basins", "label"], ["basins", "map"], ["basins", "compare"], ["basins", "predict"], ["data", "curate"],
    ["steer", "extract"], ["steer", "quality"], ["steer", "calibrate"], ["steer", "export-gguf"], ["quickstart"],
    ["data", "recipes"], ["data", "generate"], ["data", "inspect"], ["data", "validate"], ["data", "solve"], ["data", "families"],
    ["serve"], ["series", "run"], ["series", "status"], ["compare"],
    ["adapters", "merge"], ["adapters", "negate"], ["adapters", "info"], ["eval-harness"], ["eval-coherence"],
    ["kernel", "corpus"], ["kernel", "tokenizer"], ["kernel", "coordizer"], ["kernel", "init"], ["kernel", "bpb"],
    ["kernel", "bigram"], ["kernel", "constellation"], ["kernel", "routing"],
    ["trio", "train"], ["trio", "run"], ["trio", "eval"], ["dream"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help_with_an_example(cmd):
    res = runner.invoke(app, [*cmd, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "Example" in res.output and "slmlab" in res.output


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["slmlab", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_solve_prints_the_glyph(monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "data", "solve", "P→Q,¬Q?P")
    assert code == 0 and out.strip() == "○"


def test_parse_error_is_one_clear_message_with_column(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "data", "solve", "P→Q(,P?Q")
    assert code == 2 and "column" in err and "Traceback" not in err


def test_unknown_model_and_recipe_are_clear(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "generate", "--model", "smollm3", "hi")
    assert code == 2 and "smollm2-135m" in err and "Traceback" not in err
    code, _, err = run_main(monkeypatch, capsys, "data", "generate", "v7-golden", "-o", "x")
    assert code == 2 and "v6-golden" in err


def test_bad_train_config_names_the_key(monkeypatch, capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {recipe: v6-golden}\nlearning_rate: 1\n")
    code, _, err = run_main(monkeypatch, capsys, "train", str(cfg))
    assert code == 2 and "learning_rate" in err and "Traceback" not in err


def test_generate_validate_inspect_round_trip(monkeypatch, capsys, tmp_path):
    code, out, _ = run_main(monkeypatch, capsys, "data", "generate", "v6-golden", "-c", "120", "-s", "5", "-o", str(tmp_path))
    assert code == 0 and "hybrid" in out and (tmp_path / "manifest.json").exists()
    code, out, _ = run_main(monkeypatch, capsys, "data", "validate", str(tmp_path / "train.jsonl"))
    assert code == 0 and "OK" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text((tmp_path / "train.jsonl").read_text(encoding="utf-8") + "{oops\n", encoding="utf-8")
    code, _, err = run_main(monkeypatch, capsys, "data", "validate", str(bad))
    n = len(bad.read_text(encoding="utf-8").splitlines())
    assert code == 1 and f"bad.jsonl:{n}: malformed JSON" in err
    code, out, _ = run_main(monkeypatch, capsys, "data", "inspect", str(tmp_path / "train.jsonl"), "--tokenizer", "none")
    assert code == 0 and "answer" in out and "duplicate" in out


def test_generate_with_tiny_model(monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "generate", "--model", "tiny-random", "-n", "3", "hello")
    assert code == 0 and "tokens/s" in err


def test_train_without_an_eval_set_says_so(monkeypatch, capsys, tmp_path):
    from slmlab.io import write_jsonl

    write_jsonl(tmp_path / "t.jsonl", [{"id": str(i), "input": f"P{i}→Q{i},P{i}?Q{i}", "output": "●", "category": "t",
                                        "family": "f"} for i in range(8)])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: tiny-random\noutput_dir: {tmp_path / 'runs'}\ndata: {{train: {tmp_path / 't.jsonl'}, max_length: 64}}\n"
                   "max_steps: 2\nsave_every: null\nwatch: {enabled: false, dashboard: false}\n")
    code, out, err = run_main(monkeypatch, capsys, "train", str(cfg))
    assert code in (0, None), err
    assert "completed: 2 steps, final loss " in out and "no eval set (set data.eval)" in out and "nan" not in out


def test_user_text_in_tables_is_not_read_as_markup():
    res = runner.invoke(app, ["data", "recipes"], terminal_width=400)
    assert res.exit_code == 0 and "[tool:{json}]" in res.output and "slmlab compare" not in res.output


def test_generate_escapes_flag_reads_backslash_n_as_a_newline():
    from slmlab.cli import unescape

    assert unescape(r"Q: P→Q,P?Q\nA:") == "Q: P→Q,P?Q\nA:"
    assert unescape(r"a\\nb\tc\q") == "a\\nb\tc\\q"


def test_demo_is_the_quickstart_under_another_name():
    shown = runner.invoke(app, ["--help"], terminal_width=200).output
    assert "quickstart" in shown and " demo " not in shown  # one name listed, the alias still works
    assert runner.invoke(app, ["demo", "--help"]).exit_code == 0


def test_a_missing_data_file_fails_before_anything_loads(monkeypatch, capsys, tmp_path):
    import slmlab.models

    monkeypatch.setattr(slmlab.models, "load_tokenizer", lambda *a, **k: pytest.fail("loaded before checking the data path"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'runs'}\ndata: {{train: {tmp_path / 'nope.jsonl'}}}\n")
    code, _, err = run_main(monkeypatch, capsys, "train", str(cfg))
    assert code == 2 and "data.train" in err and "nope.jsonl: no such file" in err and "Traceback" not in err
    assert "sets no `model:`; training the default smollm2-135m" in err
