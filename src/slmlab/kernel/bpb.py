"""Bits per byte: a language model's loss in a unit that does not depend on its tokenizer.

    bpb = (total NLL in nats over the scored tokens) / (ln 2 × total UTF-8 bytes those tokens cover)

Exactly what is counted, per document (:func:`bits_per_byte`):

* The text is tokenized as ``slmlab train`` tokenizes ``{"text"}`` records: no special tokens.
* Every token after the first is **scored**: its NLL given all the tokens before it (within the
  window, below). The first token has nothing before it, so it is context only and its bytes are
  not counted — exactly like training, where the first token of a record is never a target.
  With ``prepend_bos=True`` the BOS token is put in front as context instead, so every token is
  scored and every byte of the document is counted (for models trained with a leading BOS;
  slmlab's loop adds none, so the default is ``False``).
* A token's bytes are the UTF-8 bytes it decodes to (byte-level BPE: one byte per symbol; a
  token may hold part of a character). The bytes of the scored tokens add up to the bytes of the
  text minus those of the first token, so each byte is counted at most once.
* No EOS (or other special token) is scored: it covers no bytes, and including its NLL would
  charge the model for something that is not text.
* Documents longer than ``max_length`` tokens are scored in consecutive windows of
  ``max_length``; each window starts with the last token of the one before as its context, so
  every token is scored exactly once (with a shorter context at window starts).

:func:`bits_per_byte_examples` scores already-encoded training examples (``Encoded`` ids and
pre-shifted targets, as :mod:`slmlab.train.data` makes them) with the same rules — the function a
training loop can call on its evaluation set.

Hand-checked case (the tests pin it): a model whose logits are all equal puts ``ln V`` nats on
every token, so ``bpb = log2(V) · scored tokens / scored bytes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from slmlab.errors import SlmlabError
from slmlab.progress import ProgressFactory, tracker

IGNORE = -100


@dataclass(frozen=True)
class BpbResult:
    bpb: float
    nats: float  # total NLL of the scored tokens
    bytes: int  # total UTF-8 bytes they cover
    tokens: int  # scored tokens
    documents: int

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens if self.tokens else float("nan")


@lru_cache(maxsize=1)
def byte_symbols() -> dict[str, int]:
    """GPT-2's byte ↔ printable-character table, character → byte (byte-level BPE's alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def token_byte_lengths(tokenizer) -> list[int]:
    """UTF-8 bytes each token id decodes to: 0 for special tokens; needs a byte-level BPE tokenizer."""
    symbols = byte_symbols()
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items()}
    special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}
    lengths = [0] * len(tokenizer)
    for token, i in tokenizer.get_vocab().items():
        if i >= len(lengths) or i in special:
            continue
        if i in added:
            lengths[i] = len(added[i].content.encode("utf-8"))
        elif all(c in symbols for c in token):
            lengths[i] = len(token)
        else:
            raise SlmlabError(
                f"token {token!r} (id {i}) of tokenizer {getattr(tokenizer, 'name_or_path', '')!r} is not byte-level BPE: "
                "bits per byte needs a byte-level tokenizer (slmlab's kernel tokenizer, GPT-2's, SmolLM2's)"
            )
    return lengths


def document_examples(tokenizer, texts: list[str], max_length: int, prepend_bos: bool = False) -> list:
    """Texts → scoring windows (``Encoded``: ids and pre-shifted targets) per the module docstring."""
    from slmlab.train.batching import Encoded

    if max_length < 2:
        raise SlmlabError(f"max_length must be at least 2 tokens, got {max_length}")
    if prepend_bos and tokenizer.bos_token_id is None:
        raise SlmlabError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no BOS token; use prepend_bos=False")
    ids_list = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    out = []
    for i, ids in enumerate(ids_list):
        seq = ([tokenizer.bos_token_id] if prepend_bos else []) + list(ids)
        start = 0
        while start < len(seq) - 1:
            window = seq[start:start + max_length]
            out.append(Encoded(i, window, window[1:] + [IGNORE]))
            start += max_length - 1
    return out


def bits_per_byte(model, tokenizer, texts: list[str], *, max_length: int | None = None, prepend_bos: bool = False,
                  batch_size: int = 8, progress: ProgressFactory | None = None) -> BpbResult:
    """Bits per byte of ``model`` on ``texts`` (see the module docstring for what is counted).

    ``progress`` (e.g. :func:`slmlab.progress.progress`) counts the scoring windows.
    """
    texts = list(texts)
    if not texts or not any(t for t in texts):
        raise SlmlabError("bits per byte needs at least one non-empty text")
    limit = max_length or model.config.max_position_embeddings
    examples = document_examples(tokenizer, texts, limit, prepend_bos)
    result = bits_per_byte_examples(model, examples, token_byte_lengths(tokenizer), batch_size=batch_size,
                                    progress=progress)
    return BpbResult(result.bpb, result.nats, result.bytes, result.tokens, len(texts))


def bits_per_byte_examples(model, examples: list, byte_lengths: list[int], *, batch_size: int = 8,
                           progress: ProgressFactory | None = None) -> BpbResult:
    """Bits per byte over encoded examples: targets that are not ``IGNORE`` and cover bytes are scored.

    ``progress`` (e.g. :func:`slmlab.progress.progress`) counts the examples (windows) scored.
    """
    import torch

    nats, n_bytes, tokens = 0.0, 0, 0
    lengths = torch.tensor(byte_lengths, dtype=torch.long)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tracker(progress, len(examples), "kernel bpb (windows)") as bar:
            for k in range(0, len(examples), batch_size):
                batch = examples[k:k + batch_size]
                width = max(len(e.ids) for e in batch)
                ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in batch], device=device)
                mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch], device=device)
                targets = torch.tensor([e.targets + [IGNORE] * (width - len(e.ids)) for e in batch])
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().cpu()
                valid = targets != IGNORE
                safe = targets.clamp(min=0)
                covered = torch.where(valid, lengths[safe], torch.zeros_like(safe))
                scored = covered > 0
                nll = -torch.log_softmax(logits, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
                nats += nll[scored].double().sum().item()
                n_bytes += int(covered.sum())
                tokens += int(scored.sum())
                bar.advance(len(batch))
    finally:
        model.train(was_training)
    if not n_bytes:
        raise SlmlabError("nothing to score: every text is a single token or empty (bits per byte needs two tokens)")
    return BpbResult(nats / (math.log(2) * n_bytes), nats, n_bytes, tokens, len({e.index for e in examples}))


def read_eval_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """The ``text`` fields of a JSONL file (e.g. a kernel corpus's val.jsonl), or a plain text file."""
    from slmlab.kernel.corpus import read_texts

    texts = read_texts([path])
    return texts[:limit] if limit else texts


__all__ = [
    "BpbResult",
    "bits_per_byte",
    "bits_per_byte_examples",
    "byte_symbols",
    "document_examples",
    "read_eval_texts",
    "token_byte_lengths",
]
