"""Health checks during training: status table, Φ and regimes, and generation probes.

Every ``watch.every`` steps the monitor runs the fixed probe prompts through the model once
(no gradients, eval mode) and takes the spectrum of the covariance of the final hidden
states (after the model's last norm) over the prompt tokens. From it:

* the seed-002 status metrics: ``spectral_entropy`` (nats), ``phi_proximity`` (a heuristic),
  ``dominant_ratio``;
* ``phi`` (Φ) = ``1 − H / log n`` with ``H`` the spectral entropy and ``n = min(d, T − 1)``
  the largest rank the covariance of ``T`` tokens in ``d`` dimensions can have. Φ is 0 when
  the variance is spread evenly over every direction the batch can occupy and 1 when one
  direction carries all of it. Why this choice: ``docs/watch.md``. It is measured, never
  optimised;
* the regime: ``linear`` (Φ < 0.30), ``geometric`` (0.30 ≤ Φ < 0.80), ``breakdown`` (Φ ≥ 0.80)
  — the seed's thresholds as configurable defaults.

Every ``watch.probe_every`` steps the monitor also generates greedily from the probe prompts
and labels each text with the basin labeller: ``loop_rate`` (share SEMANTIC_LOOP) and
``collapse_rate`` (share TOKEN_COLLAPSE); the probe event keeps every sample with its label
(the run report shows them) and the samples' coherence (``watch.coherence``: consecutive-sentence
cosine, seq-rep, and perplexity under the model itself or a reference model). Every ``watch.spectral_every`` steps it adds the
spectral summary of one rotating slice of the LoRA deltas (informational, no status level).

Levels per metric (good / warning / danger) combine into one status: any danger → DANGER;
two or more warnings → WARNING; one warning → DRIFTING; otherwise STABLE. Each non-good
level is a reason shown next to the status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from slmlab.config import StrictModel

STATUSES = ("STABLE", "DRIFTING", "WARNING", "DANGER")
SAMPLE_CHARS = 400  # each probe's generated text kept in its event (the report shows them)
REGIMES = ("linear", "geometric", "breakdown")


class Band(StrictModel):
    """One metric's thresholds: ``good`` and ``danger`` bounds; between them is warning."""

    good: float
    danger: float
    higher_is_better: bool


def _band(good: float, danger: float, higher: bool, text: str):
    return Field(default_factory=lambda: Band(good=good, danger=danger, higher_is_better=higher), description=text)


class StatusThresholds(StrictModel):
    """Seed 002's table (loop rate included); collapse_rate's band is ours, not the seed's."""

    spectral_entropy: Band = _band(2.0, 1.5, True, "> 2.0 good, 1.5–2.0 warning, < 1.5 danger (nats)")
    phi_proximity: Band = _band(0.85, 0.70, True, "> 0.85 good, 0.70–0.85 warning, < 0.70 danger (heuristic)")
    dominant_ratio: Band = _band(0.4, 0.6, False, "< 0.4 good, 0.4–0.6 warning, > 0.6 danger")
    loop_rate: Band = _band(0.10, 0.20, False, "< 10% good, 10–20% warning, > 20% danger")
    collapse_rate: Band = _band(0.05, 0.10, False, "< 5% good, 5–10% warning, > 10% danger (our default)")

    @model_validator(mode="after")
    def _ordered(self) -> StatusThresholds:
        for name in type(self).model_fields:
            b: Band = getattr(self, name)
            if b.higher_is_better and b.good < b.danger:
                raise ValueError(f"{name}: higher is better, so good ({b.good}) must be ≥ danger ({b.danger})")
            if not b.higher_is_better and b.good > b.danger:
                raise ValueError(f"{name}: lower is better, so good ({b.good}) must be ≤ danger ({b.danger})")
        return self


