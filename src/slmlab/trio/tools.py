"""Tool executors for the trio: offline, deterministic, and never raising on a bad call.

The dialectical role writes calls in slmlab's syntax (``[name:{json}]`` or
``SPECIALIST_REQUEST[name:{json}]``); :func:`slmlab.data.tools.parse_tool_calls` finds
and schema-checks them against the trio registry (``resources/trio/tools.yaml``), and a
:class:`ToolBox` executes the valid ones:

* ``calculator`` — exact rational arithmetic over an ``ast`` walk (numbers, ``+ - * / // %
  **``, unary signs, brackets). No ``eval``: any other syntax (names, calls, attributes) is
  refused, and powers and result sizes are bounded so a call cannot hang the process.
* ``unit_convert`` — a fixed table of linear factors (plus the affine temperature scales).
* ``wiki_lookup`` — a page from a local YAML file (``resources/trio/wiki.yaml`` by default).
* ``solve_logic`` — the exact solver of :mod:`slmlab.data.logic` on a glyph puzzle.

Every outcome is a :class:`ToolResult`: ``ok`` with ``output`` (text fed back to the model)
and ``value`` (the machine-readable answer), or not ``ok`` with an ``error`` that says what
was wrong — an unknown tool, malformed JSON, a schema violation, or a failure while
executing. Nothing a model writes can raise out of :meth:`ToolBox.execute`.
"""

from __future__ import annotations

import ast
import difflib
import functools
import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

from slmlab.config import load_yaml
from slmlab.data.tools import (
    ToolCall,
    ToolRegistry,
    format_call,
    load_registry,
    parse_tool_calls,
)
from slmlab.errors import SlmlabError, unknown_name_message

# Bounds that keep every call fast: longer input, bigger exponents or numbers are refused.
MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 256
MAX_BITS = 4096  # numerator/denominator size of any intermediate value


class ToolExecutionError(SlmlabError):
    """A call that is well-formed but cannot be carried out (division by zero, unknown unit, …)."""


@dataclass
class ToolResult:
    name: str
    ok: bool
    output: str | None = None  # what the model is shown
    value: Any = None  # the answer itself: a glyph, a number, a page summary
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def feedback(self) -> str:
        return self.output if self.ok else f"error: {self.error}"


def trio_registry_path() -> Path:
    return Path(str(resources.files("slmlab") / "resources" / "trio" / "tools.yaml"))


def shipped_wiki_path() -> Path:
    return Path(str(resources.files("slmlab") / "resources" / "trio" / "wiki.yaml"))


# --------------------------------------------------------------------------- calculator

_BINARY_OPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_SYMBOLS = {"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-"}


def _check_size(x: Fraction) -> Fraction:
    if x.numerator.bit_length() > MAX_BITS or x.denominator.bit_length() > MAX_BITS:
        raise ToolExecutionError(f"the result is too large (more than {MAX_BITS} bits)")
    return x


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise ToolExecutionError("only whole-number exponents are supported (no roots)")
    e = exponent.numerator
    if abs(e) > MAX_EXPONENT:
        raise ToolExecutionError(f"exponent {e} is too large (limit {MAX_EXPONENT})")
    if base == 0 and e < 0:
        raise ToolExecutionError("division by zero (0 to a negative power)")
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if bits * abs(e) > MAX_BITS:
        raise ToolExecutionError(f"the result is too large (more than {MAX_BITS} bits)")
    return base**e


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(str(node.value)) if type(node.value) is float else Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.BitXor):
            raise ToolExecutionError("'^' is not a power here; write ** (e.g. 2**10)")
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(left, right))
        op = _BINARY_OPS.get(type(node.op))
        if op is None:
            raise ToolExecutionError(f"operator {type(node.op).__name__} is not supported; use + - * / // % **")
        if right == 0 and isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)):
            raise ToolExecutionError("division by zero")
        return _check_size(Fraction(op(left, right)))
    what = type(node).__name__
    if isinstance(node, ast.Name):
        what = f"the name {node.id!r}"
    elif isinstance(node, ast.Call):
        what = "a function call"
    raise ToolExecutionError(f"{what} is not allowed: only numbers, + - * / // % ** and brackets")


def format_number(x: Fraction) -> str:
    """Integers as integers; other values as a decimal, with the exact fraction when the decimal is rounded."""
    if x.denominator == 1:
        return str(x.numerator)
    approx = format(float(x), ".10g")
    return approx if Fraction(approx) == x else f"{x.numerator}/{x.denominator} ≈ {approx}"


def _number_value(x: Fraction) -> int | float:
    return x.numerator if x.denominator == 1 else float(x)


