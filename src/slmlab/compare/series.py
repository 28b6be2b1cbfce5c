"""Running a series: one normal run directory per (cell, seed), crash-safe and resumable.

    DIR/series.json                     the spec, the cells, the seeds (written first)
    DIR/cells/<cell>/seed-<s>/          a normal run directory (config.yaml, metrics.jsonl, ...)
    DIR/cells/<cell>/seed-<s>/eval/     the eval suites' results
    DIR/cells/<cell>/seed-<s>/series-run.json   status, metrics, cost, provenance, error

A (cell, seed) whose ``series-run.json`` says ``done`` is never run again. A killed run is
continued from its last checkpoint (``resume_run``); a failed one is retried once and then
recorded with its error. :func:`run_task` is the whole unit of work: the local executor runs it
in this process one run at a time, or with ``--max-parallel N`` in up to N child processes (a
crash in one cannot take the series down); the Ray executor runs it as a Ray task. Every
executor pins the CPU thread count (``threads``), so they all compute the same numbers.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmlab.compare.spec import RUN_METRICS, Series, load_series, overrides_for
from slmlab.io import read_json, write_json
from slmlab.progress import Progress, ProgressFactory, tracker

RECORD = "series-run.json"
MAX_ATTEMPTS = 2


@dataclass(frozen=True)
class RunTask:
    """One (cell, seed): everything a worker needs, plain data (it crosses process and Ray boundaries)."""

    series_dir: str
    cell: str
    slug: str
    seed: int
    base_path: str
    overrides: list[str]
    evals: list[str]
    eval_limit: int | None
    threads: int

    @property
    def run_dir(self) -> Path:
        return Path(self.series_dir) / "cells" / self.slug / f"seed-{self.seed}"

    @property
    def key(self) -> tuple[str, int]:
        return self.cell, self.seed


def tasks_for(series: Series, out_dir: Path) -> list[RunTask]:
    s = series.spec
    cells_dir = out_dir / "cells"
    return [RunTask(str(out_dir), c.name, c.slug(), seed, str(series.base_path), overrides_for(series, c, seed, cells_dir),
                    list(s.evals), s.eval_limit, s.threads)
            for c in series.cells for seed in s.seeds]


def read_record(run_dir: Path) -> dict | None:
    path = run_dir / RECORD
    return read_json(path) if path.is_file() else None


# ---------------------------------------------------------------------- the unit of work


def run_task(task: RunTask) -> dict:
    """Train (or continue) one run, evaluate it, write and return its record. Never raises."""
    import torch

    torch.set_num_threads(task.threads)
    previous = read_record(task.run_dir) or {}
    if previous.get("status") == "done":
        return previous
    attempts = int(previous.get("attempts", 0)) + 1
    start = time.time()
    try:
        result = _train(task)
        metrics = collect_metrics(task.run_dir) | _evaluate(task, result)
        record = {"status": "done", "metrics": metrics}
    except Exception as e:  # noqa: BLE001 - recorded with its traceback; the series goes on
        record = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    record |= {"cell": task.cell, "seed": task.seed, "attempts": attempts, "seconds": time.time() - start,
               "provenance": provenance(task)}
    write_json(task.run_dir / RECORD, record)
    return record


def _train(task: RunTask):
    from slmlab.train.config import load_train_config
    from slmlab.train.loop import resume_run, run

    if (task.run_dir / "config.yaml").is_file():  # started before: continue (a completed run is left as it is)
        return resume_run(task.run_dir)
    return run(load_train_config(task.base_path, task.overrides))


def _evaluate(task: RunTask, result) -> dict[str, float]:
    from slmlab.evaluate.suites import run_suite

    config = read_json(task.run_dir / "results.json")["run"]
    metrics: dict[str, float] = {}
    for suite in task.evals:
        out = task.run_dir / "eval" / f"{suite}.json"
        if out.is_file():
            saved = read_json(out)["metrics"]
        else:
            saved = run_suite(suite, config["model"], adapter=task.run_dir, out=out, limit=task.eval_limit).metrics
        for metric, values in saved.items():
            for key, stats in values.items():
                metrics[f"{metric}.{key}"] = stats["mean"]
    return metrics


def collect_metrics(run_dir: Path) -> dict[str, float | None]:
    """The run metrics (see ``RUN_METRICS``) from a finished run's results.json."""
    summary = read_json(run_dir / "results.json")
    train, memory = summary.get("train", {}), summary.get("memory", {})
    values = {"eval_loss": train.get("eval_loss"), "final_loss": train.get("final_loss"),
              "train_seconds": train.get("elapsed_s"), "tokens_seen": train.get("tokens_seen"),
              "peak_rss_mb": memory.get("peak_rss_mb")}
    assert set(values) == set(RUN_METRICS)
    return values


