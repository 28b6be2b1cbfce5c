"""Evaluation suites: YAML files naming a dataset, a prompt template, generation settings and metrics.

In the spirit of lm-evaluation-harness, a suite is data, metrics are registered
functions (:mod:`slmlab.evaluate.metrics`) and a run writes self-describing JSON. A
suite file (shipped ones live in ``resources/suites/``)::

    name: logic
    version: 1
    description: ...            # optional
    include: base.yaml          # optional: start from another suite; keys here override its keys
    dataset:                    # exactly one of recipe / path / corpus
      recipe: pure-logic        #   generated on the fly into a temp dir
      split: test               #   test (default) or train
      count: null               #   the recipe's total (null: the recipe's own), as `slmlab data generate -c`
      seed: null                #   the recipe's seed (null: the recipe's own)
      # path: my.jsonl          #   a JSONL file, relative to the suite file
      # corpus: basins49        #   a shipped corpus in resources/corpora/
    template: v6                # roles template for records without their own `role`/`format`
    generation: {max_new_tokens: 8, temperature: 0.0, top_p: 1.0, seed: 0, stop: [], batch_size: 8}
    metrics: [logic]            # names, or {name: markers, file: my_markers.yaml} with options
    limit: 60                   # optional: evaluate the first N records

Everything is checked when the suite loads, before any model does: unknown keys
(named, with a "did you mean"), unknown metrics (listing the known ones), metric
options, templates, recipes, corpora and files.

``include`` follows lm-eval: the included suite is read first (it may include
another one), then this file's top-level keys replace its keys wholesale — a
``generation:`` block here replaces the included one entirely, it is not merged key
by key. Relative paths in a file (``include``, ``dataset.path``, a recipe or
template given as a ``.yaml`` path, a metric's ``file`` option) are relative to that
file.

Same suite, model, adapter and seed give the same text: sampling is seeded per batch
(see :func:`slmlab.evaluate.generate.generate`), so also keep ``batch_size``.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PrivateAttr, field_validator, model_validator


from slmlab.config import ConfigError, StrictModel, load_yaml, validate_model
from slmlab.errors import SlmlabError, unknown_name_message
from slmlab.progress import ProgressFactory, tracker

_PATHLIKE_SUFFIXES = (".yaml", ".yml", ".json", ".jsonl")


# --------------------------------------------------------------------------- schema


def corpora_dir() -> Path:
    return Path(str(resources.files("slmlab") / "resources" / "corpora"))


def list_corpora() -> list[str]:
    return sorted(p.name.removesuffix(".jsonl") for p in corpora_dir().glob("*.jsonl"))


def corpus_path(name: str) -> Path:
    path = corpora_dir() / f"{name}.jsonl"
    if not path.is_file():
        raise ConfigError(unknown_name_message("corpus", name, list_corpora()))
    return path


class DatasetSpec(StrictModel):
    """Where the records come from: exactly one of ``recipe``, ``path`` or ``corpus``."""

    recipe: str | None = Field(None, description="A recipe name or YAML path, generated into a temp dir.")
    split: Literal["train", "test"] | None = Field(None, description="Recipe split (default test).")
    count: int | None = Field(None, gt=0, description="Recipe total before the split (default: the recipe's).")
    seed: int | None = Field(None, description="Recipe seed (default: the recipe's).")
    path: str | None = Field(None, description="A JSONL file of records with an `input` field.")
    corpus: str | None = Field(None, description="A shipped corpus name (resources/corpora/NAME.jsonl).")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        given = [k for k in ("recipe", "path", "corpus") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of recipe, path or corpus (got {', '.join(given) or 'none'})")
        if self.recipe is None:
            extra = [k for k in ("split", "count", "seed") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} only apply to a recipe dataset")
        elif self.split is None:
            self.split = "test"
        return self

    @field_validator("recipe")
    @classmethod
    def _recipe_exists(cls, v: str | None) -> str | None:
        if v is not None:
            from slmlab.data.recipes import recipe_path

            recipe_path(v)
        return v

    @field_validator("path")
    @classmethod
    def _file_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"{v}: no such file")
        return v

    @field_validator("corpus")
    @classmethod
    def _corpus_exists(cls, v: str | None) -> str | None:
        if v is not None:
            corpus_path(v)
        return v


class GenerationSpec(StrictModel):
    max_new_tokens: int = Field(64, ge=1, description="Generation budget per prompt.")
    temperature: float = Field(0.0, ge=0, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (only when temperature > 0).")
    seed: int = Field(0, description="Sampling seed (per batch: seed + batch offset).")
    stop: list[str] = Field(default_factory=list, description="Cut the text at the first of these.")
    batch_size: int = Field(8, ge=1)


def _check_metric(item: str | dict[str, Any]) -> str | dict[str, Any]:
    """A known metric name, or ``{name, **options}`` with options that metric accepts."""
    from slmlab.evaluate.metrics import check_metric_options, get_metric

    if isinstance(item, str):
        get_metric(item)
        return item
    name = item.get("name")
    if not isinstance(name, str):
        raise ValueError(f"a metric with options needs a `name`, got {item!r}")
    get_metric(name)
    check_metric_options(name, {k: o for k, o in item.items() if k != "name"})
    return item


# Checked one by one, so an error names its position: metrics[1].
MetricEntry = Annotated[str | dict[str, Any], AfterValidator(_check_metric)]


class Suite(StrictModel):
    """A validated suite (see the module docstring). Unknown keys are errors."""

    name: str
    version: str
    description: str = ""
    include: str | None = Field(None, description="The suite this one starts from (resolved path once loaded).")
    dataset: DatasetSpec
    template: str = Field("v6", description="Roles template for records without their own `role`/`format`.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    metrics: list[MetricEntry] = Field(min_length=1, description="Metric names, or {name: ..., option: ...}.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N records.")

    _source: Path | None = PrivateAttr(None)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("template")
    @classmethod
    def _template_exists(cls, v: str) -> str:
        from slmlab.data.roles import load_template

        load_template(v)
        return v

    @property
    def source(self) -> Path | None:
        """The file this suite was loaded from (None when built from a dict)."""
        return self._source

    def metric_specs(self) -> list[tuple[str, dict[str, Any]]]:
        """``(name, options)`` for each metric, in order."""
        return [(m, {}) if isinstance(m, str) else (m["name"], {k: o for k, o in m.items() if k != "name"})
                for m in self.metrics]


# --------------------------------------------------------------------------- loading


def suites_dir() -> Path:
    return Path(str(resources.files("slmlab") / "resources" / "suites"))


def list_suites() -> list[str]:
    return sorted(p.stem for p in suites_dir().glob("*.yaml"))


def _is_pathlike(value: str) -> bool:
    return Path(value).suffix in _PATHLIKE_SUFFIXES or "/" in value or "\\" in value


def suite_path(name_or_path: str | Path, base: Path | None = None) -> Path:
    """A shipped suite by name, or a YAML file (relative paths from ``base``, default the cwd)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if _is_pathlike(text) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"{path}: no such suite file")
        return path
    shipped = suites_dir() / f"{text}.yaml"
    if not shipped.is_file():
        raise ConfigError(unknown_name_message("suite", text, list_suites()) + " Or pass a path to a YAML file.")
    return shipped