class RegimeThresholds(StrictModel):
    linear: float = Field(0.30, ge=0, le=1, description="Φ below this: linear regime.")
    breakdown: float = Field(0.80, ge=0, le=1, description="Φ at or above this: breakdown regime.")

    @model_validator(mode="after")
    def _ordered(self) -> RegimeThresholds:
        if not self.linear < self.breakdown:
            raise ValueError(f"phi: the linear threshold ({self.linear}) must be below the breakdown one ({self.breakdown})")
        return self


class WatchConfig(StrictModel):
    enabled: bool = Field(True, description="Run health checks during training.")
    every: int = Field(25, ge=1, description="Steps between health checks (one no-grad forward of the probe prompts).")
    probe_every: int | None = Field(100, ge=1, description="Steps between generation probes (loop/collapse rate); null: never.")
    spectral_every: int | None = Field(100, ge=1, description="Steps between adapter spectral summaries; null: never.")
    spectral_rotation: int = Field(4, ge=1, description="Layers are covered in this many rotating slices.")
    corpus: str = Field("basins49", description="Prompt corpus the probe prompts come from.")
    probe_prompts: int = Field(8, ge=2, description="How many prompts (spread over the corpus's categories).")
    prompts: list[str] | None = Field(None, min_length=2, description="Plain-text probe prompts given to the model as "
                                      "they are, no chat template (a kernel being pretrained has no chat to speak); "
                                      "replaces `corpus` and `probe_prompts`.")
    probe_tokens: int = Field(48, ge=4, description="New tokens per probe generation.")
    coherence: str | None = Field("none", description="Coherence of each probe's samples (slmlab.kernel.coherence): "
                                  "consecutive-sentence cosine and seq-rep always, perplexity under `self` (the model "
                                  "being trained) or a model spec (loaded once, e.g. smollm2-135m); `none`: no "
                                  "perplexity; null: no coherence at all.")
    status: StatusThresholds = Field(default_factory=StatusThresholds)
    regimes: RegimeThresholds = Field(default_factory=RegimeThresholds)
    dashboard: bool | None = Field(None, description="Live dashboard; null: when the output is a terminal.")
    progress_seconds: float = Field(30.0, ge=0, description="Without a terminal (CI, `| tee`): print a plain progress "
                                    "line at most this often (0: every logged step).")


# --------------------------------------------------------------------------- pure functions

Level = Literal["good", "warning", "danger"]


def wilson_lower(rate: float, n: int, z: float = 1.96) -> float:
    """Lower end of the 95% Wilson interval of a proportion ``rate`` observed on ``n`` trials."""
    if n <= 0:
        return 0.0
    centre = rate + z * z / (2 * n)
    spread = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def level_of(value: float | None, band: Band, n: int | None = None) -> Level | None:
    """good / warning / danger for one value (None when the value is missing or not finite).

    With ``n`` (a rate measured on n probes) a rate is danger only when the lower end of its 95%
    Wilson interval is past the danger bound: with 8 probes one collapsed text is 12.5%, which is
    not evidence of a > 10% collapse rate (it is a warning).
    """
    if value is None or not math.isfinite(value):
        return None
    if band.higher_is_better:
        return "good" if value > band.good else ("danger" if value < band.danger else "warning")
    if value < band.good:
        return "good"
    if value > band.danger and (n is None or wilson_lower(value, n) > band.danger):
        return "danger"
    return "warning"


