"""Tool calls: a YAML registry, example generators (bare and scaffolded), and a parser.

Call syntax is ``[NAME:{json}]``; the variant ``SPECIALIST_REQUEST[NAME:{json}]`` asks
for the request to be routed to a specialist. Calls are written with compact JSON
(``separators=(",", ":")``, non-ASCII kept, keys in the schema's order), so one call
has exactly one spelling and a model's output can be compared byte for byte.

Two example styles exist so the research claim behind them can be tested: *bare*
examples map a terse query (``?lookup:Nine Inch Nails``) straight to a call, while
*scaffolded* ones first say in plain language when to use the tool and what the call
looks like, then give a natural request. A bare query starting with ``!`` instead of
``?`` asks for the specialist variant.

The parser (:func:`parse_tool_calls`) is shared with evaluation: it finds every call
in free text, never raises on malformed calls, and reports what is wrong with each.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from slmlab.config import ConfigError, load_yaml
from slmlab.errors import SlmlabError, unknown_name_message

SPECIALIST_PREFIX = "SPECIALIST_REQUEST"
STYLES = ("bare", "scaffolded")
NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_.\-]*"

# `[name:` followed by `{` marks a call; a `[word: text]` aside in prose is not one.
_CALL_START = re.compile(rf"({SPECIALIST_PREFIX})?\[({NAME_PATTERN}):\s*(?=\{{)")
_NAME_RE = re.compile(rf"{NAME_PATTERN}\Z")

_TOOL_KEYS = ("name", "description", "parameters", "when", "generate")
_GENERATE_KEYS = ("values", "bare", "queries")
_SOURCE_KINDS = ("const", "choice", "lexicon", "int", "number", "arithmetic")
# How many samples the load-time dry run draws per tool: enough to hit most lexicon rows' shapes.
_DRY_RUN_SAMPLES = 25


class ToolError(SlmlabError):
    """A bad request to this module: unknown tool or style, unusable arguments."""


class RegistryError(ConfigError):
    """A registry file that does not describe usable tools; names the file, tool and field."""


# --------------------------------------------------------------------------- value sources


def _reject_constant(name: str) -> Any:
    # JSON's NaN/Infinity are not portable JSON; a call containing them is malformed.
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)

_SPOKEN_OPS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}


@dataclass(frozen=True)
class Source:
    """Where one slot's value comes from (see the comment at the top of tools.yaml)."""

    kind: str
    spec: Any
    decimals: int = 0

    def keys(self, slot: str, lexicons: dict[str, list]) -> tuple[str, ...]:
        """The placeholder names this source fills: its rows' keys, or just the slot's name."""
        if self.kind == "arithmetic":
            return ("expression", "spoken")
        example = self._examples(lexicons)[0] if self.kind in ("const", "choice", "lexicon") else None
        return tuple(example) if isinstance(example, dict) else (slot,)

    def _examples(self, lexicons: dict[str, list]) -> list:
        if self.kind == "const":
            return [self.spec]
        if self.kind == "choice":
            return self.spec
        return lexicons[self.spec]

    def sample(self, rng: random.Random, lexicons: dict[str, list]) -> Any:
        if self.kind == "const":
            return self.spec
        if self.kind in ("choice", "lexicon"):
            return rng.choice(self._examples(lexicons))
        if self.kind == "int":
            return rng.randint(*self.spec)
        if self.kind == "number":
            return _sample_number(rng, *self.spec, self.decimals)
        return _sample_arithmetic(rng, self.spec)


def _sample_number(rng: random.Random, lo: float, hi: float, decimals: int) -> int | float:
    # Drawn on an integer grid so the text shows exactly the digits the JSON will ("12.3", not "12.299999").
    places = rng.randint(0, decimals)
    scale = 10**places
    k = rng.randint(math.ceil(lo * scale), math.floor(hi * scale))
    return k // scale if k % scale == 0 else k / scale


