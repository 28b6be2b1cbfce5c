"""The bigram-biased sampler: sparse counts, add-α log-probs checked by hand, w = 0 bit-exact, and its
wiring into generate, the eval / basins-map CLIs, the server (real openai client) and the sweep benchmark.

A 320-token kernel tokenizer and a depth-1 kernel are built from a small text here, so the file runs in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from slmlab.errors import SlmlabError
from slmlab.kernel.bigram import (
    BIGRAM_FILE,
    BigramBias,
    bias_for_model,
    build_bigrams,
    count_bigrams,
    load_bigrams,
    save_bigrams,
)

STORY = ("The baker lit the oven before dawn. The oven warmed the small kitchen. The kitchen smelled of bread "
         "and smoke. Smoke drifted out to the street. The street woke slowly under grey rain.\n")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bigram") / "train.jsonl"
    docs = [{"id": f"d{i}", "text": STORY * (1 + i % 3)} for i in range(30)]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok_dir(corpus_file) -> Path:
    from slmlab.kernel.tokenizer import train_tokenizer

    train_tokenizer([corpus_file], corpus_file.parent / "tok", vocab=320)
    return corpus_file.parent / "tok"


@pytest.fixture(scope="module")
def bare_dir(tok_dir) -> Path:
    """A kernel without a bigram table."""
    from slmlab.kernel.model import init_kernel

    init_kernel(1, tok_dir, tok_dir.parent / "bare", seed=0, context=128)
    return tok_dir.parent / "bare"


@pytest.fixture(scope="module")
def kernel_dir(bare_dir, corpus_file) -> Path:
    """The same kernel with the corpus's bigram table."""
    out = bare_dir.parent / "with-table"
    shutil.copytree(bare_dir, out)
    build_bigrams([corpus_file], out)
    return out


@pytest.fixture(scope="module")
def kernel(kernel_dir):
    from slmlab.models import load

    return load(str(kernel_dir))


def hand_table():
    # Sequences [1 2 3 2 3] and [3 2] over a vocabulary of 5: pairs 1→2, 2→3 (×2), 3→2 (×2); none across the two.
    return count_bigrams([[1, 2, 3, 2, 3], [3, 2]], vocab_size=5)


# --------------------------------------------------------------------------- counts and storage


def test_counts_by_hand():
    t = hand_table()
    assert (t.count(1, 2), t.count(2, 3), t.count(3, 2), t.count(3, 3), t.count(0, 1)) == (1, 2, 2, 0, 0)
    assert t.unigram.tolist() == [0, 1, 3, 3, 0]
    assert t.totals.tolist() == [0, 1, 2, 2, 0] and t.pairs == 5
    assert t.rows.tolist() == [1, 2, 3] and t.cols.tolist() == [2, 3, 2]  # sparse: only the 3 bigrams seen


def test_merging_in_pieces_gives_the_same_counts(monkeypatch):
    import random

    from slmlab.kernel import bigram

    rng = random.Random(0)
    seqs = [[rng.randrange(40) for _ in range(rng.randrange(1, 30))] for _ in range(50)]
    whole = count_bigrams(seqs, 40)
    monkeypatch.setattr(bigram, "_FLUSH_IDS", 7)  # merge the running counts every few sequences
    pieces = count_bigrams(seqs, 40)
    for name in ("rows", "cols", "counts", "unigram"):
        assert torch.equal(getattr(whole, name), getattr(pieces, name)), name
    assert whole.pairs == sum(len(s) - 1 for s in seqs)


def test_out_of_range_ids_are_an_error():
    with pytest.raises(SlmlabError, match="outside the vocabulary 0..4"):
        count_bigrams([[1, 5]], 5)


