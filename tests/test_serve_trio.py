"""``POST /v1/trio`` on tiny-random: role order, per-role adapters on the engine, same texts as the
in-process pipeline, tool errors in the transcript, no blocking of other traffic, bad bodies → 4xx."""

from __future__ import annotations

import re
import threading
from concurrent.futures import Future

import pytest
from fastapi.testclient import TestClient

from slmlab.serve import ServeConfig, create_app
from slmlab.serve.decode import RowResult

MODEL = "tiny-random"
TOKENS = 6


def _save_adapter(tokenizer, path, seed):
    """A LoRA whose weights are random (not the zero-B init), so that it changes what the model writes."""
    import torch
    from peft import LoraConfig, get_peft_model

    from slmlab.models import build_tiny_random

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(build_tiny_random(tokenizer),
                               LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"],
                                          init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("trio-adapters")
    return {"cre": _save_adapter(tokenizer, root / "cre", 1), "dia": _save_adapter(tokenizer, root / "dia", 2)}


@pytest.fixture(scope="module")
def client(adapters):
    from slmlab.models import load

    model, tok = load(MODEL)
    app = create_app(ServeConfig.model_validate({"model": MODEL, "adapters": adapters}), model=model, tokenizer=tok)
    with TestClient(app) as c:
        yield c


def server(client):
    return client.app.state.server


def ask(client, **body):
    r = client.post("/v1/trio", json={"max_tokens": TOKENS, **body})
    assert r.status_code == 200, r.text
    return r.json()


class Spy:
    """Wraps the engine's submit: records (role tag of the prompt, adapter) for every row."""

    def __init__(self, engine):
        self.engine, self.real, self.rows = engine, engine.submit, []

    def __call__(self, rows):
        tok = self.engine.tokenizer
        for row in rows:
            prompt = tok.decode(row.prompt_ids)
            self.rows.append((re.match(r"\[(\w+)\]", prompt).group(1).lower(), row.adapter))
        return self.real(rows)


def test_roles_in_order_and_each_role_on_its_adapter(client, monkeypatch):
    spy = Spy(server(client).engine)
    monkeypatch.setattr(server(client).engine, "submit", spy)
    data = ask(client, question="What is 6*7?", adapters={"creative": "cre", "dialectical": "dia"}, verify_below=None)
    assert [t["role"] for t in data["turns"]] == ["creative", "logical", "dialectical"]
    for turn in data["turns"]:
        assert set(turn) >= {"role", "text", "tool_calls", "tool_results", "seconds"}
        assert turn["tokens"] <= TOKENS
    assert set(data) >= {"question", "turns", "answer", "answer_margin", "answer_source", "weight_versions"}
    assert data["question"] == "What is 6*7?" and data["model"] == MODEL
    assert spy.rows[:3] == [("creative", "cre"), ("logical", None), ("dialectical", "dia")]
    assert all(row == ("dialectical", "dia") for row in spy.rows[2:])
    assert data["adapters"] == {"creative": "cre", "logical": MODEL, "dialectical": "dia"}
    # The request's model is what roles without an adapter run on.
    spy.rows.clear()
    data = ask(client, question="P?P", model="dia", adapters={"creative": "cre"}, tools=False)
    assert spy.rows == [("creative", "cre"), ("logical", "dia"), ("dialectical", "dia")]
    assert data["model"] == "dia"


def test_same_texts_as_the_in_process_pipeline(client, adapters):
    """Greedy decoding on the engine gives the texts `slmlab.trio.run` gives with the same weights."""
    from slmlab.models import load
    from slmlab.trio import TrioModel, run

    tm = TrioModel(*load(MODEL))
    tm.load_adapters({"adapters": {"creative": adapters["cre"], "dialectical": adapters["dia"]}})
    question = "What is 12+30?"
    local = run(question, model=tm, max_new_tokens=TOKENS, verify_below=None).to_dict()
    remote = ask(client, question=question, adapters={"creative": "cre", "dialectical": "dia"}, verify_below=None)
    assert [t["text"] for t in remote["turns"]] == [t["text"] for t in local["turns"]]
    assert [t["prompt"] for t in remote["turns"]] == [t["prompt"] for t in local["turns"]]
    assert remote["answer"] == local["answer"]
    assert remote["answer_margin"] == pytest.approx(local["answer_margin"], abs=1e-3)
    # ...and the adapters matter: without them the texts differ.
    base = ask(client, question=question, verify_below=None)
    assert [t["text"] for t in base["turns"]] != [t["text"] for t in remote["turns"]]


def test_unknown_and_malformed_tool_calls_are_in_the_transcript(client, monkeypatch):
    engine = server(client).engine
    real = engine.submit
    scripted = ['[web_search:{"query":"x"}] [calculator:{"expression": 1+}]', "Answer: ◐"]

    def fake(rows):
        if not engine.tokenizer.decode(rows[0].prompt_ids).startswith("[DIALECTICAL]"):
            return real(rows)
        text = scripted.pop(0) if len(scripted) > 1 else scripted[0]
        ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
        future = Future()
        future.set_result(([RowResult(ids, text, "stop", top_logprobs=[{1: 0.0, 2: -5.0}] * len(ids))], 0))
        return future

    monkeypatch.setattr(engine, "submit", fake)
    data = ask(client, question="Is it raining?")
    synth = data["turns"][2]
    assert [c["name"] for c in synth["tool_calls"]] == ["web_search", "calculator"]
    assert [r["ok"] for r in synth["tool_results"]] == [False, False]
    assert "Unknown tool 'web_search'" in synth["tool_results"][0]["error"]
    assert "not valid JSON" in synth["tool_results"][1]["error"]
    assert data["answer"] == "◐" and data["answer_margin"] == pytest.approx(5.0)


def test_a_trio_request_does_not_block_other_requests(client, monkeypatch):
    engine = server(client).engine
    real, entered, release = engine.submit, threading.Event(), threading.Event()

    def held(rows):
        if engine.tokenizer.decode(rows[0].prompt_ids).startswith("[CREATIVE]"):
            entered.set()
            assert release.wait(30)
        return real(rows)

    monkeypatch.setattr(engine, "submit", held)
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=client.post("/v1/trio", json={
        "question": "P?P", "max_tokens": 2, "tools": False})))
    worker.start()
    try:
        assert entered.wait(30)  # the trio request is waiting on its first generation right now
        r = client.post("/v1/completions", json={"model": MODEL, "prompt": "still here", "max_tokens": 2,
                                                 "temperature": 0})
        assert r.status_code == 200 and worker.is_alive()
    finally:
        release.set()
    worker.join(30)
    assert result["r"].status_code == 200, result["r"].text


@pytest.mark.parametrize("body, status, param", [
    ({"question": ""}, 400, "question"),
    ({"question": "   "}, 400, "question"),
    ({}, 400, "question"),
    ({"question": 3}, 400, "question"),
    ({"question": "x", "max_rounds": 0}, 400, "max_rounds"),
    ({"question": "x", "max_rounds": 5}, 400, "max_rounds"),
    ({"question": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"question": "x", "max_tokens": 100000}, 400, "max_tokens"),
    ({"question": "x", "verify_below": "soon"}, 400, "verify_below"),
    ({"question": "x", "adapters": {"critic": "cre"}}, 400, "adapters.critic"),
    ({"question": "x", "adapters": {"logical": "nope"}}, 404, "adapters.logical"),
    ({"question": "x", "model": "nope"}, 404, "model"),
])
def test_bad_bodies_get_4xx_with_an_error_body(client, body, status, param):
    r = client.post("/v1/trio", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"]


def test_a_question_longer_than_the_context_is_a_400(client):
    r = client.post("/v1/trio", json={"question": "word " * (server(client).engine.max_positions + 10)})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"