def calculate(expression: str) -> Fraction:
    """The exact value of an arithmetic expression (see the module docstring); ToolExecutionError otherwise."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolExecutionError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    for symbol, ascii_op in _SYMBOLS.items():
        expression = expression.replace(symbol, ascii_op)
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolExecutionError(f"cannot read {expression!r} as arithmetic: {exc.msg}") from None
    try:
        return _evaluate(tree)
    except RecursionError:
        raise ToolExecutionError("the expression is nested too deeply") from None


def run_calculator(expression: str) -> ToolResult:
    value = calculate(expression)
    return ToolResult("calculator", True, format_number(value), _number_value(value))


# --------------------------------------------------------------------------- unit conversion

# unit → (dimension, factor to the dimension's base unit); all factors are exact definitions.
_UNITS: dict[str, tuple[str, Fraction]] = {
    "m": ("length", Fraction(1)), "km": ("length", Fraction(1000)), "cm": ("length", Fraction(1, 100)),
    "mm": ("length", Fraction(1, 1000)), "mi": ("length", Fraction("1609.344")), "ft": ("length", Fraction("0.3048")),
    "in": ("length", Fraction("0.0254")), "yd": ("length", Fraction("0.9144")),
    "kg": ("mass", Fraction(1)), "g": ("mass", Fraction(1, 1000)), "t": ("mass", Fraction(1000)),
    "lb": ("mass", Fraction("0.45359237")), "oz": ("mass", Fraction("0.028349523125")),
    "L": ("volume", Fraction(1)), "mL": ("volume", Fraction(1, 1000)), "gal": ("volume", Fraction("3.785411784")),
    "m/s": ("speed", Fraction(1)), "km/h": ("speed", Fraction(1000, 3600)), "mph": ("speed", Fraction("0.44704")),
    "J": ("energy", Fraction(1)), "kJ": ("energy", Fraction(1000)), "MJ": ("energy", Fraction(10**6)),
    "kWh": ("energy", Fraction(3_600_000)), "cal": ("energy", Fraction("4.184")), "kcal": ("energy", Fraction(4184)),
    "s": ("time", Fraction(1)), "min": ("time", Fraction(60)), "h": ("time", Fraction(3600)),
    "day": ("time", Fraction(86400)),
}
_TEMPERATURES = ("degC", "degF", "K")
_ALIASES = {
    "l": "L", "ml": "mL", "°C": "degC", "C": "degC", "celsius": "degC", "°F": "degF", "F": "degF",
    "fahrenheit": "degF", "kelvin": "K", "kph": "km/h", "kmh": "km/h", "miles": "mi", "mile": "mi",
    "meters": "m", "metres": "m", "kilometers": "km", "kilometres": "km", "feet": "ft", "foot": "ft",
    "inches": "in", "inch": "in", "pounds": "lb", "lbs": "lb", "kilograms": "kg", "grams": "g", "ounces": "oz",
    "gallons": "gal", "liters": "L", "litres": "L", "hours": "h", "hr": "h", "minutes": "min", "seconds": "s",
}


def _unit(name: str) -> str:
    name = name.strip()
    name = _ALIASES.get(name, _ALIASES.get(name.lower(), name))
    if name not in _UNITS and name not in _TEMPERATURES:
        raise ToolExecutionError(unknown_name_message("unit", name, [*_UNITS, *_TEMPERATURES]))
    return name


def _to_kelvin(x: Fraction, unit: str) -> Fraction:
    if unit == "degC":
        return x + Fraction("273.15")
    if unit == "degF":
        return (x - 32) * Fraction(5, 9) + Fraction("273.15")
    return x


def _from_kelvin(k: Fraction, unit: str) -> Fraction:
    if unit == "degC":
        return k - Fraction("273.15")
    if unit == "degF":
        return (k - Fraction("273.15")) * Fraction(9, 5) + 32
    return k


def convert(value: float, from_unit: str, to_unit: str) -> Fraction:
    """``value`` in ``from_unit`` expressed in ``to_unit``, exactly (the input float is read as written)."""
    src, dst = _unit(from_unit), _unit(to_unit)
    x = Fraction(str(value))
    if src in _TEMPERATURES or dst in _TEMPERATURES:
        if not (src in _TEMPERATURES and dst in _TEMPERATURES):
            raise ToolExecutionError(f"cannot convert {src} to {dst}: one is a temperature and the other is not")
        return _from_kelvin(_to_kelvin(x, src), dst)
    (dim_a, fa), (dim_b, fb) = _UNITS[src], _UNITS[dst]
    if dim_a != dim_b:
        raise ToolExecutionError(f"cannot convert {src} ({dim_a}) to {dst} ({dim_b})")
    return x * fa / fb


def run_unit_convert(value: float, to: str, **kwargs: str) -> ToolResult:
    src, dst = _unit(kwargs["from"]), _unit(to)
    result = convert(value, src, dst)
    shown = format(float(result), ".6g")
    return ToolResult("unit_convert", True, f"{format_number(Fraction(str(value)))} {src} = {shown} {dst}", float(result))


# --------------------------------------------------------------------------- wiki


@functools.lru_cache(maxsize=8)
def load_wiki(path: str | None = None) -> dict[str, str]:
    """Title → summary from a YAML file with a ``pages`` mapping (default: the shipped one)."""
    source = Path(path) if path is not None else shipped_wiki_path()
    if not source.is_file():
        raise SlmlabError(f"{source}: no such wiki file (expected YAML with a `pages:` mapping of title to summary)")
    data = load_yaml(source)
    pages = data.get("pages") if isinstance(data, dict) else None
    if not isinstance(pages, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in pages.items()):
        raise SlmlabError(f"{source}: expected a `pages:` mapping of title (text) to summary (text)")
    return dict(pages)


def run_wiki_lookup(pages: dict[str, str], wiki: str, page: str) -> ToolResult:
    by_key = {title.casefold(): title for title in pages}
    title = by_key.get(page.strip().casefold())
    if title is None:
        close = difflib.get_close_matches(page, list(pages), n=3, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise ToolExecutionError(f"no page {page!r} in the local wiki ({len(pages)} pages).{hint}")
    return ToolResult("wiki_lookup", True, f"{title}: {pages[title]}", pages[title])


# --------------------------------------------------------------------------- logic

_GLYPH_MEANING = {
    "●": "the premises entail the query",
    "○": "the premises entail the query's negation",
    "◐": "the premises decide neither way",
    "◕": "likely, by the stated proportion",
    "◔": "unlikely, by the stated proportion",
}


def run_solve_logic(puzzle: str) -> ToolResult:
    from slmlab.data.logic import solve

    try:
        glyph = solve(puzzle.strip())
    except SlmlabError as exc:  # parse errors, inconsistent premises, puzzles too large
        raise ToolExecutionError(str(exc)) from None
    return ToolResult("solve_logic", True, f"{glyph} ({_GLYPH_MEANING[glyph]})", glyph)


# --------------------------------------------------------------------------- the toolbox


@dataclass
class ToolBox:
    """The trio's tools: a registry (schemas, for parsing) and one executor per tool."""

    registry: ToolRegistry
    wiki: dict[str, str]

    @classmethod
    def default(cls, wiki: str | Path | None = None, registry: str | Path | None = None) -> ToolBox:
        reg = load_registry(registry or trio_registry_path())
        box = cls(reg, load_wiki(str(wiki) if wiki is not None else None))
        missing = [name for name in reg.tools if name not in box.executors]
        if missing:
            raise SlmlabError(
                f"{reg.source}: no executor for tool(s) {', '.join(missing)}; the trio runs {', '.join(box.executors)}"
            )
        return box

    @property
    def executors(self) -> dict[str, Callable[..., ToolResult]]:
        return {
            "calculator": run_calculator,
            "unit_convert": run_unit_convert,
            "wiki_lookup": functools.partial(run_wiki_lookup, self.wiki),
            "solve_logic": run_solve_logic,
        }

    def parse(self, text: str) -> list[ToolCall]:
        return parse_tool_calls(text, self.registry)

    def execute(self, call: ToolCall) -> ToolResult:
        """Run one parsed call; a malformed or unknown call, or a failing one, gives ``ok=False``."""
        if call.errors:
            return ToolResult(call.name, False, error="; ".join(call.errors))
        executor = self.executors.get(call.name)
        if executor is None:
            return ToolResult(call.name, False, error=unknown_name_message("tool", call.name, list(self.executors)))
        try:
            return executor(**call.arguments)
        except (SlmlabError, ArithmeticError, TypeError, KeyError, RecursionError) as exc:
            return ToolResult(call.name, False, error=str(exc))

    def call(self, name: str, **arguments: Any) -> tuple[ToolCall, ToolResult]:
        """Make a call in code (as the verifier does): its canonical text, parsed, then executed."""
        raw = format_call(name, arguments, registry=self.registry)
        call = self.parse(raw)[0]
        return call, self.execute(call)

    def describe(self) -> str:
        """One line per tool for the dialectical prompt: name, what it does, and the call format."""
        lines = []
        for spec in self.registry.tools.values():
            fields = ",".join(f'"{p}":…' for p in spec.properties)
            lines.append(f"[{spec.name}:{{{fields}}}] {spec.description}")
        return "\n".join(lines)


def call_to_dict(call: ToolCall, auto: bool = False) -> dict:
    """A parsed call as transcript JSON (``auto``: made by the verifier, not written by the model)."""
    return {"name": call.name, "arguments": call.arguments, "raw": call.raw, "specialist": call.specialist,
            "valid": call.valid, "errors": list(call.errors), "auto": auto}
