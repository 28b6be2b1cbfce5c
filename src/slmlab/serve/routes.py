"""The server's routes. Each handler validates, builds rows for the engine, and shapes the answer."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from slmlab.serve import responses as R
from slmlab.serve.app import ApiError, Server, readout_payload, resolve_adapter_dir, sampling_of
from slmlab.serve.decode import Row, Sampling
from slmlab.serve.protocol import (
    ChatBody,
    CheckpointBody,
    CompletionBody,
    DetokenizeBody,
    LoadAdapterBody,
    ScoreBody,
    TokenizeBody,
    TrainBody,
    TrioBody,
    UnloadAdapterBody,
    as_batch,
    check_name,
)

router = APIRouter()


def server_of(request: Request) -> Server:
    return request.app.state.server


def key_required(request: Request) -> None:
    """A dependency: runs before the body is parsed, so a missing key is a 401/403 whatever the body."""
    server_of(request).require_key(request)


KEY = [Depends(key_required)]


def versioned(payload: dict, version: int) -> JSONResponse:
    return JSONResponse(payload, headers={"x-weight-version": str(version)})


# ---------------------------------------------------------------------- info


@router.get("/health")
async def health(request: Request):
    s = server_of(request)
    return {"status": "ok", "model": s.config.base_name, "adapters": s.engine.adapters.names,
            "weight_version": s.engine.version, "training": s.trainer is not None,
            "queue": s.engine.queue_depth, "readout": s.readout.concepts if s.readout is not None else None}


@router.get("/v1/models")
async def models(request: Request):
    s = server_of(request)
    base = s.config.base_name
    data = [{"id": base, "object": "model", "created": 0, "owned_by": "slmlab", "root": s.config.model,
             "parent": None}]
    data += [{"id": name, "object": "model", "created": 0, "owned_by": "slmlab", "root": s.engine.adapters.sources[name],
              "parent": base} for name in s.engine.adapters.names]
    return {"object": "list", "data": data}


@router.get("/metrics")
async def metrics(request: Request):
    s = server_of(request)
    s.metrics.queue_depth.set(s.engine.queue_depth)
    s.metrics.weight_version.set(s.engine.version)
    if s.trainer is not None:
        s.metrics.train_queue_depth.set(s.trainer.queue_depth)
    return Response(s.metrics.render(), media_type="text/plain; version=0.0.4")


# ---------------------------------------------------------------------- completions


@router.post("/v1/completions")
async def completions(body: CompletionBody, request: Request):
    s = server_of(request)
    adapter = s.adapter_for(body.model)
    _check_n(s, body.n)
    max_tokens = body.max_tokens if body.max_tokens is not None else 16
    try:
        prompts = body.prompts()
    except ValueError as e:
        raise ApiError(400, str(e), param="prompt") from None
    prompt_ids = [s.encode(p) if isinstance(p, str) else list(p) for p in prompts]
    for i, ids in enumerate(prompt_ids):
        s.check_ids(ids, f"prompt[{i}]" if len(prompt_ids) > 1 else "prompt")
        s.check_budget(len(ids), max_tokens)
    _check_readout(s, body)
    bias = s.bigram_bias(body)
    rows = [Row(ids, sampling_of(body, max_tokens, j, logprobs=body.logprobs, echo=body.echo, bias=bias), adapter,
                readout=body.readout) for ids in prompt_ids for j in range(body.n)]
    if body.stream:
        return _stream(s, rows, body.model, chat=False, include_usage=_include_usage(body))
    results, version = await s.run(rows)
    choices = []
    for k, (row, res) in enumerate(zip(rows, results)):
        ids = row.prompt_ids
        prompt_text = s.tokenizer.decode(ids, skip_special_tokens=False) if body.echo else ""
        choice: dict[str, Any] = {"index": k, "text": prompt_text + res.text, "finish_reason": res.finish_reason,
                                  "logprobs": None}
        if body.logprobs is not None:
            choice["logprobs"] = R.completion_logprobs(s.tokenizer, ids, res, body.echo, prompt_text)
        if body.readout:
            choice["readout"] = readout_payload(s, res.readout)
        choices.append(choice)
    prompt_tokens = sum(len(ids) for ids in prompt_ids)
    generated = sum(len(r.token_ids) for r in results)
    return versioned(R.completion_response(body.model, choices, prompt_tokens, generated, version), version)


@router.post("/v1/chat/completions")
async def chat(body: ChatBody, request: Request):
    s = server_of(request)
    adapter = s.adapter_for(body.model)
    _check_n(s, body.n)
    ids = _chat_ids(s, body.messages, add_generation_prompt=True)
    max_tokens = body.budget(default=min(s.config.max_tokens, s.engine.max_positions - len(ids)))
    s.check_ids(ids, "messages")
    s.check_budget(len(ids), max_tokens, "messages")
    top = (body.top_logprobs or 0) if body.logprobs else None
    _check_readout(s, body)
    bias = s.bigram_bias(body)
    rows = [Row(ids, sampling_of(body, max_tokens, j, logprobs=top, bias=bias), adapter, readout=body.readout)
            for j in range(body.n)]
    if body.stream:
        return _stream(s, rows, body.model, chat=True, include_usage=_include_usage(body))
    results, version = await s.run(rows)
    choices = [{"index": j, "message": {"role": "assistant", "content": res.text},
                "finish_reason": res.finish_reason,
                "logprobs": R.chat_logprobs(s.tokenizer, res) if body.logprobs else None,
                **({"readout": readout_payload(s, res.readout)} if body.readout else {})}
               for j, res in enumerate(results)]
    generated = sum(len(r.token_ids) for r in results)
    return versioned(R.chat_response(body.model, choices, len(ids), generated, version), version)


def _check_readout(s: Server, body) -> None:
    if body.readout and s.readout is None:
        raise ApiError(400, "readout needs concept vectors: start the server with --readout DIR "
                            "(a slmlab steer extract output)", param="readout")
    if body.readout and body.stream:
        raise ApiError(400, "readout is not available with stream: true", param="readout")


def _check_n(s: Server, n: int) -> None:
    if n > s.config.max_n:
        raise ApiError(400, f"n {n} is above this server's limit {s.config.max_n}", param="n")


def _include_usage(body) -> bool:
    return bool((body.stream_options or {}).get("include_usage"))


def _chat_ids(s: Server, messages, add_generation_prompt: bool) -> list[int]:
    if not getattr(s.tokenizer, "chat_template", None):
        raise ApiError(400, f"model {s.config.model!r} has no chat template; use /v1/completions", param="messages")
    try:
        convo = [{"role": m.role, "content": m.text()} for m in messages]
        text = s.tokenizer.apply_chat_template(convo, add_generation_prompt=add_generation_prompt, tokenize=False)
    except ValueError as e:
        raise ApiError(400, str(e), param="messages") from None
    except Exception as e:
        raise ApiError(400, f"the chat template refused these messages: {e}", param="messages") from None
    return s.encode(text)


# ---------------------------------------------------------------------- streaming


class StreamSink:
    """Receives one row's text pieces on the engine thread and hands them to the response's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, index: int):
        self.loop, self.queue, self.index = loop, queue, index

    def __call__(self, text: str) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.index, text))


