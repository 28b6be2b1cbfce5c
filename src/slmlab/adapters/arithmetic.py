"""Merge, negate and inspect LoRA adapters through PEFT's ``add_weighted_adapter``.

The combination itself is PEFT's (0.21.2, ``LoraModel.add_weighted_adapter``); this module checks
the inputs before any model loads, loads the base once with every input as a named adapter, and
writes the new adapter as an ordinary flat PEFT directory, atomically (a temp dir next to OUT,
then a rename).

Notes on PEFT's behaviour that shape the checks here:

* ``linear``, ``ties``, ``dare_linear``, ``dare_ties`` and ``magnitude_prune`` combine the A and
  the B matrices separately, so every input must have one rank; ``cat`` stacks them (ranks add);
  the ``*svd`` methods sum the full deltas and re-factorise them to ``svd_rank``.
* With a single input PEFT always uses ``linear``, whatever was asked.
* ``density`` is used by ties, dare and magnitude_prune (and their svd variants); without it they fail
  deep inside PEFT, so it is required here, and refused where PEFT would ignore it.
* The new adapter gets ``r == lora_alpha`` because every path folds each input's scale into the
  weights: its own scale must be 1. PEFT 0.21.2 copies ``use_rslora`` from the first input, which
  makes that scale ``sqrt(r)`` (huggingface/peft#3449); the written config sets ``use_rslora``
  false and ``lora_alpha`` = ``r``, so the file means what the weights say.
* ``negate`` is ``linear`` with weight -1 on one adapter: A is scaled by ``-sqrt(s)``, B by
  ``sqrt(s)`` (s = the input's scale) and the new scale is 1, so ΔW' = −s·B@A = −ΔW, up to float
  rounding (bitwise when s = 1). ``cat`` cannot be used on one adapter (PEFT turns it into linear).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slmlab.errors import SlmlabError, unknown_name_message
from slmlab.outputs import check_output

# PEFT 0.21.2's ``combination_type`` values (a test checks this list against PEFT's signature).
METHODS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd",
           "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd")
EQUAL_RANK_METHODS = ("linear", "ties", "dare_ties", "dare_linear", "magnitude_prune")
DENSITY_METHODS = ("ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd", "dare_linear_svd",
                   "magnitude_prune", "magnitude_prune_svd")
SIGN_METHODS = ("ties", "ties_svd", "dare_ties", "dare_ties_svd")
SIGN_CHOICES = ("total", "frequency")

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PROVENANCE_FILE = "merge.json"
# PEFT saves the adapter named "default" at the top of the save directory; any other name goes
# into a subdirectory. So the inputs get other names and the result is "default".
MERGED = "default"
DARE_SEED = 0  # dare_* prune at random; a fixed seed makes a merge reproducible
# Adapter features that add_weighted_adapter does not combine (it would drop or mangle them).
_UNSUPPORTED = {
    "use_dora": "DoRA magnitude vectors",
    "lora_bias": "LoRA biases",
    "modules_to_save": "fully trained modules (modules_to_save)",
    "trainable_token_indices": "trainable tokens",
    "target_parameters": "targeted nn.Parameters",
}
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?:embedding_)?(?P<ab>[AB])(?:\.weight)?$")


@dataclass(frozen=True)
class _Input:
    """One adapter to combine: where it was given, its adapter directory, base model, seed and config."""

    given: Path
    adapter_dir: Path
    base: str | None
    seed: int | None
    config: dict


@dataclass(frozen=True)
class _Options:
    density: float | None = None
    majority_sign_method: str = "total"
    svd_rank: int | None = None


@dataclass(frozen=True)
class ModuleNorm:
    """One adapted module: its rank, scale (alpha/r, or alpha/sqrt(r) with rsLoRA) and ‖scale·B@A‖_F."""

    module: str
    rank: int
    scale: float
    norm: float


@dataclass(frozen=True)
class AdapterInfo:
    """What :func:`info` reports about an adapter directory (or a run's adapter)."""

    path: str
    base_model: str | None
    seed: int | None
    peft_type: str
    r: int
    lora_alpha: float
    use_rslora: bool
    ranks: list[int]
    target_modules: list[str] | str
    n_params: int
    modules: list[ModuleNorm]
    total_norm: float
    provenance: dict | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- public API


def merge(
    adapters: Sequence[str | Path],
    weights: Sequence[float] | None = None,
    method: str = "linear",
    *,
    out: str | Path,
    density: float | None = None,
    majority_sign_method: str = "total",
    svd_rank: int | None = None,
    overwrite: bool = False,
    model: str | None = None,
) -> Path:
    """Combine ``adapters`` (adapter or run directories) with ``weights`` (default: 1 each) by ``method``.

    ``method`` is one of :data:`METHODS` (PEFT's ``combination_type``); ``density`` is required by the
    ties, dare and magnitude_prune methods; ``svd_rank`` sets the rank of the ``*svd`` methods
    (default: the largest input rank). All inputs must come from one base model (``model``, default
    the first input's). Writes a flat PEFT adapter directory plus ``merge.json`` to ``out`` and returns it.
    """
    options = _Options(density, majority_sign_method, svd_rank)
    paths = [adapters] if isinstance(adapters, str | Path) else list(adapters)
    weights = _check_args(paths, weights, method, options)
    return _arithmetic("merge", paths, weights, method, options, out=out, overwrite=overwrite, model=model)


def negate(adapter: str | Path, out: str | Path, *, overwrite: bool = False, model: str | None = None) -> Path:
    """Write the adapter whose delta is minus ``adapter``'s (PEFT ``linear`` with weight -1); return ``out``."""
    return _arithmetic("negate", [adapter], [-1.0], "linear", _Options(), out=out, overwrite=overwrite, model=model)


def info(adapter: str | Path) -> AdapterInfo:
    """Base model, rank(s), alpha, targets, parameter count and per-module ‖ΔW‖_F of an adapter or run directory."""
    from safetensors.torch import load_file

    inp = _read_input(adapter)
    weights_path = inp.adapter_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise SlmlabError(f"{inp.adapter_dir}: no {WEIGHTS_FILE} (only safetensors adapters are read)")
    tensors = load_file(str(weights_path))
    modules = _module_norms(tensors, inp.config)
    cfg = inp.config
    targets = cfg.get("target_modules")
    return AdapterInfo(
        path=str(inp.adapter_dir), base_model=inp.base, seed=inp.seed, peft_type=str(cfg.get("peft_type")),
        r=int(cfg.get("r", 8)), lora_alpha=float(cfg.get("lora_alpha", 8)), use_rslora=bool(cfg.get("use_rslora")),
        ranks=sorted({m.rank for m in modules}),
        target_modules=targets if isinstance(targets, str) else sorted(targets or []),
        n_params=sum(t.numel() for t in tensors.values()), modules=modules,
        total_norm=math.sqrt(sum(m.norm**2 for m in modules)), provenance=_read_provenance(inp.adapter_dir),
    )


# --------------------------------------------------------------------------- checks (before any model loads)


def _check_args(paths: list, weights: Sequence[float] | None, method: str, options: _Options) -> list[float]:
    """Validate the flags; return the weights as floats (default: 1.0 per adapter)."""
    if not paths:
        raise SlmlabError("give at least one adapter to merge")
    if method not in METHODS:
        raise SlmlabError(unknown_name_message("--method", method, list(METHODS)))
    if len(paths) == 1 and method != "linear":
        raise SlmlabError(f"--method {method} needs two or more adapters (with one, PEFT always uses linear: "
                          "it only scales); pass --method linear, or use 'slmlab adapters negate'")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths):
        raise SlmlabError(f"--weights has {len(weights)} value(s) for {len(paths)} adapter(s); give one weight per adapter")
    if not all(math.isfinite(w) for w in weights):
        raise SlmlabError(f"--weights must be finite numbers, got {weights}")
    _check_density(method, options.density)
    if options.majority_sign_method not in SIGN_CHOICES:
        raise SlmlabError(f"--majority-sign must be one of {', '.join(SIGN_CHOICES)}, got {options.majority_sign_method!r}")
    if options.svd_rank is not None:
        if not method.endswith("svd"):
            raise SlmlabError(f"--svd-rank only applies to the svd methods, not --method {method}")
        if options.svd_rank < 1:
            raise SlmlabError(f"--svd-rank must be at least 1, got {options.svd_rank}")
    return weights


