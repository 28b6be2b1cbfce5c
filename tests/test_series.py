"""Experiment series: spec checks before any run, resumable local runs, the same numbers on Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmlab.config import ConfigError

BASE = """model: tiny-random
data: {recipe: pure-logic, count: 48, max_length: 64}
max_steps: 4
save_every: 2
batch_size: 4
eval_every: null
watch: {enabled: false, dashboard: false}
"""

SPEC = """name: tiny
base: base.yaml
seeds: [0, 1, 2]
grid: {adapter.r: [4, 8]}
baseline: {adapter.r: 4}
evals: [logic]
eval_limit: 3
primary: {metric: eval_loss, minimum_effect: 0.01, higher_is_better: false}
"""


def write_spec(tmp: Path, spec: str = SPEC, base: str = BASE) -> Path:
    (tmp / "base.yaml").write_text(base)
    (tmp / "spec.yaml").write_text(spec)
    return tmp / "spec.yaml"


def records(out: Path) -> dict:
    found = {}
    for path in sorted(out.glob("cells/*/seed-*/series-run.json")):
        r = json.loads(path.read_text())
        found[(r["cell"], r["seed"])] = r
    return found


def comparable(recs: dict) -> dict:
    """The numbers a comparison reads, without timings (which differ run to run)."""
    keep = ("eval_loss", "final_loss", "tokens_seen", "logic.accuracy", "logic.no_glyph")
    return {k: {m: r["metrics"].get(m) for m in keep} for k, r in recs.items()}


# ---------------------------------------------------------------------- spec checks


def test_spec_builds_cells_and_finds_the_baseline(tmp_path):
    from slmlab.compare.spec import load_series

    spec = SPEC.replace("grid: {adapter.r: [4, 8]}", "grid: {adapter.r: [4, 8], batch_size: [2, 4]}\n"
                                                     "variants: {same: {}, low-lr: {optimizer.lr: 1.0e-5}}")
    spec = spec.replace("baseline: {adapter.r: 4}", "baseline: {adapter.r: 4, batch_size: 4}")
    series = load_series(write_spec(tmp_path, spec))
    names = [c.name for c in series.cells]
    assert names == ["adapter.r=4,batch_size=2", "adapter.r=4,batch_size=4", "adapter.r=8,batch_size=2",
                     "adapter.r=8,batch_size=4", "same", "low-lr"]
    assert series.baseline.name == "adapter.r=4,batch_size=4"
    assert series.cell("low-lr").overrides == {"optimizer.lr": 1e-5}


@pytest.mark.parametrize("change,fragment", [
    (("grid: {adapter.r: [4, 8]}", "grid: {adapter.rank: [4, 8]}"), "adapter.rank"),
    (("grid: {adapter.r: [4, 8]}", "grid: {adapter.r: []}"), "has no values"),
    (("baseline: {adapter.r: 4}", "baseline: {adapter.r: 16}"), "baseline"),
    (("baseline: {adapter.r: 4}", "baseline: nope"), "not among the cells"),
    (("metric: eval_loss", "metric: logic.precision"), None),
    (("metric: eval_loss", "metric: accuracy"), "primary.metric"),
    (("base: base.yaml", "base: missing.yaml"), "does not exist"),
    (("seeds: [0, 1, 2]", "seeds: [0, 0]"), "distinct"),
    (("grid: {adapter.r: [4, 8]}", "grid: {}"), "no cells"),
    (("evals: [logic]", "evals: [nosuch]"), "nosuch"),
])
def test_bad_specs_fail_before_any_run(tmp_path, change, fragment):
    from slmlab.compare.series import run_series

    spec = write_spec(tmp_path, SPEC.replace(*change))
    if fragment is None:  # a value the suite may produce: accepted (checked once results exist)
        from slmlab.compare.spec import load_series

        load_series(spec)
        return
    with pytest.raises((ConfigError, ValueError)) as e:
        run_series(spec, tmp_path / "out")
    assert fragment in str(e.value)
    assert not (tmp_path / "out" / "cells").exists()  # nothing ran


# ---------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def clean_series(tmp_path_factory):
    """The series run once, uninterrupted (in this process)."""
    from slmlab.compare.series import run_series

    tmp = tmp_path_factory.mktemp("clean")
    spec = write_spec(tmp)
    out = tmp / "out"
    results = run_series(spec, out)
    return spec, out, results


def test_a_series_runs_every_cell_and_seed_once(clean_series):
    spec, out, results = clean_series
    assert [(r["cell"], r["seed"], r["status"]) for r in results] == [
        (f"adapter.r={r}", s, "done") for r in (4, 8) for s in (0, 1, 2)]
    assert all(r["attempts"] == 1 for r in results)
    first = records(out)[("adapter.r=4", 0)]
    assert set(first["metrics"]) >= {"eval_loss", "final_loss", "train_seconds", "logic.accuracy"}
    prov = first["provenance"]
    assert prov["seed"] == 0 and prov["hardware"]["cpu_count"] and "data_sha256" in prov
    # seeds differ, cells differ: the numbers are not copies of one another
    losses = {k: r["metrics"]["eval_loss"] for k, r in records(out).items()}
    assert len(set(losses.values())) == 6


def test_rerunning_a_finished_series_runs_nothing(clean_series):
    from slmlab.compare.series import run_series

    spec, out, _ = clean_series
    before = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/seed-*/series-run.json")}
    again = run_series(spec, out)
    assert all(r["status"] == "done" for r in again)
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/seed-*/series-run.json")} == before


def test_a_killed_series_resumes_to_the_same_numbers(clean_series, tmp_path):
    """Kill the series process during its third run; rerun it; finished runs are not repeated and
    every number equals the uninterrupted series'."""
    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "slmlab", "series", "run", str(spec), "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while len(list(out.glob("cells/*/seed-*/series-run.json"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        while not list(out.glob("cells/adapter.r=4/seed-2/checkpoints/step-*")):  # mid-run, a checkpoint exists
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    done_before = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/seed-*/series-run.json")}
    assert 2 <= len(done_before) < 6
    from slmlab.compare.series import run_series

    results = run_series(spec, out)
    assert all(r["status"] == "done" for r in results)
    for path, mtime in done_before.items():
        assert path.stat().st_mtime_ns == mtime  # not run again
    assert comparable(records(out)) == comparable(records(clean_series[1]))


