"""Concept vectors: one forward per unique text, hooks on decoder blocks, diff-of-means per (layer, concept).

Outputs (in ``OUT``):

* ``readout.safetensors`` — ``layer_<idx>.vectors``: float32 ``[n_concepts, hidden]``, unit rows.
* ``readout.json`` — the manifest (concepts, layers, hidden size, pooling, method, relative depths,
  model and corpus hashes, per-layer residual norms; calibration results are added later).
* ``activations.safetensors`` — the pooled activation of every unique text at every target layer
  (``layer_<idx>.acts``) and, where the layer has a standard attention block, the pooled input of its
  output projection (``layer_<idx>.heads``), so ``steer quality`` needs no second model run.

Layer ``i`` means the output of decoder block ``i`` (0-based), i.e. the residual stream after
that block: ``hidden_states[i + 1]`` in Hugging Face terms, and ``direction.<i>`` in a llama.cpp
control vector.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from slmlab.errors import SlmlabError
from slmlab.progress import ProgressFactory, tracker
from slmlab.steer.corpus import Corpus, load_corpus

FORMAT = "slmlab.steer.readout/1"
POOLINGS = ("last", "mean")
METHODS = ("diff-of-means", "pca")
READOUT_FILE, MANIFEST_FILE, ACTS_FILE = "readout.safetensors", "readout.json", "activations.safetensors"

# Known shapes, so preflight never needs a model load for the built-in specs.
_KNOWN = {
    "smollm2-135m": dict(num_hidden_layers=30, hidden_size=576, model_type="llama", num_attention_heads=9, head_dim=64),
}


# --------------------------------------------------------------------------- model shape / layers


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    hidden_size: int
    model_type: str


def model_shape(spec: str) -> ModelShape:
    """Layer count and hidden size of ``spec`` without loading weights (config only)."""
    from slmlab import models

    if spec == models.TINY_SPEC:
        c = models.TINY_CONFIG
        return ModelShape(c["num_hidden_layers"], c["hidden_size"], "llama")
    if spec == models.EMBEDDED_SPEC:
        cfg_file = models.embedded_cache_dir() / "config.json"
        c = json.loads(cfg_file.read_text()) if cfg_file.is_file() else _KNOWN[spec]
        return ModelShape(int(c["num_hidden_layers"]), int(c["hidden_size"]), c.get("model_type", "llama"))
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(models._resolve_external(spec), local_files_only=True)
    cfg = getattr(cfg, "text_config", None) or cfg  # multimodal wrappers keep the decoder config inside
    return ModelShape(int(cfg.num_hidden_layers), int(cfg.hidden_size), str(cfg.model_type))


def parse_layers(text: str | None, n_layers: int) -> list[int]:
    """``all`` | comma list of indices (negative counts from the end) and ``a:b`` ranges (end exclusive).

    Raises SlmlabError for anything out of ``[-n_layers, n_layers)``.
    """
    text = (text or "all").strip()
    if text == "all":
        return list(range(n_layers))
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        bad = f"bad layer {part!r} in --layers {text!r}: use 'all', indices like 8,12,-1 or ranges like 4:20"
        if ":" in part:
            a, b = part.split(":", 1)
            try:
                lo = int(a) if a.strip() else 0
                hi = int(b) if b.strip() else n_layers
            except ValueError:
                raise SlmlabError(bad) from None
            for x in (lo, hi):
                if not -n_layers <= x <= n_layers:
                    raise SlmlabError(_range_msg(x, n_layers))
            idx = list(range(n_layers))[lo:hi]
            if not idx:
                raise SlmlabError(f"layer range {part!r} selects no layers (the model has {n_layers})")
            out.extend(idx)
            continue
        try:
            i = int(part)
        except ValueError:
            raise SlmlabError(bad) from None
        if not -n_layers <= i < n_layers:
            raise SlmlabError(_range_msg(i, n_layers))
        out.append(i % n_layers)
    if not out:
        raise SlmlabError(f"--layers {text!r} selects no layers")
    return sorted(set(out))


def _range_msg(i: int, n: int) -> str:
    return f"layer {i} is out of range: the model has {n} decoder layers (valid: 0..{n - 1}, or -{n}..-1 from the end)"


def relative_depth(layer: int, n_layers: int) -> float:
    """Share of the decoder blocks computed at this layer's output: (layer + 1) / n_layers."""
    return (layer + 1) / n_layers


