"""Verification and preference triplets: the model's own answers, graded by the solver's.

Grading is the evaluation's own: :func:`slmlab.evaluate.metrics.logic_metric` (the first
certainty glyph of the text equals the record's solver ``answer``). A prompt gives pairs only
when some sample is wrong; the chosen side is one of the model's right samples when it has
any, else the record's target ``output`` (the solver's answer rendered in the recipe's target
format). So every pair is verified: chosen right, rejected wrong, by the same grader.
"""

from __future__ import annotations

from slmlab.errors import SlmlabError


def is_right(record: dict, text: str) -> bool:
    """Whether ``text`` answers ``record`` correctly, as held-out evaluation grades it."""
    from slmlab.evaluate.generate import Generation
    from slmlab.evaluate.metrics import logic_metric

    scored = logic_metric(record, Generation(prompt="", text=text))
    if "accuracy" not in scored:
        raise SlmlabError(f"record {record.get('id')!r} has no single-glyph solver `answer`: the dream loop needs "
                          "verifiable prompts (a logic recipe)")
    return scored["accuracy"] == 1.0


def make_pairs(record: dict, completions: list[str], *, per_prompt: int, default_format: str = "v6") -> list[dict]:
    """Up to ``per_prompt`` verified (prompt, chosen, rejected) triplets from one prompt's samples.

    Completions are stripped (the template writes the answer's leading space) and de-duplicated
    in order; each distinct wrong one is a rejected side, paired in turn with the distinct right
    ones (or with the solver's target when the model produced no right answer).
    """
    texts = list(dict.fromkeys(c.strip() for c in completions))
    right = [t for t in texts if is_right(record, t)]
    wrong = [t for t in texts if not is_right(record, t)]
    if not wrong:
        return []
    target = record["output"]
    if not right and not is_right(record, target):
        raise SlmlabError(f"record {record.get('id')!r}: its target output {target!r} does not grade as its answer "
                          f"{record.get('answer')!r}; the recipe cannot supply a verified chosen answer")
    chosen, source = (right, "model") if right else ([target], "solver")
    fmt = record.get("role") or record.get("format") or default_format
    return [{"id": record.get("id"), "prompt": record["input"], "chosen": chosen[i % len(chosen)], "rejected": wrong[i],
             "answer": record["answer"], "chosen_source": source, "format": fmt}
            for i in range(min(per_prompt, len(wrong)))]