def _check_density(method: str, density: float | None) -> None:
    if method in DENSITY_METHODS:
        if density is None:
            raise SlmlabError(f"--method {method} needs --density (the fraction of values kept, in (0, 1], e.g. 0.5)")
        if not 0 < density <= 1:
            raise SlmlabError(f"--density must be in (0, 1], got {density}")
    elif density is not None:
        raise SlmlabError(f"--density only applies to {', '.join(DENSITY_METHODS)}; --method {method} does not prune")


def _read_input(path: str | Path) -> _Input:
    """A run directory (config.yaml + adapter/) or a PEFT adapter directory, with its config read."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise SlmlabError(f"{p}: no such directory; give an adapter directory ({CONFIG_FILE}) "
                          "or a run directory (config.yaml + adapter/)")
    if (p / "config.yaml").is_file():
        return _read_run(p)
    if (p / CONFIG_FILE).is_file():
        config = _read_config(p)
        base = config.get("base_model_name_or_path")
        seed = (_read_provenance(p) or {}).get("seed")
        return _Input(p, p, base if isinstance(base, str) and base else None,
                      seed if isinstance(seed, int) else None, config)
    raise SlmlabError(f"{p}: neither a run directory (config.yaml) nor a PEFT adapter directory ({CONFIG_FILE})")


def _read_run(run: Path) -> _Input:
    from slmlab.config import load_yaml

    config = load_yaml(run / "config.yaml")
    if not isinstance(config, dict):
        raise SlmlabError(f"{run / 'config.yaml'}: expected a training config mapping")
    adapter = run / "adapter"
    if not (adapter / CONFIG_FILE).is_file():
        if (run / "model").is_dir():
            raise SlmlabError(f"{run}: a full fine-tune (model/), not an adapter; only LoRA adapters combine")
        raise SlmlabError(f"{run}: no adapter/ yet; has the run finished?")
    seed = config.get("seed", 0)
    return _Input(run, adapter, str(config.get("model", "smollm2-135m")),  # TrainConfig's default model
                  seed if isinstance(seed, int) else 0, _read_config(adapter))


def _read_config(adapter_dir: Path) -> dict:
    try:
        config = json.loads((adapter_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SlmlabError(f"{adapter_dir / CONFIG_FILE}: not a valid PEFT adapter config ({exc})") from None
    if not isinstance(config, dict):
        raise SlmlabError(f"{adapter_dir / CONFIG_FILE}: not a valid PEFT adapter config")
    return config


def _read_provenance(adapter_dir: Path) -> dict | None:
    try:
        record = json.loads((adapter_dir / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _check_supported(inp: _Input) -> None:
    """Only plain LoRA adapters: add_weighted_adapter ignores DoRA, biases, modules_to_save, ..."""
    cfg = inp.config
    if cfg.get("peft_type") != "LORA":
        raise SlmlabError(f"{inp.given}: a {cfg.get('peft_type')} adapter; only LoRA adapters combine")
    for key, what in _UNSUPPORTED.items():
        if cfg.get(key):
            raise SlmlabError(f"{inp.given}: has {what} ({key}), which PEFT's add_weighted_adapter cannot combine")


def _check_layers(inputs: list[_Input]) -> None:
    """PEFT places the new adapter with the first input's layer selection; others would be silently dropped."""
    for key in ("layers_to_transform", "layers_pattern", "exclude_modules"):
        values = [inp.config.get(key) for inp in inputs]
        if any(v != values[0] for v in values[1:]):
            i = next(i for i, v in enumerate(values) if v != values[0])
            raise SlmlabError(f"{inputs[0].given} and {inputs[i].given} differ in {key} ({values[0]!r} vs {values[i]!r}); "
                              "PEFT builds the merged adapter on the first input's layers, so the others' would be dropped")