def _relative_to(value: Any, base: Path, always: bool = False) -> Any:
    if isinstance(value, str) and (always or _is_pathlike(value)) and not Path(value).expanduser().is_absolute():
        return str((base / Path(value).expanduser()).resolve())
    return value


def _resolve_paths(data: dict, base: Path) -> dict:
    """Make this file's relative paths absolute, so they survive being included from elsewhere."""
    data = dict(data)
    ds = data.get("dataset")
    if isinstance(ds, Mapping):
        ds = dict(ds)
        if "path" in ds:
            ds["path"] = _relative_to(ds["path"], base, always=True)
        if "recipe" in ds:
            ds["recipe"] = _relative_to(ds["recipe"], base)
        data["dataset"] = ds
    if "template" in data:
        data["template"] = _relative_to(data["template"], base)
    if isinstance(data.get("metrics"), list):
        data["metrics"] = [
            {**m, "file": _relative_to(m["file"], base, always=True)} if isinstance(m, Mapping) and "file" in m else m
            for m in data["metrics"]
        ]
    return data


def _read_layers(path: Path, chain: tuple[Path, ...]) -> dict:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of suite keys (name, version, dataset, metrics, ...)")
    data = _resolve_paths(data, path.parent)
    include = data.get("include")
    if include is None:
        return data
    if not isinstance(include, str):
        raise ConfigError(f"{path}: include: expected a suite name or a path to a suite YAML, got {include!r}")
    try:
        included = suite_path(include, base=path.parent).resolve()
    except ConfigError as exc:
        raise ConfigError(f"{path}: include: {exc}") from None
    if included in chain or included == path:
        cycle = " -> ".join(str(p) for p in (*chain, path, included))
        raise ConfigError(f"{path}: include: suites include each other in a cycle: {cycle}")
    base = _read_layers(included, (*chain, path))
    return {**base, **data, "include": str(included)}


