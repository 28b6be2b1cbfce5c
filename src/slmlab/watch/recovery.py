"""Recovery autopilot: detect faults, then skip, cool down, roll back, sleep, kick or pause.

Step-level detectors (after backward, before the optimizer step): ``nonfinite`` (loss or
gradient norm NaN/inf) and ``loss_spike`` / ``grad_spike`` (z-score against a rolling window of
recent *healthy* values above ``z``; OLMo-core uses z > 6 over 128 steps). Health detectors
(after a health check, :mod:`slmlab.watch.health`): ``danger`` (sustained DANGER status) and
``breakdown`` (the breakdown regime, which drives seed 004's ladder).

Actions: ``skip``, ``cooldown``, ``rollback`` (to the last checkpoint *confirmed* healthy, past
the faulty data window, LR backed off — PaLM's manual recipe, automated), ``replay`` (earlier
data at a reduced LR), ``prune`` (a rollback that also drops each LoRA delta's weakest
directions, :func:`prune_lora`), ``perturb`` (:func:`perturb_lora` + a data reshuffle) and
``pause``. The research notes call replay, prune and perturb *light sleep*, *deep sleep* and
*mushroom mode*; those names are accepted as aliases in configs and are the event kinds in
``events.jsonl``.

:class:`Recovery` is the one object that decides: it owns the spike detector, the health
policy, checkpoint confirmation, the rollback count, skip windows (the data offset), the
cooldown and the replay queue. The loop shows it each step's result and each health check and
carries out the :class:`Decision` it returns. Definitions: ``docs/watch.md``.

Fault injection (for tests and demos): ``nan@STEP`` (the loss at STEP becomes NaN),
``lr_spike@STEP:FACTOR`` (the learning rate at STEP is multiplied by FACTOR),
``poison@STEP:N`` (N steps from STEP get random token ids).
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field
from pydantic import Field, field_validator, model_validator

from slmlab.config import StrictModel

DETECTORS = ("nonfinite", "loss_spike", "grad_spike", "danger", "breakdown")
ACTIONS = ("skip", "cooldown", "rollback", "replay", "prune", "perturb", "pause")
ALIASES = {"light_sleep": "replay", "deep_sleep": "prune", "mushroom": "perturb"}
"""The research notes' names for the ladder's actions → the names used here."""
EVENT_KINDS = {"replay": "light_sleep", "prune": "deep_sleep", "perturb": "mushroom"}
"""Actions whose event kind in events.jsonl is the notes' name (the log format readers rely on)."""
LADDER = ("cooldown", "light_sleep", "deep_sleep", "mushroom")
_INJECT = re.compile(r"^(nan|lr_spike|poison)@(\d+)(?::([0-9.eE+-]+))?$")


class CooldownConfig(StrictModel):
    factor: float = Field(0.5, gt=0, le=1, description="LR multiplier at the start of a cooldown.")
    steps: int = Field(20, ge=1, description="Steps over which the LR eases back linearly to the schedule.")


class LadderConfig(StrictModel):
    """Consecutive breakdown steps at which each rung starts (seed 004's ladder)."""

    light_sleep: int = Field(20, ge=1)
    deep_sleep: int = Field(50, ge=1)
    mushroom: int = Field(100, ge=1)
    pause: int = Field(150, ge=1, description="Still in breakdown after this many steps: pause the run.")

    @model_validator(mode="after")
    def _ordered(self) -> LadderConfig:
        vals = [self.light_sleep, self.deep_sleep, self.mushroom, self.pause]
        if vals != sorted(vals) or len(set(vals)) != 4:
            raise ValueError(f"ladder: expected light_sleep < deep_sleep < mushroom < pause, got {vals}")
        return self


class LightSleepConfig(StrictModel):
    steps: int = Field(10, ge=1, description="Steps of replay of earlier, healthy data.")
    lr_factor: float = Field(0.3, gt=0, le=1, description="LR multiplier during the replay.")