def find_decoder_layers(model):
    """The ``nn.ModuleList`` of decoder blocks, found by walking the model (any HF decoder, PEFT-wrapped too).

    Prefers a list whose length equals ``config.num_hidden_layers`` and whose entries share one class;
    among candidates, the longest.
    """
    import torch.nn as nn

    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    want = getattr(cfg, "num_hidden_layers", None)
    candidates = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and len({type(m) for m in mod}) == 1:
            candidates.append((len(mod) == want, len(mod), name, mod))
    if not candidates:
        raise SlmlabError(f"could not find the decoder blocks of {type(model).__name__}: no nn.ModuleList of identical modules")
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    return candidates[0][3]


def attention_out_proj(block):
    """The attention output projection of a decoder block (its input is the concat of per-head outputs), or None."""
    import torch.nn as nn

    for path in ("self_attn.o_proj", "self_attn.out_proj", "attn.o_proj", "attn.out_proj", "attention.dense", "attn.c_proj"):
        mod = block
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if mod is not None and isinstance(mod, nn.Linear):
            return mod
    return None


def attention_heads(model, block) -> tuple[int, int] | None:
    """(n_heads, head_dim) of a block's standard attention, or None (hybrid / non-standard layers)."""
    proj = attention_out_proj(block)
    if proj is None:
        return None
    cfg = getattr(model.config, "text_config", None) or model.config
    n_heads = getattr(cfg, "num_attention_heads", None)
    if not n_heads or proj.in_features % n_heads:
        return None
    return n_heads, proj.in_features // n_heads


def mlp_down_proj(block, hidden: int):
    """The MLP's down projection (a Linear mapping intermediate -> hidden), or None."""
    import torch.nn as nn

    for path in ("mlp.down_proj", "mlp.c_proj", "mlp.fc2", "mlp.dense_4h_to_h", "feed_forward.w2"):
        mod = block
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, nn.Linear) and mod.out_features == hidden:
            return mod
    return None


# --------------------------------------------------------------------------- fingerprint


def model_fingerprint(model) -> str:
    """sha256 over the config (minus paths/versions/dtype) and four parameter tensors.

    The tensors (first, two interior, last in parameter order) contribute their name, shape and
    the bytes of their first 65,536 values rounded to bfloat16, so the same weights loaded as
    float32 or bfloat16 hash the same. Cheap (milliseconds) and different for any retrain.
    """
    import torch

    cfg = model.config.to_dict()
    for k in ("_name_or_path", "name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache",
              "architectures", "_attn_implementation", "_attn_implementation_autoset"):
        cfg.pop(k, None)
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode("utf-8"))
    params = list(model.named_parameters())
    picks = sorted({0, len(params) // 3, (2 * len(params)) // 3, len(params) - 1})
    for i in picks:
        name, p = params[i]
        flat = p.detach().reshape(-1)[:65536].to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes()
        h.update(name.encode() + str(tuple(p.shape)).encode() + flat)
    return h.hexdigest()


# --------------------------------------------------------------------------- activations


class _Stop(Exception):
    """Raised from the deepest target hook: nothing after it (later blocks, lm_head) is needed."""


@dataclass
class Activations:
    acts: dict[int, "object"]  # layer -> float32 tensor [n_texts, hidden]
    heads: dict[int, "object"] = field(default_factory=dict)  # layer -> [n_texts, n_heads * head_dim]
    texts_forwarded: int = 0
    batches: int = 0
    tokens: int = 0
    seconds: float = 0.0


def _pool(h, mask, pooling: str):
    import torch

    if pooling == "mean":
        m = mask.to(h.dtype).unsqueeze(-1)
        return (h * m).sum(1) / m.sum(1).clamp_min(1)
    pos = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.long() * (pos + 1)).argmax(1)  # last non-pad index, for either padding side
    return h[torch.arange(h.shape[0], device=h.device), last]


def collect_activations(
    model,
    tokenizer,
    texts: list[str],
    layers: list[int],
    *,
    pooling: str = "last",
    batch_size: int = 8,
    max_tokens: int = 512,
    heads: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> Activations:
    """Pooled residual (block output) of each text at each layer; one forward per text.

    Texts are batched by length (right padding, so positions match an unpadded run) and the
    forward stops after the deepest target layer. ``on_batch(done, total)`` reports progress.
    """
    import torch

    if pooling not in POOLINGS:
        raise SlmlabError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    if any(not t for t in texts):
        raise SlmlabError("empty text given to collect_activations (empty corpus files must be skipped)")
    blocks = find_decoder_layers(model)
    for i in layers:
        if not 0 <= i < len(blocks):
            raise SlmlabError(_range_msg(i, len(blocks)))
    deepest = max(layers)
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    out: dict[int, list] = {i: [None] * len(texts) for i in layers}
    head_out: dict[int, list] = {}
    state: dict = {}
    handles = []

    def block_hook(idx):
        def hook(_mod, _args, output):
            h = output[0] if isinstance(output, tuple) else output
            pooled = _pool(h.detach().float(), state["mask"], pooling)
            for row, t in enumerate(state["rows"]):
                out[idx][t] = pooled[row]
            if idx == deepest:
                raise _Stop
        return hook

    def head_hook(idx):
        def hook(_mod, args):
            pooled = _pool(args[0].detach().float(), state["mask"], pooling)
            for row, t in enumerate(state["rows"]):
                head_out[idx][t] = pooled[row]
        return hook

    try:
        for i in layers:
            handles.append(blocks[i].register_forward_hook(block_hook(i)))
            if heads and attention_heads(model, blocks[i]) is not None:
                head_out[i] = [None] * len(texts)
                handles.append(attention_out_proj(blocks[i]).register_forward_pre_hook(head_hook(i)))
        res = Activations(acts={})
        side = tokenizer.padding_side
        tokenizer.padding_side = "right"
        start = time.perf_counter()
        n_batches = (len(texts) + batch_size - 1) // batch_size
        try:
            for b in range(n_batches):
                rows = order[b * batch_size : (b + 1) * batch_size]
                enc = tokenizer([texts[t] for t in rows], return_tensors="pt", padding=True, truncation=True, max_length=max_tokens)
                state.update(mask=enc["attention_mask"], rows=rows)
                try:
                    with torch.no_grad():
                        model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], use_cache=False)
                except _Stop:
                    pass
                res.texts_forwarded += len(rows)
                res.batches += 1
                res.tokens += int(enc["attention_mask"].sum())
                if on_batch:
                    on_batch(b + 1, n_batches)
        finally:
            tokenizer.padding_side = side
    finally:
        for hd in handles:
            hd.remove()
    res.seconds = time.perf_counter() - start
    res.acts = {i: torch.stack(out[i]) for i in layers}
    res.heads = {i: torch.stack(v) for i, v in head_out.items()}
    return res


