"""Two CPU processes (gloo) train the same run as one process with twice the accumulation."""

import json
import os
import subprocess
import sys

import yaml

from slmlab.io import write_jsonl
from slmlab.train.config import load_train_config
from slmlab.train.loop import run


def _torchrun(cfg_path, port: int) -> subprocess.CompletedProcess:
    """`slmlab train CFG` in two CPU processes (gloo), one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         "-m", "slmlab", "train", str(cfg_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )


def test_two_process_ddp_matches_single_process(tmp_path):
    records = [{"id": str(i), "input": f"P{i}→Q{i},P{i}?Q{i}", "output": "●", "category": "t", "family": "f"} for i in range(32)]
    write_jsonl(tmp_path / "train.jsonl", records)
    base = {
        "model": "tiny-random", "output_dir": str(tmp_path / "runs"),
        "adapter": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(tmp_path / "train.jsonl"), "max_length": 64},
        "optimizer": {"lr": 1e-2}, "batch_size": 2, "max_steps": 3, "save_every": None,
    }
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump({**base, "name": "ddp", "grad_accum": 2}))
    proc = _torchrun(cfg_path, port=29517)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_losses = [json.loads(line)["loss"] for line in (tmp_path / "runs/ddp/metrics.jsonl").read_text().splitlines()]

    # Same 8 examples per step: 2 processes × batch 2 × accum 2 == 1 process × batch 2 × accum 4.
    single = run(load_train_config(data={**base, "name": "single", "grad_accum": 4}))
    assert len(ddp_losses) == 3
    for a, b in zip(ddp_losses, single.losses):
        assert abs(a - b) < 1e-5, (ddp_losses, single.losses)


def test_two_processes_agree_on_health_checks_and_a_rollback(tmp_path):
    """With the monitor on and a NaN at step 4, both processes check health, pick the same rollback
    target (broadcast from the main process), skip the same data and finish as one process would."""
    records = [{"id": str(i), "input": f"P{i}→Q{i},P{i}?Q{i}", "output": "●", "category": "t", "family": "f"} for i in range(48)]
    write_jsonl(tmp_path / "train.jsonl", records)
    base = {
        "model": "tiny-random", "output_dir": str(tmp_path / "runs"),
        "adapter": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": str(tmp_path / "train.jsonl"), "max_length": 64},
        "optimizer": {"lr": 1e-2}, "batch_size": 2, "max_steps": 6, "save_every": 2, "inject": ["nan@4"],
        "watch": {"every": 2, "probe_every": 2, "spectral_every": 2, "probe_prompts": 2, "probe_tokens": 4,
                  "dashboard": False},
        "recovery": {"enabled": True, "actions": ["rollback"], "rollback_after": 1, "confirm_steps": 0},
    }
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump({**base, "name": "ddp", "grad_accum": 2}))
    proc = _torchrun(cfg_path, port=29518)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run(load_train_config(data={**base, "name": "single", "grad_accum": 4})).status == "completed"

    def story(name):
        lines = [json.loads(x) for x in (tmp_path / "runs" / name / "events.jsonl").read_text().splitlines()]
        return [(e["kind"], e["step"], e.get("checkpoint")) for e in lines if e["kind"] in ("detection", "rollback", "health")]

    assert story("ddp") == story("single")
    assert ("rollback", 2, "step-2") in story("ddp")
    live = lambda name: [m["loss"] for m in map(json.loads, (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                         if not m.get("rolled_back")]
    assert len(live("ddp")) == 6
    for a, b in zip(live("ddp"), live("single")):
        assert abs(a - b) < 1e-5
