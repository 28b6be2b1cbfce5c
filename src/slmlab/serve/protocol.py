"""Request bodies of the server's endpoints (OpenAI's shapes where OpenAI has one).

Unknown fields are ignored (OpenAI clients send fields a small server has no use for), but a
known OpenAI option slmlab does not implement is refused when it is set to anything other than
its neutral value, rather than silently ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TokenIds = list[int]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SamplingBody(Body):
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False
    readout: bool = False  # slmlab extension: per-token concept scores (server started with --readout)
    # slmlab extension (openai: extra_body={"bigram_weight": 0.5}): add w·log p(next|prev) from the served model
    # directory's bigram.safetensors to the logits before sampling (slmlab.kernel.bigram); 0: off.
    bigram_weight: float = Field(0.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _unsupported(self):
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ValueError(f"{name} is not supported by slmlab serve (use 0)")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported by slmlab serve")
        return self

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionBody(SamplingBody):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @model_validator(mode="after")
    def _completion_unsupported(self):
        if self.best_of not in (None, 1):
            raise ValueError("best_of is not supported by slmlab serve (use n)")
        if self.suffix:
            raise ValueError("suffix (insertion) is not supported by slmlab serve")
        return self

    def prompts(self) -> list[str | TokenIds]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise ValueError("prompt is empty")
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class Message(Body):
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ValueError(f"message content of type {part.get('type')!r} is not supported (text only)")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class ChatBody(SamplingBody):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def budget(self, default: int) -> int:
        for value in (self.max_completion_tokens, self.max_tokens):
            if value is not None:
                return value
        return default


class ScoreBody(Body):
    model: str
    prompt: str | None = None
    continuation: str | None = None
    prompt_ids: TokenIds | None = None
    continuation_ids: TokenIds | None = None

    @model_validator(mode="after")
    def _one_form(self):
        if (self.prompt is None) == (self.prompt_ids is None):
            raise ValueError("give exactly one of prompt (text) or prompt_ids")
        if (self.continuation is None) == (self.continuation_ids is None):
            raise ValueError("give exactly one of continuation (text) or continuation_ids")
        return self


class TokenizeBody(Body):
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool = False
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_form(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeBody(Body):
    model: str | None = None
    tokens: TokenIds


class TrainBody(Body):
    """One example or several: ids (the client owns tokenization) or text."""

    model: str
    context_ids: TokenIds | list[TokenIds] | None = None
    continuation_ids: TokenIds | list[TokenIds] | None = None
    rejected_ids: TokenIds | list[TokenIds] | None = None
    context: str | list[str] | None = None
    continuation: str | list[str] | None = None
    rejected: str | list[str] | None = None
    lr: float | None = Field(None, gt=0, le=1)
    steps: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _one_form(self):
        ids = self.context_ids is not None or self.continuation_ids is not None
        text = self.context is not None or self.continuation is not None
        if ids == text:
            raise ValueError("give context_ids + continuation_ids (token ids) or context + continuation (text)")
        if ids and (self.context_ids is None or self.continuation_ids is None):
            raise ValueError("context_ids and continuation_ids go together")
        if text and (self.context is None or self.continuation is None):
            raise ValueError("context and continuation go together")
        if (self.rejected_ids is not None and text) or (self.rejected is not None and ids):
            raise ValueError("rejected must use the same form (ids or text) as the continuation")
        return self


class CheckpointBody(Body):
    model: str
    target: str | None = Field(None, description="A file to sync the adapter's safetensors to (4 KB block diff).")


class LoadAdapterBody(Body):
    lora_name: str
    lora_path: str

    @field_validator("lora_name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)


class UnloadAdapterBody(Body):
    lora_name: str


def check_name(name: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", name):
        raise ValueError("an adapter name is 1-64 characters: letters, digits and . _ : - (not first)")
    if name in "lora_":  # PEFT warns and may mis-map weights: its weight names contain "lora_"
        raise ValueError(f"the adapter name {name!r} is reserved (it is part of PEFT's own weight names)")
    return name


def as_batch(value: Any) -> list:
    """A single example (list of ids, or a string) as a one-element batch; a batch unchanged."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(x, int) for x in value):
        return [value]
    return list(value)


class TrioAdapters(BaseModel):
    """Role → the name of an adapter already served; a role left out runs on the request's ``model``."""

    model_config = ConfigDict(extra="forbid")

    creative: str | None = None
    logical: str | None = None
    dialectical: str | None = None


TRIO_MAX_ROUNDS = 4


class TrioBody(Body):
    """``POST /v1/trio``: one question through creative → logical → dialectical (see docs/serve.md)."""

    question: str
    model: str | None = None  # the base model's name or an adapter: what roles without an adapter run on
    adapters: TrioAdapters = Field(default_factory=TrioAdapters)
    tools: bool = True
    max_rounds: int = Field(2, ge=1, le=TRIO_MAX_ROUNDS)
    max_tokens: int = Field(64, ge=1)  # per role and per synthesis round; also capped by the server's max_tokens
    verify_below: float | None = Field(1.0, allow_inf_nan=False)

    @field_validator("question")
    @classmethod
    def _question(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("question is empty")
        return v
