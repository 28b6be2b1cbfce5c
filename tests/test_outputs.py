"""Output locations: every command with -o checks its output before any work, refuses an existing
non-empty output without --overwrite, and writes files that respect the umask; `slmlab runs` cuts nothing."""

import io
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from slmlab.cli import app, main
from slmlab.errors import SlmlabError
from slmlab.io import atomic_write_text, write_jsonl
from slmlab.outputs import check_output

SHIPPED_CORPUS = Path(__file__).resolve().parents[1] / "examples" / "steer"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls on a busy 2-core box: OpenMP spin-waiting makes 2 threads far slower than 1."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["slmlab", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def _small_corpus(root: Path) -> Path:
    (root / "stories").mkdir(parents=True)
    for name, text in {"joy": "The sun came out and she laughed.", "fear": "A noise in the dark made him freeze.",
                       "calm": "The lake was still and so was he."}.items():
        (root / "stories" / f"{name}.txt").write_text(text)
    return root


# Each command that takes -o: (argv for an output path, what -o names). Inputs that are cheap to check
# (recipe, suite, corpus names) are real; the others need not exist: the output is checked before they are read.
COMMANDS = {
    "data generate": (lambda t, o: ["data", "generate", "v6-golden", "-c", "60", "-o", o], "dir"),
    "eval": (lambda t, o: ["eval", "logic", "--model", "tiny-random", "--limit", "1", "-o", o], "file"),
    "basins map": (lambda t, o: ["basins", "map", "--model", "tiny-random", "-k", "1", "-n", "4", "-o", o], "file"),
    "data curate": (lambda t, o: ["data", "curate", t / "d.jsonl", "--map", t / "m.json", "-o", o], "file"),
    "export": (lambda t, o: ["export", t / "run", "--no-merge", "-o", o], "dir"),
    "steer extract": (lambda t, o: ["steer", "extract", SHIPPED_CORPUS, "--model", "tiny-random", "-o", o], "dir"),
    "steer export-gguf": (lambda t, o: ["steer", "export-gguf", t / "readout", "--concept", "joy", "-o", o], "file"),
}


@pytest.fixture
def no_work(monkeypatch):
    """Any model load, generation or input read fails the test: the output must be refused first."""
    import slmlab.data.recipes
    import slmlab.evaluate.curate
    import slmlab.models
    import slmlab.steer.extract
    import slmlab.train.export

    def fail(*a, **k):
        pytest.fail("work started before the output location was checked")

    monkeypatch.setattr(slmlab.models, "load", fail)
    monkeypatch.setattr(slmlab.data.recipes, "_generate_category", fail)
    monkeypatch.setattr(slmlab.evaluate.curate, "read_jsonl", fail)
    monkeypatch.setattr(slmlab.train.export, "load_train_config", fail)
    monkeypatch.setattr(slmlab.steer.extract, "load_readout", fail)


