"""The glyph notation: precedence, quantifier scope, errors with columns, canonical printing."""

from __future__ import annotations

import random

import pytest

from slmlab.data.glyphs import (
    CERTAIN,
    CERTAINLY_NOT,
    CERTAINTY_SCALE,
    LIKELY,
    UNDETERMINED,
    UNLIKELY,
    And,
    Exists,
    ForAll,
    GlyphParseError,
    Iff,
    Implies,
    Not,
    Or,
    Pred,
    Prop,
    Proportion,
    Puzzle,
    first_glyph,
    parse_formula,
    parse_puzzle,
    to_text,
)

P, Q, R = Prop("P"), Prop("Q"), Prop("R")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("¬P∧Q", And(Not(P), Q)),
        ("P∧Q∨R", Or(And(P, Q), R)),
        ("P∨Q∧R", Or(P, And(Q, R))),
        ("P→Q→R", Implies(P, Implies(Q, R))),
        ("P∨Q→R", Implies(Or(P, Q), R)),
        ("P↔Q→R", Iff(P, Implies(Q, R))),
        ("P↔Q↔R", Iff(Iff(P, Q), R)),
        ("P∧Q∧R", And(And(P, Q), R)),
        ("P∨Q∨R", Or(Or(P, Q), R)),
        ("¬¬P", Not(Not(P))),
        ("¬(P∧Q)", Not(And(P, Q))),
        ("(P→Q)→R", Implies(Implies(P, Q), R)),
        (" P  →\tQ ", Implies(P, Q)),
        ("Q2∧P10", And(Prop("Q2"), Prop("P10"))),
    ],
)
def test_precedence_and_associativity(text: str, expected) -> None:
    assert parse_formula(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("∀x:P(x)→Q(x)", ForAll("x", Implies(Pred("P", "x"), Pred("Q", "x")))),
        ("(∀x:P(x))→R", Implies(ForAll("x", Pred("P", "x")), R)),
        ("R∧∀x:P(x)∨Q(x)", And(R, ForAll("x", Or(Pred("P", "x"), Pred("Q", "x"))))),
        ("¬∃y:P(y)∧R", Not(Exists("y", And(Pred("P", "y"), R)))),
        ("∀x:∃y:P(x)→Q(y)", ForAll("x", Exists("y", Implies(Pred("P", "x"), Pred("Q", "y"))))),
        ("∀x:∃x:P(x)", ForAll("x", Exists("x", Pred("P", "x")))),
        ("∀z1:P(z1)", ForAll("z1", Pred("P", "z1"))),
    ],
)
def test_quantifier_body_extends_right(text: str, expected) -> None:
    assert parse_formula(text) == expected


def test_quantifier_body_stops_at_premise_boundary() -> None:
    puzzle = parse_puzzle("∀x:P(x)→Q(x),P(a)?Q(a)")
    assert puzzle.premises == (ForAll("x", Implies(Pred("P", "x"), Pred("Q", "x"))), Pred("P", "a"))
    assert puzzle.query == Pred("Q", "a")


def test_puzzles_with_constants_and_spaces() -> None:
    puzzle = parse_puzzle(" ∀x : P(x) , a ? P(a) ")
    assert puzzle == Puzzle((ForAll("x", Pred("P", "x")),), ("a",), Pred("P", "a"))
    assert puzzle.text == "∀x:P(x),a?P(a)"
    assert parse_puzzle("P∧Q?P").premises == (And(P, Q),)
    assert parse_puzzle("?P∨¬P").premises == ()


def test_proportion_premise() -> None:
    puzzle = parse_puzzle("[7/10]x:A(x)→B(x),A(a)?¬B(a)")
    proportion = puzzle.premises[0]
    assert proportion == Proportion(7, 10, "x", Implies(Pred("A", "x"), Pred("B", "x")))
    assert (proportion.antecedent, proportion.consequent, float(proportion.ratio)) == ("A", "B", 0.7)
    assert puzzle.text == "[7/10]x:A(x)→B(x),A(a)?¬B(a)"


@pytest.mark.parametrize(
    "text, column, fragment",
    [
        ("P→Q(,P?Q", 5, "expected a term after '('"),
        ("Loves(a)?P", 1, "'Loves' is not a valid name"),
        ("P→Q,P", 6, "missing query"),
        ("P?", 3, "missing query"),
        ("P,,Q?R", 3, "empty premise"),
        (",P?Q", 1, "empty premise"),
        ("P,?Q", 3, "empty premise"),
        ("", 1, "empty puzzle"),
        ("P(x)?Q", 3, "free variable 'x'"),
        ("∀x:P(x),Q(x)?R", 11, "free variable 'x'"),
        ("P(a),P?Q", 6, "used as a proposition here but as a predicate"),
        ("P?P(a)", 3, "used as a predicate here but as a proposition"),
        ("P∧(Q∨R?P", 7, "expected ')' to close the '(' at column 3"),
        ("P∧?Q", 3, "expected a formula after '∧'"),
        ("P & Q?P", 3, "did you mean ∧?"),
        ("a∧P?P", 1, "constant 'a' cannot stand alone"),
        ("∀P:P?P", 2, "expected a variable"),
        ("∀x P(x)?P", 4, "expected ':' after '∀x'"),
        ("P?Q?R", 4, "unexpected '?' after the query"),
        ("P)?Q", 2, "expected ',' or '?' after a premise"),
        ("[3/2]x:A(x)→B(x),A(a)?B(a)", 2, "more than 1"),
        ("[1/0]x:A(x)→B(x),A(a)?B(a)", 4, "denominator"),
        ("[1/2]x:A(x)∧B(x),A(a)?B(a)", 8, "must have the form"),
        ("P∧[1/2]x:A(x)→B(x)?P", 3, "must be a whole premise"),
        ("Pab?Q", 1, "'Pab' is not a valid name"),
    ],
)
def test_errors_point_at_the_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(GlyphParseError) as info:
        parse_puzzle(text)
    err = info.value
    assert err.column == column, str(err)
    assert fragment in str(err)
    assert str(err).startswith(f"column {column}: ")
    assert repr(text) in str(err)
    assert isinstance(err, ValueError)


