"""Quality report for concept vectors: is each direction clean, fragmented, redundant or weak?

Per (concept, layer), from the activations stored at extraction (no second model run; the model is
loaded only for its MLP down-projection weights and the fingerprint check):

* ``first_pc_ratio`` — share of variance on the first principal component of the centred
  positives (> 0.7 clean, < 0.4 fragmented; needs >= 3 positives, else ``None``).
* ``story_alignment`` — cosine of each positive's difference (positive minus mean negative) with
  the concept vector; the two lowest are the ``outliers``.
* ``single_neuron`` — best |cosine| between the vector and a column of that layer's MLP
  down-projection (> 0.6: essentially one neuron).
* ``nearest`` — the five concepts with the highest cosine at the same layer.
* ``ridge`` — the vector regressed on all other concept vectors (lambda = 0.01):
  ``R^2 = 1 - |v - A^T w|^2 / |v|^2`` (v is a direction, so uncentred), top five signed
  coefficients; ``R^2 > 0.9`` = redundant. The regressors are the other concepts' diff-of-means
  recomputed without this concept's texts among their negatives; the plain one-vs-rest vectors
  are nearly linearly dependent by construction, so their R^2 (``r2_one_vs_rest``, also
  reported) is inflated for every concept.
* ``auroc`` — held-out separability: leave one text out, recompute the diff-of-means without it,
  score it by its projection relative to the midpoint of the two means; AUROC of held-out
  positives against held-out negatives (needs >= 2 positives).
* ``heads`` — per attention head, the norm of the diff-of-means of the input to the attention output
  projection (the concatenated head outputs), its selectivity (norm / RMS std of the negatives in
  that head), the top heads, and ``head_concentration`` (share of the total norm in the top 3).

Triage (first match wins): weak (AUROC < 0.75), redundant (R^2 > 0.9), fragmented
(first-PC ratio < 0.4), clean (first-PC ratio >= 0.7 and AUROC >= 0.9), else ok. The first-PC
tests need >= 5 positives: n centred points always have a ratio >= 1/(n-1) (0.5 for three), so
with fewer a concept can be weak, redundant or ok, never clean or fragmented.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from slmlab.errors import SlmlabError
from slmlab.progress import ProgressFactory, tracker

THRESHOLDS = {
    "clean_pc1": 0.7,
    "fragmented_pc1": 0.4,
    "single_neuron": 0.6,
    "redundant_r2": 0.9,
    "ridge_lambda": 0.01,
    "weak_auroc": 0.75,
    "clean_auroc": 0.9,
    "min_positives_pc1": 3,  # reported from 3 positives on ...
    "min_positives_pc1_triage": 5,  # ... but judged only from 5: n centred points have ratio >= 1/(n-1)
    "top_heads_for_concentration": 3,
}
BUCKETS = ("clean", "ok", "fragmented", "redundant", "weak")
QUALITY_FILE, QUALITY_HTML = "quality.json", "quality.html"


# --------------------------------------------------------------------------- measures (pure numpy)


def first_pc_ratio(P) -> float | None:
    """Variance share of the first principal component of the rows of ``P`` (centred)."""
    import numpy as np

    P = np.asarray(P, dtype=np.float64)
    if len(P) < 2:
        return None
    s = np.linalg.svd(P - P.mean(0), compute_uv=False)
    tot = float((s**2).sum())
    return float(s[0] ** 2 / tot) if tot > 0 else None


def cosine(a, b) -> float:
    import numpy as np

    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(np.dot(a, b) / (na * nb)) if na > 0 and nb > 0 else 0.0


def ridge(v, others, lam: float = 0.01) -> tuple[float, "object"]:
    """Ridge-regress ``v`` [h] on the rows of ``others`` [m, h]: (R^2, coefficients [m]).

    ``w = (A A^T + lam I)^-1 A v``; ``R^2 = 1 - |v - A^T w|^2 / |v|^2`` (uncentred: a direction has no offset).
    """
    import numpy as np

    v = np.asarray(v, dtype=np.float64)
    A = np.asarray(others, dtype=np.float64)
    if A.size == 0:
        return 0.0, np.zeros(0)
    w = np.linalg.solve(A @ A.T + lam * np.eye(len(A)), A @ v)
    resid = v - A.T @ w
    denom = float(v @ v)
    return (1.0 - float(resid @ resid) / denom if denom > 0 else 0.0), w


def auroc(pos_scores, neg_scores) -> float | None:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U / (n_p n_n))."""
    import numpy as np

    p, n = np.asarray(pos_scores, dtype=np.float64), np.asarray(neg_scores, dtype=np.float64)
    if len(p) == 0 or len(n) == 0:
        return None
    gt = (p[:, None] > n[None, :]).sum()
    eq = (p[:, None] == n[None, :]).sum()
    return float((gt + 0.5 * eq) / (len(p) * len(n)))