def test_a_failing_run_is_retried_once_and_recorded(tmp_path):
    from slmlab.compare.series import run_series, series_status

    spec = write_spec(tmp_path, SPEC.replace("seeds: [0, 1, 2]", "seeds: [0]")
                      .replace("grid: {adapter.r: [4, 8]}", "grid: {adapter.r: [4]}\n"
                               "variants: {broken: {data.train: /nonexistent/train.jsonl, data.recipe: null}}"))
    results = run_series(spec, tmp_path / "out")
    broken = next(r for r in results if r["cell"] == "broken")
    assert broken["status"] == "failed" and broken["attempts"] == 2 and "nonexistent" in broken["error"]
    ok = next(r for r in results if r["cell"] == "adapter.r=4")
    assert ok["status"] == "done"
    rows = {r["cell"]: r for r in series_status(tmp_path / "out")}
    assert rows["broken"]["status"] == "failed" and "nonexistent" in rows["broken"]["error"]


def test_another_spec_in_the_same_directory_is_refused(clean_series, tmp_path):
    from slmlab.compare.series import run_series
    from slmlab.errors import SlmlabError

    spec = write_spec(tmp_path, SPEC.replace("seeds: [0, 1, 2]", "seeds: [5]"))
    with pytest.raises(SlmlabError, match="another spec"):
        run_series(spec, clean_series[1])