def test_spec_example_message() -> None:
    with pytest.raises(GlyphParseError) as info:
        parse_puzzle("P→Q(,P?Q")
    assert str(info.value).splitlines()[0] == "column 5: expected a term after '(' in 'P→Q(,P?Q'"
    assert str(info.value).splitlines()[2].index("^") == str(info.value).splitlines()[1].index(",")


def test_loves_is_rejected_even_as_formula() -> None:
    with pytest.raises(GlyphParseError, match="one uppercase letter"):
        parse_formula("Loves(a)")


def test_parse_formula_rejects_puzzle_syntax() -> None:
    with pytest.raises(GlyphParseError, match="parse_puzzle"):
        parse_formula("P,Q")


@pytest.mark.parametrize(
    "formula, text",
    [
        (And(Or(P, Q), R), "(P∨Q)∧R"),
        (Implies(Implies(P, Q), R), "(P→Q)→R"),
        (And(P, And(Q, R)), "P∧(Q∧R)"),
        (And(ForAll("x", Pred("F", "x")), Q), "(∀x:F(x))∧Q"),
        (Or(And(Q, ForAll("x", Pred("F", "x"))), R), "Q∧(∀x:F(x))∨R"),
        (Not(ForAll("x", Pred("F", "x"))), "¬∀x:F(x)"),
        (And(Not(ForAll("x", Pred("F", "x"))), Q), "¬(∀x:F(x))∧Q"),
        (Not(Implies(P, Q)), "¬(P→Q)"),
    ],
)
def test_printer_uses_minimal_parentheses(formula, text: str) -> None:
    assert to_text(formula) == text
    assert parse_formula(text) == formula


def _random_formula(rng: random.Random, depth: int, bound: list[str]):
    """Closed formulas over propositions A–H and predicates S–Z (never the same letter)."""
    if depth == 0 or rng.random() < 0.25:
        if rng.random() < 0.5:
            return Prop(rng.choice("ABCDEFGH") + rng.choice(["", "", "2", "13"]))
        terms = bound + ["a", "b", "c7"]
        return Pred(rng.choice("STUVWXYZ"), rng.choice(terms))
    roll = rng.random()
    if roll < 0.15:
        return Not(_random_formula(rng, depth - 1, bound))
    if roll < 0.3:
        var = rng.choice(["x", "y", "z", "x1"])
        kind = ForAll if rng.random() < 0.5 else Exists
        return kind(var, _random_formula(rng, depth - 1, [*bound, var]))
    op = rng.choice([And, Or, Implies, Iff])
    return op(_random_formula(rng, depth - 1, bound), _random_formula(rng, depth - 1, bound))


def test_random_round_trip() -> None:
    rng = random.Random(1234)
    seen = set()
    for _ in range(4000):
        formula = _random_formula(rng, rng.randint(1, 6), [])
        text = to_text(formula)
        assert parse_formula(text) == formula, text
        assert to_text(parse_formula(text)) == text
        seen.add(text)
    assert len(seen) > 2500  # the generator really explores


def test_random_puzzle_round_trip() -> None:
    rng = random.Random(99)
    for _ in range(500):
        premises = tuple(_random_formula(rng, 3, []) for _ in range(rng.randint(1, 3)))
        puzzle = Puzzle(premises, tuple(rng.sample(["d", "e"], rng.randint(0, 2))), _random_formula(rng, 3, []))
        assert parse_puzzle(puzzle.text) == puzzle


def test_ast_is_hashable() -> None:
    formula = parse_formula("∀x:P(x)→Q(x)")
    assert hash(formula) == hash(parse_formula("∀x:P(x)→Q(x)"))
    assert len({formula, parse_formula("∀x:P(x)→Q(x)"), parse_formula("P")}) == 2
    assert hash(parse_puzzle("P→Q,P?Q")) == hash(parse_puzzle("P → Q, P ? Q"))


def test_glyph_scale_and_first_glyph() -> None:
    assert CERTAINTY_SCALE == ("●", "◕", "◐", "◔", "○")
    assert (CERTAIN, LIKELY, UNDETERMINED, UNLIKELY, CERTAINLY_NOT) == CERTAINTY_SCALE
    assert first_glyph("The answer is ◕ — probably, not ●") == "◕"
    assert first_glyph("○") == "○"
    assert first_glyph("no glyph here") is None
    assert first_glyph("") is None