# --------------------------------------------------------------------------- vectors


def _unit(v):
    n = v.norm()
    return v / n if float(n) > 0 else v


def diff_of_means(acts, pos: list[int], neg: list[int]):
    """Unit vector along mean(acts[pos]) - mean(acts[neg])."""
    return _unit(acts[pos].mean(0) - acts[neg].mean(0))


def pca_of_differences(acts, corpus: Corpus, concept: str):
    """First principal direction of the concept's difference vectors (uncentred SVD).

    A framing's difference is framing minus its scenario's baseline (the paired contrast); a
    story's difference is story minus the mean of the concept's negatives. The sign is chosen so
    the mean difference projects positively.
    """
    import torch

    neg_mean = acts[corpus.negatives(concept)].mean(0)
    base = {it.scenario: it.unit for it in corpus.items if it.kind == "baseline"}
    diffs = []
    for it in corpus.positive_items(concept):
        ref = acts[base[it.scenario]] if it.kind == "framing" else neg_mean
        diffs.append(acts[it.unit] - ref)
    d = torch.stack(diffs)
    _, _, vh = torch.linalg.svd(d, full_matrices=False)
    v = vh[0]
    if float(d.mean(0) @ v) < 0:
        v = -v
    return _unit(v)


def concept_vectors(acts, corpus: Corpus, method: str = "diff-of-means"):
    """``[n_concepts, hidden]`` unit rows, in ``corpus.concepts`` order."""
    import torch

    if method not in METHODS:
        raise SlmlabError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    rows = []
    for c in corpus.concepts:
        if method == "pca":
            rows.append(pca_of_differences(acts, corpus, c))
        else:
            rows.append(diff_of_means(acts, corpus.positives(c), corpus.negatives(c)))
    return torch.stack(rows).contiguous()


# --------------------------------------------------------------------------- readout files


@dataclass
class Readout:
    dir: Path
    manifest: dict
    vectors: dict[int, "object"]  # layer -> [n_concepts, hidden]

    @property
    def concepts(self) -> list[str]:
        return list(self.manifest["concepts"])

    @property
    def layers(self) -> list[int]:
        return [int(x) for x in self.manifest["layers"]]

    def concept_index(self, concept: str) -> int:
        from slmlab.errors import unknown_name_message

        if concept not in self.manifest["concepts"]:
            raise SlmlabError(unknown_name_message("concept", concept, self.concepts))
        return self.concepts.index(concept)

    def vector(self, concept: str, layer: int):
        if layer not in self.vectors:
            raise SlmlabError(f"layer {layer} is not in {self.dir / READOUT_FILE} (has {', '.join(map(str, self.layers))})")
        return self.vectors[layer][self.concept_index(concept)]

    def check_model(self, model, spec: str | None = None) -> None:
        """Refuse a model whose fingerprint differs from the one the vectors were extracted from."""
        want = self.manifest["model"]["hash"]
        got = model_fingerprint(model)
        if got != want:
            raise SlmlabError(
                f"{self.dir} holds vectors for another model: extracted from {self.manifest['model'].get('spec')!r} "
                f"(hash {want[:16]}), but {spec or 'this model'!r} hashes to {got[:16]}. "
                f"Re-extract with: slmlab steer extract CORPUS --model {spec or 'SPEC'} -o DIR"
            )


