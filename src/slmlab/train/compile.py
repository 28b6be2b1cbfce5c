"""Opt-in ``torch.compile`` of the decoder layers (``compile: true`` in a training config).

Regional compilation: each decoder layer is compiled on its own (``layer.compile``) rather than
the whole model, so the thirty identical layers of SmolLM2 share one compiled graph and the
compile time is that of one layer. ``dynamic=True`` because packed rows change width from step
to step; without it every new width would recompile.

It is off by default: on CPU the first steps pay the compile time, and whether it ever pays
back depends on the machine (``benchmarks/train_vs_trl.py --compile`` measures the compile
time and the per-step gain; docs/training.md has the figures).
"""

from __future__ import annotations

from torch import nn


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a causal LM, inside a PeftModel or not."""
    from peft import PeftModel

    core = model.get_base_model() if isinstance(model, PeftModel) else model
    layers = getattr(core.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"compile: true needs a decoder with a `layers` list; {type(core).__name__} has none")
    return layers


def compile_layers(model: nn.Module) -> int:
    """Compile every decoder layer in place (lazily: the work happens on the first forward). Returns the count."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
