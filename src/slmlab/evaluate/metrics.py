"""Evaluation metrics: registered functions from (record, generation) to named per-sample values.

A metric is ``fn(record, generation, **options) -> dict[str, float]``. It scores one
sample and may return several named values (``logic`` returns ``accuracy`` and
``no_glyph``); :func:`slmlab.evaluate.suites.run_suite` averages every value over the
samples that report it, with a standard error. A value a sample cannot have (exact
match without an expected call) is left out of that sample's dict rather than
guessed, so its ``n`` is the number of samples it applies to.

``run_suite`` hands metrics a copy of the record with one extra key, ``_eval``:
``{"template": <template name used for the prompt>, "max_new_tokens": <budget>}``.
Metrics that need the generation budget or the prompt scaffold (``roles``) read it
there; everything else reads only the dataset's own fields.

Every metric accepts an empty generation (``text == ""``, no tokens) and scores it
as a failure rather than raising.

Register your own::

    from slmlab.evaluate.metrics import register_metric

    @register_metric("length")
    def length(record, generation):
        return {"tokens": float(len(generation.tokens))}

Suites name metrics in their ``metrics:`` list, optionally with options:
``- {name: markers, file: my_markers.yaml}``.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from slmlab.config import ConfigError, load_yaml
from slmlab.errors import SlmlabError, unknown_name_message
from slmlab.evaluate.generate import Generation

MetricFn = Callable[..., dict[str, float]]

METRICS: dict[str, MetricFn] = {}
# name -> fn(options) that raises ConfigError for unusable options (run at suite load time)
_OPTION_CHECKS: dict[str, Callable[[dict], None]] = {}


def register_metric(name: str, *, check_options: Callable[[dict], None] | None = None):
    """Decorator: make ``fn`` available to suites as ``name``."""

    def wrap(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        if check_options is not None:
            _OPTION_CHECKS[name] = check_options
        return fn

    return wrap


def get_metric(name: str) -> MetricFn:
    if name not in METRICS:
        raise SlmlabError(unknown_name_message("metric", name, list(METRICS)))
    return METRICS[name]


def check_metric_options(name: str, options: dict) -> None:
    """Raise if ``options`` are not keyword arguments ``name`` accepts, or are unusable."""
    fn = get_metric(name)
    params = list(inspect.signature(fn).parameters.values())[2:]
    accepted = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        takes = f"it takes: {', '.join(accepted)}" if accepted else "it takes none"
        raise ConfigError(f"metric {name!r}: unknown option(s) {', '.join(map(repr, unknown))}; {takes}")
    if name in _OPTION_CHECKS:
        _OPTION_CHECKS[name](options)


def _eval_context(record: dict) -> dict:
    ctx = record.get("_eval") if isinstance(record, dict) else None
    return ctx if isinstance(ctx, dict) else {}


# --------------------------------------------------------------------------- logic


def expected_glyph(record: dict) -> str | None:
    """``record["answer"]``, or ``record["output"]`` when it is one certainty glyph."""
    from slmlab.data.glyphs import CERTAINTY_SCALE

    for key in ("answer", "output"):
        value = record.get(key)
        if isinstance(value, str) and value in CERTAINTY_SCALE:
            return value
    return None


@register_metric("logic")
def logic_metric(record: dict, generation: Generation) -> dict[str, float]:
    """``accuracy``: the first certainty glyph of the generation is the expected one
    (left out when the record has no single-glyph answer); ``no_glyph``: 1 when the
    generation contains no certainty glyph at all."""
    from slmlab.data.glyphs import first_glyph

    guess = first_glyph(generation.text)
    out = {"no_glyph": float(guess is None)}
    expected = expected_glyph(record)
    if expected is not None:
        out = {"accuracy": float(guess == expected), **out}
    return out


# --------------------------------------------------------------------------- tools


@register_metric("tools")
def tools_metric(record: dict, generation: Generation) -> dict[str, float]:
    """Tool calls in the shipped registry's ``[name:{json}]`` syntax.

    ``parses``: at least one call whose arguments are valid JSON and whose tool name
    is known. ``schema_valid``: the first call (the first ``[name:{`` in the text) has
    a known name and arguments valid against that tool's JSON Schema (a missing
    closing ``]`` does not matter here). ``exact``: the first call equals
    ``record["expected_call"]`` by :func:`slmlab.data.tools.call_matches`; left out
    when the record has no expected call.
    """
    from slmlab.data.tools import call_matches, load_registry, parse_tool_calls

    registry = load_registry()
    calls = parse_tool_calls(generation.text, registry)
    known = [c for c in calls if c.arguments is not None and c.name in registry]
    first = calls[0] if calls else None
    schema_ok = (
        first is not None
        and first.arguments is not None
        and first.name in registry
        and not registry.tools[first.name].validate(first.arguments)
    )
    out = {"parses": float(bool(known)), "schema_valid": float(schema_ok)}
    expected = record.get("expected_call")
    if isinstance(expected, dict):
        out["exact"] = float(first is not None and call_matches(first, expected))
    return out


# --------------------------------------------------------------------------- markers


@dataclass(frozen=True)
class MarkerSet:
    name: str
    description: str
    glyphs: tuple[str, ...]
    phrases: tuple[str, ...]
    _pattern: re.Pattern | None

    def count(self, text: str) -> int:
        """Glyphs: exact, non-overlapping substring counts. Phrases: case-insensitive whole-word matches."""
        n = sum(text.count(g) for g in self.glyphs)
        if self._pattern is not None:
            n += len(self._pattern.findall(text))
        return n


def shipped_markers_path() -> Path:
    return Path(str(resources.files("slmlab") / "resources" / "markers.yaml"))


def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern | None:
    if not phrases:
        return None
    # Longest first so "I think" wins over "I"; lookarounds instead of \b so phrases may start or end in punctuation.
    alts = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alts})(?!\w)", re.IGNORECASE)


@functools.lru_cache(maxsize=8)
def load_markers(path: str | None = None) -> tuple[MarkerSet, ...]:
    """Marker sets from a YAML file (default: the shipped ``resources/markers.yaml``).

    The file maps set names to ``{description, glyphs, phrases}``; ``glyphs`` and
    ``phrases`` are lists of strings and at least one of them must be non-empty.
    """
    source = Path(path) if path is not None else shipped_markers_path()
    data = load_yaml(source)
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: expected a mapping of marker set names to {{description, glyphs, phrases}}")
    sets = []
    for name, spec in data.items():
        where = f"{source}: {name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping with description, glyphs and phrases")
        unknown = [k for k in spec if k not in ("description", "glyphs", "phrases")]
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; allowed: description, glyphs, phrases")
        if not isinstance(spec.get("description"), str) or not spec["description"].strip():
            raise ConfigError(f"{where}.description: expected a one-line description of what the set measures")
        lists = {}
        for key in ("glyphs", "phrases"):
            items = spec.get(key) or []
            if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
                raise ConfigError(f"{where}.{key}: expected a list of non-empty strings")
            lists[key] = tuple(items)
        if not lists["glyphs"] and not lists["phrases"]:
            raise ConfigError(f"{where}: give at least one glyph or phrase")
        sets.append(MarkerSet(str(name), spec["description"].strip(), lists["glyphs"], lists["phrases"],
                              _phrase_pattern(lists["phrases"])))
    return tuple(sets)


def _check_markers_options(options: dict) -> None:
    file = options.get("file")
    if file is not None:
        if not isinstance(file, str):
            raise ConfigError(f"metric 'markers': option 'file' must be a path, got {file!r}")
        load_markers(file)


@register_metric("markers", check_options=_check_markers_options)
def markers_metric(record: dict, generation: Generation, file: str | None = None) -> dict[str, float]:
    """For each marker set: occurrences in the generated text per generated token.

    Glyphs are counted exactly (non-overlapping substrings), phrases case-insensitively
    as whole words. The count is divided by ``len(generation.tokens)``; 0 when the
    generation has no tokens. ``file`` replaces the shipped ``markers.yaml``.
    """
    sets = load_markers(file)
    n_tokens = len(generation.tokens)
    return {s.name: (s.count(generation.text) / n_tokens if n_tokens else 0.0) for s in sets}


# --------------------------------------------------------------------------- roles


def scaffold_lines(template) -> list[str]:
    """The template's own text (prompt without the input, and the system message): what an echo would repeat."""
    text = template.prompt.replace("{input}", "\n").replace("{{", "{").replace("}}", "}")
    if template.system:
        text += "\n" + template.system
    return [line.strip() for line in text.splitlines() if len(line.strip()) >= 2]