def _check_ranks(inputs: list[_Input], method: str) -> None:
    if method not in EQUAL_RANK_METHODS:
        return
    many = len(inputs) > 1
    what = f"--method {method}" if many else "scaling or negating one adapter (PEFT's linear)"
    for inp in inputs:
        if inp.config.get("rank_pattern"):
            raise SlmlabError(f"{what} needs one rank in every module, but {inp.given} has a rank_pattern "
                              "(PEFT would write an adapter that does not load)" + ("; use --method cat or svd" if many else ""))
    ranks = [int(inp.config.get("r", 8)) for inp in inputs]
    if len(set(ranks)) > 1:
        raise SlmlabError(f"--method {method} needs adapters of one rank, got ranks {ranks}; "
                          "use --method cat (ranks add) or svd (re-factorised to --svd-rank)")


def _check_svd_rank(inputs: list[_Input], svd_rank: int | None) -> None:
    """An SVD cannot keep more singular values than the smallest adapted matrix has (read from the file headers)."""
    from safetensors import safe_open

    if svd_rank is None:
        return
    for inp in inputs:
        path = inp.adapter_dir / WEIGHTS_FILE
        if not path.is_file():
            continue
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                m = _LORA_KEY.match(key)
                if m is None:
                    continue
                shape = f.get_slice(key).get_shape()
                dim = shape[1] if m["ab"] == "A" else shape[0]  # A: (r, in), B: (out, r)
                if svd_rank > dim:
                    raise SlmlabError(f"--svd-rank {svd_rank} is larger than {m['module']}'s dimension {dim} "
                                      f"(in {inp.given}); give at most {dim}")


