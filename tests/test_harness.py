"""lm-evaluation-harness in process on slmlab's model, and slmlab's logic task as an lm-eval task.

What is tested:

* The shipped task data (``resources/lm_eval/slmlab_logic_mc.jsonl``) is the ``logic`` suite's first
  60 held-out puzzles as :func:`~slmlab.evaluate.loglik.logic_choice_items` makes them (regenerate
  with :func:`~slmlab.evaluate.harness.write_logic_task_data` when the recipe changes).
* The shipped YAML loads through ``TaskManager`` from the package directory, from any working
  directory, and builds exactly the (question, choice) requests slmlab scores.
* :func:`~slmlab.evaluate.harness.run_harness` on tiny-random, 20 items: lm-eval's ``acc`` equals
  :func:`~slmlab.evaluate.loglik.multiple_choice_accuracy` on the same items, and every per-choice
  log-likelihood lm-eval logged equals slmlab's to 1e-4. tiny-random is near chance: the point is
  equality. The same holds with a (randomly initialised, so not a no-op) LoRA adapter: ``HFLM``
  takes the ``PeftModel`` as it is.
* Unknown tasks and tasks whose data set is on the hub are clear errors before a model loads.
* The CLI command prints the table and writes the results.

As in test_serve_lm_eval.py: ``simple_evaluate``'s ``git describe`` and torch environment report
(subprocesses, seconds) are stubbed out, and seeds are None (the global RNGs are left alone).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from slmlab.errors import SlmlabError
from slmlab.evaluate.harness import LOGIC_TASK, read_logic_items, run_harness, task_dir
from slmlab.evaluate.loglik import multiple_choice_accuracy

N_ITEMS = 20


@pytest.fixture(scope="module", autouse=True)
def no_lm_eval_subprocesses():
    import lm_eval.evaluator

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lm_eval.evaluator, "get_git_commit_hash", lambda: None)
        mp.setattr(lm_eval.evaluator, "add_env_info", lambda storage: None)
        yield


@pytest.fixture(scope="module")
def harness_run(tmp_path_factory):
    """``run_harness`` on the shipped logic task, first 20 items, samples logged, results written."""
    out = tmp_path_factory.mktemp("harness") / "results.json"
    results = run_harness([LOGIC_TASK], "tiny-random", limit=N_ITEMS, log_samples=True, seed=None, out=out)
    return results, out


def assert_same_scores(results: dict, ours: dict, n: int) -> None:
    """lm-eval's acc, per-document correctness and per-choice log-likelihoods equal slmlab's."""
    assert results["results"][LOGIC_TASK]["acc,none"] == pytest.approx(ours["accuracy"], abs=1e-9)
    samples = sorted(results["samples"][LOGIC_TASK], key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(n))
    for s in samples:
        theirs = [ll for ll, _ in s["filtered_resps"]]
        assert theirs == pytest.approx(ours["loglikelihoods"][s["doc_id"]], abs=1e-4), s["doc_id"]
        assert s["acc"] == ours["correct"][s["doc_id"]]


# --------------------------------------------------------------------------- the shipped task


def test_shipped_items_are_the_logic_suites_first_puzzles():
    from slmlab.evaluate.harness import LOGIC_TASK_ITEMS
    from slmlab.evaluate.loglik import logic_choice_items

    assert read_logic_items() == logic_choice_items(n=LOGIC_TASK_ITEMS)


def test_shipped_task_loads_from_the_package_dir(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    import slmlab

    assert task_dir() == Path(slmlab.__file__).parent / "resources" / "lm_eval"
    monkeypatch.chdir(tmp_path)  # nothing may depend on the working directory
    task = TaskManager(include_path=str(task_dir()), include_defaults=False).load([LOGIC_TASK])["tasks"][LOGIC_TASK]
    items = read_logic_items()
    docs = list(task.test_docs())
    assert [dict(d) for d in docs] == items
    task.build_all_requests(limit=N_ITEMS, rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst.args)
    assert sorted(by_doc) == list(range(N_ITEMS))
    for i in range(N_ITEMS):
        assert by_doc[i] == [(items[i]["question"], c) for c in items[i]["choices"]]
        assert task.doc_to_target(docs[i]) == items[i]["answer"]
    assert not list(tmp_path.iterdir())  # no datasets cache or copy written here


# --------------------------------------------------------------------------- in process


def test_in_process_lm_eval_equals_slmlab_scoring(harness_run, tiny):
    results, _ = harness_run
    model, tok = tiny
    assert results["n-samples"][LOGIC_TASK]["effective"] == N_ITEMS
    assert_same_scores(results, multiple_choice_accuracy(model, tok, read_logic_items()[:N_ITEMS]), N_ITEMS)
    assert results["slmlab"] == {"model": "tiny-random", "adapter": None, "tasks": [LOGIC_TASK], "limit": N_ITEMS}


def test_results_and_samples_are_written(harness_run):
    from slmlab.evaluate.suites import samples_path_for

    results, out = harness_run
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["results"] == results["results"] and "samples" not in written
    lines = [json.loads(line) for line in samples_path_for(out).read_text(encoding="utf-8").splitlines()]
    assert len(lines) == N_ITEMS and {line["task"] for line in lines} == {LOGIC_TASK}


def test_adapter_is_scored_as_loaded(tmp_path, tiny):
    """A PEFT adapter dir: HFLM takes the PeftModel; scores equal slmlab's on it and differ from the base."""
    import torch
    from peft import LoraConfig, get_peft_model

    from slmlab.models import load

    n = 5
    base, tok = load("tiny-random")  # a fresh instance: get_peft_model changes it in place
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora)
    peft_model.save_pretrained(tmp_path / "adapter")
    peft_model.eval()

    results = run_harness([LOGIC_TASK], "tiny-random", tmp_path / "adapter", limit=n, log_samples=True, seed=None)
    items = read_logic_items()[:n]
    assert_same_scores(results, multiple_choice_accuracy(peft_model, tok, items), n)
    plain = multiple_choice_accuracy(tiny[0], tok, items)["loglikelihoods"]
    theirs = [[ll for ll, _ in s["filtered_resps"]] for s in sorted(results["samples"][LOGIC_TASK],
                                                                      key=lambda s: s["doc_id"])]
    assert max(abs(a - b) for x, y in zip(theirs, plain) for a, b in zip(x, y)) > 1e-3