def provenance(task: RunTask) -> dict[str, Any]:
    """What the numbers depend on besides the config: code version, hardware, seed, data."""
    import torch

    from slmlab.train.record import versions

    info: dict[str, Any] = {"seed": task.seed, "threads": task.threads, "git_sha": git_sha(Path(task.base_path)),
                            "hardware": {"machine": platform.machine(), "processor": platform.processor(),
                                         "cpu_count": os.cpu_count(), "python": platform.python_version(),
                                         "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
                            "versions": versions()}
    data = task.run_dir / "data" / "train.jsonl"
    if data.is_file():
        import hashlib

        info["data_sha256"] = hashlib.sha256(data.read_bytes()).hexdigest()
    return info


def git_sha(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path.parent), "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# ---------------------------------------------------------------------- executors


def prepare(spec_path: str | Path, out_dir: str | Path) -> tuple[Series, list[RunTask]]:
    """Check the spec (before anything runs) and write ``series.json``; refuse a directory of another series."""
    from slmlab.errors import SlmlabError

    series = load_series(spec_path)
    out_dir = Path(out_dir).resolve()
    meta = {"name": series.spec.name, "spec": series.spec.model_dump(mode="json"), "spec_path": str(Path(spec_path).resolve()),
            "base_path": str(series.base_path),
            "cells": [{"name": c.name, "slug": c.slug(), "coords": c.coords, "overrides": c.overrides,
                       "variant": c.variant} for c in series.cells],
            "baseline": series.baseline.name if series.baseline else None}
    existing = out_dir / "series.json"
    if existing.is_file():
        old = read_json(existing)
        if old.get("spec") != meta["spec"]:
            raise SlmlabError(f"{out_dir} holds series {old.get('name')!r} with another spec; "
                              "use a new output directory (or the same spec to resume)")
    write_json(existing, meta)
    return series, tasks_for(series, out_dir)


def run_local(tasks: list[RunTask], max_parallel: int = 1, on_record=None) -> list[dict]:
    """One run at a time in this process, or with ``max_parallel`` > 1 each run in a child process
    (``python -m slmlab.compare.worker``), at most ``max_parallel`` at once."""
    records = {t.key: r for t in tasks if (r := read_record(t.run_dir)) and r.get("status") == "done"}
    pending = [t for t in tasks if t.key not in records]
    if max_parallel == 1:
        return _run_inline(tasks, pending, records, on_record)
    running: list[tuple[RunTask, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < max_parallel:
            task = pending.pop(0)
            running.append((task, _spawn(task)))
        time.sleep(0.2)
        for task, proc in [(t, p) for t, p in running if p.poll() is not None]:
            running.remove((task, proc))
            record = read_record(task.run_dir) or _crashed(task, proc.returncode)
            if record["status"] != "done" and record.get("attempts", 1) < MAX_ATTEMPTS:
                pending.append(task)  # retried once
                continue
            records[task.key] = record
            if on_record is not None:
                on_record(task, record)
    return [records[t.key] for t in tasks]


def _run_inline(tasks: list[RunTask], pending: list[RunTask], records: dict, on_record) -> list[dict]:
    for task in pending:
        record = run_task(task)
        if record["status"] != "done" and record["attempts"] < MAX_ATTEMPTS:
            record = run_task(task)  # retried once
        records[task.key] = record
        if on_record is not None:
            on_record(task, record)
    return [records[t.key] for t in tasks]


def _spawn(task: RunTask) -> subprocess.Popen:
    task.run_dir.mkdir(parents=True, exist_ok=True)
    log = open(task.run_dir / "series-run.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "slmlab.compare.worker", json.dumps(asdict(task))],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def _crashed(task: RunTask, code: int) -> dict:
    """The record of a worker that died without writing one (killed, out of memory)."""
    previous = read_record(task.run_dir) or {}
    record = {"status": "failed", "error": f"the run's process exited with code {code} without a record "
                                            f"(see {task.run_dir / 'series-run.log'})",
              "cell": task.cell, "seed": task.seed, "attempts": int(previous.get("attempts", 0)) + 1}
    write_json(task.run_dir / RECORD, record)
    return record


def run_ray(tasks: list[RunTask], address: str | None = None, on_record=None) -> list[dict]:
    """Each task as a Ray task requesting ``threads`` CPUs; ``address`` attaches to an existing cluster."""
    try:
        import ray
    except ImportError:
        from slmlab.errors import SlmlabError

        raise SlmlabError("the ray executor needs Ray: pip install 'slmlab[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        return _ray_loop(ray, tasks, on_record)
    finally:
        if started:
            ray.shutdown()


def _ray_loop(ray, tasks: list[RunTask], on_record) -> list[dict]:
    records = {t.key: r for t in tasks if (r := read_record(t.run_dir)) and r.get("status") == "done"}
    remote = {_submit(ray, t): t for t in tasks if t.key not in records}
    while remote:
        ready, _ = ray.wait(list(remote), num_returns=1)
        task = remote.pop(ready[0])
        record = ray.get(ready[0])
        if record["status"] != "done" and record.get("attempts", 1) < MAX_ATTEMPTS:
            remote[_submit(ray, task)] = task  # retried once
            continue
        records[task.key] = record
        if on_record is not None:
            on_record(task, record)
    return [records[t.key] for t in tasks]


def _submit(ray, task: RunTask):
    return ray.remote(num_cpus=task.threads, max_retries=1)(run_task).remote(task)


def run_series(spec_path: str | Path, out_dir: str | Path, *, executor: str = "local", max_parallel: int = 1,
               address: str | None = None, on_record=None, progress: ProgressFactory | None = None) -> list[dict]:
    """Run every (cell, seed) not yet done; return their records in spec order.

    ``on_record(task, record)`` is called as each run finishes; ``progress`` (e.g.
    :func:`slmlab.progress.progress`) counts the runs, those done before a resume included.
    """
    from slmlab.errors import SlmlabError

    if executor not in ("local", "ray"):
        raise SlmlabError(f"unknown executor {executor!r}: local or ray")
    series, tasks = prepare(spec_path, out_dir)
    bar = tracker(progress, len(tasks), f"series {series.spec.name} (runs)")
    bar.skip(sum(1 for t in tasks if (r := read_record(t.run_dir)) and r.get("status") == "done"))
    with bar:
        counted = CountRecords(bar, on_record)
        if executor == "local":
            return run_local(tasks, max_parallel, counted)
        return run_ray(tasks, address, counted)


class CountRecords:
    """An ``on_record`` that advances a progress bar, then calls the caller's ``on_record``."""

    def __init__(self, bar: Progress, on_record=None):
        self.bar, self.on_record = bar, on_record

    def __call__(self, task: RunTask, record: dict) -> None:
        self.bar.advance()
        if self.on_record is not None:
            self.on_record(task, record)


def series_status(out_dir: str | Path) -> list[dict]:
    """One row per (cell, seed): status, attempts, primary metric if any, error."""
    from slmlab.errors import SlmlabError

    out_dir = Path(out_dir)
    if not (out_dir / "series.json").is_file():
        raise SlmlabError(f"{out_dir} is not a series directory (no series.json)")
    meta = read_json(out_dir / "series.json")
    primary = (meta["spec"].get("primary") or {}).get("metric")
    rows = []
    for cell in meta["cells"]:
        for seed in meta["spec"]["seeds"]:
            record = read_record(out_dir / "cells" / cell["slug"] / f"seed-{seed}") or {}
            status = record.get("status") or ("running or killed" if (out_dir / "cells" / cell["slug"] / f"seed-{seed}").exists()
                                              else "pending")
            rows.append({"cell": cell["name"], "seed": seed, "status": status, "attempts": record.get("attempts", 0),
                         "primary": (record.get("metrics") or {}).get(primary) if primary else None,
                         "error": record.get("error")})
    return rows
