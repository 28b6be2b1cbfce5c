"""A series spec: a base training config, cells (a grid and/or named variants) and seeds.

    name: v9-goldilocks
    base: ../configs/quickstart.yaml          # resolved relative to this file
    seeds: [0, 1, 2]                          # every cell runs once per seed
    grid: {adapter.r: [16, 32, 48], batch_size: [1, 4]}   # cartesian product, dotted keys as in --set
    variants: {low-lr: {optimizer.lr: 1.0e-5}}            # named cells with their own overrides
    baseline: {adapter.r: 16, batch_size: 4}  # grid coordinates, or a variant's name
    evals: [logic]                            # suites run on every finished run
    primary: {metric: logic.accuracy, minimum_effect: 0.05, higher_is_better: true}
    budget: {time_budget: 4m}                 # overrides applied to every run

Cells are the grid's points (named ``key=value,key=value``) followed by the variants (each
applied to the base alone). Everything is checked before any run starts: every cell's config is
built and validated (an unknown dotted key names itself), the baseline must be a cell, the
primary metric must be one the runs or their evals produce.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from slmlab.config import ConfigError, StrictModel, load_yaml, validate_model

RUN_METRICS = {
    "eval_loss": "held-out loss at the end of training",
    "final_loss": "training loss of the last step",
    "train_seconds": "wall time of training",
    "tokens_seen": "training tokens processed",
    "peak_rss_mb": "peak resident memory of the run",
}


class PrimaryMetric(StrictModel):
    metric: str = Field(description="A run metric (eval_loss, final_loss, ...) or METRIC.VALUE from the evals.")
    minimum_effect: float = Field(0.0, ge=0, description="The smallest difference that matters, in the metric's units.")
    higher_is_better: bool = True


class SeriesSpec(StrictModel):
    name: str = Field(description="The series name (its output directory holds one run per cell and seed).")
    base: str = Field(description="A training config YAML, relative to the spec file.")
    seeds: list[int] = Field(min_length=1, description="Every cell runs once per seed.")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Dotted key → values (cartesian product).")
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Named cells: their overrides.")
    baseline: dict[str, Any] | str | None = Field(None, description="Grid coordinates or a variant name.")
    evals: list[str] = Field(default_factory=list, description="Eval suites run on every finished run.")
    eval_limit: int | None = Field(None, ge=1, description="Items per eval suite (default: the suite's own).")
    primary: PrimaryMetric | None = None
    budget: dict[str, Any] = Field(default_factory=dict, description="Overrides applied to every run.")
    threads: int = Field(1, ge=1, description="CPU threads per run (fixed, so every executor computes the same numbers).")

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
            if len({repr(x) for x in values}) != len(values):
                raise ValueError(f"grid key {key!r} repeats a value")
        return v


@dataclass(frozen=True)
class Cell:
    name: str
    overrides: dict[str, Any]
    coords: dict[str, Any]  # grid coordinates ({} for a variant)
    variant: bool = False

    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=,-]+", "_", self.name)[:120] or "cell"


@dataclass(frozen=True)
class Series:
    spec: SeriesSpec
    base_path: Path
    cells: list[Cell]
    baseline: Cell | None

    def cell(self, name: str) -> Cell:
        return next(c for c in self.cells if c.name == name)


def format_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def grid_cells(grid: dict[str, list[Any]]) -> list[Cell]:
    if not grid:
        return []
    keys = list(grid)
    cells = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        coords = dict(zip(keys, combo))
        name = ",".join(f"{k}={format_value(v)}" for k, v in coords.items())
        cells.append(Cell(name, dict(coords), coords))
    return cells


def build_cells(spec: SeriesSpec) -> list[Cell]:
    cells = grid_cells(spec.grid) + [Cell(name, dict(ov), {}, variant=True) for name, ov in spec.variants.items()]
    if not cells:
        raise ConfigError("the series has no cells: give a grid, variants, or both")
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError(f"two cells share a name: {sorted({n for n in names if names.count(n) > 1})}")
    return cells


def find_baseline(spec: SeriesSpec, cells: list[Cell]) -> Cell | None:
    b = spec.baseline
    if b is None:
        return None
    if isinstance(b, str):
        match = [c for c in cells if c.name == b]
    else:
        match = [c for c in cells if not c.variant and {k: c.coords.get(k) for k in b} == b and set(b) == set(c.coords)]
    if not match:
        raise ConfigError(f"baseline {b!r} is not among the cells: {', '.join(c.name for c in cells)}")
    return match[0]


def load_series(path: str | Path) -> Series:
    """Read and check a spec: every cell's config validates, the baseline and primary metric exist."""
    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping (name, base, seeds, grid/variants, ...)")
    spec = validate_model(SeriesSpec, raw, str(path))
    base_path = (path.parent / spec.base).resolve()
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: {base_path} does not exist")
    cells = build_cells(spec)
    baseline = find_baseline(spec, cells)
    series = Series(spec, base_path, cells, baseline)
    for cell in cells:
        cell_config(series, cell, spec.seeds[0], Path("/nonexistent-check"))
    check_evals(spec)
    return series


def overrides_for(series: Series, cell: Cell, seed: int, out_dir: Path) -> list[str]:
    """``--set`` strings for one run: the budget, the cell, then seed, name and output directory."""
    import json

    items = {**series.spec.budget, **cell.overrides}
    sets = [f"{k}={json.dumps(v)}" for k, v in items.items()]
    return sets + [f"seed={seed}", f"name=seed-{seed}", f"output_dir={json.dumps(str(out_dir / cell.slug()))}"]


def cell_config(series: Series, cell: Cell, seed: int, out_dir: Path):
    """The validated TrainConfig of one (cell, seed); errors name the cell and the key."""
    from slmlab.train.config import load_train_config

    try:
        return load_train_config(series.base_path, overrides_for(series, cell, seed, out_dir))
    except ConfigError as e:
        raise ConfigError(f"cell {cell.name!r}: {e}") from None


def check_evals(spec: SeriesSpec) -> None:
    """Every eval suite loads; the primary metric is a run metric or one of an eval suite's metrics."""
    from slmlab.evaluate.suites import load_suite

    metric_names = set()
    for name in spec.evals:
        suite = load_suite(name)
        metric_names.update(m for m, _ in suite.metric_specs())
    if spec.primary is None:
        return
    metric = spec.primary.metric
    if metric in RUN_METRICS:
        return
    head = metric.split(".", 1)[0]
    if "." not in metric or head not in metric_names:
        known = ", ".join(list(RUN_METRICS) + [f"{m}.<value>" for m in sorted(metric_names)])
        raise ConfigError(f"primary.metric {metric!r} is neither a run metric nor produced by the evals "
                          f"{spec.evals or '(none)'}; known: {known}")
