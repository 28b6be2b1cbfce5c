"""Generated, checked training examples for the three roles, in the pipeline's own input format.

Each example is a thesis / antithesis / synthesis step built from something a program can
check, and is checked when it is made:

* **logic** — a puzzle from :func:`slmlab.data.logic.generate_pure` (answer and rule from the
  exact solver), asked as glyphs or in English (:func:`~slmlab.data.logic.render_hybrid`).
  The *thesis* proposes a glyph (the solver's answer in 60% of examples, a wrong one
  otherwise: a thesis is a guess to be tested); the *antithesis* states the solver's glyph
  and rule and says whether the thesis holds; the *synthesis* answers ``Answer: <glyph> —
  <rule>``. When thesis and antithesis disagree on a glyph puzzle, half the syntheses call
  ``[solve_logic:{"puzzle":…}]`` instead, and a follow-up example answers from the result.
* **tools** — arithmetic, unit conversion and local-wiki questions. The synthesis is the
  call; every call is parsed with the trio registry and executed, and a follow-up example
  answers with the executed result. A call that does not parse or execute is a bug here,
  never a training example.

Logic puzzles whose shape is in a recipe's test split (same seed and ``test_fraction``, by
:func:`slmlab.data.recipes.in_test_split`) are skipped, so ``slmlab trio eval`` on that
recipe's test split stays held out.
"""

from __future__ import annotations

import random

from slmlab.data.glyphs import CERTAIN, CERTAINLY_NOT, UNDETERMINED
from slmlab.trio.pipeline import creative_input, dialectical_input, logical_input
from slmlab.trio.tools import ToolBox

_MAIN = (CERTAIN, CERTAINLY_NOT, UNDETERMINED)
_THESES = (
    "{g} — a first guess to test. The premises might force the query, force its opposite, or leave it open.",
    "{g}, perhaps: if the premises chain together the query follows; if a link is missing it stays open.",
    "What if the answer is {g}? That is the reading worth testing first.",
    "My thesis: {g}. It is a hunch about how the premises connect, not yet a proof.",
)
_TOOL_THESES = (
    "This needs an exact result, not a guess.",
    "A guess here could be off; the exact value is worth fetching.",
    "What if we just estimate? Better: look it up or compute it exactly.",
)
_TOOL_ANTITHESES = (
    "Done in one's head this can slip; only an exact computation or lookup settles it.",
    "An estimate is not an answer: the value must come from a tool.",
)


def _logic_records(rng: random.Random, item, question: str, tools_text: str, box: ToolBox, pure: bool) -> list[dict]:
    g, rule = item.answer, item.rule
    guess = g if rng.random() < 0.6 else rng.choice([x for x in _MAIN if x != g])
    thesis = rng.choice(_THESES).format(g=guess)
    verdict = "The thesis holds." if guess == g else f"The thesis ({guess}) does not follow."
    antithesis = f"{g} — {rule}. {verdict}"
    base = {"family": item.family, "answer": g, "puzzle": item.text, "kind": "logic"}
    records = [
        {"role": "creative", "input": creative_input(question), "output": thesis, **base},
        {"role": "logical", "input": logical_input(question, thesis), "output": antithesis, **base},
    ]
    synth_input = dialectical_input(question, thesis, antithesis, tools_text)
    if pure and guess != g and rng.random() < 0.5:
        call, result = box.call("solve_logic", puzzle=question)
        _check(call, result, g)
        records.append({"role": "dialectical", "input": synth_input, "output": call.raw, **base})
        follow = dialectical_input(question, thesis, antithesis, tools_text, [(call.raw, result.feedback())])
        records.append({"role": "dialectical", "input": follow, "output": f"Answer: {g} — checked by the solver.", **base})
    else:
        records.append({"role": "dialectical", "input": synth_input, "output": f"Answer: {g} — {rule}.", **base})
    return records


