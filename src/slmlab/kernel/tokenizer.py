"""The kernel's tokenizer: byte-level BPE trained on a corpus, with slmlab's symbols as single tokens.

What :func:`train_tokenizer` builds (HF ``tokenizers``, GPT-2-style byte level):

* **Bytes first.** The 256 byte symbols are always in the vocabulary, there is no normaliser
  and no unknown token, so every UTF-8 string — emoji, CJK, combining marks, control
  characters, the empty string — encodes and decodes back to exactly itself.
* **Special tokens** (ids 0-4): ``<|pad|>``, ``<|bos|>``, ``<|eos|>``, ``<|im_start|>``,
  ``<|im_end|>``. Nothing adds them implicitly (no post-processor): slmlab tokenizes with
  ``add_special_tokens=False`` everywhere and appends EOS itself where a sequence ends.
* **Symbols as single tokens**: the certainty glyphs ``● ◕ ◐ ◔ ○`` and the connectives and
  quantifiers of the logic generator ``¬ ∧ ∨ → ↔ ∀ ∃`` (taken from :mod:`slmlab.data.glyphs`,
  the notation's single source of truth). The pre-tokenizer isolates each one and its merges
  come first, so each is always exactly one ordinary token — not a special one, so
  ``decode(..., skip_special_tokens=True)`` keeps it (an answer is a glyph).
* A ChatML **chat template** (``<|im_start|>role\\n…<|im_end|>\\n``) so commands that apply chat
  templates work; ``kind: chat`` role templates and conversational datasets train through it.

``len(tokenizer) <= vocab``: equal, unless the corpus is too small for that many merges or
training already learned some of the symbols' pieces (then a few less; the result says so).

"coordizer" (the research notes' name for their tokenizer) is an alias of this command.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from slmlab.data.glyphs import (
    AND,
    CERTAINTY_SCALE,
    EXISTS,
    FORALL,
    IFF,
    IMPLIES,
    NOT,
    OR,
)
from slmlab.errors import SlmlabError

PAD, BOS, EOS, IM_START, IM_END = "<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, IM_START, IM_END)
#: Single tokens that are text, not control: the glyph answers and the logic notation.
SYMBOL_TOKENS = (*CERTAINTY_SCALE, NOT, AND, OR, IMPLIES, IFF, FORALL, EXISTS)
BYTE_ALPHABET = 256
#: The smallest vocabulary that holds the bytes, the special tokens, the symbols' tokens and one merge.
MIN_VOCAB = BYTE_ALPHABET + len(SPECIAL_TOKENS) + 15 + 1  # 15 = len(symbol_pieces()), checked by a test

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TokenizerResult:
    out_dir: Path
    vocab_size: int  # len(tokenizer): merges + bytes + special + symbol tokens
    requested: int
    documents: int
    bytes: int


def check_vocab(vocab: int) -> None:
    if vocab < MIN_VOCAB:
        raise SlmlabError(
            f"--vocab {vocab} is too small: a byte-level tokenizer needs the {BYTE_ALPHABET} byte symbols, "
            f"{len(SPECIAL_TOKENS)} special tokens ({', '.join(SPECIAL_TOKENS)}) and {len(symbol_pieces())} tokens for "
            f"the symbols {' '.join(SYMBOL_TOKENS)}, plus merges: use at least {MIN_VOCAB} (e.g. 4096)"
        )


def train_tokenizer(corpus: Iterable[str | Path], out_dir: str | Path, *, vocab: int = 4096, min_frequency: int = 2,
                    overwrite: bool = False) -> TokenizerResult:
    """Train byte-level BPE on ``corpus`` files and save it to ``out_dir`` (see the module docstring).

    ``corpus``: ``.jsonl`` files of ``{"text": ...}`` records (e.g. a ``slmlab kernel corpus``
    train.jsonl) or plain UTF-8 text files (one document each). Writes ``tokenizer.json``,
    ``tokenizer_config.json`` (with the chat template) and ``special_tokens_map.json``.
    """
    from slmlab.kernel.corpus import read_texts
    from slmlab.outputs import check_output

    check_vocab(vocab)
    out = check_output(out_dir, "dir", overwrite=overwrite, what="tokenizer directory")
    texts = read_texts(corpus)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    tok = _train(texts, vocab, min_frequency)
    hf = wrap(tok)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    # transformers 5 no longer writes this file; older readers (and people) still look for it.
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "additional_special_tokens": [IM_START, IM_END]},
        indent=2) + "\n", encoding="utf-8")
    return TokenizerResult(out, len(hf), vocab, len(texts), n_bytes)


def _byte_level(text: str) -> str:
    """``text``'s UTF-8 bytes in byte-level BPE's alphabet (one printable character per byte)."""
    from slmlab.kernel.bpb import byte_symbols

    to_char = {b: c for c, b in byte_symbols().items()}
    return "".join(to_char[b] for b in text.encode("utf-8"))


def symbol_pieces() -> list[str]:
    """The byte-level strings each symbol is built from, pairwise left to right (prefixes of 2+ bytes)."""
    pieces: list[str] = []
    for s in SYMBOL_TOKENS:
        chars = _byte_level(s)
        pieces += [chars[:k] for k in range(2, len(chars) + 1) if chars[:k] not in pieces]
    return pieces


def _train(texts: list[str], vocab: int, min_frequency: int):
    """BPE on ``texts``, then the symbols' merges put first (see :func:`_force_symbols`)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # Each symbol is a pre-token of its own, so no merge can glue it to its neighbours ("?¬").
        pre_tokenizers.Split(Regex("[" + "".join(SYMBOL_TOKENS) + "]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab - len(symbol_pieces()),  # room for the symbols' own tokens
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen in the corpus or not
        show_progress=False,
    )
    # Train on the text between the symbols: the symbols are pre-tokens of their own, so this learns the
    # same merges minus the symbols' own, which _force_symbols adds (the vocabulary comes out exact).
    symbols = re.compile("[" + "".join(SYMBOL_TOKENS) + "]")
    tok.train_from_iterator((piece for text in texts for piece in symbols.split(text) if piece), trainer)
    return _force_symbols(tok)


def _force_symbols(tok):
    """Make every symbol one ordinary BPE token: its merges come first, its pieces join the vocabulary.

    Why not ``add_tokens``: an added token's text goes through the byte-level decoder, and ``¬``
    (U+00AC) is itself one of the byte alphabet's characters (it stands for the byte 0xAC), so an
    added ``¬`` would decode to a broken byte. As ordinary tokens the symbols round-trip like
    any other text; isolated by the pre-tokenizer and merged first, each one is always one token.
    """
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    forced: list[list[str]] = []
    for s in SYMBOL_TOKENS:
        chars = _byte_level(s)
        for k in range(2, len(chars) + 1):
            pair = [chars[:k - 1], chars[k - 1]]
            if pair not in forced:
                forced.append(pair)
            vocab.setdefault(chars[:k], len(vocab))
    data["model"]["merges"] = forced + [m for m in merges if m not in forced]
    return Tokenizer.from_str(json.dumps(data))


def wrap(tok):
    """A ``tokenizers.Tokenizer`` as a transformers fast tokenizer with slmlab's kernel settings."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        # transformers' default cleanup rewrites " ." as "." on decode: that would break the round trip.
        clean_up_tokenization_spaces=False,
    )


def load_kernel_tokenizer(path: str | Path):
    """The tokenizer saved in ``path``, with a clear error when the directory has none."""
    from transformers import AutoTokenizer

    p = Path(path).expanduser()
    if not p.is_dir():
        raise SlmlabError(f"tokenizer directory {p} does not exist; build one with "
                          "`slmlab kernel tokenizer CORPUS --vocab 4096 -o DIR`")
    if not (p / "tokenizer.json").is_file():
        raise SlmlabError(f"{p} has no tokenizer.json; it is not a tokenizer directory "
                          "(build one with `slmlab kernel tokenizer CORPUS --vocab 4096 -o DIR`)")
    return AutoTokenizer.from_pretrained(str(p), local_files_only=True)


__all__ = ["CHAT_TEMPLATE", "MIN_VOCAB", "SPECIAL_TOKENS", "SYMBOL_TOKENS", "TokenizerResult", "check_vocab",
           "load_kernel_tokenizer", "train_tokenizer", "wrap"]
