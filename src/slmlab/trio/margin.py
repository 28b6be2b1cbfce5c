"""The answer's own confidence: where the answer is in a text, and its probability margin.

**Answer span.** In a synthesis the answer is, in this order of preference: the text after
``Answer:`` up to the end of that line; else the first certainty glyph (● ◕ ◐ ◔ ○); else the
first non-empty line. Tool calls are not answers and are skipped.

**Answer margin.** For each generated token the model's next-token logits give
``top1 − top2``, the gap between the two most likely tokens. Since softmax is
shift-invariant this is also the log-probability gap ``log p(top1) − log p(top2)`` in nats,
so it needs no temperature or normalisation. The answer margin is the **mean of that gap
over the tokens that spell the answer span** (a token that only starts a multi-byte
character counts with the character it completes). Under greedy decoding the emitted token
is the top one, so the margin is ≥ 0; a value near 0 means the model nearly wrote
something else at the answer. An empty answer has margin 0.

The margin measures how sure the model was of the words it wrote, not whether they are
right; ``slmlab trio eval`` reports it for correct and wrong answers separately so that its
use as a "verify when uncertain" trigger can be judged on data.
"""

from __future__ import annotations

import re

from slmlab.data.glyphs import CERTAINTY_SCALE

_ANSWER_LINE = re.compile(r"answer\s*:\s*(.+)", re.IGNORECASE)


def answer_span(text: str, skip: list[tuple[int, int]] | None = None) -> tuple[int, int] | None:
    """``(start, end)`` character offsets of the answer in ``text`` (see the module docstring), or None."""
    skip = skip or []

    def free(i: int) -> bool:
        return not any(a <= i < b for a, b in skip)

    for m in _ANSWER_LINE.finditer(text):
        start, end = m.start(1), m.end(1)
        value = text[start:end].rstrip()
        if value and free(start):
            return start, start + len(value)
    for i, ch in enumerate(text):
        if ch in CERTAINTY_SCALE and free(i):
            return i, i + 1
    pos = 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        offset = pos + len(line) - len(line.lstrip())
        if stripped and free(offset):
            return offset, offset + len(stripped)
        pos += len(line)
    return None


def token_char_ends(tokenizer, ids: list[int]) -> list[tuple[int, bool]]:
    """For each token: how many complete characters are decoded once it is added, and whether it
    also starts a character that a later token completes (a multi-byte character split across tokens)."""
    ends = []
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        complete = text.rstrip("\ufffd")
        ends.append((len(complete), len(complete) < len(text)))
    return ends


def span_tokens(char_ends: list[tuple[int, bool]], start: int, end: int) -> list[int]:
    """Indices of the tokens that contribute bytes to characters ``[start, end)``."""
    out: set[int] = set()
    before, pending = 0, []
    for i, (after, partial) in enumerate(char_ends):
        pending.append(i)
        if after > before:  # the pending tokens completed characters [before, after)
            if before < end and after > start:
                out.update(pending)
            before = after
            pending = [i] if partial else []  # its trailing bytes belong to the next character too
    return sorted(out)


def answer_margin(tokenizer, ids: list[int], margins: list[float], text: str,
                  skip: list[tuple[int, int]] | None = None) -> tuple[float, str]:
    """``(margin, answer text)`` for a generation's tokens, per-token margins and (stop-cut) text."""
    span = answer_span(text, skip)
    if span is None:
        return 0.0, ""
    tokens = span_tokens(token_char_ends(tokenizer, ids), *span)
    gaps = [margins[i] for i in tokens if i < len(margins)]
    return (sum(gaps) / len(gaps) if gaps else 0.0), text[span[0]:span[1]]
