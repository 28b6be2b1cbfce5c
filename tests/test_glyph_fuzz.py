"""Pathological glyph input: fuzzing the parser and solver, and the documented input limits.

Property tests (Hypothesis) check that printing then parsing is the identity,
that answers survive renaming, and that no bounded input raises anything but
the library's own errors or takes more than a second. They are derandomized
and keep no example database, so CI sees the same examples every run; set
SLMLAB_FUZZ_EXAMPLES=2000 to fuzz harder (and with fresh random examples).
"""

from __future__ import annotations

import os
import random
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmlab.data.glyphs import (
    AND,
    EXISTS,
    FORALL,
    IFF,
    IMPLIES,
    LIMITS,
    MAX_CONSTANTS,
    MAX_DEPTH,
    MAX_PREDICATES,
    MAX_TEXT_LENGTH,
    NOT,
    OR,
    And,
    Exists,
    ForAll,
    GlyphLimitError,
    GlyphParseError,
    Iff,
    Implies,
    Not,
    Or,
    Pred,
    Prop,
    Proportion,
    Puzzle,
    _check_limits,
    _tokenize,
    parse_formula,
    parse_puzzle,
    to_text,
)
from slmlab.data.logic import (
    FAMILIES,
    MAX_WORK,
    InconsistentPremises,
    PuzzleTooLarge,
    _columns,
    canonical_key,
    make_puzzle,
    solve,
    solve_puzzle,
)
from slmlab.errors import SlmlabError

_EXAMPLES = int(os.environ.get("SLMLAB_FUZZ_EXAMPLES", "0"))


