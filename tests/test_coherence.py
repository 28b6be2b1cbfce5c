"""The coherence tracker: perplexity checked by hand, lexical similarity and repetition by hand, coherent text
ranked above the same text shuffled, the run-eval hook, and `slmlab eval-coherence` (texts file or generation)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import typer
from typer.testing import CliRunner

from slmlab.errors import SlmlabError
from slmlab.evaluate.basins import split_sentences
from slmlab.evaluate.coherence_cli import coherence_cmd
from slmlab.kernel.coherence import (
    CoherenceTracker,
    coherence_for_run_eval,
    consecutive_cosines,
    lexical_cosine,
    repetition,
)

# Each sentence picks up what the one before it ended on (oven, kitchen, bread, window, street, rain).
COHERENT = ("The baker lit the oven before dawn. The oven slowly warmed the narrow kitchen. The kitchen filled with "
            "the smell of fresh bread. The bread cooled on a wooden rack by the window. The window looked out on a "
            "quiet street. The street woke under a grey morning rain. The rain washed the flour from the stone doorstep.")
SEEDS = range(5)


def sentence_shuffled(seed: int) -> str:
    sentences = split_sentences(COHERENT)
    random.Random(seed).shuffle(sentences)
    return " ".join(sentences)


def word_shuffled(seed: int) -> str:
    words = COHERENT.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


# --------------------------------------------------------------------------- the measures by hand


def test_lexical_cosine_and_repetition_by_hand():
    assert lexical_cosine(frozenset({"oven", "dawn"}), frozenset({"oven", "kitchen", "narrow"})) == pytest.approx(1 / math.sqrt(6))
    assert lexical_cosine(frozenset(), frozenset({"oven"})) == 0.0
    # content words {baker, lit, oven} | {oven, warmed, kitchen} (stop words and words under 3 letters dropped)
    assert consecutive_cosines(["The baker lit an oven.", "The oven warmed the kitchen."]) == [pytest.approx(1 / 3)]
    assert consecutive_cosines(["One sentence only."]) == []
    # "a b a b a b": 5 bigrams, 2 distinct -> seq-rep-2 = 3/5; 3 4-grams, 2 distinct -> seq-rep-4 = 1/3
    assert repetition("a b a b a b") == (pytest.approx(3 / 5), pytest.approx(1 / 3))
    assert repetition("a b") == (0.0, None)


def test_coherent_text_ranks_above_its_shuffles_lexical():
    report = CoherenceTracker(use_embeddings=False).measure(
        [COHERENT, *(sentence_shuffled(s) for s in SEEDS), *(word_shuffled(s) for s in SEEDS)])
    assert report.similarity == "lexical" and report.reference == "none" and report.ppl is None
    coherent, sent, words = report.texts[0].cosine, report.texts[1:6], report.texts[6:]
    assert coherent == pytest.approx(0.2079, abs=1e-4)
    assert all(coherent > t.cosine for t in [*sent, *words])
    assert sum(t.cosine for t in sent) / 5 > sum(t.cosine for t in words) / 5  # sentences intact > words scattered
    assert report.texts[0].sentences == 7 and report.texts[0].ppl is None


# --------------------------------------------------------------------------- reference perplexity


def test_reference_perplexity_is_exp_mean_nll_by_hand(tiny):
    model, tok = tiny
    long = "A much longer sentence, about nothing in particular, that keeps going so the batch needs padding."
    texts = ["The cat sat on the mat and looked at the door.", "Rain.", long, "", "x"]
    report = CoherenceTracker(model, tok, name="tiny", use_embeddings=False, batch_size=2).measure(texts)
    total_nll = total_n = 0.0
    for text, row in zip(texts, report.texts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) < 2:
            assert row.ppl is None and row.nll is None and row.scored_tokens == 0
            continue
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        nll = -torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).sum().item()
        assert row.scored_tokens == len(ids) - 1
        assert row.ppl == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-4)
        total_nll, total_n = total_nll + nll, total_n + len(ids) - 1
    assert report.ppl == pytest.approx(math.exp(total_nll / total_n), rel=1e-4)
    assert report.reference == "tiny"


def test_max_length_cuts_the_scored_text(tiny):
    model, tok = tiny
    row = CoherenceTracker(model, tok, use_embeddings=False, max_length=4).measure([COHERENT]).texts[0]
    assert row.scored_tokens == 3


def test_run_eval_hook_scores_under_the_model_itself_and_restores_its_mode(tiny):
    model, tok = tiny
    model.train()
    try:
        out = coherence_for_run_eval(model, tok, [COHERENT, sentence_shuffled(0)])
        assert model.training
    finally:
        model.eval()
    assert out["coherence_reference"] == "self" and out["coherence_ppl"] > 1
    assert set(out) == {"coherence_ppl", "coherence_cosine", "coherence_seq_rep_2", "coherence_seq_rep_4",
                        "coherence_similarity", "coherence_reference"}


def test_tracker_errors():
    with pytest.raises(SlmlabError, match="--model"):
        CoherenceTracker.load("self")
    with pytest.raises(SlmlabError, match="tokenizer"):
        CoherenceTracker(model=object())
    with pytest.raises(SlmlabError, match="at least one text"):
        CoherenceTracker().measure([])


@pytest.mark.integration
def test_smollm2_orders_coherent_sentence_shuffled_and_word_shuffled():
    tracker = CoherenceTracker.load("smollm2-135m", use_embeddings=False)
    report = tracker.measure([COHERENT, *(sentence_shuffled(s) for s in SEEDS), *(word_shuffled(s) for s in SEEDS)])
    coherent = report.texts[0].ppl
    sent = sum(t.ppl for t in report.texts[1:6]) / 5
    words = sum(t.ppl for t in report.texts[6:]) / 5
    assert coherent < sent < words  # measured: 43.9 < 53.5 < 996
    assert words > 5 * sent


# --------------------------------------------------------------------------- the command


def cli() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so the command is called by its name as slmlab will
    app.command("eval-coherence")(coherence_cmd)
    return app


def invoke(*args: str):
    return CliRunner().invoke(cli(), ["eval-coherence", *args], env={"COLUMNS": "200"})


def test_cli_reads_any_text_field_and_prints_json(tmp_path):
    path = tmp_path / "gen.jsonl"
    lines = [{"text": COHERENT}, {"generation": sentence_shuffled(1)}, {"completion": "Short."}, {"output": "a b a b a b"}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = invoke(str(path), "--reference", "none", "--lexical", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output.strip().splitlines()[-1])
    assert data["n"] == 4 and data["similarity"] == "lexical" and data["ppl"] is None
    assert data["texts"][0]["cosine"] > data["texts"][1]["cosine"]
    assert data["texts"][3]["seq_rep_2"] == pytest.approx(0.6)
    table = invoke(str(path), "--reference", "none", "--lexical")
    assert table.exit_code == 0 and "seq-rep-2" in table.output and "all" in table.output


def test_cli_errors_name_the_file_and_line(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps({"text": "fine."}) + "\n{not json\n")
    r = invoke(str(bad_json), "--reference", "none")
    assert isinstance(r.exception, SlmlabError) and f"{bad_json}:2:" in str(r.exception)
    no_text = tmp_path / "notext.jsonl"
    no_text.write_text(json.dumps({"text": "fine."}) + "\n" + json.dumps({"prompt": "no text here"}) + "\n")
    r = invoke(str(no_text), "--reference", "none")
    assert isinstance(r.exception, SlmlabError) and f"{no_text}:2: needs a string field 'text'" in str(r.exception)
    for args, message in ((["--reference", "none"], "give a JSONL FILE"), (["--prompts", "basins49"], "--prompts needs --model"),
                          ([str(bad_json), "--reference", "self"], "give --model"),
                          ([str(bad_json), "--bigram-weight", "0.5"], "--bigram-weight applies when generating")):
        r = invoke(*args)
        assert isinstance(r.exception, SlmlabError) and message in str(r.exception), (args, r.output)


def test_cli_generates_then_measures(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"input": "Tell me about rain."}) + "\n" + json.dumps({"input": "Bread?"}) + "\n")
    r = invoke("--model", "tiny-random", "--prompts", str(prompts), "--max-new-tokens", "6", "--reference", "self",
               "--lexical", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output.strip().splitlines()[-1])
    assert data["n"] == 2 and data["reference"] == "self" and data["source"]["model"] == "tiny-random"
    assert data["bigram"] is None


def test_cli_help_has_an_example():
    r = invoke("--help")
    assert r.exit_code == 0 and "Example" in r.output and "slmlab eval-coherence" in r.output