def _unknown_key_hints(data: dict) -> list[str]:
    hints = []
    sections = {"dataset": DatasetSpec, "generation": GenerationSpec}
    for key, value in data.items():
        if key not in Suite.model_fields:
            hints.append(f"{key}: " + unknown_name_message("key", key, list(Suite.model_fields)))
        elif key in sections and isinstance(value, Mapping):
            fields = list(sections[key].model_fields)
            hints += [f"{key}.{k}: " + unknown_name_message("key", str(k), fields) for k in value if k not in fields]
    return hints


def load_suite(name_or_path: str | Path | dict) -> Suite:
    """Load and validate a suite: a shipped name (``logic``), a YAML path, or a dict."""
    if isinstance(name_or_path, dict):
        data, source, path = dict(name_or_path), "suite", None
        if "include" in data:
            data = {**_read_layers(suite_path(data["include"]).resolve(), ()), **data}
    else:
        path = suite_path(name_or_path).resolve()
        data, source = _read_layers(path, ()), f"suite {path}"
    hints = _unknown_key_hints(data)
    if hints:
        raise ConfigError(f"{source}: unknown key(s):\n" + "\n".join(f"  - {h}" for h in hints))
    suite = validate_model(Suite, data, source)
    suite._source = path
    return suite


def dataset_records(ds: DatasetSpec) -> tuple[list[dict], str]:
    """A suite's ``dataset:`` block → (records in file or seeded-split order, where they came from)."""
    if ds.recipe is not None:
        from slmlab.data.recipes import generate_dataset

        with tempfile.TemporaryDirectory(prefix="slmlab-eval-") as tmp:
            result = generate_dataset(ds.recipe, tmp, count=ds.count, seed=ds.seed)
        return (result.test if ds.split == "test" else result.train), f"recipe {ds.recipe} ({ds.split})"
    from slmlab.io import read_jsonl

    path = Path(ds.path) if ds.path is not None else corpus_path(ds.corpus)
    return read_jsonl(path), str(path)


def load_records(suite: Suite) -> list[dict]:
    """The suite's records, in file (or seeded split) order; each must have a string ``input``."""
    records, where = dataset_records(suite.dataset)
    for i, rec in enumerate(records):
        if not isinstance(rec.get("input"), str):
            raise SlmlabError(f"{where}: record {rec.get('id', i)!r} has no string `input` field")
    if not records:
        raise SlmlabError(f"{where}: no records to evaluate")
    return records


# --------------------------------------------------------------------------- models


def _canonical_model(spec: str) -> str:
    """A model spec for comparison: built-in names stay, local directories become absolute paths."""
    from slmlab.models import embedded_cache_dir, known_specs

    if spec in known_specs():
        return spec
    path = Path(spec).expanduser()
    if path.exists():
        resolved = path.resolve()
        if resolved == embedded_cache_dir().resolve():
            return "smollm2-135m"
        return str(resolved)
    return spec


@dataclass(frozen=True)
class ModelSource:
    """What to load: a base spec (with the run's seed, which tiny-random's weights depend on), plus an adapter or a full model."""

    spec: str
    seed: int = 0
    adapter_dir: Path | None = None
    model_dir: Path | None = None


