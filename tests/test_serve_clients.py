"""A live ``slmlab serve`` subprocess on a loopback port, driven by real clients.

The official ``openai`` package talks to it (completions, chat, streaming, token-id prompts,
echo + logprobs); 32 concurrent clients get the same greedy answers as one client at a time;
``kill -9`` during ``/checkpoint`` never leaves a torn target. Everything is bounded: every
request has a timeout and the server is killed at the end whatever happens.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

KEY = "client-test-key"
MODEL = "tiny-random"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``slmlab serve`` in a subprocess; ``url`` once /health answers."""

    def __init__(self, tmp: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        key_file = tmp / "key.txt"
        key_file.write_text(KEY + "\n")
        self.state = tmp / "state"
        cmd = [sys.executable, "-m", "slmlab", "serve", "--model", MODEL, "--port", str(self.port),
               "--api-key-file", str(key_file), "--state-dir", str(self.state), "--allow-dir", str(tmp), *extra]
        self.log = open(tmp / f"server-{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 90.0) -> LiveServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("server did not answer /health in time")

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = LiveServer(tmp_path_factory.mktemp("live")).wait_ready()
    yield server
    server.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def oai(live):
    from openai import OpenAI

    return OpenAI(base_url=live.url + "/v1", api_key="unused-for-inference", timeout=60, max_retries=0)


def test_openai_client_completions(oai):
    out = oai.completions.create(model=MODEL, prompt="The weather today is", max_tokens=8, temperature=0)
    assert out.object == "text_completion" and len(out.choices) == 1
    assert out.choices[0].finish_reason in ("stop", "length") and out.usage.completion_tokens <= 8
    assert out.model_extra["weight_version"] == 0


def test_openai_client_token_id_prompt_equals_text(oai, live):
    ids = httpx.post(live.url + "/tokenize", json={"prompt": "The weather today is"}, timeout=30).json()["tokens"]
    by_ids = oai.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    by_text = oai.completions.create(model=MODEL, prompt="The weather today is", max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_openai_client_echo_logprobs(oai):
    out = oai.completions.create(model=MODEL, prompt="one two three four", max_tokens=1, temperature=0, echo=True,
                                 logprobs=1)
    lp = out.choices[0].logprobs
    assert lp.token_logprobs[0] is None and all(x is not None for x in lp.token_logprobs[1:])
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert out.choices[0].text.startswith("one two three four")


def test_openai_client_chat_and_stream(oai):
    msgs = [{"role": "user", "content": "Name a colour."}]
    full = oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0)
    assert full.choices[0].message.role == "assistant"
    stream = oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason and usage.completion_tokens == full.usage.completion_tokens


def test_openai_client_errors_are_raised_as_api_errors(oai):
    import openai

    with pytest.raises(openai.NotFoundError) as e:
        oai.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    assert "does not exist" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        oai.completions.create(model=MODEL, prompt="x", max_tokens=10**6)


PROMPTS = [f"Item {i}: the {w} of the" for i, w in enumerate(
    "cat dog sun moon river tree stone cloud book door lamp road ship bird fish rain "
    "snow wind fire ice gold iron salt milk bread wine song word game rule map key".split())]


def greedy(url: str, prompt: str) -> tuple[str, int]:
    r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 12,
                                                  "temperature": 0}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"], r.status_code


def batches(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("slmlab_batch_rows_count"))


def test_32_concurrent_clients_get_the_sequential_answers(live):
    assert len(PROMPTS) == 32
    sequential = [greedy(live.url, p)[0] for p in PROMPTS]
    before = batches(live.url)
    with ThreadPoolExecutor(32) as pool:
        concurrent = list(pool.map(lambda p: greedy(live.url, p), PROMPTS))
    assert [c[0] for c in concurrent] == sequential
    assert batches(live.url) - before < 32  # requests that arrived together were decoded together
    assert 'status="500"' not in httpx.get(live.url + "/metrics", timeout=30).text


def test_malformed_requests_never_crash_the_server(live):
    bad = [b"{", b"[]", b'{"model": "tiny-random"}', b'{"model": "tiny-random", "prompt": [[1, "a"]]}',
           b'{"model": "tiny-random", "prompt": "x", "stop": 5}', b"\xff\xfe", b'{"model": "tiny-random", "prompt": "x", "n": 0}']
    for body in bad:
        r = httpx.post(live.url + "/v1/completions", content=body, headers={"content-type": "application/json"},
                       timeout=30)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        assert "error" in r.json()
    assert httpx.get(live.url + "/health", timeout=30).status_code == 200


def train_and_checkpoint(url: str, name: str, target: Path, n: int) -> dict:
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(url + "/train", json={"model": name, "context": f"step {n} of", "continuation": " many"},
                   headers=auth, timeout=60)
    job = r.json()["id"]
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/train/{job}", timeout=30).json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = httpx.post(url + "/checkpoint", json={"model": name, "target": str(target)}, headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_kill_9_during_checkpoint_never_tears_the_target(tmp_path):
    """Loop: train, checkpoint to a target, kill -9 at a random moment of the next checkpoint; the target
    always equals one complete checkpoint that a /checkpoint answer reported."""
    target = tmp_path / "synced" / "adapter.safetensors"
    rng = random.Random(0)
    seen: set[str] = set()
    for round_ in range(3):
        server = LiveServer(tmp_path).wait_ready()
        try:
            done = train_and_checkpoint(server.url, "kk", target, 2 * round_)
            seen.add(done["sha256"])
            auth = {"Authorization": f"Bearer {KEY}"}
            httpx.post(server.url + "/train", json={"model": "kk", "context": f"step {2 * round_ + 1} of",
                                                    "continuation": " many"}, headers=auth, timeout=60)
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(httpx.post, server.url + "/checkpoint",
                                      json={"model": "kk", "target": str(target)}, headers=auth, timeout=60)
                time.sleep(rng.uniform(0.0, 0.05))
                server.kill(signal.SIGKILL)
                try:
                    answer = pending.result()
                    if answer.status_code == 200:
                        seen.add(answer.json()["sha256"])
                except httpx.HTTPError:
                    pass  # killed before answering
        finally:
            server.kill(signal.SIGKILL)
        from slmlab.serve.sync import sha256_file

        assert sha256_file(target) in seen  # never torn: a complete, reported checkpoint
        from safetensors.torch import load_file

        assert load_file(str(target))  # and it loads