def _sample_arithmetic(rng: random.Random, spec: dict) -> dict[str, str]:
    lo, hi = spec["operands"]
    nums = [str(rng.randint(1, spec["max"])) for _ in range(rng.randint(lo, hi))]
    ops = [rng.choice("+-*/") for _ in nums[1:]]
    grouped = len(nums) >= 3 and rng.random() < 0.3
    expr, spoken = nums[0], nums[0]
    for i, (op, num) in enumerate(zip(ops, nums[1:])):
        expr, spoken = f"{expr}{op}{num}", f"{spoken} {_SPOKEN_OPS[op]} {num}"
        if grouped and i == 0:
            expr, spoken = f"({expr})", f"({spoken})"
    return {"expression": expr, "spoken": spoken}


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class GenerateSpec:
    values: dict[str, Source]
    bare: str
    queries: tuple[str, ...]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict
    when: str | None = None
    generate: GenerateSpec | None = None

    @property
    def properties(self) -> list[str]:
        """Parameter names in schema order (the order calls are written in)."""
        return list(self.parameters.get("properties", {}))

    @functools.cached_property
    def _validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.parameters)

    def validate(self, arguments: Any) -> list[str]:
        """Schema violations as readable messages; empty when the arguments are valid."""
        errors = sorted(self._validator.iter_errors(arguments), key=lambda e: (list(map(str, e.path)), e.message))
        return [f"arguments{''.join(f'.{p}' for p in e.path)}: {e.message}" for e in errors]


@dataclass
class ToolRegistry:
    tools: dict[str, ToolSpec]
    lexicons: dict[str, list] = field(default_factory=dict)
    source: str = "<registry>"

    def get(self, name: str) -> ToolSpec:
        if name not in self.tools:
            raise ToolError(unknown_name_message("tool", name, list(self.tools)))
        return self.tools[name]

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def generatable(self) -> list[str]:
        """Names of tools that have a `generate` section, sorted for deterministic choice."""
        return sorted(n for n, t in self.tools.items() if t.generate is not None)


def shipped_registry_path() -> Path:
    return Path(str(resources.files("slmlab") / "resources" / "tools.yaml"))


@functools.lru_cache(maxsize=1)
def _shipped_registry() -> ToolRegistry:
    return _load(shipped_registry_path())


def load_registry(path: str | Path | None = None) -> ToolRegistry:
    """The registry in ``path``, or the shipped one (cached) when ``path`` is None."""
    return _shipped_registry() if path is None else _load(Path(path))


def _load(path: Path) -> ToolRegistry:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: expected a mapping with a `tools` list at the top level")
    _no_unknown_keys(data, ("tools", "lexicons"), f"{path}")
    lexicons = _parse_lexicons(data.get("lexicons") or {}, path)
    raw_tools = data.get("tools")
    if not isinstance(raw_tools, list) or not raw_tools:
        raise RegistryError(f"{path}: `tools` must be a non-empty list of tool definitions")
    tools: dict[str, ToolSpec] = {}
    for i, raw in enumerate(raw_tools):
        spec = _parse_tool(raw, f"{path}: tools[{i}]", lexicons)
        if spec.name in tools:
            raise RegistryError(f"{path}: tools[{i}]: tool name {spec.name!r} is defined twice")
        tools[spec.name] = spec
    return ToolRegistry(tools=tools, lexicons=lexicons, source=str(path))


