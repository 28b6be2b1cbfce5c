"""Training configuration: typed, validated before any model loads, saved resolved in the run dir."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from slmlab.config import StrictModel, load_config
from slmlab.errors import unknown_name_message
from slmlab.experimental import BasinLossConfig
from slmlab.train.curriculum import CurriculumConfig
from slmlab.train.objectives import OBJECTIVES, ObjectiveSpec
from slmlab.watch.health import WatchConfig
from slmlab.watch.recovery import RecoveryConfig, validate_injections


class AdapterConfig(StrictModel):
    kind: Literal["lora", "full"] = Field("lora", description="`lora` trains low-rank adapters; `full` trains every weight.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or `all-linear` (every linear layer but the output head)."
    )
    layers: list[int] | None = Field(None, description="Only adapt these decoder layer indices (default: all).")


class DataConfig(StrictModel):
    recipe: str | None = Field(None, description="A recipe name or YAML path; generated into the run dir.")
    count: int | None = Field(None, gt=0, description="Total examples to generate from the recipe.")
    train: str | None = Field(
        None,
        description="Training data (instead of a recipe): JSONL, JSON, Parquet or CSV, or a datasets save_to_disk "
        "directory; slmlab records (input/output) or TRL's shapes (prompt/completion, messages, "
        "prompt/chosen/rejected, text), detected per file (docs/datasets.md).",
    )
    eval: str | None = Field(
        None,
        description="Evaluation data, the same kinds of files and shapes as `train` (default: the recipe's test split).",
    )
    split: str | None = Field(
        None, description="Split of a save_to_disk DatasetDict to train on (default: its only split, else `train`)."
    )
    eval_split: str | None = Field(
        None,
        description="Split of a save_to_disk DatasetDict to evaluate on (default: its only split, else `test`, "
        "`validation` or `eval`).",
    )
    columns: dict[str, str] | None = Field(
        None,
        description="Rename the files' columns to a shape's keys before detection, e.g. "
        "{question: prompt, answer: completion}; applies to `train` and `eval`.",
    )
    format: str = Field("v6", description="Prompt template for records without their own `format`/`role`.")
    max_length: int = Field(512, ge=8, description="Longest example in tokens (prompt + completion).")
    truncation: Literal["drop", "left"] = Field(
        "drop", description="Longer examples: `drop` them (default; a cut puzzle may have another answer) or cut the prompt from the `left`."
    )
    packing: bool = Field(True, description="Pack several examples per row with block-diagonal attention.")

    @field_validator("columns")
    @classmethod
    def _renames(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if any(not k or not t for k, t in v.items()):
            raise ValueError("column names must not be empty")
        targets = list(v.values())
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise ValueError(f"several columns map to {', '.join(map(repr, twice))}; each key may be mapped to once")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.recipe is None) == (self.train is None):
            raise ValueError("give exactly one of `data.recipe` or `data.train`")
        if self.recipe is not None:
            given = [k for k in ("split", "eval_split", "columns") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"`data.{given[0]}` applies to data.train/data.eval files, not to a recipe")
        if self.eval_split is not None and self.eval is None:
            raise ValueError("`data.eval_split` needs `data.eval`")
        return self


class ObjectiveConfig(StrictModel):
    kind: str = Field("sft", description="Objective: " + ", ".join(OBJECTIVES) + " (see slmlab.train.objectives).")
    beta: float = Field(0.1, gt=0, description="DPO temperature β.")
    lam: float = Field(0.1, ge=0, description="ORPO weight λ of the odds-ratio term.")

    @field_validator("kind")
    @classmethod
    def _known_objective(cls, v: str) -> str:
        if v not in OBJECTIVES:
            raise ValueError(unknown_name_message("objective", v, list(OBJECTIVES)))
        return v

    @property
    def spec(self) -> ObjectiveSpec:
        return OBJECTIVES[self.kind]


class OptimizerConfig(StrictModel):
    name: str = Field("adamw", description="adamw, apollo, apollo-mini, muon or natural-gradient (see docs/optimizers.md).")
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra optimizer arguments (e.g. rank for APOLLO).")


class ScheduleConfig(StrictModel):
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr as a fraction of the peak (cosine/linear).")


_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")


def parse_duration(text: str | int | float | None) -> float | None:
    """'10m', '1h30m', '90s' or a number of seconds → seconds."""
    if text is None or isinstance(text, int | float):
        return None if text is None else float(text)
    m = _DURATION.match(text)
    if not m or not any(m.groups()):
        raise ValueError(f"expected a duration like '10m', '1h30m' or '90s', got {text!r}")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


# tracker name -> the module that must be importable for accelerate to use it
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


class ExperimentalConfig(StrictModel):
    basin_loss: BasinLossConfig = Field(default_factory=BasinLossConfig,
                                        description="Unvalidated seed-002 penalty on representation collapse (off).")


class TrainConfig(StrictModel):
    """Everything a training run needs. Unknown keys are errors."""

    name: str = Field("run", description="Run name: the run directory is output_dir/name.")
    model: str = Field("smollm2-135m", description="Model spec (see `slmlab models`).")
    seed: int = 0
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    data: DataConfig
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    batch_size: int = Field(4, ge=1, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="Train exactly this many optimizer steps (overrides epochs).")
    time_budget: str | float | None = Field(None, description="Stop cleanly and save after this long, e.g. '10m'.")
    max_grad_norm: float | None = Field(1.0, gt=0)
    log_every: int = Field(1, ge=1)
    eval_every: int | None = Field(None, ge=1, description="Evaluate the held-out loss every N steps.")
    save_every: int | None = Field(50, ge=1, description="Checkpoint every N steps (and always at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="How many step checkpoints to keep.")
    output_dir: str = "runs"
    trackers: list[str] = Field(default_factory=list, description="tensorboard, wandb, mlflow, trackio (metrics.jsonl always).")
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig, description="Detect bad steps and faults; act on them.")
    watch: WatchConfig = Field(default_factory=WatchConfig, description="Health checks, probes, status and the live dashboard.")
    curriculum: CurriculumConfig | None = Field(None, description="Phases with category mixes and spans (default: none).")
    experimental: ExperimentalConfig = Field(default_factory=ExperimentalConfig)
    inject: list[str] = Field(default_factory=list, description="Fault injection for tests/demos: nan@S, lr_spike@S:F, poison@S:N.")
    context_frozen: bool = Field(
        False,
        description="Run each prompt (minus its last token) once without gradients and reuse its KV cache; "
        "faster, but no gradient flows through the context's keys and values (a different gradient, same loss).",
    )

    @model_validator(mode="after")
    def _objective_constraints(self) -> TrainConfig:
        spec = self.objective.spec
        if self.context_frozen and not spec.context_frozen:
            able = " or ".join(repr(s.name) for s in OBJECTIVES.values() if s.context_frozen)
            raise ValueError(f"context_frozen: true supports objective.kind {able} only")
        if spec.needs_lora and self.adapter.kind != "lora":
            raise ValueError(f"objective.kind {spec.name!r} needs adapter.kind 'lora' (the reference is the model with the adapter off)")
        return self

    @field_validator("inject")
    @classmethod
    def _injections(cls, v: list[str]) -> list[str]:
        return validate_injections(v)

    @field_validator("trackers")
    @classmethod
    def _known_trackers(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in TRACKERS:
                raise ValueError(unknown_name_message("tracker", name, list(TRACKERS)))
        return v

    @field_validator("time_budget")
    @classmethod
    def _duration(cls, v):
        parse_duration(v)
        return v

    @property
    def time_budget_seconds(self) -> float | None:
        return parse_duration(self.time_budget)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None) -> TrainConfig:
    """Load a YAML config, apply ``key=value`` overrides (values parsed as YAML), validate."""
    return load_config(TrainConfig, path, overrides, data)
