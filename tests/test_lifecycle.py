"""A run's lifecycle: interrupted runs say so and resume; finished runs are not redone; failed setups leave nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slmlab.io import write_jsonl
from slmlab.runs import list_runs
from slmlab.train.config import load_train_config


def _records(n=24):
    return [{"id": str(i), "input": f"P{i}→Q{i},P{i}?Q{i}", "output": "●" if i % 3 else "◐ — no", "category": "t",
             "family": "f"} for i in range(n)]


class Stop(Exception):
    pass


class StopAt:
    """An on_step hook that stops the run after step ``n`` (as a crash would)."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, step, metrics) -> None:
        if step == self.n:
            raise Stop()


def _base(tmp_path: Path, **over) -> dict:
    write_jsonl(tmp_path / "train.jsonl", _records())
    base = {"name": "life", "model": "tiny-random", "output_dir": str(tmp_path / "runs"),
            "adapter": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"train": str(tmp_path / "train.jsonl"), "max_length": 64},
            "optimizer": {"lr": 1e-2}, "batch_size": 4, "max_steps": 3, "save_every": 2,
            "watch": {"enabled": False, "dashboard": False}}
    return {**base, **over}


def test_resuming_a_completed_run_keeps_its_results(tmp_path):
    from slmlab.train.loop import resume_run, run

    done = run(load_train_config(data=_base(tmp_path)))
    results = (done.run_dir / "results.json").read_bytes()
    before = [(r.status, r.step, r.final_loss) for r in list_runs(tmp_path / "runs")]
    again = resume_run(done.run_dir)
    assert again.status == "completed" and again.steps == 3 and "nothing to resume" in again.note
    assert (done.run_dir / "results.json").read_bytes() == results
    assert [(r.status, r.step, r.final_loss) for r in list_runs(tmp_path / "runs")] == before
    assert before[0][2] is not None


def test_resume_says_where_it_restarts(tmp_path, capsys):
    from slmlab.train.loop import resume_run, run

    with pytest.raises(Stop):
        run(load_train_config(data=_base(tmp_path, max_steps=4)), on_step=StopAt(3))
    capsys.readouterr()
    resumed = resume_run(tmp_path / "runs" / "life")
    assert resumed.status == "completed" and resumed.steps == 4
    assert "from step 2 (step-2) of 4" in capsys.readouterr().err


def test_a_setup_that_fails_on_bad_data_leaves_no_run_folder(tmp_path):
    from slmlab.train.loop import TrainingError, run

    (tmp_path / "empty.jsonl").write_text("")
    cfg = _base(tmp_path)
    cfg["data"] = {**cfg["data"], "train": str(tmp_path / "empty.jsonl")}
    with pytest.raises(TrainingError, match="empty"):
        run(load_train_config(data=cfg))
    assert not (tmp_path / "runs" / "life").exists()


def test_without_a_terminal_progress_is_printed_as_plain_lines(tmp_path, capsys):
    from slmlab.train.loop import run

    run(load_train_config(data=_base(tmp_path, watch={"enabled": False, "dashboard": False, "progress_seconds": 0})))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all(" loss " in line and " lr " in line for line in lines)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_training_records_an_interrupted_run_and_the_resume_command(tmp_path, sig):
    cfg = tmp_path / "long.yaml"
    cfg.write_text(yaml.safe_dump(_base(tmp_path, max_steps=100_000, save_every=2)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "slmlab", "train", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    run_dir = tmp_path / "runs" / "life"
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "step-4").is_dir() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and f"Resume with: slmlab train --resume {run_dir}" in err
    results = json.loads((run_dir / "results.json").read_text())
    ckpt_step = results["run"]["steps"]
    assert results["run"]["status"] == "interrupted" and ckpt_step >= 4 and ckpt_step % 2 == 0
    (row,) = list_runs(tmp_path / "runs")
    assert (row.status, row.step) == ("interrupted", ckpt_step)


def test_a_resume_asked_for_more_steps_follows_the_new_schedule(tmp_path):
    """The schedule's shape comes from the config, not the checkpoint: more steps, a longer schedule."""
    from slmlab.train.loop import resume_run, run
    from slmlab.train.state import schedule_factor

    with pytest.raises(Stop):
        run(load_train_config(data=_base(tmp_path, max_steps=4)), on_step=StopAt(3))
    run_dir = tmp_path / "runs" / "life"
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**cfg, "max_steps": 8}))
    resumed = resume_run(run_dir)
    assert resumed.steps == 8
    lrs = {m["step"]: m["lr"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    for step in range(3, 9):  # steps 3.. were taken after the resume from step 2
        assert lrs[step] == pytest.approx(1e-2 * schedule_factor(step - 1, kind="cosine", total_steps=8)), step
    assert lrs[7] > 0
