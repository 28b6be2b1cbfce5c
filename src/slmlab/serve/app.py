"""The FastAPI application: OpenAI-compatible routes, scoring, tokenization, metrics, online training.

:func:`create_app` builds it from a :class:`~slmlab.serve.config.ServeConfig`; ``slmlab serve`` runs
it with uvicorn. Inference goes through the :class:`~slmlab.serve.engine.Engine` (batched, one
weight version per request), training through the :class:`~slmlab.serve.online.OnlineTrainer`
(its own model copy; applied steps are published to the engine between batches).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from slmlab.serve import responses as R
from slmlab.serve.config import ServeConfig
from slmlab.serve.decode import Row, RowResult, Sampling
from slmlab.serve.engine import Engine
from slmlab.serve.metrics import ServerMetrics

log = logging.getLogger("slmlab.serve")


class ApiError(Exception):
    """An error answered with OpenAI's error JSON and a 4xx/5xx status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


class Server:
    """What the routes share: the config, tokenizer, engine, trainer and metrics."""

    def __init__(self, config: ServeConfig, model, tokenizer):
        from slmlab.serve.online import OnlineTrainer, private_copy

        self.config, self.tokenizer = config, tokenizer
        self.metrics = ServerMetrics()
        trainer_model = private_copy(model) if config.api_key else None  # before adapters are injected
        self.readout = load_readout_for(config.readout, model)
        self.bigram = load_bigram_for(config.model, model)  # the served model dir's bigram table, once; or None
        self.engine = Engine(model, tokenizer, base_name=config.base_name, max_batch=config.max_batch,
                             batch_wait=config.batch_wait_ms / 1000, metrics=self.metrics, readout=self.readout)
        for name, path in config.adapters.items():
            self.engine.adapters.load(name, str(resolve_adapter_dir(path, config.model)))
        self.trainer = None
        if trainer_model is not None:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            self.trainer = OnlineTrainer(trainer_model, self.engine, config.training, base_name=config.base_name,
                                         state_dir=config.state_dir, pad_id=pad, metrics=self.metrics)

    # ------------------------------------------------------------------ helpers for routes

    def adapter_for(self, model: str) -> str | None:
        """The adapter a request's ``model`` names (None: the base model); 404 when unknown."""
        if model == self.config.base_name or model == self.config.model:
            return None
        if model in self.engine.adapters.names:
            return model
        known = [self.config.base_name, *self.engine.adapters.names]
        raise ApiError(404, f"The model {model!r} does not exist. Available: {', '.join(known)}.",
                       "invalid_request_error", "model", "model_not_found")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def check_ids(self, ids: list[int], param: str) -> None:
        vocab = len(self.tokenizer)
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ApiError(400, f"{param}: token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param=param)

    def check_budget(self, prompt_len: int, max_tokens: int, param: str = "prompt") -> None:
        if prompt_len == 0:
            raise ApiError(400, f"{param} is empty: at least one token is needed", param=param)
        if max_tokens > self.config.max_tokens:
            raise ApiError(400, f"max_tokens {max_tokens} is above this server's limit {self.config.max_tokens}",
                           param="max_tokens")
        limit = self.engine.max_positions
        if prompt_len + max_tokens > limit:
            raise ApiError(400, f"This model's maximum context length is {limit} tokens; the prompt has "
                                f"{prompt_len} and max_tokens asks for {max_tokens} more.",
                           param=param, code="context_length_exceeded")

    async def run(self, rows: list[Row]) -> tuple[list[RowResult], int]:
        future = self.engine.submit(rows)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.config.request_timeout)
        except TimeoutError:
            raise ApiError(504, f"no answer within {self.config.request_timeout:.0f}s", "timeout") from None

    def bigram_bias(self, body):
        """The per-row bias a request's ``bigram_weight`` asks for (None at 0); 400 when the model has no table."""
        if not body.bigram_weight:
            return None
        if self.bigram is None:
            from slmlab.kernel.bigram import make_command

            raise ApiError(400, f"bigram_weight needs a bigram table, and the served model {self.config.model!r} has "
                                f"none: make it with `{make_command(self.config.model)}` and restart the server",
                           param="bigram_weight")
        from slmlab.kernel.bigram import BigramBias

        return BigramBias(self.bigram, body.bigram_weight).row

    def require_key(self, request: Request) -> None:
        key = self.config.api_key
        if not key:
            raise ApiError(403, "This endpoint changes weights or reads files and is disabled: start the server "
                                "with --api-key-file to enable it.", "permission_error")
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                           "authentication_error", code="invalid_api_key")

    def allowed_path(self, path: str, param: str) -> Path:
        """``path`` resolved, refused unless it is under an allowed directory (or the state dir)."""
        roots = [Path(p).expanduser().resolve() for p in self.config.allowed_dirs]
        if self.config.state_dir is not None:
            roots.append(Path(self.config.state_dir).expanduser().resolve())
        resolved = Path(path).expanduser().resolve()
        if not any(resolved == r or r in resolved.parents for r in roots):
            where = ", ".join(map(str, roots)) or "none configured (start with --allow-dir DIR)"
            raise ApiError(403, f"{param} {path!r} is not under an allowed directory ({where})", "permission_error",
                           param=param)
        return resolved


