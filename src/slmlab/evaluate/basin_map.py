"""Basin maps: generate from a prompt corpus, label every generation, summarise by category.

A map is a self-describing JSON file: the model (and adapter), the corpus, the
generation settings, the basin distribution overall and per category, and every
sample with its label and evidence. ``compare`` reads only those files.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from slmlab.errors import SlmlabError, unknown_name_message
from slmlab.io import atomic_write_text, iter_jsonl
from slmlab.progress import ProgressFactory, tracker

BASINS = ("CREATIVE", "SEMANTIC_LOOP", "TOKEN_COLLAPSE", "UNKNOWN")


def corpora_dir():
    return resources.files("slmlab") / "resources" / "corpora"


def list_corpora() -> list[str]:
    return sorted(p.name.removesuffix(".jsonl") for p in corpora_dir().iterdir() if p.name.endswith(".jsonl"))


def load_prompts(corpus: str) -> list[dict]:
    """A shipped corpus name or a JSONL file; each line needs ``input`` and may have ``category`` and ``id``."""
    path = Path(corpus)
    if not path.is_file():
        shipped = corpora_dir() / f"{corpus}.jsonl"
        if not shipped.is_file():
            raise SlmlabError(unknown_name_message("corpus", corpus, list_corpora()) + " Or pass a JSONL file.")
        path = Path(str(shipped))
    prompts = []
    for line in iter_jsonl(path):
        rec = line.record
        if not isinstance(rec.get("input"), str):
            raise SlmlabError(f"{path}:{line.number}: needs a string field 'input'")
        prompts.append({"id": str(rec.get("id", line.number)), "category": str(rec.get("category", "all")), "input": rec["input"]})
    if not prompts:
        raise SlmlabError(f"{path}: no prompts")
    return prompts


def distribution(labels: list[str]) -> dict[str, float]:
    counts = Counter(labels)
    n = len(labels)
    return {b: counts.get(b, 0) / n if n else 0.0 for b in BASINS}


def load_model_with_adapter(model_spec: str, adapter: str | Path | None):
    """Base model, optionally with a LoRA adapter from a run dir or an adapter dir.

    An adapter trained on another base model is refused, naming both.
    """
    from slmlab.models import load

    model, tok = load(model_spec)
    if adapter is None:
        return model, tok
    adapter = Path(adapter)
    run_config = adapter / "config.yaml"
    if run_config.is_file():
        import yaml

        trained_on = (yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}).get("model")
        if trained_on != model_spec:
            raise SlmlabError(f"adapter {adapter} was trained on {trained_on!r}, but the model is {model_spec!r}")
        adapter = adapter / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise SlmlabError(f"{adapter}: no adapter_config.json (expected a run directory or a PEFT adapter directory)")
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter)).eval(), tok


@dataclass
class MapSettings:
    samples: int = 3
    max_new_tokens: int = 96
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    batch_size: int = 16


def map_basins(
    model_spec: str,
    *,
    adapter: str | Path | None = None,
    corpus: str = "basins49",
    settings: MapSettings | None = None,
    out: str | Path | None = None,
    model=None,
    tokenizer=None,
    overwrite: bool = True,
    progress: ProgressFactory | None = None,
    logits_processor: list | None = None,
) -> dict:
    """Generate ``samples`` completions per prompt (chat template for instruct models), label each, summarise.

    Pass ``model``/``tokenizer`` to reuse a loaded model (the quickstart does). ``out`` is checked
    before anything loads; with ``overwrite=False`` an existing non-empty one is an error.
    ``progress`` (e.g. :func:`slmlab.progress.progress`) reports the generations as they finish.
    ``logits_processor``: passed to :func:`~slmlab.evaluate.generate.generate` (e.g. the bigram sampler) and
    recorded in the map.
    """
    from dataclasses import asdict

    from slmlab.evaluate.basins import label
    from slmlab.evaluate.generate import format_prompt, generate
    from slmlab.outputs import check_output

    s = settings or MapSettings()
    prompts = load_prompts(corpus)
    if out is not None:
        out = check_output(out, "file", overwrite=overwrite, what="basin map")
    if model is None:
        model, tokenizer = load_model_with_adapter(model_spec, adapter)
    formatted = [format_prompt(tokenizer, p["input"]) for p in prompts]
    per_prompt = [{**p, "samples": []} for p in prompts]
    seconds = new_tokens = 0.0
    with tracker(progress, s.samples * len(formatted), "basins map") as p:
        for k in range(s.samples):
            # Sample k uses seed + k*1000 so samples differ but the whole map is reproducible.
            batch = generate(model, tokenizer, formatted, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                             top_p=s.top_p, seed=s.seed + 1000 * k, batch_size=s.batch_size, on_batch=p.advance,
                             logits_processor=logits_processor)
            seconds += batch.seconds
            new_tokens += batch.new_tokens
            for entry, g in zip(per_prompt, batch.generations):
                res = label(g.text, tokens=g.tokens, logprobs=g.logprobs)
                entry["samples"].append({"text": g.text, "basin": res.basin.value, "reason": res.reason, "evidence": res.evidence})
    labels = [smp["basin"] for e in per_prompt for smp in e["samples"]]
    categories = sorted({p["category"] for p in prompts})
    result = {
        "kind": "basin_map",
        "model": model_spec,
        "adapter": str(adapter) if adapter else None,
        "corpus": corpus,
        "settings": asdict(s),
        "logits_processor": [repr(x) for x in logits_processor or []],
        "n_generations": len(labels),
        "tokens_per_second": new_tokens / seconds if seconds else None,
        "overall": distribution(labels),
        "per_category": {
            c: distribution([smp["basin"] for e in per_prompt if e["category"] == c for smp in e["samples"]]) for c in categories
        },
        "prompts": per_prompt,
    }
    if out is not None:
        atomic_write_text(Path(out), json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    return result


def read_map(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SlmlabError(f"{path}: not a readable basin map ({exc})") from None
    if data.get("kind") != "basin_map":
        raise SlmlabError(f"{path}: not a basin map (expected the JSON written by `slmlab basins map`)")
    return data


def compare_maps(paths: list[str | Path]) -> list[dict]:
    """Rows of (scope, basin, rate per map, delta of each map vs the first)."""
    maps = [read_map(p) for p in paths]
    scopes = ["overall"] + sorted({c for m in maps for c in m["per_category"]})
    rows = []
    for scope in scopes:
        for b in BASINS:
            rates = [(m["overall"] if scope == "overall" else m["per_category"].get(scope, {})).get(b) for m in maps]
            base = rates[0]
            deltas = [None if r is None or base is None else r - base for r in rates]
            rows.append({"scope": scope, "basin": b, "rates": rates, "deltas": deltas})
    return rows