class DeepSleepConfig(StrictModel):
    prune_fraction: float = Field(0.25, gt=0, lt=1, description="Share of each LoRA delta's weakest singular directions removed.")


class MushroomConfig(StrictModel):
    noise: float = Field(0.05, gt=0, le=1, description="Norm of the random perturbation relative to each adapter weight's norm.")


class RegimeComputeConfig(StrictModel):
    """Seed 004's heuristic, as an option: spend less compute while the model is in the ``linear`` regime.

    The regime is the last health check's (Φ from ``watch``). While it is ``linear`` each step
    trains on the first ``linear`` share of each micro-batch's examples (at least one) and the
    rest of that step's examples are not seen; ``geometric`` trains on ``geometric`` (1.0: all);
    ``breakdown`` is left to the ladder (light sleep, deep sleep, mushroom, pause). Off by default:
    nothing measured here says it helps (docs/watch.md).
    """

    enabled: bool = Field(False, description="Scale each step's examples by the last health check's regime.")
    linear: float = Field(0.3, gt=0, le=1, description="Share of each micro-batch trained on in the linear regime.")
    geometric: float = Field(1.0, gt=0, le=1, description="Share trained on in the geometric regime.")

    def share(self, regime: str | None) -> float:
        if not self.enabled or regime is None:
            return 1.0
        return {"linear": self.linear, "geometric": self.geometric}.get(regime, 1.0)


class RecoveryConfig(StrictModel):
    enabled: bool = Field(False, description="Detect bad steps and act on them (otherwise a NaN stops the run).")
    detectors: list[str] = Field(default_factory=lambda: ["nonfinite", "loss_spike", "grad_spike"],
                                 description="Which detectors act: " + ", ".join(DETECTORS) + ".")
    actions: list[str] = Field(default_factory=lambda: ["skip", "rollback"],
                               description="Actions allowed: " + ", ".join(ACTIONS) + ".")
    window: int = Field(128, ge=4, description="Rolling window of healthy values for the z-scores.")
    z: float = Field(6.0, gt=0, description="z-score above which a loss or grad-norm value is a spike.")
    min_history: int = Field(16, ge=2, description="Healthy values needed before spikes are judged.")
    recent_window: int | None = Field(16, ge=2, description="Also judge against only the last N healthy values "
                                      "(catches spikes during a short run's steep early descent); null: off.")
    rollback_after: int = Field(2, ge=1, description="Consecutive detections that trigger a rollback.")
    lr_backoff: float = Field(0.5, gt=0, le=1, description="Learning-rate factor applied at each rollback.")
    max_rollbacks: int = Field(3, ge=0, description="Pause the run after this many rollbacks.")
    danger_checks: int = Field(3, ge=1, description="Consecutive DANGER health checks that make a detection.")
    keep_healthy: int = Field(2, ge=1, description="Confirmed-healthy checkpoints that are always kept.")
    confirm_steps: int = Field(1, ge=0, description="Clean steps after a checkpoint before it becomes a rollback target "
                               "(damage shows a step or more after the step that did it).")
    cooldown: CooldownConfig = Field(default_factory=CooldownConfig)
    ladder: LadderConfig = Field(default_factory=LadderConfig)
    light_sleep: LightSleepConfig = Field(default_factory=LightSleepConfig)
    deep_sleep: DeepSleepConfig = Field(default_factory=DeepSleepConfig)
    mushroom: MushroomConfig = Field(default_factory=MushroomConfig)
    regime_compute: RegimeComputeConfig = Field(default_factory=RegimeComputeConfig)

    @field_validator("detectors")
    @classmethod
    def _known_detectors(cls, v: list[str]) -> list[str]:
        return _known("detector", v, DETECTORS)

    @field_validator("actions")
    @classmethod
    def _known_actions(cls, v: list[str]) -> list[str]:
        return _known("action", v, (*ACTIONS, *ALIASES))

    def allows(self, action: str) -> bool:
        """Is ``action`` (either name) among the allowed actions?"""
        return canonical(action) in {canonical(a) for a in self.actions}