def combine(metrics: dict[str, float | None], thresholds: StatusThresholds,
            sample_sizes: dict[str, int] | None = None) -> tuple[str, dict[str, Level], list[str]]:
    """Status, per-metric levels and the reasons (every non-good level, worst first).

    ``sample_sizes``: for rates, how many probes they were measured on (see :func:`level_of`).
    """
    levels: dict[str, Level] = {}
    reasons: list[tuple[int, str]] = []
    sizes = sample_sizes or {}
    for name in type(thresholds).model_fields:
        band: Band = getattr(thresholds, name)
        lvl = level_of(metrics.get(name), band, sizes.get(name))
        if lvl is None:
            continue
        levels[name] = lvl
        if lvl != "good":
            value = metrics[name]
            if lvl == "warning" and not band.higher_is_better and value > band.danger:
                text = f"{name} {value:.3g} > {band.danger:g} on {sizes[name]} probes, not significant (warning)"
            else:
                bound = band.danger if lvl == "danger" else band.good
                op = ("<" if lvl == "danger" else "≤") if band.higher_is_better else (">" if lvl == "danger" else "≥")
                text = f"{name} {value:.3g} {op} {bound:g} ({lvl})"
            reasons.append((0 if lvl == "danger" else 1, text))
    dangers = sum(1 for v in levels.values() if v == "danger")
    warnings = sum(1 for v in levels.values() if v == "warning")
    status = "DANGER" if dangers else "WARNING" if warnings >= 2 else "DRIFTING" if warnings == 1 else "STABLE"
    return status, levels, [text for _, text in sorted(reasons, key=lambda r: r[0])]


def phi_of(eigenvalues: np.ndarray, n_tokens: int) -> float:
    """Φ = 1 − H/log n, n = min(d, T − 1): 0 = evenly spread, 1 = one direction (see docs/watch.md)."""
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    total = lam.sum()
    n = min(lam.shape[0], n_tokens - 1)
    if total <= 0 or n < 2:
        return float("nan")
    p = lam[lam > 0] / total
    entropy = float(-(p * np.log(p)).sum())
    return float(min(1.0, max(0.0, 1.0 - entropy / math.log(n))))


def regime_of(phi: float, thresholds: RegimeThresholds) -> str | None:
    if not math.isfinite(phi):
        return None
    return "linear" if phi < thresholds.linear else ("breakdown" if phi >= thresholds.breakdown else "geometric")