# --------------------------------------------------------------------------- errors


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model is a test failure: the checks must come first."""
    import slmlab.evaluate.suites

    def refuse(source):
        raise AssertionError(f"a model was loaded: {source}")

    monkeypatch.setattr(slmlab.evaluate.suites, "load_model", refuse)


def test_unknown_task_is_a_clear_error(no_model):
    with pytest.raises(SlmlabError) as info:
        run_harness(["slmlab_logic", "hellaswag"], "tiny-random")
    message = str(info.value)
    assert "Unknown lm-eval task 'slmlab_logic'. Did you mean 'slmlab_logic_mc'?" in message
    assert "Unknown lm-eval task 'hellaswag'" in message and "--include-defaults" in message


def test_hub_task_fails_offline_before_the_model_loads(tmp_path, no_model):
    (tmp_path / "hub_task.yaml").write_text(
        "task: needs_the_hub\ndataset_path: slmlab-test/no-such-dataset\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: question\ndoc_to_choice: choices\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n", encoding="utf-8")
    with pytest.raises(SlmlabError, match="Only local tasks run offline"):
        run_harness(["needs_the_hub"], "tiny-random", include_path=[tmp_path])
    with pytest.raises(SlmlabError, match="no such file or directory"):
        run_harness([LOGIC_TASK], "tiny-random", include_path=[tmp_path / "missing"])


# --------------------------------------------------------------------------- CLI


def cli_app():
    import typer

    from slmlab.evaluate.harness_cli import harness_cmd

    app = typer.Typer()
    app.command("eval-harness")(harness_cmd)
    return app


def test_cli_prints_the_table_and_writes_results(tmp_path):
    from typer.testing import CliRunner

    out = tmp_path / "results.json"
    args = [LOGIC_TASK, "--model", "tiny-random", "--limit", "5", "-o", str(out), "--log-samples"]
    result = CliRunner().invoke(cli_app(), args)
    assert result.exit_code == 0, result.output
    assert LOGIC_TASK in result.output and "acc" in result.output and "wrote" in result.output
    written = json.loads(out.read_text(encoding="utf-8"))
    acc = written["results"][LOGIC_TASK]["acc,none"]
    assert f"{acc:.4f}" in result.output
    refused = CliRunner().invoke(cli_app(), args)  # results exist: refused without --overwrite
    assert isinstance(refused.exception, SlmlabError)


def test_cli_names_may_be_comma_separated():
    from slmlab.evaluate.harness_cli import _task_names

    assert _task_names(["a,b", " c ", "d,"]) == ["a", "b", "c", "d"]