def canonical(action: str) -> str:
    """``light_sleep`` → ``replay``, ``deep_sleep`` → ``prune``, ``mushroom`` → ``perturb``; others unchanged."""
    return ALIASES.get(action, action)


def _known(kind: str, names: list[str], known: tuple[str, ...]) -> list[str]:
    from slmlab.errors import unknown_name_message

    for name in names:
        if name not in known:
            raise ValueError(unknown_name_message(kind, name, list(known)))
    return names


@dataclass(frozen=True)
class Injection:
    kind: str
    step: int
    value: float

    @staticmethod
    def parse(text: str) -> Injection:
        m = _INJECT.match(text.strip())
        if not m:
            raise ValueError(f"bad injection {text!r}: expected nan@STEP, lr_spike@STEP:FACTOR or poison@STEP:N")
        kind, step, value = m.group(1), int(m.group(2)), m.group(3)
        if kind != "nan" and value is None:
            raise ValueError(f"injection {text!r} needs a value after ':'")
        # nan carries no value; 0.0, not NaN, so that a fired injection equals itself after a JSON round trip
        return Injection(kind, step, float(value) if value is not None else 0.0)


def validate_injections(items: list[str]) -> list[str]:
    for item in items:
        Injection.parse(item)
    return items


@dataclass
class Detection:
    kind: str  # nonfinite | loss_spike | grad_spike
    value: float | None
    zscore: float | None
    mean: float | None
    std: float | None
    window: int | None = None  # how many healthy values the z-score was taken over

    def evidence(self) -> dict:
        return {"detector": self.kind, "value": self.value, "z": self.zscore, "window_mean": self.mean,
                "window_std": self.std, "window": self.window}


@dataclass
class SpikeDetector:
    """z-scores of the loss and grad norm against the last ``window`` healthy values *and* the
    last ``recent`` ones; either above ``z`` is a spike.

    Why both: a short fine-tune spends much of a 128-step window in its steep early descent, so
    the long window's std is large and a real spike scores low. Measured on SmolLM2-135M LoRA with
    the LR ×100 at step 40: the loss went 0.79 → 2.62 with z ≈ 0 over the long window, while the
    last 16 values (0.6–0.9) put it far above 6. The long window keeps OLMo-core's behaviour for
    long runs.
    """

    window: int = 128
    z: float = 6.0
    min_history: int = 16
    recent: int | None = 16
    losses: deque = field(default_factory=deque)
    grads: deque = field(default_factory=deque)

    def check(self, loss: float, grad_norm: float | None, kinds=("loss_spike", "grad_spike")) -> Detection | None:
        """The first detection among the enabled spike ``kinds`` (non-finite values always count)."""
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            return Detection("nonfinite", loss if not math.isfinite(loss) else grad_norm, None, None, None)
        for kind, value, hist in (("loss_spike", loss, self.losses), ("grad_spike", grad_norm, self.grads)):
            if kind not in kinds or value is None or len(hist) < self.min_history:
                continue
            windows = [list(hist)]
            if self.recent and len(hist) > self.recent:
                windows.append(list(hist)[-self.recent:])
            for values in windows:
                mean = sum(values) / len(values)
                std = math.sqrt(sum((h - mean) ** 2 for h in values) / (len(values) - 1)) or 1e-12
                zscore = (value - mean) / std
                if zscore > self.z:
                    return Detection(kind, value, zscore, mean, std, len(values))
        return None

    def accept(self, loss: float, grad_norm: float | None) -> None:
        """Record a healthy step's values."""
        for value, hist in ((loss, self.losses), (grad_norm, self.grads)):
            if value is not None:
                hist.append(value)
                while len(hist) > self.window:
                    hist.popleft()

    def reset(self) -> None:
        self.losses.clear()
        self.grads.clear()

    def state(self) -> dict:
        return {"losses": list(self.losses), "grads": list(self.grads)}

    def load(self, state: dict) -> None:
        self.losses, self.grads = deque(state.get("losses", [])), deque(state.get("grads", []))


