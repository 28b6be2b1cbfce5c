"""The dream loop (slmlab.dream) on the tiny random model: verified triplets, the temperature
rule, resume giving the same bytes, config errors that name the field."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from slmlab.config import ConfigError
from slmlab.data.logic import solve
from slmlab.dream import (
    is_right,
    load_dream_config,
    make_pairs,
    next_temperature,
    resume,
    run,
)
from slmlab.dream.loop import round_prompts
from slmlab.errors import SlmlabError
from slmlab.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _record(puzzle: str, output: str | None = None, **extra) -> dict:
    answer = solve(puzzle)
    return {"id": "r1", "input": puzzle, "output": output or answer, "answer": answer, "format": "v6", **extra}


def _tiny(tmp_path: Path, **over) -> dict:
    """A dream config small enough for the tiny random model to run 2 rounds in a few seconds."""
    base = {"name": "d", "model": "tiny-random", "output_dir": str(tmp_path), "rounds": 2, "seed": 3,
            "prompts": {"count": 100, "per_round": 4},
            "sampling": {"samples_per_prompt": 2, "batch_size": 4, "max_new_tokens": 4},
            "eval": {"n": 4, "batch_size": 4, "max_new_tokens": 4}, "training": {"batch_size": 4},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.1}, "optimizer": {"lr": 1e-3}}
    return {**base, **over}


# --------------------------------------------------------------------------- temperature rule


@pytest.mark.parametrize("failure, expected", [
    (0.0, 0.5 * 1.25),   # almost never fails: raise T
    (0.29, 0.5 * 1.25),
    (0.3, 0.5),          # the band is closed: its edges keep T
    (0.5, 0.5),
    (0.7, 0.5),
    (0.71, 0.5 / 1.25),  # mostly fails: lower T
    (1.0, 0.5 / 1.25),
])
def test_temperature_rule_targets_a_failure_band(failure, expected):
    assert next_temperature(0.5, failure, band=(0.3, 0.7), factor=1.25) == pytest.approx(expected)


def test_temperature_rule_clamps_and_rejects_bad_rates():
    assert next_temperature(1.4, 0.0, factor=2.0, lowest=0.1, highest=1.5) == 1.5
    assert next_temperature(0.12, 1.0, factor=2.0, lowest=0.1, highest=1.5) == 0.1
    t = 0.7
    for _ in range(20):  # a model that always fails walks T down to the floor and stays there
        t = next_temperature(t, 1.0)
    assert t == 0.1
    with pytest.raises(ValueError, match="failure_rate"):
        next_temperature(0.5, 1.5)


# --------------------------------------------------------------------------- verified triplets


def test_pairs_prefer_the_models_own_right_answer():
    rec = _record("P,P→Q?Q")  # ●
    pairs = make_pairs(rec, [" ●", " ○ no", " ● ", "", " ○ no"], per_prompt=5)
    assert [(p["chosen"], p["rejected"], p["chosen_source"]) for p in pairs] == [("●", "○ no", "model"), ("●", "", "model")]
    assert all(p["prompt"] == rec["input"] and p["answer"] == "●" and p["format"] == "v6" for p in pairs)


def test_pairs_fall_back_to_the_solver_answer_in_the_target_format():
    hybrid = _record("P,P→Q?Q", output="● — modus ponens", render="hybrid")
    pairs = make_pairs(hybrid, ["◐ maybe", "junk"], per_prompt=1)
    assert [(p["chosen"], p["rejected"], p["chosen_source"]) for p in pairs] == [("● — modus ponens", "◐ maybe", "solver")]
    assert make_pairs(hybrid, [" ●", "●  "], per_prompt=2) == []  # never fails: nothing to prefer against
    with pytest.raises(SlmlabError, match="target output"):
        make_pairs(_record("P,P→Q?Q", output="○"), ["junk"], per_prompt=1)
    with pytest.raises(SlmlabError, match="answer"):
        is_right({"id": "x", "input": "hello", "output": "hi"}, "●")


def test_round_prompts_walk_the_training_split_and_wrap():
    train = [{"i": i} for i in range(5)]
    assert [r["i"] for r in round_prompts(train, 1, 3)] == [0, 1, 2]
    assert [r["i"] for r in round_prompts(train, 2, 3)] == [3, 4, 0]


# --------------------------------------------------------------------------- a whole run


def _digest(run_dir: Path) -> dict[str, str]:
    """sha256 of every file a dream run promises to reproduce byte for byte."""
    files = ["rounds.jsonl", "adapter/adapter_model.safetensors"]
    files += sorted(str(p.relative_to(run_dir)) for p in (run_dir / "rounds").rglob("*.jsonl"))
    return {f: hashlib.sha256((run_dir / f).read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted 2-round run, shared by the tests below."""
    out = tmp_path_factory.mktemp("dream")
    return run(load_dream_config(data=_tiny(out)))


