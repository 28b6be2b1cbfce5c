"""Using concept vectors: add them to the residual stream while generating, and read them out.

``steering(model, {layer: v}, alpha)`` is a context manager that adds ``alpha * v`` to the output of
each chosen decoder block (the residual stream after it) on every forward inside the block, and
always removes its hooks on exit, exception or not (the pattern of lm-eval's ``hf_steered``).

``positions``:

* ``"all"`` — every position of every forward (prompt and generated tokens).
* ``"new"`` — only positions that predict a new token: the last position of a multi-token forward
  (the prompt pass) and every single-token forward (cached decoding steps). The prompt's own
  residuals stay unsteered.

``readout(model, tokenizer, prompt, readout_dir)`` generates greedily, then reads each generated
token's residual at every readout layer and projects it on every concept vector (unit rows), so a
score is "how far along concept c this token's residual lies" in the residual's own units.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from slmlab.errors import SlmlabError

POSITIONS = ("all", "new")


@contextlib.contextmanager
def steering(model, vectors: dict, alpha: float, positions: str = "all"):
    """Add ``alpha * vectors[layer]`` to decoder block ``layer``'s output inside the ``with`` block.

    ``vectors`` maps a layer index (negative counts from the end) to a ``[hidden]`` tensor or array.
    An unknown layer, a wrong shape or an unknown ``positions`` raises before any hook is added.
    """
    import torch

    from slmlab.steer.extract import _range_msg, find_decoder_layers

    if positions not in POSITIONS:
        raise SlmlabError(f"unknown positions {positions!r}; use one of {', '.join(POSITIONS)}")
    blocks = find_decoder_layers(model)
    n = len(blocks)
    hidden = (getattr(model.config, "text_config", None) or model.config).hidden_size
    prepared = {}
    for layer, v in vectors.items():
        if not isinstance(layer, int) or not -n <= layer < n:
            raise SlmlabError(_range_msg(layer, n) if isinstance(layer, int) else f"layer must be an int, got {layer!r}")
        t = torch.as_tensor(v).detach().reshape(-1)
        if t.numel() != hidden:
            raise SlmlabError(f"steering vector for layer {layer} has {t.numel()} values; the model's hidden size is {hidden}")
        prepared[layer % n] = t

    def make_hook(delta):
        def hook(_mod, _args, output):
            h = output[0] if isinstance(output, tuple) else output
            d = delta.to(device=h.device, dtype=h.dtype)
            if positions == "all" or h.shape[1] == 1:
                h = h + d
            else:  # "new" on a multi-token forward: only the last position predicts a new token
                h = h.clone()
                h[:, -1] += d
            return (h, *output[1:]) if isinstance(output, tuple) else h
        return hook

    handles = []
    try:
        for layer, t in prepared.items():
            handles.append(blocks[layer].register_forward_hook(make_hook(float(alpha) * t)))
        yield model
    finally:
        for h in handles:
            h.remove()


@dataclass
class ReadoutResult:
    prompt: str
    text: str
    tokens: list[int]
    token_strings: list[str]
    concepts: list[str]
    scores: dict[int, "object"] = field(default_factory=dict)  # layer -> np.ndarray [n_tokens, n_concepts]

    def mean(self, layer: int | None = None):
        """Mean score per concept over the generated tokens (``[n_concepts]``)."""
        import numpy as np

        layer = layer if layer is not None else next(iter(self.scores))
        s = self.scores[layer]
        return s.mean(0) if len(s) else np.zeros(len(self.concepts))


def token_scores(model, input_ids: list[int], start: int, layer_vectors: dict, forward_kwargs: dict | None = None):
    """Project the residual at positions ``start:`` of ``input_ids`` on each layer's vectors.

    ``layer_vectors``: layer -> ``[n_concepts, hidden]`` (unit rows). Returns layer -> ndarray
    ``[len(input_ids) - start, n_concepts]``. One forward, no steering applied here;
    ``forward_kwargs`` go to the forward (the server passes PEFT's ``adapter_names``).
    """
    import torch

    from slmlab.steer.extract import find_decoder_layers

    blocks = find_decoder_layers(model)
    got: dict = {}
    handles = []

    def hook(idx):
        def f(_mod, _args, output):
            h = output[0] if isinstance(output, tuple) else output
            got[idx] = h[0, start:].detach().float()
        return f

    try:
        for layer in layer_vectors:
            handles.append(blocks[layer].register_forward_hook(hook(layer)))
        with torch.no_grad():
            model(input_ids=torch.tensor([input_ids]), use_cache=False, **(forward_kwargs or {}))
    finally:
        for h in handles:
            h.remove()
    return {l: (got[l] @ torch.as_tensor(V).float().T).numpy() for l, V in layer_vectors.items()}


def readout(model, tokenizer, prompt: str, readout_dir, max_new_tokens: int = 32, *,
            layers: list[int] | None = None, raw: bool = False, check_model: bool = True) -> ReadoutResult:
    """Generate greedily from ``prompt`` and score every generated token on every concept.

    ``readout_dir`` is a ``steer extract`` output (or an already loaded ``Readout``). The model must
    be the one the vectors were extracted from (checked by fingerprint unless ``check_model=False``).
    Steering, if any, is whatever the caller wraps around this call; the scoring forward itself runs
    inside the same context, so under steering the scores include the added vector.
    """
    from slmlab.evaluate.generate import format_prompt, generate
    from slmlab.steer.extract import Readout, load_readout

    ro = readout_dir if isinstance(readout_dir, Readout) else load_readout(readout_dir)
    if check_model:
        ro.check_model(model)
    layers = layers or ro.layers
    for l in layers:
        if l not in ro.vectors:
            raise SlmlabError(f"layer {l} is not in {ro.dir} (has {', '.join(map(str, ro.layers))})")
    text = format_prompt(tokenizer, prompt, raw=raw)
    g = generate(model, tokenizer, [text], max_new_tokens=max_new_tokens).generations[0]
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    scores = token_scores(model, prompt_ids + g.tokens, len(prompt_ids), {l: ro.vectors[l] for l in layers}) if g.tokens else \
        {l: __import__("numpy").zeros((0, len(ro.concepts))) for l in layers}
    return ReadoutResult(prompt=prompt, text=g.text, tokens=list(g.tokens),
                         token_strings=[tokenizer.decode([t]) for t in g.tokens], concepts=ro.concepts, scores=scores)


def load_vectors(readout_dir: str | Path, concept: str, layers: list[int] | None = None) -> dict:
    """``{layer: [hidden] tensor}`` for one concept, ready for :func:`steering`."""
    from slmlab.steer.extract import load_readout

    ro = load_readout(readout_dir)
    return {l: ro.vector(concept, l) for l in (layers or ro.layers)}


def export_gguf(readout_dir: str | Path, concept: str, out: str | Path, *, layers: list[int] | None = None,
                scale: float = 1.0, overwrite: bool = True) -> dict:
    """Write one concept as a llama.cpp / repeng control vector (GGUF).

    The format repeng writes and llama.cpp's ``--control-vector`` reads: architecture
    ``controlvector``, ``controlvector.model_hint`` (the model type, e.g. ``llama``),
    ``controlvector.layer_count`` (the number of directions) and one float32 tensor
    ``direction.<layer>`` per layer, where ``<layer>`` is the decoder block whose output it is added to
    (our layer index). llama.cpp never steers block 0, so layer 0 is left out (reported in
    ``skipped``). ``scale`` multiplies the unit vectors; llama.cpp's ``--control-vector-scaled
    FILE:S`` multiplies again at run time, so alpha = scale x S. With ``overwrite=False`` an
    existing non-empty ``out`` is an error (checked before anything is read).
    """
    import numpy as np

    from slmlab.outputs import check_output
    from slmlab.steer.extract import load_readout

    out = check_output(out, "file", overwrite=overwrite, what="control vector")
    ro = load_readout(readout_dir)
    ro.concept_index(concept)
    chosen = layers if layers else ro.layers
    for l in chosen:
        if l not in ro.vectors:
            raise SlmlabError(f"layer {l} is not in {ro.dir} (has {', '.join(map(str, ro.layers))})")
    skipped = [l for l in chosen if l == 0]
    chosen = [l for l in chosen if l != 0]
    if not chosen:
        raise SlmlabError("no layer left to export: llama.cpp never applies a control vector to layer 0")
    import gguf

    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "controlvector")
    hint = ro.manifest["model"].get("model_type") or "llama"
    writer.add_string("controlvector.model_hint", hint)
    writer.add_uint32("controlvector.layer_count", len(chosen))
    for l in chosen:
        writer.add_tensor(f"direction.{l}", (ro.vector(concept, l).float().numpy() * scale).astype(np.float32))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    tmp.replace(out)
    return {"path": str(out), "concept": concept, "layers": chosen, "skipped": skipped, "model_hint": hint, "scale": scale,
            "calibration": ro.manifest.get("calibration", {}).get(concept)}
