"""Curation by basin: reweight a dataset's categories by how a model's generations on them behave.

Given a basin map made over the dataset's own prompts (``slmlab basins map --corpus
DATASET.jsonl``), each category gets a factor:

* collapse rate ≥ ``drop_collapse`` → factor 0 (the category is dropped);
* otherwise factor = creative rate of the category / creative rate overall, clipped to
  [``min_factor``, ``max_factor``] — more of what lands CREATIVE, less of what loops;
* categories the map does not cover keep factor 1.

The new count is round(count × factor): down-weighting samples without replacement,
up-weighting repeats records, both seeded. Every change and its reason is written
next to the output.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from slmlab.evaluate.basin_map import read_map
from slmlab.io import atomic_write_text, read_jsonl, write_jsonl


def category_factors(basin_map: dict, categories: list[str], *, min_factor: float = 0.25, max_factor: float = 2.0,
                     drop_collapse: float = 0.5) -> dict[str, dict]:
    overall = basin_map["overall"]["CREATIVE"]
    out = {}
    for cat in categories:
        rates = basin_map["per_category"].get(cat)
        if rates is None:
            out[cat] = {"factor": 1.0, "reason": "not in the map: unchanged", "rates": None}
        elif rates["TOKEN_COLLAPSE"] >= drop_collapse:
            out[cat] = {"factor": 0.0, "reason": f"collapse rate {rates['TOKEN_COLLAPSE']:.0%} ≥ {drop_collapse:.0%}: dropped",
                        "rates": rates}
        elif overall == 0:
            out[cat] = {"factor": 1.0, "reason": "no CREATIVE generation anywhere in the map: unchanged", "rates": rates}
        else:
            raw = rates["CREATIVE"] / overall
            factor = min(max_factor, max(min_factor, raw))
            out[cat] = {"factor": factor, "rates": rates,
                        "reason": f"creative {rates['CREATIVE']:.0%} vs {overall:.0%} overall, loops {rates['SEMANTIC_LOOP']:.0%}: ×{factor:.2f}"}
    return out


def curate_dataset(dataset: str | Path, map_path: str | Path, out: str | Path, *, seed: int = 0, overwrite: bool = True,
                   **factor_options) -> dict:
    """Write the reweighted dataset to ``out`` and the report to ``out`` + ``.curation.json``; return the report.

    Both outputs are checked first; with ``overwrite=False`` an existing non-empty one is an error.
    """
    from slmlab.outputs import check_output

    out = check_output(out, "file", overwrite=overwrite, what="curated dataset")
    check_output(out.with_name(out.name + ".curation.json"), "file", overwrite=overwrite, what="curation report")
    records = read_jsonl(dataset)
    basin_map = read_map(map_path)
    by_cat: dict[str, list[dict]] = {}
    for r in records:
        by_cat.setdefault(str(r.get("category", "all")), []).append(r)
    factors = category_factors(basin_map, sorted(by_cat), **factor_options)
    rng = random.Random(f"{seed}:curate")
    kept: list[dict] = []
    changes = {}
    for cat in sorted(by_cat):
        recs, f = by_cat[cat], factors[cat]["factor"]
        target = round(len(recs) * f)
        if target <= len(recs):
            chosen = rng.sample(recs, target)
        else:
            chosen = recs + [rng.choice(recs) for _ in range(target - len(recs))]
        kept += chosen
        changes[cat] = {"before": len(recs), "after": target, **factors[cat]}
    rng.shuffle(kept)
    out = Path(out)
    write_jsonl(out, kept)
    report = {"dataset": str(dataset), "map": str(map_path), "seed": seed, "options": factor_options,
              "before": len(records), "after": len(kept), "categories": changes}
    atomic_write_text(out.with_name(out.name + ".curation.json"), json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    return report