def loo_scores(X, pos: list[int], neg: list[int]):
    """Held-out projection scores: each text scored by a diff-of-means computed without it.

    Score = (x - (mu_p + mu_n) / 2) . (mu_p - mu_n) / |mu_p - mu_n|, with the held-out text removed from
    its own mean. Returns (positive scores, negative scores); positives need >= 2 texts.
    """
    import numpy as np

    X = np.asarray(X, dtype=np.float64)
    P, N = X[pos], X[neg]
    Sp, Sn = P.sum(0), N.sum(0)

    def score(x, mp, mn):
        d = mp - mn
        nd = np.linalg.norm(d)
        return float((x - (mp + mn) / 2) @ d / nd) if nd > 0 else 0.0

    ps = [score(P[i], (Sp - P[i]) / (len(P) - 1), Sn / len(N)) for i in range(len(P))] if len(P) >= 2 else []
    ns = [score(N[j], Sp / len(P), (Sn - N[j]) / (len(N) - 1)) for j in range(len(N))] if len(N) >= 2 else []
    return ps, ns


def neuron_alignment(v, W_down) -> tuple[float, int] | None:
    """(best |cosine|, column index) between ``v`` [h] and the columns of ``W_down`` [h, intermediate]."""
    import numpy as np

    if W_down is None:
        return None
    W = np.asarray(W_down, dtype=np.float64)
    norms = np.linalg.norm(W, axis=0)
    cos = (v @ W) / np.where(norms > 0, norms, 1.0) / max(float(np.linalg.norm(v)), 1e-12)
    j = int(np.abs(cos).argmax())
    return float(abs(cos[j])), j


def head_decomposition(H, pos: list[int], neg: list[int], n_heads: int, head_dim: int, top: int = 5) -> dict:
    """Per-head diff-of-means norms of the attention output projection's input."""
    import numpy as np

    H = np.asarray(H, dtype=np.float64).reshape(len(H), n_heads, head_dim)
    d = H[pos].mean(0) - H[neg].mean(0)  # [heads, dim]
    norms = np.linalg.norm(d, axis=1)
    std = np.sqrt(H[neg].var(0).mean(1)) if len(neg) > 1 else np.ones(n_heads)
    sel = norms / np.where(std > 0, std, 1.0)
    order = np.argsort(-norms)
    k = min(THRESHOLDS["top_heads_for_concentration"], n_heads)
    tot = float(norms.sum())
    return {
        "top_heads": [[int(h), round(float(norms[h]), 6), round(float(sel[h]), 4)] for h in order[:top]],
        "head_concentration": round(float(norms[order[:k]].sum() / tot), 4) if tot > 0 else None,
        "uniform_concentration": round(k / n_heads, 4),
    }


def _dom(X, pos, neg):
    import numpy as np

    d = X[pos].mean(0) - X[neg].mean(0)
    n = float(np.linalg.norm(d))
    return d / n if n > 0 else d


