"""The ``trio`` suite: single model vs trio vs trio with tools, on held-out logic questions.

What is measured (all rates with 95% Wilson intervals, :func:`slmlab.compare.stats.wilson_interval`):

* **accuracy** per condition: the first certainty glyph of the final answer equals the
  solver's answer; ``no_answer``: the answer has no glyph at all. Next to it the mean
  answer margin of correct and of wrong answers (is the margin a usable "uncertain" signal?).
* **role adherence** per role (trio condition; the dialectical role also under trio+tools):
  the ``roles`` metric of :mod:`slmlab.evaluate.metrics` — non-empty, no echo of the role's
  scaffold, stops within its token budget, and for the synthesis a glyph present;
  ``follows`` = all of them.
* **tools** (trio+tools): calls the synthesis wrote, the share that parse and match their
  schema, the share of those that executed; verifier calls and how often the verifier
  supplied the answer.

The suite file (``resources/trio/suite.yaml``) names the dataset (a recipe split, the same
``dataset:`` block as an evaluation suite), the conditions and the generation settings.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field

from slmlab.config import StrictModel, load_yaml, validate_model
from slmlab.data.glyphs import CERTAINTY_SCALE, first_glyph
from slmlab.errors import SlmlabError
from slmlab.evaluate.suites import DatasetSpec
from slmlab.trio.pipeline import ROLES, TrioModel, TrioSettings, run_stages, single

CONDITIONS = ("single", "trio", "trio+tools")


class TrioSuite(StrictModel):
    """A trio evaluation: records, conditions and generation settings."""

    name: str = "trio"
    version: int = 1
    dataset: DatasetSpec
    limit: int | None = Field(24, gt=0, description="Evaluate the first N logic records.")
    conditions: list[Literal["single", "trio", "trio+tools"]] = Field(default_factory=lambda: list(CONDITIONS))
    max_new_tokens: dict[str, int] = Field(default_factory=lambda: {r: 48 for r in ROLES})
    max_rounds: int = Field(2, ge=0)
    verify_below: float | None = Field(1.0, description="Answer margin (nats) under which the verifier runs.")
    batch_size: int = Field(8, ge=1)


def shipped_suite_path() -> Path:
    return Path(str(resources.files("slmlab") / "resources" / "trio" / "suite.yaml"))


def load_trio_suite(path: str | Path | None = None) -> TrioSuite:
    source = Path(path) if path is not None else shipped_suite_path()
    if not source.is_file():
        raise SlmlabError(f"{source}: no such trio suite file")
    return validate_model(TrioSuite, load_yaml(source), f"trio suite {source}")


def logic_records(suite: TrioSuite) -> list[dict]:
    """The suite's logic records (those with a solver ``answer``), first ``limit`` of them."""
    from slmlab.evaluate.suites import dataset_records

    if suite.dataset.recipe is None and suite.dataset.path is None:
        raise SlmlabError("the trio suite needs logic records with answers: give dataset.recipe or dataset.path")
    records, where = dataset_records(suite.dataset)
    records = [r for r in records if isinstance(r.get("input"), str) and r.get("answer") in CERTAINTY_SCALE]
    if not records:
        raise SlmlabError(f"{where}: no logic records (with an `input` and a certainty-glyph `answer`) to evaluate")
    return records[: suite.limit]


def wilson(k: int, n: int) -> dict:
    from slmlab.compare.stats import wilson_interval

    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def _accuracy(answers: list[str], margins: list[float], expected: list[str]) -> dict:
    guesses = [first_glyph(a or "") for a in answers]
    correct = [g == e for g, e in zip(guesses, expected)]
    return {"accuracy": wilson(sum(correct), len(correct)),
            "no_answer": wilson(sum(g is None for g in guesses), len(guesses)),
            "margin_correct": _mean([m for m, c in zip(margins, correct) if c]),
            "margin_wrong": _mean([m for m, c in zip(margins, correct) if not c])}


def _adherence(turns: list[dict], role: str, budget: int) -> dict:
    from slmlab.evaluate.generate import Generation
    from slmlab.evaluate.metrics import roles_metric

    rows = []
    for turn in turns:
        record = {"_eval": {"template": role, "max_new_tokens": budget}}
        if role == "dialectical":
            record["answer"] = CERTAINTY_SCALE[0]  # any glyph: has_answer only asks that one is present
        rows.append(roles_metric(record, Generation("", turn["text"], [0] * turn["tokens"])))
    return {key: wilson(int(sum(r[key] for r in rows)), len(rows)) for key in rows[0]} if rows else {}


