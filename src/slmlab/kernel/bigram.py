"""Bigram counts of a training corpus, and a sampler that leans on them: ``scores += w · log p(next | prev)``.

**Counts** (:func:`count_bigrams`, :func:`build_bigrams`, ``slmlab kernel bigram``). Every
``{"text"}`` record of the corpus files is tokenized as ``slmlab train`` tokenizes it (no special
tokens added, EOS appended), and every adjacent pair of ids ``(prev, next)`` inside one record is
counted; pairs never cross a record boundary. ``c(prev, next)`` is that count, ``n(prev) =
Σ_next c(prev, next)`` the number of pairs that start with ``prev``, and ``u(id)`` the number of
times ``id`` occurs in the counted sequences (EOS included). Count only the *train* split: a table
counted on validation text would leak it into every score measured on that text.

**Storage.** ``bigram.safetensors`` beside ``tokenizer.json`` (a tokenizer or model directory):
the non-zero counts only, as COO tensors ``rows``/``cols`` (int32, sorted by row then column) and
``counts`` (int64), plus ``unigram`` (int64, one per id) — never a dense V×V matrix. The
metadata records the vocabulary size, the number of sequences and pairs, the source files and a
fingerprint of the tokenizer's vocabulary; loading from a directory whose tokenizer has another
vocabulary is an error, so a table is never applied to ids it was not counted in.

**Probabilities.** Add-α (Lidstone; α = 1 is Laplace) smoothing over the whole vocabulary V::

    p(next | prev) = (c(prev, next) + α) / (n(prev) + α · V)        α > 0, default 0.1

so every token keeps a non-zero probability (an id never seen as ``prev`` gets the uniform 1/V).

**The sampler** (:class:`BigramBias`, a ``transformers.LogitsProcessor``): for each row of the
batch, with ``prev`` its last token, ``scores[row] += w · log p(· | prev)``. The dense row of
log-probabilities is built on the fly for the batch's ``prev`` ids only. ``w == 0`` returns the
``scores`` object itself, untouched (bit-exact). In ``model.generate`` custom processors run before
the temperature / top-k / top-p warpers, so the bias is added to the raw logits and then divided
by the temperature like them; the server (:mod:`slmlab.serve.decode`) does the same per row.
With ``w = 1`` and temperature 1 the sampling distribution is ∝ p_model · p_bigram (a product of
experts); larger ``w`` leans further towards the corpus's bigrams.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessor

from slmlab.errors import SlmlabError

BIGRAM_FILE = "bigram.safetensors"
DEFAULT_ALPHA = 0.1
FORMAT = "slmlab-bigram-1"
_FLUSH_IDS = 4_000_000  # ids buffered before their pairs are merged into the running counts


def make_command(directory: str | Path) -> str:
    """The command that writes the table for ``directory`` (quoted in every "no table" error)."""
    return f"slmlab kernel bigram data/kernel/train.jsonl --tokenizer {directory}"


@dataclass
class BigramTable:
    """Sparse bigram counts over a vocabulary of ``vocab_size`` ids (see the module docstring)."""

    rows: torch.Tensor  # int64 [nnz], sorted by (row, col)
    cols: torch.Tensor  # int64 [nnz]
    counts: torch.Tensor  # int64 [nnz]
    unigram: torch.Tensor  # int64 [V]
    vocab_size: int
    metadata: dict[str, str] = field(default_factory=dict)
    totals: torch.Tensor = field(init=False, repr=False)  # int64 [V]: n(prev)
    indptr: torch.Tensor = field(init=False, repr=False)  # int64 [V + 1]: row prev is counts[indptr[prev]:indptr[prev+1]]

    def __post_init__(self) -> None:
        v = self.vocab_size
        self.totals = torch.bincount(self.rows, weights=self.counts.double(), minlength=v).round().long()
        self.indptr = torch.zeros(v + 1, dtype=torch.long)
        self.indptr[1:] = torch.bincount(self.rows, minlength=v).cumsum(0)

    @property
    def pairs(self) -> int:
        return int(self.counts.sum())

    def count(self, prev: int, nxt: int) -> int:
        s, e = int(self.indptr[prev]), int(self.indptr[prev + 1])
        hit = (self.cols[s:e] == nxt).nonzero()
        return int(self.counts[s + int(hit[0])]) if len(hit) else 0

    def log_prob_rows(self, prev_ids: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
        """``log p(· | prev)`` for each id of ``prev_ids`` [B]: a float64 tensor [B, V] (add-α smoothing)."""
        prev = prev_ids.reshape(-1).cpu().long()
        out = torch.full((len(prev), self.vocab_size), float(alpha), dtype=torch.float64)
        for b, p in enumerate(prev.tolist()):
            s, e = int(self.indptr[p]), int(self.indptr[p + 1])
            out[b, self.cols[s:e]] += self.counts[s:e].double()
        denom = self.totals[prev].double() + alpha * self.vocab_size
        return out.log_() - denom.log().unsqueeze(1)

    def log_prob(self, prev: Sequence[int], nxt: Sequence[int], alpha: float = DEFAULT_ALPHA) -> list[float]:
        """``log p(next_i | prev_i)`` for each pair (scoring a text under the table)."""
        return [math.log((self.count(p, n) + alpha) / (int(self.totals[p]) + alpha * self.vocab_size))
                for p, n in zip(prev, nxt)]


# --------------------------------------------------------------------------- counting


def count_bigrams(token_id_sequences: Iterable[Sequence[int]], vocab_size: int, *,
                  metadata: dict[str, str] | None = None) -> BigramTable:
    """Count adjacent id pairs inside each sequence (never across two) and each id's occurrences."""
    if vocab_size < 1:
        raise SlmlabError(f"vocab_size must be positive, got {vocab_size}")
    keys, counts = np.empty(0, np.int64), np.empty(0, np.int64)
    unigram = np.zeros(vocab_size, np.int64)
    buffer: list[np.ndarray] = []
    buffered = sequences = 0
    for seq in token_id_sequences:
        ids = np.asarray(seq, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise SlmlabError(f"sequence {sequences}: token id {int(ids.max() if ids.max() >= vocab_size else ids.min())} "
                              f"is outside the vocabulary 0..{vocab_size - 1}")
        sequences += 1
        buffer.append(ids)
        buffered += ids.size
        if buffered >= _FLUSH_IDS:
            keys, counts = _merge(keys, counts, buffer, unigram, vocab_size)
            buffer, buffered = [], 0
    keys, counts = _merge(keys, counts, buffer, unigram, vocab_size)
    meta = {"format": FORMAT, "vocab_size": str(vocab_size), "sequences": str(sequences),
            "pairs": str(int(counts.sum())), **(metadata or {})}
    return BigramTable(torch.from_numpy(keys // vocab_size), torch.from_numpy(keys % vocab_size),
                       torch.from_numpy(counts), torch.from_numpy(unigram), vocab_size, meta)


def _merge(keys: np.ndarray, counts: np.ndarray, buffer: list[np.ndarray], unigram: np.ndarray,
           vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Add the buffered sequences' pairs (key = prev · V + next) and ids to the running counts."""
    if not buffer:
        return keys, counts
    unigram += np.bincount(np.concatenate(buffer), minlength=vocab_size)
    new = np.concatenate([a[:-1] * vocab_size + a[1:] for a in buffer])
    new_keys, new_counts = np.unique(new, return_counts=True)
    merged, inverse = np.unique(np.concatenate([keys, new_keys]), return_inverse=True)
    total = np.zeros(len(merged), np.int64)
    np.add.at(total, inverse, np.concatenate([counts, new_counts.astype(np.int64)]))
    return merged, total


def vocab_fingerprint(tokenizer_json: str | Path) -> str:
    """sha256 of a ``tokenizer.json``'s vocabulary (token → id, added tokens included), 16 hex digits."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab(with_added_tokens=True)
    return hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class BigramResult:
    path: Path
    table: BigramTable
    documents: int


def build_bigrams(corpus: Iterable[str | Path], tokenizer_dir: str | Path, *, overwrite: bool = False,
                  batch_size: int = 1024) -> BigramResult:
    """Count the bigrams of corpus files' ``text`` records and write ``tokenizer_dir/bigram.safetensors``.

    ``tokenizer_dir``: a tokenizer directory or a model directory (both hold ``tokenizer.json``).
    Texts are tokenized as ``slmlab train`` tokenizes them: no special tokens, EOS appended.
    """
    from slmlab.kernel.corpus import read_texts
    from slmlab.kernel.tokenizer import load_kernel_tokenizer
    from slmlab.outputs import check_output

    corpus = [Path(p) for p in corpus]
    tok = load_kernel_tokenizer(tokenizer_dir)
    out = check_output(Path(tokenizer_dir).expanduser() / BIGRAM_FILE, "file", overwrite=overwrite, what="bigram table")
    texts = read_texts(corpus)
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    backend = tok.backend_tokenizer

    def sequences():
        for k in range(0, len(texts), batch_size):
            for enc in backend.encode_batch(texts[k:k + batch_size], add_special_tokens=False):
                yield enc.ids + eos

    meta = {"sources": json.dumps([str(p) for p in corpus]), "eos_appended": str(bool(eos)).lower(),
            "tokenizer_fingerprint": vocab_fingerprint(Path(tokenizer_dir).expanduser() / "tokenizer.json")}
    table = count_bigrams(sequences(), len(tok), metadata=meta)
    save_bigrams(table, out)
    return BigramResult(out, table, len(texts))


# --------------------------------------------------------------------------- storage


def save_bigrams(table: BigramTable, path: str | Path) -> Path:
    """Write the sparse table as safetensors (atomically)."""
    from safetensors.torch import save

    from slmlab.io import atomic_write_bytes

    tensors = {"rows": table.rows.to(torch.int32).contiguous(), "cols": table.cols.to(torch.int32).contiguous(),
               "counts": table.counts.contiguous(), "unigram": table.unigram.contiguous()}
    atomic_write_bytes(path, save(tensors, metadata={**table.metadata, "vocab_size": str(table.vocab_size)}))
    return Path(path)


def load_bigrams(directory: str | Path) -> BigramTable:
    """The table in ``directory`` (a tokenizer or model directory); a clear error when there is none.

    When the directory also holds a ``tokenizer.json``, its vocabulary must be the one counted.
    """
    from safetensors import safe_open

    d = Path(directory).expanduser()
    path = d / BIGRAM_FILE
    if not path.is_file():
        raise SlmlabError(f"{d} has no {BIGRAM_FILE} (the bigram table the bigram sampler needs); make it with "
                          f"`{make_command(d)}` (count the corpus's train split)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            t = {k: f.get_tensor(k) for k in ("rows", "cols", "counts", "unigram")}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise SlmlabError(f"{path}: not a readable bigram table ({exc}); remake it with `{make_command(d)} --overwrite`") from None
    if meta.get("format") != FORMAT:
        raise SlmlabError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}; remake it with "
                          f"`{make_command(d)} --overwrite`")
    tokenizer_json = d / "tokenizer.json"
    expected = meta.get("tokenizer_fingerprint")
    if expected and tokenizer_json.is_file() and vocab_fingerprint(tokenizer_json) != expected:
        raise SlmlabError(f"{path} was counted with another tokenizer than {tokenizer_json}; remake it with "
                          f"`{make_command(d)} --overwrite`")
    return BigramTable(t["rows"].long(), t["cols"].long(), t["counts"].long(), t["unigram"].long(),
                       int(meta["vocab_size"]), meta)


def table_for_model(model_spec: str | Path) -> BigramTable | None:
    """The table stored with a model given as a directory, or None (no directory, or no table in it)."""
    d = Path(model_spec).expanduser()
    return load_bigrams(d) if (d / BIGRAM_FILE).is_file() else None


# --------------------------------------------------------------------------- the sampler


def check_weight(weight: float, what: str = "--bigram-weight") -> float:
    if not math.isfinite(weight) or weight < 0:
        raise SlmlabError(f"{what} must be a finite number >= 0 (0: no bias), got {weight}")
    return float(weight)


class BigramBias(LogitsProcessor):
    """``scores += w · log p(next | prev)`` with ``prev`` each row's last token (see the module docstring)."""

    def __init__(self, table: BigramTable, weight: float, alpha: float = DEFAULT_ALPHA, source: str | None = None):
        if not (alpha > 0 and math.isfinite(alpha)):
            raise SlmlabError(f"the bigram smoothing alpha must be a finite number > 0, got {alpha}")
        self.table, self.weight, self.alpha = table, check_weight(weight, "the bigram weight"), float(alpha)
        self.source = source

    def __repr__(self) -> str:
        where = f", table={self.source!r}" if self.source else ""
        return f"BigramBias(weight={self.weight:g}, alpha={self.alpha:g}{where})"

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.weight == 0:
            return scores
        if scores.shape[-1] != self.table.vocab_size:
            raise SlmlabError(f"the bigram table counts {self.table.vocab_size} token ids but the model scores "
                              f"{scores.shape[-1]}: it was made for another tokenizer")
        bias = self.weight * self.table.log_prob_rows(input_ids[:, -1], self.alpha)
        return scores + bias.to(device=scores.device, dtype=scores.dtype)

    def row(self, prev_id: int, logits: torch.Tensor) -> torch.Tensor:
        """One row's logits [V] after the bias, given its previous token (the server's per-row decoding)."""
        return self(torch.tensor([[prev_id]]), logits.unsqueeze(0))[0]


def bias_for_model(model_spec: str | Path, weight: float, alpha: float = DEFAULT_ALPHA) -> BigramBias | None:
    """The sampler for a model directory's table; None when ``weight == 0`` (nothing changes at all).

    Raises a :class:`SlmlabError` naming the command that makes the table when ``weight > 0`` and
    the model has none. Called before the model loads, so a missing table fails in a second.
    """
    check_weight(weight)
    if weight == 0:
        return None
    d = Path(model_spec).expanduser()
    if not d.is_dir():
        raise SlmlabError(f"--bigram-weight needs a model directory holding {BIGRAM_FILE}; {model_spec!r} is not a "
                          f"directory (the bigram sampler is for models with a table, e.g. a kernel: `{make_command('DIR')}`)")
    return BigramBias(load_bigrams(d), weight, alpha, source=str(d / BIGRAM_FILE))


__all__ = ["BIGRAM_FILE", "DEFAULT_ALPHA", "BigramBias", "BigramResult", "BigramTable", "bias_for_model", "build_bigrams",
           "check_weight", "count_bigrams", "load_bigrams", "make_command", "save_bigrams", "table_for_model",
           "vocab_fingerprint"]