def triage(m: dict) -> str:
    t = THRESHOLDS
    if m["auroc"] is not None and m["auroc"] < t["weak_auroc"]:
        return "weak"
    if m["ridge"]["r2"] > t["redundant_r2"]:
        return "redundant"
    pc1 = m["first_pc_ratio"] if m.get("first_pc_judged") else None
    if pc1 is not None and pc1 < t["fragmented_pc1"]:
        return "fragmented"
    if pc1 is not None and pc1 >= t["clean_pc1"] and m["auroc"] is not None and m["auroc"] >= t["clean_auroc"]:
        return "clean"
    return "ok"


# --------------------------------------------------------------------------- the report


def _r(x, nd=4):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def _layer_quality(readout, corpus, acts: dict, layer: int, W_down: dict, heads_shape: dict, out_concepts: dict,
                   bar) -> dict:
    """One layer's measures for every concept (into ``out_concepts``); returns the layer's summary."""
    import numpy as np

    concepts = readout.concepts
    X = acts["acts"][layer].double().numpy()
    V = readout.vectors[layer].double().numpy()
    cos = V @ V.T / np.outer(np.linalg.norm(V, axis=1), np.linalg.norm(V, axis=1)).clip(1e-12)
    buckets: dict[str, list[str]] = {b: [] for b in BUCKETS}
    aurocs = []
    for k, c in enumerate(concepts):
        pos, neg = corpus.positives(c), corpus.negatives(c)
        items = corpus.positive_items(c)
        neg_mean = X[neg].mean(0)
        align = {it.path: _r(cosine(X[it.unit] - neg_mean, V[k])) for it in items}
        ps, ns = loo_scores(X, pos, neg)
        au = auroc(ps, ns) if ps else None
        others = [j for j in range(len(concepts)) if j != k]
        # Regressors: the other concepts' diff-of-means built WITHOUT this concept's texts in their
        # negatives. The stored one-vs-rest vectors nearly sum to zero (each concept's positives sit
        # in every other concept's negatives), which makes any of them look explained by the rest.
        own = set(pos)
        R = np.stack([_dom(X, corpus.positives(concepts[j]), [t for t in corpus.negatives(concepts[j]) if t not in own])
                      for j in others])
        r2, w = ridge(V[k], R, THRESHOLDS["ridge_lambda"])
        r2_raw, _ = ridge(V[k], V[others], THRESHOLDS["ridge_lambda"])
        top = sorted(range(len(others)), key=lambda j: -abs(w[j]))[:5]
        near = sorted(others, key=lambda j: -cos[k, j])[:5]
        neuron = neuron_alignment(V[k], W_down.get(layer))
        m = {
            "first_pc_ratio": _r(first_pc_ratio(X[pos])) if len(pos) >= THRESHOLDS["min_positives_pc1"] else None,
            # the smallest ratio n centred points can have; with 3 positives it is 0.5, so "< 0.4" cannot happen
            "first_pc_floor": _r(1 / min(len(pos) - 1, X.shape[1])) if len(pos) >= 2 else None,
            "first_pc_judged": len(pos) >= THRESHOLDS["min_positives_pc1_triage"],
            "story_alignment": align,
            "outliers": [p for p, _ in sorted(align.items(), key=lambda kv: kv[1])[:2]] if len(align) > 2 else [],
            "single_neuron": {"cosine": _r(neuron[0]), "neuron": neuron[1],
                              "one_neuron": neuron[0] > THRESHOLDS["single_neuron"]} if neuron else None,
            "nearest": [[concepts[j], _r(cos[k, j])] for j in near],
            "ridge": {"r2": _r(r2), "top": [[concepts[others[j]], _r(w[j])] for j in top], "r2_one_vs_rest": _r(r2_raw)},
            "auroc": _r(au),
            "projection_gap": _r(float(V[k] @ (X[pos].mean(0) - neg_mean))),
        }
        if layer in acts.get("heads", {}) and str(layer) in heads_shape:
            nh, hd = heads_shape[str(layer)]
            m["heads"] = head_decomposition(acts["heads"][layer].numpy(), pos, neg, nh, hd)
        else:
            m["heads"] = None  # no standard attention at this layer: skipped
        m["triage"] = triage(m)
        buckets[m["triage"]].append(c)
        if au is not None:
            aurocs.append(au)
        out_concepts[c]["layers"][str(layer)] = m
        bar.advance()
    return {
        "relative_depth": readout.manifest["relative_depths"][str(layer)],
        "mean_auroc": _r(float(np.mean(aurocs))) if aurocs else None,
        "triage": buckets,
    }