def _no_unknown_keys(data: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise RegistryError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")


def _parse_lexicons(raw: Any, path: Path) -> dict[str, list]:
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: `lexicons` must map names to lists")
    for name, items in raw.items():
        _check_rows(items, f"{path}: lexicons.{name}")
    return dict(raw)


def _check_rows(items: Any, where: str) -> None:
    """A list of scalars, or of mappings that all have the same keys (so every placeholder is always filled)."""
    if not isinstance(items, list) or not items:
        raise RegistryError(f"{where}: expected a non-empty list")
    if isinstance(items[0], dict):
        keys = set(items[0])
        for j, item in enumerate(items):
            if not isinstance(item, dict) or set(item) != keys:
                raise RegistryError(f"{where}[{j}]: expected a mapping with keys {sorted(keys)} like the first item")
    else:
        for j, item in enumerate(items):
            if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                raise RegistryError(f"{where}[{j}]: expected a string or number, got {item!r}")


def _parse_tool(raw: Any, where: str, lexicons: dict[str, list]) -> ToolSpec:
    if not isinstance(raw, dict):
        raise RegistryError(f"{where}: expected a mapping with name, description and parameters")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RegistryError(f"{where}.name: expected a tool name of letters, digits, _ . - (got {name!r})")
    where = f"{where} ({name})"
    _no_unknown_keys(raw, _TOOL_KEYS, where)
    for key in ("description", "when"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key].strip()):
            raise RegistryError(f"{where}.{key}: expected a non-empty string")
    if "description" not in raw:
        raise RegistryError(f"{where}: missing required field 'description'")
    parameters = _check_parameters(raw.get("parameters"), f"{where}.parameters")
    spec = ToolSpec(name=name, description=raw["description"].strip(), parameters=parameters, when=raw.get("when"))
    if "generate" in raw:
        if spec.when is None:
            raise RegistryError(f"{where}.when: required when the tool has `generate` (scaffolds explain when to use it)")
        gen = _parse_generate(raw["generate"], f"{where}.generate", spec, lexicons)
        spec = ToolSpec(spec.name, spec.description, spec.parameters, spec.when, gen)
        _dry_run(spec, lexicons, f"{where}.generate")
    return spec


def _check_parameters(params: Any, where: str) -> dict:
    if params is None:
        raise RegistryError(f"{where}: missing; expected a JSON Schema object with properties")
    if not isinstance(params, dict):
        raise RegistryError(f"{where}: expected a JSON Schema object (a mapping)")
    try:
        Draft202012Validator.check_schema(params)
    except SchemaError as exc:
        loc = "".join(f".{p}" for p in exc.path)
        raise RegistryError(f"{where}{loc}: not a valid JSON Schema: {exc.message}") from None
    if params.get("type") != "object" or not isinstance(params.get("properties"), dict):
        raise RegistryError(f"{where}: expected `type: object` with a `properties` mapping")
    missing = [r for r in params.get("required", []) if r not in params["properties"]]
    if missing:
        raise RegistryError(f"{where}.required: {missing} are not in properties")
    if params.get("additionalProperties") is not False:
        # Without it a misspelled argument would validate, and evaluation could not catch it.
        raise RegistryError(f"{where}.additionalProperties: must be false so unknown arguments are rejected")
    return params


def _parse_generate(raw: Any, where: str, spec: ToolSpec, lexicons: dict[str, list]) -> GenerateSpec:
    if not isinstance(raw, dict):
        raise RegistryError(f"{where}: expected a mapping with values, bare and queries")
    _no_unknown_keys(raw, _GENERATE_KEYS, where)
    values = raw.get("values")
    if not isinstance(values, dict) or not values:
        raise RegistryError(f"{where}.values: expected a mapping of slot name to source")
    sources = {slot: _parse_source(src, f"{where}.values.{slot}", lexicons) for slot, src in values.items()}
    available: list[str] = []
    for slot, src in sources.items():
        for key in src.keys(slot, lexicons):
            if key in available:
                raise RegistryError(f"{where}.values.{slot}: placeholder {key!r} is already filled by another slot")
            available.append(key)
    for req in spec.parameters.get("required", []):
        if req not in available:
            raise RegistryError(f"{where}.values: nothing fills required parameter {req!r}; slots give {available}")
    bare = raw.get("bare")
    if not isinstance(bare, str) or not bare.strip():
        raise RegistryError(f"{where}.bare: expected the terse query text, e.g. 'lookup:{{page}}'")
    _check_placeholders(bare, f"{where}.bare", available)
    queries = raw.get("queries")
    if not isinstance(queries, list) or not queries:
        raise RegistryError(f"{where}.queries: expected a non-empty list of request phrasings")
    for i, q in enumerate(queries):
        if not isinstance(q, str) or not q.strip():
            raise RegistryError(f"{where}.queries[{i}]: expected a non-empty string")
        _check_placeholders(q, f"{where}.queries[{i}]", available)
    return GenerateSpec(values=sources, bare=bare, queries=tuple(queries))