def test_dream_run_writes_rounds_report_and_verified_pairs(straight):
    run_dir = straight.run_dir
    rounds = read_jsonl(run_dir / "rounds.jsonl")
    assert [r["round"] for r in rounds] == [0, 1, 2] and straight.status == "completed"
    for r in rounds[1:]:
        assert r["samples"] == 8 and 0 <= r["failure_rate"] <= 1 and r["pairs"] > 0 and r["steps"] == 2
        assert r["next_temperature"] == pytest.approx(next_temperature(r["temperature"], r["failure_rate"]))
    assert rounds[2]["temperature"] == rounds[1]["next_temperature"]
    for r in rounds:
        h = r["heldout"]
        assert h["n"] == 4 and h["ci95"][0] <= h["accuracy"] <= h["ci95"][1]

    train = {rec["id"]: rec for rec in read_jsonl(run_dir / "data" / "train.jsonl")}
    held_out = {rec["input"] for rec in read_jsonl(run_dir / "data" / "test.jsonl")}
    pairs = [p for k in (1, 2) for p in read_jsonl(run_dir / "rounds" / f"round-{k:03d}" / "pairs.jsonl")]
    assert len(pairs) == rounds[1]["pairs"] + rounds[2]["pairs"]
    for p in pairs:
        rec = train[p["id"]]  # every prompt comes from the training split, never from the held-out one
        assert p["prompt"] == rec["input"] and p["prompt"] not in held_out and p["answer"] == solve(rec["puzzle"])
        assert is_right(rec, p["chosen"]) and not is_right(rec, p["rejected"])
        if p["chosen_source"] == "solver":
            assert p["chosen"] == rec["output"]
    samples = read_jsonl(run_dir / "rounds" / "round-001" / "samples.jsonl")
    assert sum(not v for s in samples for v in s["verified"]) == rounds[1]["failures"]

    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<svg" in html and "held-out accuracy" in html and "failure rate" in html
    assert (run_dir / "rounds.svg").read_text(encoding="utf-8").startswith("<svg xmlns=")


def test_dream_training_changes_the_adapter(straight):
    from safetensors.torch import load_file

    adapter = load_file(str(straight.run_dir / "adapter" / "adapter_model.safetensors"))
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and any(float(t.abs().max()) > 0 for t in lora_b)  # B starts at zero: it was trained
    assert not any("lora" not in k for k in adapter)  # only adapter weights are saved


def test_resume_after_a_kill_gives_the_same_bytes(straight, tmp_path):
    class Killed(Exception):
        pass

    def kill_after_round_1(record):
        if record["round"] == 1:
            raise Killed

    config = load_dream_config(data=_tiny(tmp_path))
    with pytest.raises(Killed):
        run(config, on_round=kill_after_round_1)
    run_dir = config.run_dir
    assert [r["round"] for r in read_jsonl(run_dir / "rounds.jsonl")] == [0, 1]
    with pytest.raises(SlmlabError, match="--resume"):
        run(config)  # a started run is never silently overwritten
    (run_dir / "rounds" / "round-002").mkdir()
    (run_dir / "rounds" / "round-002" / "pairs.jsonl").write_text("half a round\n")  # debris of the killed round
    resumed = resume(run_dir)
    assert resumed.status == "completed" and resumed.accuracy == straight.accuracy
    assert _digest(run_dir) == _digest(straight.run_dir)
    assert resume(run_dir).status == "already complete"


