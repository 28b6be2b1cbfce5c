"""The training loop end to end on tiny-random: artifacts, exact resume, accumulation, errors."""

import json
import math
from pathlib import Path

import pytest
import torch

from slmlab.config import ConfigError
from slmlab.io import write_jsonl
from slmlab.train.config import load_train_config
from slmlab.train.loop import TrainingError, resume_run, run


def _records(n=40):
    out = []
    for i in range(n):
        a, b = f"P{i}", f"Q{i}"
        out.append({"id": str(i), "input": f"{a}→{b},{a}?{b}", "output": "●" if i % 3 else "◐ — it does not follow",
                    "category": "t", "family": "f"})
    return out


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, _records())
    write_jsonl(tmp_path / "eval.jsonl", _records(8))
    return path


def _config(tmp_path, data_file, **over):
    base = {
        "name": "t",
        "model": "tiny-random",
        "output_dir": str(tmp_path / "runs"),
        "adapter": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"train": str(data_file), "eval": str(data_file.parent / "eval.jsonl"), "max_length": 64},
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "batch_size": 4,
        "grad_accum": 2,
        "max_steps": 6,
        "save_every": 2,
        "log_every": 1,
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return load_train_config(data=base)


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lora_run_writes_the_record_and_trains_only_the_adapter(tmp_path, data_file):
    from peft import PeftModel

    from slmlab.models import load

    result = run(_config(tmp_path, data_file))
    d = result.run_dir
    assert result.status == "completed" and result.steps == 6
    for name in ("config.yaml", "metrics.jsonl", "results.json", "adapter/adapter_model.safetensors", "adapter/adapter_config.json"):
        assert (d / name).exists(), name
    assert len(_losses(d)) == 6
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["step-4", "step-6"]  # keep_checkpoints=2
    assert result.losses[-1] < result.losses[0]
    summary = json.loads((d / "results.json").read_text())
    assert summary["memory"]["optimizer_state_bytes"] > 0 and summary["train"]["eval_loss"] is not None

    # The adapter loads with plain PEFT and changes the model; the base weights are untouched.
    base, _ = load("tiny-random")
    ref = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base, str(d / "adapter"))
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: nonzero means it trained
    for k, v in peft_model.get_base_model().state_dict().items():
        k = k.replace(".base_layer", "")
        if k in ref:
            assert torch.equal(v, ref[k]), k

    from slmlab.runs import list_runs

    rows = list_runs(tmp_path / "runs")
    assert [(r.name, r.status, r.step) for r in rows] == [("t", "completed", 6)]


class Killed(Exception):
    pass


def test_killed_run_resumes_with_the_same_loss_sequence(tmp_path, data_file):
    straight = run(_config(tmp_path, data_file, name="straight", max_steps=8))

    def kill_at_5(step, metrics):
        if step == 5:
            raise Killed()

    with pytest.raises(Killed):
        run(_config(tmp_path, data_file, name="killed", max_steps=8), on_step=kill_at_5)
    killed_dir = tmp_path / "runs" / "killed"
    assert len(_losses(killed_dir)) == 5  # step 5 was logged, but the last checkpoint is step 4
    resumed = resume_run(killed_dir)
    assert resumed.steps == 8
    assert _losses(killed_dir) == _losses(straight.run_dir)  # bit-identical, dropout included


def test_batch_8_accum_1_equals_batch_2_accum_4(tmp_path, data_file):
    b = run(_config(tmp_path, data_file, name="b2", batch_size=2, grad_accum=4, max_steps=3, data={"packing": True},
                    adapter={"dropout": 0.0}))
    c = run(_config(tmp_path, data_file, name="b8n", batch_size=8, grad_accum=1, max_steps=3, adapter={"dropout": 0.0}))
    assert b.steps == c.steps == 3
    for x, y in zip(b.losses, c.losses):
        assert abs(x - y) < 1e-5, (b.losses, c.losses)


