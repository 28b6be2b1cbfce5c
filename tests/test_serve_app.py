"""The server's routes through FastAPI's TestClient on tiny-random: answers, errors, training, versions."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from slmlab.serve import ServeConfig, create_app
from slmlab.serve.decode import Row, Sampling

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "tiny-random"


def make_client(tmp_path, **overrides):
    from slmlab.models import load

    model, tok = load(MODEL)  # a fresh model: the engine wraps it in place
    settings = {"model": MODEL, "api_key": KEY, "state_dir": str(tmp_path / "state"),
                "allowed_dirs": [str(tmp_path / "allowed")], "training": {"lr": 1e-2, "optimizer": "adamw"},
                **overrides}
    app = create_app(ServeConfig.model_validate(settings), model=model, tokenizer=tok)
    return TestClient(app)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with make_client(tmp_path_factory.mktemp("serve")) as c:
        yield c


def server(client):
    return client.app.state.server


def complete(client, **body):
    r = client.post("/v1/completions", json={"model": MODEL, "temperature": 0, **body})
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------------- info


def test_health_and_models(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == MODEL and h["training"] is True
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == MODEL and models["data"][0]["parent"] is None


# ---------------------------------------------------------------------- completions


def test_text_and_token_prompts_give_the_same_answer(client):
    tok = server(client).tokenizer
    ids = tok("The cat sat on the", add_special_tokens=False)["input_ids"]
    a = complete(client, prompt="The cat sat on the", max_tokens=6)
    b = complete(client, prompt=ids, max_tokens=6)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 6, "total_tokens": len(ids) + 6}
    assert isinstance(a["weight_version"], int)


def test_several_prompts_and_n(client):
    out = complete(client, prompt=["one", "two"], max_tokens=4, n=2, temperature=1.0, seed=3)
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    again = complete(client, prompt=["one", "two"], max_tokens=4, n=2, temperature=1.0, seed=3)
    assert [c["text"] for c in out["choices"]] == [c["text"] for c in again["choices"]]  # seeded: same text


def test_echo_logprobs_are_the_prompt_log_probs(client):
    model, tok = server(client).engine.model, server(client).tokenizer
    ids = tok("Logic is the study of correct reasoning", add_special_tokens=False)["input_ids"]
    out = complete(client, prompt=ids, max_tokens=1, logprobs=1, echo=True)
    lp = out["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert len(lp["token_logprobs"]) == len(ids) + 1 == len(lp["tokens"]) == len(lp["text_offset"])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    expected = [logits[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    assert lp["token_logprobs"][1:len(ids)] == pytest.approx(expected, abs=1e-5)
    for got, top in zip(lp["token_logprobs"][1:], lp["top_logprobs"][1:]):
        assert max(top.values()) >= got - 1e-6  # lm-eval's is_greedy test reads exactly this
    assert out["choices"][0]["text"].startswith("Logic is the study")


def test_score_matches_echo(client):
    body = {"model": MODEL, "prompt": "The answer is", "continuation": " forty two"}
    s = client.post("/score", json=body).json()
    tok = server(client).tokenizer
    p = tok("The answer is", add_special_tokens=False)["input_ids"]
    c = tok(" forty two", add_special_tokens=False)["input_ids"]
    echo = complete(client, prompt=p + c, max_tokens=0, logprobs=0, echo=True)
    assert s["token_logprobs"] == pytest.approx(echo["choices"][0]["logprobs"]["token_logprobs"][len(p):], abs=1e-6)
    assert s["sum"] == pytest.approx(sum(s["token_logprobs"]))
    assert s["continuation_ids"] == c


def test_chat_and_stream_agree(client):
    msgs = [{"role": "user", "content": "Say something."}]
    full = client.post("/v1/chat/completions", json={"model": MODEL, "messages": msgs, "max_tokens": 8,
                                                     "temperature": 0}).json()
    text = full["choices"][0]["message"]["content"]
    r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": msgs, "max_tokens": 8,
                                                  "temperature": 0, "stream": True})
    lines = [ln for ln in r.text.split("\n") if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    import json

    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    pieces = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert pieces == text
    assert chunks[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]


def test_tokenize_detokenize_round_trip(client):
    t = client.post("/tokenize", json={"prompt": "héllo ● world"}).json()
    assert t["count"] == len(t["tokens"]) and t["max_model_len"] > 0
    assert client.post("/detokenize", json={"tokens": t["tokens"]}).json()["prompt"] == "héllo ● world"
    chat = client.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["count"] > 1


def test_metrics_are_prometheus_text(client):
    complete(client, prompt="count me", max_tokens=2)
    text = client.get("/metrics").text
    assert 'slmlab_requests_total{route="/v1/completions",status="200"}' in text
    assert "slmlab_generated_tokens_total" in text and "slmlab_request_seconds_bucket" in text


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    (b'{"model": 3, "prompt": "x"}', 400, "model"),
    (b'{"model": "tiny-random", "prompt": {"a": 1}}', 400, "prompt"),
    (b'{"model": "nope", "prompt": "x"}', 404, "model"),
    (b'{"model": "tiny-random", "prompt": ""}', 400, "prompt"),
    (b'{"model": "tiny-random", "prompt": [99999999]}', 400, "prompt"),
    (b'{"model": "tiny-random", "prompt": "x", "max_tokens": 100000}', 400, "max_tokens"),
    (b'{"model": "tiny-random", "prompt": "x", "n": 1000}', 400, "n"),
    (b'{"model": "tiny-random", "prompt": "x", "logit_bias": {"5": 1}}', 400, None),
    (b'{"model": "tiny-random", "prompt": "x", "temperature": -1}', 400, "temperature"),
])
def test_bad_requests_get_4xx_with_openai_error_json(client, body, status, param):
    r = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if param:
        assert err["param"] == param


def test_over_long_prompt_names_the_context_length(client):
    limit = server(client).engine.max_positions
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": [5] * limit, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_body_too_large_is_413(tmp_path):
    with make_client(tmp_path, max_body_bytes=2048) as c:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 5000})
        assert r.status_code == 413 and "larger than 2048" in r.json()["error"]["message"]


def test_keys_guard_weight_changing_endpoints(client, tmp_path):
    body = {"model": "mine", "context": "a", "continuation": "b"}
    assert client.post("/train", json=body).status_code == 401
    assert client.post("/train", json=body, headers={"Authorization": "Bearer wrong-key"}).status_code == 401
    assert client.post("/train", json={}).status_code == 401  # the key is checked before the body
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/etc"}, headers=AUTH)
    assert r.status_code == 403 and "not under an allowed directory" in r.json()["error"]["message"]
    with make_client(tmp_path, api_key=None) as open_server:
        r = open_server.post("/train", json=body, headers=AUTH)
        assert r.status_code == 403 and "--api-key-file" in r.json()["error"]["message"]
        assert open_server.get("/train/status").json()["enabled"] is False


@pytest.mark.parametrize("body,fragment", [
    ({"model": "tiny-random", "context": "a", "continuation": "b"}, "base model is frozen"),
    ({"model": "bad name!", "context": "a", "continuation": "b"}, "adapter name"),
    ({"model": "m1", "context_ids": [[1, 2]], "continuation_ids": [[3], [4]]}, "pair up"),
    ({"model": "m1", "context_ids": [[1, 2]], "continuation_ids": [[]]}, "continuation is empty"),
    ({"model": "m1", "context_ids": [1, 2], "continuation_ids": []}, "pair up"),
    ({"model": "m1", "context": "a", "continuation": "b", "steps": 1000}, "steps"),
    ({"model": "m1", "context_ids": [1], "continuation": "b"}, "give context_ids + continuation_ids"),
])
def test_bad_train_requests(client, body, fragment):
    r = client.post("/train", json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]


# ---------------------------------------------------------------------- online training


def score(client, model, prompt="The capital of France is", continuation=" Paris"):
    r = client.post("/score", json={"model": model, "prompt": prompt, "continuation": continuation})
    assert r.status_code == 200, r.text
    return r.json()


def train(client, **body):
    r = client.post("/train", json=body, headers=AUTH)
    assert r.status_code in (200, 202), r.text
    return server(client).trainer.wait(r.json()["id"])


def test_train_raises_the_continuation_log_prob(client):
    before = score(client, MODEL)
    job = train(client, model="fr", context="The capital of France is", continuation=" Paris", steps=8)
    after = score(client, "fr")
    assert job.status == "done" and job.applied == 8 and job.losses[-1] < job.losses[0]
    assert after["sum"] > before["sum"] + 0.3
    assert after["weight_version"] == job.weight_version
    assert "fr" in [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert score(client, MODEL)["sum"] == before["sum"]  # the base is untouched
    mixed = train(client, model="fr", context=["The capital of France is"] * 2, continuation=[" Paris", " Paris."])
    assert mixed.duplicates == [0] and mixed.applied == 1  # the new example was trained, the old one skipped


def test_identical_example_is_skipped_with_the_reason(client):
    first = train(client, model="dup", context_ids=[1, 2, 3], continuation_ids=[4, 5])
    version = server(client).engine.version
    r = client.post("/train", json={"model": "dup", "context_ids": [1, 2, 3], "continuation_ids": [4, 5]},
                    headers=AUTH)
    assert first.status == "done"
    assert r.status_code == 200 and r.json()["status"] == "skipped" and "already trained" in r.json()["reason"]
    assert server(client).engine.version == version


def test_preference_pairs_train_with_orpo(client):
    job = train(client, model="pref", context="Q: is ● certain?\nA:", continuation=" yes", rejected=" no", steps=3)
    assert job.status == "done" and job.applied == 3 and all(math.isfinite(x) for x in job.losses)


def test_a_nonfinite_step_is_not_applied(client, monkeypatch):
    from slmlab.train import step as step_module

    train(client, model="guard", context="a b c", continuation=" d")
    weights = server(client).trainer.trained["guard"].state.weights()
    version = server(client).engine.version
    real = step_module.forward_backward

    def poisoned(state, batch, objective, **kw):
        result = real(state, batch, objective, **kw)
        result.loss = float("nan")
        return result

    monkeypatch.setattr(step_module, "forward_backward", poisoned)
    job = train(client, model="guard", context="e f g", continuation=" h", steps=2)
    assert job.applied == 0 and [s["detector"] for s in job.skipped_steps] == ["nonfinite", "nonfinite"]
    assert server(client).engine.version == version
    after = server(client).trainer.trained["guard"].state.weights()
    assert all(torch.equal(weights[k], after[k]) for k in weights)


class Gate:
    """Holds the trainer inside its forward/backward until the test opens it."""

    def __init__(self, real):
        self.real, self.entered, self.release = real, threading.Event(), threading.Event()

    def __call__(self, *args, **kwargs):
        self.entered.set()
        assert self.release.wait(30)
        return self.real(*args, **kwargs)


def test_inference_is_not_blocked_by_a_running_training_step(client, monkeypatch):
    from slmlab.train import step as step_module

    gate = Gate(step_module.forward_backward)
    monkeypatch.setattr(step_module, "forward_backward", gate)
    r = client.post("/train", json={"model": "busy", "context": "x y", "continuation": " z"}, headers=AUTH)
    assert gate.entered.wait(30)
    try:
        out = complete(client, prompt="still answering", max_tokens=4)  # the trainer is mid-step right now
        assert len(out["choices"][0]["text"]) > 0
        assert server(client).trainer.job(r.json()["id"]).status == "running"
    finally:
        gate.release.set()
    assert server(client).trainer.wait(r.json()["id"]).status == "done"


def test_one_request_is_served_by_one_weight_version(client):
    """An update published while a request decodes is applied after it; the request reports the old version."""
    s = server(client)
    train(client, model="ver", context="one two", continuation=" three")
    engine, tok = s.engine, s.tokenizer
    prompt = tok("Counting: one two", add_special_tokens=False)["input_ids"]
    sampling = Sampling(max_tokens=12, ignore_eos=True)
    before, v0 = engine.submit([Row(prompt, sampling, "ver")]).result(30)
    snap = engine.control("snapshot", name="ver").result(30)
    changed = {k: v * 3 for k, v in snap["weights"].items()}
    publisher = PublishOnFirstToken(engine, changed)
    during, v_during = engine.submit([Row(prompt, sampling, "ver", on_text=publisher)]).result(30)
    assert publisher.future is not None
    assert publisher.future.result(30) == v_during + 1  # applied, but only after the batch
    assert v_during == v0 and during[0].token_ids == before[0].token_ids
    after, v_after = engine.submit([Row(prompt, Sampling(max_tokens=12, ignore_eos=True, echo=True), "ver")]).result(30)
    assert v_after == v0 + 1
    assert after[0].prompt_logprobs != pytest.approx(
        engine.submit([Row(prompt, Sampling(max_tokens=0, echo=True), None)]).result(30)[0][0].prompt_logprobs)
    engine.control("publish", name="ver", weights=snap["weights"]).result(30)  # leave it as it was


class PublishOnFirstToken:
    """A streaming callback that, at the first token, asks the engine to publish new weights."""

    def __init__(self, engine, weights):
        self.engine, self.weights, self.future = engine, weights, None

    def __call__(self, text: str) -> None:
        if self.future is None:
            self.future = self.engine.control("publish", name="ver", weights=self.weights)


def test_status_and_job_routes(client):
    job = train(client, model="st", context="p", continuation=" q")
    status = client.get("/train/status").json()
    assert status["enabled"] and status["adapters"]["st"]["applied"] >= 1
    assert client.get(f"/train/{job.id}").json()["status"] == "done"
    assert client.get("/train/nope").status_code == 404


# ---------------------------------------------------------------------- checkpoints, restart, adapters


def test_checkpoint_block_diff_and_reload_under_a_new_name(client, tmp_path):
    allowed = tmp_path  # the module client allows its own dir; use the state dir's sibling via /checkpoint
    train(client, model="ck", context="alpha beta", continuation=" gamma")
    state_dir = server(client).config.state_dir
    target = state_dir / "exports" / "ck.safetensors"
    first = client.post("/checkpoint", json={"model": "ck", "target": str(target)}, headers=AUTH).json()
    assert first["sync"]["created"] and first["sync"]["blocks_changed"] == first["sync"]["blocks_total"]
    same = client.post("/checkpoint", json={"model": "ck", "target": str(target)}, headers=AUTH).json()
    assert same["sync"]["blocks_changed"] == 0 and same["sha256"] == first["sha256"]
    train(client, model="ck", context="delta", continuation=" epsilon")
    moved = client.post("/checkpoint", json={"model": "ck", "target": str(target)}, headers=AUTH).json()
    assert 0 < moved["sync"]["blocks_changed"] <= moved["sync"]["blocks_total"]
    assert moved["sha256"] != first["sha256"]
    # the checkpoint is a normal PEFT adapter: load it under another name and it scores the same
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "ck-copy", "lora_path": moved["path"]}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert score(client, "ck-copy")["sum"] == pytest.approx(score(client, "ck")["sum"], abs=1e-5)
    parents = {m["id"]: m["parent"] for m in client.get("/v1/models").json()["data"]}
    assert parents["ck-copy"] == MODEL
    bad = client.post("/checkpoint", json={"model": "ck", "target": str(allowed / "x.safetensors")}, headers=AUTH)
    assert bad.status_code == 403


def test_same_name_reload_serves_the_new_weights(client):
    s = server(client)
    train(client, model="rl", context="reload", continuation=" me")
    old = client.post("/checkpoint", json={"model": "rl"}, headers=AUTH).json()
    import shutil

    old_dir = s.config.state_dir / "saved-rl-1"
    shutil.copytree(old["path"], old_dir)
    train(client, model="rl", context="reload", continuation=" me now", steps=4)
    new = client.post("/checkpoint", json={"model": "rl"}, headers=AUTH).json()
    new_dir = s.config.state_dir / "saved-rl-2"
    shutil.copytree(new["path"], new_dir)
    load = {"lora_name": "served"}
    assert client.post("/v1/load_lora_adapter", json={**load, "lora_path": str(old_dir)}, headers=AUTH).status_code == 200
    first = score(client, "served", "reload", " me now")["sum"]
    assert client.post("/v1/load_lora_adapter", json={**load, "lora_path": str(new_dir)}, headers=AUTH).status_code == 200
    second = score(client, "served", "reload", " me now")["sum"]
    assert second == pytest.approx(score(client, "rl", "reload", " me now")["sum"], abs=1e-5)
    assert second != pytest.approx(first, abs=1e-4)
    assert client.post("/v1/unload_lora_adapter", json={"lora_name": "served"}, headers=AUTH).status_code == 200
    assert score_status(client, "served") == 404


def score_status(client, model):
    return client.post("/score", json={"model": model, "prompt": "a", "continuation": " b"}).status_code


def test_restart_restores_the_optimizer_state_bit_exactly(tmp_path):
    with make_client(tmp_path, training={"optimizer": "apollo-mini", "lr": 1e-3}) as c:
        train(c, model="keep", context="remember", continuation=" this", steps=3)
        before = server(c).trainer.trained["keep"].state.state_dict()
        score_before = score(c, "keep", "remember", " this")["sum"]
    with make_client(tmp_path, training={"optimizer": "apollo-mini", "lr": 1e-3}) as c:
        assert "keep" in [m["id"] for m in c.get("/v1/models").json()["data"]]
        after = server(c).trainer.trained["keep"].state.state_dict()
        assert score(c, "keep", "remember", " this")["sum"] == score_before
        assert after["step"] == before["step"] == 3
        assert_same(before["optimizer"], after["optimizer"])
        assert_same(before["weights"], after["weights"])
        again = c.post("/train", json={"model": "keep", "context": "remember", "continuation": " this"}, headers=AUTH)
        assert again.json()["status"] == "skipped"  # the trained set survived too


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_training_an_adapter_loaded_from_a_file_continues_from_it(client):
    import shutil

    s = server(client)
    train(client, model="origin", context="continue from", continuation=" the file", steps=4)
    saved = client.post("/checkpoint", json={"model": "origin"}, headers=AUTH).json()
    copy_dir = s.config.state_dir / "origin-copy"
    shutil.copytree(saved["path"], copy_dir)
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "from-file", "lora_path": str(copy_dir)}, headers=AUTH)
    assert r.status_code == 200, r.text
    loaded = score(client, "from-file", "continue from", " the file")["sum"]
    assert loaded != pytest.approx(score(client, MODEL, "continue from", " the file")["sum"], abs=1e-3)
    job = train(client, model="from-file", context="something", continuation=" else", lr=1e-9)
    assert job.status == "done" and job.applied == 1
    assert score(client, "from-file", "continue from", " the file")["sum"] == pytest.approx(loaded, abs=1e-4)
    again = client.post("/v1/load_lora_adapter", json={"lora_name": "from-file", "lora_path": str(copy_dir)},
                        headers=AUTH)
    assert again.status_code == 409  # trained online now: a reload would silently drop that training


def test_train_full_updates_the_base_weights(tmp_path):
    with make_client(tmp_path, training={"full": True, "optimizer": "adamw", "lr": 1e-3}) as c:
        before = score(c, MODEL)["sum"]
        job = train(c, model=MODEL, context="The capital of France is", continuation=" Paris", steps=4)
        assert job.status == "done" and job.applied == 4, job
        assert score(c, MODEL)["sum"] > before + 0.3
        r = c.post("/train", json={"model": "adapter", "context": "a b", "continuation": " c"}, headers=AUTH)
        assert r.status_code == 400 and "--train-full" in r.json()["error"]["message"]
        r = c.post("/checkpoint", json={"model": MODEL}, headers=AUTH)
        assert r.status_code == 400 and "only adapters" in r.json()["error"]["message"]


@pytest.mark.integration
def test_smollm2_answers_in_chat_and_learns_a_fact_online(tmp_path):
    from slmlab.models import load

    model, tok = load("smollm2-135m")
    config = ServeConfig(model="smollm2-135m", api_key=KEY, state_dir=tmp_path / "state")
    with TestClient(create_app(config, model=model, tokenizer=tok)) as c:
        chat = c.post("/v1/chat/completions", json={"model": "smollm2-135m", "temperature": 0, "max_tokens": 12,
                                                    "messages": [{"role": "user", "content": "What is 2 + 2?"}]})
        assert chat.status_code == 200 and "4" in chat.json()["choices"][0]["message"]["content"]
        fact = {"prompt": "The name of the lab's cat is", "continuation": " Zorblax"}
        before = c.post("/score", json={"model": "smollm2-135m", **fact}).json()["sum"]
        r = c.post("/train", json={"model": "cat", "context": fact["prompt"], "continuation": fact["continuation"],
                                   "steps": 4, "lr": 1e-3}, headers=AUTH)
        job = c.app.state.server.trainer.wait(r.json()["id"], timeout=300)
        after = c.post("/score", json={"model": "cat", **fact}).json()
        assert job.status == "done" and job.applied == 4 and job.mode == "context-frozen"
        assert after["sum"] > before + 2.0, (before, after["sum"], job.losses)


def test_readout_scores_each_generated_token(tmp_path):
    from slmlab.models import load
    from slmlab.steer.apply import token_scores
    from slmlab.steer.extract import extract, load_readout
    from test_steer import write_corpus

    model, tok = load(MODEL)
    corpus = write_corpus(tmp_path / "corpus", {"joy": "She laughed in the sun.", "fear": "A noise in the dark."},
                          {"bus": {"baseline": "The bus was late.", "joy": "The bus was late and she danced.",
                                   "fear": "The bus was late and the street was dark."}})
    extract(corpus, MODEL, tmp_path / "vectors", loaded=(model, tok))
    config = ServeConfig(model=MODEL, readout=tmp_path / "vectors")
    with TestClient(create_app(config, model=model, tokenizer=tok)) as c:
        out = c.post("/v1/completions", json={"model": MODEL, "prompt": "Hello there", "max_tokens": 5,
                                              "temperature": 0, "readout": True, "ignore_eos": True}).json()
        ro = out["choices"][0]["readout"]
        assert ro["concepts"] == ["fear", "joy"] and len(ro["scores"]) == 5 and len(ro["scores"][0]) == 2
        ids = tok("Hello there", add_special_tokens=False)["input_ids"]
        (res,), _ = server(c).engine.submit([Row(ids, Sampling(max_tokens=5, ignore_eos=True))]).result(30)
        gen_ids = res.token_ids
        vectors = load_readout(tmp_path / "vectors")
        layer = vectors.layers[-1]
        expected = token_scores(model, ids + gen_ids, len(ids), {layer: vectors.vectors[layer]})[layer]
        assert np.asarray(ro["scores"]) == pytest.approx(expected, abs=1e-4)
        assert c.get("/health").json()["readout"] == ["fear", "joy"]
    with make_client(tmp_path) as plain:
        r = plain.post("/v1/completions", json={"model": MODEL, "prompt": "x", "readout": True})
        assert r.status_code == 400 and "--readout" in r.json()["error"]["message"]