# --------------------------------------------------------------------------- health-driven policy


@dataclass
class HealthDecision:
    detector: str  # danger | breakdown
    action: str | None  # a ladder rung, rollback or pause, or None: detected, nothing allowed to act
    evidence: dict


@dataclass
class HealthPolicy:
    """Turns health checks into decisions: sustained DANGER → cooldown (then rollback);
    breakdown → the ladder by consecutive breakdown steps (each rung once per streak), then pause.
    Both streaks advance on every check; when both fire at once the breakdown rung wins.

    ``every`` is the number of steps between health checks: the first breakdown check of a
    streak counts 1 step, each further one ``every`` steps.
    """

    config: RecoveryConfig
    every: int
    danger_streak: int = 0
    breakdown_steps: int = 0
    rungs_done: set = field(default_factory=set)

    def rung_for(self, steps: int) -> str:
        lad = self.config.ladder
        # Seed 004: < 20 cooldown, 20–50 light sleep, 50–100 deep sleep, > 100 mushroom; pause is ours.
        if steps > lad.pause:
            return "pause"
        if steps > lad.mushroom:
            return "mushroom"
        if steps >= lad.deep_sleep:
            return "deep_sleep"
        if steps >= lad.light_sleep:
            return "light_sleep"
        return "cooldown"

    def decide(self, check, cooling: bool) -> HealthDecision | None:
        c = self.config
        if not c.enabled:
            return None
        decision = self._breakdown(check) if "breakdown" in c.detectors else None
        danger = self._danger(check, cooling) if "danger" in c.detectors else None  # streaks count on every check
        if decision is not None and decision.action is None and danger is not None:
            return danger  # a rung nobody may act on must not swallow an actionable danger decision
        return decision or danger

    def _breakdown(self, check) -> HealthDecision | None:
        c = self.config
        if check.regime != "breakdown":
            self.breakdown_steps, self.rungs_done = 0, set()
            return None
        # The first breakdown check of a streak is one step of breakdown (we do not know when it began);
        # each further check adds the steps since the previous one.
        self.breakdown_steps = 1 if self.breakdown_steps == 0 else self.breakdown_steps + self.every
        rung = self.rung_for(self.breakdown_steps)
        evidence = {"phi": check.phi, "regime": check.regime, "consecutive_breakdown_steps": self.breakdown_steps,
                    "rung": rung}
        if rung in self.rungs_done:
            return None
        self.rungs_done.add(rung)
        allowed = rung == "pause" or c.allows(rung)
        return HealthDecision("breakdown", rung if allowed else None, evidence)

    def _danger(self, check, cooling: bool) -> HealthDecision | None:
        c = self.config
        self.danger_streak = self.danger_streak + 1 if check.status == "DANGER" else 0
        if self.danger_streak < c.danger_checks:
            return None
        evidence = {"status": check.status, "reasons": check.reasons, "consecutive_checks": self.danger_streak}
        self.danger_streak = 0
        if c.allows("cooldown") and not cooling:
            return HealthDecision("danger", "cooldown", evidence)
        return HealthDecision("danger", "rollback" if c.allows("rollback") else None, evidence)

    def state(self) -> dict:
        return {"danger_streak": self.danger_streak, "breakdown_steps": self.breakdown_steps,
                "rungs_done": sorted(self.rungs_done)}

    def load(self, state: dict) -> None:
        self.danger_streak = state.get("danger_streak", 0)
        self.breakdown_steps = state.get("breakdown_steps", 0)
        self.rungs_done = set(state.get("rungs_done", []))