def _check(call, result, expected=None) -> None:
    if not call.valid or not result.ok or (expected is not None and result.value != expected):
        raise RuntimeError(f"generated call {call.raw} did not check out: {call.errors or result.error or result.value}")


def _tool_question(rng: random.Random, box: ToolBox) -> tuple[str, str, dict]:
    from slmlab.data.tools import load_registry

    kind = rng.choice(("calculator", "unit_convert", "wiki_lookup"))
    if kind == "calculator":
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 20)
        op1, op2 = rng.choice("+-*"), rng.choice("+-*/")
        expr = f"{a}{op1}{b}" if rng.random() < 0.5 else f"({a}{op1}{b}){op2}{c}"
        question = rng.choice(("What is {e}?", "Compute {e} exactly.", "How much is {e}?")).format(e=expr)
        return kind, question, {"expression": expr}
    if kind == "unit_convert":
        pair = rng.choice(load_registry().lexicons["unit_pairs"])
        value = rng.randint(1, 500) if rng.random() < 0.5 else round(rng.uniform(1, 500), 1)
        question = rng.choice(("How many {to_name} is {v} {from_name}?", "Convert {v} {from_name} to {to_name}.",
                               "What is {v} {from} in {to}?")).format(v=value, **pair)
        return kind, question, {"value": value, "from": pair["from"], "to": pair["to"]}
    title = rng.choice(sorted(box.wiki))
    question = rng.choice(("Tell me about {t}.", "What is {t}?", "Give me background on {t}.")).format(t=title)
    return kind, question, {"wiki": "local", "page": title}


def _tool_records(rng: random.Random, box: ToolBox, tools_text: str) -> list[dict]:
    kind, question, arguments = _tool_question(rng, box)
    call, result = box.call(kind, **arguments)
    _check(call, result)
    thesis, antithesis = rng.choice(_TOOL_THESES), rng.choice(_TOOL_ANTITHESES)
    base = {"family": kind, "kind": "tools", "expected_call": {"name": kind, "arguments": arguments}}
    synth_input = dialectical_input(question, thesis, antithesis, tools_text)
    follow = dialectical_input(question, thesis, antithesis, tools_text, [(call.raw, result.feedback())])
    return [
        {"role": "creative", "input": creative_input(question), "output": thesis, **base},
        {"role": "logical", "input": logical_input(question, thesis), "output": antithesis, **base},
        {"role": "dialectical", "input": synth_input, "output": call.raw, **base},
        {"role": "dialectical", "input": follow, "output": f"Answer: {result.output}",
         **{k: v for k, v in base.items() if k != "expected_call"}},
    ]


def make_examples(n: int, *, seed: int = 0, test_fraction: float = 0.1, tool_share: float = 0.3,
                  toolbox: ToolBox | None = None) -> list[dict]:
    """About ``n`` role records (each question gives 3–4: thesis, antithesis, synthesis, follow-up).

    Records carry ``role`` (so training renders them with the role's template), ``input``,
    ``output``, ``category`` (``trio-<kind>``) and what they were checked against (``answer``
    and ``puzzle``, or ``expected_call``). Deterministic in ``seed``.
    """
    from slmlab.data import logic
    from slmlab.data.recipes import in_test_split

    box = toolbox or ToolBox.default()
    tools_text = box.describe()
    rng = random.Random(f"{seed}:trio-examples")
    families = [f for f in logic.FAMILIES if f != "graded"]
    records: list[dict] = []
    while len(records) < n:
        if rng.random() < tool_share:
            batch = _tool_records(rng, box, tools_text)
        else:
            item = logic.generate_pure(rng, 1, families, pool_seed=seed)[0]
            if in_test_split("logic:" + item.key, seed, test_fraction):
                continue
            pure = rng.random() < 0.5
            question = item.text if pure else logic.render_hybrid(item, rng)[0]
            batch = _logic_records(rng, item, question, tools_text, box, pure)
        records += [{**r, "category": f"trio-{r['kind']}"} for r in batch]
    return records[:n]