def _refused(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err and "error:" in err
    for n in needles:
        assert n in " ".join(err.split()), err


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_documents_overwrite(cmd):
    res = CliRunner().invoke(app, [*cmd.split(), "--help"], terminal_width=200)
    assert res.exit_code == 0 and "--overwrite" in res.output


@pytest.mark.parametrize("cmd", COMMANDS)
def test_parent_is_a_file_is_refused_before_work(cmd, tmp_path, monkeypatch, capsys, no_work):
    """Fails even for root, unlike a permission check."""
    argv, kind = COMMANDS[cmd]
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub" / ("out" if kind == "dir" else "out.json")
    code, _, err = run_main(monkeypatch, capsys, *argv(tmp_path, out))
    _refused(code, err, "is a file, not a directory")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_read_only_place_is_refused_before_work(cmd, tmp_path, monkeypatch, capsys, no_work):
    argv, kind = COMMANDS[cmd]
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes (the parent-is-a-file case covers root)")
        out = ro / "sub" / ("out" if kind == "dir" else "out.json")
        code, _, err = run_main(monkeypatch, capsys, *argv(tmp_path, out))
        _refused(code, err, "no permission to write in")
        assert not (ro / "sub").exists()
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_existing_non_empty_output_is_refused_without_overwrite(cmd, tmp_path, monkeypatch, capsys, no_work):
    argv, kind = COMMANDS[cmd]
    out = tmp_path / "out"
    if kind == "dir":
        out.mkdir()
        (out / "keep.txt").write_text("precious")
        kept = out / "keep.txt"
    else:
        out.write_text("precious")
        kept = out
    code, _, err = run_main(monkeypatch, capsys, *argv(tmp_path, out))
    _refused(code, err, "already exists and is not empty", "--overwrite")
    assert kept.read_text() == "precious"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_wrong_kind_of_output_is_a_clear_error(cmd, tmp_path, monkeypatch, capsys, no_work):
    argv, kind = COMMANDS[cmd]
    out = tmp_path / "out"
    if kind == "dir":  # an existing file where a directory is written (was FileExistsError)
        out.write_text("")
        code, _, err = run_main(monkeypatch, capsys, *argv(tmp_path, out), "--overwrite")
        _refused(code, err, "is an existing file, but a directory is expected")
    else:  # an existing directory where a file is written
        out.mkdir()
        code, _, err = run_main(monkeypatch, capsys, *argv(tmp_path, out), "--overwrite")
        _refused(code, err, "is a directory, but a file is expected")


def test_samples_and_report_files_are_checked_too(tmp_path, monkeypatch, capsys, no_work):
    (tmp_path / "r.samples.jsonl").write_text("{}\n")
    code, _, err = run_main(monkeypatch, capsys, "eval", "logic", "--model", "tiny-random", "-o", tmp_path / "r.json")
    _refused(code, err, "r.samples.jsonl already exists")
    (tmp_path / "c.jsonl.curation.json").write_text("{}")
    code, _, err = run_main(monkeypatch, capsys, "data", "curate", "d.jsonl", "--map", "m.json", "-o", tmp_path / "c.jsonl")
    _refused(code, err, "c.jsonl.curation.json already exists")


def test_empty_outputs_are_used_without_overwrite(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f.json").write_text("")
    assert check_output(tmp_path / "d", "dir") == tmp_path / "d"
    assert check_output(tmp_path / "f.json", "file") == tmp_path / "f.json"
    assert check_output(tmp_path / "new" / "deeper", "dir") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(SlmlabError, match="pass --overwrite"):
        check_output(tmp_path, "dir")


# --------------------------------------------------------------------------- --overwrite works


def test_data_generate_overwrite(tmp_path, monkeypatch, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "train.jsonl").write_text("stale\n")
    code, _, err = run_main(monkeypatch, capsys, "data", "generate", "v6-golden", "-c", "60", "-o", out, "--overwrite")
    assert code == 0, err
    assert (out / "train.jsonl").read_text() != "stale\n" and (out / "manifest.json").is_file()


def test_data_curate_overwrite(tmp_path, monkeypatch, capsys):
    write_jsonl(tmp_path / "d.jsonl", [{"id": str(i), "input": f"x{i}", "output": "y", "category": "a"} for i in range(4)])
    (tmp_path / "m.json").write_text(json.dumps({"kind": "basin_map", "overall": {"CREATIVE": 0.5}, "per_category": {}}))
    out = tmp_path / "c.jsonl"
    out.write_text("stale\n")
    code, _, err = run_main(monkeypatch, capsys, "data", "curate", tmp_path / "d.jsonl", "--map", tmp_path / "m.json",
                            "-o", out, "--overwrite")
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 4


def test_export_overwrite_replaces_the_directory(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text("model: tiny-random\ndata: {recipe: v6-golden}\n")
    (run / "adapter" / "adapter_config.json").write_text("{}")
    out = tmp_path / "exported"
    out.mkdir()
    (out / "stale.bin").write_text("old")
    code, _, err = run_main(monkeypatch, capsys, "export", run, "--no-merge", "-o", out, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json"]


def test_eval_and_basins_map_overwrite(tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    out.write_text("{}")
    code, _, err = run_main(monkeypatch, capsys, "eval", "logic", "--model", "tiny-random", "--limit", "1", "-o", out,
                            "--overwrite")
    assert code == 0, err
    assert json.loads(out.read_text())["n"] == 1
    write_jsonl(tmp_path / "corpus.jsonl", [{"id": "1", "category": "a", "input": "Tell me a story"}])
    m = tmp_path / "m.json"
    m.write_text("{}")
    code, _, err = run_main(monkeypatch, capsys, "basins", "map", "--model", "tiny-random", "--corpus", tmp_path / "corpus.jsonl",
                            "-k", "1", "-n", "4", "-o", m, "--overwrite")
    assert code == 0, err
    assert json.loads(m.read_text())["kind"] == "basin_map"


def test_steer_extract_and_export_gguf_overwrite(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gguf")
    corpus = _small_corpus(tmp_path / "corpus")
    out = tmp_path / "readout"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, _, err = run_main(monkeypatch, capsys, "steer", "extract", corpus, "--model", "tiny-random", "-l", "1",
                            "-o", out, "--overwrite")
    assert code == 0, err
    assert (out / "readout.json").is_file()
    gguf_out = tmp_path / "joy.gguf"
    gguf_out.write_bytes(b"old")
    code, _, err = run_main(monkeypatch, capsys, "steer", "export-gguf", out, "--concept", "joy", "-o", gguf_out)
    _refused(code, err, "--overwrite")
    code, _, err = run_main(monkeypatch, capsys, "steer", "export-gguf", out, "--concept", "joy", "-o", gguf_out, "--overwrite")
    assert code == 0, err
    assert gguf_out.read_bytes()[:4] == b"GGUF"


# --------------------------------------------------------------------------- file modes


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_written_files_respect_the_umask(tmp_path, umask_022):
    write_jsonl(tmp_path / "a.jsonl", [{"a": 1}])
    atomic_write_text(tmp_path / "b.txt", "hi")
    assert (tmp_path / "a.jsonl").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644
    os.umask(0o077)
    atomic_write_text(tmp_path / "c.txt", "hi")
    assert (tmp_path / "c.txt").stat().st_mode & 0o777 == 0o600
    (tmp_path / "b.txt").chmod(0o640)  # replacing a file keeps the mode its owner gave it
    atomic_write_text(tmp_path / "b.txt", "again")
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o640


def test_generated_dataset_files_respect_the_umask(tmp_path, monkeypatch, capsys, umask_022):
    code, _, err = run_main(monkeypatch, capsys, "data", "generate", "v6-golden", "-c", "60", "-o", tmp_path / "d")
    assert code == 0, err
    for name in ("train.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / "d" / name).stat().st_mode & 0o777 == 0o644


# --------------------------------------------------------------------------- slmlab runs


def _record(tmp_path, name):
    from slmlab.runs import record_run

    record_run(tmp_path / "runs" / name, name=name, status="completed", model="tiny-random", objective="sft",
               config_yaml="x: 1\n", step=12, final_loss=1.2345, eval_loss=2.3456)


def test_runs_shows_long_names_in_full_when_piped(tmp_path, monkeypatch, capsys):
    from rich.console import Console

    import slmlab.cli

    name = "a-very-long-run-name-" + "x" * 33 + "-final"
    assert len(name) == 60
    _record(tmp_path, name)
    monkeypatch.setattr(slmlab.cli, "console", Console(width=80))  # not a terminal: capsys
    code, out, err = run_main(monkeypatch, capsys, "runs", "--dir", tmp_path / "runs")
    assert code == 0, err
    assert name in out and "…" not in out
    row = next(line for line in out.splitlines() if name in line)
    assert "completed" in row and "1.2345" in row and "2.3456" in row


def test_runs_folds_long_names_at_a_narrow_terminal(tmp_path, monkeypatch, capsys):
    from rich.console import Console

    import slmlab.cli

    name = "run-" + "".join(str(i % 10) for i in range(56))
    _record(tmp_path, name)
    buf = io.StringIO()
    monkeypatch.setattr(slmlab.cli, "console", Console(file=buf, width=80, force_terminal=True, color_system=None))
    code, _, err = run_main(monkeypatch, capsys, "runs", "--dir", tmp_path / "runs")
    assert code == 0, err
    text = buf.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    rows = [line.split("│")[1:-1] for line in text.splitlines() if line.count("│") > 2]

    def column(i):  # a cell folded over several lines, put back together
        return "".join(r[i].strip() for r in rows)

    assert column(0) == name
    from datetime import datetime

    from slmlab.runs import list_runs

    when = datetime.fromtimestamp(list_runs(tmp_path / "runs")[0].updated).strftime("%Y-%m-%d %H:%M")
    assert column(7).replace(" ", "") == when.replace(" ", "")  # the date is all there too (folded or wrapped)