def probe_prompts(corpus: str, n: int) -> list[dict]:
    """A fixed subset of a basin corpus, evenly spaced over it, so every category is represented."""
    from slmlab.evaluate.basin_map import load_prompts

    prompts = load_prompts(corpus)
    n = min(n, len(prompts))
    return [prompts[(i * len(prompts)) // n] for i in range(n)]


# --------------------------------------------------------------------------- the monitor


def _padding(tok, side: str):
    """Pad on ``side``; a tokenizer without a pad token pads with EOS, as the trainer does — only
    for the duration (the tokenizer is saved with the run and must not change)."""
    from contextlib import contextmanager

    @contextmanager
    def ctx():
        old_side, old_pad = tok.padding_side, tok.pad_token
        tok.padding_side = side
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        try:
            yield
        finally:
            tok.padding_side = old_side
            if old_pad is None:
                tok.pad_token = None

    return ctx()


@dataclass
class HealthCheck:
    step: int
    status: str
    regime: str | None
    phi: float
    metrics: dict[str, float | None]
    levels: dict[str, str]
    reasons: list[str]


class HealthMonitor:
    """Runs the checks on their schedule and publishes ``probe``, ``health`` and change events.

    Probing never moves a random generator and puts the model back in its training mode,
    so a run with the monitor on trains exactly as one with it off (tested).
    """

    def __init__(self, model, tokenizer, config: WatchConfig, bus, *, device=None):
        from slmlab.evaluate.generate import format_prompt

        self.model, self.tokenizer, self.config, self.bus = model, tokenizer, config, bus
        self.device = device
        if config.prompts:
            self.prompts = list(config.prompts)
        else:
            self.prompts = [format_prompt(tokenizer, p["input"]) for p in probe_prompts(config.corpus, config.probe_prompts)]
        self.last: HealthCheck | None = None
        self.last_probe: dict | None = None
        self.last_spectral: dict | None = None
        self.coherence = None  # the CoherenceTracker, built at the first probe (it may load a reference model)
        self._routing_counts = None  # a constellation's routing counts at the last check (the window's start)
        self._mixtures = None  # a constellation's mixture blocks (empty for any other model), found at the first check
        self.seconds = 0.0  # time spent in checks (the overhead benchmark reads it)

    def state(self) -> dict:
        """What later checks depend on (saved in checkpoints so a resumed run decides the same)."""
        from dataclasses import asdict

        return {"last": asdict(self.last) if self.last else None, "last_probe": self.last_probe,
                "last_spectral": self.last_spectral}

    def load(self, state: dict) -> None:
        self.last = HealthCheck(**state["last"]) if state.get("last") else None
        self.last_probe, self.last_spectral = state.get("last_probe"), state.get("last_spectral")

    def due(self, step: int) -> bool:
        c = self.config
        return c.enabled and step > 0 and (
            step % c.every == 0
            or (c.probe_every is not None and step % c.probe_every == 0)
            or (c.spectral_every is not None and step % c.spectral_every == 0))

    @property
    def _thresholds_text(self) -> dict[str, str]:
        out = {}
        for name in type(self.config.status).model_fields:
            b = getattr(self.config.status, name)
            good, bad = (">", "<") if b.higher_is_better else ("<", ">")
            out[name] = f"good {good} {b.good:g}, danger {bad} {b.danger:g}"
        r = self.config.regimes
        out["phi"] = f"linear < {r.linear:g} ≤ geometric < {r.breakdown:g} ≤ breakdown"
        return out

    def check(self, step: int) -> HealthCheck | None:
        """Run whatever is due at ``step``; returns the health check when one ran."""
        import time

        if not self.due(step):
            return None
        t0 = time.perf_counter()
        c = self.config
        if c.probe_every is not None and step % c.probe_every == 0:
            self.last_probe = self._probe(step)
        if c.spectral_every is not None and step % c.spectral_every == 0:
            self.last_spectral = self._adapter_spectra(step)
        result = None
        if step % c.every == 0:
            result = self._health(step)
        self.seconds += time.perf_counter() - t0
        return result

    # -- the pieces

    def _model_eval(self):
        from contextlib import contextmanager

        import torch

        @contextmanager
        def ctx():
            was = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    yield
            finally:
                self.model.train(was)

        return ctx()

    def representation(self) -> tuple[np.ndarray, int]:
        """Eigenvalues of the final-hidden-state covariance over the probe prompts' tokens."""
        from slmlab.watch.spectral import hidden_state_eigenvalues

        tok = self.tokenizer
        with _padding(tok, "right"):
            enc = tok(self.prompts, return_tensors="pt", padding=True)
        device = self.device or next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        with self._model_eval():
            out = self.model(**enc, output_hidden_states=True)
        mask = enc["attention_mask"].bool()
        return hidden_state_eigenvalues(out.hidden_states[-1], mask), int(mask.sum())

    def _health(self, step: int) -> HealthCheck:
        from slmlab.watch.spectral import spectral_metrics

        eigs, n_tokens = self.representation()
        sm = spectral_metrics(eigs, fit_alpha=False)
        phi = phi_of(eigs, n_tokens)
        metrics: dict[str, float | None] = {
            "spectral_entropy": sm["entropy"], "phi_proximity": sm["phi_proximity"],
            "dominant_ratio": sm["dominant_ratio"], "effective_rank": sm["effective_rank_sigma2"],
            "eigengap": sm["eigengap"] if math.isfinite(sm["eigengap"]) else None, "phi": phi,
        }
        if self.last_probe is not None:
            metrics["loop_rate"] = self.last_probe["loop_rate"]
            metrics["collapse_rate"] = self.last_probe["collapse_rate"]
        if self.last_spectral is not None:
            metrics.update(self.last_spectral)
        metrics.update(self._routing())
        sizes = {k: self.last_probe["n"] for k in ("loop_rate", "collapse_rate")} if self.last_probe else None
        status, levels, reasons = combine(metrics, self.config.status, sizes)
        regime = regime_of(phi, self.config.regimes)
        check = HealthCheck(step, status, regime, phi, metrics, dict(levels), reasons)
        self.bus.publish("health", step, status=status, reasons=reasons, metrics=metrics, levels=dict(levels),
                         phi=phi, regime=regime, thresholds=self._thresholds_text)
        prev = self.last
        if prev is not None and prev.status != status:
            self.bus.publish("status_change", step, previous=prev.status, status=status, reasons=reasons)
        if prev is not None and prev.regime != regime:
            self.bus.publish("regime_change", step, previous=prev.regime, regime=regime, phi=phi)
        self.last = check
        return check

    def _probe(self, step: int) -> dict:
        from collections import Counter

        from slmlab.evaluate.basins import label
        from slmlab.evaluate.generate import generate

        with self._model_eval(), _padding(self.tokenizer, self.tokenizer.padding_side):
            batch = generate(self.model, self.tokenizer, self.prompts, max_new_tokens=self.config.probe_tokens,
                             temperature=0.0, batch_size=len(self.prompts))
        labels = [label(g.text, tokens=g.tokens).basin.value for g in batch.generations]
        counts = Counter(labels)
        n = len(labels)
        samples = [{"prompt": p[-80:], "text": g.text[:SAMPLE_CHARS], "basin": b}
                   for p, g, b in zip(self.prompts, batch.generations, labels)]
        probe = {"n": n, "loop_rate": counts["SEMANTIC_LOOP"] / n, "collapse_rate": counts["TOKEN_COLLAPSE"] / n,
                 "basins": {k: v / n for k, v in sorted(counts.items())},
                 "sample": batch.generations[0].text[:160], "samples": samples,
                 **self._coherence([g.text for g in batch.generations])}
        self.bus.publish("probe", step, **probe)
        return probe

    def _routing(self) -> dict:
        """A constellation's routing since the last check: token-slot shares' entropy / ln K, largest and
        smallest share (all layers), and κ over the whole run so far; nothing for any other model."""
        if self._mixtures is None:  # the model's structure does not change during a run: look once
            from slmlab.kernel.constellation import mixtures

            self._mixtures = mixtures(self.model)
        blocks = self._mixtures
        if not blocks:
            return {}
        import torch

        from slmlab.kernel.constellation import kappa, share_stats

        counts = torch.stack([b.expert_tokens for b in blocks]).sum(0).clone()
        window = counts - self._routing_counts if self._routing_counts is not None else counts
        self._routing_counts = counts
        stats = share_stats(window)
        return {"routing_entropy": stats["entropy_norm"], "routing_max_share": stats["max_share"],
                "routing_min_share": stats["min_share"], "kappa": kappa(self.model)}

    def _coherence(self, texts: list[str]) -> dict:
        """The samples' coherence numbers (``coherence_*``), or nothing when ``watch.coherence`` is null."""
        if self.config.coherence is None:
            return {}
        if self.coherence is None:
            from slmlab.kernel.coherence import CoherenceTracker

            self.coherence = CoherenceTracker.load(self.config.coherence, model=self.model, tokenizer=self.tokenizer)
        return self.coherence.measure(texts).summary()

    def _adapter_spectra(self, step: int) -> dict | None:
        """Mean spectral metrics of one rotating slice of the LoRA deltas (None without LoRA)."""
        from slmlab.watch.spectral import model_spectral_report

        k = self.config.spectral_rotation
        report = [r for r in model_spectral_report(self.model, rotation=(k, (step // self.config.spectral_every) % k))
                  if r["kind"] == "lora_delta"]
        if not report:
            return None

        def mean(key: str) -> float | None:
            vals = [r["metrics"][key] for r in report if math.isfinite(r["metrics"][key])]
            return float(np.mean(vals)) if vals else None

        return {"adapter_stable_rank": mean("stable_rank"), "adapter_entropy": mean("entropy_normalized"),
                "adapter_alpha": mean("alpha")}
