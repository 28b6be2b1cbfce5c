"""Verified logic puzzles: an exact decision procedure, puzzle families, fast generation.

Every answer this module hands out comes from :func:`solve_puzzle`, a real
decision procedure (truth tables for propositional puzzles, exact finite model
checking for monadic first-order ones; see docs/glyphs.md for why the finite
enumeration is complete). Generation never asserts an answer: a family proposes
a puzzle *shape* aiming at an answer, the solver decides it, and shapes whose
solved answer differs are thrown away.

The fast path (:func:`generate_pure`) is honest about where its speed comes
from: it solves each shape once (memoized by :func:`canonical_key`) and then
emits copies under random injective, sort-preserving renamings of the symbols,
which cannot change the answer.
"""

from __future__ import annotations

import bisect
import functools
import gc
import itertools
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from math import comb
from operator import itemgetter
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from slmlab.data.glyphs import (
    CERTAIN,
    CERTAINLY_NOT,
    LIKELY,
    MAX_CONSTANTS,
    MAX_DEPTH,
    MAX_PREDICATES,
    UNDETERMINED,
    UNLIKELY,
    And,
    Exists,
    ForAll,
    Formula,
    Iff,
    Implies,
    Not,
    Or,
    Pred,
    Premise,
    Prop,
    Proportion,
    Puzzle,
    is_variable,
    parse_puzzle,
    to_text,
)
from slmlab.errors import SlmlabError, unknown_name_message

# More structures than this in one connected group of premises and we refuse
# rather than hang: the enumeration is exact, so its cost is the real limit.
MAX_STRUCTURES = 1 << 20
# The structure count alone does not bound the time: nested quantifiers
# multiply the work by up to 2^k per level and long formulas by their length.
# So the solver counts its evaluation steps (one ≈ one compiled-closure call,
# about 70 ns measured) for the whole puzzle as it goes, and refuses past this;
# docs/glyphs.md ("Limits") has the measurements.
MAX_WORK = 1 << 22


class InconsistentPremises(SlmlabError):
    """No structure satisfies the premises, so every query would trivially follow."""


class PuzzleTooLarge(SlmlabError):
    """The exact check would exceed :data:`MAX_STRUCTURES` or :data:`MAX_WORK` (or an AST a glyph limit)."""


# ============================================================ symbols & shapes

_BINARY = (And, Or, Implies, Iff)
_BINDERS = (ForAll, Exists, Proportion)


def _walk_symbols(f: Premise, out: dict) -> None:
    """Add f's non-logical symbols to ``out`` (insertion-ordered): ('P', prop), ('F', pred), ('c', const)."""
    kind = type(f)
    if kind is Prop:
        out[("P", f.name)] = None
    elif kind is Pred:
        out[("F", f.name)] = None
        if not is_variable(f.term):
            out[("c", f.term)] = None
    elif kind is Not:
        _walk_symbols(f.arg, out)
    elif kind in _BINDERS:
        _walk_symbols(f.body, out)
    else:
        _walk_symbols(f.left, out)
        _walk_symbols(f.right, out)


def _symbols(*formulas: Premise) -> dict[tuple[str, str], None]:
    out: dict[tuple[str, str], None] = {}
    for f in formulas:
        _walk_symbols(f, out)
    return out


def _has_quantifier(f: Formula) -> bool:
    kind = type(f)
    if kind is ForAll or kind is Exists:
        return True
    if kind is Not:
        return _has_quantifier(f.arg)
    if kind in _BINARY:
        return _has_quantifier(f.left) or _has_quantifier(f.right)
    return False


def neg(f: Formula) -> Formula:
    """¬f, except that ¬g becomes g: the query whose answer is the opposite of f's."""
    return f.arg if type(f) is Not else Not(f)


# ============================================================ decision procedure


