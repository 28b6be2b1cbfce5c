"""Experiment trackers for real: a tiny-random training run logs to them, and the test reads it back.

* TensorBoard (a test dependency): ``trackers: [tensorboard]`` makes accelerate write an event file
  under ``<run_dir>/<name>/``; :class:`~tensorboard.backend.event_processing.event_accumulator.EventAccumulator`
  reads it back, and every logged step's ``loss``, ``lr`` and ``grad_norm`` equal the run's
  ``metrics.jsonl`` (TensorBoard stores float32, hence the relative tolerance).
* MLflow (optional: ``mlflow`` or ``mlflow-skinny``): with ``MLFLOW_TRACKING_URI=file:<tmp>`` the same
  metrics come back through ``MlflowClient.get_metric_history``. Skipped where mlflow is not installed.

The loop hands trackers a flat config (TensorBoard's ``add_hparams`` takes scalars only) and logs
every health check's metrics as ``health/<metric>`` (and ``health/phi``) at the check's step.

W&B and trackio are not run here (no network; their offline modes are documented in docs/harness.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


STEPS = 4
HEALTH_EVERY = 2
LOGGED = ("loss", "lr", "grad_norm")

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="tensorboard is not installed (pip install tensorboard)")
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason="mlflow is not installed (pip install mlflow-skinny)")


# --------------------------------------------------------------------------- helpers


def train_config(tmp_path: Path, name: str, trackers: list[str], steps: int = STEPS, watch: bool = True):
    from slmlab.train.config import load_train_config

    checks = {"enabled": watch, "every": HEALTH_EVERY, "probe_every": None, "spectral_every": None,
              "probe_prompts": 2, "probe_tokens": 4, "dashboard": False}
    return load_train_config(data={
        "name": name, "model": "tiny-random", "output_dir": str(tmp_path / "runs"),
        "adapter": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"recipe": "pure-logic", "count": 32, "max_length": 64},
        "optimizer": {"lr": 1e-3}, "batch_size": 4, "max_steps": steps, "save_every": None, "log_every": 1,
        "trackers": trackers, "watch": checks,
    })


def metrics_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def health_events(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    return [e for e in lines if e["kind"] == "health"]


def event_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob("events.out.tfevents.*"))


def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in the run's TensorBoard event files: ``{tag: [(step, value), ...]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for path in event_files(run_dir):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every event
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(points) for tag, points in found.items()}


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    """One 4-step tiny-random run with ``trackers: [tensorboard]`` and a health check every 2 steps."""
    from slmlab.train.loop import run

    result = run(train_config(tmp_path_factory.mktemp("tb"), "tb", ["tensorboard"]))
    assert result.status == "completed" and result.steps == STEPS
    return result


# --------------------------------------------------------------------------- TensorBoard


@needs_tensorboard
def test_tensorboard_receives_the_step_metrics(tb_run):
    assert event_files(tb_run.run_dir), "no TensorBoard event file written"
    scalars = tensorboard_scalars(tb_run.run_dir)
    lines = metrics_lines(tb_run.run_dir)
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1))
    for key in LOGGED:
        assert [s for s, _ in scalars[key]] == list(range(1, STEPS + 1)), key
        assert [v for _, v in scalars[key]] == pytest.approx([m[key] for m in lines], rel=1e-6), key


@needs_tensorboard
def test_tensorboard_receives_the_health_metrics(tb_run):
    checks = health_events(tb_run.run_dir)
    assert [e["step"] for e in checks] == list(range(HEALTH_EVERY, STEPS + 1, HEALTH_EVERY))
    scalars = tensorboard_scalars(tb_run.run_dir)
    for event in checks:
        for name, value in event["metrics"].items():
            if value is not None:
                assert (event["step"], pytest.approx(value, rel=1e-6)) in scalars.get(f"health/{name}", []), name


@needs_tensorboard
def test_tensorboard_accepts_the_loops_run_config(tmp_path):
    from slmlab.train.loop import flat_hparams, run

    assert flat_hparams({"adapter": {"r": 4, "target_modules": ["q", "v"]}, "x": None}) == \
        {"adapter.r": 4, "adapter.target_modules": '["q", "v"]', "x": "null"}
    assert run(train_config(tmp_path, "tb-config", ["tensorboard"], steps=1, watch=False)).status == "completed"


# --------------------------------------------------------------------------- MLflow


@needs_mlflow
def test_mlflow_file_store_receives_the_step_metrics(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from slmlab.train.loop import run

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3: the file store is in maintenance mode
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    result = run(train_config(tmp_path, "mlflow-run", ["mlflow"], watch=False))
    assert result.status == "completed"

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("mlflow-run")
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["seed"] == "0"
    lines = metrics_lines(result.run_dir)
    for key in LOGGED:
        history = sorted((m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, key))
        assert [s for s, _ in history] == list(range(1, STEPS + 1)), key
        assert [v for _, v in history] == pytest.approx([m[key] for m in lines], rel=1e-12), key