def _same_model(a: str, b: str) -> bool:
    """Two base-model names that may be one model. Like ``resolve_adapter``: only certain differences count."""
    from slmlab.evaluate.suites import _canonical_model
    from slmlab.models import known_specs

    ca, cb = _canonical_model(a), _canonical_model(b)
    return ca == cb or (ca not in known_specs() and cb not in known_specs())


def _common_base(inputs: list[_Input], model: str | None) -> tuple[str, int]:
    """The one model spec (and tiny-random seed) all inputs were trained on; refuse a mix."""
    from slmlab.evaluate.suites import resolve_adapter
    from slmlab.models import TINY_SPEC

    spec = model or inputs[0].base
    if spec is None:
        raise SlmlabError(f"{inputs[0].given}: its {CONFIG_FILE} names no base model; pass --model")
    origin = "--model" if model else str(inputs[0].given)
    for inp in inputs:
        if inp.base is not None and not _same_model(inp.base, spec):
            raise SlmlabError(f"{inp.given} was trained on {inp.base!r}, but {origin} is on {spec!r}; "
                              "adapters only combine on the base model they were trained on")
        resolve_adapter(inp.given, spec)
    seeds = {inp.seed for inp in inputs if inp.seed is not None}
    if spec == TINY_SPEC and len(seeds) > 1:
        raise SlmlabError(f"the inputs were trained on tiny-random with different seeds {sorted(seeds)}; "
                          "its weights depend on the seed, so the adapters fit different models")
    return spec, (seeds.pop() if seeds else 0)


# --------------------------------------------------------------------------- the work


def _arithmetic(operation: str, paths: list, weights: list[float], method: str, options: _Options, *,
                out: str | Path, overwrite: bool, model: str | None) -> Path:
    """Check everything, load once, combine with PEFT, write ``out``."""
    out = check_output(out, "dir", overwrite=overwrite)
    inputs = [_read_input(p) for p in paths]
    for inp in inputs:
        _check_supported(inp)
    _check_layers(inputs)
    _check_ranks(inputs, method)
    _check_svd_rank(inputs, options.svd_rank)
    spec, seed = _common_base(inputs, model)
    peft_model = _load_inputs(inputs, spec, seed)
    _combine(peft_model, len(inputs), weights, method, options)
    record = _provenance(operation, inputs, weights, method, options, spec, seed)
    return _write_output(peft_model, out, spec, record)


def _input_name(i: int) -> str:
    return f"input{i}"


def _load_inputs(inputs: list[_Input], spec: str, seed: int):
    """The base model once, with input i loaded as adapter ``input{i}``."""
    from peft import PeftModel

    from slmlab.models import load

    base, _ = load(spec, seed=seed)
    peft_model = None
    for i, inp in enumerate(inputs):
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(base, str(inp.adapter_dir), adapter_name=_input_name(i))
            else:
                peft_model.load_adapter(str(inp.adapter_dir), adapter_name=_input_name(i))
        except (RuntimeError, ValueError, OSError) as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise SlmlabError(f"{inp.given}: does not load onto {spec}: {first}") from None
    peft_model.eval()
    return peft_model