def cooldown_factor(cooldown: dict | None, step: int) -> float:
    """LR multiplier of a cooldown ``{"start", "steps", "factor"}`` at ``step``: factor, easing linearly to 1."""
    if not cooldown:
        return 1.0
    done = (step - cooldown["start"]) / cooldown["steps"]
    if done >= 1:
        return 1.0
    return cooldown["factor"] + (1 - cooldown["factor"]) * max(0.0, done)


# --------------------------------------------------------------------------- the one object that decides


@dataclass(frozen=True)
class Cursor:
    """Where a step's data comes from. ``position``: the data position the step trains on (the step
    plus the windows skipped by rollbacks, or an earlier position while replaying); ``fresh``: the last
    fresh (not replayed) position consumed — what a rollback must skip past."""

    position: int
    replaying: bool
    fresh: int


@dataclass
class Decision:
    """What the loop must do now. ``action``: apply, skip, rollback, prune, cooldown, replay, perturb,
    pause, fail, or ``None`` (detected; no allowed action). ``event`` holds the action event's data."""

    action: str | None
    detector: str | None = None
    detection: dict | None = None  # the evidence, published as a ``detection`` event first
    reason: str = ""
    target: object = None  # the rollback checkpoint
    event: dict = field(default_factory=dict)


APPLY = Decision("apply")


