"""The glyph notation for logic puzzles: AST, parser and canonical printer.

A puzzle reads ``premise,premise,…?query``, e.g. ``P→Q,P?Q`` or
``∀x:P(x)→Q(x),P(a)?Q(a)``. The grammar, precedence table and semantics are
documented in ``docs/glyphs.md``; this module is the single source of truth for
them (the solver in :mod:`slmlab.data.logic` only ever sees the AST).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Union

from slmlab.errors import SlmlabError

# The certainty scale, strongest "yes" to strongest "no". Evaluation reads the
# first of these in a model's output, so they must stay single characters.
CERTAIN = "●"
LIKELY = "◕"
UNDETERMINED = "◐"
UNLIKELY = "◔"
CERTAINLY_NOT = "○"
CERTAINTY_SCALE = (CERTAIN, LIKELY, UNDETERMINED, UNLIKELY, CERTAINLY_NOT)

NOT, AND, OR, IMPLIES, IFF = "¬", "∧", "∨", "→", "↔"
FORALL, EXISTS = "∀", "∃"
VARIABLE_LETTERS = "xyz"

_GLYPHS = frozenset(CERTAINTY_SCALE)

# Input limits (docs/glyphs.md, "Limits", has the measurements behind them).
# All are checked in linear time before the recursive parser runs, and each
# violation is a GlyphLimitError naming the limit and the value.
MAX_TEXT_LENGTH = 10_000  # characters in one puzzle or formula
MAX_DEPTH = 64  # brackets, connectives and quantifiers enclosing the deepest atom of one formula
MAX_PREDICATES = 32  # distinct predicate letters in one puzzle
MAX_CONSTANTS = 32  # distinct constants in one puzzle
LIMITS = {  # the defaults above, by name
    "MAX_TEXT_LENGTH": MAX_TEXT_LENGTH,
    "MAX_DEPTH": MAX_DEPTH,
    "MAX_PREDICATES": MAX_PREDICATES,
    "MAX_CONSTANTS": MAX_CONSTANTS,
}


# --------------------------------------------------------------------------- AST


@dataclass(frozen=True, slots=True)
class Prop:
    """A propositional letter: ``P``, ``Q2``."""

    name: str


@dataclass(frozen=True, slots=True)
class Pred:
    """A unary predicate applied to a constant or a bound variable: ``P(a)``, ``Q(x)``."""

    name: str
    term: str


@dataclass(frozen=True, slots=True)
class Not:
    arg: Formula


@dataclass(frozen=True, slots=True)
class _Binary:
    left: Formula
    right: Formula


@dataclass(frozen=True, slots=True)
class And(_Binary):
    pass


@dataclass(frozen=True, slots=True)
class Or(_Binary):
    pass


@dataclass(frozen=True, slots=True)
class Implies(_Binary):
    pass


@dataclass(frozen=True, slots=True)
class Iff(_Binary):
    pass


@dataclass(frozen=True, slots=True)
class ForAll:
    var: str
    body: Formula


@dataclass(frozen=True, slots=True)
class Exists:
    var: str
    body: Formula


Formula = Union[Prop, Pred, Not, And, Or, Implies, Iff, ForAll, Exists]


@dataclass(frozen=True, slots=True)
class Proportion:
    """``[n/m]x:A(x)→B(x)``: n of every m things that are A are B (a premise only)."""

    num: int
    den: int
    var: str
    body: Implies

    @property
    def antecedent(self) -> str:
        return self.body.left.name

    @property
    def consequent(self) -> str:
        return self.body.right.name

    @property
    def ratio(self) -> Fraction:
        return Fraction(self.num, self.den)


Premise = Union[Formula, Proportion]


@dataclass(frozen=True, slots=True)
class Puzzle:
    """Premises (formulas or proportions), bare constants naming domain elements, and the query."""

    premises: tuple[Premise, ...]
    constants: tuple[str, ...]
    query: Formula

    @property
    def text(self) -> str:
        return to_text(self)


def is_variable(term: str) -> bool:
    """Terms are constants (a–w…) or variables (x, y, z…); the first letter decides."""
    return term[0] in VARIABLE_LETTERS


def first_glyph(text: str) -> str | None:
    """The first certainty glyph in ``text`` (how evaluation reads an answer), or None."""
    for ch in text:
        if ch in _GLYPHS:
            return ch
    return None


# ----------------------------------------------------------------------- errors


# Messages quote the whole text up to this many characters, else a window around the column.
_QUOTE_LIMIT = 120
_WINDOW = 30


class GlyphParseError(SlmlabError):
    """Malformed glyph text; ``column`` is 1-based and points into ``text``."""

    def __init__(self, reason: str, text: str, column: int) -> None:
        self.reason = reason
        self.text = text
        self.column = column
        if len(text) <= _QUOTE_LIMIT:
            quoted, shown, offset = repr(text), text, column - 1
        else:  # a 1 MB input must not become a 3 MB message: show the neighbourhood of the column
            lo = max(0, column - 1 - _WINDOW)
            hi = min(len(text), column - 1 + _WINDOW)
            shown = ("…" if lo else "") + text[lo:hi] + ("…" if hi < len(text) else "")
            offset = column - 1 - lo + (1 if lo else 0)
            quoted = f"{len(text):,} characters of text"
        pointer = " " * offset + "^"
        super().__init__(f"column {column}: {reason} in {quoted}\n    {shown}\n    {pointer}")


class GlyphLimitError(GlyphParseError):
    """The text exceeds one of the documented input limits (see :data:`LIMITS`).

    ``limit_name`` is the constant's name (``"MAX_DEPTH"``…), ``limit`` its
    value and ``value`` what the text has. ``column`` points at the first
    character past MAX_TEXT_LENGTH, the start of a formula deeper than
    MAX_DEPTH, or the first predicate or constant past its limit.
    """

    def __init__(self, what: str, value: int, limit_name: str, limit: int, text: str, column: int) -> None:
        self.limit_name = limit_name
        self.limit = limit
        self.value = value
        super().__init__(f"{what} {value:,} exceeds the limit {limit_name} = {limit:,}", text, column)


# -------------------------------------------------------------------- tokenizer


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # "UP", "CONST", "VAR", "INT", "END" or the punctuation character itself
    value: str
    col: int


_PUNCTUATION = frozenset("¬∧∨→↔(),?:∀∃[]/")

# People type ASCII first; say which glyph they meant instead of a bare "unexpected".
_ASCII_HINTS = {
    "~": "¬", "!": "¬", "&": "∧", "^": "∧", "|": "∨", "-": "→", ">": "→", "<": "↔", "=": "↔ or →",
}


def _is_digit(ch: str) -> bool:
    # str.isdigit accepts '²' and other Unicode digits, which int() then rejects.
    return "0" <= ch <= "9"


def _scan_digits(text: str, j: int) -> int:
    while j < len(text) and _is_digit(text[j]):
        j += 1
    return j


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        ch, col = text[i], i + 1
        if ch.isspace():
            i += 1
        elif "A" <= ch <= "Z" or "a" <= ch <= "z":
            j = _scan_digits(text, i + 1)
            if j < n and text[j].isascii() and text[j].isalpha():
                _bad_name(text, i, col)
            kind = "UP" if ch.isupper() else ("VAR" if ch in VARIABLE_LETTERS else "CONST")
            toks.append(_Tok(kind, text[i:j], col))
            i = j
        elif _is_digit(ch):
            j = _scan_digits(text, i)
            toks.append(_Tok("INT", text[i:j], col))
            i = j
        elif ch in _PUNCTUATION:
            toks.append(_Tok(ch, ch, col))
            i += 1
        else:
            hint = f" (did you mean {_ASCII_HINTS[ch]}?)" if ch in _ASCII_HINTS else ""
            raise GlyphParseError(f"unexpected character {ch!r}{hint}", text, col)
    toks.append(_Tok("END", "", n + 1))
    return toks


_INFIX = {IFF: (1, True), IMPLIES: (2, False), OR: (3, True), AND: (4, True)}  # precedence, left-associative


def _check_limits(text: str, toks: list[_Tok]) -> None:
    """Enforce MAX_DEPTH, MAX_PREDICATES and MAX_CONSTANTS in one pass over the tokens.

    The depth of a formula is computed without recursion by operator
    precedence (a shunting-yard over heights): every ``(…)`` group, ``¬``,
    binary connective, quantifier and proportion prefix counts one level, so
    ``P`` is 0, ``¬¬P`` is 2, ``P∧Q∧R`` is 2 (it is ``(P∧Q)∧R``) and ``(P)``
    is 1. It is lenient with malformed text (a missing operand counts as an
    atom) and leaves the errors to the parser, whose recursion it bounds: each
    parser call that recurses adds at least one level here.
    """
    preds: dict[str, None] = {}
    consts: dict[str, None] = {}
    ops: list[tuple[str, int, int]] = []  # (kind, precedence, column): "(", "¬", "Q" (binder) or "B" (binary)
    vals: list[int] = []
    deepest, start = 0, 1
    i, n = 0, len(toks)
    while i < n:
        tok = toks[i]
        kind = tok.kind
        if kind == "UP":
            vals.append(0)
            if i + 3 < n and toks[i + 1].kind == "(" and toks[i + 2].kind in ("CONST", "VAR") and toks[i + 3].kind == ")":
                if tok.value not in preds:
                    preds[tok.value] = None
                    if len(preds) > MAX_PREDICATES:
                        more = len({t.value for j, t in enumerate(toks[:-1]) if t.kind == "UP" and toks[j + 1].kind == "("})
                        raise GlyphLimitError("number of predicates", more, "MAX_PREDICATES", MAX_PREDICATES, text, tok.col)
                i += 3  # P(a): the brackets are an application, not a group
                if toks[i - 1].kind == "CONST":
                    _count_constant(toks[i - 1], consts, text, toks)
        elif kind == "CONST":
            _count_constant(tok, consts, text, toks)
        elif kind in _INFIX:
            prec, left = _INFIX[kind]
            while ops and ops[-1][0] in ("¬", "B") and (ops[-1][1] > prec or (ops[-1][1] == prec and left)):
                deepest = _reduce(ops.pop(), vals, deepest)
            ops.append(("B", prec, tok.col))
        elif kind == NOT:
            ops.append(("¬", 5, tok.col))
        elif kind in (FORALL, EXISTS, "]"):
            ops.append(("Q", 0, tok.col))  # its body runs as far right as possible
        elif kind == "(":
            ops.append(("(", 0, tok.col))
        elif kind == ")":
            while ops and ops[-1][0] != "(":
                deepest = _reduce(ops.pop(), vals, deepest)
            if ops:
                deepest = _reduce(ops.pop(), vals, deepest)
        elif kind in (",", "?", "END"):
            while ops:  # an unclosed '(' still counts: the parser recursed into it
                deepest = _reduce(ops.pop(), vals, deepest)
            if deepest > MAX_DEPTH:
                raise GlyphLimitError("nesting depth", deepest, "MAX_DEPTH", MAX_DEPTH, text, start)
            vals.clear()
            deepest, start = 0, toks[i + 1].col if i + 1 < n else tok.col
        i += 1


def _reduce(op: tuple[str, int, int], vals: list[int], deepest: int) -> int:
    if op[0] == "B":
        right = vals.pop() if vals else 0
        left = vals.pop() if vals else 0
        height = max(left, right) + 1
    else:
        height = (vals.pop() if vals else 0) + 1
    vals.append(height)
    return max(deepest, height)


def _count_constant(tok: _Tok, consts: dict[str, None], text: str, toks: list[_Tok]) -> None:
    if tok.value not in consts:
        consts[tok.value] = None
        if len(consts) > MAX_CONSTANTS:
            total = len({t.value for t in toks if t.kind == "CONST"})
            raise GlyphLimitError("number of constants", total, "MAX_CONSTANTS", MAX_CONSTANTS, text, tok.col)


def _bad_name(text: str, i: int, col: int) -> None:
    k = i
    while k < len(text) and text[k].isascii() and text[k].isalnum():
        k += 1
    word = text[i:k]
    if word[0].isupper():
        rule = "propositions and predicates are one uppercase letter plus optional digits (P, Q2, P(a))"
    else:
        rule = "constants and variables are one lowercase letter plus optional digits (a, b2, x)"
    raise GlyphParseError(f"{word!r} is not a valid name: {rule}", text, col)


# ----------------------------------------------------------------------- parser


class _Parser:
    """Recursive descent, one method per precedence level (see docs/glyphs.md)."""

    def __init__(self, text: str) -> None:
        self.text = text
        if len(text) > MAX_TEXT_LENGTH:  # before tokenizing: a 1 MB string costs nothing
            raise GlyphLimitError("text length", len(text), "MAX_TEXT_LENGTH", MAX_TEXT_LENGTH, text, MAX_TEXT_LENGTH + 1)
        self.toks = _tokenize(text)
        _check_limits(text, self.toks)
        self.pos = 0
        self.bound: list[str] = []
        # A letter is a proposition or a predicate for the whole puzzle, never both.
        self.kinds: dict[str, tuple[str, int]] = {}

    # -- token helpers
    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.pos + ahead, len(self.toks) - 1)]

    def advance(self) -> _Tok:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def previous(self) -> _Tok | None:
        return self.toks[self.pos - 1] if self.pos > 0 else None

    def fail(self, tok: _Tok, reason: str) -> GlyphParseError:
        return GlyphParseError(reason, self.text, tok.col)

    def expect(self, kind: str, reason: str) -> _Tok:
        if self.peek().kind != kind:
            raise self.fail(self.peek(), reason)
        return self.advance()

    # -- formulas, loosest to tightest
    def iff(self) -> Formula:
        left = self.implies()
        while self.peek().kind == IFF:
            self.advance()
            left = Iff(left, self.implies())
        return left

    def implies(self) -> Formula:
        left = self.disjunction()
        if self.peek().kind == IMPLIES:
            self.advance()
            return Implies(left, self.implies())  # right-associative
        return left

    def disjunction(self) -> Formula:
        left = self.conjunction()
        while self.peek().kind == OR:
            self.advance()
            left = Or(left, self.conjunction())
        return left

    def conjunction(self) -> Formula:
        left = self.unary()
        while self.peek().kind == AND:
            self.advance()
            left = And(left, self.unary())
        return left

    def unary(self) -> Formula:
        tok = self.peek()
        if tok.kind == NOT:
            self.advance()
            return Not(self.unary())
        if tok.kind in (FORALL, EXISTS):
            return self.quantifier()
        if tok.kind == "(":
            self.advance()
            inner = self.iff()
            self.expect(")", f"expected ')' to close the '(' at column {tok.col}")
            return inner
        if tok.kind == "UP":
            return self.atom()
        raise self.fail(tok, self._not_a_formula(tok))

    def _not_a_formula(self, tok: _Tok) -> str:
        if tok.kind == "CONST":
            return f"constant {tok.value!r} cannot stand alone in a formula (write a predicate such as P({tok.value}))"
        if tok.kind == "VAR":
            return f"variable {tok.value!r} cannot stand alone in a formula (write a predicate such as P({tok.value}))"
        if tok.kind == "[":
            return "a proportion [n/m]x:A(x)→B(x) must be a whole premise"
        prev = self.previous()
        after = f" after {prev.value!r}" if prev is not None else ""
        found = "" if tok.kind == "END" else f", found {tok.value!r}"
        return f"expected a formula{after}{found}"

    def quantifier(self) -> Formula:
        q = self.advance()
        var = self.expect("VAR", f"expected a variable (x, y or z) after {q.value!r}")
        self.expect(":", f"expected ':' after '{q.value}{var.value}'")
        body = self.bound_body(var.value)
        return ForAll(var.value, body) if q.kind == FORALL else Exists(var.value, body)

    def bound_body(self, var: str) -> Formula:
        # The body runs as far right as possible: ∀x:P(x)→Q(x) is ∀x:(P(x)→Q(x)).
        self.bound.append(var)
        try:
            return self.iff()
        finally:
            self.bound.pop()

    def atom(self) -> Formula:
        name = self.advance()
        if self.peek().kind != "(":
            self.declare(name, "proposition")
            return Prop(name.value)
        self.advance()
        term = self.peek()
        if term.kind not in ("CONST", "VAR"):
            raise self.fail(term, "expected a term after '('")
        self.advance()
        if term.kind == "VAR" and term.value not in self.bound:
            raise self.fail(
                term,
                f"free variable {term.value!r}: bind it with ∀{term.value}: or ∃{term.value}: around this formula",
            )
        self.expect(")", f"expected ')' after the term {term.value!r}")
        self.declare(name, "predicate")
        return Pred(name.value, term.value)

    def declare(self, tok: _Tok, kind: str) -> None:
        seen = self.kinds.setdefault(tok.value, (kind, tok.col))
        if seen[0] != kind:
            raise self.fail(
                tok,
                f"{tok.value!r} is used as a {kind} here but as a {seen[0]} at column {seen[1]}; "
                "one letter cannot be both",
            )

    # -- puzzles
    def puzzle(self) -> Puzzle:
        premises: list[Premise] = []
        constants: list[str] = []
        if self.peek().kind != "?":
            self.premise_list(premises, constants)
        self.advance()  # the '?'
        if self.peek().kind == "END":
            raise self.fail(self.peek(), "missing query: expected a formula after '?'")
        query = self.iff()
        if self.peek().kind != "END":
            raise self.fail(self.peek(), f"unexpected {self.peek().value!r} after the query")
        return Puzzle(tuple(premises), tuple(constants), query)

    def premise_list(self, premises: list[Premise], constants: list[str]) -> None:
        while True:
            tok = self.peek()
            if tok.kind in (",", "?") or (tok.kind == "END" and premises):
                raise self.fail(tok, "empty premise")
            if tok.kind == "END":
                raise self.fail(tok, "empty puzzle: expected premises, then '?' and a query")
            self.premise(premises, constants)
            tok = self.peek()
            if tok.kind == "?":
                return
            if tok.kind == "END":
                raise self.fail(tok, "missing query: expected '?' followed by the query after the premises")
            if tok.kind != ",":
                raise self.fail(tok, f"expected ',' or '?' after a premise, found {tok.value!r}")
            self.advance()

    def premise(self, premises: list[Premise], constants: list[str]) -> None:
        tok = self.peek()
        if tok.kind == "CONST" and self.peek(1).kind in (",", "?", "END"):
            self.advance()  # a bare constant only names a domain element
            constants.append(tok.value)
        elif tok.kind == "[":
            premises.append(self.proportion())
        else:
            premises.append(self.iff())

    def proportion(self) -> Proportion:
        self.advance()
        num = self.expect("INT", "expected a whole number after '[' (as in [3/4]x:A(x)→B(x))")
        self.expect("/", "expected '/' in the proportion [n/m]")
        den = self.expect("INT", "expected a whole number after '/'")
        self.expect("]", "expected ']' to close the proportion [n/m]")
        var = self.expect("VAR", "expected a variable (x, y or z) after the proportion [n/m]")
        self.expect(":", f"expected ':' after the variable {var.value!r}")
        start = self.peek()
        body = self.bound_body(var.value)
        if int(den.value) == 0:
            raise self.fail(den, "the proportion's denominator must be at least 1")
        if int(num.value) > int(den.value):
            raise self.fail(num, f"the proportion {num.value}/{den.value} is more than 1")
        if not _is_proportion_body(body, var.value):
            raise self.fail(start, "a proportion premise must have the form [n/m]x:A(x)→B(x) with two different predicates")
        return Proportion(int(num.value), int(den.value), var.value, body)


def _is_proportion_body(body: Formula, var: str) -> bool:
    return (
        isinstance(body, Implies)
        and isinstance(body.left, Pred)
        and isinstance(body.right, Pred)
        and body.left.term == var
        and body.right.term == var
        and body.left.name != body.right.name
    )


def parse_formula(text: str) -> Formula:
    """Parse one closed formula (no premises, no '?')."""
    parser = _Parser(text)
    formula = parser.iff()
    tok = parser.peek()
    if tok.kind != "END":
        extra = " (a puzzle needs parse_puzzle)" if tok.kind in (",", "?") else ""
        raise parser.fail(tok, f"unexpected {tok.value!r} after the formula{extra}")
    return formula


def parse_puzzle(text: str) -> Puzzle:
    """Parse ``premise,…?query``; every error carries a 1-based column."""
    return _Parser(text).puzzle()


# ---------------------------------------------------------------------- printer

_BINARY_PREC = {Iff: 1, Implies: 2, Or: 3, And: 4}
_BINARY_SYMBOL = {Iff: IFF, Implies: IMPLIES, Or: OR, And: AND}
_NOT_PREC = 5


def _fmt(f: Formula, min_prec: int, open_right: bool) -> str:
    """Print ``f`` where the context needs precedence ≥ ``min_prec``.

    ``open_right`` says nothing follows ``f`` before the enclosing ')' or the end
    of the premise; only then may a quantifier go unbracketed, because its body
    would otherwise swallow what follows.
    """
    kind = type(f)
    if kind is Prop:
        return f.name
    if kind is Pred:
        return f"{f.name}({f.term})"
    if kind is Not:
        return NOT + _fmt(f.arg, _NOT_PREC, open_right)
    prec = _BINARY_PREC.get(kind)
    if prec is not None:
        wrap = prec < min_prec
        # Left-assoc operators repeat on the left, → repeats on the right.
        lp, rp = (prec + 1, prec) if kind is Implies else (prec, prec + 1)
        text = _fmt(f.left, lp, False) + _BINARY_SYMBOL[kind] + _fmt(f.right, rp, True if wrap else open_right)
        return f"({text})" if wrap else text
    if kind is ForAll or kind is Exists:
        text = (FORALL if kind is ForAll else EXISTS) + f.var + ":" + _fmt(f.body, 1, True)
        return text if open_right else f"({text})"
    if kind is Proportion:
        return f"[{f.num}/{f.den}]{f.var}:" + _fmt(f.body, 1, True)
    raise TypeError(f"not a glyph formula: {f!r}")


def to_text(item: Formula | Proportion | Puzzle) -> str:
    """Canonical text with the fewest parentheses; ``parse(to_text(f)) == f``."""
    if isinstance(item, Puzzle):
        parts = [_fmt(p, 1, True) for p in item.premises] + list(item.constants)
        return ",".join(parts) + "?" + _fmt(item.query, 1, True)
    return _fmt(item, 1, True)


__all__ = [
    "AND", "CERTAIN", "CERTAINLY_NOT", "CERTAINTY_SCALE", "EXISTS", "FORALL", "IFF", "IMPLIES", "LIKELY",
    "NOT", "OR", "UNDETERMINED", "UNLIKELY", "And", "Exists", "ForAll", "Formula", "GlyphParseError",
    "GlyphLimitError", "LIMITS", "MAX_CONSTANTS", "MAX_DEPTH", "MAX_PREDICATES", "MAX_TEXT_LENGTH",
    "Iff", "Implies", "Not", "Or", "Pred", "Premise", "Prop", "Proportion", "Puzzle", "first_glyph",
    "is_variable", "parse_formula", "parse_puzzle", "to_text",
]
