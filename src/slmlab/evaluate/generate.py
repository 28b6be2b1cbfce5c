"""Batched generation: left padding, KV cache, greedy or seeded sampling, stop strings."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from slmlab.models import is_instruct


@dataclass
class Generation:
    prompt: str
    text: str
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


@dataclass
class GenerationBatch:
    generations: list[Generation]
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def format_prompt(tokenizer, text: str, raw: bool = False) -> str:
    """Apply the chat template for instruct models unless ``raw``."""
    if raw or not is_instruct(tokenizer):
        return text
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )


def _cut_at_stop(text: str, stop: list[str]) -> str:
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[: min(cuts)] if cuts else text


def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop: list[str] | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
    logits_processor: list | None = None,
) -> GenerationBatch:
    """Generate a completion for each already-formatted prompt.

    ``temperature == 0`` is greedy. Sampling draws from a generator seeded with ``seed``,
    so the same seed gives the same text. Per-token log-probabilities (under the
    sampling distribution's logits before temperature) are kept for later analysis.
    ``on_batch(n)`` is called after each batch with its number of prompts (progress).
    ``logits_processor``: ``transformers`` logits processors (e.g. the kernel's bigram sampler),
    run before the temperature/top-p warpers; None or empty changes nothing.
    """
    import torch

    stop = stop or []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the last position
    out: list[Generation] = []
    new_tokens = 0
    start = time.perf_counter()
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            kwargs = dict(
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                output_scores=True,
                return_dict_in_generate=True,
            )
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if logits_processor:
                from transformers import LogitsProcessorList

                kwargs["logits_processor"] = LogitsProcessorList(logits_processor)
            # fork_rng: seeded sampling must not move the caller's global RNG.
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + i)
                res = model.generate(**enc, **kwargs)
            seq = res.sequences[:, enc["input_ids"].shape[1] :]
            scores = torch.stack(res.scores, dim=1).log_softmax(-1)  # [batch, steps, vocab]
            for row, prompt in enumerate(chunk):
                ids = seq[row].tolist()
                if tokenizer.eos_token_id in ids:
                    ids = ids[: ids.index(tokenizer.eos_token_id)]
                lps = scores[row, torch.arange(len(ids)), torch.tensor(ids, dtype=torch.long)].tolist() if ids else []
                text = _cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop)
                new_tokens += len(ids)
                out.append(Generation(prompt=prompt, text=text, tokens=ids, logprobs=lps))
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        tokenizer.padding_side = side
    return GenerationBatch(out, new_tokens, time.perf_counter() - start)
