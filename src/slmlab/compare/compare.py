"""``slmlab compare``: per cell and metric, mean ± CI over seeds, paired differences vs the baseline
and a verdict — **better / worse / within noise** — judged against the declared minimum effect.

Reads only files: a series directory (``series.json`` + each run's ``series-run.json``) or plain
run directories (``results.json`` + ``eval/*.json``; runs whose configs differ only in seed, name
and output directory form one cell). The statistics are :mod:`slmlab.compare.stats`'s, with a
Holm correction across the cells compared on each metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmlab.compare import stats
from slmlab.compare.series import RECORD, collect_metrics
from slmlab.config import flatten_dotted
from slmlab.errors import SlmlabError
from slmlab.io import read_json

COST_METRICS = ("train_seconds", "tokens_seen", "peak_rss_mb")


@dataclass
class Primary:
    metric: str
    minimum_effect: float = 0.0
    higher_is_better: bool = True


@dataclass
class CellData:
    name: str
    coords: dict[str, Any]
    runs: dict[int, Path]  # seed -> run dir
    values: dict[str, dict[int, float | None]] = field(default_factory=dict)  # metric -> seed -> value


@dataclass
class Comparison:
    name: str
    cells: list[CellData]
    baseline: str | None
    primary: Primary | None
    metrics: list[str]
    summaries: dict[str, dict[str, stats.Summary]]  # cell -> metric -> summary
    differences: dict[str, dict[str, stats.Difference]]  # cell -> metric -> (cell - baseline)
    verdicts: dict[str, dict[str, stats.Verdict]]  # cell -> metric -> verdict
    effects: dict[str, Any]  # metric -> ANOVA (grid factors) as a dict
    pareto: list[str]  # cells on the cost (train seconds) vs primary front

    def rules(self, metric: str) -> Primary:
        """The judging rule of ``metric``: the primary's, or "any significant difference" elsewhere."""
        if self.primary is not None and metric == self.primary.metric:
            return self.primary
        return Primary(metric, 0.0, not metric.endswith("loss") and metric not in COST_METRICS)


# ---------------------------------------------------------------------- loading


def load_series_cells(out_dir: Path) -> tuple[str, list[CellData], str | None, Primary | None]:
    meta = read_json(out_dir / "series.json")
    cells = []
    for c in meta["cells"]:
        cell = CellData(c["name"], c["coords"], {})
        for seed in meta["spec"]["seeds"]:
            run_dir = out_dir / "cells" / c["slug"] / f"seed-{seed}"
            record = read_json(run_dir / RECORD) if (run_dir / RECORD).is_file() else None
            if record is None or record.get("status") != "done":
                continue
            cell.runs[seed] = run_dir
            for metric, value in record["metrics"].items():
                cell.values.setdefault(metric, {})[seed] = value
        cells.append(cell)
    p = meta["spec"].get("primary")
    primary = Primary(p["metric"], p["minimum_effect"], p["higher_is_better"]) if p else None
    return meta["name"], cells, meta.get("baseline"), primary


def load_run_cells(run_dirs: list[Path]) -> list[CellData]:
    """Plain run directories grouped into cells by their config without seed, name and output_dir;
    each cell is named by the settings that tell it apart from the others (``adapter.r=8``)."""
    import yaml

    groups: dict[str, CellData] = {}
    configs: dict[str, dict[str, Any]] = {}
    for run_dir in run_dirs:
        if not (run_dir / "results.json").is_file():
            raise SlmlabError(f"{run_dir}: no results.json (not a finished run directory)")
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        seed = int(config.pop("seed", 0))
        flat = {k: _relative(v, run_dir) for k, v in flatten_dotted(config).items() if k not in ("name", "output_dir")}
        key = yaml.safe_dump(flat, sort_keys=True)
        cell = groups.setdefault(key, CellData(run_dir.parent.name or run_dir.name, {}, {}))
        configs[key] = flat
        if seed in cell.runs:
            raise SlmlabError(f"{run_dir} and {cell.runs[seed]} are the same config with the same seed {seed}")
        cell.runs[seed] = run_dir
        for metric, value in run_metrics(run_dir).items():
            cell.values.setdefault(metric, {})[seed] = value
    _name_by_differences(groups, configs)
    return list(groups.values())


def _relative(value: Any, run_dir: Path) -> Any:
    """A path inside the run's own directory (generated data) is the same setting in every run."""
    if isinstance(value, str) and value.startswith(str(run_dir.resolve())):
        return "<run dir>" + value[len(str(run_dir.resolve())):]
    return value


def _name_by_differences(groups: dict[str, CellData], configs: dict[str, dict[str, Any]]) -> None:
    if len(groups) < 2:
        return
    keys = sorted({k for c in configs.values() for k in c})
    differ = [k for k in keys if len({repr(c.get(k)) for c in configs.values()}) > 1]
    for key, cell in groups.items():
        name = ",".join(f"{k}={configs[key].get(k)}" for k in differ)
        cell.name = name or cell.name
    names = [c.name for c in groups.values()]
    for i, cell in enumerate(groups.values()):
        if names.count(cell.name) > 1:
            cell.name = f"{cell.name}#{i}"


def run_metrics(run_dir: Path) -> dict[str, float | None]:
    values: dict[str, float | None] = dict(collect_metrics(run_dir))
    for path in sorted((run_dir / "eval").glob("*.json")) if (run_dir / "eval").is_dir() else []:
        data = read_json(path)
        for metric, fields in (data.get("metrics") or {}).items():
            for key, s in fields.items():
                values[f"{metric}.{key}"] = s.get("mean")
    return values