def _combine(peft_model, n: int, weights: list[float], method: str, options: _Options) -> None:
    """PEFT's add_weighted_adapter into the adapter named :data:`MERGED`; its errors become SlmlabErrors."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DARE_SEED)
        try:
            peft_model.add_weighted_adapter(
                [_input_name(i) for i in range(n)], weights, MERGED, combination_type=method,
                svd_rank=options.svd_rank, density=options.density,
                majority_sign_method=options.majority_sign_method,
            )
        except ValueError as exc:
            raise SlmlabError(f"--method {method}: PEFT could not combine the adapters: {exc}") from None


def _provenance(operation: str, inputs: list[_Input], weights: list[float], method: str, options: _Options,
                spec: str, seed: int) -> dict:
    import peft
    import torch

    from slmlab import __version__
    from slmlab.models import TINY_SPEC

    return {
        "operation": operation,
        "method": method,
        "weights": weights,
        "density": options.density,
        "majority_sign_method": options.majority_sign_method if method in SIGN_METHODS else None,
        "svd_rank": options.svd_rank,
        "dare_seed": DARE_SEED if method.startswith("dare") else None,
        "inputs": [{"path": str(inp.given.absolute()), "adapter": str(inp.adapter_dir.absolute()),
                    "base_model": inp.base, "seed": inp.seed, "r": inp.config.get("r"), "weight": w}
                   for inp, w in zip(inputs, weights)],
        "model": spec,
        "seed": seed if spec == TINY_SPEC else None,
        "versions": {"slmlab": __version__, "peft": peft.__version__, "torch": torch.__version__},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _write_output(peft_model, out: Path, spec: str, record: dict) -> Path:
    """Save the merged adapter flat into a temp dir next to ``out``, fix its config, then rename it into place."""
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    try:
        # save_embedding_layers=False: "auto" would ask the Hub whether the vocabulary was resized.
        peft_model.save_pretrained(str(stage), selected_adapters=[MERGED], save_embedding_layers=False)
        (stage / "README.md").unlink(missing_ok=True)  # PEFT's model card template
        config = _fix_config(stage / CONFIG_FILE, spec)
        record["rank"] = config["r"]
        (stage / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.chmod(stage, 0o755)  # mkdtemp makes it private; the output is an ordinary directory
        _place_dir(stage, out.absolute())
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def _fix_config(path: Path, spec: str) -> dict:
    """Name the base model; make the scale exactly 1 (``lora_alpha`` = ``r``, no rsLoRA: see the module notes)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(base_model_name_or_path=spec, lora_alpha=config["r"], use_rslora=False,
                  rank_pattern={}, alpha_pattern={})
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return config


def _place_dir(stage: Path, out: Path) -> None:
    """Rename ``stage`` to ``out``; an existing ``out`` (allowed by check_output) is replaced, or kept on failure."""
    old = None
    if out.exists() and any(out.iterdir()):
        old = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.old"
        os.replace(out, old)
    try:
        os.replace(stage, out)  # an empty directory is replaced by rename itself
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- info


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _module_norms(tensors: dict, config: dict) -> list[ModuleNorm]:
    """‖scale·B@A‖_F per adapted module, from the saved A and B matrices."""
    pairs: dict[str, dict] = {}
    for key, tensor in tensors.items():
        m = _LORA_KEY.match(key)
        if m:
            pairs.setdefault(m["module"], {})[m["ab"]] = tensor
    return [_module_norm(name, ab["A"], ab["B"], config)
            for name, ab in sorted(pairs.items(), key=lambda kv: _natural_key(kv[0])) if {"A", "B"} <= ab.keys()]


def _module_norm(module: str, a, b, config: dict) -> ModuleNorm:
    """``‖s·B@A‖_F`` through the r×r Gram matrices (``tr(BᵀB·AAᵀ)``), in float64."""
    import torch
    from peft.utils.other import get_pattern_key

    a2 = a.reshape(a.shape[0], -1).double()  # (r, in): Linear, Embedding and Conv alike
    b2 = b.reshape(b.shape[0], -1).double()  # (out, r)
    rank = a2.shape[0]
    alpha_pattern = config.get("alpha_pattern") or {}
    alpha = float(alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config.get("lora_alpha", 8)))
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    squared = torch.sum((b2.T @ b2) * (a2 @ a2.T)).item()
    return ModuleNorm(module, rank, scale, abs(scale) * math.sqrt(max(squared, 0.0)))


__all__ = ["METHODS", "AdapterInfo", "ModuleNorm", "info", "merge", "negate"]
