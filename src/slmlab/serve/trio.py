"""``POST /v1/trio``: the creative → logical → dialectical pipeline, generating through the server's engine.

The pipeline is :func:`slmlab.trio.pipeline.run_stages`, unchanged; only its model is different.
:class:`EngineTrio` stands where a :class:`~slmlab.trio.pipeline.TrioModel` would: its
``role(name)`` picks the served adapter for the role, and its ``generate_prompts`` (the pipeline's
generation seam) submits the role's prompts as greedy rows to the :class:`~slmlab.serve.engine.Engine`
and waits for them. So every trio generation is an ordinary engine batch, shared with whatever
other traffic arrives in the same window, served by one weight version, and decoded by the one
serving model: there is no second copy of the weights.

The pipeline itself is synchronous (a role's input needs the previous role's text, a tool round
needs the previous round's calls), so a request runs it on a worker thread of its own
(:data:`EXECUTOR`); the event loop and the engine thread never wait for it.

The answer margin needs the gap between the two most likely next tokens at each generated token.
The engine returns the top-2 log-probs (``logprobs=2``: log-softmax of the raw logits), and
``log p(top1) − log p(top2)`` equals ``logit(top1) − logit(top2)`` (softmax is shift-invariant),
so the margin is the same quantity ``slmlab trio run`` computes from raw logits, up to float
rounding.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import TYPE_CHECKING

from slmlab.serve.decode import Row, Sampling
from slmlab.trio.pipeline import ROLES, STOP, TrioSettings, _cut, _Gen, run_stages
from slmlab.trio.tools import ToolBox, ToolResult

if TYPE_CHECKING:
    from slmlab.serve.app import Server
    from slmlab.trio.pipeline import Transcript
    from slmlab.trio.tools import ToolCall

# Trio requests wait on the engine from these threads (not asyncio's default pool, which the
# checkpoint and restore routes use): at most this many trio requests run their pipeline at once;
# more wait for a thread.
EXECUTOR = ThreadPoolExecutor(max_workers=8, thread_name_prefix="slmlab-trio")
SEED = 0  # greedy rows never draw; the seed only makes the row's settings explicit


class EngineTrio:
    """A TrioModel stand-in whose generations are engine rows (see the module docstring).

    ``roles``: role → served adapter name (None: the base model). A role not in ``roles`` runs on
    ``default`` (the request's ``model``: the base, or an adapter). ``spec`` is the transcript's model.
    """

    def __init__(self, server: Server, roles: dict[str, str | None], default: str | None, spec: str,
                 deadline: float):
        self.server, self.tokenizer, self.spec = server, server.tokenizer, spec
        self.adapters = {role: name for role, name in roles.items() if name is not None}
        self.default, self.deadline = default, deadline
        self.current: str | None = None
        self.versions: set[int] = set()
        self.served: list[tuple[str | None, str | None]] = []  # (role, adapter) per engine request, in order

    @contextmanager
    def role(self, name: str | None) -> Iterator[None]:
        previous, self.current = self.current, name
        try:
            yield
        finally:
            self.current = previous

    def adapter(self, role: str | None) -> str | None:
        return self.adapters.get(role, self.default) if role is not None else self.default

    def generate_prompts(self, prompts: list[str], max_new_tokens: int) -> list[_Gen]:
        """Greedy rows on the engine, all of a stage in one submission; stop strings as the pipeline cuts."""
        from slmlab.serve.app import ApiError

        adapter = self.adapter(self.current)
        if adapter is not None and adapter not in self.server.engine.adapters.names:
            raise ApiError(409, f"adapter {adapter!r} was unloaded while this trio request ran", param="adapters")
        limit = self.server.engine.max_positions
        rows = []
        for prompt in prompts:
            ids = self.server.encode(prompt)
            budget = min(max_new_tokens, limit - len(ids))
            if budget < 1:
                raise ApiError(400, f"the {self.current} prompt has {len(ids)} tokens, which leaves no room in this "
                                    f"model's {limit}-token context", param="question", code="context_length_exceeded")
            sampling = Sampling(max_tokens=budget, temperature=0.0, seed=SEED, stop=list(STOP), logprobs=2)
            rows.append(Row(ids, sampling, adapter))
        start = time.perf_counter()
        future = self.server.engine.submit(rows)
        try:
            results, version = future.result(timeout=max(self.deadline - time.monotonic(), 0.001))
        except FutureTimeout:
            future.cancel()
            raise ApiError(504, f"no answer within {self.server.config.request_timeout:.0f}s", "timeout") from None
        self.versions.add(version)
        self.served.append((self.current, adapter))
        seconds = (time.perf_counter() - start) / max(len(prompts), 1)
        eos = self.server.engine.eos_ids
        out = []
        for res in results:
            ids = list(res.token_ids)
            if ids and ids[-1] in eos and res.finish_reason == "stop":
                ids = ids[:-1]
            margins = [_gap(top) for top in res.top_logprobs[: len(ids)]]
            out.append(_Gen(_cut(res.text).strip(), ids, margins, seconds))
        return out


def _gap(top: dict[int, float]) -> float:
    """top1 − top2 from a position's top-2 log-probs (= the logit gap)."""
    values = sorted(top.values(), reverse=True)
    return values[0] - values[1] if len(values) > 1 else 0.0


class ServerToolBox(ToolBox):
    """The trio's tools, with one more guarantee for a server: an executor that raises anything
    (not only the errors :meth:`ToolBox.execute` expects) gives an error result, never a 500."""

    def execute(self, call: ToolCall) -> ToolResult:
        try:
            return super().execute(call)
        except Exception as exc:  # noqa: BLE001 - a model's text must never crash the request
            return ToolResult(call.name, False, error=f"{type(exc).__name__}: {exc}")


def run_trio(server: Server, question: str, *, roles: dict[str, str | None], default: str | None, spec: str,
             settings: TrioSettings) -> tuple[Transcript, EngineTrio]:
    """The pipeline for one question on the engine (blocking: call it from a worker thread)."""
    tm = EngineTrio(server, roles, default, spec, time.monotonic() + server.config.request_timeout)
    transcript = run_stages(tm, [question], settings=settings, toolbox=ServerToolBox.default())[0]  # type: ignore[arg-type]
    return transcript, tm


__all__ = ["EXECUTOR", "ROLES", "EngineTrio", "ServerToolBox", "run_trio"]
