"""Calibrate a concept's steering strength: the largest alpha that keeps generations healthy.

For one concept at one layer, sweep alpha over a grid (by default multiples of the layer's mean
residual norm, measured at extraction, so the grid means the same on any model), generate greedily
from a few fixed prompts under steering, and label every generation with the basin labeller
(``use_embeddings=False``: deterministic, no optional model).

* ``failures(alpha)`` = generations labelled TOKEN_COLLAPSE or SEMANTIC_LOOP.
* ``safe_alpha`` = the largest alpha such that every alpha up to it has no more failures than
  alpha = 0 (so a model that already loops unsteered on a prompt is not blamed on the vector; with a
  healthy baseline this is exactly "no collapse, no loop"), after ``refine`` bisection steps between
  the last safe and the first unsafe alpha (bisection assumes failures grow with alpha).
* ``readout`` = the concept's mean score over the generated tokens, read by the **unsteered** model
  (so it measures what the text itself now carries, not the vector we added), and its change from
  alpha = 0, also as a fraction of the concept's positive-negative gap on the corpus.

Results go into ``readout.json`` under ``calibration[concept]`` and the generations into
``calibration/<concept>.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from slmlab.errors import SlmlabError
from slmlab.progress import ProgressFactory, tracker

DEFAULT_PROMPTS = [
    "Tell me about your day.",
    "Describe the street outside your window.",
    "Write a short note to a friend.",
    "What should I cook tonight?",
]
DEFAULT_RELATIVE_ALPHAS = [0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0]
BAD = ("TOKEN_COLLAPSE", "SEMANTIC_LOOP")
DEPTH_BAND = (0.2, 0.8)


def choose_layer(readout, concept: str) -> tuple[int, str]:
    """Among layers at 20-80% depth (all layers if none): best held-out AUROC for the concept if
    ``quality.json`` exists, else the layer nearest half depth.

    The band keeps the automatic choice away from the first blocks (token identity) and the last
    ones, whose residual norms are dominated by a few huge dimensions (SmolLM2's final block: ~10x
    the mid-depth norm) and which feed the unembedding directly.
    """
    q = readout.dir / "quality.json"
    depths = {int(l): d for l, d in readout.manifest["relative_depths"].items()}
    band = {l: d for l, d in depths.items() if DEPTH_BAND[0] <= d <= DEPTH_BAND[1]}
    depths = band or depths
    if q.is_file():
        data = json.loads(q.read_text(encoding="utf-8"))
        per = data.get("concepts", {}).get(concept, {}).get("layers", {})
        scored = [((m.get("auroc") or 0.0), -abs(depths[int(l)] - 0.5), int(l)) for l, m in per.items() if int(l) in depths]
        if scored:
            best = max(scored)
            return best[2], f"highest held-out AUROC ({best[0]:.3f}) in quality.json at 20-80% depth"
    layer = min(depths, key=lambda l: (abs(depths[l] - 0.5), l))
    return layer, "nearest to half depth (run 'slmlab steer quality' to pick by separability)"


def safe_alpha(alphas: list[float], failures: list[int]) -> float:
    """Largest alpha whose run, and every smaller alpha's, has no more failures than alpha = 0."""
    pairs = sorted(zip(alphas, failures))
    if not pairs or pairs[0][0] != 0:
        raise ValueError("the sweep must include alpha = 0")
    base, best = pairs[0][1], 0.0
    for a, f in pairs:
        if f > base:
            break
        best = a
    return best