def compute_quality(readout, corpus, acts: dict, W_down: dict | None = None, heads_shape: dict | None = None,
                    progress: ProgressFactory | None = None) -> dict:
    """The quality.json content. ``acts`` from ``load_activations``; ``W_down[layer]`` [hidden, intermediate].

    ``progress`` (e.g. :func:`slmlab.progress.progress`) counts the (layer, concept) pairs measured.
    """
    concepts = readout.concepts
    if corpus.concepts != concepts:
        raise SlmlabError("corpus concepts differ from the readout's; re-run 'slmlab steer extract'")
    W_down = W_down or {}
    heads_shape = heads_shape or {}
    out_concepts: dict = {c: {"n_positives": len(corpus.positives(c)), "n_negatives": len(corpus.negatives(c)),
                              "layers": {}} for c in concepts}
    per_layer: dict = {}
    with tracker(progress, len(readout.layers) * len(concepts), "steer quality (layer x concept)") as bar:
        for layer in readout.layers:
            per_layer[str(layer)] = _layer_quality(readout, corpus, acts, layer, W_down, heads_shape, out_concepts, bar)
    scored = [(v["mean_auroc"] if v["mean_auroc"] is not None else -1, -abs(v["relative_depth"] - 0.5), int(l))
              for l, v in per_layer.items()]
    headline = max(scored)[2]
    return {
        "readout": str(readout.dir),
        "model": readout.manifest["model"],
        "corpus_sha256": corpus.sha256,
        "thresholds": THRESHOLDS,
        "headline_layer": headline,
        "headline_rule": "the layer with the highest mean held-out AUROC (ties: nearest to half depth)",
        "summary": per_layer[str(headline)]["triage"],
        "layers": per_layer,
        "concepts": out_concepts,
    }


