"""lm-evaluation-harness against ``slmlab serve``: its scores equal slmlab's in-process scoring.

What is tested:

* :func:`slmlab.evaluate.loglik.encode_pair` gives lm-eval's own token ids, and
  :func:`~slmlab.evaluate.loglik.continuation_logprobs` in padded batches equals a one-pair-at-a-time
  unpadded computation.
* The task file from :func:`~slmlab.evaluate.loglik.write_lm_eval_task` loads through
  ``lm_eval.tasks.TaskManager`` and builds exactly the (question, choice) requests slmlab scores.
* End to end: the server runs in-process (uvicorn on a free loopback port, in a thread) on
  tiny-random; ``lm_eval.simple_evaluate(model="local-completions", ...)`` runs the logic task
  against it; its ``acc`` and every per-choice log-likelihood it saw equal
  :func:`~slmlab.evaluate.loglik.multiple_choice_accuracy` on a second tiny-random instance
  (same seed, same weights). tiny-random's accuracy is near chance: the point is equality.
* A generated EOS stays in an echo answer's log-probs (lm-eval sums ``token_logprobs[ctxlen:-1]``,
  so a missing last entry would silently drop the continuation's last token).

lm-eval quirks handled here:

* ``local-completions`` needs lm-eval's ``api`` extras (``tenacity``, ``aiohttp``, ``requests``);
  without them the end-to-end tests skip with the reason.
* ``tokenizer=<ensure_embedded() dir>`` and ``tokenizer_backend="huggingface"``: a local tokenizer
  (nothing is fetched); ``"auto"`` would first probe the server for a remote tokenizer.
  ``model="tiny-random"`` is what the requests name and what the server serves.
* ``TaskManager(include_path=..., include_defaults=False)``: indexing lm-eval's thousands of
  built-in task YAMLs takes ~13 s on this machine and is not needed.
* The task YAML puts the ``datasets`` cache beside the data file; ``HF_DATASETS_OFFLINE=1`` keeps
  ``datasets`` off the hub (the ``json`` builder is local).
* ``simple_evaluate`` seeds Python/NumPy/torch's global RNGs unless given ``None`` (we pass
  ``None``), runs ``git describe`` in the working directory and collects torch's environment report
  (subprocesses, seconds): both are stubbed out here with ``monkeypatch``.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from slmlab.evaluate.loglik import (
    continuation_logprobs,
    encode_pair,
    logic_choice_items,
    multiple_choice_accuracy,
    write_lm_eval_task,
)

N_ITEMS = 20
TASK = "slmlab_logic_mc"
API_EXTRAS = [m for m in ("tenacity", "aiohttp", "requests") if importlib.util.find_spec(m) is None]
needs_api_extras = pytest.mark.skipif(bool(API_EXTRAS), reason=f"lm-eval's api extras missing: {API_EXTRAS}")

PAIRS = [  # contexts with trailing spaces, glyphs split into byte tokens, an empty context
    ("Q: A→B,A?B\nA:", " ●"),
    ("Q: A→B,A?B\nA: ", "●"),
    ("The cat sat on the", " mat."),
    ("Hello  \n", "world"),
    ("", "Just a continuation"),
    ("x", " ◐ and more text after it"),
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def served():
    """(model, tokenizer) for the server."""
    from slmlab.models import load

    return load("tiny-random")


@pytest.fixture(scope="module")
def reference():
    """A second tiny-random instance (same seed, same weights) for in-process scoring."""
    from slmlab.models import load

    return load("tiny-random")


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return logic_choice_items(n=N_ITEMS)


@pytest.fixture
def task_dir(tmp_path: Path, items: list[dict]) -> Path:
    write_lm_eval_task(tmp_path, items, task_name=TASK)
    return tmp_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.started:
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


@pytest.fixture(scope="module")
def base_url(served):
    """The server on a free loopback port (uvicorn in a thread) for the module; its completions URL."""
    import uvicorn

    from slmlab.serve import ServeConfig, create_app

    model, tok = served
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ServeConfig(model="tiny-random"), model=model, tokenizer=tok),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="slmlab-serve-test", daemon=True)
    thread.start()
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", server)
        yield f"http://127.0.0.1:{port}/v1/completions"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def lm_eval_model_args(base_url: str) -> dict:
    from slmlab.models import ensure_embedded

    return {"model": "tiny-random", "base_url": base_url, "tokenizer": str(ensure_embedded()),
            "tokenizer_backend": "huggingface", "tokenized_requests": True, "num_concurrent": 1, "max_retries": 1}


# --------------------------------------------------------------------------- tokenization and batching


def unpadded_reference(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """One pair alone, no padding, no mask: the plain definition of lm-eval's loglikelihood."""
    ctx, cont = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.inference_mode():
        logprobs = model(input_ids=ids).logits[0].float().log_softmax(-1)
    rows = logprobs[len(ctx) - 1: -1]
    target = torch.tensor(cont)
    return float(rows.gather(-1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())


@needs_api_extras
def test_encode_pair_matches_lm_eval(reference):
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from slmlab.models import ensure_embedded

    _, tok = reference
    lm = LocalCompletionsAPI(base_url="http://127.0.0.1:9/v1/completions", tokenizer=str(ensure_embedded()),
                             tokenizer_backend="huggingface", tokenized_requests=True)
    for context, continuation in PAIRS:
        ctx, cont = encode_pair(tok, context, continuation)
        if context:
            assert (ctx, cont) == lm._encode_pair(context, continuation), (context, continuation)
        else:
            assert ctx == [lm.prefix_token_id] and cont == lm.tok_encode(continuation)
    assert encode_pair(tok, "Q: x\nA: ", "●")[1] == encode_pair(tok, "Q: x\nA:", " ●")[1]  # trailing space moves


def test_batched_equals_one_at_a_time(reference):
    model, tok = reference
    pairs = PAIRS * 2  # several batches with rows of different lengths
    batched = continuation_logprobs(model, tok, pairs, batch_size=4)
    for (context, continuation), (lp, greedy) in zip(pairs, batched):
        ref_lp, ref_greedy = unpadded_reference(model, tok, context, continuation)
        assert lp == pytest.approx(ref_lp, abs=1e-4) and greedy == ref_greedy, (context, continuation)
    single = continuation_logprobs(model, tok, pairs, batch_size=1)
    assert [lp for lp, _ in single] == pytest.approx([lp for lp, _ in batched], abs=1e-4)
    assert [g for _, g in single] == [g for _, g in batched]


def test_multiple_choice_accuracy_picks_the_likeliest(reference, items):
    model, tok = reference
    result = multiple_choice_accuracy(model, tok, items[:4])
    assert result["n"] == 4 and len(result["predictions"]) == 4
    for lls, pred, item in zip(result["loglikelihoods"], result["predictions"], items):
        assert len(lls) == len(item["choices"]) and lls[pred] == max(lls)
    assert result["accuracy"] == sum(result["correct"]) / 4


# --------------------------------------------------------------------------- the task file


def test_logic_items_are_v6_glyph_choices(items):
    assert len(items) == N_ITEMS
    for item in items:
        assert item["question"].startswith("Q: ") and item["question"].endswith("\nA:")
        assert item["choices"] == [" ●", " ◕", " ◐", " ◔", " ○"]
        assert 0 <= item["answer"] < 5
    sampled = logic_choice_items(n=5, seed=1)
    assert sampled == logic_choice_items(n=5, seed=1) and len(sampled) == 5


def test_task_file_loads_through_task_manager(task_dir, items):
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(task_dir), include_defaults=False).load([TASK])["tasks"][TASK]
    docs = list(task.test_docs())
    assert len(docs) == len(items)
    task.build_all_requests(limit=None, rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst.args)
    for i, item in enumerate(items):
        assert by_doc[i] == [(item["question"], c) for c in item["choices"]]
        assert task.doc_to_target(docs[i]) == item["answer"]


