"""DreamConfig: one dream run, validated in full before a model loads.

Sections reuse the training config's pieces (``adapter``, ``objective``, ``optimizer``) so a
field means the same thing in ``slmlab train`` and ``slmlab dream``. Unknown keys are errors
with a "did you mean"; every problem names the field as the user typed it.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, field_validator, model_validator

from slmlab.config import StrictModel, load_config
from slmlab.train.config import AdapterConfig, ObjectiveConfig, OptimizerConfig

PREFERENCE_OBJECTIVES = ("orpo", "dpo")


class PromptsConfig(StrictModel):
    recipe: str = Field("pure-logic", description="A logic recipe (name or YAML path): its train split feeds the "
                        "rounds, its test split is the held-out set. Every record needs a solver `answer` glyph.")
    count: int = Field(800, ge=10, description="Examples generated from the recipe (train + test, split by puzzle "
                       "shape: a held-out puzzle is never a renamed training puzzle).")
    per_round: int = Field(32, ge=1, description="Training-split prompts sampled in each round (the split is walked "
                           "in order and wraps around).")
    format: str = Field("v6", description="Prompt template for records without their own `format`/`role`.")


class SamplingConfig(StrictModel):
    samples_per_prompt: int = Field(4, ge=1, description="Completions drawn per prompt at the round's temperature.")
    max_new_tokens: int = Field(8, ge=1, description="Tokens generated per completion.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    batch_size: int = Field(16, ge=1, description="Prompts per generation batch (part of what the seed fixes).")
    stop: list[str] = Field(default_factory=lambda: ["\n"], description="A completion ends at the first of these "
                            "(the v6 answer is one line); the cut text is what is graded and trained on.")


class TemperatureConfig(StrictModel):
    """The failure-band rule (see :mod:`slmlab.dream.temperature`)."""

    initial: float = Field(0.7, gt=0, description="Sampling temperature of round 1.")
    band: tuple[float, float] = Field((0.3, 0.7), description="Target failure band [low, high]: below low, T is "
                                      "multiplied by `factor`; above high, divided by it; inside, kept.")
    factor: float = Field(1.25, gt=1, description="Multiplicative step of one adjustment.")
    min: float = Field(0.1, gt=0, description="Lowest temperature the rule may set.")
    max: float = Field(1.5, gt=0, description="Highest temperature the rule may set.")

    @model_validator(mode="after")
    def _consistent(self) -> TemperatureConfig:
        low, high = self.band
        if not 0 <= low < high <= 1:
            raise ValueError(f"band must be [low, high] with 0 <= low < high <= 1, got [{low}, {high}]")
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        if not self.min <= self.initial <= self.max:
            raise ValueError(f"initial ({self.initial}) must lie within [min, max] = [{self.min}, {self.max}]")
        return self


class PairsConfig(StrictModel):
    per_prompt: int = Field(2, ge=1, description="At most this many (chosen, rejected) pairs per prompt, one per "
                            "distinct wrong completion.")
    max_length: int = Field(256, ge=8, description="Longest pair side in tokens (prompt + completion); longer "
                            "pairs are dropped and counted.")


class TrainingConfig(StrictModel):
    batch_size: int = Field(8, ge=1, description="Pairs per optimizer step.")
    epochs: int = Field(1, ge=1, description="Passes over each round's pairs.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping (null: off).")


class EvalConfig(StrictModel):
    n: int = Field(60, ge=1, description="Held-out puzzles evaluated (greedy) before round 1 and after every round.")
    max_new_tokens: int = Field(8, ge=1, description="Tokens generated per held-out answer.")
    batch_size: int = Field(16, ge=1, description="Prompts per generation batch.")
    stop: list[str] = Field(default_factory=list, description="Cut answers at these before grading (default: "
                            "none, as the shipped `logic` suite grades the first glyph anywhere in the answer).")


class ServerConfig(StrictModel):
    url: str = Field(description="Base URL of a running `slmlab serve`, e.g. http://127.0.0.1:8000.")
    adapter: str = Field("dream", description="The served name the server trains (created on first /train).")
    api_key_file: str | None = Field(None, description="File holding the server's API key (needed for /train).")
    timeout: float = Field(600.0, gt=0, description="Seconds to wait for one request or training job.")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        return v.rstrip("/")


class DreamConfig(StrictModel):
    """Everything a dream run needs. Unknown keys are errors."""

    name: str = Field("dream", description="Run name: the run directory is output_dir/name.")
    model: str = Field("smollm2-135m", description="Model spec (see `slmlab models`); ignored with `server`.")
    seed: int = Field(0, description="Fixes the puzzles, the LoRA init, the sampling and the batch order.")
    rounds: int = Field(2, ge=1, description="Dream rounds (sample → verify → pairs → train → evaluate).")
    output_dir: str = "runs"
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    temperature: TemperatureConfig = Field(default_factory=TemperatureConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    objective: ObjectiveConfig = Field(default_factory=lambda: ObjectiveConfig(kind="orpo"))
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=1e-4))
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    server: ServerConfig | None = Field(None, description="Sample, train and evaluate through a running server's "
                                        "/v1/completions and /train instead of a local model.")

    @field_validator("objective")
    @classmethod
    def _preference(cls, v: ObjectiveConfig) -> ObjectiveConfig:
        if v.kind not in PREFERENCE_OBJECTIVES:
            raise ValueError(f"the dream loop trains on preference pairs: kind must be 'orpo' or 'dpo', got {v.kind!r}")
        return v

    @model_validator(mode="after")
    def _constraints(self) -> DreamConfig:
        if self.objective.spec.needs_lora and self.adapter.kind != "lora":
            raise ValueError(f"objective.kind {self.objective.kind!r} needs adapter.kind 'lora' "
                             "(the reference is the model with the adapter off)")
        if self.server is not None and self.objective.kind != "orpo":
            raise ValueError("with `server`, the server's /train decides the objective (ORPO for pairs): "
                             "set objective.kind to 'orpo'")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def load_dream_config(path: str | Path | None = None, overrides: list[str] | None = None,
                      data: dict | None = None) -> DreamConfig:
    """Load a YAML config (or ``data``), apply ``key=value`` overrides (values parsed as YAML), validate."""
    return load_config(DreamConfig, path, overrides, data)


def config_yaml(config: DreamConfig) -> str:
    """The resolved config as YAML (what the run directory keeps)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


__all__ = ["DreamConfig", "EvalConfig", "PairsConfig", "PromptsConfig", "SamplingConfig", "ServerConfig",
           "TemperatureConfig", "TrainingConfig", "config_yaml", "load_dream_config"]