def resolve_adapter(adapter: str | Path | None, model_spec: str) -> ModelSource:
    """Check that ``adapter`` (a run dir or a PEFT adapter dir) belongs to ``model_spec``; refuse otherwise."""
    from slmlab.models import known_specs

    if adapter is None:
        return ModelSource(model_spec)
    path = Path(adapter).expanduser()
    if not path.is_dir():
        raise SlmlabError(
            f"--adapter {path}: no such directory; pass a run directory (config.yaml + adapter/) "
            "or a PEFT adapter directory (adapter_config.json)"
        )
    if (path / "config.yaml").is_file():
        config = load_yaml(path / "config.yaml")
        if not isinstance(config, dict):
            raise ConfigError(f"{path / 'config.yaml'}: expected a training config mapping")
        trained_on = str(config.get("model", "smollm2-135m"))  # TrainConfig's default
        if _canonical_model(trained_on) != _canonical_model(model_spec):
            raise SlmlabError(
                f"run {path} was trained on model {trained_on!r}, but the model to evaluate is {model_spec!r}; "
                f"its weights only fit the model they were trained on. Use --model {trained_on}."
            )
        seed = config.get("seed", 0)
        seed = seed if isinstance(seed, int) else 0
        if (path / "adapter").is_dir():
            return ModelSource(model_spec, seed, adapter_dir=path / "adapter")
        if (path / "model").is_dir():
            return ModelSource(model_spec, seed, model_dir=path / "model")
        raise SlmlabError(f"{path}: no adapter/ or model/ yet; has the run finished?")
    if (path / "adapter_config.json").is_file():
        try:
            base = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (ValueError, AttributeError):
            raise SlmlabError(f"{path / 'adapter_config.json'}: not a valid PEFT adapter config") from None
        if isinstance(base, str) and base:
            a, b = _canonical_model(base), _canonical_model(model_spec)
            # Two external names may be one model spelled twice; only refuse what is certainly different.
            if a != b and (a in known_specs() or b in known_specs()):
                raise SlmlabError(
                    f"adapter {path} was trained on model {base!r}, but the model to evaluate is {model_spec!r}; "
                    f"its weights only fit the model they were trained on. Use --model {a}."
                )
        return ModelSource(model_spec, adapter_dir=path)
    raise SlmlabError(
        f"--adapter {path}: neither a run directory (config.yaml) nor a PEFT adapter directory (adapter_config.json)"
    )


def load_model(source: ModelSource):
    """``(model, tokenizer)`` in eval mode for a :class:`ModelSource`."""
    from slmlab.models import load

    if source.model_dir is not None:
        return load(str(source.model_dir))
    model, tokenizer = load(source.spec, seed=source.seed)
    if source.adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(source.adapter_dir))
        model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------- aggregation


def mean_stderr(values: list[float]) -> dict[str, Any]:
    """``{mean, stderr, n}``. 0/1 values: sqrt(p(1-p)/n); otherwise sample std / sqrt(n) (null for n < 2)."""
    n = len(values)
    if n == 0:
        return {"mean": None, "stderr": None, "n": 0}
    mean = sum(values) / n
    if all(v in (0.0, 1.0) for v in values):
        stderr: float | None = math.sqrt(mean * (1 - mean) / n)
    elif n < 2:
        stderr = None
    else:
        stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return {"mean": mean, "stderr": stderr, "n": n}