def write_manifest(out_dir: str | Path, manifest: dict) -> None:
    from slmlab.io import atomic_write_text

    atomic_write_text(Path(out_dir) / MANIFEST_FILE, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def load_readout(out_dir: str | Path) -> Readout:
    from safetensors.torch import load_file

    d = Path(out_dir).expanduser()
    mf, vf = d / MANIFEST_FILE, d / READOUT_FILE
    for f in (mf, vf):
        if not f.is_file():
            raise SlmlabError(f"{f} is missing: is {d} the -o directory of 'slmlab steer extract'?")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SlmlabError(f"{mf}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise SlmlabError(f"{mf}: unknown format {manifest.get('format')!r} (expected {FORMAT!r})")
    tensors = load_file(str(vf))
    vectors = {}
    for layer in manifest["layers"]:
        key = f"layer_{layer}.vectors"
        if key not in tensors:
            raise SlmlabError(f"{vf} has no tensor {key!r} although {mf} lists layer {layer}")
        t = tensors[key]
        if tuple(t.shape) != (len(manifest["concepts"]), manifest["hidden_size"]):
            raise SlmlabError(f"{vf}: {key} has shape {tuple(t.shape)}, manifest says "
                              f"({len(manifest['concepts'])}, {manifest['hidden_size']})")
        vectors[int(layer)] = t
    return Readout(d, manifest, vectors)


def load_activations(out_dir: str | Path) -> dict:
    """``{"acts": {layer: [n_texts, hidden]}, "heads": {layer: [n_texts, n_heads*head_dim]}}``."""
    from safetensors.torch import load_file

    f = Path(out_dir) / ACTS_FILE
    if not f.is_file():
        raise SlmlabError(f"{f} is missing; re-run 'slmlab steer extract'")
    t = load_file(str(f))
    acts = {int(k.split("_")[1].split(".")[0]): v for k, v in t.items() if k.endswith(".acts")}
    heads = {int(k.split("_")[1].split(".")[0]): v for k, v in t.items() if k.endswith(".heads")}
    return {"acts": acts, "heads": heads}


# --------------------------------------------------------------------------- the stage


@dataclass
class Plan:
    """Everything preflight established, before any weights load."""

    corpus: Corpus
    shape: ModelShape
    layers: list[int]


def preflight(corpus_dir: str | Path, model_spec: str, layers: str | None, pooling: str, method: str) -> Plan:
    """Validate corpus, options and layer indices; reads the model config only (never weights)."""
    if pooling not in POOLINGS:
        raise SlmlabError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    if method not in METHODS:
        raise SlmlabError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    corpus = load_corpus(corpus_dir)
    shape = model_shape(model_spec)
    return Plan(corpus, shape, parse_layers(layers, shape.n_layers))


def extract(
    corpus_dir: str | Path,
    model_spec: str,
    out_dir: str | Path,
    *,
    layers: str | None = None,
    pooling: str = "last",
    method: str = "diff-of-means",
    batch_size: int = 8,
    max_tokens: int = 512,
    console=None,
    loaded=None,
    overwrite: bool = True,
    progress: ProgressFactory | None = None,
) -> dict:
    """Run the whole extraction; returns the manifest written to ``OUT/readout.json``.

    ``loaded`` = an already loaded ``(model, tokenizer)`` (tests, benchmarks); otherwise
    ``slmlab.models.load(model_spec)`` after preflight. ``console`` (rich) prints what is done;
    ``progress`` (e.g. :func:`slmlab.progress.progress`) counts the forward batches.
    ``out_dir`` is checked right after preflight, before the model loads; with ``overwrite=False`` a
    non-empty one is an error.
    """
    from safetensors.torch import save

    from slmlab.io import atomic_write_bytes
    from slmlab.outputs import check_output

    plan = preflight(corpus_dir, model_spec, layers, pooling, method)
    out_dir = check_output(out_dir, "dir", overwrite=overwrite, what="output directory")
    corpus, shape = plan.corpus, plan.shape
    say = console.print if console is not None else (lambda *a, **k: None)
    for w in corpus.warnings:
        say(f"[yellow]warning:[/yellow] {w}")
    say(f"corpus: {len(corpus.concepts)} concepts, {len(corpus.scenarios)} scenarios, {len(corpus.items)} files, "
        f"{len(corpus.texts)} unique texts (a per-concept run would need {corpus.naive_forwards} forwards)")
    say("target layers: " + ", ".join(f"{i} ({relative_depth(i, shape.n_layers):.0%})" for i in plan.layers)
        + f" of {shape.n_layers}")

    t0 = time.perf_counter()
    if loaded is None:
        from slmlab.models import load

        model, tokenizer = load(model_spec)
    else:
        model, tokenizer = loaded
    load_seconds = time.perf_counter() - t0
    n_blocks = len(find_decoder_layers(model))
    if n_blocks != shape.n_layers:
        raise SlmlabError(f"{model_spec}: config says {shape.n_layers} layers but the model has {n_blocks} decoder blocks")

    with tracker(progress, -(-len(corpus.texts) // batch_size), "steer extract (batches)") as p:
        acts = collect_activations(model, tokenizer, corpus.texts, plan.layers, pooling=pooling,
                                   batch_size=batch_size, max_tokens=max_tokens, on_batch=p.update)

    vectors = {i: concept_vectors(acts.acts[i], corpus, method) for i in plan.layers}
    residual_norm = {str(i): float(acts.acts[i].norm(dim=1).mean()) for i in plan.layers}
    gap = {}
    for i in plan.layers:
        a = acts.acts[i]
        gap[str(i)] = {c: float((vectors[i][k]) @ (a[corpus.positives(c)].mean(0) - a[corpus.negatives(c)].mean(0)))
                       for k, c in enumerate(corpus.concepts)}

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT}
    atomic_write_bytes(out / READOUT_FILE, save({f"layer_{i}.vectors": v.float().contiguous() for i, v in vectors.items()}, metadata=meta))
    act_tensors = {f"layer_{i}.acts": a.contiguous() for i, a in acts.acts.items()}
    act_tensors.update({f"layer_{i}.heads": a.contiguous() for i, a in acts.heads.items()})
    atomic_write_bytes(out / ACTS_FILE, save(act_tensors, metadata=meta))

    heads_shape = {}
    blocks = find_decoder_layers(model)
    for i in acts.heads:
        heads_shape[str(i)] = list(attention_heads(model, blocks[i]))
    from slmlab import __version__

    manifest = {
        "format": FORMAT,
        "slmlab_version": __version__,
        "concepts": corpus.concepts,
        "layers": plan.layers,
        "n_layers": shape.n_layers,
        "hidden_size": shape.hidden_size,
        "dtype": "float32",
        "pooling": pooling,
        "method": method,
        "relative_depths": {str(i): round(relative_depth(i, shape.n_layers), 4) for i in plan.layers},
        "model": {"spec": model_spec, "model_type": getattr(model.config, "model_type", shape.model_type),
                  "hash": model_fingerprint(model), "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")},
        "corpus": {**corpus.summary(), "text_hashes": corpus.text_hashes(), "warnings": corpus.warnings},
        "residual_norm": residual_norm,
        "concept_gap": gap,
        "attention_heads": heads_shape,
        "extraction": {
            "forwards": acts.texts_forwarded,
            "batches": acts.batches,
            "tokens": acts.tokens,
            "naive_forwards": corpus.naive_forwards,
            "batch_size": batch_size,
            "max_tokens": max_tokens,
            "seconds_forward": round(acts.seconds, 3),
            "seconds_model_load": round(load_seconds, 3),
        },
        "calibration": {},
    }
    write_manifest(out, manifest)
    say(f"[green]wrote[/green] {out / READOUT_FILE} ({len(corpus.concepts)} concepts x {len(plan.layers)} layers), "
        f"{acts.texts_forwarded} forwards in {acts.seconds:.1f}s")
    return manifest


def check_corpus_matches(readout: Readout, corpus: Corpus) -> None:
    """Refuse a corpus whose hash differs from the one the vectors were extracted from."""
    want = readout.manifest["corpus"]["sha256"]
    if corpus.sha256 != want:
        raise SlmlabError(
            f"corpus {corpus.root} (hash {corpus.sha256[:16]}) is not the corpus {readout.dir} was extracted from "
            f"({readout.manifest['corpus']['path']}, hash {want[:16]}); re-run 'slmlab steer extract' first"
        )