class Recovery:
    """Detectors, health policy, checkpoint confirmation, rollbacks, skip windows, cooldown and replay.

    Feed it each step's result (:meth:`on_step`, before the update is applied) and each health
    check (:meth:`on_health`); it returns a :class:`Decision` and updates its own memory. The loop
    carries the decision out and reports back what it did (:meth:`rolled_back`,
    :meth:`on_checkpoint`, :meth:`advance`). ``checkpoints`` answers ``latest_healthy()`` — the
    checkpoint a rollback would return to, or ``None``. Everything it remembers is in
    :meth:`state`, saved with every checkpoint, so a resumed run decides exactly as this one would.
    """

    def __init__(self, config: RecoveryConfig, health_every: int, checkpoints):
        self.config, self.checkpoints = config, checkpoints
        self.detector = SpikeDetector(config.window, config.z, config.min_history, config.recent_window)
        self.policy = HealthPolicy(config, health_every)
        self.consecutive = 0  # step-level detections in a row
        self.rollbacks = 0
        self.data_offset = 0  # data windows skipped by rollbacks (position = step + data_offset)
        self.reshuffles = 0  # perturb (mushroom) data reshuffles so far
        self.cooldown: dict | None = None  # {"start", "steps", "factor"}
        self.replay: list[int] = []  # data positions still to replay
        self.replay_lr = 1.0
        self.unconfirmed: list[int] = []  # checkpoint steps waiting for confirm_steps clean steps
        self.clean_since_save = True

    # ------------------------------------------------------------------ data and learning rate

    def cursor(self, step: int) -> Cursor:
        if self.replay:
            return Cursor(self.replay[0], True, step + self.data_offset - 1)
        position = step + self.data_offset
        return Cursor(position, False, position)

    def advance(self, cursor: Cursor) -> None:
        """A step was taken (applied or skipped). A replayed step used old data: the fresh position stays."""
        if cursor.replaying:
            self.replay.pop(0)
            self.data_offset -= 1

    def lr_multiplier(self, step: int) -> float:
        """The cooldown's factor at ``step`` times the replay factor while replaying."""
        return cooldown_factor(self.cooldown, step) * (self.replay_lr if self.replay else 1.0)

    # ------------------------------------------------------------------ step-level decisions

    def on_step(self, step: int, loss: float, grad_norm: float | None) -> Decision:
        """Judge step ``step`` (1-based) from its loss and gradient norm, before it is applied."""
        c = self.config
        detection = self.detector.check(loss, grad_norm, kinds=c.detectors)
        if detection is not None and detection.kind == "nonfinite" and not (c.enabled and "nonfinite" in c.detectors):
            what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm} (loss {loss})"
            return Decision("fail", "nonfinite", reason=what)
        if detection is None or not c.enabled:
            self.consecutive = 0
            self.detector.accept(loss, grad_norm)
            return APPLY
        self.consecutive += 1
        self._dirty()
        found = Decision(None, detection.kind, detection.evidence())
        can_skip, can_rollback = c.allows("skip"), c.allows("rollback")
        if not can_skip and not can_rollback:
            return self._pause(found, f"{detection.kind} at step {step}; neither skip nor rollback is an allowed action")
        skip = Decision("skip", detection.kind, found.detection, event={"detector": detection.kind})
        if can_rollback and (self.consecutive >= c.rollback_after or not can_skip):
            return self._rollback(found, "rollback", step, fallback=skip if can_skip else None)
        return skip

    # ------------------------------------------------------------------ health decisions

    def on_health(self, step: int, check, fresh: int) -> Decision | None:
        """Judge a health check taken after step ``step``; ``fresh`` is the last fresh data position."""
        hd = self.policy.decide(check, cooling=cooldown_factor(self.cooldown, step) < 1)
        if hd is None:
            return None
        self._dirty()
        found = Decision(None, hd.detector, {"detector": hd.detector, "action": hd.action, **hd.evidence})
        action = canonical(hd.action) if hd.action is not None else None
        if action is None:
            return found
        if action == "pause":
            steps = hd.evidence.get("consecutive_breakdown_steps")
            return self._pause(found, f"{hd.detector} persisted for {steps} steps through the recovery ladder")
        if action == "cooldown":
            self.cooldown = {"start": step, "steps": self.config.cooldown.steps, "factor": self.config.cooldown.factor}
            return Decision("cooldown", hd.detector, found.detection, event={"detector": hd.detector, **self.cooldown})
        if action == "replay":
            return self._start_replay(found, fresh)
        if action == "perturb":
            self.reshuffles += 1
            return Decision("perturb", hd.detector, found.detection, event={"detector": hd.detector, "reshuffle": self.reshuffles})
        return self._rollback(found, action, step)

    def _start_replay(self, found: Decision, fresh: int) -> Decision:
        """Replay the data seen just before the breakdown began (only data already seen), at a reduced LR."""
        end = max(0, fresh + 1 - self.policy.breakdown_steps)
        n = self.config.light_sleep.steps
        self.replay = list(range(max(0, end - n), end)) if end > 0 else list(range(min(n, fresh + 1)))
        self.replay_lr = self.config.light_sleep.lr_factor
        event = {"detector": found.detector, "replay_positions": [self.replay[0], self.replay[-1]],
                 "steps": len(self.replay), "lr_factor": self.replay_lr}
        return Decision("replay", found.detector, found.detection, event=event)

    def _rollback(self, found: Decision, action: str, step: int, fallback: Decision | None = None) -> Decision:
        """Roll back (``prune``: and prune) to the latest healthy checkpoint; pause after ``max_rollbacks``.
        With no healthy checkpoint: ``fallback`` (a skip, where allowed), else pause."""
        if self.rollbacks >= self.config.max_rollbacks:
            return self._pause(found, f"{self.rollbacks} rollbacks did not clear {found.detector} at step {step}")
        target = self.checkpoints.latest_healthy()
        if target is None:
            return fallback or self._pause(found, f"{found.detector} at step {step} and no healthy checkpoint to roll back to")
        event = {"detector": found.detector, "prune_fraction": self.config.deep_sleep.prune_fraction} if action == "prune" else {}
        return Decision(action, found.detector, found.detection, reason=found.detector, target=target, event=event)

    @staticmethod
    def _pause(found: Decision, reason: str) -> Decision:
        return Decision("pause", found.detector, found.detection, reason=reason, event={"reason": reason})

    def _dirty(self) -> None:
        """A detection: checkpoints taken since the last one must not become rollback targets."""
        self.clean_since_save = False
        self.unconfirmed.clear()

    # ------------------------------------------------------------------ what the loop reports back

    def rolled_back(self, checkpoint_state: dict, position: int) -> dict:
        """The loop restored ``checkpoint_state`` (a checkpoint's saved state): take its memory, count the
        rollback, skip past ``position`` (the last fresh data consumed). Returns the rollback event's data."""
        rollbacks, reshuffles = self.rollbacks, self.reshuffles
        step = checkpoint_state["step"]
        window = [step + checkpoint_state.get("data_offset", 0), position]
        policy = self.policy.state()  # escalation memory (ladder rungs, streaks) must keep escalating
        self.load(checkpoint_state)
        self.policy.load(policy)
        self.rollbacks = rollbacks + 1
        self.data_offset = position + 1 - step  # resume on the data after the faulty window
        self.reshuffles = reshuffles
        self.consecutive = 0
        self.unconfirmed.clear()
        self.clean_since_save = True  # back on a confirmed-healthy state
        return {"skipped_data_window": window, "lr_factor": self.config.lr_backoff ** self.rollbacks}

    def healthy(self, last_check) -> bool:
        """No enabled health detector objects to the last check (a heuristic nobody asked to act on does not veto)."""
        if last_check is None:
            return True
        d = self.config.detectors
        return not (("danger" in d and last_check.status == "DANGER") or ("breakdown" in d and last_check.regime == "breakdown"))

    def confirmable(self, step: int) -> list[int]:
        """Checkpoints that have now had ``confirm_steps`` clean steps: they become rollback targets."""
        due = [s for s in self.unconfirmed if step - s >= self.config.confirm_steps]
        self.unconfirmed = [s for s in self.unconfirmed if s not in due]
        return due

    def checkpoint_candidate(self, last_check) -> bool:
        """May a checkpoint taken now become a rollback target? Yes when no detection happened since the
        last save and the last health check is healthy. A new clean window starts either way."""
        candidate = self.clean_since_save and self.healthy(last_check)
        self.clean_since_save = True
        return candidate

    def on_checkpoint(self, step: int, candidate: bool, *, confirmed: bool = False) -> bool:
        """A checkpoint is being taken at ``step``; returns whether it is a rollback target already.

        A ``candidate`` waits ``confirm_steps`` clean steps (:meth:`confirmable`) before it counts:
        damage shows a step or more after the step that did it. ``confirmed``: the state is known
        healthy (a rollback re-saving its target).
        """
        healthy = confirmed or (candidate and self.config.confirm_steps == 0)
        if candidate and not healthy:
            self.unconfirmed.append(step)
        return healthy

    # ------------------------------------------------------------------ memory

    def state(self) -> dict:
        return {"policy": self.policy.state(), "detector": self.detector.state(), "consecutive": self.consecutive,
                "unconfirmed": list(self.unconfirmed), "data_offset": self.data_offset, "rollbacks": self.rollbacks,
                "reshuffles": self.reshuffles, "cooldown": self.cooldown, "replay": list(self.replay),
                "replay_lr": self.replay_lr}

    def load(self, state: dict) -> None:
        self.policy.load(state.get("policy", {}))
        self.detector.load(state.get("detector", {}))
        self.consecutive = state.get("consecutive", 0)
        self.unconfirmed = list(state.get("unconfirmed", []))
        self.data_offset, self.rollbacks = state.get("data_offset", 0), state.get("rollbacks", 0)
        self.reshuffles, self.cooldown = state.get("reshuffles", 0), state.get("cooldown")
        self.replay, self.replay_lr = list(state.get("replay", [])), state.get("replay_lr", 1.0)