def test_same_seed_same_losses(tmp_path, data_file):
    a = run(_config(tmp_path, data_file, name="s1", max_steps=3))
    b = run(_config(tmp_path, data_file, name="s2", max_steps=3))
    assert a.losses == b.losses


def test_full_fine_tune_and_export(tmp_path, data_file):
    from transformers import AutoModelForCausalLM

    from slmlab.train.export import export_run

    r = run(_config(tmp_path, data_file, name="full", adapter={"kind": "full"}, max_steps=2, optimizer={"lr": 1e-3}))
    assert (r.run_dir / "model" / "model.safetensors").exists()
    lora = run(_config(tmp_path, data_file, name="lora", max_steps=2))
    out = export_run(lora.run_dir, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert merged.config.num_hidden_layers == 2 and not any("lora" in n for n, _ in merged.named_parameters())


def test_dpo_and_orpo_train_on_preference_pairs(tmp_path):
    prefs = [{"prompt": f"P{i}→Q{i},P{i}?Q{i}", "chosen": "●", "rejected": "○"} for i in range(16)]
    path = tmp_path / "prefs.jsonl"
    write_jsonl(path, prefs)
    for kind in ("dpo", "orpo"):
        cfg = load_train_config(data={
            "name": kind, "model": "tiny-random", "output_dir": str(tmp_path / "runs"),
            "adapter": {"r": 4, "alpha": 8}, "data": {"train": str(path), "max_length": 64},
            "objective": {"kind": kind}, "optimizer": {"lr": 5e-3}, "batch_size": 4, "max_steps": 4,
        })
        r = run(cfg)
        assert r.steps == 4 and all(torch.isfinite(torch.tensor(r.losses)))
        assert r.losses[-1] < r.losses[0], (kind, r.losses)


def test_unknown_key_is_named_with_a_suggestion(tmp_path, data_file):
    with pytest.raises(ConfigError) as exc:
        load_train_config(data={"data": {"train": str(data_file)}, "optimiser": {"lr": 1}})
    assert "optimiser" in str(exc.value) and "optimizer" in str(exc.value)
    with pytest.raises(ConfigError, match=r"data\.max_lenght.*max_length"):
        load_train_config(data={"data": {"train": str(data_file), "max_lenght": 3}})
    with pytest.raises(ConfigError, match="batch_size"):
        load_train_config(data={"data": {"train": str(data_file)}, "batch_size": 0})
    with pytest.raises(ConfigError, match="time_budget"):
        load_train_config(data={"data": {"train": str(data_file)}, "time_budget": "ten minutes"})


def test_empty_and_fully_truncated_data_fail_before_the_model_loads(tmp_path, data_file, monkeypatch):
    import slmlab.train.loop as loop

    monkeypatch.setattr(loop, "build_model", lambda cfg: pytest.fail("model loaded before data was checked"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TrainingError, match="empty"):
        run(_config(tmp_path, empty, name="e", data={"train": str(empty), "eval": None}))
    with pytest.raises(TrainingError, match="none fits max_length=8"):
        run(_config(tmp_path, data_file, name="b", data={"max_length": 8}))


def test_time_budget_stops_cleanly_and_saves(tmp_path, data_file):
    r = run(_config(tmp_path, data_file, name="budget", max_steps=1000, time_budget=0.001, save_every=None))
    assert r.status == "stopped: time budget" and r.steps == 1
    assert (r.run_dir / "checkpoints" / "step-1").is_dir() and (r.run_dir / "adapter").is_dir()


def test_existing_run_dir_is_not_overwritten(tmp_path, data_file):
    run(_config(tmp_path, data_file, name="once", max_steps=1))
    with pytest.raises(TrainingError, match="already holds a run"):
        run(_config(tmp_path, data_file, name="once", max_steps=1))


def test_nan_loss_stops_with_step_and_example_ids(tmp_path, data_file, monkeypatch):
    from slmlab.train.objectives import sft
    from slmlab.train.objectives.sft import sft_loss

    def poisoned(model, batch):
        parts = sft_loss(model, batch)
        parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(sft, "sft_loss", poisoned)
    with pytest.raises(TrainingError, match=r"step 0: loss is nan; examples in this step: \[\d+, "):
        run(_config(tmp_path, data_file, name="nan"))


def test_missing_tracker_is_a_clear_error(tmp_path, data_file):
    with pytest.raises(ConfigError, match="Unknown tracker 'tensorbord'"):
        _config(tmp_path, data_file, trackers=["tensorbord"])


def test_dpo_from_the_preference_recipe(tmp_path):
    cfg = load_train_config(data={
        "name": "dpo-recipe", "model": "tiny-random", "output_dir": str(tmp_path / "runs"), "adapter": {"r": 4},
        "data": {"recipe": "logic-preference", "count": 60, "max_length": 96}, "objective": {"kind": "dpo"},
        "batch_size": 4, "max_steps": 2,
    })
    r = run(cfg)
    assert r.steps == 2 and r.eval_loss is not None and abs(r.losses[0] - 0.6931) < 0.01  # log 2 at start: policy == reference


def test_context_frozen_run_trains(tmp_path, data_file):
    r = run(_config(tmp_path, data_file, name="frozen", context_frozen=True, max_steps=4))
    assert r.steps == 4 and r.losses[-1] < r.losses[0]
    with pytest.raises(ConfigError, match="context_frozen"):
        _config(tmp_path, data_file, context_frozen=True, objective={"kind": "dpo"})


def test_every_shipped_config_validates():
    configs = sorted((Path(__file__).parent.parent / "examples" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_train_config(path)
        # kernel configs train a model made by `slmlab kernel init` (a directory path)
        assert cfg.model in ("smollm2-135m", "tiny-random") or path.stem.startswith("kernel"), path


@pytest.mark.integration
def test_smollm2_lora_steps_lower_the_loss(tmp_path):
    cfg = load_train_config(data={
        "name": "smol", "model": "smollm2-135m", "output_dir": str(tmp_path / "runs"),
        "adapter": {"r": 8, "alpha": 16}, "data": {"recipe": "v6-golden", "count": 80, "max_length": 128},
        "optimizer": {"lr": 1e-3}, "schedule": {"kind": "constant"}, "batch_size": 4, "max_steps": 4, "save_every": None,
    })
    r = run(cfg)
    assert r.steps == 4 and r.losses[-1] < r.losses[0], r.losses
    assert (r.run_dir / "adapter" / "adapter_model.safetensors").exists()


_BOOKKEEPING = ("checkpoint", "checkpoint_confirmed", "health", "probe", "status_change", "regime_change")


def _events(run_dir):
    """Detections and actions (the story), without checkpoint and health bookkeeping."""
    lines = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e for e in lines if e["kind"] not in _BOOKKEEPING]


def test_recovery_skips_a_nan_step_and_finishes(tmp_path, data_file):
    r = run(_config(tmp_path, data_file, name="skip", inject=["nan@3"], recovery={"enabled": True, "rollback_after": 3}))
    assert r.status == "completed" and r.steps == 6
    ev = _events(r.run_dir)
    assert [(e["kind"], e["step"]) for e in ev] == [("detection", 3), ("skip", 3)]
    assert ev[0]["detector"] == "nonfinite"
    lines = [json.loads(x) for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6] and lines[2]["skipped"] is True
    assert r.summary["recovery"]["skips"] == 1 and math.isfinite(r.losses[-1])


def test_recovery_rolls_back_skips_the_window_and_marks_metrics(tmp_path, data_file):
    cfg = _config(tmp_path, data_file, name="rb", max_steps=8, inject=["nan@5"],
                  recovery={"enabled": True, "actions": ["rollback"], "rollback_after": 1, "lr_backoff": 0.5,
                            "confirm_steps": 0})
    r = run(cfg)
    assert r.status == "completed" and r.steps == 8
    ev = _events(r.run_dir)
    assert [e["kind"] for e in ev] == ["detection", "rollback"]
    rb = ev[1]
    assert rb["checkpoint"] == "step-4" and rb["step"] == 4 and rb["skipped_data_window"] == [4, 4] and rb["lr_factor"] == 0.5
    lines = [json.loads(x) for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    live = [m["step"] for m in lines if not m.get("rolled_back")]
    assert live == list(range(1, 9))  # nothing lost, the retried steps are there once
    rec = r.summary["recovery"]
    assert (rec["detections"], rec["skips"], rec["rollbacks"], rec["pauses"], rec["data_offset"]) == (1, 0, 1, 0, 1)
    assert all(math.isfinite(x) for x in r.losses[-3:])


def test_recovery_pauses_when_rollbacks_do_not_help(tmp_path, data_file):
    cfg = _config(tmp_path, data_file, name="pause", max_steps=8, inject=["nan@5"],
                  recovery={"enabled": True, "actions": ["rollback"], "rollback_after": 1, "max_rollbacks": 0})
    r = run(cfg)
    assert r.status.startswith("paused") and _events(r.run_dir)[-1]["kind"] == "pause"


def test_bad_injection_and_unknown_action_are_config_errors(tmp_path, data_file):
    with pytest.raises(ConfigError, match="nan@STEP"):
        _config(tmp_path, data_file, inject=["nan5"])
    with pytest.raises(ConfigError, match="recovery.actions"):
        _config(tmp_path, data_file, recovery={"actions": ["reboot"]})


def test_rollback_restores_exactly_the_checkpoint_state(tmp_path, data_file, monkeypatch):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    import slmlab.train.loop as loop

    seen = {}
    real = loop.load_checkpoint

    def checked(path, train_state):
        state = real(path, train_state)
        saved = load_file(str(path / "weights.safetensors"))
        now = get_peft_model_state_dict(train_state.model)
        seen["weights_equal"] = saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in saved)
        saved_opt = torch.load(path / "optimizer.pt", weights_only=True)["state"]
        now_opt = train_state.optimizer.state_dict()["state"]
        seen["optimizer_equal"] = all(torch.equal(saved_opt[i]["exp_avg"], now_opt[i]["exp_avg"]) for i in saved_opt)
        seen["step"] = state["step"]
        return state

    monkeypatch.setattr(loop, "load_checkpoint", checked)
    run(_config(tmp_path, data_file, name="exact-rb", max_steps=7, inject=["nan@6"],
                recovery={"enabled": True, "actions": ["rollback"], "rollback_after": 1}))
    assert seen == {"weights_equal": True, "optimizer_equal": True, "step": 4}


def test_repeated_rollbacks_compound_the_lr_backoff_and_resume_does_not_refire(tmp_path, data_file):
    rec = {"enabled": True, "actions": ["rollback"], "rollback_after": 1, "lr_backoff": 0.5}
    ref = run(_config(tmp_path, data_file, name="ref", max_steps=6))
    r = run(_config(tmp_path, data_file, name="rb2", max_steps=6, inject=["nan@5", "nan@6"], recovery=rec))
    assert [e["lr_factor"] for e in _events(r.run_dir) if e["kind"] == "rollback"] == [0.5, 0.25]
    live = {m["step"]: m for m in map(json.loads, (r.run_dir / "metrics.jsonl").read_text().splitlines()) if not m.get("rolled_back")}
    base = {m["step"]: m for m in map(json.loads, (ref.run_dir / "metrics.jsonl").read_text().splitlines())}
    assert base[5]["lr"] > 0 and abs(live[5]["lr"] / base[5]["lr"] - 0.25) < 1e-9