def aggregate(per_sample: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{metric: {value: {mean, stderr, n}}}`` over the samples that report each value."""
    collected: dict[str, dict[str, list[float]]] = {}
    for sample in per_sample:
        for metric, values in sample.items():
            for key, v in values.items():
                collected.setdefault(metric, {}).setdefault(key, []).append(float(v))
    return {m: {k: mean_stderr(vs) for k, vs in values.items()} for m, values in collected.items()}


# --------------------------------------------------------------------------- running


@dataclass
class SuiteResult:
    suite: Suite
    model: str
    adapter: str | None
    metrics: dict[str, dict[str, dict[str, Any]]]
    n: int
    new_tokens: int
    seconds: float
    samples: list[dict] = field(repr=False)
    results_path: Path | None = None
    samples_path: Path | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def rows(self) -> list[tuple[str, float | None, float | None, int]]:
        """``(metric.value, mean, stderr, n)`` for printing."""
        return [(f"{m}.{k}", s["mean"], s["stderr"], s["n"]) for m, values in self.metrics.items() for k, s in values.items()]


def samples_path_for(out: Path) -> Path:
    """``results.json`` → ``results.samples.jsonl`` (any other name gets the suffix appended)."""
    out = Path(out)
    stem = out.name.removesuffix(".json")
    return out.with_name(f"{stem}.samples.jsonl")


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def run_suite(
    suite_name_or_path: str | Path | Suite,
    model_spec: str,
    adapter: str | Path | None = None,
    out: Path | None = None,
    limit: int | None = None,
    overwrite: bool = True,
    progress: ProgressFactory | None = None,
    logits_processor: list | None = None,
) -> SuiteResult:
    """Generate for every record of a suite and score it with the suite's metrics.

    The suite, its records, the adapter and the output paths are checked before the model
    loads. With ``out``, writes ``out`` (results JSON) and ``out`` with ``.samples.jsonl`` (one
    line per record), both atomically, samples first. ``limit`` overrides the suite's.
    With ``overwrite=False`` an existing non-empty results or samples file is an error.
    ``progress`` (e.g. :func:`slmlab.progress.progress`) reports the generations as they finish.
    ``logits_processor``: passed to :func:`~slmlab.evaluate.generate.generate` (e.g. the bigram sampler) and
    recorded in the results' config.
    """
    from slmlab import __version__
    from slmlab.data.roles import load_template, render_prompt
    from slmlab.evaluate.generate import generate
    from slmlab.evaluate.metrics import get_metric
    from slmlab.io import atomic_write_text, encode_jsonl

    suite = suite_name_or_path if isinstance(suite_name_or_path, Suite) else load_suite(suite_name_or_path)
    if limit is not None and limit < 1:
        raise SlmlabError(f"limit must be at least 1, got {limit}")
    if out is not None:
        from slmlab.outputs import check_output

        out = check_output(out, "file", overwrite=overwrite, what="results file")
        check_output(samples_path_for(out), "file", overwrite=overwrite, what="samples file")
    metrics = [(name, get_metric(name), options) for name, options in suite.metric_specs()]
    effective_limit = limit if limit is not None else suite.limit
    records = load_records(suite)[:effective_limit]
    source = resolve_adapter(adapter, model_spec)

    model, tokenizer = load_model(source)
    templates: dict[str, Any] = {}
    names, prompts = [], []
    for rec in records:
        name = rec.get("role") or rec.get("format") or suite.template
        if name not in templates:
            templates[name] = load_template(name)
        names.append(name)
        prompts.append(render_prompt(rec["input"], templates[name], tokenizer))
    g = suite.generation
    with tracker(progress, len(prompts), f"eval {suite.name}") as p:
        batch = generate(model, tokenizer, prompts, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                         top_p=g.top_p, seed=g.seed, stop=g.stop, batch_size=g.batch_size, on_batch=p.advance,
                         logits_processor=logits_processor)

    samples = []
    for rec, name, gen in zip(records, names, batch.generations):
        seen = {**rec, "_eval": {"template": name, "max_new_tokens": g.max_new_tokens}}
        values = {m: {k: float(v) for k, v in fn(seen, gen, **opts).items()} for m, fn, opts in metrics}
        target = rec.get("output")
        samples.append({
            "id": rec.get("id"), "category": rec.get("category"), "template": name,
            "prompt": gen.prompt, "target": target if isinstance(target, str) else None,
            "generation": gen.text, "n_tokens": len(gen.tokens), "metrics": values,
        })

    result = SuiteResult(
        suite=suite, model=model_spec, adapter=None if adapter is None else str(adapter),
        metrics=aggregate([s["metrics"] for s in samples]), n=len(samples),
        new_tokens=batch.new_tokens, seconds=batch.seconds, samples=samples,
    )
    if out is not None:
        out = Path(out)
        result.results_path, result.samples_path = out, samples_path_for(out)
        config = suite.model_dump(mode="json") | {"limit": effective_limit,
                                                  "logits_processor": [repr(x) for x in logits_processor or []]}
        report = {
            "suite": {"name": suite.name, "version": suite.version, "source": None if suite.source is None else str(suite.source)},
            "model": model_spec,
            "adapter": result.adapter,
            "config": config,
            "n": result.n,
            "metrics": result.metrics,
            "generation": {"new_tokens": result.new_tokens, "seconds": result.seconds,
                           "tokens_per_second": result.tokens_per_second},
            "samples_file": result.samples_path.name,
            "slmlab_version": __version__,
            "versions": _versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(result.samples_path, encode_jsonl(samples).decode("utf-8"))
        atomic_write_text(out, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    return result


__all__ = [
    "DatasetSpec", "GenerationSpec", "ModelSource", "Suite", "SuiteResult", "aggregate", "list_suites", "load_records",
    "load_suite", "mean_stderr", "resolve_adapter", "run_suite", "samples_path_for",
]