class FaultInjector:
    """Fault injection for tests and demos. nan/poison follow the data position (a rollback that
    skips the window escapes them, as it would a real bad batch); lr_spike follows the step.
    Each fires once; what has fired is saved with checkpoints."""

    def __init__(self, specs: list[str], fired: list | None = None):
        self.injections = [Injection.parse(x) for x in specs]
        self.fired: set[Injection] = {Injection(k, s, v) for k, s, v in (fired or [])}

    def due(self, step: int, position: int) -> dict[str, float]:
        """Faults to apply at 1-based ``step`` on 1-based data ``position``."""
        due = {}
        for inj in self.injections:
            if inj in self.fired:
                continue
            hit = step == inj.step if inj.kind == "lr_spike" else (
                inj.step <= position < inj.step + (int(inj.value) if inj.kind == "poison" else 1))
            if hit:
                due[inj.kind] = inj.value
                if inj.kind != "poison" or position == inj.step + int(inj.value) - 1:
                    self.fired.add(inj)
        return due

    def state(self) -> list:
        return sorted([i.kind, i.step, i.value] for i in self.fired)


# --------------------------------------------------------------------------- adapter surgery


def _lora_pairs(model):
    """(module name, A weight, B weight) of every LoRA layer's active adapters."""
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and hasattr(mod, "lora_B") and hasattr(mod, "active_adapters"):
            for adapter in mod.active_adapters:
                if adapter in mod.lora_A:
                    yield name, mod.lora_A[adapter].weight, mod.lora_B[adapter].weight