def _parse_source(raw: Any, where: str, lexicons: dict[str, list]) -> Source:
    kinds = [k for k in _SOURCE_KINDS if isinstance(raw, dict) and k in raw]
    if len(kinds) != 1:
        raise RegistryError(f"{where}: expected a mapping with exactly one of {', '.join(_SOURCE_KINDS)}")
    kind = kinds[0]
    _no_unknown_keys(raw, (kind, "decimals") if kind == "number" else (kind,), where)
    spec = raw[kind]
    if kind == "choice":
        _check_rows(spec, f"{where}.choice")
    elif kind == "lexicon" and spec not in lexicons:
        raise RegistryError(f"{where}.lexicon: " + unknown_name_message("lexicon", str(spec), list(lexicons)))
    elif kind in ("int", "number"):
        return _parse_range(raw, kind, where)
    elif kind == "arithmetic":
        spec = _parse_arithmetic(spec, f"{where}.arithmetic")
    return Source(kind, spec)


def _parse_range(raw: dict, kind: str, where: str) -> Source:
    bounds, num = raw[kind], (int,) if kind == "int" else (int, float)
    ok = isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, num) and not isinstance(b, bool) for b in bounds)
    if not ok or bounds[0] > bounds[1]:
        raise RegistryError(f"{where}.{kind}: expected [low, high] with low <= high (got {bounds!r})")
    decimals = raw.get("decimals", 0)
    if not isinstance(decimals, int) or not 0 <= decimals <= 6:
        raise RegistryError(f"{where}.decimals: expected an integer from 0 to 6 (got {decimals!r})")
    return Source(kind, tuple(bounds), decimals)


def _parse_arithmetic(spec: Any, where: str) -> dict:
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise RegistryError(f"{where}: expected a mapping with optional operands: [min, max] and max")
    _no_unknown_keys(spec, ("operands", "max"), where)
    operands, mx = spec.get("operands", [2, 3]), spec.get("max", 99)
    if not (isinstance(operands, list) and len(operands) == 2 and all(isinstance(o, int) for o in operands)
            and 2 <= operands[0] <= operands[1] <= 6):
        raise RegistryError(f"{where}.operands: expected [min, max] with 2 <= min <= max <= 6 (got {operands!r})")
    if not isinstance(mx, int) or mx < 2:
        raise RegistryError(f"{where}.max: expected an integer >= 2 (got {mx!r})")
    return {"operands": operands, "max": mx}


def _check_placeholders(text: str, where: str, available: list[str]) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise RegistryError(f"{where}: malformed placeholder ({exc}); write {{{{ and }}}} for literal braces") from None
    for f in fields:
        root = re.split(r"[.\[]", f, maxsplit=1)[0]
        if root not in available:
            raise RegistryError(f"{where}: unknown placeholder {{{f}}}; available: {', '.join(available)}")


def _dry_run(spec: ToolSpec, lexicons: dict[str, list], where: str) -> None:
    """Generate a few arguments now, so a value that breaks the schema fails at load time, not mid-dataset."""
    rng = random.Random(0)
    for _ in range(_DRY_RUN_SAMPLES):
        arguments = _arguments(spec, _sample_slots(spec, rng, lexicons))
        problems = spec.validate(arguments)
        if problems:
            raise RegistryError(f"{where}: generated arguments {arguments} do not match parameters: {'; '.join(problems)}")


# --------------------------------------------------------------------------- formatting


def format_call(name: str, arguments: dict, specialist: bool = False, registry: ToolRegistry | None = None) -> str:
    """The one canonical spelling of a call: compact JSON, keys in schema order.

    The schema comes from ``registry`` (default: the shipped one); a tool it does not
    know keeps the arguments' own key order.
    """
    if not isinstance(arguments, dict):
        raise ToolError(f"arguments for {name!r} must be a mapping, got {type(arguments).__name__}")
    registry = _shipped_registry() if registry is None else registry
    if name in registry:
        order = registry.tools[name].properties
        arguments = {k: arguments[k] for k in order if k in arguments} | {k: v for k, v in arguments.items() if k not in order}
    try:
        body = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ToolError(f"arguments for {name!r} cannot be written as JSON: {exc}") from None
    return f"{SPECIALIST_PREFIX if specialist else ''}[{name}:{body}]"