def _columns(n: int) -> tuple[int, list[int]]:
    """Bit-parallel truth table: bit v of column i is atom i's value in valuation v.

    Evaluating a formula on these big integers evaluates it on all 2^n rows at
    once, which is what makes plain truth tables fast in Python.
    """
    rows = 1 << n
    full = (1 << rows) - 1
    n_bytes = max(1, rows >> 3)
    cols = []
    for i in range(n):
        # Built from bytes in linear time: dividing 2^20-bit integers (the obvious
        # full // period_mask) is quadratic and took over a second at n = 20.
        if i < 3:
            pattern = bytes((0xAA, 0xCC, 0xF0)[i : i + 1]) * n_bytes
        else:
            block = 1 << (i - 3)
            pattern = (b"\x00" * block + b"\xff" * block) * (n_bytes // (2 * block))
        cols.append(int.from_bytes(pattern, "little") & full)
    return full, cols


def _eval_ground(f: Formula, cols: dict, full: int) -> int:
    """Quantifier-free formula over ground atoms → its truth-table column."""
    kind = type(f)
    if kind is Prop:
        return cols[("P", f.name)]
    if kind is Pred:
        return cols[("F", f.name, f.term)]
    if kind is Not:
        return full ^ _eval_ground(f.arg, cols, full)
    a = _eval_ground(f.left, cols, full)
    b = _eval_ground(f.right, cols, full)
    if kind is And:
        return a & b
    if kind is Or:
        return a | b
    if kind is Implies:
        return (full ^ a) | b
    return full ^ (a ^ b)


_Closure = Callable[[tuple, tuple, dict], int]


def _compile(f: Formula, cols: dict, pred_bit: dict, const_index: dict, full: int) -> _Closure:
    """Compile a monadic formula to ``fn(const_types, realized_types, env) -> column``.

    A structure is given by the tuple of realized types (each an int bitmask
    over the predicates, one domain element per type) and the type of each
    constant; propositions stay bit-parallel in the returned column.
    """
    kind = type(f)
    if kind is Prop:
        col = cols[f.name]
        return lambda ct, realized, env: col
    if kind is Pred:
        bit = pred_bit[f.name]
        if is_variable(f.term):
            var = f.term
            return lambda ct, realized, env: full if env[var] >> bit & 1 else 0
        j = const_index[f.term]
        return lambda ct, realized, env: full if ct[j] >> bit & 1 else 0
    if kind is Not:
        inner = _compile(f.arg, cols, pred_bit, const_index, full)
        return lambda ct, realized, env: full ^ inner(ct, realized, env)
    if kind is ForAll or kind is Exists:
        return _compile_quantifier(f, _compile(f.body, cols, pred_bit, const_index, full), full)
    left = _compile(f.left, cols, pred_bit, const_index, full)
    right = _compile(f.right, cols, pred_bit, const_index, full)
    if kind is And:
        return lambda ct, realized, env: (a & right(ct, realized, env)) if (a := left(ct, realized, env)) else 0
    if kind is Or:
        return lambda ct, realized, env: (a | right(ct, realized, env)) if (a := left(ct, realized, env)) != full else full
    if kind is Implies:
        return lambda ct, realized, env: (full ^ left(ct, realized, env)) | right(ct, realized, env)
    return lambda ct, realized, env: full ^ left(ct, realized, env) ^ right(ct, realized, env)


def _compile_quantifier(f: ForAll | Exists, body: _Closure, full: int) -> _Closure:
    var = f.var
    universal = type(f) is ForAll
    missing = object()

    def evaluate(ct: tuple, realized: tuple, env: dict) -> int:
        saved = env.get(var, missing)  # restore afterwards: an outer binder may use the same name
        acc = full if universal else 0
        for t in realized:
            env[var] = t
            if universal:
                acc &= body(ct, realized, env)
                if not acc:
                    break
            else:
                acc |= body(ct, realized, env)
                if acc == full:
                    break
        if saved is missing:
            del env[var]
        else:
            env[var] = saved
        return acc

    return evaluate


def _monadic_structure_count(k: int, c: int) -> int:
    """Σ over non-empty sets R of realized types of |R|^c constant assignments.

    Exponential in k (2^k terms): call it only through :func:`_structure_count`.
    """
    types = 1 << k
    return sum(comb(types, j) * j**c for j in range(1, types + 1))


def _structure_count(k: int, c: int, p: int, limit: int) -> int:
    """The structures to enumerate (times 2^p), or PuzzleTooLarge if more than ``limit``.

    The count is at least 2^(2^k) − 1 (every j^c ≥ 1), so once 2^k exceeds
    limit's bit length it is refused without summing 2^k terms: 40 chained
    predicates used to hang here, summing 2^40 terms towards a number of
    3·10^11 digits.
    """
    if k > 64 or (1 << k) > limit.bit_length():
        bound = f"2^{(1 << k) - 1:,}" if k <= 16 else f"2^(2^{k} - 1)"
        raise _too_large(f"more than {bound}", k, c, p, limit)
    count = _monadic_structure_count(k, c) << p
    if count > limit:
        raise _too_large(_count_text(count), k, c, p, limit)
    return count


def _count_text(n: int) -> str:
    """``n`` with thousands separators, or 'more than 2^N' once it would be a wall of digits."""
    return f"{n:,}" if n < 10**15 else f"more than 2^{n.bit_length() - 1:,}"


def _too_large(count: str, k: int, c: int, p: int, limit: int) -> PuzzleTooLarge:
    return PuzzleTooLarge(
        f"puzzle too large to decide exactly: {count} structures (limit MAX_STRUCTURES = {limit:,}) for one "
        f"connected group of premises with {k} predicates, {c} constants and {p} propositions; "
        "split it or use fewer symbols"
    )


def _cost(f: Formula) -> list[int]:
    """Steps for one pass over ``f`` as a polynomial in m = |realized types| (coefficients, m^0 first).

    Each node is a step; a quantifier runs its body once per realized type
    and costs two more steps to enter and two per type (binding the variable
    is dearer than a connective: calibrated against measured times).
    """
    kind = type(f)
    if kind is Prop or kind is Pred:
        return [1]
    if kind is Not:
        inner = _cost(f.arg)
        inner[0] += 1
        return inner
    if kind is ForAll or kind is Exists:
        body = _cost(f.body)
        body[0] += 2
        return [2, *body]
    return _poly_add(_poly_add([1], _cost(f.left)), _cost(f.right))


def _poly_add(a: list[int], b: list[int]) -> list[int]:
    if len(a) < len(b):
        a, b = b, a
    for i, x in enumerate(b):
        a[i] += x
    return a


def _poly_at(poly: list[int], m: int) -> int:
    value = 0
    for coefficient in reversed(poly):
        value = value * m + coefficient
    return value


def _words(bits: int) -> int:
    """Cost factor of bit-parallel columns over ``bits`` atoms: one step per 4096 rows."""
    return 1 + ((1 << bits) >> 12)


def _over_budget(what: str) -> PuzzleTooLarge:
    return PuzzleTooLarge(
        f"puzzle too large to decide exactly: {what} (limit MAX_WORK = {MAX_WORK:,} evaluation steps "
        "for the whole puzzle, roughly 0.3 s); use fewer predicates, constants or nested quantifiers, "
        "or shorter formulas"
    )


_OVER_BUDGET = "the search would take more evaluation steps than allowed"


def _analyze(premises: list[Formula], query: Formula | None, limit: int = MAX_STRUCTURES) -> tuple[bool, bool, bool]:
    """(premises satisfiable, some model makes query true, some model makes it false).

    With ``query=None`` it only decides satisfiability and stops at the first model.
    """
    return _analyze_memo(tuple(premises), query, limit)[:3]


def _analyze_memo(
    premises: tuple[Formula, ...], query: Formula | None, limit: int, budget: int = MAX_WORK
) -> tuple[bool, bool, bool, int]:
    """:func:`_analyze` plus the evaluation steps it took; PuzzleTooLarge past ``budget`` steps.

    A group runs with all of MAX_WORK (so its result and its charge depend
    only on the group, and can be cached); the caller's remaining ``budget``
    is checked against the charge. A puzzle thus stops within 2 × MAX_WORK.
    """
    result = _analyze_cached(premises, query, limit)
    if result[3] > budget:
        raise _over_budget(_OVER_BUDGET)
    return result


@functools.lru_cache(maxsize=1 << 16)
def _analyze_cached(premises: tuple[Formula, ...], query: Formula | None, limit: int) -> tuple[bool, bool, bool, int]:
    # Keyed by the formulas themselves (hashable, compared structurally), so a
    # hit is the very same question; generation asks many repeatedly.
    formulas = list(premises) if query is None else [*premises, query]
    syms = _symbols(*formulas)
    if not any(_has_quantifier(f) for f in formulas):
        return _analyze_ground(premises, query, formulas, limit)
    props = [name for sort, name in syms if sort == "P"]
    preds = [name for sort, name in syms if sort == "F"]
    consts = [name for sort, name in syms if sort == "c"]
    k, c, p = len(preds), len(consts), len(props)
    _structure_count(k, c, p, limit)
    full, columns = _columns(p)
    args = (dict(zip(props, columns)), {n: i for i, n in enumerate(preds)}, {n: i for i, n in enumerate(consts)}, full)
    # Formulas without constants depend only on the realized types, so they are
    # evaluated once per set of types instead of once per constant assignment.
    with_constants = [_mentions_constant(f) for f in premises]
    shared_premises = [f for f, has in zip(premises, with_constants) if not has]
    constant_premises = [f for f, has in zip(premises, with_constants) if has]
    shared = [_compile(f, *args) for f in shared_premises]
    per_constant = [_compile(f, *args) for f in constant_premises]
    query_fn = _compile(query, *args) if query is not None else None
    query_shared = query is not None and not _mentions_constant(query)
    # Work is charged in evaluation steps (cost[m]: one evaluation with m
    # realized types). If even the bound without early exits fits MAX_WORK the
    # plain loop runs and is charged that bound; otherwise steps are counted as
    # they are spent, so early exits are free (a 4-predicate chain is 9.9M
    # steps on paper, 3.0M in fact). Either way a group's charge depends only on
    # the group, so refusals are deterministic and independent of the memo.
    n = 1 << k
    loop = (shared, per_constant, query_fn, query_shared, k, c, full)
    shared_poly, constant_poly = [1], [1]  # 1: the loop's own step per type set / per structure
    for f in shared_premises:
        shared_poly = _poly_add(shared_poly, _cost(f))
    for f in constant_premises:
        constant_poly = _poly_add(constant_poly, _cost(f))
    if query is not None:
        if query_shared:
            shared_poly = _poly_add(shared_poly, _cost(query))
        else:
            constant_poly = _poly_add(constant_poly, _cost(query))
    bound = sum(comb(n, m) * (_poly_at(shared_poly, m) + m**c * _poly_at(constant_poly, m)) for m in range(1, n + 1))
    if bound <= MAX_WORK:
        return (*_enumerate(*loop), bound)
    for f in formulas:
        # One evaluation runs without checks: a formula that could alone pass
        # MAX_WORK (deeply nested quantifiers) is refused before it starts.
        worst = _poly_at(_cost(f), n)
        if worst > MAX_WORK:
            raise _over_budget(f"one evaluation of {_snippet(f)} alone may take {_count_text(worst)} steps")
    query_cost = _cost_table(query, n) if query is not None else [0] * (n + 1)
    shared_costs = [_cost_table(f, n) for f in shared_premises]
    per_constant_costs = [_cost_table(f, n) for f in constant_premises]
    return _enumerate_counted(*loop, shared_costs, per_constant_costs, query_cost)


def _enumerate(
    shared: list[_Closure], per_constant: list[_Closure], query_fn: _Closure | None, query_shared: bool, k: int, c: int, full: int
) -> tuple[bool, bool, bool]:
    """Every (set of realized types, constant assignment) structure; see :func:`_analyze`."""
    satisfiable = can_true = can_false = False
    env: dict = {}
    for realized in _type_sets(k):
        base = full
        for fn in shared:
            base &= fn((), realized, env)
            if not base:
                break
        if not base:
            continue
        q_base = query_fn((), realized, env) if query_shared else 0
        for ct in itertools.product(realized, repeat=c):
            models = base
            for fn in per_constant:
                models &= fn(ct, realized, env)
                if not models:
                    break
            if not models:
                continue
            if query_fn is None:
                return True, False, False
            satisfiable = True
            q = q_base if query_shared else query_fn(ct, realized, env)
            can_true = can_true or bool(models & q)
            can_false = can_false or bool(models & (full ^ q))
            if can_true and can_false:
                return True, True, True
    return satisfiable, can_true, can_false


def _enumerate_counted(
    shared: list[_Closure],
    per_constant: list[_Closure],
    query_fn: _Closure | None,
    query_shared: bool,
    k: int,
    c: int,
    full: int,
    shared_costs: list[list[int]],
    per_constant_costs: list[list[int]],
    query_cost: list[int],
) -> tuple[bool, bool, bool, int]:
    """:func:`_enumerate`, counting steps as they are spent and refusing past MAX_WORK.

    Constant-free premises are charged one by one (most type sets fail one of
    them early, which is where the savings are); each constant assignment is
    charged in full, so the inner loop only adds one number.
    """
    satisfiable = can_true = can_false = False
    env: dict = {}
    steps = 0
    per_structure = [1 + sum(t[m] for t in per_constant_costs) + (0 if query_shared else query_cost[m]) for m in range(len(query_cost))]
    for realized in _type_sets(k):
        m = len(realized)
        steps += 1
        base = full
        for fn, cost in zip(shared, shared_costs):
            steps += cost[m]
            base &= fn((), realized, env)
            if not base:
                break
        if steps > MAX_WORK:
            raise _over_budget(_OVER_BUDGET)
        if not base:
            continue
        if query_shared:
            steps += query_cost[m]
            q_base = query_fn((), realized, env)
        else:
            q_base = 0
        charge = per_structure[m]
        for ct in itertools.product(realized, repeat=c):
            steps += charge
            models = base
            for fn in per_constant:
                models &= fn(ct, realized, env)
                if not models:
                    break
            if steps > MAX_WORK:
                raise _over_budget(_OVER_BUDGET)
            if not models:
                continue
            if query_fn is None:
                return True, False, False, steps
            satisfiable = True
            q = q_base if query_shared else query_fn(ct, realized, env)
            can_true = can_true or bool(models & q)
            can_false = can_false or bool(models & (full ^ q))
            if can_true and can_false:
                return True, True, True, steps
    return satisfiable, can_true, can_false, steps


def _cost_table(f: Formula, n: int) -> list[int]:
    """Steps of one evaluation of ``f`` with m realized types, at index m = 0…n."""
    poly = _cost(f)
    return [_poly_at(poly, m) for m in range(n + 1)]


def _snippet(f: Formula) -> str:
    text = to_text(f)
    return repr(text) if len(text) <= 60 else repr(text[:60]) + "…"


@functools.cache
def _type_sets(k: int) -> tuple[tuple[int, ...], ...]:
    """Every non-empty set of realized types over k predicates (a type is a bitmask)."""
    types = 1 << k
    return tuple(tuple(t for t in range(types) if mask >> t & 1) for mask in range(1, 1 << types))


def _mentions_constant(f: Formula) -> bool:
    return any(sort == "c" for sort, _ in _symbols(f))


def _analyze_ground(
    premises: tuple[Formula, ...], query: Formula | None, formulas: list[Formula], limit: int
) -> tuple[bool, bool, bool, int]:
    # Without quantifiers every assignment to the ground atoms (P, P(a)) is
    # realized by some structure (give each constant its own element), so a
    # truth table over ground atoms is exactly first-order consequence.
    atoms: dict[tuple, None] = {}
    for f in formulas:
        _ground_atoms(f, atoms)
    _ground_size_check(len(atoms), limit)
    # One step per connective per 4096 rows: bit-parallel, so a wide table costs more per step.
    steps = sum(_cost(f)[0] for f in formulas) * _words(len(atoms))
    if steps > MAX_WORK:
        raise _over_budget(f"the truth table needs {_count_text(steps)} steps")
    full, columns = _columns(len(atoms))
    cols = dict(zip(atoms, columns))
    models = full
    for f in premises:
        models &= _eval_ground(f, cols, full)
        if not models:
            return False, False, False, steps
    if query is None:
        return True, False, False, steps
    q = _eval_ground(query, cols, full)
    return True, bool(models & q), bool(models & (full ^ q)), steps


def _ground_size_check(n_atoms: int, limit: int) -> None:
    if n_atoms >= limit.bit_length():  # 2^n_atoms > limit, without building a 10,000-bit number to say so
        raise _too_large(_count_text(1 << n_atoms) if n_atoms < 64 else f"2^{n_atoms:,}", 0, 0, n_atoms, limit)


def _ground_atoms(f: Formula, out: dict) -> None:
    kind = type(f)
    if kind is Prop:
        out[("P", f.name)] = None
    elif kind is Pred:
        out[("F", f.name, f.term)] = None
    elif kind is Not:
        _ground_atoms(f.arg, out)
    else:
        _ground_atoms(f.left, out)
        _ground_atoms(f.right, out)


def _connected_groups(symbol_sets: list[dict]) -> list[list[int]]:
    """Premise indices grouped by shared symbols (union-find)."""
    parent = list(range(len(symbol_sets)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict = {}
    for i, syms in enumerate(symbol_sets):
        for s in syms:
            j = owner.setdefault(s, i)
            parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(symbol_sets)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _decide(premises: list[Formula], query: Formula, limit: int = MAX_STRUCTURES) -> str | None:
    """●/○/◐ for premises ⊨ query, or None if the premises are inconsistent.

    Premise groups sharing no symbol with each other or the query are only
    checked for satisfiability: a model of the query's group and a model of a
    disjoint group combine into one model of both (docs/glyphs.md), so such
    groups cannot change the answer — but an inconsistent one still must be
    reported.
    """
    symbol_sets = [_symbols(p) for p in premises]
    query_syms = _symbols(query)
    relevant: list[int] = []
    others: list[tuple[Formula, ...]] = []
    for group in _connected_groups(symbol_sets):
        if any(s in query_syms for i in group for s in symbol_sets[i]):
            relevant.extend(group)
        else:
            others.append(tuple(premises[i] for i in group))
    budget = MAX_WORK  # for the whole puzzle, not per group
    for other in others:
        satisfiable, _, _, steps = _analyze_memo(other, None, limit, budget)
        if not satisfiable:
            return None
        budget -= steps
    mine = tuple(premises[i] for i in sorted(relevant))
    satisfiable, can_true, can_false, _ = _analyze_memo(mine, query, limit, budget)
    if not satisfiable:
        return None
    if not can_false:
        return CERTAIN
    if not can_true:
        return CERTAINLY_NOT
    return UNDETERMINED


# ----------------------------------------------------------------- graded


GRADED_LIKELY = Fraction(13, 20)  # p ≥ 0.65 → ◕
GRADED_UNLIKELY = Fraction(7, 20)  # p ≤ 0.35 → ◔

_GRADED_SHAPE = "[n/m]x:A(x)→B(x), A(a) ? B(a)  (or ? ¬B(a)), plus premises not mentioning A, B or a"


def grade(p: Fraction) -> str:
    """The certainty glyph for a probability p (the graded family's cut-offs)."""
    return _grade_ratio(p.numerator, p.denominator)


def _grade_ratio(n: int, m: int) -> str:
    # Exact integer comparisons: n/m ≥ 13/20 ⇔ 20n ≥ 13m (m > 0), no floats anywhere.
    if n == m:
        return CERTAIN
    if n == 0:
        return CERTAINLY_NOT
    if n * GRADED_LIKELY.denominator >= GRADED_LIKELY.numerator * m:
        return LIKELY
    if n * GRADED_UNLIKELY.denominator <= GRADED_UNLIKELY.numerator * m:
        return UNLIKELY
    return UNDETERMINED


def _quote(puzzle: Puzzle) -> str:
    """The puzzle's text for a message; a long one is cut so the message stays readable."""
    text = puzzle.text
    return repr(text) if len(text) <= 200 else f"{text[:100]!r}… ({len(text):,} characters)"


def _unsupported_graded(puzzle: Puzzle, why: str) -> SlmlabError:
    return SlmlabError(f"unsupported proportion puzzle {_quote(puzzle)}: {why}; the only supported shape is {_GRADED_SHAPE}")


def _solve_graded(puzzle: Puzzle, limit: int) -> str:
    proportions = [p for p in puzzle.premises if type(p) is Proportion]
    if len(proportions) != 1:
        raise _unsupported_graded(puzzle, "it needs exactly one proportion premise")
    pr = proportions[0]
    a_name, b_name = pr.antecedent, pr.consequent
    query = puzzle.query
    negated = type(query) is Not
    core = query.arg if negated else query
    if not (type(core) is Pred and core.name == b_name and not is_variable(core.term)):
        raise _unsupported_graded(puzzle, f"the query must be {b_name}(a) or ¬{b_name}(a) for a constant a")
    individual = core.term
    minor = Pred(a_name, individual)
    rest = [p for p in puzzle.premises if p is not pr]
    if minor not in rest:
        raise _unsupported_graded(puzzle, f"the premise {a_name}({individual}) is missing")
    others = [p for p in rest if p != minor]
    banned = {("F", a_name), ("F", b_name), ("c", individual)}
    for other in others:
        if type(other) is Proportion or banned & _symbols(other).keys():
            raise _unsupported_graded(puzzle, f"the premise {to_text(other)!r} mentions {a_name}, {b_name} or {individual}")
    # The proportion and A(a) are satisfiable and disjoint from the others, so
    # only the others can make the premises inconsistent.
    groups = [tuple(others[i] for i in group) for group in _connected_groups([_symbols(o) for o in others])]
    budget = MAX_WORK
    for group in groups:
        satisfiable, _, _, steps = _analyze_memo(group, None, limit, budget)
        budget -= steps
        if not satisfiable:
            raise InconsistentPremises(f"the premises of {_quote(puzzle)} are inconsistent")
    return _grade_ratio(pr.den - pr.num if negated else pr.num, pr.den)


# ----------------------------------------------------------------- public solve


def solve_puzzle(puzzle: Puzzle) -> str:
    """● if the premises entail the query, ○ if they entail its negation, ◐ otherwise.

    Proportion puzzles get ●/◕/◐/◔/○ by the graded cut-offs. Raises
    :class:`InconsistentPremises` if no structure satisfies the premises and
    :class:`PuzzleTooLarge` if exact enumeration would be too big, or if a
    puzzle built in code breaks a glyph input limit that parsing would have
    enforced (``MAX_DEPTH``, ``MAX_PREDICATES``, ``MAX_CONSTANTS``).
    """
    _check_ast_limits(puzzle)
    return _solve(puzzle, MAX_STRUCTURES)


def _check_ast_limits(puzzle: Puzzle) -> None:
    """The glyph limits, checked without recursion on an AST (text was checked by the parser).

    Depth here is the tree's height in connectives and quantifiers, which is
    never more than the depth of any text that parses to it (brackets count
    there), so every parsed puzzle passes.
    """
    preds: set[str] = set()
    consts = set(puzzle.constants)
    deepest = 0
    stack: list[tuple[Premise, int]] = [(f, 0) for f in (*puzzle.premises, puzzle.query)]
    while stack:
        f, depth = stack.pop()
        kind = type(f)
        if kind is Pred:
            preds.add(f.name)
            if not is_variable(f.term):
                consts.add(f.term)
        elif kind is Not:
            stack.append((f.arg, depth + 1))
        elif kind in _BINDERS:
            stack.append((f.body, depth + 1))
        elif kind in _BINARY:
            stack.append((f.left, depth + 1))
            stack.append((f.right, depth + 1))
        deepest = max(deepest, depth)
    for what, value, name, limit in (
        ("nesting depth", deepest, "MAX_DEPTH", MAX_DEPTH),
        ("number of predicates", len(preds), "MAX_PREDICATES", MAX_PREDICATES),
        ("number of constants", len(consts), "MAX_CONSTANTS", MAX_CONSTANTS),
    ):
        if value > limit:
            raise PuzzleTooLarge(f"puzzle too large: its {what} {value:,} exceeds the limit {name} = {limit:,}")


def _solve(puzzle: Puzzle, limit: int) -> str:
    if any(type(p) is Proportion for p in puzzle.premises):
        return _solve_graded(puzzle, limit)
    answer = _decide(list(puzzle.premises), puzzle.query, limit)
    if answer is None:
        raise InconsistentPremises(
            f"the premises of {_quote(puzzle)} are inconsistent: no structure satisfies them all, "
            "so every query would follow"
        )
    return answer


def solve(puzzle_text: str) -> str:
    """Parse glyph text and decide it; see :func:`solve_puzzle`."""
    return solve_puzzle(parse_puzzle(puzzle_text))


# ============================================================ canonical keys


class _Renamer:
    """Renames symbols in order of first appearance; bound variables by nesting depth.

    Naming a bound variable after its binder's depth (v1 outermost) makes
    alpha-equivalent puzzles share a key and can never capture a variable.
    """

    def __init__(self) -> None:
        self.props: dict[str, str] = {}
        self.preds: dict[str, str] = {}
        self.consts: dict[str, str] = {}
        self.depth = 0

    def const(self, name: str) -> str:
        return self.consts.setdefault(name, f"c{len(self.consts) + 1}")

    def rename(self, f: Premise, env: dict[str, str], depth: int) -> Premise:
        kind = type(f)
        if kind is Prop:
            return Prop(self.props.setdefault(f.name, f"P{len(self.props) + 1}"))
        if kind is Pred:
            name = self.preds.setdefault(f.name, f"F{len(self.preds) + 1}")
            if is_variable(f.term):
                if f.term not in env:
                    raise SlmlabError(f"free variable {f.term!r} in {to_text(f)!r}")
                return Pred(name, env[f.term])
            return Pred(name, self.const(f.term))
        if kind is Not:
            return Not(self.rename(f.arg, env, depth))
        if kind in _BINDERS:
            var = f"v{depth + 1}"
            self.depth = max(self.depth, depth + 1)
            body = self.rename(f.body, {**env, f.var: var}, depth + 1)
            return Proportion(f.num, f.den, var, body) if kind is Proportion else kind(var, body)
        return kind(self.rename(f.left, env, depth), self.rename(f.right, env, depth))


def _canonicalize(puzzle: Puzzle) -> tuple[str, _Renamer]:
    r = _Renamer()
    # Text order: premises, then bare constants, then the query (as Puzzle.text prints).
    premises = tuple(r.rename(p, {}, 0) for p in puzzle.premises)
    constants = tuple(r.const(c) for c in puzzle.constants)
    query = r.rename(puzzle.query, {}, 0)
    return to_text(Puzzle(premises, constants, query)), r


def canonical_key(puzzle_text: str) -> str:
    """The puzzle with symbols renamed by first appearance (P1…, F1…, c1…, v1…).

    Puzzles equal up to renaming share a key, so splitting train/test by key
    keeps renamed copies of one puzzle out of both sides. The key is a label,
    not glyph input (``v1`` would read as a constant).
    """
    return _canonicalize(parse_puzzle(puzzle_text))[0]


# ============================================================ items and shapes


@dataclass(frozen=True, slots=True)
class LogicItem:
    """One verified example. ``text`` is canonical glyph input; ``answer`` was computed by the solver.

    ``symbols`` pairs each role of the family (e.g. ``("p", "R")``) with the
    symbol that plays it here; ``key`` is the canonical key of ``text``.
    """

    text: str
    answer: str
    family: str
    rule: str
    symbols: tuple[tuple[str, str], ...]
    key: str

    @property
    def symbol_map(self) -> dict[str, str]:
        return dict(self.symbols)


@dataclass(frozen=True, slots=True)
class _Shape:
    """A solved puzzle up to renaming, ready to be stamped out with fresh names."""

    key: str
    template: str  # the key with each symbol replaced by a str.format slot
    n_upper: int  # propositions + predicates (they share the uppercase letters)
    n_const: int
    n_var: int
    answer: str
    family: str
    rule: str
    roles: tuple[str, ...]
    role_names: Callable[[list[str]], tuple[str, ...]]  # the names at the roles' slots


_SLOT_RE = re.compile(r"([PFcv])(\d+)")

# Answers by canonical key. Sound because an injective, sort-preserving
# renaming is an isomorphism of signatures: it maps models to models.
_ANSWER_MEMO: dict[str, str] = {}
_MEMO_LIMIT = 500_000
# Generated shapes must also be cheap to decide: bigger ones are redrawn.
_GENERATION_LIMIT = 8192


def _memo_solve(key: str, puzzle: Puzzle) -> str:
    answer = _ANSWER_MEMO.get(key)
    if answer is None:
        answer = _solve(puzzle, _GENERATION_LIMIT)
        if len(_ANSWER_MEMO) >= _MEMO_LIMIT:
            _ANSWER_MEMO.clear()
        _ANSWER_MEMO[key] = answer
    return answer


def _make_shape(puzzle: Puzzle, family: str, rule: str, roles: Mapping[str, str]) -> _Shape:
    key, r = _canonicalize(puzzle)
    answer = _memo_solve(key, puzzle)
    n_p, n_f, n_c = len(r.props), len(r.preds), len(r.consts)
    base = {"P": 0, "F": n_p, "c": n_p + n_f, "v": n_p + n_f + n_c}
    template = _SLOT_RE.sub(lambda m: "{%d}" % (base[m[1]] + int(m[2]) - 1), key)
    canon = {**r.props, **r.preds, **r.consts}
    slots = {role: base[canon[name][0]] + int(canon[name][1:]) - 1 for role, name in roles.items() if name in canon}
    # itemgetter returns a bare value for one index; the fallback keeps it a tuple.
    getter = itemgetter(*slots.values()) if len(slots) > 1 else lambda names: tuple(names[i] for i in slots.values())
    return _Shape(key, template, n_p + n_f, n_c, r.depth, answer, family, rule, tuple(slots), getter)


_UPPER = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_CONST_LETTERS = tuple("abcdefghijklmnopqrstuvw")
_VAR_LETTERS = ("x", "y", "z")
_DIGIT_ODDS = 32  # of 256: about one name in eight carries a digit


def _with_digits(letters: tuple[str, ...]) -> tuple[str, ...]:
    return letters + tuple(f"{ch}{d}" for ch in letters for d in range(1, 10))


_UPPER_EXT, _CONST_EXT, _VAR_EXT = _with_digits(_UPPER), _with_digits(_CONST_LETTERS), _with_digits(_VAR_LETTERS)
_DIGITS = tuple(str(d) for d in range(1, 10))


def _draw_names(rng: random.Random, letters: tuple[str, ...], extended: tuple[str, ...], k: int, decorate: bool) -> list[str]:
    """k distinct names, about one in eight with a digit appended.

    Distinct base letters stay distinct after appending one digit, so the
    renaming is injective. One getrandbits call feeds a partial Fisher–Yates
    shuffle; random.sample is correct too but dominates the fast path's time.
    """
    if k > len(letters):
        return rng.sample(extended, k)
    pool = list(letters)
    n = len(pool)
    # ≤ 5 bits per pick (n ≤ 26), 12 per decoration, and 40 spare bits keep the
    # modulo bias of the picks below 2^-40.
    bits = rng.getrandbits(40 + 17 * k)
    for i in range(k):
        bits, j = divmod(bits, n - i)
        j += i
        pool[i], pool[j] = pool[j], pool[i]
    names = pool[:k]
    if decorate:
        for i in range(k):
            if bits & 255 < _DIGIT_ODDS:
                names[i] += _DIGITS[(bits >> 8) % 9]
            bits >>= 12
    return names


def _realize(shape: _Shape, rng: random.Random) -> LogicItem:
    names = _draw_names(rng, _UPPER, _UPPER_EXT, shape.n_upper, True)
    if shape.n_const:
        names += _draw_names(rng, _CONST_LETTERS, _CONST_EXT, shape.n_const, True)
    if shape.n_var:
        names += _draw_names(rng, _VAR_LETTERS, _VAR_EXT, shape.n_var, False)
    symbols = tuple(zip(shape.roles, shape.role_names(names)))
    return LogicItem(shape.template.format(*names), shape.answer, shape.family, shape.rule, symbols, shape.key)


# ============================================================ families

_NEGATE_ODDS = 0.35
_COMPOUND_ODDS = 0.25

RULE_AC = "affirming the consequent (fallacy)"
RULE_DA = "denying the antecedent (fallacy)"
RULE_ADJ = "affirming a disjunct (fallacy)"
RULE_CONVERSE = "converse error (fallacy)"
RULE_INVERSE = "inverse error (fallacy)"
RULE_MIDDLE = "undistributed middle (fallacy)"
RULE_INSTANCE = "illicit instantiation (fallacy)"
RULE_HASTY = "hasty generalization (fallacy)"
RULE_MISSING = "missing premise"
RULE_OPEN = "not enough information"
RULE_WRONG = "wrong individual"
RULE_BROKEN = "broken chain"


@dataclass
class _Draft:
    premises: list[Premise]
    query: Formula
    rule: str
    constants: list[str] = field(default_factory=list)


class _Ctx:
    """What a family builder gets: the rng, target answer, params and fresh placeholder symbols."""

    def __init__(self, rng: random.Random, answer: str, params: Mapping[str, object], spec: FamilySpec) -> None:
        self.rng = rng
        self.answer = answer
        self.params = params
        self.spec = spec
        self.counts = {"P": 0, "F": 0, "c": 0}
        self.roles: dict[str, str] = {}

    # -- fresh symbols (placeholders are valid glyph names, so shapes can be solved as they are)
    def fresh(self, sort: str, role: str) -> str:
        self.counts[sort] += 1
        name = f"{sort}{self.counts[sort]}"
        self.roles.setdefault(role, name)
        return name

    def coin(self, odds: float = 0.5) -> bool:
        return self.rng.random() < odds

    def literal(self, role: str) -> Formula:
        atom = Prop(self.fresh("P", role))
        return Not(atom) if self.coin(_NEGATE_ODDS) else atom

    def piece(self, role: str) -> Formula:
        """A literal, or a small compound of two where the family allows it."""
        if self.params.get("compounds") and self.coin(_COMPOUND_ODDS):
            op = And if self.coin() else Or
            return op(self.literal(role), self.literal(role + "_2"))
        return self.literal(role)

    def pred_piece(self, role: str, compound: bool = True) -> Callable[[str], Formula]:
        """A monadic 'piece' as a function of a term: F(t), ¬F(t) or a compound of two.

        Callers pass ``compound=False`` to keep a group at ≤ 3 predicates: the
        exact enumeration grows doubly exponentially in their number.
        """
        first = self._pred_literal(role)
        if compound and self.params.get("compounds") and self.coin(_COMPOUND_ODDS):
            second = self._pred_literal(role + "_2")
            op = And if self.coin() else Or
            return lambda t: op(first(t), second(t))
        return first

    def _pred_literal(self, role: str) -> Callable[[str], Formula]:
        name = self.fresh("F", role)
        if self.coin(_NEGATE_ODDS):
            return lambda t: Not(Pred(name, t))
        return lambda t: Pred(name, t)

    def const(self, role: str) -> str:
        return self.fresh("c", role)

    # -- answers
    @property
    def decisive(self) -> bool:
        return self.answer in (CERTAIN, CERTAINLY_NOT)

    def conclude(self, premises: list[Premise], conclusion: Formula, constants: Iterable[str] = ()) -> _Draft:
        """● asks the conclusion, ○ asks its negation."""
        query = conclusion if self.answer == CERTAIN else neg(conclusion)
        return _Draft(premises, query, self.spec.rule, list(constants))

    def split(self, f: Formula) -> list[Formula]:
        """A conjunctive premise, sometimes given as its separate conjuncts."""
        return [f.left, f.right] if type(f) is And and self.coin() else [f]

    def variant(self, *options: Callable[[], _Draft]) -> _Draft:
        return self.rng.choice(options)()

    def open_question(self, premises: list[Premise], constants: Iterable[str] = ()) -> _Draft:
        """Keep the valid core but ask about something the premises leave open."""
        if self.coin(0.2):  # a symbol the premises never mention
            return _Draft(premises, self._open_literal(), RULE_OPEN, list(constants))
        if self.spec.monadic:
            f, g, b = self.fresh("F", "open"), self.fresh("F", "open_2"), self.const("open_individual")
            extra = self.rng.choice(
                [Or(Pred(f, b), Pred(g, b)), Implies(Pred(f, b), Pred(g, b)), ForAll("x", Or(Pred(f, "x"), Pred(g, "x")))]
            )
            query: Formula = Pred(self.rng.choice((f, g)), b)
        else:
            r, s = Prop(self.fresh("P", "open")), Prop(self.fresh("P", "open_2"))
            extra = self.rng.choice([Or(r, s), Implies(r, s), Or(Not(r), s), Iff(r, s)])
            query = self.rng.choice((r, s))
        query = Not(query) if self.coin(_NEGATE_ODDS) else query
        return _Draft([*premises, extra], query, RULE_OPEN, list(constants))

    def _open_literal(self) -> Formula:
        if self.spec.monadic:
            atom: Formula = Pred(self.fresh("F", "open"), self.const("open_individual"))
        else:
            atom = Prop(self.fresh("P", "open"))
        return Not(atom) if self.coin(_NEGATE_ODDS) else atom


# -- propositional families


def _modus_ponens(ctx: _Ctx) -> _Draft:
    a, b = ctx.piece("p"), ctx.piece("q")
    major = Implies(a, b)
    if ctx.decisive:
        return ctx.conclude([major, *ctx.split(a)], b)
    return ctx.variant(
        lambda: _Draft([major, b], a, RULE_AC),
        lambda: _Draft([major, neg(a)], neg(b), RULE_DA),
        lambda: _Draft([major], b, RULE_MISSING),
        lambda: ctx.open_question([major, a]),
    )


def _modus_tollens(ctx: _Ctx) -> _Draft:
    a, b = ctx.piece("p"), ctx.piece("q")
    major = Implies(a, b)
    if ctx.decisive:
        return ctx.conclude([major, neg(b)], neg(a))
    return ctx.variant(
        lambda: _Draft([major, b], a, RULE_AC),
        lambda: _Draft([major, neg(a)], neg(b), RULE_DA),
        lambda: _Draft([major], neg(a), RULE_MISSING),
        lambda: ctx.open_question([major, neg(b)]),
    )


def _hypothetical_syllogism(ctx: _Ctx) -> _Draft:
    a, b, c = ctx.piece("p"), ctx.literal("q"), ctx.piece("r")
    if ctx.decisive:
        return ctx.conclude([Implies(a, b), Implies(b, c)], Implies(a, c))
    return ctx.variant(
        lambda: _Draft([Implies(a, b), Implies(b, c)], Implies(c, a), RULE_CONVERSE),
        lambda: _Draft([Implies(a, b), Implies(c, b)], Implies(a, c), RULE_MIDDLE),
        lambda: ctx.open_question([Implies(a, b), Implies(b, c)]),
    )


def _disjunctive_syllogism(ctx: _Ctx) -> _Draft:
    a, b = ctx.piece("p"), ctx.piece("q")
    if ctx.coin():
        a, b = b, a  # eliminate either disjunct
    disjunction = Or(a, b) if ctx.coin() else Or(b, a)
    if ctx.decisive:
        return ctx.conclude([disjunction, neg(a)], b)
    return ctx.variant(
        lambda: _Draft([disjunction, a], neg(b), RULE_ADJ),
        lambda: _Draft([disjunction], b, RULE_MISSING),
        lambda: ctx.open_question([disjunction, neg(a)]),
    )


def _conjunction_introduction(ctx: _Ctx) -> _Draft:
    a, b = ctx.piece("p"), ctx.piece("q")
    if ctx.decisive:
        return ctx.conclude([a, b], And(a, b))
    return ctx.variant(
        lambda: _Draft([a], And(a, b), RULE_MISSING),
        lambda: _Draft([Or(a, b)], And(a, b), RULE_OPEN),
        lambda: ctx.open_question([a, b]),
    )


def _conjunction_elimination(ctx: _Ctx) -> _Draft:
    a, b = ctx.piece("p"), ctx.piece("q")
    conclusion = a if ctx.coin() else b
    if ctx.decisive:
        return ctx.conclude([And(a, b)], conclusion)
    return ctx.variant(
        lambda: _Draft([Or(a, b)], conclusion, RULE_OPEN),
        lambda: ctx.open_question([And(a, b)]),
    )


def _disjunction_introduction(ctx: _Ctx) -> _Draft:
    a, b = ctx.piece("p"), ctx.piece("q")
    if ctx.decisive:
        return ctx.conclude([a], Or(a, b) if ctx.coin() else Or(b, a))
    return ctx.variant(
        lambda: _Draft([Or(a, b)], a, RULE_OPEN),
        lambda: _Draft([a], And(a, b), RULE_MISSING),
        lambda: ctx.open_question([a]),
    )


def _contraposition(ctx: _Ctx) -> _Draft:
    a, b = ctx.piece("p"), ctx.piece("q")
    if ctx.decisive:
        return ctx.conclude([Implies(a, b)], Implies(neg(b), neg(a)))
    return ctx.variant(
        lambda: _Draft([Implies(a, b)], Implies(b, a), RULE_CONVERSE),
        lambda: _Draft([Implies(a, b)], Implies(neg(a), neg(b)), RULE_INVERSE),
        lambda: ctx.open_question([Implies(a, b)]),
    )


def _double_negation(ctx: _Ctx) -> _Draft:
    a = ctx.literal("p")
    if ctx.decisive:
        if ctx.coin():
            return ctx.conclude([Not(Not(a))], a)
        return ctx.conclude([a], Not(Not(a)))
    return ctx.variant(
        lambda: _Draft([Or(Not(Not(a)), ctx.literal("q"))], a, RULE_OPEN),
        lambda: _Draft([Not(And(Not(a), ctx.literal("q")))], a, RULE_OPEN),
        lambda: ctx.open_question([Not(Not(a))]),
    )


def _biconditional(ctx: _Ctx) -> _Draft:
    a, b = ctx.piece("p"), ctx.piece("q")
    iff = Iff(a, b)
    if ctx.decisive:
        known, conclusion = ctx.rng.choice([(a, b), (b, a), (neg(a), neg(b)), (neg(b), neg(a))])
        return ctx.conclude([iff, known], conclusion)
    return ctx.variant(
        lambda: _Draft([iff], b, RULE_MISSING),
        lambda: _Draft([iff, Or(a, ctx.literal("r"))], b, RULE_OPEN),
        lambda: ctx.open_question([iff, a]),
    )


def _chain(ctx: _Ctx) -> _Draft:
    depth = ctx.params.get("depth") or ctx.rng.randint(2, 6)
    steps = [ctx.literal(f"step{i}") for i in range(depth + 1)]
    links = [Implies(steps[i], steps[i + 1]) for i in range(depth)]
    if ctx.decisive:
        return ctx.conclude([*links, steps[0]], steps[-1])

    def broken() -> _Draft:
        i = ctx.rng.randrange(depth)
        bent = links[:i] + [Implies(steps[i + 1], steps[i])] + links[i + 1 :]
        return _Draft([*bent, steps[0]], steps[-1], RULE_BROKEN)

    return ctx.variant(
        broken,
        lambda: _Draft(list(links), steps[-1], RULE_MISSING),
        lambda: _Draft([*links, steps[-1]], steps[0], RULE_AC),
        lambda: ctx.open_question([*links, steps[0]]),
    )


# -- monadic families


def _universal_instantiation(ctx: _Ctx) -> _Draft:
    phi, a = ctx.pred_piece("p"), ctx.const("individual")
    named = [a] if ctx.coin() else []  # "∀x:P(x),a?P(a)" and "∀x:P(x)?P(a)" are both fine
    if ctx.decisive:
        if ctx.coin(0.3):
            psi = ctx.pred_piece("q", compound=ctx.counts["F"] == 1)
            return ctx.conclude([ForAll("x", And(phi("x"), psi("x")))], phi(a), named)
        return ctx.conclude([ForAll("x", phi("x"))], phi(a), named)
    return ctx.variant(
        lambda: _Draft([Exists("x", phi("x"))], phi(a), RULE_INSTANCE, [a]),
        lambda: _Draft([ForAll("x", Or(phi("x"), ctx.pred_piece("q", False)("x")))], phi(a), RULE_OPEN, [a]),
        lambda: ctx.open_question([ForAll("x", phi("x"))], named),
    )


def _existential_generalization(ctx: _Ctx) -> _Draft:
    phi, a = ctx.pred_piece("p"), ctx.const("individual")
    if ctx.answer == CERTAIN:
        return ctx.conclude([phi(a)], Exists("x", phi("x")))
    if ctx.answer == CERTAINLY_NOT:
        # Either spelling of "nothing is φ" is the negation of the conclusion.
        denial = Not(Exists("x", phi("x"))) if ctx.coin() else ForAll("x", neg(phi("x")))
        return _Draft([phi(a)], denial, ctx.spec.rule)
    return ctx.variant(
        lambda: _Draft([Exists("x", phi("x"))], phi(a), RULE_INSTANCE, [a]),
        lambda: _Draft([phi(a)], ForAll("x", phi("x")), RULE_HASTY),
        lambda: ctx.open_question([phi(a)]),
    )


def _universal_modus_ponens(ctx: _Ctx) -> _Draft:
    phi, a = ctx.pred_piece("p"), ctx.const("individual")
    psi = ctx.pred_piece("q", compound=ctx.counts["F"] == 1)
    rule = ForAll("x", Implies(phi("x"), psi("x")))
    if ctx.decisive:
        return ctx.conclude([rule, phi(a)], psi(a))

    def wrong_individual() -> _Draft:
        b = ctx.const("other_individual")
        return _Draft([rule, phi(b)], psi(a), RULE_WRONG)

    return ctx.variant(
        lambda: _Draft([rule, psi(a)], phi(a), RULE_AC),
        lambda: _Draft([rule, neg(phi(a))], neg(psi(a)), RULE_DA),
        wrong_individual,
        lambda: ctx.open_question([rule, phi(a)]),
    )


# -- fallacies: the honest answer is always ◐


def _affirming_the_consequent(ctx: _Ctx) -> _Draft:
    if ctx.coin():
        phi, a = ctx.pred_piece("p"), ctx.const("individual")
        psi = ctx.pred_piece("q", compound=ctx.counts["F"] == 1)
        return _Draft([ForAll("x", Implies(phi("x"), psi("x"))), psi(a)], phi(a), RULE_AC)
    a, b = ctx.piece("p"), ctx.piece("q")
    return _Draft([Implies(a, b), b], a, RULE_AC)


def _denying_the_antecedent(ctx: _Ctx) -> _Draft:
    if ctx.coin():
        phi, a = ctx.pred_piece("p"), ctx.const("individual")
        psi = ctx.pred_piece("q", compound=ctx.counts["F"] == 1)
        return _Draft([ForAll("x", Implies(phi("x"), psi("x"))), neg(phi(a))], neg(psi(a)), RULE_DA)
    a, b = ctx.piece("p"), ctx.piece("q")
    return _Draft([Implies(a, b), neg(a)], neg(b), RULE_DA)


# -- graded

_DENOMINATORS = (2, 3, 4, 5, 6, 8, 10, 12, 20, 100)


def _graded(ctx: _Ctx) -> _Draft:
    a_name, b_name, a = ctx.fresh("F", "p"), ctx.fresh("F", "q"), ctx.const("individual")
    negated = ctx.coin()
    while True:
        den = ctx.rng.choice(_DENOMINATORS)
        fits = [n for n in range(den + 1) if _grade_ratio(den - n if negated else n, den) == ctx.answer]
        if fits:
            break
    proportion = Proportion(ctx.rng.choice(fits), den, "x", Implies(Pred(a_name, "x"), Pred(b_name, "x")))
    query: Formula = Not(Pred(b_name, a)) if negated else Pred(b_name, a)
    return _Draft([proportion, Pred(a_name, a)], query, ctx.spec.rule)


# -- distractors


def _distractor(ctx: _Ctx, index: int) -> Premise:
    """A premise over fresh symbols only (the solver still re-checks the answer)."""
    role = f"distractor{index}"
    if ctx.coin(0.5 if ctx.spec.monadic else 0.2):
        f, g, b = ctx.fresh("F", role), ctx.fresh("F", role + "_2"), ctx.const(role + "_individual")
        lit = Pred(f, b) if ctx.coin() else Not(Pred(f, b))
        return ctx.rng.choice(
            [
                lit,
                ForAll("x", Implies(Pred(f, "x"), Pred(g, "x"))),
                Exists("x", Pred(f, "x")),
                Or(Pred(f, b), Pred(g, b)),
                Exists("x", And(Pred(f, "x"), Not(Pred(g, "x")))),
            ]
        )
    r, s = ctx.literal(role), ctx.literal(role + "_2")
    return ctx.rng.choice([r, Implies(r, s), Or(r, s), And(r, s), Iff(r, s)])


# ============================================================ registry

_ALL3 = (CERTAIN, CERTAINLY_NOT, UNDETERMINED)
_GRADED_ANSWERS = (CERTAIN, LIKELY, UNDETERMINED, UNLIKELY, CERTAINLY_NOT)


@dataclass(frozen=True)
class FamilySpec:
    """A named puzzle generator: which answers it can target and its default parameters."""

    name: str
    description: str
    rule: str
    answers: tuple[str, ...]
    defaults: Mapping[str, object]
    build: Callable[[_Ctx], _Draft] = field(repr=False, compare=False)
    monadic: bool = False  # flavour of open questions and most distractors


_COMMON = {"distractors": None, "compounds": True}


def _spec(name: str, description: str, rule: str, build: Callable, answers=_ALL3, monadic=False, **extra) -> FamilySpec:
    defaults = MappingProxyType({**_COMMON, **extra})
    return FamilySpec(name, description, rule, answers, defaults, build, monadic)


FAMILIES: dict[str, FamilySpec] = {
    s.name: s
    for s in [
        _spec("modus_ponens", "A→B, A ⊢ B", "modus ponens", _modus_ponens),
        _spec("modus_tollens", "A→B, ¬B ⊢ ¬A", "modus tollens", _modus_tollens),
        _spec("hypothetical_syllogism", "A→B, B→C ⊢ A→C", "hypothetical syllogism", _hypothetical_syllogism),
        _spec("disjunctive_syllogism", "A∨B, ¬A ⊢ B", "disjunctive syllogism", _disjunctive_syllogism),
        _spec("conjunction_introduction", "A, B ⊢ A∧B", "conjunction introduction", _conjunction_introduction),
        _spec("conjunction_elimination", "A∧B ⊢ A", "conjunction elimination", _conjunction_elimination),
        _spec("disjunction_introduction", "A ⊢ A∨B", "disjunction introduction", _disjunction_introduction),
        _spec("contraposition", "A→B ⊢ ¬B→¬A", "contraposition", _contraposition),
        _spec("double_negation", "¬¬A ⊢ A and A ⊢ ¬¬A", "double negation", _double_negation),
        _spec("biconditional", "A↔B, A ⊢ B (and the other three directions)", "biconditional elimination", _biconditional),
        _spec("universal_instantiation", "∀x:φ(x), a ⊢ φ(a)", "universal instantiation", _universal_instantiation, monadic=True),
        _spec("existential_generalization", "φ(a) ⊢ ∃x:φ(x)", "existential generalization", _existential_generalization, monadic=True),
        _spec("universal_modus_ponens", "∀x:φ(x)→ψ(x), φ(a) ⊢ ψ(a)", "universal modus ponens", _universal_modus_ponens, monadic=True),
        _spec("chain", "A1→A2, …, An→An+1, A1 ⊢ An+1 (depth n)", "chained modus ponens", _chain, depth=None),
        _spec("affirming_the_consequent", "A→B, B ? A — does not follow", RULE_AC, _affirming_the_consequent, answers=(UNDETERMINED,)),
        _spec("denying_the_antecedent", "A→B, ¬A ? ¬B — does not follow", RULE_DA, _denying_the_antecedent, answers=(UNDETERMINED,)),
        _spec(
            "graded",
            "[n/m]x:A(x)→B(x), A(a) ? B(a) — graded by the proportion",
            "statistical syllogism",
            _graded,
            answers=_GRADED_ANSWERS,
            monadic=True,
        ),
    ]
}

_MAX_DISTRACTORS = 8
_DEPTH_RANGE = (1, 10)


def _check_param(family: str, name: str, value: object) -> object:
    def bad(expected: str) -> SlmlabError:
        return SlmlabError(f"family {family!r}: parameter {name!r} must be {expected}, got {value!r}")

    if name == "distractors":
        if value is not None and (type(value) is not int or not 0 <= value <= _MAX_DISTRACTORS):
            raise bad(f"None (random 0–2) or an int from 0 to {_MAX_DISTRACTORS}")
    elif name == "compounds":
        if type(value) is not bool:
            raise bad("True or False")
    elif name == "depth":
        lo, hi = _DEPTH_RANGE
        if value is not None and (type(value) is not int or not lo <= value <= hi):
            raise bad(f"None (random 2–6) or an int from {lo} to {hi}")
    return value


def _family(name: str) -> FamilySpec:
    spec = FAMILIES.get(name) if isinstance(name, str) else None
    if spec is None:
        raise SlmlabError(unknown_name_message("logic family", str(name), list(FAMILIES)))
    return spec


def _resolve_params(spec: FamilySpec, params: Mapping[str, object]) -> dict[str, object]:
    for name in params:
        if name not in spec.defaults:
            accepted = ", ".join(sorted(spec.defaults))
            raise SlmlabError(f"family {spec.name!r} has no parameter {name!r}; it accepts: {accepted}")
    return {name: _check_param(spec.name, name, params.get(name, default)) for name, default in spec.defaults.items()}


def _resolve_answer(spec: FamilySpec, answer: str | None, rng: random.Random) -> str:
    if answer is None:
        return rng.choice(spec.answers)
    if answer not in spec.answers:
        raise SlmlabError(f"family {spec.name!r} cannot produce answer {answer!r}; it produces {' '.join(spec.answers)}")
    return answer


_MAX_TRIES = 50


def _build_shape(spec: FamilySpec, rng: random.Random, answer: str, params: Mapping[str, object]) -> _Shape:
    """Propose drafts until the solver confirms one has the target answer."""
    for _ in range(_MAX_TRIES):
        ctx = _Ctx(rng, answer, params, spec)
        draft = spec.build(ctx)
        wanted = params["distractors"]
        count = rng.randint(0, 2) if wanted is None else wanted
        premises = draft.premises + [_distractor(ctx, i + 1) for i in range(count)]
        rng.shuffle(premises)
        puzzle = Puzzle(tuple(premises), tuple(draft.constants), draft.query)
        try:
            shape = _make_shape(puzzle, spec.name, draft.rule, ctx.roles)
        except (InconsistentPremises, PuzzleTooLarge):
            continue  # never emitted: the solver, not the family, has the last word
        if shape.answer == answer:
            return shape
    raise RuntimeError(f"family {spec.name!r} found no {answer} puzzle in {_MAX_TRIES} tries (a bug in the family)")


def make_puzzle(family: str, rng: random.Random, answer: str | None = None, **params: object) -> LogicItem:
    """One verified puzzle from ``family`` (answer None = uniform over the answers it supports)."""
    spec = _family(family)
    resolved = _resolve_params(spec, params)
    target = _resolve_answer(spec, answer, rng)
    return _realize(_build_shape(spec, rng, target, resolved), rng)


# ============================================================ fast path

DEFAULT_POOL_SIZE = 1024
_MAIN_ANSWERS = (CERTAIN, CERTAINLY_NOT, UNDETERMINED)
_POOLS: dict[tuple, dict[int, _Shape]] = {}


def _answer_weights(specs: list[FamilySpec], answer: str | None) -> list[tuple[FamilySpec, str, float]]:
    """(family, answer, probability) so that ●, ○ and ◐ come out equally often.

    ◕ and ◔ (graded only) keep the share they would get if families were drawn
    uniformly; the rest is split evenly between ●, ○ and ◐, each spread evenly
    over the families that can produce it.
    """
    if answer is not None:
        able = [s for s in specs if answer in s.answers]
        if not able:
            raise SlmlabError(f"none of the selected families can produce answer {answer!r}")
        return [(s, answer, 1 / len(able)) for s in able]
    main = [g for g in _MAIN_ANSWERS if any(g in s.answers for s in specs)]
    entries = [(s, g, 1 / len(specs) / len(s.answers)) for s in specs for g in s.answers if g not in main]
    rest = 1 - sum(w for _, _, w in entries)
    for g in main:
        able = [s for s in specs if g in s.answers]
        entries += [(s, g, rest / len(main) / len(able)) for s in able]
    return entries


def _pool_builder(spec: FamilySpec, answer: str, params: dict, pool_seed: int) -> tuple[dict[int, _Shape], Callable[[int], _Shape]]:
    # Slot i's shape depends only on (seed, family, answer, params, i), never on
    # the caller's rng or on what is cached: same seed → same items, warm or cold.
    pkey = repr(sorted(params.items()))
    pool = _POOLS.setdefault((pool_seed, spec.name, answer, pkey), {})

    def build(slot: int) -> _Shape:
        shape = _build_shape(spec, random.Random(f"{pool_seed}|{spec.name}|{answer}|{pkey}|{slot}"), answer, params)
        pool[slot] = shape
        return shape

    return pool, build


def generate_pure(
    rng: random.Random,
    n: int,
    families: Iterable[str] | None = None,
    answer: str | None = None,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    pool_seed: int = 0,
    **params: object,
) -> list[LogicItem]:
    """``n`` verified items, fast: verified shapes stamped out under random renamings.

    Each (family, answer) has ``pool_size`` shape slots, built on first use and
    solved by :func:`solve_puzzle`; items pick a slot with ``rng`` and rename
    its symbols. ``params`` go to every selected family that accepts them.
    """
    specs = [_family(f) for f in families] if families is not None else list(FAMILIES.values())
    if not specs:
        raise SlmlabError("generate_pure needs at least one family")
    if type(n) is not int or n < 0:
        raise SlmlabError(f"n must be a non-negative int, got {n!r}")
    if type(pool_size) is not int or pool_size < 1:
        raise SlmlabError(f"pool_size must be a positive int, got {pool_size!r}")
    for name in params:
        if not any(name in s.defaults for s in specs):
            raise SlmlabError(f"no selected family accepts parameter {name!r}")
    resolved = {s.name: _resolve_params(s, {k: v for k, v in params.items() if k in s.defaults}) for s in specs}
    weights = _answer_weights(specs, answer)
    pools = [_pool_builder(s, g, resolved[s.name], pool_seed) for s, g, _ in weights]
    cumulative = list(itertools.accumulate(w for _, _, w in weights))
    total, last = cumulative[-1], len(cumulative) - 1
    rand = rng.random
    out: list[LogicItem] = []
    append = out.append
    # Items hold no reference cycles, so the cyclic collector has nothing to
    # find here; left on, its repeated scans of the growing list cost ~40%.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(n):
            pool, build = pools[min(bisect.bisect_right(cumulative, rand() * total), last)]
            slot = int(rand() * pool_size)
            shape = pool.get(slot) or build(slot)
            append(_realize(shape, rng))
    finally:
        if collecting:
            gc.enable()
    return out


# ============================================================ English rendering

# Independent clauses (no two about the same thing), so English world
# knowledge cannot settle what the premises leave open.
_CLAUSES = (
    ("it", "raining"), ("the lamp", "on"), ("the room", "warm"), ("the door", "locked"), ("the kettle", "hot"),
    ("the dog", "asleep"), ("the window", "open"), ("the alarm", "ringing"), ("the garden", "watered"),
    ("the train", "late"), ("the shop", "closed"), ("the baby", "awake"), ("the river", "frozen"),
    ("the printer", "jammed"), ("the meeting", "cancelled"), ("the battery", "charged"), ("the bridge", "raised"),
    ("the cat", "hungry"), ("the music", "loud"), ("the soup", "salty"), ("the car", "clean"), ("the tent", "dry"),
    ("the engine", "running"), ("the library", "quiet"), ("the gate", "painted"), ("the letter", "sealed"),
    ("the fountain", "working"), ("the clock", "fast"), ("the bread", "fresh"), ("the ladder", "steady"),
)
_PROPERTIES = (
    ("red", "red"), ("tall", "tall"), ("a teacher", "teachers"), ("a musician", "musicians"), ("friendly", "friendly"),
    ("a painter", "painters"), ("hungry", "hungry"), ("a student", "students"), ("asleep", "asleep"),
    ("a chess player", "chess players"), ("curious", "curious"), ("a gardener", "gardeners"), ("brave", "brave"),
    ("a baker", "bakers"), ("quiet", "quiet"), ("a pilot", "pilots"), ("left-handed", "left-handed"),
    ("a swimmer", "swimmers"), ("polite", "polite"), ("a poet", "poets"),
)
_NAMES = (
    "Ada", "Ben", "Chloe", "Dev", "Emil", "Farah", "Greta", "Hugo", "Iris", "Jonas", "Kemal", "Lena", "Mateo",
    "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Viktor", "Wen",
)


def _draw_words(rng: random.Random, pool: tuple, k: int, spare: Callable[[int], object]) -> list:
    if k <= len(pool):
        return rng.sample(pool, k)
    return list(rng.sample(pool, len(pool))) + [spare(i) for i in range(1, k - len(pool) + 1)]


class _English:
    """A formula→English renderer with lexicon entries drawn for one puzzle."""

    def __init__(self, puzzle: Puzzle, rng: random.Random) -> None:
        syms = _symbols(*puzzle.premises, puzzle.query)
        for c in puzzle.constants:
            syms[("c", c)] = None
        props = [n for s, n in syms if s == "P"]
        preds = [n for s, n in syms if s == "F"]
        consts = [n for s, n in syms if s == "c"]
        self.clause = dict(zip(props, _draw_words(rng, _CLAUSES, len(props), lambda i: (f"switch {i}", "on"))))
        self.prop = dict(zip(preds, _draw_words(rng, _PROPERTIES, len(preds), lambda i: (f"in group {i}",) * 2)))
        self.name = dict(zip(consts, _draw_words(rng, _NAMES, len(consts), lambda i: f"Person {i}")))

    def subject(self, term: str) -> str:
        return term if is_variable(term) else self.name[term]

    def predicate(self, f: Formula) -> str | None:
        """'is red' / 'is not red' for a literal about a variable, else None."""
        if type(f) is Pred:
            return f"is {self.prop[f.name][0]}"
        if type(f) is Not and type(f.arg) is Pred:
            return f"is not {self.prop[f.arg.name][0]}"
        return None

    def say(self, f: Premise) -> str:
        kind = type(f)
        if kind is Prop:
            subject, state = self.clause[f.name]
            return f"{subject} is {state}"
        if kind is Pred:
            return f"{self.subject(f.term)} {self.predicate(f)}"
        if kind is Not:
            return self._say_not(f.arg)
        if kind is And:
            return f"{self._part(f.left, And)} and {self._part(f.right, And)}"
        if kind is Or:
            return f"either {self._part(f.left, Or)} or {self._part(f.right, Or)}"
        if kind is Implies:
            left = self._part(f.left) if type(f.left) in (Implies, Iff) else self.say(f.left)
            return f"if {left}, then {self._part(f.right)}"
        if kind is Iff:
            return f"{self._part(f.left)} if and only if {self._part(f.right)}"
        if kind is Proportion:
            a, b = self.prop[f.antecedent][1], self.prop[f.consequent][1]
            return f"{f.num} out of every {f.den} things that are {a} are {b}"
        return self._say_quantifier(f)

    def _say_not(self, arg: Formula) -> str:
        if type(arg) is Prop:
            subject, state = self.clause[arg.name]
            return f"{subject} is not {state}"
        if type(arg) is Pred:
            return f"{self.subject(arg.term)} is not {self.prop[arg.name][0]}"
        if type(arg) is Exists and type(arg.body) is Pred and arg.body.term == arg.var:
            return f"nothing {self.predicate(arg.body)}"
        return f"it is not the case that {self._part(arg)}"

    def _say_quantifier(self, f: ForAll | Exists) -> str:
        body, var = f.body, f.var
        literal = self._about(body, var)
        if type(f) is ForAll:
            if literal:
                return f"everything {literal}"
            if type(body) is Implies:
                ante, cons = self._about(body.left, var), self._about(body.right, var)
                if ante and cons:
                    return f"everything that {ante} {cons}"
            return f"for every thing {var}, {self.say(body)}"
        if literal:
            return f"something {literal}"
        if type(body) is And:
            left, right = self._about(body.left, var), self._about(body.right, var)
            if left and right:
                return f"something {left} and {right}"
        return f"there is a thing {var} such that {self.say(body)}"

    def _about(self, f: Formula, var: str) -> str | None:
        arg = f.arg if type(f) is Not else f
        return self.predicate(f) if type(arg) is Pred and arg.term == var else None

    def _part(self, f: Formula, same: type | None = None) -> str:
        # English has no brackets; nested connectives get them so the reading
        # stays unique, except a connective inside itself (∧ in ∧, ∨ in ∨),
        # which is associative.
        text = self.say(f)
        if type(f) is same:
            return text
        return f"({text})" if type(f) in _BINARY or type(f) in (ForAll, Exists) else text

    def sentence(self, f: Premise) -> str:
        text = self.say(f)
        if text.startswith("("):
            text = "it is the case that " + text
        return text[0].upper() + text[1:] + "."

    def question(self, q: Formula) -> str:
        core, negated = (q.arg, True) if type(q) is Not else (q, False)
        not_ = " not" if negated else ""
        if type(core) is Prop:
            subject, state = self.clause[core.name]
            return f"Is {subject}{not_} {state}?"
        if type(core) is Pred:
            return f"Is {self.name[core.term]}{not_} {self.prop[core.name][0]}?"
        return f"Is it true that {self.say(q)}?"


_GRADED_WORDS = {
    CERTAIN: "so certainly",
    LIKELY: "so probably",
    UNDETERMINED: "so it could go either way",
    UNLIKELY: "so probably not",
    CERTAINLY_NOT: "so certainly not",
}


def render_hybrid(item: LogicItem, rng: random.Random) -> tuple[str, str]:
    """(English puzzle, glyph answer + one-line justification), rendered from the formula structure."""
    puzzle = parse_puzzle(item.text)
    english = _English(puzzle, rng)
    sentences = [english.sentence(p) for p in puzzle.premises]
    sentences += [f"Consider {english.name[c]}." for c in puzzle.constants]
    prompt = " ".join([*sentences, english.question(puzzle.query)])
    return prompt, _justify(item, puzzle, english)


def _justify(item: LogicItem, puzzle: Puzzle, english: _English) -> str:
    glyph, rule = item.answer, item.rule
    proportion = next((p for p in puzzle.premises if type(p) is Proportion), None)
    if proportion is not None:
        return f"{glyph} — {rule}: {english.say(proportion)}, {_GRADED_WORDS[glyph]}"
    if glyph == CERTAIN:
        return f"{glyph} — {rule}"
    if glyph == CERTAINLY_NOT:
        return f"{glyph} — {rule}: {english.say(neg(puzzle.query))}, so the answer is no"
    return f"{glyph} — {rule}: it does not follow either way"


__all__ = [
    "DEFAULT_POOL_SIZE", "FAMILIES", "MAX_STRUCTURES", "MAX_WORK", "FamilySpec", "InconsistentPremises", "LogicItem",
    "PuzzleTooLarge", "canonical_key", "generate_pure", "grade", "make_puzzle", "neg", "render_hybrid", "solve",
    "solve_puzzle",
]