def prune_lora(model, fraction: float) -> dict:
    """Deep sleep's pruning: keep each LoRA delta's strongest singular directions, drop the weakest ``fraction``.

    ``B·A = (Q_B U) S (Q_A V)ᵀ`` from QR factors and the SVD of the r×r core ``R_B R_Aᵀ``
    (the d_out×d_in product is never built). The kept part is written back as
    ``B' = Q_B U_k √S_k``, ``A' = √S_k (Q_A V_k)ᵀ`` padded with zeros to rank r.
    Returns the share of the delta's squared Frobenius norm removed (mean over layers).
    """
    import torch

    removed = []
    with torch.no_grad():
        for _, A, B in _lora_pairs(model):
            r = A.shape[0]
            A64, B64 = A.double(), B.double()
            qb, rb = torch.linalg.qr(B64)
            qa, ra = torch.linalg.qr(A64.T)
            u, s, vh = torch.linalg.svd(rb @ ra.T)
            # The delta has at most min(d_out, d_in, r) directions: r can exceed a narrow layer's width.
            keep = max(1, min(len(s), int(round(r * (1 - fraction)))))
            total = float((s**2).sum())
            if total == 0:
                continue
            root = s[:keep].sqrt()
            newB = torch.zeros_like(B64)
            newA = torch.zeros_like(A64)
            newB[:, :keep] = (qb @ u[:, :keep]) * root
            newA[:keep, :] = root[:, None] * (qa @ vh[:keep].T).T
            B.copy_(newB.to(B.dtype))
            A.copy_(newA.to(A.dtype))
            removed.append(float((s[keep:] ** 2).sum()) / total)
    return {"layers": len(removed), "energy_removed": sum(removed) / len(removed) if removed else 0.0}


def perturb_lora(model, noise: float, seed: int) -> dict:
    """Mushroom mode's kick: add to each LoRA weight W a seeded Gaussian direction of norm ``noise·‖W‖``.

    Bounded by construction (the added norm is exactly ``noise`` times the weight's own);
    a zero weight (an untrained B) is left alone.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for _, A, B in _lora_pairs(model):
            for W in (A, B):
                norm = float(W.double().norm())
                if norm == 0:
                    continue
                d = torch.randn(W.shape, generator=g, dtype=torch.float64)
                W.add_((d * (noise * norm / float(d.norm()))).to(W.dtype).to(W.device))
                n += 1
    return {"weights": n, "relative_norm": noise}