def _fuzz(max_examples: int):
    """Modest example counts (the file runs in seconds on a loaded 2-core machine), 1 s deadline."""
    return settings(
        max_examples=_EXAMPLES or max_examples,
        deadline=1000,
        derandomize=not _EXAMPLES,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------------ strategies

# Propositions and predicates never share a letter (a letter is one or the other).
_PROPS = ["P", "Q", "R", "S2"]
_PREDS = ["A", "B", "C"]
_CONSTS = ["a", "b", "c7"]
_VARS = ["x", "y", "z", "x1"]


@st.composite
def formulas(draw, depth: int = 4, bound: tuple[str, ...] = (), preds=_PREDS, consts=_CONSTS):
    """Closed formulas with at most ``depth`` nested connectives and quantifiers."""
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        if draw(st.booleans()):
            return Prop(draw(st.sampled_from(_PROPS)))
        return Pred(draw(st.sampled_from(preds)), draw(st.sampled_from([*bound, *consts])))
    roll = draw(st.integers(0, 6))
    if roll == 0:
        return Not(draw(formulas(depth - 1, bound, preds, consts)))
    if roll == 1:
        var = draw(st.sampled_from(_VARS))
        kind = draw(st.sampled_from([ForAll, Exists]))
        return kind(var, draw(formulas(depth - 1, (*bound, var), preds, consts)))
    op = draw(st.sampled_from([And, Or, Implies, Iff]))
    return op(draw(formulas(depth - 1, bound, preds, consts)), draw(formulas(depth - 1, bound, preds, consts)))


@st.composite
def puzzles(draw, depth: int = 3, preds=_PREDS, consts=_CONSTS):
    premises = tuple(draw(st.lists(formulas(depth, (), preds, consts), min_size=0, max_size=3)))
    bare = tuple(draw(st.lists(st.sampled_from(["d", "e"]), unique=True, max_size=2)))
    return Puzzle(premises, bare, draw(formulas(depth, (), preds, consts)))


# Pieces that make text the parser has to work on: names, operators, quantifier
# and proportion prefixes, brackets, separators, and a few stray characters.
_TOKENS = [
    "P", "Q", "R1", "A(a)", "B(x)", "C(b2)", "A(", "a", "x", NOT, AND, OR, IMPLIES, IFF,
    f"{FORALL}x:", f"{EXISTS}y:", FORALL, ":", "(", ")", "(", ")", ",", "?", "[1/2]x:", "[", "]", "/", "3", " ",
    "&", "~", "Pab", "é", "²", "\t",
]
token_soup = st.lists(st.sampled_from(_TOKENS), max_size=120).map("".join)
# Printed puzzles with a few characters flipped: near-valid input.
_FLIP_CHARS = "PQAab(x)¬∧∨→↔∀∃:,?[]/1 "


@st.composite
def mutated_puzzles(draw):
    text = to_text(draw(puzzles()))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        action = draw(st.integers(0, 2))
        if action == 0:
            text = text[:i] + draw(st.sampled_from(_FLIP_CHARS)) + text[i:]
        elif action == 1:
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + text[i:] * draw(st.integers(1, 3))
    return text


any_text = st.one_of(st.text(max_size=200), token_soup, mutated_puzzles())

# ------------------------------------------------------------------ helpers


def _ast_height(f) -> int:
    kind = type(f)
    if kind in (Prop, Pred):
        return 0
    if kind is Not:
        return 1 + _ast_height(f.arg)
    if kind in (ForAll, Exists, Proportion):
        return 1 + _ast_height(f.body)
    return 1 + max(_ast_height(f.left), _ast_height(f.right))


def _prescan_depth(text: str) -> int:
    """The smallest MAX_DEPTH the text passes (binary search over the module's check)."""
    import slmlab.data.glyphs as glyphs

    toks = _tokenize(text)
    lo, hi = 0, len(toks) + 1
    saved = glyphs.MAX_DEPTH
    try:
        while lo < hi:
            mid = (lo + hi) // 2
            glyphs.MAX_DEPTH = mid
            try:
                _check_limits(text, toks)
                hi = mid
            except GlyphLimitError:
                lo = mid + 1
    finally:
        glyphs.MAX_DEPTH = saved
    return lo


def _outcome(text: str) -> str:
    """The answer, or the kind of refusal (which is part of the answer too)."""
    try:
        return solve(text)
    except InconsistentPremises:
        return "inconsistent"
    except PuzzleTooLarge:
        return "too large"


class _Renaming:
    """An injective, sort-preserving renaming; uppercase symbols share one pool so they never collide."""

    def __init__(self, upper: list[str], consts: list[str], variables: list[str]) -> None:
        self.pools = {"U": upper, "c": consts, "v": variables}
        self.maps: dict[str, dict[str, str]] = {"U": {}, "c": {}, "v": {}}

    def name(self, sort: str, old: str) -> str:
        table = self.maps[sort]
        if old not in table:
            table[old] = self.pools[sort][len(table)]
        return table[old]

    def term(self, t: str) -> str:
        return self.name("v" if t[0] in "xyz" else "c", t)

    def __call__(self, f):
        kind = type(f)
        if kind is Prop:
            return Prop(self.name("U", f.name))
        if kind is Pred:
            return Pred(self.name("U", f.name), self.term(f.term))
        if kind is Not:
            return Not(self(f.arg))
        if kind is Proportion:
            return Proportion(f.num, f.den, self.name("v", f.var), self(f.body))
        if kind in (ForAll, Exists):
            return kind(self.name("v", f.var), self(f.body))
        return kind(self(f.left), self(f.right))

    def puzzle(self, p: Puzzle) -> Puzzle:
        return Puzzle(tuple(self(f) for f in p.premises), tuple(self.name("c", c) for c in p.constants), self(p.query))


_UPPER_POOL = [ch for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"] + [f"{ch}{d}" for ch in "FGHKMN" for d in (2, 10)]
_CONST_POOL = list("abcdefghijklmnopqrstuvw") + [f"{ch}{d}" for ch in "abk" for d in (3, 44)]
_VAR_POOL = ["x", "y", "z", "x1", "y7", "z22"]

renamings = st.builds(
    _Renaming,
    st.permutations(_UPPER_POOL),
    st.permutations(_CONST_POOL),
    st.permutations(_VAR_POOL),
)


# ------------------------------------------------------------------ properties


@_fuzz(300)
@given(formulas(6))
def test_print_then_parse_is_identity(formula) -> None:
    text = to_text(formula)
    assert parse_formula(text) == formula
    assert to_text(parse_formula(text)) == text
    # The linear depth prescan bounds the tree's height (brackets count as levels too).
    assert _ast_height(formula) <= _prescan_depth(text)


@_fuzz(150)
@given(puzzles())
def test_puzzle_print_then_parse_is_identity(puzzle) -> None:
    assert parse_puzzle(to_text(puzzle)) == puzzle


@_fuzz(150)
@given(puzzles(depth=3, preds=["A", "B"], consts=["a", "b"]), renamings)
def test_random_puzzle_answers_survive_renaming(puzzle, rename) -> None:
    renamed = rename.puzzle(puzzle)
    assert _outcome(to_text(renamed)) == _outcome(to_text(puzzle))


@_fuzz(60)
@given(st.sampled_from(sorted(FAMILIES)), st.integers(0, 2**32 - 1), renamings)
def test_generated_puzzle_answers_survive_renaming(family: str, seed: int, rename) -> None:
    item = make_puzzle(family, random.Random(seed))
    renamed = to_text(rename.puzzle(parse_puzzle(item.text)))
    assert solve(renamed) == item.answer == solve(item.text)


_ALLOWED = (GlyphParseError, InconsistentPremises, PuzzleTooLarge)


def _solve_or_refuse(text: str) -> None:
    try:
        assert solve(text) in "●◕◐◔○"
    except _ALLOWED:
        pass
    except SlmlabError as exc:  # the graded family's shape check, the only other user error
        assert str(exc).startswith("unsupported proportion puzzle"), exc


@_fuzz(400)
@given(any_text)
def test_bounded_input_only_raises_the_librarys_errors(text: str) -> None:
    try:
        parse_puzzle(text)
    except GlyphParseError as exc:
        assert 1 <= exc.column <= len(text) + 1
        assert len(str(exc)) < 600  # the message quotes a window, never a wall of text
    _solve_or_refuse(text)


@_fuzz(60)
@given(st.lists(st.sampled_from(_TOKENS[:20]), min_size=200, max_size=1500).map("".join))
def test_long_token_soup_is_refused_or_solved_quickly(text: str) -> None:
    _solve_or_refuse(text)


# ------------------------------------------------------------------ regressions: the reported cases


def _limit_error(text: str, limit_name: str) -> GlyphLimitError:
    start = time.perf_counter()
    with pytest.raises(GlyphLimitError) as info:
        solve(text)
    assert time.perf_counter() - start < 1.0
    err = info.value
    assert err.limit_name == limit_name and err.limit == LIMITS[limit_name]
    assert f"{limit_name} = {err.limit:,}" in str(err) and f"{err.value:,}" in str(err)
    assert isinstance(err, GlyphParseError) and isinstance(err, SlmlabError)
    assert len(str(err)) < 600
    return err


@pytest.mark.parametrize(
    "text",
    [
        "(" * 10_000 + "P" + ")" * 10_000 + "?P",
        NOT * 10_000 + "P?P",
        AND.join(["P"] * 10_000) + "?P",
        IMPLIES.join(["P"] * 10_000) + "?P",
        f"{FORALL}x:" * 10_000 + "A(x)?A(a)",
    ],
    ids=["brackets", "negations", "conjunctions", "implications", "quantifiers"],
)
def test_ten_thousand_deep_nesting_is_a_limit_error(text: str) -> None:
    # Ten thousand levels never fit in MAX_TEXT_LENGTH, so that is the limit named;
    # the next test shows a thousand levels, which do fit, hitting MAX_DEPTH.
    err = _limit_error(text, "MAX_TEXT_LENGTH")
    assert err.value == len(text)


@pytest.mark.parametrize(
    "make",
    [
        lambda d: "(" * d + "P" + ")" * d + "?P",
        lambda d: NOT * d + "P?P",
        lambda d: AND.join(["P"] * (d + 1)) + "?P",
        lambda d: IMPLIES.join(["P"] * (d + 1)) + "?P",
        lambda d: IFF.join(["P"] * (d + 1)) + "?P",
        lambda d: f"{FORALL}x:" * d + "A(x)?A(a)",
        lambda d: "P?" + f"{NOT}(" * (d // 2) + NOT * (d % 2) + "P" + ")" * (d // 2),
    ],
    ids=["brackets", "negations", "conjunctions", "implications", "iffs", "quantifiers", "query"],
)
def test_nesting_depth_limit_is_exact_and_names_the_depth(make) -> None:
    err = _limit_error(make(1000), "MAX_DEPTH")
    assert err.value == 1000
    err = _limit_error(make(MAX_DEPTH + 1), "MAX_DEPTH")
    assert err.value == MAX_DEPTH + 1
    # At the limit everything works, even called with 400 frames already on the stack
    # (64 nested quantifiers are refused by the solver's work estimate, not by the stack).
    text = make(MAX_DEPTH)
    assert _with_stack_used(400, lambda: _outcome(text)) in ("●", "○", "◐", "too large")
    assert _with_stack_used(400, lambda: to_text(parse_puzzle(text))) == to_text(parse_puzzle(text))
    assert _with_stack_used(400, lambda: canonical_key(text))


def _with_stack_used(frames: int, fn):
    if frames <= 0:
        return fn()
    return _with_stack_used(frames - 1, fn)


def test_forty_premise_monadic_chain_is_refused_at_once() -> None:
    chain = ",".join(f"{FORALL}x:F{i}(x){IMPLIES}F{i + 1}(x)" for i in range(40)) + ",F0(a)?F40(a)"
    err = _limit_error(chain, "MAX_PREDICATES")
    assert err.value == 41


def test_long_chain_within_the_predicate_limit_is_too_large_without_a_giant_number() -> None:
    # 30 connected predicates: the structure count has over 300 million digits (it used
    # to be summed term by term, 2^30 terms); it must be refused at once, and briefly.
    for n in (6, 10, 29):
        text = ",".join(f"{FORALL}x:F{i}(x){IMPLIES}F{i + 1}(x)" for i in range(n)) + f",F0(a)?F{n}(a)"
        start = time.perf_counter()
        with pytest.raises(PuzzleTooLarge) as info:
            solve(text)
        assert time.perf_counter() - start < 1.0
        message = str(info.value)
        assert "MAX_STRUCTURES" in message and "more than 2^" in message and len(message) < 400
    # Short chains are decided as before: four predicates and a constant is 524,288
    # structures, but most fail the first premise at once and cost almost nothing.
    for n in (3, 2):
        start = time.perf_counter()
        assert solve(",".join(f"{FORALL}x:F{i}(x){IMPLIES}F{i + 1}(x)" for i in range(n)) + f",F0(a)?F{n}(a)") == "●"
        assert time.perf_counter() - start < 1.0


def test_one_megabyte_string_is_refused_before_tokenizing() -> None:
    for text in ("P∧" * 500_000 + "P?P", "P" * 1_000_000, "é" * 1_000_000):
        err = _limit_error(text, "MAX_TEXT_LENGTH")
        assert err.value == len(text) and err.column == MAX_TEXT_LENGTH + 1


def test_cli_solve_reports_limits_in_one_line(monkeypatch, capsys) -> None:
    from slmlab.cli import main

    for text, name in (("P∧" * 60_000 + "P?P", "MAX_TEXT_LENGTH"), ("(" * 100 + "P" + ")" * 100 + "?P", "MAX_DEPTH")):
        monkeypatch.setattr(sys, "argv", ["slmlab", "data", "solve", text])
        with pytest.raises(SystemExit) as exc:
            main()
        err = capsys.readouterr().err
        assert exc.value.code == 2 and name in err and "Traceback" not in err and len(err) < 800


def test_predicate_and_constant_limits() -> None:
    # At the limits the text parses; deciding 32 ground atoms at once is then the solver's call.
    ok_preds = ",".join(f"F{i}(a)" for i in range(MAX_PREDICATES)) + "?F0(a)"
    parse_puzzle(ok_preds)
    assert _outcome(ok_preds) == "too large"
    err = _limit_error(",".join(f"F{i}(a)" for i in range(MAX_PREDICATES + 5)) + "?F0(a)", "MAX_PREDICATES")
    assert err.value == MAX_PREDICATES + 5
    ok_consts = ",".join(f"F(c{i})" for i in range(MAX_CONSTANTS)) + "?F(c0)"
    parse_puzzle(ok_consts)
    assert _outcome(ok_consts) == "too large"
    assert solve(",".join(f"F(c{i})" for i in range(20)) + "?F(c0)") == "●"
    err = _limit_error(",".join(f"F(c{i})" for i in range(MAX_CONSTANTS + 1)) + "?F(c0)", "MAX_CONSTANTS")
    assert err.value == MAX_CONSTANTS + 1
    # Bare constants count too; propositions are bounded by the text length and the solver instead.
    _limit_error(",".join(f"c{i}" for i in range(MAX_CONSTANTS + 1)) + "?P", "MAX_CONSTANTS")
    assert solve(AND.join(f"P{i}" for i in range(20)) + "?P0") == "●"


def test_nested_quantifiers_are_refused_by_the_work_estimate_not_run() -> None:
    # |R|^depth evaluations: 20 levels took over a second before; 64 would never finish.
    assert solve(f"{FORALL}x:" * 10 + f"F(x){OR}{NOT}F(x)?F(a){OR}{NOT}F(a)") == "●"
    for depth in (24, MAX_DEPTH - 2):  # the body's ∨ and ¬ are the last two levels
        start = time.perf_counter()
        with pytest.raises(PuzzleTooLarge, match="MAX_WORK"):
            solve(f"{FORALL}x:" * depth + f"F(x){OR}{NOT}F(x)?F(a){OR}{NOT}F(a)")
        assert time.perf_counter() - start < 1.0
    assert MAX_WORK == 1 << 22


def test_twenty_atom_truth_tables_are_fast() -> None:
    text = AND.join(f"(P{i}{OR}{NOT}P{i})" for i in range(20)) + f"?P0{OR}{NOT}P0"
    start = time.perf_counter()
    assert solve(text) == "●"
    assert time.perf_counter() - start < 1.0  # building the columns took 1.1 s before


def test_bit_parallel_columns_match_the_arithmetic_definition() -> None:
    for n in range(13):
        rows = 1 << n
        full = (1 << rows) - 1
        expected = [full // ((1 << (2 << i)) - 1) * (((1 << (1 << i)) - 1) << (1 << i)) for i in range(n)]
        assert _columns(n) == (full, expected)


def test_asts_built_in_code_get_the_same_limits() -> None:
    deep = Prop("P")
    for _ in range(10_000):
        deep = Not(deep)
    with pytest.raises(PuzzleTooLarge, match="nesting depth 10,000 exceeds the limit MAX_DEPTH = 64"):
        solve_puzzle(Puzzle((deep,), (), Prop("P")))
    wide = Prop("P")
    for i in range(MAX_PREDICATES + 1):
        wide = And(wide, Pred(f"F{i}", "a"))
    with pytest.raises(PuzzleTooLarge, match="MAX_PREDICATES"):
        solve_puzzle(Puzzle((), (), Or(Not(wide), wide)))


def test_long_parse_errors_quote_a_window_with_an_aligned_caret() -> None:
    text = "P," * 3000 + "Q(" + ",P" * 1000 + "?P"
    with pytest.raises(GlyphParseError) as info:
        parse_puzzle(text)
    err = info.value
    lines = str(err).splitlines()
    assert err.column == 6003 and err.text == text
    assert f"{len(text):,} characters" in lines[0] and len(str(err)) < 400
    assert lines[1][lines[2].index("^")] == text[err.column - 1]  # the caret sits under the column
    # Short texts keep the full quote (the existing format).
    with pytest.raises(GlyphParseError, match=r"in 'P→Q\(,P\?Q'"):
        parse_puzzle("P→Q(,P?Q")