class Finished:
    """Put on a stream's queue when its rows are done; ``future`` holds the results."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self.loop, self.queue = loop, queue

    def __call__(self, future) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (None, future))


def _stream(s: Server, rows: list[Row], model: str, *, chat: bool, include_usage: bool) -> StreamingResponse:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    for i, row in enumerate(rows):
        row.on_text = StreamSink(loop, queue, i)
    future = s.engine.submit(rows)
    future.add_done_callback(Finished(loop, queue))
    events = _events(s, rows, model, queue, chat=chat, include_usage=include_usage)
    return StreamingResponse(events, media_type="text/event-stream")


async def _events(s: Server, rows: list[Row], model: str, queue: asyncio.Queue, *, chat: bool, include_usage: bool):
    chunk_id = R.new_id("chatcmpl" if chat else "cmpl")
    if chat:
        for i in range(len(rows)):
            yield _sse(R.chat_chunk(chunk_id, model, i, {"role": "assistant", "content": ""}))
    while True:
        index, item = await asyncio.wait_for(queue.get(), s.config.request_timeout)
        if index is None:
            break
        delta = {"content": item} if chat else item
        yield _sse(R.chat_chunk(chunk_id, model, index, delta) if chat else R.completion_chunk(chunk_id, model, index,
                                                                                                 delta))
    try:
        results, version = item.result()
    except Exception as e:
        yield _sse(R.error_body(f"generation failed: {type(e).__name__}: {e}", "server_error"))
        yield "data: [DONE]\n\n"
        return
    for i, res in enumerate(results):
        final = R.chat_chunk(chunk_id, model, i, {}, res.finish_reason) if chat else \
            R.completion_chunk(chunk_id, model, i, "", res.finish_reason)
        final["weight_version"] = version
        yield _sse(final)
    if include_usage:
        usage = R.usage(sum(len(r.prompt_ids) for r in rows), sum(len(r.token_ids) for r in results))
        yield _sse({"id": chunk_id, "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": int(time.time()), "model": model, "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


# ---------------------------------------------------------------------- scoring and tokens


@router.post("/score")
async def score(body: ScoreBody, request: Request):
    """Per-token log-probs of a continuation given a prompt, and their sum (one forward, no sampling)."""
    s = server_of(request)
    adapter = s.adapter_for(body.model)
    prompt = body.prompt_ids if body.prompt_ids is not None else s.encode(body.prompt)
    cont = body.continuation_ids if body.continuation_ids is not None else s.encode(body.continuation)
    s.check_ids(prompt, "prompt")
    s.check_ids(cont, "continuation")
    if not cont:
        raise ApiError(400, "continuation is empty", param="continuation")
    s.check_budget(len(prompt), len(cont))
    row = Row(prompt + cont, Sampling(max_tokens=0, temperature=0.0, echo=True), adapter)
    (res,), version = await s.run([row])
    lps = res.prompt_logprobs[len(prompt):]
    payload = {"model": body.model, "prompt_tokens": len(prompt), "continuation_ids": cont,
               "tokens": [R.token_text(s.tokenizer, t) for t in cont], "token_logprobs": lps,
               "sum": float(sum(lps)), "weight_version": version}
    return versioned(payload, version)


@router.post("/tokenize")
async def tokenize(body: TokenizeBody, request: Request):
    s = server_of(request)
    if body.messages is not None:
        ids = _chat_ids(s, body.messages, body.add_generation_prompt)
    else:
        ids = s.tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)["input_ids"]
    return {"tokens": ids, "count": len(ids), "max_model_len": s.engine.max_positions}


@router.post("/detokenize")
async def detokenize(body: DetokenizeBody, request: Request):
    s = server_of(request)
    s.check_ids(body.tokens, "tokens")
    return {"prompt": s.tokenizer.decode(body.tokens, skip_special_tokens=False)}


# ---------------------------------------------------------------------- the trio


@router.post("/v1/trio")
async def trio(body: TrioBody, request: Request):
    """creative → logical → dialectical on the serving model; every generation is an engine request."""
    from slmlab.serve.trio import EXECUTOR, run_trio
    from slmlab.trio.pipeline import ROLES, TrioSettings

    s = server_of(request)
    default = s.adapter_for(body.model) if body.model is not None else None
    roles: dict[str, str | None] = {}
    for role in ROLES:
        name = getattr(body.adapters, role)
        if name is None:
            continue
        if name in (s.config.base_name, s.config.model):
            roles[role] = None
        elif name in s.engine.adapters.names:
            roles[role] = name
        else:
            known = ", ".join(s.engine.adapters.names) or "none (load one with /v1/load_lora_adapter)"
            raise ApiError(404, f"adapters.{role}: no adapter named {name!r} is served. Adapters: {known}.",
                           param=f"adapters.{role}", code="model_not_found")
    if body.max_tokens > s.config.max_tokens:
        raise ApiError(400, f"max_tokens {body.max_tokens} is above this server's limit {s.config.max_tokens}",
                       param="max_tokens")
    settings = TrioSettings(tools=body.tools, max_rounds=body.max_rounds, verify_below=body.verify_below,
                            max_new_tokens={r: body.max_tokens for r in ROLES})
    spec = body.model if body.model is not None else s.config.base_name
    loop = asyncio.get_running_loop()
    transcript, tm = await loop.run_in_executor(
        EXECUTOR, lambda: run_trio(s, body.question, roles=roles, default=default, spec=spec, settings=settings))
    versions = sorted(tm.versions)
    payload = {**transcript.to_dict(), "adapters": {r: tm.adapter(r) or s.config.base_name for r in ROLES},
               "weight_versions": versions}
    return versioned(payload, versions[-1] if versions else s.engine.version)


# ---------------------------------------------------------------------- adapters (need the key)


@router.post("/v1/load_lora_adapter", dependencies=KEY)
async def load_adapter(body: LoadAdapterBody, request: Request):
    s = server_of(request)
    path = s.allowed_path(body.lora_path, "lora_path")
    if s.trainer is not None and body.lora_name in s.trainer.trained:
        raise ApiError(409, f"adapter {body.lora_name!r} is being trained online; load the file under another name",
                       param="lora_name")
    try:
        adapter_dir = resolve_adapter_dir(path, s.config.model)
    except ValueError as e:
        raise ApiError(400, str(e), param="lora_path") from None
    version = await _control(s, "load", name=body.lora_name, path=str(adapter_dir))
    return {"loaded": body.lora_name, "path": str(adapter_dir), "weight_version": version}


@router.post("/v1/unload_lora_adapter", dependencies=KEY)
async def unload_adapter(body: UnloadAdapterBody, request: Request):
    s = server_of(request)
    if body.lora_name not in s.engine.adapters.names:
        raise ApiError(404, f"no adapter named {body.lora_name!r} is loaded", param="lora_name",
                       code="model_not_found")
    version = await _control(s, "unload", name=body.lora_name)
    return {"unloaded": body.lora_name, "weight_version": version}


async def _control(s: Server, action: str, **args):
    try:
        return await asyncio.wrap_future(s.engine.control(action, **args))
    except (ValueError, KeyError, OSError) as e:
        raise ApiError(400, f"{action} failed: {e}") from None


# ---------------------------------------------------------------------- online training (needs the key)


@router.post("/train", status_code=202, dependencies=KEY)
async def train(body: TrainBody, request: Request):
    s = server_of(request)
    job = _train_job(s, body)
    job = s.trainer.submit(job)
    return JSONResponse(job.public(), status_code=202 if job.status == "queued" else 200)


def _train_job(s: Server, body: TrainBody):
    from slmlab.serve.online import TrainJob

    t = s.config.training
    name = body.model
    if t.full and name != s.config.base_name:
        raise ApiError(400, f"this server trains the base model's weights (--train-full): model must be "
                            f"{s.config.base_name!r}", param="model")
    if not t.full:
        if name in (s.config.base_name, s.config.model):
            raise ApiError(400, "the base model is frozen; name an adapter to train (it is created on first use), "
                                "or start the server with --train-full", param="model")
        try:
            check_name(name)
        except ValueError as e:
            raise ApiError(400, str(e), param="model") from None
    if body.steps > t.max_steps:
        raise ApiError(400, f"steps {body.steps} is above this server's limit {t.max_steps}", param="steps")
    ctx, cont, rej = _train_ids(s, body)
    return TrainJob(name, ctx, cont, rej, lr=body.lr, steps=body.steps)


def _train_ids(s: Server, body: TrainBody):
    t = s.config.training
    if body.context_ids is not None:
        ctx, cont, rej = as_batch(body.context_ids), as_batch(body.continuation_ids), as_batch(body.rejected_ids)
    else:
        ctx = [s.encode(x) for x in as_batch(body.context)]
        cont = [s.encode(x) for x in as_batch(body.continuation)]
        rej = [s.encode(x) for x in as_batch(body.rejected)]
    if len(ctx) != len(cont) or (rej and len(rej) != len(cont)):
        raise ApiError(400, f"{len(ctx)} contexts, {len(cont)} continuations"
                            + (f", {len(rej)} rejected" if rej else "") + ": they must pair up", param="continuation_ids")
    if not 1 <= len(ctx) <= t.max_examples:
        raise ApiError(400, f"between 1 and {t.max_examples} examples per request, got {len(ctx)}", param="context_ids")
    for i, (c, k) in enumerate(zip(ctx, cont)):
        for name, ids in (("context", c), ("continuation", k)) + ((("rejected", rej[i]),) if rej else ()):
            if not ids:
                raise ApiError(400, f"example {i}: {name} is empty", param=f"{name}_ids")
            s.check_ids(ids, f"{name}_ids[{i}]")
        longest = len(c) + max(len(k), len(rej[i]) if rej else 0)
        if longest > t.max_length:
            raise ApiError(400, f"example {i}: {longest} tokens, above the limit {t.max_length}", param="context_ids")
    return ctx, cont, (rej or None)


@router.get("/train/status")
async def train_status(request: Request):
    s = server_of(request)
    if s.trainer is None:
        return {"enabled": False, "reason": "no API key configured (start with --api-key-file)"}
    return {"enabled": True, "weight_version": s.engine.version, **s.trainer.status()}


@router.get("/train/{job_id}")
async def train_job(job_id: str, request: Request):
    s = server_of(request)
    job = s.trainer.job(job_id) if s.trainer is not None else None
    if job is None:
        raise ApiError(404, f"no training job {job_id!r}", param="job_id")
    return job.public()


@router.post("/checkpoint", dependencies=KEY)
async def checkpoint(body: CheckpointBody, request: Request):
    """Write an adapter (PEFT safetensors) atomically to the state dir; optionally block-sync it to a target file."""
    from slmlab.serve.checkpoint import write_checkpoint

    s = server_of(request)
    if s.config.state_dir is None:
        raise ApiError(400, "checkpoints need a state directory: start the server with --state-dir DIR")
    if body.model in (s.config.base_name, s.config.model):
        raise ApiError(400, "only adapters are checkpointed; full weights trained with --train-full are not "
                            "(export them with slmlab export from a training run instead)", param="model")
    if body.model not in s.engine.adapters.names:
        raise ApiError(404, f"no adapter named {body.model!r} is served", param="model", code="model_not_found")
    target = s.allowed_path(body.target, "target") if body.target else None
    snap = await asyncio.wrap_future(s.engine.control("snapshot", name=body.model))
    result = await asyncio.to_thread(write_checkpoint, s.config.state_dir, body.model, snap, s.config.model, target)
    return versioned(result, snap["weight_version"])