# --------------------------------------------------------------------------- end to end


@needs_api_extras
def test_lm_eval_through_server_equals_in_process(base_url, reference, items, task_dir, monkeypatch):
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.tasks import TaskManager

    monkeypatch.setattr(lm_eval.evaluator, "get_git_commit_hash", lambda: None)
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda storage: None)
    results = lm_eval.simple_evaluate(
        model="local-completions", model_args=lm_eval_model_args(base_url), tasks=[TASK],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False), limit=None,
        log_samples=True, bootstrap_iters=0, random_seed=None, numpy_random_seed=None, torch_random_seed=None)

    model, tok = reference
    ours = multiple_choice_accuracy(model, tok, items)
    assert results["results"][TASK]["acc,none"] == pytest.approx(ours["accuracy"], abs=1e-9)
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(len(items)))
    for s in samples:
        theirs = [ll for ll, _ in s["filtered_resps"]]
        assert theirs == pytest.approx(ours["loglikelihoods"][s["doc_id"]], abs=1e-4), s["doc_id"]
        assert s["acc"] == ours["correct"][s["doc_id"]]
    pairs = [(item["question"], choice) for item in items for choice in item["choices"]]
    their_greedy = [greedy for s in samples for _, greedy in s["filtered_resps"]]
    assert their_greedy == [greedy for _, greedy in continuation_logprobs(model, tok, pairs)]


class BoostEos:
    """A forward hook on ``lm_head``: EOS becomes every position's argmax (a model that wants to stop)."""

    def __init__(self, eos_id: int):
        self.eos_id = eos_id

    def __call__(self, module, inputs, output):
        output[..., self.eos_id] += 100.0
        return output


@needs_api_extras
def test_echo_keeps_a_generated_eos():
    """lm-eval assumes the echo answer holds prompt + exactly one generated token; EOS must count too."""
    from fastapi.testclient import TestClient
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from slmlab.models import load
    from slmlab.serve import ServeConfig, create_app

    model, tok = load("tiny-random")
    model.lm_head.register_forward_hook(BoostEos(tok.eos_token_id))
    ctx, cont = encode_pair(tok, "Q: A→B,A?B\nA:", " ●")
    body = {"model": "tiny-random", "prompt": [ctx + cont], "max_tokens": 1, "logprobs": 1, "echo": True,
            "temperature": 0}
    with TestClient(create_app(ServeConfig(model="tiny-random"), model=model, tokenizer=tok)) as client:
        answer = client.post("/v1/completions", json=body).json()
    assert len(answer["choices"][0]["logprobs"]["token_logprobs"]) == len(ctx) + len(cont) + 1
    (theirs, _), = LocalCompletionsAPI.parse_logprobs(outputs=answer, ctxlens=[len(ctx)])
    (ours, _), = continuation_logprobs(model, tok, [("Q: A→B,A?B\nA:", " ●")])
    assert theirs == pytest.approx(ours, abs=1e-4)