def call_format(spec: ToolSpec, specialist: bool = False) -> str:
    """The call's shape for scaffolds: ``[wiki_lookup:{"wiki": ..., "page": ...}]``."""
    fields = ", ".join(f'"{p}": ...' for p in spec.properties)
    return f"{SPECIALIST_PREFIX if specialist else ''}[{spec.name}:{{{fields}}}]"


# --------------------------------------------------------------------------- parsing


@dataclass
class ToolCall:
    name: str
    arguments: dict | None  # None when the JSON did not parse
    raw: str
    start: int
    end: int
    specialist: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors


def parse_tool_calls(text: str, registry: ToolRegistry | None = None) -> list[ToolCall]:
    """Every call in ``text``, in order; malformed ones come back with ``errors``, never as exceptions."""
    registry = _shipped_registry() if registry is None else registry
    calls, pos = [], 0
    while (m := _CALL_START.search(text, pos)) is not None:
        call = _parse_one(text, m, registry)
        calls.append(call)
        pos = max(call.end, m.end())
    return calls


def _parse_one(text: str, m: re.Match, registry: ToolRegistry) -> ToolCall:
    brace, errors = m.end(), []
    try:
        arguments, json_end = _DECODER.raw_decode(text, brace)
    except ValueError as exc:  # JSONDecodeError, or a NaN/Infinity constant
        arguments, json_end = None, _fragment_end(text, brace)
        errors.append(f"arguments are not valid JSON: {getattr(exc, 'msg', exc)}")
    close = json_end
    while close < len(text) and text[close] in " \t":
        close += 1
    if close < len(text) and text[close] == "]":
        end = close + 1
    else:
        end = json_end
        errors.append("missing closing ']' after the arguments")
    name = m.group(2)
    if name not in registry:
        errors.append(unknown_name_message("tool", name, list(registry.tools)))
    elif arguments is not None:
        errors.extend(registry.tools[name].validate(arguments))
    return ToolCall(name, arguments, text[m.start():end], m.start(), end, m.group(1) is not None, errors)


def _fragment_end(text: str, start: int) -> int:
    """Where a malformed `{...}` most plausibly ends: its balancing brace, or else the end of the line.

    Brackets inside JSON strings are skipped, so `{"q": "a}b"` is not cut short.
    """
    depth, in_string, i = 0, False, start
    while i < len(text):
        ch = text[i]
        # A JSON string cannot hold a raw newline, and cutting here keeps one broken
        # call from swallowing the rest of the text.
        if ch == "\n":
            return i
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
            if depth < 0:  # a stray `]` closes the call itself
                return i
        i += 1
    return len(text)


