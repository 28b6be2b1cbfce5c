"""Batched decoding for the server: left padding, one KV cache, per-row sampling, adapters and log-probs.

:func:`decode` runs one batch of rows to completion. Every row has its own sampling settings
(greedy when ``temperature == 0``, else temperature + nucleus sampling from a ``torch.Generator``
seeded per row, so a seeded request gives the same text whatever else shares its batch), its
own stop strings and token budget, and its own adapter: rows for different adapters run in one
forward through PEFT's mixed-adapter batches (``adapter_names``), base-model rows under
``"__base__"``. A row may carry a logits ``bias`` (the bigram sampler, ``bigram_weight`` in a request),
applied to its logits before temperature and nucleus.

Reported log-probs are the model's own (log-softmax of the raw logits, before temperature and
nucleus), as OpenAI's API reports them. With ``echo`` the prompt's token log-probs are computed
in the same first forward: the first prompt token has none (``None``), as lm-eval expects.

Why greedy answers in a batch equal answers alone: padding is on the left and masked out, and
position ids count only real tokens, so a padded row sees exactly its own tokens at its own
positions. The server's tests compare concurrent and sequential greedy answers token by token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class Sampling:
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # top-k alternatives per position (0: only the chosen token's log-prob)
    echo: bool = False  # also return the prompt's tokens and their log-probs
    ignore_eos: bool = False
    choice: int = 0  # which of a request's n choices this row is (its sampling stream)
    # (previous token id, logits [vocab]) -> logits, applied before choosing (e.g. the bigram sampler's row);
    # reported log-probs stay the model's own.
    bias: Callable[[int, torch.Tensor], torch.Tensor] | None = None


@dataclass
class Row:
    """One sequence to continue."""

    prompt_ids: list[int]
    sampling: Sampling
    adapter: str | None = None  # None: the base model
    on_text: Callable[[str], None] | None = None  # streaming: called with each new piece of text
    readout: bool = False  # score each generated token on the server's concept vectors


@dataclass
class RowResult:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"  # "stop" (EOS or a stop string) | "length"
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    prompt_logprobs: list[float | None] = field(default_factory=list)
    prompt_top_logprobs: list[dict[int, float] | None] = field(default_factory=list)
    emitted: int = 0  # characters of text already streamed
    done: bool = False
    readout: list[list[float]] | None = None  # per generated token, one score per concept


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``position_ids`` (counting real tokens only), padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def top_k(logprobs: torch.Tensor, k: int) -> list[dict[int, float]]:
    """Per row of ``logprobs`` [n, vocab]: the ``k`` most likely token ids and their log-probs."""
    if k <= 0:
        return [{} for _ in range(logprobs.shape[0])]
    values, ids = logprobs.topk(k, dim=-1)
    return [dict(zip(i.tolist(), v.tolist())) for i, v in zip(ids, values)]


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """The next token for one row: argmax, or a draw from the temperature/nucleus distribution."""
    if sampling.temperature <= 0 or generator is None:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < sampling.top_p  # the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def generator_for(sampling: Sampling) -> torch.Generator | None:
    """A generator per sampled row: ``seed`` and the row's choice index fix its draws (whatever shares the batch)."""
    if sampling.temperature <= 0:
        return None
    g = torch.Generator()
    if sampling.seed is None:
        g.seed()
    else:
        g.manual_seed((sampling.seed * 1_000_003 + sampling.choice) % 2**63)
    return g