def calibrate(
    readout_dir: str | Path,
    concept: str,
    model_spec: str | None = None,
    *,
    layer: int | None = None,
    alphas: list[float] | None = None,
    prompts: list[str] | None = None,
    max_new_tokens: int = 48,
    positions: str = "all",
    refine: int = 2,
    loaded=None,
    console=None,
    progress: ProgressFactory | None = None,
) -> dict:
    """Run the sweep, write the results back into ``readout.json``; return ``calibration[concept]``.

    ``progress`` (e.g. :func:`slmlab.progress.progress`) counts the strengths tried (grid, then bisection).
    """
    import numpy as np

    from slmlab.evaluate.basins import label
    from slmlab.evaluate.generate import format_prompt, generate
    from slmlab.io import atomic_write_text
    from slmlab.steer.apply import steering, token_scores
    from slmlab.steer.extract import load_readout, write_manifest

    ro = load_readout(readout_dir)
    k = ro.concept_index(concept)
    if layer is None:
        layer, why = choose_layer(ro, concept)
    else:
        n = ro.manifest["n_layers"]
        layer = layer % n if -n <= layer < n else layer
        if layer not in ro.vectors:
            raise SlmlabError(f"layer {layer} is not in {ro.dir} (extracted layers: {', '.join(map(str, ro.layers))})")
        why = "given"
    norm = float(ro.manifest["residual_norm"][str(layer)])
    if alphas is None:
        grid = [r * norm for r in DEFAULT_RELATIVE_ALPHAS]
    else:
        if any(a < 0 for a in alphas):
            raise SlmlabError("--alphas must be >= 0 (the sweep looks for the largest safe positive strength)")
        grid = sorted(set([0.0, *alphas]))
    prompts = prompts or DEFAULT_PROMPTS
    say = console.print if console is not None else (lambda *a, **kw: None)
    spec = model_spec or ro.manifest["model"]["spec"]
    if loaded is None:
        from slmlab.models import load

        loaded = load(spec)
    model, tok = loaded
    ro.check_model(model, spec)
    say(f"calibrating {concept!r} at layer {layer} ({ro.manifest['relative_depths'][str(layer)]:.0%} depth; {why}); "
        f"residual norm {norm:.3g}; alphas {', '.join(f'{a:.3g}' for a in grid)}")

    texts = [format_prompt(tok, p) for p in prompts]
    prompt_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    V = ro.vectors[layer]
    v = V[k]
    gap = float(ro.manifest.get("concept_gap", {}).get(str(layer), {}).get(concept, 0.0)) or None
    rows = []
    t0 = time.perf_counter()

    def run(a: float) -> dict:
        with steering(model, {layer: v}, a, positions=positions):
            batch = generate(model, tok, texts, max_new_tokens=max_new_tokens, batch_size=len(texts))
        gens = []
        for g, ids in zip(batch.generations, prompt_ids):
            res = label(g.text, tokens=g.tokens, use_embeddings=False)
            sc = token_scores(model, ids + g.tokens, len(ids), {layer: V})[layer] if g.tokens else np.zeros((0, len(ro.concepts)))
            gens.append({"prompt": g.prompt, "text": g.text, "basin": res.basin.value, "reason": res.reason,
                         "concept_score": float(sc[:, k].mean()) if len(sc) else None,
                         "others_score": float(np.delete(sc, k, axis=1).mean()) if len(sc) else None})
        scores = [x["concept_score"] for x in gens if x["concept_score"] is not None]
        others = [x["others_score"] for x in gens if x["others_score"] is not None]
        row = {"alpha": a, "alpha_relative": a / norm if norm else None,
               "failures": sum(x["basin"] in BAD for x in gens),
               "basins": {b: sum(x["basin"] == b for x in gens) for b in ("CREATIVE", "SEMANTIC_LOOP", "TOKEN_COLLAPSE", "UNKNOWN")},
               "readout": float(np.mean(scores)) if scores else None,
               "readout_others": float(np.mean(others)) if others else None,
               "generations": gens}
        rows.append(row)
        say(f"  alpha {a:8.3g} ({row['alpha_relative'] or 0:.3g}x norm): failures {row['failures']}/{len(gens)}, "
            f"readout {row['readout'] if row['readout'] is not None else float('nan'):+.4g}  {gens[0]['text'][:60]!r}")
        return row

    with tracker(progress, len(grid) + refine, f"steer calibrate {concept} (alphas)") as bar:
        for a in grid:
            run(a)
            bar.advance()
        # Bisect between the last safe grid alpha and the first unsafe one (assumes failures grow with alpha).
        for _ in range(refine):
            ordered = sorted(rows, key=lambda r: r["alpha"])
            lo = safe_alpha([r["alpha"] for r in ordered], [r["failures"] for r in ordered])
            above = [r["alpha"] for r in ordered if r["alpha"] > lo]
            if not above:
                break
            run((lo + above[0]) / 2)
            bar.advance()
        bar.update(bar.completed, total=bar.completed)  # the bisection may have stopped early
    base = rows[0]["failures"]
    rows.sort(key=lambda r: r["alpha"])
    grid = [r["alpha"] for r in rows]
    safe = safe_alpha(grid, [r["failures"] for r in rows])
    r0 = rows[0]["readout"]
    rs = next(r for r in rows if r["alpha"] == safe)["readout"]
    moved = (rs - r0) if (rs is not None and r0 is not None) else None
    result = {
        "layer": layer,
        "layer_choice": why,
        "positions": positions,
        "prompts": prompts,
        "max_new_tokens": max_new_tokens,
        "residual_norm": norm,
        "tested_range": [min(grid), max(grid)],
        "alphas": grid,
        "failures": {f"{r['alpha']:.6g}": r["failures"] for r in rows},
        "baseline_failures": rows[0]["failures"],
        # With every unsteered generation already degenerate the sweep cannot tell anything apart.
        "informative": base < len(prompts),
        "safe_alpha": safe,
        "safe_alpha_relative": safe / norm if norm else None,
        "readout_by_alpha": {f"{r['alpha']:.6g}": r["readout"] for r in rows},
        "readout_moved": moved,
        "readout_moved_fraction_of_gap": (moved / gap) if (moved is not None and gap) else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if not result["informative"]:
        say("[yellow]warning:[/yellow] every unsteered (alpha = 0) generation is already TOKEN_COLLAPSE or SEMANTIC_LOOP; "
            "safe_alpha is not informative for this model and these prompts (try other --prompt values)")
    manifest = ro.manifest
    manifest.setdefault("calibration", {})[concept] = result
    write_manifest(ro.dir, manifest)
    atomic_write_text(ro.dir / "calibration" / f"{concept}.json",
                      json.dumps({**result, "sweep": rows}, indent=2, ensure_ascii=False) + "\n")
    say(f"[green]safe alpha[/green] {safe:.4g} ({result['safe_alpha_relative'] or 0:.3g}x residual norm), baseline failures "
        f"{result['baseline_failures']}/{len(prompts)}; readout moved {moved if moved is not None else float('nan'):+.4g}")
    return result
