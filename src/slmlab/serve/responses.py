"""OpenAI-shaped response objects built from decoding results."""

from __future__ import annotations

import time
import uuid
from typing import Any

from slmlab.serve.decode import RowResult


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


def named_top(tokenizer, top: dict[int, float] | None) -> dict[str, float] | None:
    """Top alternatives keyed by token text (two ids with the same text: the likelier one is kept)."""
    if top is None:
        return None
    out: dict[str, float] = {}
    for tid, lp in top.items():  # already ordered from most to least likely
        out.setdefault(token_text(tokenizer, tid), lp)
    return out


def completion_logprobs(tokenizer, prompt_ids: list[int], res: RowResult, echo: bool, prompt_text: str) -> dict:
    """The legacy completions ``logprobs`` object: tokens, token_logprobs, top_logprobs, text_offset."""
    ids = (prompt_ids if echo else []) + res.token_ids
    lps: list[float | None] = (res.prompt_logprobs if echo else []) + res.logprobs
    tops: list = ((res.prompt_top_logprobs or [None] * len(prompt_ids)) if echo else []) + res.top_logprobs
    tokens = [token_text(tokenizer, t) for t in ids]
    offsets, pos = [], 0 if echo else len(prompt_text)
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": [named_top(tokenizer, t) for t in tops],
            "text_offset": offsets}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_response(model: str, choices: list[dict], prompt_tokens: int, completion_tokens: int,
                        version: int) -> dict[str, Any]:
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(prompt_tokens, completion_tokens), "weight_version": version}


def chat_logprobs(tokenizer, res: RowResult) -> dict[str, list]:
    """The chat ``logprobs`` object: one entry per generated token with its top alternatives."""
    content = []
    for i, (tid, lp) in enumerate(zip(res.token_ids, res.logprobs)):
        text = token_text(tokenizer, tid)
        top = res.top_logprobs[i] if i < len(res.top_logprobs) else {}
        content.append({
            "token": text, "logprob": lp, "bytes": list(text.encode("utf-8")),
            "top_logprobs": [{"token": k, "logprob": v, "bytes": list(k.encode("utf-8"))}
                             for k, v in (named_top(tokenizer, top) or {}).items()],
        })
    return {"content": content}


def chat_response(model: str, choices: list[dict], prompt_tokens: int, completion_tokens: int,
                  version: int) -> dict[str, Any]:
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(prompt_tokens, completion_tokens), "weight_version": version}


def chat_chunk(chunk_id: str, model: str, index: int, delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


def completion_chunk(chunk_id: str, model: str, index: int, text: str, finish_reason: str | None = None) -> dict:
    return {"id": chunk_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}]}


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