def stop_cut(text: str, stop: list[str]) -> int | None:
    """Where ``text`` must end because a stop string appeared in it, or None."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return min(cuts) if cuts else None


def held_back(text: str, stop: list[str]) -> int:
    """Characters at the end of ``text`` that may be the start of a stop string (not streamed yet)."""
    hold = 1 if text.endswith("\ufffd") else 0  # an incomplete UTF-8 sequence: wait for its next byte
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


class BatchDecoder:
    """Decodes one batch of rows to completion on ``model`` (a PeftModel or a plain causal LM)."""

    def __init__(self, model, tokenizer, rows: list[Row], *, eos_ids: set[int], pad_id: int, mixed_adapters: bool):
        self.model, self.tokenizer, self.rows = model, tokenizer, rows
        self.eos_ids, self.pad_id = eos_ids, pad_id
        self.results = [RowResult() for _ in rows]
        self.generators = [generator_for(r.sampling) for r in rows]
        self.adapter_names = [r.adapter or BASE_ADAPTER for r in rows] if mixed_adapters else None

    def _forward(self, ids, mask, positions, cache, keep_all: bool):
        kwargs = {"attention_mask": mask, "position_ids": positions, "past_key_values": cache, "use_cache": True,
                  "logits_to_keep": 0 if keep_all else 1}
        if self.adapter_names is not None:
            kwargs["adapter_names"] = self.adapter_names
        return self.model(input_ids=ids, **kwargs).logits

    @torch.inference_mode()
    def run(self) -> list[RowResult]:
        from transformers import DynamicCache

        ids, mask, positions = left_pad([r.prompt_ids for r in self.rows], self.pad_id)
        cache = DynamicCache()
        echo = any(r.sampling.echo for r in self.rows)
        logits = self._forward(ids, mask, positions, cache, keep_all=echo)
        if echo:
            self._prompt_logprobs(ids, mask, logits)
        last = logits[:, -1].float()
        for r, res in zip(self.rows, self.results):
            res.done = r.sampling.max_tokens <= 0
        while not all(res.done for res in self.results):
            next_ids = self._step(last)
            mask = torch.cat([mask, torch.ones((len(self.rows), 1), dtype=mask.dtype)], dim=1)
            positions = positions[:, -1:] + 1
            last = self._forward(next_ids, mask, positions, cache, keep_all=False)[:, -1].float()
        return self.results

    def _prompt_logprobs(self, ids: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor) -> None:
        logprobs = logits[:, :-1].float().log_softmax(-1)
        chosen = logprobs.gather(-1, ids[:, 1:, None])[..., 0]
        for i, (r, res) in enumerate(zip(self.rows, self.results)):
            if not r.sampling.echo:
                continue
            n = len(r.prompt_ids)
            start = ids.shape[1] - n  # first real position of this row
            res.prompt_logprobs = [None] + chosen[i, start:].tolist() if n else []
            if r.sampling.logprobs is not None and n:
                res.prompt_top_logprobs = [None] + top_k(logprobs[i, start:], r.sampling.logprobs)

    def _step(self, last: torch.Tensor) -> torch.Tensor:
        """Choose each unfinished row's next token, record it, and return the batch's next input ids."""
        logprobs = last.log_softmax(-1)
        next_ids = torch.full((len(self.rows), 1), self.pad_id, dtype=torch.long)
        for i, (r, res) in enumerate(zip(self.rows, self.results)):
            if res.done:
                continue
            logits = last[i]
            if r.sampling.bias is not None:
                logits = r.sampling.bias((res.token_ids or r.prompt_ids)[-1], logits)
            token = choose(logits, r.sampling, self.generators[i])
            next_ids[i, 0] = token
            self._record(r, res, token, logprobs[i])
        return next_ids

    def _record(self, row: Row, res: RowResult, token: int, logprobs: torch.Tensor) -> None:
        s = row.sampling
        res.token_ids.append(token)  # an EOS is kept with its log-prob (lm-eval sums up to it), never in the text
        res.logprobs.append(float(logprobs[token]))
        if s.logprobs is not None:
            res.top_logprobs.append(top_k(logprobs[None], s.logprobs)[0])
        eos = token in self.eos_ids and not s.ignore_eos
        # The text is decoded every step only when a stop string or a stream needs it; else once, at the end.
        if eos or s.stop or row.on_text is not None or len(res.token_ids) >= s.max_tokens:
            ids = res.token_ids[:-1] if eos else res.token_ids
            res.text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if eos:
            res.finish_reason, res.done = "stop", True
            self._emit(row, res, final=True)
            return
        cut = stop_cut(res.text, s.stop)
        if cut is not None:
            res.text, res.finish_reason, res.done = res.text[:cut], "stop", True
        elif len(res.token_ids) >= s.max_tokens:
            res.finish_reason, res.done = "length", True
        self._emit(row, res, final=res.done)

    @staticmethod
    def _emit(row: Row, res: RowResult, final: bool) -> None:
        if row.on_text is None:
            return
        end = len(res.text) if final else len(res.text) - held_back(res.text, row.sampling.stop)
        if end > res.emitted:
            row.on_text(res.text[res.emitted:end])
            res.emitted = end


def decode(model, tokenizer, rows: list[Row], *, eos_ids: set[int], pad_id: int,
           mixed_adapters: bool) -> list[RowResult]:
    """Continue every row; see :class:`BatchDecoder`."""
    return BatchDecoder(model, tokenizer, rows, eos_ids=eos_ids, pad_id=pad_id, mixed_adapters=mixed_adapters).run()
