"""Server settings: one validated object behind ``slmlab serve``'s flags and ``create_app``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from slmlab.config import StrictModel


class OnlineTrainingConfig(StrictModel):
    """How ``POST /train`` trains: a LoRA per served name (or every weight with ``full``)."""

    full: bool = Field(False, description="Train the base model's weights (the notes' full-weight APOLLO); "
                                          "otherwise the base stays frozen and each name gets a LoRA.")
    r: int = Field(16, ge=1, description="Rank of a LoRA created by /train.")
    alpha: float = Field(32, gt=0, description="LoRA alpha of a LoRA created by /train.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Modules a new LoRA adapts.")
    optimizer: str = Field("apollo-mini", description="A registered optimizer (slmlab train's names).")
    optimizer_kwargs: dict = Field(default_factory=dict, description="The optimizer's own settings.")
    lr: float = Field(1e-4, gt=0, description="Learning rate (a request may set its own).")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm; null: no clipping.")
    context_frozen: bool = Field(True, description="Run the context once without gradients (SFT only).")
    max_steps: int = Field(16, ge=1, description="Most steps one request may ask for.")
    max_examples: int = Field(64, ge=1, description="Most (context, continuation) pairs in one request.")
    max_length: int = Field(1024, ge=2, description="Most tokens in one context + continuation.")
    spike_z: float = Field(6.0, gt=0, description="A step whose loss or grad norm is this many σ above the "
                                                  "adapter's recent steps is not applied (non-finite: never applied).")
    seed: int = Field(0, ge=0, description="Seed of the trainer (LoRA init, optimizer projections).")
    threads: int | None = Field(None, ge=1, description="CPU threads of the training thread (default: half the "
                                                        "cores), so that inference keeps the rest.")


class ServeConfig(StrictModel):
    model: str = Field("smollm2-135m", description="Model spec (smollm2-135m, tiny-random, a path).")
    seed: int = Field(0, description="Seed for tiny-random's weights.")
    adapters: dict[str, str] = Field(default_factory=dict, description="NAME → run directory or PEFT adapter dir.")
    readout: Path | None = Field(None, description="A `slmlab steer extract` directory: requests may ask for "
                                                   "per-token concept scores (`readout: true`).")
    served_name: str | None = Field(None, description="The base model's name in /v1/models (default: the spec).")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: str | None = Field(None, description="Bearer key for /train, /checkpoint and adapter load/unload; "
                                                  "without one those endpoints are disabled.")
    state_dir: Path | None = Field(None, description="Where online-training state and checkpoints live.")
    allowed_dirs: list[Path] = Field(default_factory=list, description="Adapter load paths must be under one of these.")
    max_batch: int = Field(32, ge=1, description="Most rows decoded in one batch.")
    batch_wait_ms: float = Field(10.0, ge=0, description="How long the first request waits for others to batch with.")
    max_tokens: int = Field(1024, ge=1, description="Largest max_tokens a request may ask for.")
    max_body_bytes: int = Field(4_000_000, ge=1024, description="Largest request body.")
    max_n: int = Field(16, ge=1, description="Largest n (choices per prompt).")
    request_timeout: float = Field(600.0, gt=0, description="Seconds a request may wait for its answer.")
    training: OnlineTrainingConfig = Field(default_factory=OnlineTrainingConfig)

    @property
    def base_name(self) -> str:
        return self.served_name or self.model