# ---------------------------------------------------------------------- statistics


def compare(paths: list[str | Path], *, baseline: str | None = None, metric: str | None = None,
            minimum_effect: float | None = None, higher_is_better: bool | None = None) -> Comparison:
    """Compare a series directory, or run directories; options override the spec's baseline/primary."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and (paths[0] / "series.json").is_file():
        name, cells, base, primary = load_series_cells(paths[0])
    else:
        name, cells, base, primary = "runs", load_run_cells(paths), None, None
        base = cells[0].name if cells else None
    base = baseline or base
    if metric is not None:
        primary = Primary(metric, minimum_effect or 0.0, True if higher_is_better is None else higher_is_better)
    if base is not None and base not in [c.name for c in cells]:
        raise SlmlabError(f"baseline {base!r} is not a cell: {', '.join(c.name for c in cells)}")
    metrics = sorted({m for c in cells for m in c.values})
    if primary is not None and primary.metric not in metrics:
        raise SlmlabError(f"metric {primary.metric!r} is in no run's results; known: {', '.join(metrics)}")
    comp = Comparison(name, cells, base, primary, metrics, {}, {}, {}, {}, [])
    _fill_statistics(comp)
    return comp


def _fill_statistics(comp: Comparison) -> None:
    for cell in comp.cells:
        comp.summaries[cell.name] = {m: stats.summarize(list(cell.values.get(m, {}).values()))
                                     for m in comp.metrics}
    if comp.baseline is not None:
        base = next(c for c in comp.cells if c.name == comp.baseline)
        others = [c for c in comp.cells if c.name != comp.baseline]
        for m in comp.metrics:
            diffs = {c.name: stats.paired_difference(c.values.get(m, {}), base.values.get(m, {})) for c in others}
            rule = comp.rules(m)
            judged = stats.verdicts(diffs, minimum_effect=rule.minimum_effect, higher_is_better=rule.higher_is_better)
            for c in others:
                comp.differences.setdefault(c.name, {})[m] = diffs[c.name]
                comp.verdicts.setdefault(c.name, {})[m] = judged[c.name]
    comp.effects = {m: grid_effects(comp.cells, m) for m in _effect_metrics(comp)}
    comp.pareto = _pareto(comp)


def _effect_metrics(comp: Comparison) -> list[str]:
    return [comp.primary.metric] if comp.primary is not None else []


def grid_effects(cells: list[CellData], metric: str) -> dict[str, Any] | None:
    """ANOVA over the grid's factors (one or two), on the grid cells only (variants left out)."""
    grid = [c for c in cells if c.coords]
    if not grid:
        return None
    factors = list(grid[0].coords)
    if len(factors) == 1:
        groups = {c.coords[factors[0]]: list(c.values.get(metric, {}).values()) for c in grid}
        return {"factors": factors, "anova": stats.anova_one_way(groups).to_dict()}
    if len(factors) == 2:
        table = {(c.coords[factors[0]], c.coords[factors[1]]): list(c.values.get(metric, {}).values()) for c in grid}
        return {"factors": factors, **stats.main_effects(table).to_dict()}
    return {"factors": factors, "anova": {"rows": None, "reason": f"{len(factors)} factors: only one- and two-way "
                                                                  "tables are computed"}}


def _pareto(comp: Comparison) -> list[str]:
    if comp.primary is None:
        return []
    m = comp.primary.metric
    points = [(c.name, comp.summaries[c.name]["train_seconds"].mean, comp.summaries[c.name][m].mean)
              for c in comp.cells if "train_seconds" in comp.summaries[c.name]]
    return stats.pareto_front(points, higher_is_better=comp.primary.higher_is_better)


# ---------------------------------------------------------------------- rows


def rows(comp: Comparison, metrics: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per (cell, metric): n, mean, CI, IQM, Δ vs baseline with its CI, P(improvement), verdict."""
    out = []
    for metric in metrics or _shown_metrics(comp):
        for cell in comp.cells:
            s = comp.summaries[cell.name][metric]
            d = comp.differences.get(cell.name, {}).get(metric)
            v = comp.verdicts.get(cell.name, {}).get(metric)
            out.append({"cell": cell.name, "metric": metric, "n": s.n, "mean": s.mean, "ci": s.ci, "iqm": s.iqm,
                        "std": s.std, "delta": d.mean if d else None, "delta_ci": d.ci if d else None,
                        "p_improvement": v.p_improvement if v else None,
                        "verdict": _verdict_text(comp, cell, v), "reason": v.reason if v else None})
    return out


def _verdict_text(comp: Comparison, cell: CellData, v: stats.Verdict | None) -> str:
    if cell.name == comp.baseline:
        return "baseline"
    if v is None:
        return "no baseline"
    return v.label


def _shown_metrics(comp: Comparison) -> list[str]:
    first = [comp.primary.metric] if comp.primary is not None else []
    rest = [m for m in comp.metrics if m not in first and m not in COST_METRICS]
    return first + rest


def costs(comp: Comparison) -> list[dict[str, Any]]:
    return [{"cell": c.name, **{m: comp.summaries[c.name][m].mean for m in COST_METRICS if m in comp.metrics},
             "pareto": c.name in comp.pareto} for c in comp.cells]
