"""Recovery as one object, driven by synthetic step results and health checks (no training loop)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from slmlab.train.config import load_train_config
from slmlab.watch.recovery import EVENT_KINDS, FaultInjector, Recovery, RecoveryConfig, canonical, cooldown_factor


class Targets:
    """Stands in for the checkpoint directory: the latest healthy checkpoint, or None."""

    def __init__(self, target: str | None = "checkpoints/step-4"):
        self.target, self.asked = target, 0

    def latest_healthy(self):
        self.asked += 1
        return Path(self.target) if self.target else None


def _recovery(targets=None, every=1, **cfg) -> Recovery:
    return Recovery(RecoveryConfig(**{"enabled": True, "min_history": 4, **cfg}), every, targets or Targets())


def _warm(rec: Recovery, n: int = 8, start: int = 1) -> int:
    """Feed n healthy steps (loss ~1, grad ~0.5); returns the next step number."""
    for i in range(n):
        d = rec.on_step(start + i, 1.0 + 0.01 * (i % 3), 0.5 + 0.01 * (i % 2))
        assert d.action == "apply"
    return start + n


def _check(status="STABLE", regime="geometric", phi=0.5):
    return SimpleNamespace(status=status, regime=regime, phi=phi, reasons=["r"])


def test_healthy_steps_are_applied_and_recorded():
    rec = _recovery()
    _warm(rec, 6)
    assert len(rec.detector.losses) == 6 and rec.consecutive == 0


def test_a_nan_is_skipped_then_a_second_one_rolls_back():
    targets = Targets()
    rec = _recovery(targets, actions=["skip", "rollback"], rollback_after=2)
    step = _warm(rec)
    first = rec.on_step(step, float("nan"), 0.5)
    assert first.action == "skip" and first.detector == "nonfinite" and first.event == {"detector": "nonfinite"}
    assert first.detection["detector"] == "nonfinite" and targets.asked == 0
    second = rec.on_step(step + 1, float("nan"), 0.5)
    assert second.action == "rollback" and second.target == Path("checkpoints/step-4") and second.reason == "nonfinite"


def test_a_loss_spike_is_detected_against_the_healthy_history():
    rec = _recovery(actions=["skip"])
    step = _warm(rec, 10)
    d = rec.on_step(step, 50.0, 0.5)
    assert d.action == "skip" and d.detector == "loss_spike" and d.detection["z"] > 6
    assert 50.0 not in rec.detector.losses  # a spike never enters the healthy history


def test_rollback_with_no_healthy_checkpoint_pauses_or_skips():
    only_rollback = _recovery(Targets(None), actions=["rollback"])
    d = only_rollback.on_step(_warm(only_rollback), float("inf"), 0.5)
    assert d.action == "pause" and "no healthy checkpoint to roll back to" in d.reason and d.event == {"reason": d.reason}
    with_skip = _recovery(Targets(None), actions=["skip", "rollback"], rollback_after=1)
    assert with_skip.on_step(_warm(with_skip), float("nan"), 0.5).action == "skip"


def test_max_rollbacks_then_pause():
    rec = _recovery(actions=["rollback"], rollback_after=1, max_rollbacks=2)
    step = _warm(rec)
    for n in range(2):
        d = rec.on_step(step, float("nan"), 0.5)
        assert d.action == "rollback"
        event = rec.rolled_back({"step": 4, "data_offset": n, "detector": rec.detector.state()}, position=step - 1 + n)
        assert event["lr_factor"] == 0.5 ** (n + 1)
    d = rec.on_step(step, float("nan"), 0.5)
    assert d.action == "pause" and d.reason == f"2 rollbacks did not clear nonfinite at step {step}"


def test_neither_skip_nor_rollback_allowed_pauses_and_disabled_recovery_fails_on_nan():
    rec = _recovery(actions=["cooldown"])
    d = rec.on_step(_warm(rec), float("nan"), 0.5)
    assert d.action == "pause" and "neither skip nor rollback" in d.reason
    off = Recovery(RecoveryConfig(enabled=False, min_history=4), 1, Targets())
    assert off.on_step(1, float("nan"), 0.5).action == "fail"
    assert off.on_step(2, 1.0, None).action == "apply"
    # A finite loss with a non-finite gradient norm says which of the two is the problem.
    d = off.on_step(3, 6.25, float("inf"))
    assert d.action == "fail" and d.reason == "gradient norm is inf (loss 6.25)"


def test_rolled_back_skips_past_the_faulty_window_and_keeps_escalation_memory():
    rec = _recovery(actions=["rollback"], rollback_after=1)
    step = _warm(rec)
    rec.policy.danger_streak = 2
    saved = {"step": 4, "data_offset": 0, "cooldown": {"start": 1, "steps": 5, "factor": 0.5}, "replay": [],
             "detector": {"losses": [1.0] * 4, "grads": [0.5] * 4}, "policy": {"danger_streak": 0}}
    event = rec.rolled_back(saved, position=9)
    assert event == {"skipped_data_window": [4, 9], "lr_factor": 0.5}
    assert rec.cursor(4).position == 10  # the step after the checkpoint trains on the data after the window
    assert rec.cooldown == saved["cooldown"] and list(rec.detector.losses) == [1.0] * 4
    assert rec.policy.danger_streak == 2 and rec.rollbacks == 1 and step > 4


def test_sustained_danger_cools_down_eases_back_and_then_rolls_back_while_cooling():
    rec = _recovery(detectors=["danger"], actions=["cooldown", "rollback"], danger_checks=2,
                    cooldown={"factor": 0.5, "steps": 4})
    assert rec.on_health(1, _check("DANGER"), fresh=0) is None
    d = rec.on_health(2, _check("DANGER"), fresh=1)
    assert d.action == "cooldown" and d.event == {"detector": "danger", "start": 2, "steps": 4, "factor": 0.5}
    assert [rec.lr_multiplier(s) for s in (2, 3, 4, 5, 6, 7)] == [0.5, 0.625, 0.75, 0.875, 1.0, 1.0]
    rec.on_health(3, _check("DANGER"), fresh=2)
    d = rec.on_health(4, _check("DANGER"), fresh=3)
    assert d.action == "rollback" and d.target is not None  # still cooling: the next rung


def test_the_ladder_under_its_readable_names_with_the_notes_names_as_event_kinds():
    ladder = {"light_sleep": 2, "deep_sleep": 3, "mushroom": 4, "pause": 5}
    rec = _recovery(detectors=["breakdown"], actions=["cooldown", "replay", "prune", "perturb"], ladder=ladder,
                    light_sleep={"steps": 3, "lr_factor": 0.3})
    seen = []
    for step in range(1, 9):
        d = rec.on_health(step, _check(regime="breakdown"), fresh=step + 10)
        seen.append(d.action if d is not None else None)
        if d is not None and d.action == "replay":
            # the replay factor compounds with the cooldown started on the first rung
            assert d.event["replay_positions"] == [8, 10]
            assert rec.lr_multiplier(step) == pytest.approx(0.3 * cooldown_factor(rec.cooldown, step))
            assert rec.lr_multiplier(step) < 0.3
        if d is not None and d.action == "perturb":
            assert rec.reshuffles == 1 and d.event["reshuffle"] == 1
    assert seen == ["cooldown", "replay", "prune", None, "perturb", "pause", None, None]
    assert [EVENT_KINDS[a] for a in ("replay", "prune", "perturb")] == ["light_sleep", "deep_sleep", "mushroom"]


def test_the_notes_names_are_aliases_in_configs():
    assert [canonical(a) for a in ("light_sleep", "deep_sleep", "mushroom", "skip")] == ["replay", "prune", "perturb", "skip"]
    cfg = RecoveryConfig(actions=["light_sleep", "perturb"])
    assert cfg.allows("replay") and cfg.allows("mushroom") and not cfg.allows("prune")
    full = load_train_config(data={"data": {"train": "x.jsonl"}, "recovery": {"actions": ["deep_sleep", "replay"]}})
    assert full.recovery.actions == ["deep_sleep", "replay"]  # written back as the user typed them


def test_replay_moves_the_cursor_over_old_data_without_moving_the_fresh_position():
    rec = _recovery(detectors=["breakdown"], actions=["replay"], ladder={"light_sleep": 1, "deep_sleep": 3,
                    "mushroom": 4, "pause": 5}, light_sleep={"steps": 2, "lr_factor": 0.5})
    d = rec.on_health(6, _check(regime="breakdown"), fresh=5)
    assert d.action == "replay" and rec.replay == [3, 4]
    c = rec.cursor(6)
    assert (c.position, c.replaying, c.fresh) == (3, True, 5)
    rec.advance(c)
    c = rec.cursor(7)
    assert (c.position, c.fresh) == (4, 5)
    rec.advance(c)
    assert rec.cursor(8).position == 6 and not rec.cursor(8).replaying and rec.lr_multiplier(8) == 1.0


def test_checkpoints_are_confirmed_after_clean_steps_and_a_detection_unconfirms_them():
    rec = _recovery(confirm_steps=2, actions=["skip"])
    _warm(rec)
    assert rec.checkpoint_candidate(_check()) and not rec.on_checkpoint(10, True)
    assert rec.confirmable(11) == [] and rec.confirmable(12) == [10]
    assert rec.checkpoint_candidate(_check()) and not rec.on_checkpoint(14, True)
    rec.on_step(15, float("nan"), 0.5)  # damage before confirmation
    assert rec.confirmable(20) == []
    assert not rec.checkpoint_candidate(_check())  # the save after a detection is no candidate
    assert rec.checkpoint_candidate(_check())  # ... but the next clean window's is
    danger = _recovery(detectors=["danger"])
    assert not danger.checkpoint_candidate(_check("DANGER"))
    assert rec.on_checkpoint(30, True, confirmed=True)


def test_state_round_trips_and_a_loaded_recovery_decides_the_same():
    a = _recovery(actions=["skip", "rollback"], detectors=["nonfinite", "loss_spike", "danger"], danger_checks=3)
    step = _warm(a)
    a.on_step(step, float("nan"), 0.5)
    a.on_health(step, _check("DANGER"), fresh=step)
    a.cooldown, a.replay = {"start": 3, "steps": 4, "factor": 0.5}, [1, 2]
    b = _recovery(actions=["skip", "rollback"], detectors=["nonfinite", "loss_spike", "danger"], danger_checks=3)
    b.load(a.state())
    assert b.state() == a.state()
    decisions = []
    for rec in (a, b):
        made = [rec.on_step(step + 1, float("nan"), 0.5), rec.on_step(step + 2, 1.0, 0.5),
                rec.on_health(step + 2, _check("DANGER"), fresh=step), rec.on_health(step + 3, _check("DANGER"), fresh=step)]
        decisions.append([(d.action, d.detector) if d is not None else None for d in made])
    # The second NaN in a row rolls back (rollback_after 2); the third DANGER check in a row acts.
    assert decisions[0] == decisions[1] == [("rollback", "nonfinite"), ("apply", None), None, ("rollback", "danger")]


def test_fault_injection_fires_once_by_data_position_or_step():
    f2 = FaultInjector(["nan@3", "lr_spike@5:10", "poison@7:2"])
    assert f2.due(3, 3) == {"nan": 0.0} and f2.due(3, 3) == {}
    assert f2.due(5, 9) == {"lr_spike": 10.0}
    assert f2.due(6, 7) == {"poison": 2.0} and f2.due(7, 8) == {"poison": 2.0} and f2.due(8, 9) == {}
    assert FaultInjector(["nan@3"], fired=f2.state()).due(3, 3) == {}


@pytest.mark.parametrize("bad", [{"actions": ["reboot"]}, {"detectors": ["vibes"]}])
def test_unknown_names_are_config_errors_listing_the_known_ones(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="replay"if "actions" in bad else "nonfinite"):
        RecoveryConfig(**bad)
