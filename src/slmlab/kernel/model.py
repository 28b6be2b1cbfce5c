"""The kernel model family: a Llama-style decoder whose every size follows from one knob, ``depth``.

    hidden        = 48 · depth                 (the aspect ratio: model width per layer)
    layers        = depth
    heads         = max(1, hidden // 48)       (= depth; head dimension 48; as many key/value heads)
    intermediate  = 8/3 · hidden, rounded to a multiple of 64   (= 128 · depth: SwiGLU's usual ratio)
    vocab         = len(tokenizer)             (embeddings tied to the output head)

Depth 8 gives the research notes' 384 hidden / 8 layers / 8 heads. Parameters (tied embeddings
counted once): ``vocab·hidden + layers·(4·hidden² + 3·hidden·intermediate + 2·hidden) + hidden``
= ``vocab·48·depth + 27648·depth³ + 96·depth² + 48·depth``; ``docs/kernel.md`` has a table.

Everything else is transformers' ``LlamaConfig`` default (RoPE θ 10000, RMSNorm ε 1e-5, no
biases) and transformers' initialisation: every linear layer and the shared embedding drawn from
N(0, 0.02), norms at 1. Same depth, tokenizer and seed → byte-identical ``model.safetensors``.

The result is an ordinary Hugging Face directory (``config.json``, ``model.safetensors``,
``generation_config.json``, the tokenizer files and ``kernel.json`` recording how it was made),
so :func:`slmlab.models.load` — and with it ``train``, ``eval``, ``basins``, ``steer`` and
``serve`` — loads it unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from slmlab.errors import SlmlabError

ASPECT = 48
HEAD_DIM = 48
MLP_RATIO = 8 / 3
MLP_MULTIPLE = 64
DEFAULT_CONTEXT = 2048


@dataclass(frozen=True)
class KernelSize:
    depth: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    params: int  # trainable parameters, the tied embedding counted once


def kernel_size(depth: int, vocab: int) -> KernelSize:
    """The sizes ``depth`` implies (see the module docstring)."""
    if not isinstance(depth, int) or depth < 1:
        raise SlmlabError(f"--depth must be a positive whole number (1, 2, 4, 8, ...), got {depth!r}")
    if vocab < 1:
        raise SlmlabError(f"the vocabulary must not be empty, got {vocab}")
    hidden = ASPECT * depth
    heads = max(1, hidden // HEAD_DIM)
    intermediate = max(MLP_MULTIPLE, round(MLP_RATIO * hidden / MLP_MULTIPLE) * MLP_MULTIPLE)
    per_layer = 4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden
    params = vocab * hidden + depth * per_layer + hidden
    return KernelSize(depth, hidden, depth, heads, intermediate, vocab, params)


def kernel_config(depth: int, tokenizer, *, context: int = DEFAULT_CONTEXT):
    """The ``LlamaConfig`` of depth ``depth`` for ``tokenizer`` (vocab and special ids from it)."""
    from transformers import LlamaConfig

    if context < 8:
        raise SlmlabError(f"--context must be at least 8 tokens, got {context}")
    size = kernel_size(depth, len(tokenizer))
    return LlamaConfig(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=context,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@dataclass(frozen=True)
class InitResult:
    out_dir: Path
    size: KernelSize
    seed: int


def build_kernel(depth: int, tokenizer, *, seed: int = 0, context: int = DEFAULT_CONTEXT):
    """A freshly initialised kernel model; its weights depend only on (depth, vocab, seed)."""
    import torch
    from transformers import LlamaForCausalLM

    config = kernel_config(depth, tokenizer, context=context)
    # fork_rng: building a model must not move the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def init_kernel(depth: int, tokenizer_dir: str | Path, out_dir: str | Path, *, seed: int = 0,
                context: int = DEFAULT_CONTEXT, overwrite: bool = False) -> InitResult:
    """Write a new kernel model (weights, config, tokenizer) to ``out_dir``; see the module docstring."""
    from slmlab.kernel.tokenizer import IM_END, load_kernel_tokenizer
    from slmlab.outputs import check_output
    from slmlab.train.record import save_pretrained_atomically

    kernel_size(depth, 1)  # a bad depth fails before anything loads
    out = check_output(out_dir, "dir", overwrite=overwrite, what="model directory")
    tokenizer = load_kernel_tokenizer(tokenizer_dir)
    model = build_kernel(depth, tokenizer, seed=seed, context=context)
    # Generation stops at EOS, or at the end of a chat turn.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.parent.mkdir(parents=True, exist_ok=True)
    save_pretrained_atomically(model, tokenizer, out)
    size = kernel_size(depth, len(tokenizer))
    assert size.params == sum(p.numel() for p in model.parameters()), "the size formula disagrees with the model"
    record = {"family": "slmlab-kernel", "seed": seed, "context": context, "tokenizer": str(tokenizer_dir), **asdict(size)}
    (out / "kernel.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return InitResult(out, size, seed)


def size_table(depths: tuple[int, ...] = (1, 2, 4, 6, 8, 12, 16), vocabs: tuple[int, ...] = (4096, 8192, 32000)) -> str:
    """A Markdown table of the family's sizes (the one in docs/kernel.md)."""
    head = "| depth | hidden | layers | heads | intermediate | " + " | ".join(f"params @ vocab {v}" for v in vocabs) + " |"
    rows = [head, "|" + "---|" * (5 + len(vocabs))]
    for d in depths:
        s = kernel_size(d, vocabs[0])
        rows.append(f"| {d} | {s.hidden} | {s.layers} | {s.heads} | {s.intermediate} | "
                    + " | ".join(f"{kernel_size(d, v).params / 1e6:.2f}M" for v in vocabs) + " |")
    return "\n".join(rows)


__all__ = ["DEFAULT_CONTEXT", "InitResult", "KernelSize", "build_kernel", "init_kernel", "kernel_config", "kernel_size",
           "size_table"]