def _tool_stats(transcripts) -> dict:
    written = [(c, r) for t in transcripts for c, r in zip(t.turn("dialectical")["tool_calls"],
                                                           t.turn("dialectical")["tool_results"]) if not c["auto"]]
    auto = [(c, r) for t in transcripts for c, r in zip(t.turn("dialectical")["tool_calls"],
                                                        t.turn("dialectical")["tool_results"]) if c["auto"]]
    valid = [(c, r) for c, r in written if c["valid"]]
    return {
        "questions_with_calls": wilson(sum(any(not c["auto"] for c in t.turn("dialectical")["tool_calls"])
                                           for t in transcripts), len(transcripts)),
        "calls_written": len(written),
        "calls_valid": wilson(len(valid), len(written)),
        "valid_calls_executed": wilson(sum(r["ok"] for _, r in valid), len(valid)),
        "verifier_calls": len(auto),
        "verifier_answered": wilson(sum(t.answer_source == "verifier" for t in transcripts), len(transcripts)),
    }


def evaluate(*, model: str | TrioModel | tuple | None = None, adapters: str | Path | None = None,
             suite: str | Path | None = None, limit: int | None = None, out: str | Path | None = None,
             progress=None) -> dict:
    """Run the suite and return (and, with ``out``, write) its self-describing results JSON."""
    from slmlab.trio.pipeline import _as_trio_model

    spec = load_trio_suite(suite)
    if limit is not None:
        spec = spec.model_copy(update={"limit": limit})
    records = logic_records(spec)
    tm = _as_trio_model(model, adapters)
    questions = [r["input"] for r in records]
    expected = [r["answer"] for r in records]
    settings = TrioSettings(tools=False, max_rounds=spec.max_rounds, verify_below=spec.verify_below,
                            max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size)
    say = progress or (lambda msg: None)
    started = time.perf_counter()
    result: dict = {"suite": spec.name, "version": spec.version, "model": tm.spec, "adapters": dict(tm.adapters),
                    "n": len(records), "settings": spec.model_dump(mode="json"), "conditions": {}, "roles": {},
                    "created": datetime.now(UTC).isoformat(timespec="seconds")}
    samples = [{"id": r.get("id"), "question": q, "expected": e, "render": r.get("render")}
               for r, q, e in zip(records, questions, expected)]
    if "single" in spec.conditions:
        say(f"single model on {len(questions)} questions")
        t0 = time.perf_counter()
        rows = single(tm, questions, spec.max_new_tokens["dialectical"], spec.batch_size)
        result["conditions"]["single"] = {**_accuracy([r["answer"] for r in rows], [r["answer_margin"] for r in rows],
                                                      expected), "seconds": round(time.perf_counter() - t0, 2)}
        for s, r in zip(samples, rows):
            s["single"] = {"answer": r["answer"], "margin": round(r["answer_margin"], 4), "text": r["text"]}
    shared = None
    for cond in ("trio", "trio+tools"):
        if cond not in spec.conditions:
            continue
        say(f"{cond} on {len(questions)} questions")
        t0 = time.perf_counter()
        settings.tools = cond == "trio+tools"
        transcripts = run_stages(tm, questions, thesis_antithesis=shared, settings=settings)
        if shared is None:  # creative and logical do not depend on tools: both conditions share them
            shared = ([t.turns[0] for t in transcripts], [t.turns[1] for t in transcripts])
            for role, i in (("creative", 0), ("logical", 1)):
                result["roles"][role] = _adherence([t.turns[i] for t in transcripts], role, spec.max_new_tokens[role])
        result["roles"][f"dialectical ({cond})"] = _adherence([t.turns[2] for t in transcripts], "dialectical",
                                                              spec.max_new_tokens["dialectical"])
        entry = {**_accuracy([t.answer for t in transcripts], [t.answer_margin for t in transcripts], expected),
                 "seconds": round(time.perf_counter() - t0, 2)}
        if settings.tools:
            entry["tools"] = _tool_stats(transcripts)
        result["conditions"][cond] = entry
        for s, t in zip(samples, transcripts):
            s[cond] = t.to_dict()
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["samples"] = samples
    if out is not None:
        from slmlab.io import atomic_write_text

        atomic_write_text(Path(out), json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    return result
