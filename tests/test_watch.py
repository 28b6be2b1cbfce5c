"""Health watch and the recovery autopilot: thresholds, Φ, the policy, adapter surgery, and the loop end to end.

Health signals are forced through thresholds rather than faults (every check "breakdown" with
``regimes: {linear: 0, breakdown: 0.01}``, every check DANGER with an impossible
``spectral_entropy`` band), so the loop-level tests are deterministic on tiny-random.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from slmlab.config import ConfigError
from slmlab.io import write_jsonl
from slmlab.train.config import load_train_config
from slmlab.watch.events import Event
from slmlab.watch.health import (
    REGIMES,
    STATUSES,
    Band,
    RegimeThresholds,
    StatusThresholds,
    combine,
    level_of,
    phi_of,
    probe_prompts,
    regime_of,
)
from slmlab.watch.recovery import (
    LADDER,
    HealthPolicy,
    RecoveryConfig,
    _lora_pairs,
    cooldown_factor,
    perturb_lora,
    prune_lora,
)

# --------------------------------------------------------------------------- fixtures and helpers


def _records(n=40, categories=("t",)):
    out = []
    for i in range(n):
        a, b = f"P{i}", f"Q{i}"
        out.append({"id": str(i), "input": f"{a}→{b},{a}?{b}", "output": "●" if i % 3 else "◐ — it does not follow",
                    "category": categories[i % len(categories)], "family": "f"})
    return out


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, _records())
    return path


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The machine is shared: one thread is faster for a 64-wide model and keeps runs comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(tmp_path, data_file, **over):
    """As tests/test_train.py, smaller: no eval set, no accumulation, monitor off unless asked."""
    base = {
        "name": "t",
        "model": "tiny-random",
        "output_dir": str(tmp_path / "runs"),
        "adapter": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"train": str(data_file), "max_length": 64},
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "batch_size": 4,
        "grad_accum": 1,
        "max_steps": 6,
        "save_every": 2,
        "log_every": 1,
        "watch": {"enabled": False},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return load_train_config(data=base)


def run_(config, **kw):
    from slmlab.train.loop import run

    return run(config, **kw)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _all_events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


_BOOKKEEPING = ("checkpoint", "checkpoint_confirmed", "health", "probe", "status_change", "regime_change")


def _story(run_dir: Path) -> list[dict]:
    """Detections and actions, without checkpoint and health bookkeeping."""
    return [e for e in _all_events(run_dir) if e["kind"] not in _BOOKKEEPING]


def _live(run_dir: Path) -> list[tuple[int, float, float]]:
    """(step, loss, lr) of the lines that were not undone by a rollback."""
    return [(m["step"], m["loss"], m["lr"]) for m in _metrics(run_dir) if not m.get("rolled_back")]


NO_PROBES = {"enabled": True, "probe_every": None, "spectral_every": None, "probe_prompts": 4}
FORCE_BREAKDOWN = {"every": 2, **NO_PROBES, "regimes": {"linear": 0.0, "breakdown": 0.01}}
FORCE_DANGER = {"every": 2, **NO_PROBES,
                "status": {"spectral_entropy": {"good": 100, "danger": 99, "higher_is_better": True}}}


class Killed(Exception):
    pass


def _kill_at(n):
    """An on_step hook that kills the run after step n (as a crash would)."""
    def f(step, metrics):
        if step == n:
            raise Killed()
    return f


def _check(status="STABLE", regime="geometric", phi=0.5):
    return SimpleNamespace(status=status, regime=regime, phi=phi, reasons=[])


# --------------------------------------------------------------------------- 1. status thresholds


def test_seed_default_thresholds():
    t = StatusThresholds()
    assert (t.spectral_entropy.good, t.spectral_entropy.danger, t.spectral_entropy.higher_is_better) == (2.0, 1.5, True)
    assert (t.phi_proximity.good, t.phi_proximity.danger, t.phi_proximity.higher_is_better) == (0.85, 0.70, True)
    assert (t.dominant_ratio.good, t.dominant_ratio.danger, t.dominant_ratio.higher_is_better) == (0.4, 0.6, False)
    assert (t.loop_rate.good, t.loop_rate.danger, t.loop_rate.higher_is_better) == (0.10, 0.20, False)
    r = RegimeThresholds()
    assert (r.linear, r.breakdown) == (0.30, 0.80)


@pytest.mark.parametrize("metric, cases", [
    # higher is better: > good is good, the bounds themselves are warning, < danger is danger
    ("spectral_entropy", [(2.01, "good"), (2.0, "warning"), (1.75, "warning"), (1.5, "warning"), (1.49, "danger")]),
    ("phi_proximity", [(0.86, "good"), (0.85, "warning"), (0.7, "warning"), (0.69, "danger"), (0.0, "danger")]),
    # lower is better: < good is good, the bounds are warning, > danger is danger
    ("dominant_ratio", [(0.39, "good"), (0.4, "warning"), (0.5, "warning"), (0.6, "warning"), (0.61, "danger")]),
    ("loop_rate", [(0.0, "good"), (0.099, "good"), (0.10, "warning"), (0.20, "warning"), (0.21, "danger")]),
])
def test_level_of_around_each_boundary(metric, cases):
    band = getattr(StatusThresholds(), metric)
    assert [(v, level_of(v, band)) for v, _ in cases] == cases


def test_level_of_missing_or_non_finite_is_none():
    band = Band(good=1, danger=2, higher_is_better=False)
    assert [level_of(v, band) for v in (None, math.nan, math.inf, -math.inf)] == [None] * 4


GOOD = {"spectral_entropy": 3.0, "phi_proximity": 0.9, "dominant_ratio": 0.2, "loop_rate": 0.0, "collapse_rate": 0.0}


def test_combine_statuses_and_reasons():
    t = StatusThresholds()
    status, levels, reasons = combine(GOOD, t)
    assert status == "STABLE" and reasons == [] and set(levels.values()) == {"good"}

    status, levels, reasons = combine({**GOOD, "spectral_entropy": 1.8}, t)
    assert status == "DRIFTING" and levels["spectral_entropy"] == "warning"
    assert reasons == ["spectral_entropy 1.8 ≤ 2 (warning)"]

    status, _, reasons = combine({**GOOD, "spectral_entropy": 1.8, "dominant_ratio": 0.5}, t)
    assert status == "WARNING" and len(reasons) == 2
    assert "spectral_entropy 1.8 ≤ 2 (warning)" in reasons and "dominant_ratio 0.5 ≥ 0.4 (warning)" in reasons

    # Any danger is DANGER, the danger reason first (worst first), warnings after it.
    status, levels, reasons = combine({**GOOD, "spectral_entropy": 1.8, "loop_rate": 0.3}, t)
    assert status == "DANGER" and levels["loop_rate"] == "danger"
    assert reasons == ["loop_rate 0.3 > 0.2 (danger)", "spectral_entropy 1.8 ≤ 2 (warning)"]
    status, _, reasons = combine({**GOOD, "phi_proximity": 0.5}, t)
    assert status == "DANGER" and reasons == ["phi_proximity 0.5 < 0.7 (danger)"]


def test_combine_ignores_missing_nan_and_unbanded_metrics():
    t = StatusThresholds()
    metrics = {"spectral_entropy": math.nan, "phi_proximity": None, "dominant_ratio": 0.2,
               "phi": 0.99, "effective_rank": 1.0, "eigengap": None}  # loop/collapse rate absent
    status, levels, reasons = combine(metrics, t)
    assert status == "STABLE" and levels == {"dominant_ratio": "good"} and reasons == []


# --------------------------------------------------------------------------- 2-3. config errors


def _load(**extra):
    return load_train_config(data={"data": {"train": "x.jsonl"}, **extra})


@pytest.mark.parametrize("metric, band", [
    ("spectral_entropy", {"good": 1.0, "danger": 1.5, "higher_is_better": True}),
    ("phi_proximity", {"good": 0.5, "danger": 0.7, "higher_is_better": True}),
    ("dominant_ratio", {"good": 0.7, "danger": 0.6, "higher_is_better": False}),
    ("loop_rate", {"good": 0.3, "danger": 0.2, "higher_is_better": False}),
])
def test_thresholds_out_of_order_are_rejected_naming_the_metric(metric, band):
    with pytest.raises(ConfigError) as exc:
        _load(watch={"status": {metric: band}})
    assert metric in str(exc.value) and "watch.status" in str(exc.value)
    # Equal bounds are allowed (no warning band), and so is the right order.
    _load(watch={"status": {metric: {**band, "danger": band["good"]}}})


@pytest.mark.parametrize("linear, breakdown", [(0.8, 0.8), (0.9, 0.5)])
def test_regime_thresholds_out_of_order_are_rejected(linear, breakdown):
    with pytest.raises(ConfigError) as exc:
        _load(watch={"regimes": {"linear": linear, "breakdown": breakdown}})
    assert "phi" in str(exc.value) and "linear" in str(exc.value)


@pytest.mark.parametrize("ladder", [{"light_sleep": 60}, {"deep_sleep": 100}, {"mushroom": 200}, {"pause": 20}])
def test_ladder_out_of_order_or_repeated_is_rejected(ladder):
    with pytest.raises(ConfigError, match="ladder"):
        _load(recovery={"ladder": ladder})


def test_unknown_detector_and_action_list_the_known_names():
    with pytest.raises(ConfigError) as exc:
        _load(recovery={"detectors": ["brekdown"]})
    msg = str(exc.value)
    assert "recovery.detectors" in msg and "Did you mean 'breakdown'" in msg and "Available:" in msg
    assert all(n in msg for n in ("nonfinite", "loss_spike", "grad_spike", "danger", "breakdown"))
    with pytest.raises(ConfigError) as exc:
        _load(recovery={"actions": ["mushrom"]})
    msg = str(exc.value)
    assert "Did you mean 'mushroom'" in msg and "Available:" in msg
    with pytest.raises(ConfigError) as exc:
        _load(recovery={"actions": ["reboot"]})
    msg = str(exc.value)
    assert "reboot" in msg and "Available:" in msg
    assert all(n in msg for n in ("skip", "cooldown", "rollback", "light_sleep", "deep_sleep", "mushroom", "pause"))


# --------------------------------------------------------------------------- 4. Φ and regimes


def test_phi_isotropic_is_zero_and_one_direction_is_one():
    assert phi_of(np.ones(8), n_tokens=100) == pytest.approx(0.0, abs=1e-12)
    assert phi_of(np.full(16, 3.7), n_tokens=17) == pytest.approx(0.0, abs=1e-12)  # T − 1 = d
    assert phi_of(np.array([5.0, 0, 0, 0]), n_tokens=100) == 1.0
    assert phi_of(np.array([5.0, -1e-9, 0, 0]), n_tokens=100) == 1.0  # numerical negatives are clipped


def test_phi_intermediate_by_hand():
    # p = (1/2, 1/4, 1/4): H = 1.5 log 2; n = 4: Φ = 1 − 1.5 log 2 / log 4 = 0.25
    assert phi_of(np.array([2.0, 1.0, 1.0, 0.0]), n_tokens=100) == pytest.approx(0.25, abs=1e-12)
    # p = (1/2, 1/2) over n = 8: Φ = 1 − log 2 / log 8 = 2/3
    assert phi_of(np.array([1.0, 1.0, 0, 0, 0, 0, 0, 0]), n_tokens=1000) == pytest.approx(2 / 3, abs=1e-12)


def test_phi_uses_the_rank_the_tokens_allow():
    lam = np.array([1.0, 1.0, 1.0, 0.0])  # d = 4
    # With T = 4 tokens the covariance has rank ≤ T − 1 = 3: three equal directions are all there can be.
    assert phi_of(lam, n_tokens=4) == pytest.approx(0.0, abs=1e-12)
    # With many tokens, n = d = 4 and the same spectrum is not isotropic.
    assert phi_of(lam, n_tokens=100) == pytest.approx(1 - math.log(3) / math.log(4), abs=1e-12)
    assert math.isnan(phi_of(lam, n_tokens=2))  # n = 1: undefined
    assert math.isnan(phi_of(np.zeros(4), n_tokens=100))


def test_regime_boundaries():
    r = RegimeThresholds()
    got = [regime_of(x, r) for x in (0.0, 0.2999, 0.30, 0.5, 0.7999, 0.80, 1.0)]
    assert got == ["linear", "linear", "geometric", "geometric", "geometric", "breakdown", "breakdown"]
    assert regime_of(math.nan, r) is None
    custom = RegimeThresholds(linear=0.1, breakdown=0.2)
    assert [regime_of(x, custom) for x in (0.05, 0.1, 0.2)] == ["linear", "geometric", "breakdown"]


# --------------------------------------------------------------------------- 5. the policy


def _ladder_policy(actions=None, every=10):
    cfg = RecoveryConfig(enabled=True, detectors=["breakdown"], actions=actions if actions is not None else list(LADDER))
    return HealthPolicy(cfg, every)


def test_rung_for_matches_the_seed_ladder():
    p = _ladder_policy()
    got = {s: p.rung_for(s) for s in (1, 19, 20, 49, 50, 99, 100, 101, 150, 151)}
    assert got == {1: "cooldown", 19: "cooldown", 20: "light_sleep", 49: "light_sleep", 50: "deep_sleep",
                   99: "deep_sleep", 100: "deep_sleep", 101: "mushroom", 150: "mushroom", 151: "pause"}


def test_ladder_fires_each_rung_once_per_streak():
    p = _ladder_policy()
    fired = {}
    # 18 breakdown checks 10 steps apart: the first counts 1 step (when the breakdown began is unknown),
    # each further one 10 more.
    for i in range(1, 19):
        d = p.decide(_check(regime="breakdown", phi=0.9), cooling=False)
        if d is not None:
            assert d.detector == "breakdown" and d.evidence["consecutive_breakdown_steps"] == 1 + 10 * (i - 1)
            assert d.evidence["rung"] == d.action and d.evidence["phi"] == 0.9
            fired[1 + 10 * (i - 1)] = d.action
    assert fired == {1: "cooldown", 21: "light_sleep", 51: "deep_sleep", 101: "mushroom", 151: "pause"}
    assert p.breakdown_steps == 171


def test_a_non_breakdown_check_resets_the_streak():
    p = _ladder_policy()
    seq = [p.decide(_check(regime="breakdown"), cooling=False) for _ in range(3)]
    assert [d and d.action for d in seq] == ["cooldown", None, "light_sleep"]  # at 1, 11, 21 steps
    assert p.decide(_check(regime="geometric"), cooling=False) is None
    assert p.breakdown_steps == 0 and p.rungs_done == set()
    again = p.decide(_check(regime="breakdown"), cooling=False)
    assert again.action == "cooldown" and again.evidence["consecutive_breakdown_steps"] == 1


def test_a_rung_that_is_not_allowed_is_detected_without_action_but_pause_always_acts():
    p = _ladder_policy(actions=["cooldown"], every=50)
    got = [p.decide(_check(regime="breakdown"), cooling=False) for _ in range(4)]
    # 1 cooldown, 51 deep_sleep (not allowed), 101 mushroom (not allowed), 151 pause (always allowed)
    assert [(d.evidence["rung"], d.action) if d else None for d in got] == [
        ("cooldown", "cooldown"), ("deep_sleep", None), ("mushroom", None), ("pause", "pause")]


def test_policy_does_nothing_when_recovery_is_disabled():
    p = HealthPolicy(RecoveryConfig(enabled=False, detectors=["breakdown", "danger"]), 10)
    assert all(p.decide(_check("DANGER", "breakdown"), cooling=False) is None for _ in range(30))


def test_sustained_danger_cools_down_then_rolls_back_while_cooling():
    cfg = RecoveryConfig(enabled=True, detectors=["danger"], actions=["cooldown", "rollback"], danger_checks=3)
    p = HealthPolicy(cfg, 10)
    got = [p.decide(_check("DANGER"), cooling=False) for _ in range(3)]
    assert got[:2] == [None, None] and (got[2].detector, got[2].action) == ("danger", "cooldown")
    assert got[2].evidence["consecutive_checks"] == 3 and got[2].evidence["status"] == "DANGER"
    got = [p.decide(_check("DANGER"), cooling=True) for _ in range(3)]
    assert got[:2] == [None, None] and got[2].action == "rollback"
    # A non-DANGER check resets the streak.
    got = [p.decide(_check(s), cooling=False) for s in ("DANGER", "DANGER", "WARNING", "DANGER", "DANGER", "DANGER")]
    assert [d and d.action for d in got] == [None, None, None, None, None, "cooldown"]


def test_danger_without_cooldown_or_rollback_allowed():
    p = HealthPolicy(RecoveryConfig(enabled=True, detectors=["danger"], actions=["rollback"], danger_checks=1), 5)
    assert p.decide(_check("DANGER"), cooling=False).action == "rollback"
    p = HealthPolicy(RecoveryConfig(enabled=True, detectors=["danger"], actions=["skip"], danger_checks=1), 5)
    d = p.decide(_check("DANGER"), cooling=False)
    assert d.detector == "danger" and d.action is None


def test_policy_state_round_trips():
    p = _ladder_policy()
    for _ in range(3):
        p.decide(_check(regime="breakdown"), cooling=False)
    q = _ladder_policy()
    q.load(json.loads(json.dumps(p.state())))
    assert (q.breakdown_steps, q.rungs_done, q.danger_streak) == (21, {"cooldown", "light_sleep"}, 0)
    assert q.decide(_check(regime="breakdown"), cooling=False) is None  # 31: light sleep already done


# --------------------------------------------------------------------------- 6. cooldown factor


def test_cooldown_factor_eases_linearly_back_to_one():
    cd = {"start": 10, "steps": 4, "factor": 0.5}
    assert [cooldown_factor(cd, s) for s in (10, 11, 12, 13, 14, 15, 100)] == [0.5, 0.625, 0.75, 0.875, 1.0, 1.0, 1.0]
    assert cooldown_factor(cd, 9) == 0.5  # (never asked before the start; stays at the floor)
    assert cooldown_factor(None, 5) == 1.0 and cooldown_factor({}, 5) == 1.0


# --------------------------------------------------------------------------- 7. adapter surgery


def _lora_model(r=8, targets=("q_proj", "v_proj"), seed=0, zero_b=()):
    from peft import LoraConfig, get_peft_model

    from slmlab.models import load

    model, _ = load("tiny-random")
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, (_, _, B) in enumerate(_lora_pairs(model)):
            B.copy_(torch.zeros_like(B) if i in zero_b else torch.randn(B.shape, generator=g) * 0.1)
    return model


def _deltas(model) -> list[torch.Tensor]:
    return [(B.detach().double() @ A.detach().double()) for _, A, B in _lora_pairs(model)]


def test_prune_lora_keeps_the_best_low_rank_approximation():
    model = _lora_model(r=8, zero_b=(3,))
    before = _deltas(model)
    pairs_before = [(A.detach().clone(), B.detach().clone()) for _, A, B in _lora_pairs(model)]
    assert len(before) == 4 and all(d.abs().sum() > 0 for i, d in enumerate(before) if i != 3)
    out = prune_lora(model, 0.25)
    keep = 6  # round(8 · 0.75)
    after = _deltas(model)
    removed = []
    for i, (d0, d1) in enumerate(zip(before, after)):
        if i == 3:  # a zero delta is left alone and not counted
            _, A3, B3 = list(_lora_pairs(model))[3]
            assert torch.equal(A3, pairs_before[3][0]) and B3.abs().sum() == 0
            continue
        u, s, vh = torch.linalg.svd(d0, full_matrices=False)
        best = (u[:, :keep] * s[:keep]) @ vh[:keep]
        assert float((d1 - best).norm() / best.norm()) < 1e-5, i
        assert torch.linalg.matrix_rank(d1, rtol=1e-6) == keep
        removed.append(float((s[keep:] ** 2).sum() / (s**2).sum()))
    assert out["layers"] == 3
    assert out["energy_removed"] == pytest.approx(sum(removed) / len(removed), rel=1e-6)
    assert 0 < out["energy_removed"] < 1
    for i, (_, A, B) in enumerate(_lora_pairs(model)):  # padded with zeros to rank r
        if i == 3:
            continue
        assert A.shape[0] == 8 and B[:, keep:].abs().sum() == 0 and A[keep:].abs().sum() == 0


def test_prune_lora_with_rank_above_the_layer_width():
    # v_proj of tiny-random is 64 → 32: with r = 48 the delta has rank ≤ 32, and keep = round(48·0.75) = 36.
    model = _lora_model(r=48, targets=("v_proj",))
    before = _deltas(model)
    out = prune_lora(model, 0.25)  # RuntimeError: expanded size 36 vs 32
    assert out["layers"] == 2 and 0 <= out["energy_removed"] < 1
    for d0, d1 in zip(before, _deltas(model)):
        # Whatever number of directions is kept, the result is the truncated SVD of the original delta.
        k = int(torch.linalg.matrix_rank(d1, rtol=1e-6))
        u, s, vh = torch.linalg.svd(d0, full_matrices=False)
        assert float((d1 - (u[:, :k] * s[:k]) @ vh[:k]).norm() / d0.norm()) < 1e-5


def test_perturb_lora_moves_each_weight_by_exactly_noise_times_its_norm():
    model = _lora_model(r=8, zero_b=(0, 2))
    twin = copy.deepcopy(model)
    other = copy.deepcopy(model)
    before = [W.detach().clone() for _, A, B in _lora_pairs(model) for W in (A, B)]
    out = perturb_lora(model, 0.05, seed=7)
    after = [W.detach().clone() for _, A, B in _lora_pairs(model) for W in (A, B)]
    nonzero = [w0 for w0 in before if w0.abs().sum() > 0]
    assert out == {"weights": len(nonzero), "relative_norm": 0.05} and len(nonzero) == 6  # 4 A's, 2 of the B's
    for w0, w1 in zip(before, after):
        n0 = float(w0.double().norm())
        if n0 == 0:
            assert torch.equal(w1, w0)
        else:
            moved = float((w1.double() - w0.double()).norm())
            assert moved == pytest.approx(0.05 * n0, rel=1e-5)
    perturb_lora(twin, 0.05, seed=7)
    perturb_lora(other, 0.05, seed=8)
    same = [W for _, A, B in _lora_pairs(twin) for W in (A, B)]
    diff = [W for _, A, B in _lora_pairs(other) for W in (A, B)]
    assert all(torch.equal(a, b) for a, b in zip(after, same))
    assert any(not torch.equal(a, b) for a, b, w0 in zip(after, diff, before) if w0.abs().sum() > 0)


# --------------------------------------------------------------------------- 8a. the monitor in the loop


def test_monitor_does_not_perturb_training_and_logs_health_and_probes(tmp_path, data_file):
    watched = {"enabled": True, "every": 2, "probe_every": 4, "spectral_every": 4, "probe_prompts": 4, "probe_tokens": 8}
    on = _config(tmp_path, data_file, name="on", max_steps=8, watch=watched)
    assert on.adapter.dropout > 0  # dropout draws random numbers: a probe that moved a generator would show
    a = run_(on)
    b = run_(_config(tmp_path, data_file, name="off", max_steps=8))
    assert a.losses == b.losses and len(a.losses) == 8
    assert [m["lr"] for m in _metrics(a.run_dir)] == [m["lr"] for m in _metrics(b.run_dir)]

    events = _all_events(a.run_dir)
    health = [e for e in events if e["kind"] == "health"]
    assert [e["step"] for e in health] == [2, 4, 6, 8]
    for e in health:
        assert e["status"] in STATUSES and e["regime"] in REGIMES
        assert isinstance(e["phi"], float) and 0 <= e["phi"] <= 1
        assert e["regime"] == regime_of(e["phi"], RegimeThresholds())
        assert e["metrics"]["phi"] == e["phi"] and "spectral_entropy" in e["levels"]
    assert "loop_rate" not in health[0]["metrics"] and "loop_rate" in health[1]["metrics"]  # probes from step 4
    assert "adapter_stable_rank" in health[1]["metrics"]
    probes = [e for e in events if e["kind"] == "probe"]
    assert [e["step"] for e in probes] == [4, 8]
    for e in probes:
        assert e["n"] == 4 and 0 <= e["loop_rate"] <= 1 and 0 <= e["collapse_rate"] <= 1
        assert sum(e["basins"].values()) == pytest.approx(1.0)
    assert a.summary["watch"]["enabled"] and a.summary["watch"]["last_status"] == health[-1]["status"]
    assert not [e for e in _all_events(b.run_dir) if e["kind"] in ("health", "probe")]
    assert b.summary["watch"] == {"enabled": False}


def test_probe_events_keep_every_sample_with_its_label_and_the_report_shows_them(tmp_path, data_file):
    from slmlab.evaluate.basins import label
    from slmlab.watch.run_report import write_run_report

    prompts = ["Once upon a time", "The king said"]
    watched = {"enabled": True, "every": 4, "probe_every": 4, "spectral_every": None, "probe_tokens": 8, "prompts": prompts}
    res = run_(_config(tmp_path, data_file, name="samples", max_steps=4, watch=watched))
    (probe,) = [e for e in _all_events(res.run_dir) if e["kind"] == "probe"]
    assert probe["n"] == 2 and [s["prompt"] for s in probe["samples"]] == prompts  # as given: no chat template
    for s in probe["samples"]:
        assert s["basin"] == label(s["text"]).basin.value
    assert probe["coherence_reference"] == "none" and probe["coherence_ppl"] is None  # the default: no reference
    assert 0 <= probe["coherence_seq_rep_4"] <= 1
    html = write_run_report(res.run_dir).read_text()
    assert "<h2>Samples</h2>" in html and all(p in html for p in prompts)


@pytest.mark.parametrize("n, shown", [(1, [0]), (4, [0, 1, 2, 3]), (11, [0, 2, 4, 6, 8, 10])])
def test_the_report_shows_the_samples_of_the_first_and_last_probes_and_evenly_between(n, shown):
    from slmlab.watch.run_report import _samples_section

    probes = [Event.from_json({"kind": "probe", "step": 10 * i, "time": 0.0,
                               "samples": [{"prompt": "p", "text": f"t{i}", "basin": "CREATIVE"}]}) for i in range(n)]
    html = "".join(_samples_section(probes))
    assert [i for i in range(n) if f"<td>t{i}</td>" in html] == shown


def test_probe_coherence_under_the_model_itself_matches_the_tracker(tmp_path, data_file):
    from slmlab.kernel.coherence import CoherenceTracker
    from slmlab.models import load

    watched = {"enabled": True, "every": 2, "probe_every": 2, "spectral_every": None, "probe_tokens": 8,
               "prompts": ["Once upon a time", "The king said"], "coherence": "self"}
    res = run_(_config(tmp_path, data_file, name="coh", max_steps=2, save_every=2, watch=watched))
    (probe,) = [e for e in _all_events(res.run_dir) if e["kind"] == "probe"]
    from peft import PeftModel

    base, tok = load("tiny-random")
    model = PeftModel.from_pretrained(base, str(res.run_dir / "adapter")).eval()
    again = CoherenceTracker(model, tok, name="self").measure([s["text"] for s in probe["samples"]])
    assert probe["coherence_reference"] == "self" and probe["coherence_ppl"] == pytest.approx(again.ppl, rel=1e-4)
    b = run_(_config(tmp_path, data_file, name="coh-off", max_steps=2, save_every=2, watch={**watched, "coherence": None}))
    assert b.losses == res.losses  # scoring the samples moves no generator
    (plain,) = [e for e in _all_events(b.run_dir) if e["kind"] == "probe"]
    assert not [k for k in plain if k.startswith("coherence")]


def test_regime_share_takes_the_first_share_of_each_micro_batch_and_never_nothing():
    from slmlab.train.loop import regime_share
    from slmlab.watch.recovery import RegimeComputeConfig

    units = [list(range(10)), list(range(10, 13))]
    assert regime_share(units, 1.0) is units
    assert regime_share(units, 0.3) == [[0, 1, 2], [10]]
    assert regime_share(units, 0.01) == [[0], [10]]
    on = RegimeComputeConfig(enabled=True)
    assert (on.share("linear"), on.share("geometric"), on.share("breakdown"), on.share(None)) == (0.3, 1.0, 1.0, 1.0)
    assert RegimeComputeConfig().share("linear") == 1.0  # off by default


def test_regime_compute_trains_on_less_data_only_after_a_linear_check(tmp_path, data_file):
    linear = {"every": 2, **NO_PROBES, "regimes": {"linear": 0.99, "breakdown": 1.0}}  # every check: linear
    scaled = {"regime_compute": {"enabled": True, "linear": 0.5}}
    a = run_(_config(tmp_path, data_file, name="scaled", max_steps=4, watch=linear, recovery=scaled))
    b = run_(_config(tmp_path, data_file, name="plain", max_steps=4, watch=linear))
    ma, mb = _metrics(a.run_dir), _metrics(b.run_dir)
    assert a.losses[:2] == b.losses[:2]  # before the first check (step 2) nothing changes
    assert all("batch_share" not in m for m in ma[:2]) and [m["batch_share"] for m in ma[2:]] == [0.5, 0.5]
    steps_tokens = [m["tokens"] for m in ma]
    full = [m["tokens"] for m in mb]
    assert steps_tokens[:2] == full[:2]
    assert 0 < steps_tokens[3] - steps_tokens[1] < full[3] - full[1]  # fewer tokens per step once linear
    assert all("batch_share" not in m for m in mb)


# --------------------------------------------------------------------------- 8b. danger → cooldown


def test_sustained_danger_cools_the_learning_rate(tmp_path, data_file):
    rec = {"enabled": True, "detectors": ["danger"], "actions": ["cooldown", "rollback"], "danger_checks": 2,
           "cooldown": {"factor": 0.5, "steps": 4}}
    common = {"max_steps": 7, "schedule": {"kind": "constant"}, "watch": FORCE_DANGER}
    r = run_(_config(tmp_path, data_file, name="cool", recovery=rec, **common))
    ref = run_(_config(tmp_path, data_file, name="ref", **common))
    assert r.status == "completed" and ref.status == "completed"
    story = _story(r.run_dir)
    assert [(e["kind"], e["step"]) for e in story] == [("detection", 4), ("cooldown", 4)]
    det, cool = story
    assert det["detector"] == "danger" and det["action"] == "cooldown" and det["consecutive_checks"] == 2
    assert any("spectral_entropy" in x for x in det["reasons"])
    assert (cool["start"], cool["steps"], cool["factor"]) == (4, 4, 0.5)
    # Every check was DANGER in the reference run too; with recovery off nothing acted on it.
    assert {e["status"] for e in _all_events(ref.run_dir) if e["kind"] == "health"} == {"DANGER"}
    assert _story(ref.run_dir) == []

    lr = {m["step"]: m["lr"] for m in _metrics(r.run_dir)}
    base = {m["step"]: m["lr"] for m in _metrics(ref.run_dir)}
    assert r.losses[:4] == ref.losses[:4] and r.losses[5:] != ref.losses[5:]
    for step in range(1, 8):
        # Metrics log the lr a step was taken with: step s runs with the factor set after step s-1.
        want = 1.0 if step <= 4 else cooldown_factor(cool, step - 1)
        assert lr[step] / base[step] == pytest.approx(want, abs=1e-6), step
    assert lr[5] / base[5] == pytest.approx(0.5) and lr[5] < base[5]  # the cooldown's full factor, first
    rec_counts = r.summary["recovery"]
    assert (rec_counts["detections"], rec_counts["cooldowns"], rec_counts["rollbacks"]) == (1, 1, 0)


# --------------------------------------------------------------------------- 8c. the breakdown ladder


def test_breakdown_walks_the_whole_ladder_then_pauses(tmp_path, data_file):
    rec = {"enabled": True, "detectors": ["breakdown"],
           "actions": ["cooldown", "light_sleep", "deep_sleep", "mushroom", "rollback"],
           "ladder": {"light_sleep": 3, "deep_sleep": 5, "mushroom": 6, "pause": 8},
           "light_sleep": {"steps": 2, "lr_factor": 0.3}, "cooldown": {"factor": 0.5, "steps": 20},
           "confirm_steps": 0}
    # save_every 1 and confirm_steps 0: the step-1 checkpoint predates the first check, so it is the one
    # healthy rollback target (with confirmation, step 2's breakdown check would veto it).
    r = run_(_config(tmp_path, data_file, name="ladder", max_steps=30, save_every=1, watch=FORCE_BREAKDOWN,
                     recovery=rec))
    story = _story(r.run_dir)
    actions = [(e["kind"], e["step"]) for e in story if e["kind"] != "detection"]
    # checks every 2 steps; the streak counts 1, 3, 5, ...: at step 2 (1: cooldown), 4 (3: light sleep),
    # 6 (5: deep sleep → back to step 1), then 2 (7 > 6: mushroom), 4 (9 > 8: pause)
    assert actions == [("cooldown", 2), ("light_sleep", 4), ("rollback", 1), ("deep_sleep", 1), ("mushroom", 2),
                       ("pause", 4)]
    detections = [e for e in story if e["kind"] == "detection"]
    assert [(e["rung"], e["consecutive_breakdown_steps"]) for e in detections] == [
        ("cooldown", 1), ("light_sleep", 3), ("deep_sleep", 5), ("mushroom", 7), ("pause", 9)]
    assert all(e["detector"] == "breakdown" and e["regime"] == "breakdown" for e in detections)

    by_kind = {e["kind"]: e for e in story}
    light = by_kind["light_sleep"]
    # The breakdown began 3 steps before step 4 (at data position 1): only position 0 predates it.
    assert light["steps"] == 1 and light["lr_factor"] == 0.3 and light["replay_positions"] == [0, 0]
    replayed = [m["step"] for m in _metrics(r.run_dir) if m.get("replay")]
    assert replayed == [5]
    assert by_kind["rollback"]["checkpoint"] == "step-1" and by_kind["rollback"]["reason"] == "breakdown"
    deep = by_kind["deep_sleep"]
    assert deep["layers"] > 0 and 0 < deep["energy_removed"] < 1 and deep["prune_fraction"] == 0.25
    mush = by_kind["mushroom"]
    assert mush["weights"] > 0 and mush["reshuffle"] == 1 and mush["relative_norm"] == 0.05

    assert r.status.startswith("paused") and "breakdown" in r.status
    last = _all_events(r.run_dir)[-1]
    assert last["kind"] == "pause" and "breakdown" in last["reason"]
    counts = r.summary["recovery"]
    for kind in ("detection", "cooldown", "light_sleep", "rollback", "deep_sleep", "mushroom", "pause", "skip"):
        assert counts[f"{kind}s"] == sum(e["kind"] == kind for e in _all_events(r.run_dir)), kind
    assert (counts["detections"], counts["pauses"], counts["reshuffles"]) == (5, 1, 1)


def test_light_sleep_replays_only_data_already_seen(tmp_path, data_file):
    rec = {"enabled": True, "detectors": ["breakdown"], "actions": ["light_sleep"],
           "ladder": {"light_sleep": 1, "deep_sleep": 50, "mushroom": 100, "pause": 150}, "light_sleep": {"steps": 10}}
    r = run_(_config(tmp_path, data_file, name="early-sleep", max_steps=3, watch=FORCE_BREAKDOWN, recovery=rec))
    (light,) = [e for e in _story(r.run_dir) if e["kind"] == "light_sleep"]
    assert light["step"] == 2
    # Data positions 0 and 1 are all the run has seen: "earlier, healthy data" cannot include 2..9.
    assert all(p < 2 for p in light["replay_positions"]), light["replay_positions"]


# --------------------------------------------------------------------------- 8d. checkpoint confirmation


def _rollback_target(tmp_path, data_file, monkeypatch, name, confirm_steps):
    from slmlab.train import loop

    seen = {}
    real = loop.load_checkpoint

    def spy(path, *a, **kw):
        seen["target"] = path.name
        seen["step-4 healthy"] = json.loads((path.parent / "step-4" / "state.json").read_text())["healthy"]
        return real(path, *a, **kw)

    monkeypatch.setattr(loop, "load_checkpoint", spy)
    r = run_(_config(tmp_path, data_file, name=name, max_steps=6, save_every=2, inject=["nan@5"],
                     recovery={"enabled": True, "actions": ["rollback"], "rollback_after": 1,
                               "confirm_steps": confirm_steps}))
    assert r.status == "completed" and r.steps == 6
    return r, seen


def test_a_fault_right_after_a_checkpoint_rolls_back_past_it(tmp_path, data_file, monkeypatch):
    r, seen = _rollback_target(tmp_path, data_file, monkeypatch, "confirm1", confirm_steps=1)
    assert seen == {"target": "step-2", "step-4 healthy": False}
    events = [(e["kind"], e["step"], e.get("path") or e.get("checkpoint")) for e in _all_events(r.run_dir)]
    fault = events.index(("detection", 5, None))
    assert ("checkpoint_confirmed", 3, "checkpoints/step-2") in events[:fault]
    assert not any(k == "checkpoint_confirmed" and p == "checkpoints/step-4" for k, _, p in events[:fault])
    assert events[fault + 1] == ("rollback", 2, "step-2")

    r0, seen0 = _rollback_target(tmp_path, data_file, monkeypatch, "confirm0", confirm_steps=0)
    assert seen0 == {"target": "step-4", "step-4 healthy": True}
    assert [(e["kind"], e["checkpoint"]) for e in _story(r0.run_dir) if e["kind"] == "rollback"] == [("rollback", "step-4")]


def test_confirmed_checkpoints_beyond_keep_are_retained_with_recovery(tmp_path, data_file):
    def kept(name, recovery):
        r = run_(_config(tmp_path, data_file, name=name, max_steps=5, save_every=1, keep_checkpoints=1,
                         recovery=recovery))
        return sorted((p.name, json.loads((p / "state.json").read_text())["healthy"])
                      for p in (r.run_dir / "checkpoints").iterdir())

    # keep 1 (the newest, not yet confirmed) + the 2 newest confirmed ones.
    assert kept("keep-rec", {"enabled": True, "keep_healthy": 2}) == [
        ("step-3", True), ("step-4", True), ("step-5", False)]
    assert kept("keep-norec", {"enabled": False}) == [("step-5", False)]


def test_health_damage_right_after_a_checkpoint_rolls_back_past_it(tmp_path, data_file, monkeypatch):
    from slmlab.watch import health

    # Φ is healthy for the checks of steps 1-4 and in breakdown from the check of step 5 on.
    calls = []

    def phi(eigenvalues, n_tokens):
        calls.append(1)
        return 0.5 if len(calls) <= 4 else 0.95

    monkeypatch.setattr(health, "phi_of", phi)
    rec = {"enabled": True, "detectors": ["breakdown"], "actions": ["deep_sleep"], "confirm_steps": 1,
           "ladder": {"light_sleep": 2, "deep_sleep": 3, "mushroom": 10, "pause": 20}}
    r = run_(_config(tmp_path, data_file, name="confirm-health", max_steps=8, save_every=2,
                     watch={"enabled": True, "every": 1, **{k: v for k, v in NO_PROBES.items() if k != "enabled"}},
                     recovery=rec))
    story = _story(r.run_dir)
    # Breakdown seen at step 5 (the step after checkpoint 4): deep sleep at the third breakdown step (7).
    assert next(e["step"] for e in story if e["kind"] == "detection") == 5
    (rb,) = [e for e in story if e["kind"] == "rollback"]
    assert rb["checkpoint"] == "step-2"  # step 5 was not clean, so step-4 must not have become a target


# --------------------------------------------------------------------------- 8e. curriculum


def test_curriculum_phases_in_the_loop(tmp_path):
    path = tmp_path / "ab.jsonl"
    write_jsonl(path, _records(40, categories=("A", "B")))
    phases = [{"name": "a", "span": 0.5, "mix": {"A": 1}}, {"name": "b", "span": 0.5, "mix": {"A": 1, "B": 1}}]
    r = run_(_config(tmp_path, path, name="cur", max_steps=6, curriculum=phases))
    assert r.status == "completed" and r.steps == 6
    got = [(e["step"], e["index"], e["name"], e["mix"]) for e in _all_events(r.run_dir) if e["kind"] == "phase"]
    assert got == [(0, 0, "a", {"A": 1.0}), (3, 1, "b", {"A": 0.5, "B": 0.5})]


def test_curriculum_with_an_unknown_category_fails_before_the_model_loads(tmp_path, monkeypatch):
    from slmlab.errors import SlmlabError
    from slmlab.train import loop

    path = tmp_path / "ab.jsonl"
    write_jsonl(path, _records(12, categories=("A", "B")))
    monkeypatch.setattr(loop, "build_model", lambda cfg: pytest.fail("model loaded before the curriculum was checked"))
    phases = [{"name": "warm", "span": 0.5, "mix": {"A": 1}}, {"name": "wide", "span": 0.5, "mix": {"A": 1, "C": 1}}]
    with pytest.raises(loop.TrainingError) as exc:
        run_(_config(tmp_path, path, name="badcur", curriculum=phases))
    msg = str(exc.value)
    assert isinstance(exc.value, SlmlabError)
    assert "'wide'" in msg and "'C'" in msg and "Available: A, B" in msg
    # Nothing was claimed: with the mix fixed, the same name trains (no "already holds a run").
    assert not (tmp_path / "runs" / "badcur" / "config.yaml").exists()
    monkeypatch.undo()
    phases[1]["mix"] = {"A": 1, "B": 1}
    assert run_(_config(tmp_path, path, name="badcur", curriculum=phases, max_steps=2)).status == "completed"


# --------------------------------------------------------------------------- 8f. experimental basin loss


def test_basin_loss_in_the_loop_and_off_by_default(tmp_path, data_file, monkeypatch):
    import warnings

    from slmlab.train import penalty

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ExperimentalWarning on import is the point of that module
        r = run_(_config(tmp_path, data_file, name="basin", max_steps=3,
                         experimental={"basin_loss": {"enabled": True, "collapse_weight": 1.0, "entropy_floor": 100}}))
    lines = _metrics(r.run_dir)
    assert r.status == "completed" and len(lines) == 3
    assert all(m["basin_penalty"] > 0 and math.isfinite(m["basin_penalty"]) for m in lines)
    assert all(math.isfinite(x) for x in r.losses)

    monkeypatch.setattr(penalty, "BasinPenalty", lambda *a, **kw: pytest.fail("basin loss built in a default run"))
    d = run_(_config(tmp_path, data_file, name="nobasin", max_steps=2))
    assert d.status == "completed" and all("basin_penalty" not in m for m in _metrics(d.run_dir))


# --------------------------------------------------------------------------- 8g. resume


def test_resume_during_a_cooldown_continues_exactly(tmp_path, data_file):
    from slmlab.train.loop import resume_run

    rec = {"enabled": True, "detectors": ["danger"], "actions": ["cooldown"], "danger_checks": 2,
           "cooldown": {"factor": 0.5, "steps": 6}}
    kw = {"max_steps": 8, "save_every": 2, "watch": FORCE_DANGER, "recovery": rec}
    straight = run_(_config(tmp_path, data_file, name="straight", **kw))

    with pytest.raises(Killed):
        run_(_config(tmp_path, data_file, name="killed", **kw), on_step=_kill_at(5))
    d = tmp_path / "runs" / "killed"
    state = json.loads((d / "checkpoints" / "step-4" / "state.json").read_text())
    assert state["cooldown"] == {"start": 4, "steps": 6, "factor": 0.5}  # the cooldown is in the checkpoint
    resumed = resume_run(d)
    assert resumed.steps == 8 and resumed.status == straight.status == "completed"
    assert _live(d) == _live(straight.run_dir)  # losses and lrs, bit-identical
    # Cooling at the second detection (step 8) with rollback not allowed: detected, no action.
    assert [(e["kind"], e["step"], e.get("action")) for e in _story(straight.run_dir)] == [
        ("detection", 4, "cooldown"), ("cooldown", 4, None), ("detection", 8, None)]
    assert _story(d) == _story(straight.run_dir)


def _kill_after_rollback(run_dir: Path, step_to_kill: int):
    """on_step that stops the run at ``step_to_kill`` once a rollback has happened."""

    def on_step(step, metrics):
        if step == step_to_kill and any(e["kind"] == "rollback" for e in _all_events(run_dir)):
            raise Killed()

    return on_step


def _metrics_story(run_dir):
    return [(m["step"], m["loss"], bool(m.get("rolled_back"))) for m in _metrics(run_dir)]


# checkpoints 2 and 4 confirmed, 6 unconfirmed; the NaN at 7 rolls back to step-4 (data position 7 onwards skipped).
ROLLBACK_AT_7 = {"max_steps": 8, "save_every": 2, "inject": ["nan@7"],
                 "recovery": {"enabled": True, "actions": ["rollback"], "rollback_after": 1}}


def test_a_rollback_discards_the_checkpoints_of_the_abandoned_branch(tmp_path, data_file):
    from slmlab.train.checkpoint import latest_checkpoint, list_checkpoints

    straight = run_(_config(tmp_path, data_file, name="straight", **ROLLBACK_AT_7))
    assert [(e["kind"], e["step"], e.get("checkpoint")) for e in _story(straight.run_dir)] == [
        ("detection", 7, None), ("rollback", 4, "step-4")]
    d = tmp_path / "runs" / "killed"
    with pytest.raises(Killed):
        run_(_config(tmp_path, data_file, name="killed", **ROLLBACK_AT_7), on_step=_kill_after_rollback(d, 5))
    # Killed at step 5 of the new branch: step-6 was taken on the branch the rollback abandoned
    # (the weights that led to the NaN), yet it is what a resume would load.
    assert [p.name for p in list_checkpoints(d)] == ["step-2", "step-4"]
    assert latest_checkpoint(d).name == "step-4"


def test_resume_right_after_a_rollback_continues_exactly(tmp_path, data_file):
    from slmlab.train.loop import resume_run

    # confirm_steps 0: step-4 is a rollback target at once, so no checkpoint of an abandoned branch exists.
    kw = {"max_steps": 7, "save_every": 2, "inject": ["nan@5"],
          "recovery": {"enabled": True, "actions": ["rollback"], "rollback_after": 1, "confirm_steps": 0}}
    straight = run_(_config(tmp_path, data_file, name="straight", **kw))
    d = tmp_path / "runs" / "killed"
    with pytest.raises(Killed):
        run_(_config(tmp_path, data_file, name="killed", **kw), on_step=_kill_after_rollback(d, 5))
    resumed = resume_run(d)
    assert _metrics_story(d) == _metrics_story(straight.run_dir)
    assert resumed.summary["recovery"] == straight.summary["recovery"]


def test_resume_after_a_rollback_keeps_the_events_of_the_undone_steps(tmp_path, data_file):
    from slmlab.train.loop import resume_run

    straight = run_(_config(tmp_path, data_file, name="straight", **ROLLBACK_AT_7))
    d = tmp_path / "runs" / "killed"
    with pytest.raises(Killed):  # at step 7 of the new branch: the resume starts from the new step-6
        run_(_config(tmp_path, data_file, name="killed", **ROLLBACK_AT_7), on_step=_kill_after_rollback(d, 7))
    resumed = resume_run(d)
    assert _metrics_story(d) == _metrics_story(straight.run_dir)  # this part holds: rolled-back lines are kept
    assert [(e["kind"], e["step"]) for e in _story(d)] == [("detection", 7), ("rollback", 4)]
    assert resumed.summary["recovery"] == straight.summary["recovery"]


def test_resume_is_exact_when_the_status_depends_on_the_probes(tmp_path, data_file):
    from slmlab.train.loop import resume_run

    # Any probe result is DANGER; the spectral metrics alone are not.
    watch = {"enabled": True, "every": 2, "probe_every": 4, "spectral_every": None, "probe_prompts": 2, "probe_tokens": 4,
             "status": {"loop_rate": {"good": -1, "danger": -0.5, "higher_is_better": False}}}
    rec = {"enabled": True, "detectors": ["danger"], "actions": ["cooldown"], "danger_checks": 2,
           "cooldown": {"factor": 0.5, "steps": 20}}
    kw = {"max_steps": 8, "save_every": 4, "watch": watch, "recovery": rec}
    straight = run_(_config(tmp_path, data_file, name="straight", **kw))
    # check 4 (probe): DANGER; check 6 (the step-4 probe still current): DANGER → cooldown
    assert [(e["kind"], e["step"]) for e in _story(straight.run_dir)] == [("detection", 6), ("cooldown", 6)]

    with pytest.raises(Killed):
        run_(_config(tmp_path, data_file, name="killed", **kw), on_step=_kill_at(5))
    d = tmp_path / "runs" / "killed"
    resume_run(d)
    assert _live(d) == _live(straight.run_dir)


# --------------------------------------------------------------------------- 9. CLI


def _run_main(monkeypatch, capsys, *args):
    from slmlab.cli import main

    monkeypatch.setattr(sys, "argv", ["slmlab", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_watch_and_report(tmp_path, data_file, monkeypatch, capsys):
    from typer.testing import CliRunner

    from slmlab.cli import app

    runner = CliRunner()
    for cmd in ("watch", "report"):
        res = runner.invoke(app, [cmd, "--help"], terminal_width=200)
        assert res.exit_code == 0 and "Example" in res.output and f"slmlab {cmd}" in res.output

    empty = tmp_path / "not-a-run"
    empty.mkdir()
    for cmd in (["watch", str(empty), "--no-follow"], ["watch", str(empty)], ["report", str(empty)]):
        code, _out, err = _run_main(monkeypatch, capsys, *cmd)
        assert code == 2 and "config.yaml" in err and "Traceback" not in err, cmd
        assert len(err.strip().splitlines()) == 1, err

    r = run_(_config(tmp_path, data_file, name="cli", max_steps=2, watch={"enabled": True, "every": 1, **NO_PROBES}))
    res = runner.invoke(app, ["watch", str(r.run_dir), "--no-follow"], terminal_width=160)
    assert res.exit_code == 0, res.output
    last = [e for e in _all_events(r.run_dir) if e["kind"] == "health"][-1]
    assert "step 2/2" in res.output and f"STATUS {last['status']}" in res.output and "spectral_entropy" in res.output
    (r.run_dir / "report.html").unlink()
    res = runner.invoke(app, ["report", str(r.run_dir)], terminal_width=200)
    assert res.exit_code == 0 and "report.html" in res.output
    html = (r.run_dir / "report.html").read_text(encoding="utf-8")
    assert "<html" in html.lower() and "cli" in html


# --------------------------------------------------------------------------- integration: the real model


@pytest.mark.integration
def test_health_check_and_probe_on_smollm2(smollm):
    """The untrained SmolLM2-135M-Instruct reads healthy under the seed's thresholds (the defaults
    were chosen for the final normed layer because inner layers would read 'collapse')."""
    from slmlab.watch.events import EventBus
    from slmlab.watch.health import HealthMonitor, WatchConfig

    model, tok = smollm
    seen = []
    bus = EventBus([seen.append])
    monitor = HealthMonitor(model, tok, WatchConfig(every=1, probe_every=1, spectral_every=None, probe_prompts=4,
                                                    probe_tokens=24), bus)
    check = monitor.check(1)
    assert check is not None and check.regime == "geometric" and 0.30 <= check.phi < 0.80
    assert check.metrics["spectral_entropy"] > 2.0 and check.metrics["dominant_ratio"] < 0.4
    assert check.levels["spectral_entropy"] == "good" and check.levels["dominant_ratio"] == "good"
    probe = next(e for e in seen if e.kind == "probe")
    assert probe.data["n"] == 4 and 0 <= probe.data["loop_rate"] <= 1 and len(probe.data["sample"]) > 0
    was = model.training
    model.train()
    try:
        monitor.check(1)
        assert model.training is True  # the check ran in eval mode and put training mode back
    finally:
        model.train(was)


def test_the_shipped_recovery_demo_tells_its_story(tmp_path):
    """examples/configs/recovery-demo.yaml: LR spike at 20 → loss spike at 21 → rollback past the
    unconfirmed step-20 checkpoint to step 15, data window skipped, LR halved → a healthy finish."""
    cfg_path = Path(__file__).resolve().parents[1] / "examples" / "configs" / "recovery-demo.yaml"
    r = run_(load_train_config(cfg_path, [f"output_dir={tmp_path}", "watch.dashboard=false"]))
    assert r.status == "completed" and r.steps == 40
    story = _story(r.run_dir)
    assert [(e["kind"], e["step"]) for e in story] == [("detection", 21), ("rollback", 15)]
    det, rb = story
    assert det["detector"] == "loss_spike" and det["z"] > 6 and det["value"] > 10 * det["window_mean"]
    assert rb["checkpoint"] == "step-15" and rb["skipped_data_window"] == [15, 20] and rb["lr_factor"] == 0.5
    lines = _metrics(r.run_dir)
    spike = [m for m in lines if m.get("detected")]
    assert len(spike) == 1 and spike[0]["rolled_back"] and spike[0]["loss"] == det["value"]
    assert [m["step"] for m in lines if not m.get("rolled_back")] == list(range(1, 41))
    final = [m["loss"] for m in lines if not m.get("rolled_back")][-5:]
    assert all(math.isfinite(x) and x < 6 for x in final)  # back below where it was before the spike
    assert (r.run_dir / "report.html").exists()
    # The dashboard (here attached afterwards, as `slmlab watch` does) keeps the spike on screen.
    from slmlab.watch.dashboard import load_run_state

    fault = load_run_state(r.run_dir).last_fault
    assert fault is not None and fault[0] == 21 and fault[1] == det["value"] and fault[3] == "loss_spike"


# --------------------------------------------------------------------------- review fixes


def _whole_story(run_dir):
    return [(e["kind"], e["step"]) for e in _all_events(run_dir) if e["kind"] not in ("health", "probe")]


def test_resume_keeps_checkpoints_awaiting_confirmation(tmp_path, data_file):
    """Killed after step-4 was saved but before step 5 confirmed it: the resumed run confirms it and
    rolls back to it, as the uninterrupted run does — with the identical event story."""
    from slmlab.train.loop import resume_run

    straight = run_(_config(tmp_path, data_file, name="straight", **ROLLBACK_AT_7))
    with pytest.raises(Killed):
        run_(_config(tmp_path, data_file, name="killed", **ROLLBACK_AT_7), on_step=_kill_at(4))
    resumed = resume_run(tmp_path / "runs" / "killed")
    rb = [(e["step"], e["checkpoint"]) for e in _all_events(straight.run_dir) if e["kind"] == "rollback"]
    assert rb == [(4, "step-4")]
    assert _whole_story(resumed.run_dir) == _whole_story(straight.run_dir)
    assert resumed.losses[-3:] == straight.losses[-3:]


def test_resume_does_not_repeat_the_curriculum_phase_event(tmp_path):
    from slmlab.train.loop import resume_run

    path = tmp_path / "ab.jsonl"
    write_jsonl(path, _records(40, categories=("A", "B")))
    phases = [{"name": "a", "span": 0.5, "mix": {"A": 1}}, {"name": "b", "span": 0.5, "mix": {"A": 1, "B": 1}}]
    kw = dict(max_steps=6, save_every=2, curriculum=phases)
    straight = run_(_config(tmp_path, path, name="s", **kw))
    with pytest.raises(Killed):
        run_(_config(tmp_path, path, name="k", **kw), on_step=_kill_at(4))
    resumed = resume_run(tmp_path / "runs" / "k")
    phase = lambda d: [(e["step"], e["name"]) for e in _all_events(d) if e["kind"] == "phase"]  # noqa: E731
    assert phase(resumed.run_dir) == phase(straight.run_dir) == [(0, "a"), (3, "b")]
    assert resumed.losses[-2:] == straight.losses[-2:]


def test_a_fired_nan_injection_stays_fired_after_a_json_round_trip():
    from slmlab.watch.recovery import Injection

    inj = Injection.parse("nan@3")
    again = Injection(*json.loads(json.dumps([inj.kind, inj.step, inj.value])))
    assert again == inj and again in {inj}


def test_a_disabled_spike_detector_does_not_hide_an_enabled_one():
    from slmlab.watch.recovery import SpikeDetector

    d = SpikeDetector(window=32, z=6, min_history=4)
    for i in range(8):
        d.accept(1.0 + 0.01 * (i % 2), 1.0 + 0.01 * (i % 2))
    assert d.check(50.0, 50.0).kind == "loss_spike"
    got = d.check(50.0, 50.0, kinds=["grad_spike"])
    assert got is not None and got.kind == "grad_spike"
    assert d.check(50.0, 1.0, kinds=["grad_spike"]) is None


def test_a_fault_with_neither_skip_nor_rollback_allowed_pauses(tmp_path, data_file):
    r = run_(_config(tmp_path, data_file, name="nocure", inject=["nan@3"],
                     recovery={"enabled": True, "actions": ["cooldown"]}))
    assert r.status.startswith("paused") and "neither skip nor rollback" in r.status and r.steps == 2
    assert [e["kind"] for e in _story(r.run_dir)] == ["detection", "pause"]


def test_the_monitor_works_with_a_tokenizer_without_pad_token_and_leaves_it_so(tiny):
    from slmlab.watch.events import EventBus
    from slmlab.watch.health import HealthMonitor, WatchConfig

    model, tok = tiny
    old = tok.pad_token
    tok.pad_token = None
    try:
        m = HealthMonitor(model, tok, WatchConfig(every=1, probe_every=1, spectral_every=None, probe_prompts=3,
                                                  probe_tokens=4), EventBus())
        check = m.check(1)
        assert check is not None and math.isfinite(check.phi) and m.last_probe["n"] == 3
        assert tok.pad_token is None
    finally:
        tok.pad_token = old


def test_probe_prompts_cover_every_category_even_when_many_are_asked():
    from slmlab.evaluate.basin_map import load_prompts

    all_cats = {p["category"] for p in load_prompts("basins49")}
    for n in (8, 30, 40, 49, 100):
        got = probe_prompts("basins49", n)
        assert len(got) == min(n, 49) and len({p["id"] for p in got}) == len(got)
        if n >= len(all_cats):
            assert {p["category"] for p in got} == all_cats, n


def test_a_kill_while_overwriting_a_checkpoint_keeps_the_previous_copy(tmp_path):
    from slmlab.train.checkpoint import latest_checkpoint

    root = tmp_path / "checkpoints"
    (root / ".step-4.old").mkdir(parents=True)
    (root / ".step-4.old" / "state.json").write_text('{"step": 4, "healthy": true}')
    (root / "step-2").mkdir()
    (root / "step-2" / "state.json").write_text('{"step": 2, "healthy": true}')
    assert latest_checkpoint(tmp_path).name == "step-4"
    assert (root / "step-4" / "state.json").is_file() and not (root / ".step-4.old").exists()


def test_a_spike_after_a_steep_descent_is_caught_by_the_recent_window():
    """The long window's std is dominated by the early descent; the last 16 values are not."""
    from slmlab.watch.recovery import SpikeDetector

    descent = [8.0 * 0.93**i for i in range(30)] + [0.75 + 0.05 * ((-1) ** i) for i in range(16)]
    long_only = SpikeDetector(window=128, z=6, min_history=16, recent=None)
    both = SpikeDetector(window=128, z=6, min_history=16, recent=16)
    for x in descent:
        long_only.accept(x, None)
        both.accept(x, None)
    assert long_only.check(2.6, None) is None
    got = both.check(2.6, None)
    assert got is not None and got.kind == "loss_spike" and got.window == 16 and got.zscore > 6
    assert both.check(0.8, None) is None  # an ordinary value is not a spike


def test_a_rate_on_few_probes_is_danger_only_when_significant():
    from slmlab.watch.health import wilson_lower

    band = StatusThresholds().collapse_rate  # good < 0.05, danger > 0.10
    assert level_of(1 / 8, band) == "danger"  # without a sample size: the point estimate
    assert level_of(1 / 8, band, n=8) == "warning"  # one text in eight is no evidence of > 10%
    assert level_of(3 / 8, band, n=8) == "danger" and wilson_lower(3 / 8, 8) > 0.10
    assert level_of(0.0, band, n=8) == "good"
    status, levels, reasons = combine({"collapse_rate": 1 / 8}, StatusThresholds(), {"collapse_rate": 8})
    assert status == "DRIFTING" and levels == {"collapse_rate": "warning"}
    assert reasons == ["collapse_rate 0.125 > 0.1 on 8 probes, not significant (warning)"]
    assert abs(wilson_lower(0.5, 100) - 0.4038) < 1e-3  # textbook value
