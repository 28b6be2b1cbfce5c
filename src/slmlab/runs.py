"""The run directory and the SQLite index of runs.

``runs/<name>/`` is the record of a run (config.yaml, metrics.jsonl, checkpoints/,
adapter/ or model/, results.json). ``runs/index.sqlite`` indexes every run so
``slmlab runs`` and the comparison tools can query across them; it is a cache of
what the run directories say and can be rebuilt from them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    path TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    model TEXT,
    objective TEXT,
    config_hash TEXT,
    step INTEGER,
    final_loss REAL,
    eval_loss REAL,
    created REAL,
    updated REAL,
    summary TEXT
)
"""


def config_hash(config_yaml: str) -> str:
    return hashlib.sha256(config_yaml.encode("utf-8")).hexdigest()[:16]


def _connect(index_path: Path) -> sqlite3.Connection:
    index_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(index_path, timeout=30)
    conn.execute(SCHEMA)
    return conn


def record_run(run_dir: Path, *, name: str, status: str, model: str, objective: str, config_yaml: str,
               step: int = 0, final_loss: float | None = None, eval_loss: float | None = None,
               summary: dict | None = None) -> None:
    """Insert or update a run's row in ``<output_dir>/index.sqlite``."""
    index = run_dir.parent / "index.sqlite"
    now = time.time()
    with closing(_connect(index)) as conn, conn:
        conn.execute(
            """INSERT INTO runs (path, name, status, model, objective, config_hash, step, final_loss, eval_loss, created, updated, summary)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(path) DO UPDATE SET status=excluded.status, step=excluded.step,
                 final_loss=excluded.final_loss, eval_loss=excluded.eval_loss, updated=excluded.updated,
                 summary=excluded.summary, config_hash=excluded.config_hash""",
            (str(run_dir.resolve()), name, status, model, objective, config_hash(config_yaml), step,
             final_loss, eval_loss, now, now, json.dumps(summary or {})),
        )


@dataclass
class RunRow:
    name: str
    path: str
    status: str
    model: str
    objective: str
    step: int
    final_loss: float | None
    eval_loss: float | None
    updated: float


def list_runs(output_dir: str | Path = "runs") -> list[RunRow]:
    index = Path(output_dir) / "index.sqlite"
    if not index.is_file():
        return []
    with closing(_connect(index)) as conn:
        rows = conn.execute(
            "SELECT name, path, status, model, objective, step, final_loss, eval_loss, updated FROM runs ORDER BY updated DESC"
        ).fetchall()
    return [RunRow(*r) for r in rows]