def load_readout_for(path, model):
    """The concept vectors of ``--readout`` (checked to belong to ``model``), or None."""
    if path is None:
        return None
    from slmlab.steer.extract import load_readout

    readout = load_readout(path)
    readout.check_model(model)
    return readout


def load_bigram_for(model_spec: str, model):
    """The bigram table stored with a model directory (``slmlab kernel bigram``), checked against the model; or None."""
    from slmlab.errors import SlmlabError
    from slmlab.kernel.bigram import table_for_model

    table = table_for_model(model_spec)
    vocab = model.config.vocab_size
    if table is not None and table.vocab_size != vocab:
        raise SlmlabError(f"{model_spec}: its bigram table counts {table.vocab_size} token ids but the model has "
                          f"{vocab}; remake it with `slmlab kernel bigram CORPUS --tokenizer {model_spec} --overwrite`")
    return table


def readout_payload(server: Server, scores: list[list[float]] | None) -> dict | None:
    if scores is None or server.readout is None:
        return None
    return {"concepts": server.readout.concepts, "layer": server.readout.layers[-1], "scores": scores}


def resolve_adapter_dir(path: str | Path, model_spec: str) -> Path:
    """A run directory or PEFT adapter directory → the adapter directory (checked against the model)."""
    from slmlab.evaluate.suites import resolve_adapter

    source = resolve_adapter(path, model_spec)
    if source.adapter_dir is None:
        from slmlab.errors import SlmlabError

        raise SlmlabError(f"{path}: a full-weight run cannot be served as an adapter; serve it with --model {path}/model")
    return source.adapter_dir


def create_app(config: ServeConfig, *, model=None, tokenizer=None) -> FastAPI:
    """The server as an ASGI app. ``model``/``tokenizer`` default to loading ``config.model``."""
    if model is None or tokenizer is None:
        from slmlab.models import load

        model, tokenizer = load(config.model, seed=config.seed)
    server = Server(config, model, tokenizer)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.engine.start()
        if server.trainer is not None:
            server.trainer.start()
            restored = await asyncio.to_thread(server.trainer.restore_all)
            if restored:
                log.info("restored online-trained adapters: %s", ", ".join(restored))
        yield
        if server.trainer is not None:
            server.trainer.stop()
        server.engine.stop()

    # No /docs or /redoc: FastAPI's pages load Swagger/ReDoc from a CDN (blank offline); /openapi.json stays.
    app = FastAPI(title="slmlab serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    _install_middleware(app, server)
    _install_errors(app)
    from slmlab.serve import routes

    app.include_router(routes.router)
    return app


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(R.error_body(exc.message, exc.kind, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        param = error_param(first.get("loc", ()))
        message = first.get("msg", "invalid request").removeprefix("Value error, ")
        if len({error_param(e.get("loc", ())) for e in exc.errors()}) == 1 and len(exc.errors()) > 1:
            message = "none of the accepted types matches: " + "; ".join(e["msg"] for e in exc.errors()[:4])
        if first.get("type") == "json_invalid":
            message = f"The body is not valid JSON: {first.get('ctx', {}).get('error', message)}"
            param = None
        return JSONResponse(R.error_body(f"{param}: {message}" if param else message, param=param), status_code=400)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(R.error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
                            status_code=500)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "function-after", "function-before", "union"}


def error_param(loc) -> str | None:
    """``("body", "prompt", "list[int]", 0)`` → ``"prompt[0]"``: the field, without pydantic's union tags."""
    out = ""
    for part in loc:
        if part == "body" or (isinstance(part, str) and ("[" in part or part in _TYPE_TAGS)):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _install_middleware(app: FastAPI, server: Server) -> None:
    app.add_middleware(BodyLimit, limit=server.config.max_body_bytes)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        server.metrics.requests.labels(path, str(response.status_code)).inc()
        server.metrics.latency.labels(path).observe(time.perf_counter() - start)
        version = server.engine.version
        response.headers.setdefault("x-weight-version", str(version))
        return response


class BodyLimit:
    """ASGI middleware: a body above ``limit`` bytes is answered 413 before it is read whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _too_large(send, self.limit)
        return await self.app(scope, CountingReceive(receive, self.limit), send)


class CountingReceive:
    """Wraps ``receive`` and stops a chunked body that grows past the limit."""

    def __init__(self, receive, limit: int):
        self.receive, self.limit, self.seen = receive, limit, 0

    async def __call__(self):
        message = await self.receive()
        if message.get("type") == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                raise ApiError(413, f"request body is larger than {self.limit} bytes")
        return message


async def _too_large(send, limit: int) -> None:
    body = json.dumps(R.error_body(f"request body is larger than {limit} bytes")).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def sampling_of(body, max_tokens: int, choice: int, *, logprobs: int | None, echo: bool = False,
                bias=None) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                    stop=body.stops(), logprobs=logprobs, echo=echo, ignore_eos=body.ignore_eos, choice=choice,
                    bias=bias)