def quality_html(q: dict) -> list[str]:
    from html import escape

    from slmlab.evaluate.report import line_chart, table

    L = str(q["headline_layer"])
    sec = [f"<p class='note'>Readout {escape(q['readout'])}; model {escape(str(q['model'].get('spec')))} "
           f"(hash {escape(q['model']['hash'][:16])}); corpus {escape(q['corpus_sha256'][:16])}. "
           f"Headline layer {L}: {escape(q['headline_rule'])}.</p>",
           "<h2>Triage at the headline layer</h2>",
           table(["bucket", "n", "concepts"], [[b, len(cs), ", ".join(cs)] for b, cs in q["summary"].items()])]
    layers = sorted(q["layers"], key=int)
    series = {"mean held-out AUROC": [(int(l), q["layers"][l]["mean_auroc"]) for l in layers if q["layers"][l]["mean_auroc"] is not None]}
    pcs = []
    for l in layers:
        vals = [c["layers"][l]["first_pc_ratio"] for c in q["concepts"].values() if c["layers"][l]["first_pc_ratio"] is not None]
        if vals:
            pcs.append((int(l), sum(vals) / len(vals)))
    if pcs:
        series["mean first-PC ratio"] = pcs
    sec.append(line_chart(series, "By layer"))
    sec.append("<h2>Layers</h2>")
    sec.append(table(["layer", "depth", "mean AUROC", *BUCKETS],
                     [[l, f"{q['layers'][l]['relative_depth']:.0%}", q["layers"][l]["mean_auroc"],
                       *[len(q["layers"][l]["triage"][b]) for b in BUCKETS]] for l in layers]))
    sec.append(f"<h2>Concepts at layer {L}</h2>")
    rows = []
    for c, cd in q["concepts"].items():
        m = cd["layers"][L]
        rows.append([c, m["triage"], cd["n_positives"], m["first_pc_ratio"], m["auroc"], m["ridge"]["r2"],
                     (m["single_neuron"] or {}).get("cosine"), ", ".join(f"{n} {v:+.2f}" for n, v in m["nearest"][:3]),
                     ", ".join(m["outliers"])])
    sec.append(table(["concept", "triage", "positives", "first-PC", "AUROC", "ridge R²", "neuron |cos|", "nearest", "outliers"], rows))
    sec.append("<h2>Per concept</h2>")
    for c, cd in q["concepts"].items():
        m = cd["layers"][L]
        sec.append(f"<h3>{escape(c)}</h3>")
        sec.append("<p class='note'>ridge top coefficients: " + escape(", ".join(f"{n} {v:+.3f}" for n, v in m["ridge"]["top"]))
                   + "; story alignment: " + escape(", ".join(f"{p} {v:+.2f}" for p, v in m["story_alignment"].items()))
                   + (f"; top heads (head, norm, selectivity): {escape(str(m['heads']['top_heads'][:3]))}, concentration "
                      f"{m['heads']['head_concentration']} (uniform {m['heads']['uniform_concentration']})" if m["heads"] else
                      "; heads: skipped (no standard attention)") + "</p>")
        sec.append(table(["layer", "triage", "first-PC", "AUROC", "ridge R²", "neuron |cos|", "gap"],
                         [[l, cd["layers"][l]["triage"], cd["layers"][l]["first_pc_ratio"], cd["layers"][l]["auroc"],
                           cd["layers"][l]["ridge"]["r2"], (cd["layers"][l]["single_neuron"] or {}).get("cosine"),
                           cd["layers"][l]["projection_gap"]] for l in layers]))
    return sec


def down_proj_weights(model, layers: list[int]) -> dict:
    from slmlab.steer.extract import find_decoder_layers, mlp_down_proj

    blocks = find_decoder_layers(model)
    hidden = (getattr(model.config, "text_config", None) or model.config).hidden_size
    out = {}
    for i in layers:
        lin = mlp_down_proj(blocks[i], hidden)
        if lin is not None:
            out[i] = lin.weight.detach().float().cpu().numpy()  # [hidden, intermediate]: columns live in the residual
    return out


def quality(readout_dir: str | Path, corpus_dir: str | Path | None = None, model_spec: str | None = None,
            *, loaded=None, console=None, progress: ProgressFactory | None = None) -> dict:
    """Write ``quality.json`` and ``quality.html`` into the readout directory; return the report.

    ``progress`` (e.g. :func:`slmlab.progress.progress`) counts the (layer, concept) pairs measured.
    """
    from slmlab.evaluate.report import write_report
    from slmlab.io import atomic_write_text
    from slmlab.steer.corpus import load_corpus
    from slmlab.steer.extract import check_corpus_matches, load_activations, load_readout

    readout = load_readout(readout_dir)
    corpus = load_corpus(corpus_dir or readout.manifest["corpus"]["path"])
    check_corpus_matches(readout, corpus)
    acts = load_activations(readout.dir)
    missing = [l for l in readout.layers if l not in acts["acts"]]
    if missing:
        raise SlmlabError(f"{readout.dir}: activations for layers {missing} are missing; re-run 'slmlab steer extract'")
    spec = model_spec or readout.manifest["model"]["spec"]
    if loaded is None:
        from slmlab.models import load

        loaded = load(spec)
    model = loaded[0]
    readout.check_model(model, spec)
    q = compute_quality(readout, corpus, acts, down_proj_weights(model, readout.layers), readout.manifest.get("attention_heads"),
                        progress=progress)
    atomic_write_text(readout.dir / QUALITY_FILE, json.dumps(q, indent=2, ensure_ascii=False) + "\n")
    write_report(readout.dir / QUALITY_HTML, "Concept vector quality", quality_html(q))
    return q