@functools.lru_cache(maxsize=32)
def _template(name: str):
    from slmlab.data.roles import load_template

    return load_template(name)


@register_metric("roles")
def roles_metric(record: dict, generation: Generation) -> dict[str, float]:
    """Whether the output follows its role template.

    * ``nonempty``: the text has a non-whitespace character.
    * ``no_echo``: the text repeats no line of the template's scaffold (the prompt
      text around ``{input}``, e.g. ``[CREATIVE]``, ``[THESIS]``, ``Q:``, and the
      system message) — a model that starts writing the next prompt fails it.
    * ``stops``: the model ended its turn with EOS inside the budget
      (``len(tokens) < max_new_tokens``); stop strings do not count. Left out when
      the budget is unknown (no ``_eval`` context).
    * ``has_answer``: the text contains the kind of answer the record asks for — a
      certainty glyph when the record has an ``answer`` glyph, a tool call with the
      expected tool name when it has an ``expected_call``; left out otherwise.
    * ``follows``: 1 when every check above that applies is 1.

    The template is ``_eval.template``, else the record's ``role``/``format``.
    """
    from slmlab.data.glyphs import first_glyph
    from slmlab.data.tools import parse_tool_calls

    ctx = _eval_context(record)
    text = generation.text
    out: dict[str, float] = {"nonempty": float(bool(text.strip()))}
    name = ctx.get("template") or record.get("role") or record.get("format")
    if isinstance(name, str):
        out["no_echo"] = float(not any(line in text for line in scaffold_lines(_template(name))))
    budget = ctx.get("max_new_tokens")
    if isinstance(budget, int):
        out["stops"] = float(len(generation.tokens) < budget)
    expected_call = record.get("expected_call")
    if isinstance(expected_call, dict):
        out["has_answer"] = float(any(c.name == expected_call.get("name") for c in parse_tool_calls(text)))
    elif expected_glyph(record) is not None:
        out["has_answer"] = float(first_glyph(text) is not None)
    out["follows"] = float(all(v == 1.0 for v in out.values()))
    return out


# --------------------------------------------------------------------------- basins


@register_metric("basins")
def basins_metric(record: dict, generation: Generation) -> dict[str, float]:
    """One-hot basin label from :func:`slmlab.evaluate.basins.label`: averaged, each is that basin's rate."""
    from slmlab.evaluate import basins

    result = basins.label(generation.text, tokens=generation.tokens, logprobs=generation.logprobs)
    kinds = [m.value for m in type(result.basin)]
    return {k: float(k == result.basin.value) for k in kinds}


__all__ = [
    "METRICS", "MarkerSet", "MetricFn", "check_metric_options", "expected_glyph", "get_metric", "load_markers",
    "register_metric", "scaffold_lines",
]