def call_matches(call: ToolCall, expected: dict) -> bool:
    """Same tool and same arguments (numbers compared by value, strings exactly).

    ``expected`` is ``{"name", "arguments"}``; an optional ``specialist`` key is checked too.
    """
    if not isinstance(expected, dict) or not isinstance(expected.get("name"), str):
        raise ToolError(f"expected call must be a mapping with 'name' and 'arguments', got {expected!r}")
    if call.arguments is None or call.name != expected["name"]:
        return False
    if "specialist" in expected and bool(expected["specialist"]) != call.specialist:
        return False
    return _same_value(call.arguments, expected.get("arguments", {}))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same_value(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# --------------------------------------------------------------------------- generation


def _sample_slots(spec: ToolSpec, rng: random.Random, lexicons: dict[str, list]) -> dict[str, Any]:
    slots: dict[str, Any] = {}
    for slot, source in spec.generate.values.items():  # type: ignore[union-attr]
        value = source.sample(rng, lexicons)
        if isinstance(value, dict):  # a lexicon row or an expression fills several placeholders
            slots.update(value)
        else:
            slots[slot] = value
    return slots


def _arguments(spec: ToolSpec, slots: dict[str, Any]) -> dict[str, Any]:
    return {p: slots[p] for p in spec.properties if p in slots}


def _sentence(text: str) -> str:
    """Capitalized and ending in punctuation, so it can sit between two other sentences."""
    text = text.strip()
    if text and text[-1] not in ".!?":
        text += "."
    return text[0].upper() + text[1:] if text else text


def _clause(text: str) -> str:
    """A description usable mid-sentence: no trailing period, lower-case start."""
    text = text.strip().rstrip(".")
    return text[0].lower() + text[1:] if text else text


def _argument_docs(spec: ToolSpec) -> str:
    props = spec.parameters["properties"]
    parts = []
    for p in spec.properties:
        kind, doc = props[p].get("type", "value"), props[p].get("description")
        parts.append(f'"{p}" ({kind}{", " + doc if doc else ""})')
    return "; ".join(parts)


_SPECIALIST_NOTES = (
    "This request goes to a specialist: put {prefix} directly before the call.",
    "Mark the call as a specialist request by prefixing it with {prefix}.",
    "Route it to a specialist: write {prefix} immediately in front of the call.",
)


def _scaffold(spec: ToolSpec, query: str, specialist: bool, rng: random.Random) -> str:
    """Explain when and how to use the tool, then give the request; the wording varies with rng."""
    fmt, label, when = call_format(spec, specialist), spec.name.replace("_", " "), _clause(spec.when or "")
    note = rng.choice(_SPECIALIST_NOTES).format(prefix=SPECIALIST_PREFIX) if specialist else ""
    variant = rng.randrange(4)
    if variant == 0:  # the seed's single-line shape
        return _join(f"When {when}, use the {label} tool. Format: {fmt}", note, f"Query: {query}", sep=" ")
    if variant == 1:
        head = f"Tool: {spec.name} ({_clause(spec.description)})\nUse it when {when}.\nCall format: {fmt}"
        return _join(head, f"Arguments: {_argument_docs(spec)}", note, f"\nQuery: {query}", sep="\n")
    if variant == 2:
        head = f"You have a {label} tool. {_sentence(spec.description)} Whenever {when}, reply with one call written as {fmt}."
        return _join(head, note, f"Request: {query}", sep=" ")
    return _join(f"If {when}, call {spec.name} like this: {fmt}", note, sep=" ") + f"\nQuery: {query}"


def _join(*parts: str, sep: str) -> str:
    return sep.join(p for p in parts if p)


def make_tool_example(
    rng: random.Random,
    style: str = "scaffolded",
    tool: str | None = None,
    specialist: bool = False,
    registry: ToolRegistry | None = None,
) -> dict:
    """One training example: ``{input, output, family, style, expected_call}``.

    ``output`` is exactly :func:`format_call` of ``expected_call``. Deterministic given ``rng``.
    """
    registry = _shipped_registry() if registry is None else registry
    if style not in STYLES:
        raise ToolError(f"Unknown style {style!r}. Valid styles: {', '.join(STYLES)}.")
    names = registry.generatable()
    if not names:
        raise ToolError(f"{registry.source}: no tool has a `generate` section, so no examples can be made")
    spec = registry.get(rng.choice(names) if tool is None else tool)
    if spec.generate is None:
        raise ToolError(
            f"{registry.source}: tool {spec.name!r} has no `generate` section; tools that can generate: {', '.join(names)}"
        )
    slots = _sample_slots(spec, rng, registry.lexicons)
    arguments = _arguments(spec, slots)
    if style == "bare":
        text = ("!" if specialist else "?") + spec.generate.bare.format(**slots)
    else:
        query = rng.choice(spec.generate.queries).format(**slots)
        text = _scaffold(spec, query, specialist, rng)
    return {
        "input": text,
        "output": format_call(spec.name, arguments, specialist=specialist, registry=registry),
        "family": spec.name,
        "style": style,
        "expected_call": {"name": spec.name, "arguments": arguments},
    }