def test_dpo_rounds_train_the_lora_against_the_adapter_off_reference(tmp_path):
    result = run(load_dream_config(data=_tiny(tmp_path, rounds=1, objective={"kind": "dpo", "beta": 0.1})))
    record = result.rounds[1]
    assert record["pairs"] > 0 and record["steps"] == 2 and record["steps_skipped"] == 0
    # DPO's first step starts at the reference: loss log 2 exactly (policy = reference, LoRA B = 0)
    assert record["loss_first"] == pytest.approx(0.6931, abs=1e-3)


def test_resume_refuses_changed_settings(straight):
    changed = load_dream_config(data={**_tiny(straight.run_dir.parent), "seed": 4})
    with pytest.raises(SlmlabError, match="seed"):
        run(changed, resume=True)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("change, field", [
    ({"objective": {"kind": "sft"}}, "objective"),
    ({"objective": {"kind": "dpo"}, "adapter": {"kind": "full"}}, "needs adapter.kind 'lora'"),
    ({"temperature": {"band": [0.8, 0.2]}}, "temperature"),
    ({"temperature": {"initial": 3.0}}, "temperature"),
    ({"sampling": {"samples_per_prompt": 0}}, "sampling.samples_per_prompt"),
    ({"prompts": {"per_round": "many"}}, "prompts.per_round"),
    ({"server": {"url": "localhost:8000"}}, "server.url"),
    ({"samplng": {}}, "sampling"),  # unknown key: "did you mean"
    ({"eval": {"n": 10, "batch": 3}}, "eval.batch"),
])
def test_bad_config_names_the_field(tmp_path, change, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.").replace("(", r"\(")):
        load_dream_config(data={**_tiny(tmp_path), **change})


def test_too_few_held_out_puzzles_is_a_clear_error(tmp_path):
    from slmlab.dream.loop import load_prompts

    config = load_dream_config(data=_tiny(tmp_path, eval={"n": 500}))
    with pytest.raises(SlmlabError, match="eval.n is 500.*prompts.count"):
        load_prompts(config, config.run_dir)


def test_shipped_example_config_validates():
    config = load_dream_config(REPO / "examples" / "dream" / "logic.yaml")
    assert config.model == "smollm2-135m" and config.objective.kind == "orpo" and config.rounds == 2


def test_cli_command_documents_an_example():
    from slmlab.dream.cli import dream_cmd

    assert "Example:" in dream_cmd.__doc__


# --------------------------------------------------------------------------- through a server


def test_dream_through_a_running_server(tmp_path, monkeypatch):
    """--server: sampling and evaluation by /v1/completions, training by /train (FastAPI's TestClient)."""
    import httpx
    from fastapi.testclient import TestClient

    from slmlab.models import load
    from slmlab.serve import ServeConfig, create_app

    model, tok = load("tiny-random")
    settings = {"model": "tiny-random", "api_key": "k-123", "state_dir": str(tmp_path / "state"),
                "training": {"lr": 1e-2, "optimizer": "adamw"}}
    key_file = tmp_path / "key.txt"
    key_file.write_text("k-123\n")
    with TestClient(create_app(ServeConfig.model_validate(settings), model=model, tokenizer=tok)) as client:
        def connect(**kwargs):  # the dream loop's httpx.Client is the test client, with its headers
            client.headers.update(kwargs.get("headers", {}))
            return client

        monkeypatch.setattr(httpx, "Client", connect)
        config = load_dream_config(data=_tiny(tmp_path, rounds=1, server={
            "url": "http://testserver", "adapter": "dreamer", "api_key_file": str(key_file)}))
        result = run(config)
        status = client.get("/train/status").json()
    record = result.rounds[1]
    assert record["pairs"] > 0 and record["steps"] == 2 and record["step"] == 2
    assert status["adapters"]["dreamer"]["applied"] == 2
    assert not (result.run_dir / "checkpoints").exists() and (result.run_dir / "server_state.json").is_file()
    pairs = read_jsonl(result.run_dir / "rounds" / "round-001" / "pairs.jsonl")
    train = {rec["id"]: rec for rec in read_jsonl(result.run_dir / "data" / "train.jsonl")}
    assert all(is_right(train[p["id"]], p["chosen"]) and not is_right(train[p["id"]], p["rejected"]) for p in pairs)