def test_ray_executor_gives_the_same_numbers(clean_series, tmp_path):
    ray = pytest.importorskip("ray")
    from slmlab.compare.series import run_series

    spec = write_spec(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = run_series(spec, tmp_path / "out", executor="ray")
    finally:
        ray.shutdown()
    assert all(r["status"] == "done" for r in results)
    assert comparable(records(tmp_path / "out")) == comparable(records(clean_series[1]))


# ---------------------------------------------------------------------- compare


def test_compare_a_series_rows_verdicts_and_files(clean_series):
    from slmlab.compare.compare import compare
    from slmlab.compare.report import text_rows, to_csv, to_markdown
    from slmlab.compare.stats import LABELS

    _, out, _ = clean_series
    comp = compare([out])
    assert comp.baseline == "adapter.r=4" and comp.primary.metric == "eval_loss"
    rows = text_rows(comp)
    assert {(r[0], r[1]) for r in rows} >= {("adapter.r=4", "eval_loss"), ("adapter.r=8", "eval_loss")}
    verdict = {(r[0], r[1]): r[-1] for r in rows}
    assert verdict[("adapter.r=4", "eval_loss")] == "baseline"
    assert verdict[("adapter.r=8", "eval_loss")] in LABELS
    s = comp.summaries["adapter.r=8"]["eval_loss"]
    values = list(comp.cells[1].values["eval_loss"].values())
    assert s.n == 3 and s.mean == pytest.approx(sum(values) / 3) and s.ci[0] < s.mean < s.ci[1]
    d = comp.differences["adapter.r=8"]["eval_loss"]
    base = comp.cells[0].values["eval_loss"]
    assert d.mean == pytest.approx(sum(v - base[k] for k, v in comp.cells[1].values["eval_loss"].items()) / 3)
    assert comp.effects["eval_loss"]["factors"] == ["adapter.r"]
    assert "adapter.r=8,eval_loss" in to_csv(comp).replace('"', "")
    assert "| adapter.r=8 | eval_loss |" in to_markdown(comp)


def test_compare_cli_greps_and_writes_a_self_contained_report(clean_series, tmp_path):
    from typer.testing import CliRunner

    from slmlab.cli import app

    _, out, _ = clean_series
    res = CliRunner().invoke(app, ["compare", str(out), "-o", str(tmp_path / "cmp"), "--html", "--csv",
                                   "--markdown", "--export"], terminal_width=80)
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "adapter.r=8" in ln and "eval_loss" in ln]
    assert len(lines) == 1 and ("within noise" in lines[0] or "better" in lines[0] or "worse" in lines[0])
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert "<svg" in html and "class='band'" in html and "class='bar'" in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "<script" not in html
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["baseline"] == "adapter.r=4"
    assert (tmp_path / "cmp" / "exports" / "adapter.r=8" / "adapter_config.json").is_file()


def test_compare_run_directories_equals_the_series_view(clean_series):
    from slmlab.compare.compare import compare

    _, out, _ = clean_series
    runs = sorted(out.glob("cells/adapter.r=4/seed-*")) + sorted(out.glob("cells/adapter.r=8/seed-*"))
    by_runs = compare(runs, metric="eval_loss", minimum_effect=0.01, higher_is_better=False)
    by_series = compare([out])
    a = [(s.n, s.mean) for c in by_runs.cells for s in [by_runs.summaries[c.name]["eval_loss"]]]
    b = [(s.n, s.mean) for c in by_series.cells for s in [by_series.summaries[c.name]["eval_loss"]]]
    assert a == b
    assert [v.label for v in by_runs.verdicts[by_runs.cells[1].name].values()] == \
        [v.label for v in by_series.verdicts["adapter.r=8"].values()]


def test_a_single_seed_gets_no_verdict(tmp_path):
    from slmlab.compare.compare import compare
    from slmlab.compare.series import run_series

    spec = write_spec(tmp_path, SPEC.replace("seeds: [0, 1, 2]", "seeds: [0]").replace("evals: [logic]", "evals: []"))
    run_series(spec, tmp_path / "out")
    comp = compare([tmp_path / "out"])
    assert {v.label for ms in comp.verdicts.values() for v in ms.values()} == {"single run: no verdict"}