def test_sparse_round_trip(tmp_path):
    from safetensors import safe_open

    t = hand_table()
    path = save_bigrams(t, tmp_path / BIGRAM_FILE)
    with safe_open(str(path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict
    assert shapes == {"rows": (3,), "cols": (3,), "counts": (3,), "unigram": (5,)}  # never V×V
    back = load_bigrams(tmp_path)
    for name in ("rows", "cols", "counts", "unigram", "totals", "indptr"):
        assert torch.equal(getattr(back, name), getattr(t, name)), name
    assert back.vocab_size == 5 and back.metadata["pairs"] == "5"


def test_build_from_corpus_counts_every_pair_with_eos(kernel_dir, corpus_file, kernel):
    _, tok = kernel
    t = load_bigrams(kernel_dir)
    texts = [json.loads(line)["text"] for line in corpus_file.read_text().splitlines()]
    ids = [tok(x, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for x in texts]
    assert t.pairs == sum(len(x) - 1 for x in ids) and t.vocab_size == len(tok)
    assert int(t.unigram[tok.eos_token_id]) == len(texts)
    first, second = ids[0][0], ids[0][1]
    assert t.count(first, second) >= 1
    assert t.metadata["eos_appended"] == "true" and json.loads(t.metadata["sources"]) == [str(corpus_file)]
    assert (kernel_dir / BIGRAM_FILE).stat().st_size < 16 * len(t.counts) + 8 * t.vocab_size + 4096


def test_table_from_another_tokenizer_is_refused(tmp_path, kernel_dir, corpus_file):
    from slmlab.kernel.tokenizer import train_tokenizer

    other = tmp_path / "other-tok"
    train_tokenizer([corpus_file], other, vocab=300)
    shutil.copy(kernel_dir / BIGRAM_FILE, other / BIGRAM_FILE)
    with pytest.raises(SlmlabError, match="another tokenizer"):
        load_bigrams(other)


# --------------------------------------------------------------------------- the processor


def test_weight_zero_is_bit_exact():
    scores = torch.randn(3, 5)
    before = scores.clone()
    out = BigramBias(hand_table(), 0.0)(torch.tensor([[1], [2], [3]]), scores)
    assert out is scores and torch.equal(out, before)


def test_positive_weight_adds_exactly_w_log_p_by_hand():
    t, w, a, v = hand_table(), 0.5, 0.1, 5
    scores = torch.zeros(2, v, dtype=torch.float64)
    out = BigramBias(t, w, alpha=a)(torch.tensor([[0, 2], [1, 4]]), scores)  # last tokens: 2 and 4
    # prev 2: c(2,3) = 2 of n(2) = 2 pairs
    assert out[0, 3].item() == pytest.approx(w * math.log((2 + a) / (2 + a * v)), abs=1e-12)
    assert out[0, 0].item() == pytest.approx(w * math.log(a / (2 + a * v)), abs=1e-12)
    # prev 4 was never seen: the uniform 1/V
    assert torch.allclose(out[1], torch.full((v,), w * math.log(1 / v), dtype=torch.float64))
    assert torch.allclose(BigramBias(t, 1.0).table.log_prob_rows(torch.arange(v)).exp().sum(-1),
                          torch.ones(v, dtype=torch.float64))


def test_bad_settings_and_mismatched_vocabulary():
    t = hand_table()
    with pytest.raises(SlmlabError, match=">= 0"):
        BigramBias(t, -1.0)
    with pytest.raises(SlmlabError, match="alpha"):
        BigramBias(t, 1.0, alpha=0)
    with pytest.raises(SlmlabError, match="counts 5 token ids but the model scores 7"):
        BigramBias(t, 1.0)(torch.tensor([[1]]), torch.zeros(1, 7))


def test_generate_with_zero_weight_is_unchanged_and_weight_biases_the_first_token(kernel):
    from slmlab.evaluate.generate import generate

    model, tok = kernel
    table = load_bigrams(Path(tok.name_or_path))
    prompts = ["The baker lit", "Smoke"]
    plain = generate(model, tok, prompts, max_new_tokens=8, temperature=1.0, seed=3)
    zero = generate(model, tok, prompts, max_new_tokens=8, temperature=1.0, seed=3,
                    logits_processor=[BigramBias(table, 0.0)])
    assert [g.tokens for g in zero.generations] == [g.tokens for g in plain.generations]
    assert [g.logprobs for g in zero.generations] == [g.logprobs for g in plain.generations]

    w = 3.0
    biased = generate(model, tok, prompts[:1], max_new_tokens=1, logits_processor=[BigramBias(table, w)])
    ids = tok(prompts[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    expected = int((logits + w * table.log_prob_rows(torch.tensor([ids[-1]]))[0]).argmax())
    assert biased.generations[0].tokens == [expected] and expected != int(logits.argmax())


# --------------------------------------------------------------------------- CLIs


def test_bias_for_model_needs_a_table(bare_dir, kernel_dir):
    assert bias_for_model(bare_dir, 0.0) is None  # w = 0: nothing is loaded, nothing changes
    with pytest.raises(SlmlabError, match=f"slmlab kernel bigram data/kernel/train.jsonl --tokenizer {bare_dir}"):
        bias_for_model(bare_dir, 0.5)
    with pytest.raises(SlmlabError, match="not a directory"):
        bias_for_model("smollm2-135m", 0.5)
    assert repr(bias_for_model(kernel_dir, 0.5)).startswith("BigramBias(weight=0.5, alpha=0.1")


def test_kernel_bigram_command(tmp_path, corpus_file, bare_dir):
    from typer.testing import CliRunner

    from slmlab.kernel.cli import kernel_app

    runner = CliRunner()
    help_out = runner.invoke(kernel_app, ["bigram", "--help"], env={"COLUMNS": "200"})
    assert help_out.exit_code == 0 and "Example:" in help_out.output
    target = tmp_path / "m"
    shutil.copytree(bare_dir, target)
    r = runner.invoke(kernel_app, ["bigram", str(corpus_file), "--tokenizer", str(target)])
    assert r.exit_code == 0 and (target / BIGRAM_FILE).is_file(), r.output
    r = runner.invoke(kernel_app, ["bigram", str(corpus_file), "--tokenizer", str(target)])
    assert isinstance(r.exception, SlmlabError) and "--overwrite" in str(r.exception)
    r = runner.invoke(kernel_app, ["bigram", str(tmp_path / "missing.jsonl"), "--tokenizer", str(target), "--overwrite"])
    assert isinstance(r.exception, SlmlabError) and "missing.jsonl" in str(r.exception)


@pytest.mark.parametrize("cmd", [["eval", "logic"], ["basins", "map"]])
def test_eval_and_basins_map_refuse_a_weight_without_a_table(tmp_path, bare_dir, cmd):
    from typer.testing import CliRunner

    from slmlab.cli import app

    r = CliRunner().invoke(app, [*cmd, "--model", str(bare_dir), "--bigram-weight", "0.5", "-o", str(tmp_path / "o.json")])
    assert isinstance(r.exception, SlmlabError), r.output
    assert "slmlab kernel bigram" in str(r.exception) and not (tmp_path / "o.json").exists()


def test_basins_map_records_the_sampler(tmp_path, kernel_dir):
    from slmlab.evaluate.basin_map import MapSettings, map_basins

    corpus = tmp_path / "prompts.jsonl"
    corpus.write_text(json.dumps({"input": "The baker"}) + "\n" + json.dumps({"input": "Smoke"}) + "\n")
    result = map_basins(str(kernel_dir), corpus=str(corpus), settings=MapSettings(samples=1, max_new_tokens=4),
                        logits_processor=[bias_for_model(kernel_dir, 0.5)])
    assert result["n_generations"] == 2 and result["logits_processor"][0].startswith("BigramBias(weight=0.5")


# --------------------------------------------------------------------------- the server, through the openai client


@pytest.fixture(scope="module")
def oai_for(kernel):
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from slmlab.serve import ServeConfig, create_app

    clients = []

    def make(model_dir: Path):
        from slmlab.models import load

        model, tok = load(str(model_dir))
        client = TestClient(create_app(ServeConfig.model_validate({"model": str(model_dir)}), model=model, tokenizer=tok))
        client.__enter__()
        clients.append(client)
        # The real client, over the in-process app (TestClient is an httpx.Client).
        return OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def test_server_applies_bigram_weight_from_extra_body(oai_for, kernel_dir, kernel):
    model, tok = kernel
    oai = oai_for(kernel_dir)
    table = load_bigrams(kernel_dir)
    prompt = "The baker lit"

    def complete(**extra):
        return oai.completions.create(model=str(kernel_dir), prompt=prompt, max_tokens=6, temperature=0, **extra).choices[0].text

    assert complete(extra_body={"bigram_weight": 0}) == complete()
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    w = 3.0
    expected = int((logits + w * table.log_prob_rows(torch.tensor([ids[-1]]))[0]).argmax())
    assert expected != int(logits.argmax())
    first = oai.completions.create(model=str(kernel_dir), prompt=prompt, max_tokens=1, temperature=0,
                                   extra_body={"bigram_weight": w}).choices[0].text
    assert first == tok.decode([expected])
    chat = oai.chat.completions.create(model=str(kernel_dir), messages=[{"role": "user", "content": "Smoke"}],
                                       max_tokens=3, temperature=0.7, seed=1, extra_body={"bigram_weight": 0.5})
    assert chat.choices[0].finish_reason in ("stop", "length")


def test_server_refuses_bigram_weight_without_a_table(oai_for, bare_dir, kernel_dir):
    import openai

    oai = oai_for(bare_dir)
    with pytest.raises(openai.BadRequestError) as exc:
        oai.completions.create(model=str(bare_dir), prompt="The", max_tokens=2, extra_body={"bigram_weight": 0.5})
    assert exc.value.status_code == 400
    assert exc.value.body["param"] == "bigram_weight" and "slmlab kernel bigram" in exc.value.body["message"]
    assert oai.completions.create(model=str(bare_dir), prompt="The", max_tokens=2, temperature=0).choices  # w = 0 is fine
    with pytest.raises(openai.BadRequestError, match="greater than or equal to 0"):
        oai_for(kernel_dir).completions.create(model=str(kernel_dir), prompt="The", max_tokens=2,
                                               extra_body={"bigram_weight": -1})


# --------------------------------------------------------------------------- the sweep benchmark


def test_bigram_sweep_runs_and_the_bias_pulls_samples_towards_the_table(tmp_path, kernel_dir, corpus_file):
    spec = importlib.util.spec_from_file_location("bigram_sweep", ROOT / "benchmarks" / "bigram_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    out = tmp_path / "sweep.json"
    rows = sweep.main(["--model", str(kernel_dir), "--corpus", str(corpus_file), "--n", "4", "--prefix-tokens", "4",
                       "--max-new-tokens", "12", "--weights", "0,4", "--reference", "self", "--lexical", "-o", str(out)])
    record = json.loads(out.read_text())
    assert [r["weight"] for r in record["rows"]] == [0, 4] and record["prompts"] == 4
    for r in rows:
        assert sum(r["basins"].values()) == 4 and r["bpb"] > 0 and r["ppl"] > 1 and r["similarity"] == "lexical"
    # Leaning on the table makes the samples far likelier under it (same prompts, same seeds).
    assert rows[1]["bigram_logprob"] > rows[0]["bigram_logprob"] + 0.5
